"""A scheme per parameter group (``jmtl.weighting.per_group``), checked against running the scheme
on each group's columns of the Jacobian by hand, and through ``mtl_value_and_grad`` against
per-task gradients from ``jax.grad`` of each loss alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmtl
from jmtl import weighting
from jmtl.weighting.grouping import parameter_groups

# Leaves of two layers, listed interleaved: the 'layer' groups are not contiguous column ranges.
LAYOUT = (
    ("['enc']['l1']['kernel']", (3, 2)),
    ("['enc']['l2']['kernel']", (2, 2)),
    ("['enc']['l1']['bias']", (2,)),
    ("['enc']['l2']['bias']", (2,)),
)


def _jacobian(k=3, seed=0):
    d = sum(int(np.prod(s)) for _, s in LAYOUT)
    return jnp.asarray(np.random.default_rng(seed).normal(size=(k, d)), jnp.float32)


def _cols(leaves):
    sizes = [int(np.prod(s)) for _, s in LAYOUT]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return np.concatenate([np.arange(starts[i], starts[i + 1]) for i in leaves])


def test_groups_by_layer_leaf_all_and_a_predicate():
    assert parameter_groups(LAYOUT, "layer") == [("['enc']['l1']", (0, 2)), ("['enc']['l2']", (1, 3))]
    assert [g for _, g in parameter_groups(LAYOUT, "leaf")] == [(0,), (1,), (2,), (3,)]
    assert [g for _, g in parameter_groups(LAYOUT, "all")] == [(0, 1, 2, 3)]
    by_kind = parameter_groups(LAYOUT, lambda p: "bias" if p.endswith("['bias']") else "kernel")
    assert by_kind == [("kernel", (0, 1)), ("bias", (2, 3))]


@pytest.mark.parametrize("scheme", ["upgrad", "mgda", "nash_mtl", "pcgrad", "gradvac"])
def test_per_layer_equals_the_scheme_on_each_layers_columns(scheme):
    jac, losses, key = _jacobian(), jnp.array([1.0, 2.0, 0.5]), jax.random.PRNGKey(4)
    inner = weighting.get(scheme)
    t = weighting.per_group(inner, "layer")
    out, state = t.apply(losses, t.init(3, layout=LAYOUT), jacobian=jac, layout=LAYOUT, key=key, step=jnp.int32(0))
    assert out.weights is None and len(state.states) == 2
    expected = np.zeros(jac.shape[1], np.float32)
    for g, (_, leaves) in enumerate(parameter_groups(LAYOUT, "layer")):
        cols = _cols(leaves)
        rows = jac[:, cols]
        sub = tuple(LAYOUT[i] for i in leaves)
        o, _ = weighting.update_from(
            inner,
            losses,
            inner.init(3, layout=sub),
            jacobian=rows,
            gramian=rows @ rows.T,
            layout=sub,
            key=jax.random.fold_in(key, g),
            step=jnp.int32(0),
        )
        expected[cols] = np.asarray(weighting.combine(o, rows))
    np.testing.assert_allclose(out.direction, expected, rtol=1e-5, atol=1e-6)


def test_one_group_is_the_scheme_itself():
    jac = _jacobian()
    t = weighting.per_group(weighting.get("upgrad"), "all")
    out, _ = t.apply(jnp.ones(3), t.init(3, layout=LAYOUT), jacobian=jac, layout=LAYOUT)
    np.testing.assert_allclose(out.direction, weighting.aggregate("upgrad", jac), rtol=1e-5, atol=1e-6)


def test_per_group_through_the_core_on_a_plain_model():
    """UPGrad per layer through mtl_value_and_grad equals UPGrad on each layer's rows of the explicit Jacobian."""
    rng = np.random.default_rng(0)
    params = {
        "shared": {"l1": {"kernel": rng.normal(size=(4, 5)) * 0.5}, "l2": {"kernel": rng.normal(size=(5, 3)) * 0.5}},
        "heads": [rng.normal(size=(3,)), rng.normal(size=(3,))],
    }
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    x = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    ys = jnp.asarray(rng.normal(size=(2, 16)), jnp.float32)

    def loss_fn(p, x, ys):
        h = jnp.tanh(jnp.tanh(x @ p["shared"]["l1"]["kernel"]) @ p["shared"]["l2"]["kernel"])
        return jnp.stack([jnp.mean((h @ p["heads"][k] - ys[k]) ** 2) for k in range(2)])

    vg = jmtl.mtl_value_and_grad(loss_fn, weighting.per_group(weighting.get("upgrad"), "layer"))
    res = vg(params, vg.init(params, 2), x, ys)
    for layer in ("l1", "l2"):
        rows = jnp.stack(
            [jax.grad(lambda p: loss_fn(p, x, ys)[k])(params)["shared"][layer]["kernel"].ravel() for k in range(2)]
        )
        np.testing.assert_allclose(
            res.grads["shared"][layer]["kernel"].ravel(), weighting.aggregate("upgrad", rows), rtol=1e-4, atol=1e-6
        )


def test_bad_uses_are_named():
    with pytest.raises(ValueError, match="gradient scheme"):
        weighting.per_group(weighting.get("equal"))
    with pytest.raises(ValueError, match="unknown group_by"):
        weighting.per_group(weighting.get("upgrad"), "layers")
    t = weighting.per_group(weighting.get("upgrad"))
    with pytest.raises(ValueError, match="layout"):
        t.init(3)
    state = t.init(3, layout=LAYOUT)
    with pytest.raises(ValueError, match="groups"):
        t.apply(jnp.ones(3), state, jacobian=_jacobian()[:, :6], layout=LAYOUT[:1])
