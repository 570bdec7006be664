"""Per-task inputs: each task's loss on its own batch through the shared encoder.

Truth: ``jax.jacrev`` of a hand-written function taking each task's loss on its own data.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmtl import data as data_lib
from jmtl import weighting
from jmtl.tasks import Task
from jmtl.training import step as step_lib

# Values, not speed: the programs compile without XLA's optimisation passes (conftest's
# xla_optimizations_off; this file's compile-bound tests took ~0.6x the time in one measured run).
pytestmark = pytest.mark.usefixtures("xla_optimizations_off")


TASKS = (Task("amazon", "classification", 3), Task("webcam", "classification", 3))


class Model(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = nn.relu(nn.Dense(6, name="shared")(x))
        return {t.name: nn.Dense(3, name=t.name)(h) for t in TASKS}


def _domain(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.normal(loc=seed, size=(n, 5)).astype(np.float32)
    return {"image": x, "label": rng.integers(0, 3, size=n).astype(np.int32)}


def _tasks():
    return tuple(Task(t.name, t.kind, t.num_outputs, label_key="label") for t in TASKS)


def _losses(params, batch):
    def one(name):
        out = Model().apply({"params": params}, batch[name]["image"])[name]
        return optax.softmax_cross_entropy_with_integer_labels(out, batch[name]["label"]).mean()

    return jnp.stack([one(t.name) for t in TASKS])


@pytest.mark.parametrize("method", ["equal", "mgda", "pcgrad"])
def test_each_task_on_its_own_batch(method):
    batch = {"amazon": _domain(0, 12), "webcam": _domain(3, 7)}  # different sizes are fine
    w = weighting.get(method)
    config = step_lib.StepConfig(input_key="image", per_task_inputs=True)
    state = step_lib.init_state(Model(), w, optax.sgd(1.0), batch["amazon"]["image"], 2, 0)
    new, metrics = jax.jit(step_lib.make_train_step(Model(), _tasks(), w, optax.sgd(1.0), config))(state, batch)
    np.testing.assert_allclose(np.asarray(metrics["losses"]), np.asarray(_losses(state.params, batch)), rtol=1e-5)
    jac = jax.jacrev(_losses)(state.params, batch)
    rows = np.concatenate([np.asarray(x).reshape(2, -1) for x in jax.tree.leaves(jac["shared"])], axis=1)
    want_shared = np.asarray(weighting.aggregate(method, rows))
    got = np.concatenate(
        [
            (np.asarray(a) - np.asarray(b)).ravel()
            for a, b in zip(jax.tree.leaves(state.params["shared"]), jax.tree.leaves(new.params["shared"]))
        ]
    )
    np.testing.assert_allclose(got, want_shared, rtol=2e-4, atol=1e-6)
    for k, t in enumerate(TASKS):  # heads: their own task's gradient on their own data
        for a, b, g in zip(
            jax.tree.leaves(state.params[t.name]), jax.tree.leaves(new.params[t.name]), jax.tree.leaves(jac[t.name])
        ):
            np.testing.assert_allclose(np.asarray(a) - np.asarray(b), np.asarray(g)[k], rtol=2e-4, atol=1e-6)


def test_missing_task_batch_and_representation_mode_are_refused():
    w = weighting.get("mgda")
    with pytest.raises(ValueError, match="per_task_inputs.*representation"):
        step_lib.make_train_step(
            Model(),
            _tasks(),
            w,
            optax.sgd(1.0),
            step_lib.StepConfig(input_key="image", per_task_inputs=True, jacobian_mode="representation"),
        )
    state = step_lib.init_state(Model(), w, optax.sgd(1.0), _domain(0, 4)["image"], 2, 0)
    step = step_lib.make_train_step(
        Model(), _tasks(), w, optax.sgd(1.0), step_lib.StepConfig(input_key="image", per_task_inputs=True)
    )
    with pytest.raises(KeyError, match=r"no sub-batch for task\(s\) \['webcam'\]"):
        step(state, {"amazon": _domain(0, 4)})


class _Counter:
    """A resumable iterator: batches numbered from its state."""

    def __init__(self, offset):
        self.i, self.offset = 0, offset

    def __next__(self):
        self.i += 1
        return {"x": np.array([self.offset + self.i])}

    def get_state(self):
        return {"i": self.i}

    def set_state(self, s):
        self.i = s["i"]


def test_per_task_batches_resume_exactly():
    it = data_lib.PerTaskBatches({"a": _Counter(0), "b": _Counter(100)})
    next(it), next(it)
    saved = it.get_state()
    want = [next(it) for _ in range(3)]
    again = data_lib.PerTaskBatches({"a": _Counter(0), "b": _Counter(100)})
    again.set_state(saved)
    got = [next(again) for _ in range(3)]
    assert [(g["a"]["x"][0], g["b"]["x"][0]) for g in got] == [(w["a"]["x"][0], w["b"]["x"][0]) for w in want]
    with pytest.raises(ValueError, match="other tasks"):
        again.set_state({"a": {"i": 0}})


def test_per_task_inputs_on_eight_devices_equal_one(script_runner):
    """jmtl.fit with per-task data under shard_map and pmap over 8 devices = one device (the per-task
    losses and Jacobian rows are averaged across devices before the scheme combines them)."""
    out = script_runner("per_task_devices.py", "equal,pcgrad", devices=8, env={"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"})
    assert out["devices"] == 8
    for driver, diffs in out["max_abs_diff"].items():
        for method, diff in diffs.items():
            assert diff < 2e-5, (driver, method, diff)
