"""jmtl.models.layers: Conv matches nn.Conv, max_pool_2x2 matches nn.max_pool."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmtl.models.layers import Conv, choose_block_width, conv2d_toeplitz, max_pool_2x2

jax.config.update("jax_default_matmul_precision", "highest")  # compare f32 math, not TF32/bf16 paths

TOL = 1e-5


def _close(a, b, tol: float = TOL) -> None:
    """Absolute 1e-5 after scaling by the magnitude (gradients sum thousands of terms)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = max(1.0, float(np.max(np.abs(b))))
    np.testing.assert_allclose(a / scale, b / scale, atol=tol, rtol=0)


CONV_CASES = [
    # (input shape NHWC, features, kernel, padding, block_width)
    ((4, 28, 28, 1), 10, 5, "VALID", None),  # Multi-LeNet conv1
    ((4, 12, 12, 10), 20, 5, "VALID", None),  # Multi-LeNet conv2
    ((3, 12, 12, 10), 20, 5, "VALID", 1),  # plain im2col
    ((3, 12, 12, 10), 20, 5, "VALID", 8),  # full Toeplitz
    ((2, 10, 10, 10), 7, 3, "SAME", None),
    ((2, 9, 11, 1), 5, 3, ((1, 0), (2, 1)), None),  # explicit padding, non-square, odd sizes
    ((2, 3, 10, 10, 10), 6, 3, "VALID", None),  # two batch dims
    ((10, 10, 10), 6, 3, "VALID", None),  # no batch dim
]


@pytest.mark.parametrize("shape,features,k,padding,wb", CONV_CASES)
def test_conv_matches_nn_conv(shape, features, k, padding, wb):
    """Same params tree, values and gradients (input and params) as nn.Conv."""
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    ref = nn.Conv(features, (k, k), padding=padding)
    mine = Conv(features, (k, k), padding=padding, block_width=wb)
    # Params from numpy (nonzero bias, so its path carries a real value): a jitted init would
    # cost a compile per case, and init equality has its own test below.
    shapes = jax.eval_shape(ref.init, jax.random.key(1), x)
    assert jax.eval_shape(mine.init, jax.random.key(1), x) == shapes
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape, dtype=np.float32) * 0.3, shapes)

    # The cotangent is an argument: drawn inside jit from a constant key, XLA would constant-fold
    # the whole random draw at compile time (seconds).
    cot = rng.standard_normal(jax.eval_shape(ref.apply, params, x).shape, dtype=np.float32)

    @jax.jit
    def value_and_grads(p, x, cot):
        y_ref, vjp_ref = jax.vjp(lambda p, x: ref.apply(p, x), p, x)
        y_mine, vjp_mine = jax.vjp(lambda p, x: mine.apply(p, x), p, x)
        return y_mine, y_ref, vjp_mine(cot), vjp_ref(cot)

    y_mine, y_ref, g_mine, g_ref = value_and_grads(params, x, cot)
    _close(y_mine, y_ref)
    for a, b in zip(jax.tree.leaves(g_mine), jax.tree.leaves(g_ref)):
        _close(a, b)


def test_conv_init_matches_nn_conv():
    """Same initialisers: the same key gives the very same params tree as nn.Conv."""
    x = jnp.zeros((1, 12, 12, 10))
    ref, mine = nn.Conv(20, (5, 5), padding="VALID"), Conv(20, (5, 5), padding="VALID")
    p_ref, p_mine = jax.jit(lambda k: (ref.init(k, x), mine.init(k, x)))(jax.random.key(3))
    assert jax.tree.structure(p_ref) == jax.tree.structure(p_mine)
    for a, b in zip(jax.tree.leaves(p_mine), jax.tree.leaves(p_ref)):
        np.testing.assert_array_equal(a, b)


def test_conv_jit_and_vmap():
    """Works under jit and vmap (the Jacobian of the train step vmaps the backward pass)."""
    x = np.random.default_rng(0).standard_normal((2, 12, 12, 10), dtype=np.float32)
    mine, ref = Conv(20, (5, 5), padding="VALID"), nn.Conv(20, (5, 5), padding="VALID")
    rng = np.random.default_rng(1)
    shapes = jax.eval_shape(ref.init, jax.random.key(1), x)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape, dtype=np.float32), shapes)
    cots = np.random.default_rng(2).standard_normal((3, 2, 8, 8, 20), dtype=np.float32)

    def jac(module):
        _, vjp = jax.vjp(lambda p: module.apply(p, x), params)
        return jax.jit(jax.vmap(vjp))(cots)

    for a, b in zip(jax.tree.leaves(jac(mine)), jax.tree.leaves(jac(ref))):
        _close(a, b)


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
def test_strided_conv_falls_back(padding):
    """Strides go to lax.conv_general_dilated and still match nn.Conv."""
    x = np.random.default_rng(0).standard_normal((2, 9, 10, 3), dtype=np.float32)
    ref = nn.Conv(4, (3, 3), strides=2, padding=padding)
    rng = np.random.default_rng(1)
    shapes = jax.eval_shape(ref.init, jax.random.key(1), x)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape, dtype=np.float32), shapes)
    mine = Conv(4, (3, 3), strides=2, padding=padding)
    _close(*jax.jit(lambda p, x: (mine.apply(p, x), ref.apply(p, x)))(params, x))


