"""The train loop (jmtl.training.loop.train, which experiments/train.py calls) end to end on the embedded gradnorm_toy dataset."""

import json

import jax
import numpy as np
import pytest
from conftest import toy_config

from experiments.configs import gradnorm_toy
from jmtl.runs.checkpoint import CheckpointMismatchError
from jmtl.training.loop import train


def _config(tmp_path, **overrides):
    return toy_config(tmp_path, **{"num_steps": 40, "eval_every_steps": 10, "log_every_steps": 5, **overrides})


def test_outputs_and_exact_resume(tmp_path):
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    summary, full = train(_config(tmp_path), str(full_dir))
    for name in (
        "config.json",
        "metrics.jsonl",
        "train_log.jsonl",
        "summary.json",
        "plots/losses_and_weights.png",
        "plots/eval_metrics.png",
    ):
        assert (full_dir / name).exists(), name
    evals = [json.loads(l) for l in (full_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [10, 20, 30, 40]
    assert set(evals[0]) >= {"validation", "test"}
    assert summary["best_validation"]["step"] in (10, 20, 30, 40)
    assert summary["steps_per_s"] > 0

    # Stop after 20 steps, then resume to 40: same params, same logs, as the uninterrupted run.
    train(_config(tmp_path, num_steps=20), str(part_dir))
    _, resumed = train(_config(tmp_path), str(part_dir))
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
        np.testing.assert_array_equal(a, b)
    assert int(resumed.step) == 40
    steps = [json.loads(l)["step"] for l in (part_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40]


def test_refuses_checkpoint_of_a_different_model(tmp_path):
    wd = tmp_path / "wd"
    train(_config(tmp_path, num_steps=10), str(wd))
    before = sorted(p.name for p in (wd / "checkpoints").iterdir())
    with pytest.raises(CheckpointMismatchError, match="different model.*shape changes"):
        train(_config(tmp_path, **{"model.encoder_kwargs": {"features": (50, 50)}}), str(wd))
    with pytest.raises(CheckpointMismatchError, match="weighting 'equal' vs 'mgda'"):
        c = _config(tmp_path)
        c.weighting = gradnorm_toy.get_config("mgda").weighting
        train(c, str(wd))
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == before


def test_bad_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown weighting scheme 'nash'.*valid schemes"):
        c = _config(tmp_path)
        c.weighting.name = "nash"
        train(c, str(tmp_path / "a"))
    with pytest.raises(ValueError, match="asks for label 'nope'"):
        train(_config(tmp_path, tasks={"t0": {"label": "nope"}}), str(tmp_path / "b"))
    with pytest.raises(ValueError, match="unknown encoder 'resnet'"):
        train(_config(tmp_path, **{"model.encoder": "resnet"}), str(tmp_path / "c"))


def test_bfloat16_compute_trains_like_float32(tmp_path):
    """--config.model.compute_dtype=bfloat16 end to end: float32 master weights, near-float32 results."""
    s32, p32 = train(_config(tmp_path), str(tmp_path / "f32"))
    s16, p16 = train(_config(tmp_path, **{"model.compute_dtype": "bfloat16"}), str(tmp_path / "bf16"))
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(p16.params))
    for task, metrics in s32["final"]["test"].items():
        assert s16["final"]["test"][task]["mse"] == pytest.approx(metrics["mse"], rel=0.1), task
    assert s16["final"]["test"] != s32["final"]["test"]  # it did run in bfloat16


def test_resumes_a_workdir_written_before_new_config_fields(tmp_path):
    """A config.json from before optimizer.clip_norm / writers existed resumes when they keep their
    defaults; a changed value of such a field is refused like any other."""
    wd = tmp_path / "wd"
    train(_config(tmp_path, num_steps=10), str(wd))
    saved = json.loads((wd / "config.json").read_text())
    del saved["optimizer"]["clip_norm"], saved["writers"]
    (wd / "config.json").write_text(json.dumps(saved, indent=2))
    with pytest.raises(ValueError, match=r"optimizer\.clip_norm: 0\.0 -> 1\.0"):
        train(_config(tmp_path, num_steps=20, **{"optimizer.clip_norm": 1.0}), str(wd))
    _, state = train(_config(tmp_path, num_steps=20), str(wd))
    assert int(state.step) == 20
