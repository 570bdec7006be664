"""StepConfig(per_example=True): every example's loss is one objective (K = B) in the Flax train step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmtl import weighting
from jmtl.core.jacobian import flatten_rows, unflatten_like
from jmtl.models import mtl
from jmtl.tasks import Task
from jmtl.training import step as step_lib

# Values, not speed: the programs compile without XLA's optimisation passes (conftest's
# xla_optimizations_off; this file's compile-bound tests took ~0.6x the time in one measured run).
pytestmark = pytest.mark.usefixtures("xla_optimizations_off")


ROOT = Path(__file__).resolve().parents[1]
TASKS = (Task("a", "regression", 2), Task("b", "classification", 3))
B = 6


def _setup():
    model = mtl.build(
        TASKS, encoder="mlp", encoder_kwargs=dict(features=(8, 8)), head_kwargs=dict(hidden=4, dropout_rate=0.0)
    )
    rng = np.random.default_rng(0)
    batch = {
        "x": rng.normal(size=(B, 5)).astype(np.float32),
        "a": rng.normal(size=(B, 2)).astype(np.float32),
        "b": rng.integers(0, 3, B).astype(np.int32),
    }
    return model, batch


def test_per_example_step_equals_a_hand_computation():
    """One UPGrad step with per_example=True: the shared params move by the scheme's combination of the
    B per-example gradients (each taken by its own jax.grad on one example, summed over the tasks), the
    heads by the sum of their per-example gradients; the log holds the task batch means and NaN weights."""
    model, batch = _setup()
    upgrad, lr = weighting.get("upgrad"), 0.1
    opt = optax.sgd(lr)
    cfg = step_lib.StepConfig(per_example=True)
    step = step_lib.make_train_step(model, TASKS, upgrad, opt, cfg)
    assert step.gradient_path == "per_example_jacobian"
    state = step_lib.init_state(model, upgrad, opt, batch["x"][:1], B, seed=0)
    new_state, metrics = jax.jit(step)(state, batch)

    params = state.params

    def example_losses(p, i):  # [K] losses of example i, from the model's outputs by hand
        x, ya, yb = (jnp.asarray(batch[k])[i] for k in ("x", "a", "b"))
        out = model.apply({"params": p}, x[None], train=True)
        mse = jnp.mean((out["a"][0] - ya) ** 2)
        ce = -jax.nn.log_softmax(out["b"][0])[yb]
        return jnp.stack([mse, ce])

    grad = jax.jit(jax.grad(lambda p, i: jnp.sum(example_losses(p, i))))  # one compile, B calls
    rows = [grad(params, i) for i in range(B)]
    jac = jnp.stack([flatten_rows(jax.tree.map(lambda x: x[None], g["shared"]))[0] for g in rows])
    out, _ = jax.jit(upgrad.apply)(jnp.zeros(B), upgrad.init(B), gramian=jac @ jac.T)
    shared_dir = unflatten_like(out.weights @ jac, params["shared"])
    heads = jax.tree.map(lambda *g: sum(g), *[g["tasks"] for g in rows])
    want = {"shared": jax.tree.map(lambda p, g: p - lr * g, params["shared"], shared_dir)}
    want["tasks"] = jax.tree.map(lambda p, g: p - lr * g, params["tasks"], heads)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves({k: new_state.params[k] for k in want})):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    per_task = np.mean(np.stack([jax.jit(example_losses)(params, i) for i in range(B)]), axis=0)
    np.testing.assert_allclose(metrics["losses"], per_task, rtol=1e-5)
    assert metrics["weights"].shape == (len(TASKS),) and np.all(np.isnan(metrics["weights"]))
    assert bool(metrics["finite"])


def test_per_example_step_refuses_what_it_cannot_do():
    model, batch = _setup()
    upgrad, opt = weighting.get("upgrad"), optax.sgd(0.1)
    cfg = step_lib.StepConfig(per_example=True)
    make = lambda **kw: step_lib.make_train_step(model, TASKS, kw.pop("w", upgrad), opt, cfg, **kw)
    with pytest.raises(ValueError, match="one device"):
        make(axis_name="data")
    with pytest.raises(ValueError, match="not a Gramian or Jacobian scheme"):
        make(w=weighting.get("uncertainty"))
    for bad, match in (
        (dict(jacobian_mode="representation"), "jacobian_mode='params'"),
        (dict(per_task_inputs=True), "per_task_inputs"),
        (dict(gramian="autogram"), "gramian='rows'"),
    ):
        with pytest.raises(ValueError, match=match):
            step_lib.make_train_step(model, TASKS, upgrad, opt, step_lib.StepConfig(per_example=True, **bad))
    tagging = (Task("t", "tagging", 4),)
    with pytest.raises(ValueError, match=r"\['t'\] pool their loss"):
        step_lib.make_train_step(model, tagging, upgrad, opt, cfg)
    step = jax.jit(make())
    # a scheme state sized for K tasks (not B examples): a stateful scheme (Nash-MTL) is refused at trace time
    nash = weighting.get("nash_mtl")
    nash_step = jax.jit(step_lib.make_train_step(model, TASKS, nash, opt, cfg))
    with pytest.raises(ValueError, match=f"num_tasks={B}"):
        nash_step(step_lib.init_state(model, nash, opt, batch["x"][:1], len(TASKS), seed=0), batch)
    state = step_lib.init_state(model, upgrad, opt, batch["x"][:1], B, seed=0)
    with pytest.raises(ValueError, match="label masks"):
        step(state, {**batch, "a_mask": np.ones(B, np.float32)})


@pytest.mark.parametrize("option", ["--config.weighting.per_example=True", "--config.weighting.gramian=autogram"])
def test_config_driven_per_example_run(tmp_path, option):
    """python -m experiments.train with weighting.per_example=True, or the Gramian engine, trains a few
    steps of GradNorm's toy with the default (shard_map) driver on one device: both run on the single
    driver, which computes the same step."""
    cmd = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config",
        "experiments/configs/gradnorm_toy.py:upgrad",
        option,
        "--config.batch_size=16",
        "--config.num_steps=3",
        "--config.eval_every_steps=3",
        "--config.log_every_steps=1",
        f"--workdir={tmp_path / 'run'}",
    ]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    assert len(log) >= 3


def test_per_example_benchmark_quick_smoke(tmp_path):
    """experiments/bench/per_example.py --quick end to end (timings are not checked). Without torch /
    torchjd (CI's environment) the torch rows are skipped and the output says so."""
    import importlib.util
    import json

    from experiments.bench import per_example as bench

    bench.main(["--quick", "--out-dir", str(tmp_path)])
    record = json.loads((tmp_path / "per_example.json").read_text())
    assert record["provenance"]["recorded"]
    has_torch = all(importlib.util.find_spec(m) is not None for m in ("torch", "torchjd"))
    for cell in record["results"]["mlp_sarcos"].values():
        rows = cell["rows"]
        assert {r["status"] for r in rows.values()} == {"ran"}
        assert set(rows) == set(bench.JMTL_ROWS) | (set(bench.TORCH_ROWS) if has_torch else set())
        if has_torch:  # the same weights and batch: jmtl's per-example UPGrad update is torchjd's
            assert cell["max_rel_diff"] < 1e-4
    text = (tmp_path / "per_example.md").read_text()
    assert "| 8 | jmtl_per_example |" in text
    assert has_torch or "torch rows skipped" in text
    # A typo in --models is the parser's one-line error (exit 2) naming the valid models; nothing written.
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--models", "lenet", "--out-dir", str(tmp_path / "typo")])
    assert exit_info.value.code == 2 and not (tmp_path / "typo").exists()