def test_conv2d_toeplitz_rejects_bad_block_width():
    x, k = jax.ShapeDtypeStruct((1, 12, 12, 2), jnp.float32), jax.ShapeDtypeStruct((5, 5, 2, 3), jnp.float32)
    with pytest.raises(ValueError):
        jax.eval_shape(lambda x, k: conv2d_toeplitz(x, k, block_width=3), x, k)  # output width 8 is not a multiple of 3


def test_choose_block_width_divides():
    for w_out in range(1, 40):
        for features in (1, 10, 20, 64):
            assert w_out % choose_block_width(w_out, features) == 0


# --------------------------------------------------------------------------------------------
# max_pool_2x2
# --------------------------------------------------------------------------------------------


def _ref_pool(x):
    return nn.max_pool(x, (2, 2), (2, 2))


@jax.jit
def _pool_value_grads(x, cot):
    """(mine, nn.max_pool) values and gradients of <pool(x), cot>, in one compiled call."""
    y, vjp = jax.vjp(max_pool_2x2, x)
    y_ref, vjp_ref = jax.vjp(_ref_pool, x)
    return y, y_ref, vjp(cot)[0], vjp_ref(cot)[0]


@pytest.mark.parametrize("shape", [(4, 24, 24, 10), (2, 7, 9, 3)])  # LeNet pool1; odd sizes
def test_max_pool_values_and_grad_without_ties(shape):
    """Continuous random input has no ties: value and gradient equal nn.max_pool's."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    cot = rng.standard_normal((shape[0], shape[1] // 2, shape[2] // 2, shape[3]), dtype=np.float32)
    y, y_ref, g, g_ref = _pool_value_grads(x, cot)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(g, g_ref, atol=1e-6)


def _check_subgradient(x, cot, g):
    """g is a valid subgradient of <max_pool(x), cot>: in each window it is cot times a convex
    combination of the window's argmax positions (weights >= 0, on maxima only, summing to 1)."""
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    assert np.all(np.asarray(g)[:, 2 * h2 :] == 0) and np.all(np.asarray(g)[:, :, 2 * w2 :] == 0)
    xw = np.asarray(x)[:, : 2 * h2, : 2 * w2].reshape(b, h2, 2, w2, 2, c)
    gw = np.asarray(g)[:, : 2 * h2, : 2 * w2].reshape(b, h2, 2, w2, 2, c)
    cot = np.asarray(cot)[:, :, None, :, None, :]
    weights = gw / np.where(cot == 0, 1.0, cot)
    is_max = xw == xw.max(axis=(2, 4), keepdims=True)
    assert np.all(weights >= -1e-6)
    assert np.all(np.where(is_max, 0.0, np.abs(weights)) <= 1e-6)
    np.testing.assert_allclose(weights.sum(axis=(2, 4)), 1.0, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 8, 9, 4)])
def test_max_pool_gradient_with_ties(shape):
    """Quantised inputs tie often (incl. all-equal and anti-diagonal windows): values match
    nn.max_pool, the gradient is a valid subgradient and, since both route a tie to the first
    maximum in row-major order, it even equals nn.max_pool's."""
    x = np.round(np.random.default_rng(0).uniform(size=shape) * 2.0).astype(np.float32)  # {0,1,2}
    x[0, :2, :2, 0] = 1.0  # four equal values
    x[0, :2, 2:4, 0] = [[1.0, 2.0], [2.0, 1.0]]  # tie across the two rows
    cot = np.random.default_rng(1).standard_normal((shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
    y, y_ref, g, g_ref = _pool_value_grads(x, cot.astype(np.float32))
    np.testing.assert_array_equal(y, y_ref)
    _check_subgradient(x, cot, g)
    _check_subgradient(x, cot, g_ref)
    np.testing.assert_array_equal(g, g_ref)


def test_max_pool_propagates_nan():
    """Like lax's max (and nn.max_pool), a NaN in a window makes the window's max NaN."""
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, 0, 1, 0] = np.nan
    x[0, 3, 3, 0] = np.nan
    y = np.asarray(jax.jit(max_pool_2x2)(x))
    np.testing.assert_array_equal(y, _ref_pool(x))  # assert_array_equal treats NaN == NaN
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y[0, 1, 1, 0])
