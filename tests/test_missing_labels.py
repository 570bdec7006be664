"""Tasks with missing labels: a per-example mask entry ``<label>_mask`` per task.

Truth: the same losses and gradients computed on the labelled examples alone (slicing, no mask).
"""

from __future__ import annotations

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmtl import weighting
from jmtl.tasks import Task
from jmtl.training import evaluate
from jmtl.training import step as step_lib

TASKS = (Task("cls", "classification", 3), Task("reg", "regression", 1))


class Model(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = nn.tanh(nn.Dense(8, name="shared")(x))
        return {"cls": nn.Dense(3, name="cls")(h), "reg": nn.Dense(1, name="reg")(h)[:, 0]}


def _data(n=32, labelled_frac=0.25, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    cls = rng.integers(0, 3, size=n).astype(np.int32)
    reg = (x @ np.array([1.0, -1.0, 0.5, 2.0], np.float32)).astype(np.float32)
    mask = np.zeros(n, np.float32)
    mask[rng.permutation(n)[: max(1, int(labelled_frac * n))]] = 1
    reg_missing = np.where(mask > 0, reg, np.nan).astype(np.float32)  # placeholders are NaN
    return {"image": x, "cls": cls, "reg": reg_missing, "reg_mask": mask}, reg


def _subset_losses(params, batch, full_reg):
    """The two task losses with the regression loss taken over the labelled rows only (slicing)."""
    out = Model().apply({"params": params}, batch["image"])
    ce = optax.softmax_cross_entropy_with_integer_labels(out["cls"], batch["cls"]).mean()
    keep = batch["reg_mask"] > 0
    mse = jnp.mean((out["reg"][keep] - full_reg[keep]) ** 2)
    return jnp.stack([ce, mse])


def test_masked_losses_and_gradients_equal_the_labelled_subset():
    batch, full_reg = _data()
    for method in ("equal", "mgda"):
        w = weighting.get(method)
        state = step_lib.init_state(Model(), w, optax.sgd(1.0), batch["image"], 2, 0)
        step = jax.jit(
            step_lib.make_train_step(Model(), TASKS, w, optax.sgd(1.0), step_lib.StepConfig(input_key="image"))
        )
        new, metrics = step(state, batch)
        assert bool(metrics["finite"]), method
        want_losses = _subset_losses(state.params, batch, full_reg)
        np.testing.assert_allclose(np.asarray(metrics["losses"]), np.asarray(want_losses), rtol=1e-5)
        jac = jax.jacrev(_subset_losses)(state.params, batch, full_reg)
        weights = np.asarray(metrics["weights"])
        # heads take their own task's gradient; the shared layer w^T J (equal: the sum, MGDA: its weights)
        for name, rows_w in (("cls", np.array([1.0, 0.0])), ("reg", np.array([0.0, 1.0])), ("shared", weights)):
            want = jax.tree.map(lambda g: np.tensordot(rows_w, np.asarray(g), axes=1), jac[name])
            got = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), state.params[name], new.params[name])
            for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_allclose(g, e, rtol=2e-4, atol=1e-6, err_msg=f"{method} {name}")


def test_a_batch_without_labels_for_a_task_gives_a_zero_row_never_nan():
    batch, _ = _data()
    batch["reg_mask"] = np.zeros_like(batch["reg_mask"])
    batch["reg"] = np.full_like(batch["reg"], np.nan)
    for method in ("mgda", "pcgrad", "nash_mtl"):
        w = weighting.get(method)
        state = step_lib.init_state(Model(), w, optax.sgd(0.1), batch["image"], 2, 0)
        step = jax.jit(
            step_lib.make_train_step(Model(), TASKS, w, optax.sgd(0.1), step_lib.StepConfig(input_key="image"))
        )
        new, metrics = step(state, batch)
        assert bool(metrics["finite"]), method
        assert float(metrics["losses"][1]) == 0.0
        # the regression head got no gradient at all
        for a, b in zip(jax.tree.leaves(new.params["reg"]), jax.tree.leaves(state.params["reg"])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(new.params))


