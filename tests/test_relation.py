"""The learnable task-relation matrix W recovers known task groups."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmtl import weighting
from jmtl.models import base, mtl
from jmtl.tasks import Task
from jmtl.training import step as step_lib


def test_relation_matrix_identity_init_and_layout():
    tasks = tuple(Task(f"t{i}", "regression", 1) for i in range(3))
    model = mtl.build(
        tasks, encoder="mlp", encoder_kwargs=dict(features=(4,)), head_kwargs=dict(hidden=5), relation=True
    )
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 3)))["params"]
    assert set(params) == {"shared", "tasks", "relation"}
    assert set(params["tasks"]) == {"t0", "t1", "t2"}
    np.testing.assert_array_equal(params["relation"], np.eye(3))
    no_rel = mtl.build(tasks, encoder="mlp", encoder_kwargs=dict(features=(4,)), head_kwargs=dict(hidden=5))
    p2 = no_rel.init(jax.random.PRNGKey(0), jnp.zeros((2, 3)))["params"]
    assert "relation" not in p2
    # At W = I the mixed model computes exactly what the unmixed one does.
    x = jnp.ones((2, 3))
    a, b = model.apply({"params": params}, x), no_rel.apply({"params": p2}, x)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)


def test_relation_needs_equal_representation_sizes():
    mixed = (Task("r", "regression", 1), Task("c", "classification", 3))
    # The regression head passes the shared representation through (hidden=None); the classification
    # head has a 50-unit hidden layer: their representations cannot be mixed.
    with pytest.raises(ValueError, match="equal representation sizes"):
        mtl.build(mixed, encoder="mlp", relation=True)


def test_mix_tasks_is_the_weighted_sum_over_tasks():
    """base.mix_tasks (the relation matrix's and the cross-stitch unit's product) against the sum
    y_i = sum_j W_ij x_j written out in float64, on [B, H] and [B, H, W, C] arrays."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3))
    for shape in ((4, 5), (2, 3, 3, 2)):
        xs = [rng.normal(size=shape) for _ in range(3)]
        got = base.mix_tasks(jnp.asarray(w, jnp.float32), [jnp.asarray(x, jnp.float32) for x in xs])
        for i in range(3):
            want = sum(w[i, j] * xs[j] for j in range(3))
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="equal shapes"):
        base.mix_tasks(jnp.eye(2), [jnp.zeros((2, 3)), jnp.zeros((2, 4))])
    with pytest.raises(ValueError, match=r"needs a \[2, 2\] matrix"):
        base.mix_tasks(jnp.eye(3), [jnp.zeros((2, 3)), jnp.zeros((2, 3))])


@pytest.mark.parametrize("seed", [0])
def test_learned_relation_matrix_recovers_task_groups(seed):
    """Tasks {0,1} share one target function and {2,3} another (plus independent label noise).
    After training with alpha*|W|^2, mean |W_ij| within groups (i != j) exceeds the mean across groups."""
    k, groups, d = 4, [0, 0, 1, 1], 10
    tasks = tuple(Task(f"t{i}", "regression", 1) for i in range(k))
    rng = np.random.default_rng(seed)
    w_a, w_b = rng.normal(size=(2, d))

    def batch(n=64):
        x = rng.normal(size=(n, d)).astype(np.float32)
        f = {0: np.sin(x @ w_a), 1: np.sin(x @ w_b)}
        out = {"x": x}
        for i, g in enumerate(groups):
            out[f"t{i}"] = (f[g] + 0.5 * rng.normal(size=n)).astype(np.float32)[:, None]
        return out

    model = mtl.build(
        tasks, encoder="mlp", encoder_kwargs=dict(features=(32,)), head_kwargs=dict(hidden=16), relation=True
    )
    t, opt = weighting.get("equal"), optax.adam(3e-3)
    state = step_lib.init_state(model, t, opt, jnp.zeros((1, d)), k, seed=seed)
    fn = jax.jit(
        step_lib.make_train_step(
            model, tasks, t, opt, step_lib.StepConfig(penalties=(mtl.relation_penalty(1e-3),), input_key="x")
        )
    )
    for _ in range(1500):
        state, _ = fn(state, batch())
    w = np.abs(np.asarray(state.params["relation"]))
    same = np.array([[groups[i] == groups[j] and i != j for j in range(k)] for i in range(k)])
    cross = np.array([[groups[i] != groups[j] for j in range(k)] for i in range(k)])
    assert w[same].mean() > 2.0 * w[cross].mean(), np.round(w, 3)
