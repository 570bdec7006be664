"""``jmtl.weighting.as_optax``: any scheme as an optax transformation of stacked per-task gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmtl import weighting

K = 3


def _params():
    rng = np.random.default_rng(0)
    return {
        "shared": jnp.asarray(rng.normal(size=(4, 4)) * 0.5, jnp.float32),
        "heads": {
            "w": jnp.asarray(rng.normal(size=(4, 2 * K)) * 0.5, jnp.float32),
            "b": jnp.zeros((2 * K,), jnp.float32),
        },
    }


def _task_losses(params, x, ys):
    pred = jnp.tanh(x @ params["shared"]) @ params["heads"]["w"] + params["heads"]["b"]  # [n, 2K]
    return jnp.stack([jnp.mean((pred[:, 2 * i : 2 * i + 2] - y) ** 2) for i, y in enumerate(ys)])


def _data():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    ys = [jnp.asarray(np.tanh(np.asarray(x) @ rng.normal(size=(4, 2))) * (3.0**i), jnp.float32) for i in range(K)]
    return x, ys


@pytest.mark.parametrize("name", ["equal", "mgda", "pcgrad", "graddrop", "gradvac", "nash_mtl", "dwa", "upgrad", "rlw"])
def test_update_equals_aggregate_on_the_flat_jacobian(name):
    params = _params()
    x, ys = _data()
    losses = _task_losses(params, x, ys)
    per_task = jax.jacrev(_task_losses)(params, x, ys)  # leaves [K, *shape]
    tx = weighting.as_optax(name, shared=lambda path: True)  # every leaf balanced: the flat Jacobian
    state = tx.init(params)
    key = jax.random.key(7)
    out, new_state = tx.update(per_task, state, params, losses=losses, key=key)
    # The same Jacobian, flattened independently in jax.tree order.
    leaves = jax.tree.leaves(per_task)
    jac = jnp.concatenate([leaf.reshape(K, -1) for leaf in leaves], axis=1)
    expected = weighting.aggregate(name, jac, losses, key=key)
    got = jnp.concatenate([leaf.reshape(-1) for leaf in jax.tree.leaves(out)])
    # as_optax also passes the layout (per-leaf blocks for GradVac): equal up to round-off.
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-6)
    assert jax.tree.structure(out) == jax.tree.structure(params)
    assert all(o.shape == p.shape for o, p in zip(jax.tree.leaves(out), jax.tree.leaves(params)))
    assert int(new_state.count) == 1
    if name == "equal":  # independent truth: the sum of the task gradients
        np.testing.assert_allclose(np.asarray(got), np.asarray(jac.sum(0)), rtol=1e-6)


def test_chain_with_adam_trains_under_jit_and_scan():
    params = _params()
    x, ys = _data()
    tx = optax.chain(weighting.as_optax("pcgrad"), optax.adam(5e-2))
    state = tx.init(params)

    @jax.jit
    def step(carry, _):
        p, s = carry
        losses, vjp = jax.vjp(lambda q: _task_losses(q, x, ys), p)
        per_task = jax.vmap(vjp)(jnp.eye(K))[0]
        updates, s = tx.update(per_task, s, p, losses=losses)
        return (optax.apply_updates(p, updates), s), jnp.sum(losses)

    (p, s), history = jax.lax.scan(step, (params, state), None, length=60)
    assert np.all(np.isfinite(np.asarray(history)))
    assert float(history[-1]) < 0.5 * float(history[0])
    assert int(s[0].count) == 60


def test_k_dependent_state_with_num_tasks_scans_and_without_is_created_lazily():
    params = _params()
    x, ys = _data()
    losses = _task_losses(params, x, ys)
    per_task = jax.jacrev(_task_losses)(params, x, ys)
    lazy = weighting.as_optax("nash_mtl")
    assert lazy.init(params).weighting_state is None
    out_lazy, s = lazy.update(per_task, lazy.init(params), losses=losses)
    assert s.weighting_state.alpha.shape == (K,)
    sized = weighting.as_optax("nash_mtl", num_tasks=K)
    out_sized, _ = jax.jit(lambda g, st, l: sized.update(g, st, losses=l))(per_task, sized.init(params), losses)
    for a, b in zip(jax.tree.leaves(out_lazy), jax.tree.leaves(out_sized)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5)


def test_refusals_name_the_problem():
    with pytest.raises(ValueError, match="learnable parameters"):
        weighting.as_optax("uncertainty")
    with pytest.raises(ValueError, match="bilevel"):
        weighting.as_optax("auto_lambda")
    tx = weighting.as_optax("equal")
    params = _params()
    grads = jax.tree.map(lambda p: jnp.stack([p, p]), params)
    with pytest.raises(ValueError, match="needs the \\[K\\] task losses"):
        tx.update(grads, tx.init(params))
    with pytest.raises(ValueError, match="leading axis of the K=3 tasks"):
        tx.update(grads, tx.init(params), losses=jnp.ones(3))


@pytest.mark.parametrize("name", ["mgda", "pcgrad", "dwa"])
def test_shared_selects_the_balanced_leaves_like_the_functional_core(name):
    """Default ``shared='shared'``: the scheme balances params['shared'] only, as mtl_value_and_grad
    does; a gradient scheme's heads get their own task's gradient, a loss scheme's the weighted sum."""
    import jmtl

    params = _params()
    x, ys = _data()
    losses = _task_losses(params, x, ys)
    per_task = jax.jacrev(_task_losses)(params, x, ys)
    key = jax.random.key(3)
    out, _ = weighting.as_optax(name).update(per_task, weighting.as_optax(name).init(params), losses=losses, key=key)
    vg = jmtl.mtl_value_and_grad(_task_losses, name)
    ref = vg(params, vg.init(params, K), x, ys, key=key)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref.grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6)
    # Independent truth for the shared block: the scheme on the shared rows alone.
    expected = weighting.aggregate(name, per_task["shared"].reshape(K, -1), losses, key=key)
    np.testing.assert_allclose(np.asarray(out["shared"]).reshape(-1), np.asarray(expected), rtol=2e-5, atol=1e-6)
    if weighting.get(name).requires != weighting.LOSSES:
        np.testing.assert_allclose(np.asarray(out["heads"]["w"]), np.asarray(per_task["heads"]["w"].sum(0)), rtol=1e-6)


def test_a_gradient_scheme_without_shared_leaves_is_refused():
    params = {"trunk": jnp.ones((3,)), "head": jnp.ones((2,))}
    grads = jax.tree.map(lambda p: jnp.stack([p, -p]), params)
    tx = weighting.as_optax("mgda")
    with pytest.raises(ValueError, match="selects no leaf.*shared=lambda path: True"):
        tx.init(params)
    tx = weighting.as_optax("mgda", shared="trunk")
    out, _ = tx.update(grads, tx.init(params), losses=jnp.ones(2))
    np.testing.assert_allclose(np.asarray(out["head"]), 0.0)  # the sum of the two opposite rows
    out, _ = weighting.as_optax("equal").update(grads, weighting.as_optax("equal").init(params), losses=jnp.ones(2))
    np.testing.assert_allclose(np.asarray(out["trunk"]), 0.0)  # loss schemes need no shared part
