"""Chunked per-task Jacobians (StepConfig.jacobian_chunk_size) give the unchunked step's result."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmtl import weighting
from jmtl.core import jacobian as jacobian_lib
from jmtl.models import mtl
from jmtl.tasks import Task
from jmtl.training import step as step_lib

# Values, not speed: the programs compile without XLA's optimisation passes (conftest's
# xla_optimizations_off; this file's compile-bound tests took ~0.6x the time in one measured run).
pytestmark = pytest.mark.usefixtures("xla_optimizations_off")


K = 5  # chunks of 3 leave a padded last chunk
TASKS = tuple(Task(f"t{i}", "regression", 2) for i in range(K - 1)) + (Task("c", "classification", 3),)


def _problem():
    model = mtl.build(
        TASKS, encoder="mlp", encoder_kwargs=dict(features=(12, 8)), head_kwargs=dict(hidden=6), relation=True
    )
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(3):
        b = {
            "x": jnp.asarray(rng.normal(size=(16, 5)), jnp.float32),
            "c": jnp.asarray(rng.integers(0, 3, 16), jnp.int32),
        }
        for t in TASKS[:-1]:
            b[t.name] = jnp.asarray(rng.normal(size=(16, 2)), jnp.float32)
        batches.append(b)
    return model, batches


def _run(model, batches, method, mode, chunk):
    t, opt = weighting.get(method), optax.sgd(0.05)
    state = step_lib.init_state(model, t, opt, jnp.zeros((1, 5)), K, seed=0)
    cfg = step_lib.StepConfig(
        input_key="x", penalties=(mtl.relation_penalty(1e-3),), jacobian_mode=mode, jacobian_chunk_size=chunk
    )
    fn = jax.jit(step_lib.make_train_step(model, TASKS, t, opt, cfg))
    weights = []
    for b in batches:
        state, metrics = fn(state, b)
        assert bool(metrics["finite"])
        weights.append(np.asarray(metrics["weights"]))
    return state, np.stack(weights)


@pytest.mark.parametrize(
    "method,mode",
    [
        ("mgda", "params"),  # Gramian scheme returning weights
        ("pcgrad", "params"),  # Gramian scheme (weights of the projected rows)
        ("trimmed_mean", "params"),  # Jacobian scheme returning a direction
        ("mgda", "representation"),
        ("upgrad", "representation"),
    ],
)
def test_chunked_jacobian_equals_unchunked(method, mode):
    model, batches = _problem()
    ref, ref_w = _run(model, batches, method, mode, 0)
    for chunk in (1, 3, K):
        got, got_w = _run(model, batches, method, mode, chunk)
        if method != "trimmed_mean":
            np.testing.assert_allclose(got_w, ref_w, rtol=1e-5, atol=1e-6, err_msg=f"chunk={chunk}")
        leaves = jax.tree_util.tree_flatten_with_path(got.params)[0]
        for (path, a), b in zip(leaves, jax.tree.leaves(ref.params), strict=True):
            np.testing.assert_allclose(
                a, b, rtol=1e-5, atol=1e-6, err_msg=f"chunk={chunk} {jax.tree_util.keystr(path)}"
            )


def test_per_task_gradients_rows_and_sums_match_jacrev():
    """The helper itself: rows = jacrev rows of the rowed part, summed = sum of the other part's rows."""
    w = {"a": jnp.arange(6.0).reshape(2, 3) / 7, "b": jnp.array([0.3, -0.2, 0.5])}
    head = jnp.array([1.0, 2.0, -1.0, 0.5, 0.1, 0.2, 0.3])  # one scalar per task
    x = jnp.linspace(-1, 1, 6).reshape(2, 3)

    def losses(p, h):
        z = jnp.tanh(x @ p["a"].T).sum() + p["b"]
        return jnp.concatenate([z, z[:2] * 2, z[:2] ** 2]) * h + h**2

    k = 7
    _, vjp_fn = jax.vjp(losses, w, head)
    jac_w, jac_h = jax.jacrev(losses, argnums=(0, 1))(w, head)
    for chunk in (0, 1, 2, 3, 7, 9):
        rows, summed = jacobian_lib.per_task_gradients(vjp_fn, k, jnp.float32, lambda g: g, head, chunk_size=chunk)
        np.testing.assert_allclose(rows, jacobian_lib.flatten_rows(jac_w), rtol=1e-6, err_msg=f"chunk={chunk}")
        np.testing.assert_allclose(summed, jac_h.sum(0), rtol=1e-6, err_msg=f"chunk={chunk}")


def test_padded_chunk_with_nonfinite_loss_leaves_state_unchanged():
    model, batches = _problem()
    t, opt = weighting.get("mgda"), optax.sgd(0.05)
    state = step_lib.init_state(model, t, opt, jnp.zeros((1, 5)), K, seed=0)
    fn = jax.jit(
        step_lib.make_train_step(model, TASKS, t, opt, step_lib.StepConfig(input_key="x", jacobian_chunk_size=3))
    )
    bad = dict(batches[0])
    bad["t1"] = bad["t1"].at[2, 0].set(jnp.nan)
    new, metrics = fn(state, bad)
    assert not bool(metrics["finite"])
    np.testing.assert_array_equal(np.asarray(metrics["losses_finite"]), [True, False, True, True, True])
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)


def test_negative_chunk_size_is_refused():
    model, _ = _problem()
    with pytest.raises(ValueError, match="jacobian_chunk_size"):
        step_lib.make_train_step(
            model, TASKS, weighting.get("mgda"), optax.sgd(0.1), step_lib.StepConfig(jacobian_chunk_size=-2)
        )


def test_library_default_chunk_size_is_the_trainers():
    """StepConfig's default (-1) resolves like the training loop's: chunks of 1 on CPU, one vmap elsewhere."""
    assert step_lib.StepConfig().resolved_chunk_size == (1 if jax.default_backend() == "cpu" else 0)
    assert step_lib.StepConfig(jacobian_chunk_size=0).resolved_chunk_size == 0
