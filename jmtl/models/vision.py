"""The vision benchmarks' networks, built from the papers' and reference code's layer settings.

==========================  ==========================================================================
name                        what (source of the layer settings)
==========================  ==========================================================================
``segnet`` (encoder)        SegNet encoder-decoder, VGG-16-style blocks (13 + 13 3x3 convs), max-pool
                            indices and max-unpooling: the shared network of MTAN's "split" baseline
                            (Liu, Johns, Davison, CVPR 2019; ``model_segnet_split.py`` of lorenmt/mtan).
                            Output ``[B, H, W, 64]``; H and W multiples of 32.
``mtan_segnet`` (arch)      the same SegNet plus one attention module per task per block (the paper's
                            Fig. 2; ``model_segnet_mtan.py``): :class:`MTANSegNet`.
``resnet50_dilated``        torchvision ResNet-50 with LibMTL's ``resnet_dilated`` (output stride 8:
                            layer3 / layer4 strides replaced by dilations 2 / 4). Output ``[B, H/8, W/8, 2048]``.
``resnet18``                torchvision ResNet-18, global average pooled, then LibMTL's Office encoder's
                            hidden layer (dense 512 -> batch norm -> ReLU -> dropout 0.5); ``hidden=0``
                            gives the 512 pooled features alone.
``celeba_cnn``              the CNN of FAMO's CelebA experiment (Liu et al., NeurIPS 2023;
                            ``experiments/celeba/models.py``): 7 convs without bias, batch norm, 3 pools,
                            global average pool, two dense 512 layers with batch norm. Output ``[B, 512]``.
==========================  ==========================================================================

Per-pixel heads are :class:`jmtl.models.heads.PixelHead` (MTAN's ``conv3x3 -> conv1x1`` or LibMTL's
DeepLab ASPP head).

Batch norm
----------
jmtl's train step keeps no mutable collections (no ``batch_stats``), so :class:`Norm` has two modes:

* ``'batch'`` (default): normalise by the current batch's statistics (biased variance, eps 1e-5, as
  torch's ``BatchNorm2d`` in training mode), with a learnt scale and bias. Training is exactly
  the papers'; evaluation also normalises by the evaluated batch's statistics where the papers use
  running averages (an honest difference: at 288x384 one image's per-channel statistics are many
  thousands of pixels, but evaluation results then depend on the evaluation batch).
* ``'frozen'``: a fixed per-channel affine map ``x * scale + bias`` (what a batch norm with frozen
  statistics computes; detection and segmentation codebases fine-tune ImageNet ResNets this way).
  Loading torchvision weights folds the running statistics into scale and bias
  (:mod:`jmtl.models.pretrained`), so the ImageNet network is reproduced exactly.

Max-unpooling
-------------
:func:`max_pool_2x2_with_indices` returns, per output pixel and channel, which of its 2x2 window's
elements was the maximum (0..3 in row-major order; the first maximum on ties, NaN counted as the
maximum, as torch's CPU kernel). :func:`max_unpool_2x2` puts each value back at that position and
zeros elsewhere, torch's ``MaxUnpool2d(2, 2)``. Both are elementwise selects and reshapes (no
scatter), so their gradients are cheap on every backend. Torch's flat index ``h * W + w`` of the
input plane is ``(2i + k // 2) * W + 2j + k % 2`` for window ``(i, j)`` and local index ``k``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jmtl.models.base import Bag, MultiTaskBase, TaskHeads, bag, per_task

Array = jax.Array

NORM_MODES = ("batch", "frozen")
# MTAN's SegNet channel widths (model_segnet_split.py, type 'standard').
SEGNET_FILTERS = (64, 128, 256, 512, 512)

# MTAN initialises every conv with xavier_normal_ and zero bias.
xavier_normal = nn.initializers.xavier_normal()
# torchvision's ResNet: kaiming_normal_(mode='fan_out', nonlinearity='relu').
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _check_norm(mode: str) -> None:
    if mode not in NORM_MODES:
        raise ValueError(f"unknown norm {mode!r}; valid: {', '.join(NORM_MODES)} (see jmtl.models.vision)")


class Norm(nn.Module):
    """Batch norm without running statistics (see the module docstring): ``mode='batch'`` normalises
    by the batch's mean and biased variance over every axis but the last; ``'frozen'`` is the affine
    map alone. Params ``scale`` (ones) and ``bias`` (zeros), torch's ``weight`` / ``bias``.

    Statistics are computed in float32 under bfloat16 / float16 compute (sums of ~10^5 values).
    """

    mode: str = "batch"
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Array) -> Array:
        _check_norm(self.mode)
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        if self.mode == "batch":
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            mean = jnp.mean(xf, axes)
            var = jnp.mean(jnp.square(xf - mean), axes)
            y = (xf - mean) * (jax.lax.rsqrt(var + self.eps) * scale.astype(jnp.float32)) + bias.astype(jnp.float32)
            return y.astype(x.dtype)
        return x * scale.astype(x.dtype) + bias.astype(x.dtype)


def _pad(p: int) -> tuple[tuple[int, int], tuple[int, int]]:
    # Explicit symmetric padding as torch's Conv2d(padding=p): flax's 'SAME' pads (0, 1) for stride 2.
    return ((p, p), (p, p))


# ----------------------------------------------------------------------------- pooling / resizing


def _check_even(x: Array, what: str) -> None:
    if x.shape[1] % 2 or x.shape[2] % 2:
        raise ValueError(
            f"{what}: 2x2 max-pooling with indices needs even height and width, got {x.shape[1]}x{x.shape[2]}; "
            "use inputs whose sides are multiples of 32 for SegNet (e.g. 288x384, 128x256)"
        )


def max_pool_2x2_with_indices(x: Array) -> tuple[Array, Array]:
    """2x2, stride-2 max-pool of NHWC ``x`` and the argmax within each window.

    Returns:
      ``(pooled [B, H/2, W/2, C], indices [B, H/2, W/2, C] int8)``; index k in 0..3 is the window's
      element ``(k // 2, k % 2)``, the first maximum in row-major order (NaN wins, as in torch).
    """
    _check_even(x, "max_pool_2x2_with_indices")
    b, h, w, c = x.shape
    win = x.reshape(b, h // 2, 2, w // 2, 2, c)
    best = win[:, :, 0, :, 0]
    idx = jnp.zeros(best.shape, jnp.int8)
    for k in (1, 2, 3):
        v = win[:, :, k // 2, :, k % 2]
        # Strictly greater: the earlier element keeps a tie. A NaN candidate replaces a number.
        take = (v > best) | (jnp.isnan(v) & ~jnp.isnan(best))
        best = jnp.where(take, v, best)
        idx = jnp.where(take, jnp.int8(k), idx)
    return best, idx


def max_unpool_2x2(x: Array, indices: Array) -> Array:
    """Inverse of :func:`max_pool_2x2_with_indices` (torch's ``MaxUnpool2d(2, 2)``): ``x[b, i, j, c]``
    goes to row ``2i + k // 2``, column ``2j + k % 2`` with ``k = indices[b, i, j, c]``; the other
    three positions of each window are zero. ``[B, h, w, C] -> [B, 2h, 2w, C]``."""
    if x.shape != indices.shape:
        raise ValueError(f"max_unpool_2x2: values {x.shape} and indices {indices.shape} must have one shape")
    b, h, w, c = x.shape
    zero = jnp.zeros((), x.dtype)
    rows = [jnp.stack([jnp.where(indices == 2 * r + s, x, zero) for s in (0, 1)], axis=3) for r in (0, 1)]
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, c)


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` linear-interpolation weights with torch's ``align_corners=True``:
    output i samples input coordinate ``i * (n_in - 1) / (n_out - 1)``."""
    m = np.zeros((n_out, n_in), np.float32)
    if n_in == 1 or n_out == 1:
        m[:, 0] = 1.0
        return m
    src = np.arange(n_out) * (n_in - 1) / (n_out - 1)
    i0 = np.clip(np.floor(src).astype(int), 0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (src - i0).astype(np.float32)
    m[np.arange(n_out), i0] += 1.0 - frac
    m[np.arange(n_out), i1] += frac
    return m


def resize_bilinear_align_corners(x: Array, size: tuple[int, int]) -> Array:
    """Bilinear resize of NHWC ``x`` to ``size`` as torch's ``F.interpolate(..., mode='bilinear',
    align_corners=True)`` (MTAN's attention decoder, LibMTL's DeepLab head): two small matmuls."""
    mh = jnp.asarray(_interp_matrix(x.shape[1], size[0]), x.dtype)
    mw = jnp.asarray(_interp_matrix(x.shape[2], size[1]), x.dtype)
    x = jnp.einsum("oh,bhwc->bowc", mh, x)
    return jnp.einsum("pw,bowc->bopc", mw, x)


# ----------------------------------------------------------------------------- SegNet


class ConvNormReLU(nn.Module):
    """MTAN's ``conv_layer``: 3x3 conv (padding 1, bias, xavier-normal) -> batch norm -> ReLU."""

    features: int
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.Conv(self.features, (3, 3), padding=_pad(1), kernel_init=xavier_normal, name="conv")(x)
        return nn.relu(Norm(self.norm, name="norm")(x))


def _extra_convs(level: int) -> int:
    """Convs after a SegNet level's first one: 1 on levels 0 and 1, 2 on levels 2-4 (VGG-16)."""
    return 1 if level < 2 else 2


class SegNet(nn.Module):
    """The SegNet encoder-decoder of MTAN's 'split' baseline (shared by all tasks).

    Encoder level i (i = 0..4, widths 64, 128, 256, 512, 512): ``enc{i}_0`` (the level's first
    conv, MTAN's ``encoder_block[i]``), then 1 (levels 0, 1) or 2 (levels 2-4) more convs
    (``conv_block_enc[i]``), then a 2x2 max-pool that keeps its indices. Decoder step j = 0..4
    works on level i = 4 - j: max-unpool with level i's indices, ``dec{i}_0`` (``decoder_block[i]``:
    width[i] -> width[i - 1]) and 1 or 2 more convs (``conv_block_dec[i]``). Every conv is
    :class:`ConvNormReLU`. 26 convs; 2.94e7 params at the paper's widths (see tests).

    ``__call__`` returns the last decoder features ``[B, H, W, 64]`` (the input of the task heads);
    :meth:`features` returns every intermediate the MTAN attention modules read.
    """

    norm: str = "batch"
    filters: Sequence[int] = SEGNET_FILTERS

    def setup(self):
        f = tuple(self.filters)
        if len(f) != 5:
            raise ValueError(f"SegNet has 5 levels; filters must have 5 widths, got {f}")
        # setattr registers each conv under its own name: params['enc2_1'], params['dec0_0'], ...
        for i in range(5):
            out = f[max(i - 1, 0)]
            for r in range(1 + _extra_convs(i)):
                setattr(self, f"enc{i}_{r}", ConvNormReLU(f[i], self.norm))
                setattr(self, f"dec{i}_{r}", ConvNormReLU(out, self.norm))

    def features(self, x: Array) -> dict[str, list[Array]]:
        """Every intermediate, in MTAN's names: ``enc_first[i]`` (level i's first conv output,
        ``g_encoder[i][0]``), ``enc_out[i]`` (level i's output before pooling, ``g_encoder[i][1]``),
        ``up[j]`` (decoder step j's unpooled input, ``g_upsampl[j]``) and ``dec_out[j]`` (decoder
        step j's output, ``g_decoder[j][-1]``)."""
        if x.ndim != 4 or x.shape[1] % 32 or x.shape[2] % 32:
            raise ValueError(
                f"SegNet needs NHWC images whose height and width are multiples of 32 (5 poolings), got shape "
                f"{x.shape}; resize or crop the images (NYUv2 288x384 and Cityscapes 128x256 qualify)"
            )
        enc_first, enc_out, indices = [], [], []
        h = x
        for i in range(5):
            h = getattr(self, f"enc{i}_0")(h)
            enc_first.append(h)
            for r in range(_extra_convs(i)):
                h = getattr(self, f"enc{i}_{r + 1}")(h)
            enc_out.append(h)
            h, idx = max_pool_2x2_with_indices(h)
            indices.append(idx)
        up, dec_out = [], []
        for j in range(5):
            i = 4 - j
            h = max_unpool_2x2(h, indices[i])
            up.append(h)
            h = getattr(self, f"dec{i}_0")(h)
            for r in range(_extra_convs(i)):
                h = getattr(self, f"dec{i}_{r + 1}")(h)
            dec_out.append(h)
        return {"enc_first": enc_first, "enc_out": enc_out, "up": up, "dec_out": dec_out}

    def __call__(self, x: Array, *, train: bool = False) -> Array:
        del train  # no dropout; batch statistics in both modes (module docstring)
        return self.features(x)["dec_out"][-1]


# ----------------------------------------------------------------------------- MTAN-SegNet


class AttentionBlock(nn.Module):
    """MTAN's ``att_layer``: 1x1 conv -> norm -> ReLU -> 1x1 conv -> norm -> sigmoid (a soft mask)."""

    hidden: int
    features: int
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.Conv(self.hidden, (1, 1), kernel_init=xavier_normal, name="conv1")(x)
        x = nn.relu(Norm(self.norm, name="norm1")(x))
        x = nn.Conv(self.features, (1, 1), kernel_init=xavier_normal, name="conv2")(x)
        return jax.nn.sigmoid(Norm(self.norm, name="norm2")(x))


class MTANSegNetShared(nn.Module):
    """What MTAN-SegNet's tasks share: the SegNet and the attention branches' feature extractors
    (``encoder_block_att`` / ``decoder_block_att`` of the reference code; one conv each, shared by
    all tasks but applied to every task's attended features)."""

    norm: str = "batch"
    filters: Sequence[int] = SEGNET_FILTERS

    def setup(self):
        f = tuple(self.filters)
        self.segnet = SegNet(norm=self.norm, filters=f)
        # encoder_block_att[j]: width[j] -> width[j + 1] (the last one keeps 512).
        self.enc_att = [ConvNormReLU(f[min(j + 1, 4)], self.norm) for j in range(5)]
        # decoder_block_att[i]: width[i] -> width[i - 1] (level 0: 64 -> 64), used at decoder step 4 - i.
        self.dec_att = [ConvNormReLU(f[max(i - 1, 0)], self.norm) for i in range(5)]


class TaskAttention(nn.Module):
    """Task k's 10 attention modules: ``enc_j`` (encoder level j) and ``dec_i`` (decoder level i)."""

    norm: str = "batch"
    filters: Sequence[int] = SEGNET_FILTERS

    def setup(self):
        f = tuple(self.filters)
        # encoder_att: level 0 reads g_encoder[0][0] (64); level j > 0 reads [g_encoder[j][0], previous] (2 f[j]).
        self.enc = [AttentionBlock(f[j], f[j], self.norm) for j in range(5)]
        # decoder_att level i: [unpooled (f[i]), extracted (f[i-1])] -> mask of width f[i-1].
        self.dec = [AttentionBlock(f[max(i - 1, 0)], f[max(i - 1, 0)], self.norm) for i in range(5)]


class MTANSegNet(MultiTaskBase):
    """Multi-Task Attention Network on SegNet (Liu, Johns, Davison, CVPR 2019, Sec. 3 and Fig. 2),
    with the layer settings of the authors' ``model_segnet_mtan.py``.

    Encoder level j of task k: ``a^j = g_k^j([u^j, e^{j-1}]) * p^j`` with u^j the level's first
    conv output, p^j its output before pooling, g_k^j task k's :class:`AttentionBlock` (for j = 0
    it reads u^0 alone) and ``e^j = maxpool(f^j(a^j))`` with the shared extractor f^j. Decoder
    step s on level i = 4 - s: ``d = f'^i(upsample_2x(previous))`` (bilinear, align_corners),
    ``a = g'_k^i([unpooled_s, d]) * decoder_output_s``. Head k reads task k's last attended map.

    Params: ``{'shared': {'segnet', 'enc_att_j', 'dec_att_i'}, 'attention': {task: {enc_j, dec_i}},
    'tasks': {task: head}, 'relation'?}``. The shared extractors run on task-specific inputs, so
    there is no single shared representation: the parameter-Jacobian path applies (no
    ``encode`` / ``decode``; ``separable_heads`` is False).
    """

    shared: MTANSegNetShared
    attention: Bag  # {task: TaskAttention}
    tasks: TaskHeads
    relation: bool = False
    arch: ClassVar[str] = "mtan_segnet"
    no_representation_reason: ClassVar[str] = "the shared attention extractors run on every task's attended features"

    def __call__(self, x: Array, *, train: bool = False) -> dict[str, Array]:
        feats = self.shared.segnet.features(x)
        enc_att, dec_att = self.shared.enc_att, self.shared.dec_att
        outs = []
        for n in self.tasks.names:
            att = self.attention[n]
            e = None
            for j in range(5):
                u = feats["enc_first"][j]
                mask = att.enc[j](u if j == 0 else jnp.concatenate([u, e], axis=-1))
                e = nn.max_pool(enc_att[j](mask * feats["enc_out"][j]), (2, 2), (2, 2))
            d = e
            for s in range(5):
                i = 4 - s
                d = resize_bilinear_align_corners(d, (2 * d.shape[1], 2 * d.shape[2]))
                d = dec_att[i](d)
                mask = att.dec[i](jnp.concatenate([feats["up"][s], d], axis=-1))
                d = mask * feats["dec_out"][s]
            outs.append(d)
        return self.task_outputs(outs, train=train)


def build_mtan_segnet(encoder: nn.Module, heads: TaskHeads, relation: bool) -> MTANSegNet:
    """The ``mtan_segnet`` architecture over a :class:`SegNet` encoder (its norm and widths)."""
    if not isinstance(encoder, SegNet):
        raise ValueError(
            f"arch 'mtan_segnet' attends to SegNet's blocks and needs encoder='segnet', got {type(encoder).__name__}; "
            "for attention on other encoders use arch='mtan'"
        )
    kw = dict(norm=encoder.norm, filters=tuple(encoder.filters))
    attention = bag(per_task(heads.names, lambda n: TaskAttention(**kw)))
    return MTANSegNet(shared=MTANSegNetShared(**kw), attention=attention, tasks=heads, relation=relation)


# ----------------------------------------------------------------------------- ResNet


def _conv(features: int, k: int, stride: int, pad: int, dilation: int, name: str) -> nn.Conv:
    """torchvision's bias-free k x k conv (called inside a block's compact ``__call__``, it registers there)."""
    return nn.Conv(
        features,
        (k, k),
        (stride, stride),
        padding=_pad(pad),
        kernel_dilation=(dilation, dilation),
        use_bias=False,
        kernel_init=kaiming_fan_out,
        name=name,
    )


class BasicBlock(nn.Module):
    """torchvision's ResNet-18/34 block: two 3x3 convs (stride on the first), identity or 1x1 shortcut."""

    planes: int
    stride: int = 1
    dilation: int = 1
    downsample: bool = False
    norm: str = "batch"
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out = nn.relu(
            Norm(self.norm, name="bn1")(_conv(self.planes, 3, self.stride, self.dilation, self.dilation, "conv1")(x))
        )
        out = Norm(self.norm, name="bn2")(_conv(self.planes, 3, 1, self.dilation, self.dilation, "conv2")(out))
        if self.downsample:
            x = Norm(self.norm, name="downsample_bn")(_conv(self.planes, 1, self.stride, 0, 1, "downsample_conv")(x))
        return nn.relu(out + x)


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 block (v1.5: the stride on the 3x3 conv): 1x1, 3x3, 1x1 (x4)."""

    planes: int
    stride: int = 1
    dilation: int = 1
    downsample: bool = False
    norm: str = "batch"
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out = nn.relu(Norm(self.norm, name="bn1")(_conv(self.planes, 1, 1, 0, 1, "conv1")(x)))
        out = nn.relu(
            Norm(self.norm, name="bn2")(_conv(self.planes, 3, self.stride, self.dilation, self.dilation, "conv2")(out))
        )
        out = Norm(self.norm, name="bn3")(_conv(self.planes * 4, 1, 1, 0, 1, "conv3")(out))
        if self.downsample:
            x = Norm(self.norm, name="downsample_bn")(
                _conv(self.planes * 4, 1, self.stride, 0, 1, "downsample_conv")(x)
            )
        return nn.relu(out + x)


RESNET_LAYERS = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3))}


def resnet_block_settings(depth: int, output_stride: int, width: int = 64) -> list[list[dict]]:
    """Per layer, per block: ``planes``, ``stride``, ``dilation``, ``downsample`` -- torchvision's
    ResNet with LibMTL's ``_nostride_dilate`` for output stride 8 (layer3 dilate 2, layer4 dilate 4)
    or 16 (layer4 dilate 2): a strided conv becomes stride 1 and, when 3x3, dilation dilate / 2;
    every other 3x3 conv of the layer gets dilation ``dilate``; the 1x1 shortcut loses its stride."""
    if depth not in RESNET_LAYERS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    block, counts = RESNET_LAYERS[depth]
    dilate = {8: (1, 1, 2, 4), 16: (1, 1, 1, 2), 32: (1, 1, 1, 1)}[output_stride]
    inplanes, layers = width, []
    for li, (planes, n) in enumerate(zip((width, 2 * width, 4 * width, 8 * width), counts)):
        stride = 1 if li == 0 else 2
        blocks = []
        for b in range(n):
            s = stride if b == 0 else 1
            d = 1
            if dilate[li] > 1:
                d = dilate[li] // 2 if (b == 0 and s == 2) else dilate[li]
                s = 1
            blocks.append(
                dict(
                    planes=planes,
                    stride=s,
                    dilation=d,
                    downsample=b == 0 and (stride != 1 or inplanes != planes * block.expansion),
                )
            )
        inplanes = planes * block.expansion
        layers.append(blocks)
    return layers


class ResNet(nn.Module):
    """torchvision's ResNet-18 / ResNet-50 (NHWC), optionally dilated (LibMTL's ``resnet_dilated``).

    Param names follow torchvision's (``conv1``, ``bn1``, ``layer{l}_{b}`` with ``conv1..3``,
    ``bn1..3``, ``downsample_conv`` / ``downsample_bn``), so :mod:`jmtl.models.pretrained` maps a
    torchvision state_dict onto them one to one.

    Attributes:
      depth: 18 or 50.
      output_stride: 32 (torchvision), 16 or 8 (LibMTL's dilated ResNet; dense prediction).
      pool: global average pooling at the end (``[B, C]`` features) instead of the feature map.
      hidden: with ``pool``, LibMTL's Office encoder's hidden layer width (dense, init N(0, 0.005)
        and bias 0.1, then batch norm, ReLU, dropout 0.5); 0 = none.
      norm: ``'batch'`` or ``'frozen'`` (module docstring).
      weights: path of a ``.npz`` converted from torchvision's ImageNet state_dict
        (``experiments/convert_torchvision_resnet.py``), loaded into ``params['shared']`` when a
        run initialises (:func:`jmtl.models.pretrained.apply_encoder_weights`); ``None`` = from scratch.
      width: channels of ``conv1`` and ``layer1`` (later layers double it, as torchvision's 64, 128,
        256, 512); 64 is torchvision's ResNet and the only width ImageNet weights fit. A smaller
        width is for smoke runs of a config's whole pipeline (the tests use 8: ~64x fewer FLOPs).
    """

    depth: int = 50
    output_stride: int = 32
    pool: bool = False
    hidden: int = 0
    dropout_rate: float = 0.5
    norm: str = "batch"
    weights: Optional[str] = None
    width: int = 64

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        _check_norm(self.norm)
        if self.width < 1:
            raise ValueError(f"ResNet width must be a positive channel count (torchvision's: 64), got {self.width}")
        if self.weights and self.width != 64:
            raise ValueError(
                f"ResNet width={self.width} cannot load ImageNet weights (encoder_kwargs.weights), which have "
                "torchvision's width 64; drop encoder_kwargs.width or the weights"
            )
        block = RESNET_LAYERS[self.depth][0] if self.depth in RESNET_LAYERS else None
        settings = resnet_block_settings(self.depth, self.output_stride, self.width)
        x = nn.Conv(
            self.width, (7, 7), (2, 2), padding=_pad(3), use_bias=False, kernel_init=kaiming_fan_out, name="conv1"
        )(x)
        x = nn.relu(Norm(self.norm, name="bn1")(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=_pad(1))
        for li, blocks in enumerate(settings):
            for b, s in enumerate(blocks):
                x = block(norm=self.norm, name=f"layer{li + 1}_{b}", **s)(x)
        if not self.pool:
            return x
        x = jnp.mean(x, axis=(1, 2))
        if self.hidden:
            x = nn.Dense(
                self.hidden,
                kernel_init=nn.initializers.normal(0.005),
                bias_init=nn.initializers.constant(0.1),
                name="hidden",
            )(x)
            x = nn.relu(Norm(self.norm, name="hidden_bn")(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return x


def resnet50_dilated(**kwargs) -> ResNet:
    """LibMTL's NYUv2 / Cityscapes encoder: ResNet-50, output stride 8, the feature map."""
    return ResNet(**{"depth": 50, "output_stride": 8, "pool": False, **kwargs})


def resnet18(**kwargs) -> ResNet:
    """LibMTL's Office encoder: ResNet-18, pooled, hidden layer of 512."""
    return ResNet(**{"depth": 18, "output_stride": 32, "pool": True, "hidden": 512, **kwargs})


# ----------------------------------------------------------------------------- CelebA CNN


class CelebACNN(nn.Module):
    """FAMO's CelebA network (``experiments/celeba/models.py``'s ``shared_base``): conv widths
    64 | 128, 128 | 256, 256 | 512, 512 (3x3, padding 1, no bias, each followed by batch norm and
    ReLU; ``|`` = 2x2 max-pool), global average pool, then twice dense 512 (no bias) -> batch norm
    -> ReLU. Output ``[B, 512]``; FAMO's heads are one dense layer per attribute
    (``head_kwargs.hidden = 0``).

    ``width`` scales every layer (the first conv's width; the others are 2, 4 and 8 times it):
    64 is FAMO's network, a smaller width is for smoke runs of the config's whole pipeline.
    """

    norm: str = "batch"
    width: int = 64

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        del train
        if x.dtype == jnp.uint8:  # the builder may keep images as bytes
            x = x.astype(jnp.float32) / 255.0
        if self.width < 1:
            raise ValueError(f"CelebACNN width must be a positive channel count (FAMO's: 64), got {self.width}")
        w = self.width
        i = 0
        for g, group in enumerate(((w,), (2 * w, 2 * w), (4 * w, 4 * w), (8 * w, 8 * w))):
            for f in group:
                x = nn.Conv(f, (3, 3), padding=_pad(1), use_bias=False, name=f"conv{i}")(x)
                x = nn.relu(Norm(self.norm, name=f"bn{i}")(x))
                i += 1
            if g < 3:
                x = nn.max_pool(x, (2, 2), (2, 2))
        x = jnp.mean(x, axis=(1, 2))
        for d in range(2):
            x = nn.Dense(8 * w, use_bias=False, name=f"fc{d}")(x)
            x = nn.relu(Norm(self.norm, name=f"fc{d}_bn")(x))
        return x


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
