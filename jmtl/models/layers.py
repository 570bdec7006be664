"""Convolution and pooling layers formulated for fast XLA code on CPU.

XLA's CPU backend is slow for the small convolutions of LeNet-sized models (few channels, 5x5
kernels) and for the gradient of ``reduce_window`` max-pooling (``select_and_scatter``). This
module rewrites both in terms of ops XLA compiles well: data movement (slices, stacks, reshapes)
feeding one dense matmul, and elementwise selects. Numbers behind the choices come from
``experiments/bench/lenet_ops.py`` (``results/bench/bench_lenet_ops.md``): Multi-LeNet forward+backward,
batch 256, on a shared 2-core EPYC, as median time relative to plain PyTorch (1 thread, faster
than 2 on that loaded machine) in the same round-robin:

=============================================  ===========
nn.Conv + nn.max_pool (flax default)           2.2x
nn.Conv + max_pool_2x2                         1.3x
Conv (block-Toeplitz) + nn.max_pool            1.5x
Conv (block-Toeplitz) + max_pool_2x2 (this)    0.53-0.95x (varies with the machine's load)
=============================================  ===========

* :func:`max_pool_2x2` -- 2x2/stride-2 max-pool (NHWC) as two pairwise maxima of reshaped
  halves. Same values and gradient as ``nn.max_pool(x, (2, 2), (2, 2))``; the gradient is an
  elementwise select instead of ``nn.max_pool``'s slow ``select_and_scatter``.
* :class:`Conv` -- drop-in for ``nn.Conv`` (same param names, shapes and initialisers, so params
  are interchangeable) computing a stride-1 convolution as a *block-Toeplitz matmul*
  (:func:`conv2d_toeplitz`): 2.4x less fwd+bwd time than ``nn.Conv`` in the model above.
  Rejected alternatives (same table): im2col with ``conv_general_dilated_patches`` (its input
  gradient is a slow convolution: 5.5x torch), NCHW layout (1.6x), plain im2col by slices (1.7x).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

Array = jax.Array
PaddingLike = Union[str, int, Sequence[Union[int, Tuple[int, int]]]]

# Smallest matmul width (block_width * features) the default block width aims for. Thinner
# matmuls run far below speed -- in the backward pass too, where the width becomes the
# contraction of the input-gradient matmul -- while wider blocks multiply more zeros (a block
# needs block_width + kw - 1 input columns). Fwd+bwd of Multi-LeNet (median ratio to torch):
# conv2 at width 40 (block 2) 1.5-1.8x slower than at 80 (block 4); conv1 flat from 40 to 80,
# slower at 240 (block 24). See choose_block_width.
_MIN_MATMUL_WIDTH = 64


# --------------------------------------------------------------------------------------------
# Max-pooling
# --------------------------------------------------------------------------------------------


def _max_first(a: Array, b: Array) -> Array:
    """Elementwise max that routes the whole gradient to ``a`` on ties (and propagates NaN).

    ``jnp.maximum`` would do for the values, but its gradient splits ties 50/50, which costs
    extra compares, selects and a multiply per element in the backward pass (and the masks are
    materialised in the forward pass); a ``where`` on one boolean needs a single select.
    """
    take_a = (a >= b) | jnp.isnan(a)
    return jnp.where(take_a, a, b)


def max_pool_2x2(x: Array) -> Array:
    """2x2 max-pool with stride 2 of NHWC ``x`` (odd trailing rows/columns dropped, like VALID).

    Values equal ``nn.max_pool(x, (2, 2), (2, 2))``, and so does the gradient, ties included:
    the max is taken over column pairs first, then over row pairs, each time preferring the
    first operand on ties, so the gradient goes to the first maximum of the window in row-major
    order -- the element ``reduce_window``'s ``select_and_scatter`` picks. Why not
    ``nn.max_pool``: its ``select_and_scatter`` gradient is slow on XLA CPU, while this one is a
    few fused elementwise selects. Multi-LeNet fwd+bwd with the Toeplitz conv, relative to
    torch: ``nn.max_pool`` 1.5x, ``jnp.max`` over a reshape 0.68-0.75x (its gradient divides by
    the tie count), two ``jnp.maximum`` 0.56x (its gradient splits ties), this 0.53-0.56x.
    """
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, : 2 * h2, : 2 * w2]  # VALID pooling ignores an odd last row/column
    cols = x.reshape(b, 2 * h2, w2, 2, c)
    x = _max_first(cols[:, :, :, 0], cols[:, :, :, 1])  # [b, h, w2, c]
    rows = x.reshape(b, h2, 2, w2, c)
    return _max_first(rows[:, :, 0], rows[:, :, 1])


# --------------------------------------------------------------------------------------------
# Convolution as a block-Toeplitz matmul
# --------------------------------------------------------------------------------------------


def choose_block_width(w_out: int, features: int) -> int:
    """Default number of output columns computed per matmul row (a divisor of ``w_out``).

    The smallest divisor ``wb`` of ``w_out`` with ``wb * features >= 64`` (``w_out`` if none):
    for Multi-LeNet, 8 for conv1 (10 features, 24 columns) and 4 for conv2 (20 features, 8).
    """
    divisors = [d for d in range(1, w_out + 1) if w_out % d == 0]
    for d in divisors:
        if d * features >= _MIN_MATMUL_WIDTH:
            return d
    return w_out


def toeplitz_kernel(kernel: Array, block_width: int) -> Array:
    """The ``[kh * win * cin, block_width * cout]`` matrix applying ``kernel`` to one block.

    ``kernel`` is HWIO ``[kh, kw, cin, cout]``; ``win = block_width + kw - 1``. Row ``(i, v, c)``
    / column ``(w, o)`` holds ``kernel[i, v - w, c, o]`` when ``0 <= v - w < kw``, else 0: each
    of the ``block_width`` output columns is the kernel shifted by ``w`` along the input row.
    Built by padding and stacking (data movement only), so the values are exact and the
    gradient is slices and adds.
    """
    kh, kw, cin, cout = kernel.shape
    win = block_width + kw - 1
    shifted = [jnp.pad(kernel, ((0, 0), (w, win - kw - w), (0, 0), (0, 0))) for w in range(block_width)]
    t = jnp.stack(shifted, axis=3)  # [kh, win, cin, block_width, cout]
    return t.reshape(kh * win * cin, block_width * cout)


def toeplitz_patches(x: Array, kh: int, kw: int, block_width: int) -> Array:
    """Rows ``[b * ho * nb, kh * win * cin]`` for :func:`toeplitz_kernel` (``nb = wo / block_width``).

    Row ``(n, h, s)`` holds the ``kh x win`` input window whose top-left corner is at
    ``(h, s * block_width)``. Built in two stacks, column windows first (``nb`` slices), then
    row windows (``kh`` slices). Measured alternatives: rows first is ~20% slower (shorter
    contiguous runs); stacking all ``kh * nb`` windows at once is as fast for few windows but
    falls off with many (Multi-LeNet with conv1 block 4, 30 windows: 1.2x torch vs 0.83x).
    """
    b, h, w, cin = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    nb, win = wo // block_width, block_width + kw - 1
    cols = jnp.stack([x[:, :, s * block_width : s * block_width + win] for s in range(nb)], axis=2)
    rows = jnp.stack([cols[:, i : i + ho] for i in range(kh)], axis=3)  # [b, ho, nb, kh, win, cin]
    return rows.reshape(b * ho * nb, kh * win * cin)


def conv2d_toeplitz(
    x: Array,
    kernel: Array,
    block_width: Optional[int] = None,
    precision: lax.PrecisionLike = None,
) -> Array:
    """Stride-1 VALID 2-D convolution (cross-correlation, like ``lax.conv``) of NHWC ``x``.

    Equals ``lax.conv_general_dilated(x, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC',
    'HWIO', 'NHWC'))``. Each group of ``block_width`` adjacent output pixels of a row is one row
    of a single matmul ``patches @ toeplitz_kernel``. Why: XLA CPU runs the direct small
    convolution (and its two transposed convolutions in the backward pass) far below matmul
    speed; here the forward is one GEMM and the backward is two GEMMs plus slices/pads/adds.
    ``block_width = wo`` is the full Toeplitz form, ``block_width = 1`` is plain im2col.
    """
    b, h, w, cin = x.shape
    kh, kw, kcin, cout = kernel.shape
    if kcin != cin:
        raise ValueError(f"kernel expects {kcin} input channels, input has {cin}")
    ho, wo = h - kh + 1, w - kw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"kernel {kh}x{kw} larger than the input {h}x{w}")
    wb = choose_block_width(wo, cout) if block_width is None else block_width
    if wo % wb:
        raise ValueError(f"block_width {wb} must divide the output width {wo}")
    patches = toeplitz_patches(x, kh, kw, wb)
    y = jnp.dot(patches, toeplitz_kernel(kernel, wb), precision=precision)
    return y.reshape(b, ho, wo, cout)


# --------------------------------------------------------------------------------------------
# The Linen module
# --------------------------------------------------------------------------------------------


def _pair(v: Union[int, Sequence[int]]) -> Tuple[int, ...]:
    """An int means the same value for both spatial dims."""
    return (v, v) if isinstance(v, int) else tuple(v)


def _explicit_padding(padding: PaddingLike, kernel_size: Tuple[int, int]) -> Optional[list]:
    """``[(lo, hi), (lo, hi)]`` for the stride-1 paddings the fast path supports, else None.

    'SAME' follows lax's rule for stride 1: total ``k - 1``, the extra one on the high side.
    """
    if isinstance(padding, str):
        if padding == "VALID":
            return [(0, 0), (0, 0)]
        if padding == "SAME":
            return [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_size]
        return None  # CIRCULAR, REFLECT, CAUSAL: leave to lax
    if isinstance(padding, int):
        return [(padding, padding)] * 2
    pads = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
    return pads if len(pads) == 2 else None


class Conv(nn.Module):
    """Drop-in for ``nn.Conv`` on NHWC inputs, computed by :func:`conv2d_toeplitz`.

    Same attribute names and defaults as ``nn.Conv`` for the ones it supports (``padding``
    defaults to 'SAME' as there), same params (``kernel`` ``[kh, kw, cin, features]``,
    ``bias`` ``[features]``) and the same default initialisers, so a params tree works with
    either module. 2-D convolutions with stride 1 and no dilation take the fast path (zero
    padding applied with ``jnp.pad`` first); strides or dilations fall back to
    ``lax.conv_general_dilated`` (what ``nn.Conv`` computes); 'CIRCULAR', 'REFLECT' and 'CAUSAL'
    padding and ``feature_group_count``/``mask`` are not supported. ``block_width`` overrides
    :func:`choose_block_width`.
    """

    features: int
    kernel_size: Union[int, Sequence[int]]
    strides: Union[int, Sequence[int]] = 1
    padding: PaddingLike = "SAME"
    input_dilation: Union[int, Sequence[int]] = 1
    kernel_dilation: Union[int, Sequence[int]] = 1
    use_bias: bool = True
    dtype: Optional[jnp.dtype] = None
    param_dtype: jnp.dtype = jnp.float32
    precision: lax.PrecisionLike = None
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
    block_width: Optional[int] = None

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """Convolves ``inputs`` ``[..., H, W, C]`` (leading dims are batch dims)."""
        kernel_size = _pair(self.kernel_size)
        if len(kernel_size) != 2:
            raise ValueError(f"Conv here is 2-D only; got kernel_size {self.kernel_size}")
        batch_shape = inputs.shape[:-3]
        x = inputs.reshape((-1,) + inputs.shape[-3:])
        kernel = self.param("kernel", self.kernel_init, kernel_size + (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)

        pads = _explicit_padding(self.padding, kernel_size)
        if pads is None:
            raise NotImplementedError(f"padding {self.padding!r} is not supported; use nn.Conv")
        fast = (
            _pair(self.strides) == (1, 1)
            and _pair(self.input_dilation) == (1, 1)
            and _pair(self.kernel_dilation) == (1, 1)
        )
        if fast:
            if any(p != (0, 0) for p in pads):
                x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
            y = conv2d_toeplitz(x, kernel, self.block_width, self.precision)
        else:
            y = lax.conv_general_dilated(
                x,
                kernel,
                _pair(self.strides),
                # lax resolves 'SAME' for strides/dilations itself; our pads are stride-1 only.
                self.padding if isinstance(self.padding, str) else pads,
                lhs_dilation=_pair(self.input_dilation),
                rhs_dilation=_pair(self.kernel_dilation),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=self.precision,
            )
        if bias is not None:
            y = y + bias
        return y.reshape(batch_shape + y.shape[1:])