def test_training_with_one_task_labelled_on_ten_percent_of_examples():
    """The sparse task still learns, and the masked evaluation averages over its labelled examples."""
    batch, full_reg = _data(n=400, labelled_frac=0.1, seed=1)
    w = weighting.get("equal")
    opt = optax.adam(3e-2)
    state = step_lib.init_state(Model(), w, opt, batch["image"], 2, 0)
    step = jax.jit(step_lib.make_train_step(Model(), TASKS, w, opt, step_lib.StepConfig(input_key="image")))
    eval_step = jax.jit(evaluate.make_eval_step(Model(), TASKS, step_lib.StepConfig(input_key="image")))
    first = None
    for _ in range(150):
        state, metrics = step(state, batch)
        assert bool(metrics["finite"])
        first = float(metrics["losses"][1]) if first is None else first
    assert float(metrics["losses"][1]) < 0.2 * first
    sums = jax.device_get(eval_step(state.params, {**batch, "mask": np.ones(400, np.float32)}))
    out = Model().apply({"params": state.params}, batch["image"])
    keep = batch["reg_mask"] > 0
    want_mse = float(np.mean((np.asarray(out["reg"])[keep] - full_reg[keep]) ** 2))
    assert sums["reg"][evaluate.TASK_COUNT] == keep.sum() == 40
    np.testing.assert_allclose(sums["reg"]["mse"] / sums["reg"][evaluate.TASK_COUNT], want_mse, rtol=1e-4)
    means = evaluate.evaluate(
        eval_step,
        state.params,
        {k: v for k, v in batch.items()},
        TASKS,
        driver=types.SimpleNamespace(
            shard_batch=lambda b: b, num_devices=1, process_index=0, process_count=1, unreplicate=lambda x: x
        ),
        batch_size=128,
    )
    np.testing.assert_allclose(means["reg"]["mse"], want_mse, rtol=1e-4)
    assert evaluate.TASK_COUNT not in means["reg"]


def test_a_task_without_labels_in_the_first_batch_is_warned_about(tmp_path):
    """MGDA on batches where a task has no labels: its zero Jacobian row is the min-norm point, so the
    run would silently not train; the loop says so. Equal weighting is not affected (no warning)."""
    import warnings

    import flax.linen as nn

    import jmtl

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x, *, train: bool = False):
            h = nn.Dense(4, name="shared")(x)
            return {"a": nn.Dense(1)(h)[:, 0], "b": nn.Dense(1)(h)[:, 0]}

    rng = np.random.default_rng(0)
    n = 40
    arrays = {
        "x": rng.normal(size=(n, 3)).astype(np.float32),
        "a": rng.normal(size=n).astype(np.float32),
        "b": rng.normal(size=n).astype(np.float32),
        "b_mask": np.zeros(n, np.float32),
    }
    arrays["b_mask"][-2:] = 1  # b labelled on 2 of 40 examples: most batches of 10 have none
    tasks = [jmtl.Task("a", "regression", 1), jmtl.Task("b", "regression", 1)]
    order = lambda seed: [{k: v[i : i + 10] for k, v in arrays.items()} for i in range(0, n, 10)]
    for method, expect in (("mgda", True), ("equal", False)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            jmtl.fit(
                Model(),
                tasks,
                order,
                validation=arrays,
                test=arrays,
                workdir=tmp_path / method,
                num_steps=2,
                weighting=method,
                input_key="x",
                progress_bar=False,
            )
        hits = [w for w in caught if "no labelled example in the first training batch" in str(w.message)]
        assert bool(hits) == expect, (method, [str(w.message)[:80] for w in caught])
        if expect:
            assert "b" in str(hits[0].message) and "MGDA" in str(hits[0].message)
