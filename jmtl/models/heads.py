"""Task heads, split into ``represent`` (task-specific representation h) and ``output`` (last layer).

The split lets the task-relation matrix mix the representations, z_i = sum_j W_ij h_j, before each
task's output layer.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


class ClassificationHead(nn.Module):
    """Sener & Koltun's Multi-LeNet head: dense -> relu -> dropout (h), then dense -> logits.

    ``hidden=0`` makes it one dense layer on the encoder's features (LibMTL's Office heads, FAMO's
    CelebA heads); then ``h`` is the input itself.
    """

    num_outputs: int
    hidden: int = 50
    dropout_rate: float = 0.5

    def setup(self):
        if self.hidden < 0:
            raise ValueError(f"ClassificationHead hidden must be >= 0 (0 = a single dense layer), got {self.hidden}")
        if self.hidden:
            self.body = nn.Dense(self.hidden)
            self.dropout = nn.Dropout(self.dropout_rate)
        self.out = nn.Dense(self.num_outputs)

    @property
    def rep_size(self) -> Optional[int]:
        return self.hidden or None

    def represent(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if not self.hidden:
            return x
        return self.dropout(nn.relu(self.body(x)), deterministic=not train)

    def output(self, z: jax.Array) -> jax.Array:
        return self.out(z)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.output(self.represent(x, train=train))


class RegressionHead(nn.Module):
    """Affine head (``hidden=None``, as in the GradNorm toy) or dense -> relu -> dense."""

    num_outputs: int
    hidden: Optional[int] = None

    def setup(self):
        if self.hidden:
            self.body = nn.Dense(self.hidden)
        self.out = nn.Dense(self.num_outputs)

    @property
    def rep_size(self) -> Optional[int]:
        return self.hidden

    def represent(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        return nn.relu(self.body(x)) if self.hidden else x

    def output(self, z: jax.Array) -> jax.Array:
        return self.out(z)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.output(self.represent(x, train=train))


PIXEL_HEAD_STYLES = ("segnet", "deeplab")


class ASPP(nn.Module):
    """LibMTL's ``ASPP`` (DeepLab v3): a 1x1 conv, 3x3 convs at ``rates``, and image pooling (global
    mean -> 1x1 conv, broadcast back), 256 channels each (no bias, batch norm, ReLU), concatenated
    and projected by a 1x1 conv (no bias, batch norm, ReLU, dropout)."""

    rates: tuple[int, ...] = (12, 24, 36)
    features: int = 256
    dropout_rate: float = 0.5
    norm: str = "batch"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        from jmtl.models.vision import Norm

        def branch(y, k, d, name):
            y = nn.Conv(
                self.features,
                (k, k),
                padding=((d * (k // 2),) * 2,) * 2,
                kernel_dilation=(d, d),
                use_bias=False,
                name=f"{name}_conv",
            )(y)
            return nn.relu(Norm(self.norm, name=f"{name}_bn")(y))

        outs = [branch(x, 1, 1, "b0")] + [branch(x, 3, r, f"b{i + 1}") for i, r in enumerate(self.rates)]
        pooled = branch(jnp.mean(x, axis=(1, 2), keepdims=True), 1, 1, "pool")
        # Upsampling a 1x1 map bilinearly (LibMTL: align_corners=False) is a broadcast.
        outs.append(jnp.broadcast_to(pooled, x.shape[:3] + (self.features,)))
        y = branch(jnp.concatenate(outs, axis=-1), 1, 1, "project")
        return nn.Dropout(self.dropout_rate, deterministic=not train)(y)


class PixelHead(nn.Module):
    """Per-pixel head for dense prediction (kinds ``segmentation``, ``depth``, ``normal``) on NHWC
    features ``[B, h, w, C]``; outputs ``[B, h * upsample, w * upsample, num_outputs]``.

    * ``style='segnet'`` (default): MTAN's prediction layer (``conv_layer(..., pred=True)`` of
      ``model_segnet_mtan.py``, the same in ``model_segnet_split.py``): 3x3 conv -> ``hidden``
      channels (default 64, SegNet's output width) as h, then a 1x1 conv -> ``num_outputs``; no
      normalisation or activation between them; xavier-normal kernels, zero bias.
    * ``style='deeplab'``: LibMTL's ``DeepLabHead``: :class:`ASPP` (rates 12, 24, 36), 3x3 conv ->
      ``hidden`` (default 256; no bias) -> batch norm -> ReLU as h, then a 1x1 conv ->
      ``num_outputs`` and a bilinear (align_corners=True) upsampling by ``upsample`` (8 after
      ``resnet50_dilated``, giving the input resolution).

    The head returns raw values: the segmentation loss applies the softmax and the normal loss the
    L2 normalisation (the task kinds of :mod:`jmtl.tasks`).
    """

    num_outputs: int
    style: str = "segnet"
    hidden: Optional[int] = None
    upsample: int = 1
    dropout_rate: float = 0.5
    norm: str = "batch"

    def setup(self):
        from jmtl.models import vision  # vision imports nothing from this module

        if self.style not in PIXEL_HEAD_STYLES:
            raise ValueError(f"unknown pixel head style {self.style!r}; valid: {', '.join(PIXEL_HEAD_STYLES)}")
        if self.upsample < 1:
            raise ValueError(f"pixel head upsample must be an integer factor >= 1, got {self.upsample}")
        pad1 = ((1, 1), (1, 1))
        if self.style == "segnet":
            self.conv = nn.Conv(self.rep_size, (3, 3), padding=pad1, kernel_init=vision.xavier_normal)
            self.out = nn.Conv(self.num_outputs, (1, 1), kernel_init=vision.xavier_normal)
        else:
            self.aspp = ASPP(dropout_rate=self.dropout_rate, norm=self.norm)
            self.conv = nn.Conv(self.rep_size, (3, 3), padding=pad1, use_bias=False)
            self.bn = vision.Norm(self.norm)
            self.out = nn.Conv(self.num_outputs, (1, 1))

    @property
    def rep_size(self) -> int:
        if self.hidden:
            return int(self.hidden)
        return 64 if self.style == "segnet" else 256

    def represent(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(
                f"a pixel head ({self.style}) needs NHWC feature maps [B, H, W, C], got shape {x.shape}; use a dense "
                "encoder (segnet, resnet50_dilated), not a pooled one"
            )
        if self.style == "segnet":
            return self.conv(x)
        return nn.relu(self.bn(self.conv(self.aspp(x, train=train))))

    def output(self, z: jax.Array) -> jax.Array:
        from jmtl.models.vision import resize_bilinear_align_corners

        y = self.out(z)
        if self.upsample > 1:
            y = resize_bilinear_align_corners(y, (y.shape[1] * self.upsample, y.shape[2] * self.upsample))
        return y

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.output(self.represent(x, train=train))


# 'binary' (jmtl.tasks.BINARY): the classification head with one output, the sigmoid logit.
# Pixel kinds (jmtl.tasks): logits [B, H, W, classes], depth [B, H, W, 1], normals [B, H, W, 3].
HEADS = {
    "classification": ClassificationHead,
    "regression": RegressionHead,
    "binary": ClassificationHead,
    "segmentation": PixelHead,
    "depth": PixelHead,
    "normal": PixelHead,
}
