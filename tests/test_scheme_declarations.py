"""Schemes declare what they need (``needs_key``, ``fixed_weights``), and the declarations are true.

Checked by brute force over the whole registry: a scheme whose direction changes with the PRNG key
must declare ``needs_key`` (so the functional core can refuse ``key=None`` instead of reusing one
key every step), one that declares it must actually use the key, and ``fixed_weights`` schemes give
the same direction whatever the losses.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmtl
from jmtl import weighting
from jmtl.weighting.transforms import aggregate

K, D = 5, 12  # krum needs at least 2f+3 = 5 rows


def _directions(name, jac, losses, keys):
    # One compiled program per scheme, called with each key (op-by-op, each call re-traced and
    # re-compiled the schemes' solver loops: minutes for the registry).
    fn = jax.jit(lambda j, l, k: aggregate(name, j, l, key=k))
    return [np.asarray(fn(jac, losses, k)) for k in keys]


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    jac = jnp.asarray(rng.normal(size=(K, D)).astype(np.float32))  # random rows: several conflicting pairs
    losses = jnp.asarray(rng.uniform(0.5, 2.0, size=K).astype(np.float32))
    return jac, losses


def _schemes():
    # Rep-level-only schemes (NTKMTL-SR) need the representation's per-sample layout, which a bare
    # [K, d] Jacobian does not have; tests/test_weighting_recent.py checks them. Last-layer schemes
    # (BayesAgg-MTL) read the representation and the labels, not a Jacobian (deterministic, not fixed
    # weights; tests/test_bayesagg.py).
    return [
        n
        for n in weighting.names()
        if weighting.get(n).requires not in (weighting.BILEVEL, weighting.LAST_LAYER)
        and not weighting.get(n).rep_level_only
    ]


def test_needs_key_is_declared_exactly_by_the_schemes_that_draw(problem):
    jac, losses = problem
    keys = [jax.random.key(i) for i in (1, 2, 3)]
    undeclared, unused = [], []
    for name in _schemes():
        dirs = _directions(name, jac, losses, keys)
        varies = any(not np.allclose(dirs[0], d, rtol=1e-6, atol=1e-7) for d in dirs[1:])
        declared = weighting.get(name).needs_key
        if varies and not declared:
            undeclared.append(name)
        if declared and not varies:
            unused.append(name)
    assert not undeclared, f"schemes whose direction depends on the key but needs_key=False: {undeclared}"
    assert not unused, f"schemes declaring needs_key whose direction ignores the key: {unused}"


def test_fixed_weights_do_not_depend_on_losses_or_gradients(problem):
    jac, losses = problem
    fixed = [n for n in _schemes() if weighting.get(n).fixed_weights]
    assert set(fixed) >= {"equal", "sum", "mean", "static"}
    for name in fixed:
        a = np.asarray(aggregate(name, jac, losses))
        b = np.asarray(aggregate(name, 3.0 * jac, 10.0 * losses))
        np.testing.assert_allclose(b, 3.0 * a, rtol=1e-5, atol=1e-6, err_msg=name)  # same weights on scaled rows


@pytest.mark.parametrize("name", ["rlw", "pcgrad", "alternating"])
def test_functional_core_refuses_a_missing_key_for_random_schemes(name):
    def loss_fn(params, x):
        return jnp.stack([jnp.sum((params["shared"] * x - t) ** 2) for t in (1.0, -1.0, 2.0)])

    params = {"shared": jnp.ones((3,))}
    vg = jmtl.mtl_value_and_grad(loss_fn, name)
    state = vg.init(params, 3)
    with pytest.raises(ValueError, match="key="):
        vg(params, state, jnp.ones((3,)))
    out = vg(params, state, jnp.ones((3,)), key=jax.random.key(0))
    assert np.all(np.isfinite(np.asarray(out.losses)))


def test_functional_core_keeps_working_without_a_key_for_deterministic_schemes():
    def loss_fn(params, x):
        return jnp.stack([jnp.sum((params["shared"] * x - t) ** 2) for t in (1.0, -1.0)])

    params = {"shared": jnp.ones((3,))}
    vg = jmtl.mtl_value_and_grad(loss_fn, "mgda")
    out = vg(params, vg.init(params, 2), jnp.ones((3,)))
    g = jax.grad(lambda p: jnp.sum(loss_fn(p, jnp.ones((3,))) * out.weights))(params)
    np.testing.assert_allclose(np.asarray(out.grads["shared"]), np.asarray(g["shared"]), rtol=1e-5)
