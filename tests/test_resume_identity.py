"""A resumed run must be the same run (issue 23 §1): each fault is injected between a run and its resume,
and the resume must be refused with one line naming what changed (in words), leaving every file of the
workdir as it was. The truth is the injected change itself; the control is an unchanged resume.

Faults: other files under the same ``data_dir`` of a registered (built-in style) dataset; ``config.json``
deleted or garbled while the learning rate changes; ``jmtl.fit`` resumed with other validation / test
batches, another custom optax learning rate, or a task's kind changed; a model whose every param changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import flax.linen as nn
import numpy as np
import optax
import pytest
from conftest import toy_config

import jmtl
from jmtl import data as data_lib
from jmtl.runs import workdir as workdir_lib
from jmtl.runs.checkpoint import CheckpointMismatchError
from jmtl.tasks import Task
from jmtl.training.loop import train

FAST = {
    "num_steps": 2,
    "eval_every_steps": 2,
    "log_every_steps": 1,
    "checkpoint_every_steps": 2,
    "model.encoder_kwargs": {"features": (8,)},
    "batch_size": 20,
}


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` -> sha256 of its bytes (what "no earlier file changed" compares)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


# ---------------------------------------------------------------------------- a dataset read from files


def _write_data(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 60), ("validation", 20), ("test", 20)):
        x = rng.normal(size=(n, 5)).astype(np.float32)
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x, (x @ rng.normal(size=5)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "data.npz", **arrays)


def _register_file_dataset():
    def loader(data_dir=None):
        raw = np.load(Path(data_dir) / "data.npz")
        splits = {s: {"x": raw[f"{s}_x"], "y": raw[f"{s}_y"]} for s in ("train", "validation", "test")}
        return data_lib.from_arrays("file_ds", splits, input_key="x", labels={"y": "regression"})

    data_lib.register("file_ds", loader, overwrite=True)


def test_other_files_under_the_same_data_dir_are_refused(tmp_path):
    data_dir, wd = tmp_path / "data", tmp_path / "wd"
    config = _file_config(tmp_path)
    train(config, str(wd))
    before = snapshot(wd)
    _write_data(data_dir, seed=1)  # the same path, other content (as MNIST files replaced by Fashion-MNIST)
    config.num_steps = 4
    with pytest.raises(
        workdir_lib.ResumeIdentityError,
        match=r"the train split's examples differ .*the validation split's examples differ.*Fix:",
    ) as e:
        train(config, str(wd))
    assert len(e.value.differences) == 3 and "\n" not in str(e.value)
    config.optimizer.learning_rate = 0.5  # and a config change with it: both are named
    with pytest.raises(
        workdir_lib.ResumeIdentityError,
        match=r"the test split's examples differ .*; the config differs \(optimizer.learning_rate: "
        r"0.001 -> 0.5\) from what",
    ):
        train(config, str(wd))
    config.optimizer.learning_rate = 0.001
    assert snapshot(wd) == before
    _write_data(data_dir, seed=0)  # the original files: resumes
    summary, _ = train(config, str(wd))
    assert summary["steps"] == 4


# ---------------------------------------------------------------------------- config.json gone or garbled


def _file_config(tmp_path, **overrides):
    _register_file_dataset()
    if not (tmp_path / "data").exists():
        _write_data(tmp_path / "data", seed=0)
    return toy_config(
        tmp_path,
        **{
            **FAST,
            "dataset.name": "file_ds",
            "dataset.kwargs": {},
            "dataset.data_dir": str(tmp_path / "data"),
            **overrides,
        },
    )


@pytest.mark.parametrize("damage", ["deleted", "garbled"])
def test_config_record_damage_cannot_change_the_learning_rate(tmp_path, damage):
    wd = tmp_path / "wd"
    config = _file_config(tmp_path)
    train(config, str(wd))
    original = json.loads((wd / "config.json").read_text())
    if damage == "deleted":
        (wd / "config.json").unlink()
    else:
        (wd / "config.json").write_text('{"optimizer": {"learning_rate": 0.5')  # cut short
    before = snapshot(wd)
    changed = _file_config(tmp_path, num_steps=4)
    changed.optimizer.learning_rate = 0.5
    with pytest.raises(workdir_lib.ResumeConfigError, match=r"optimizer.learning_rate: 0.001 -> 0.5.*Fix:"):
        train(changed, str(wd))
    assert snapshot(wd) == before  # refused: nothing rewritten
    summary, _ = train(_file_config(tmp_path, num_steps=4), str(wd))  # the same config resumes
    assert summary["steps"] == 4
    rewritten = json.loads((wd / "config.json").read_text())
    assert rewritten["optimizer"] == original["optimizer"] and rewritten["num_steps"] == 4
    kept = list(wd.glob("config.json.unreadable-*"))
    assert len(kept) == (1 if damage == "garbled" else 0)
    if kept:
        assert kept[0].read_text() == '{"optimizer": {"learning_rate": 0.5'


# ---------------------------------------------------------------------------- jmtl.fit


class Model(nn.Module):
    width: int = 6

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = nn.tanh(nn.Dense(self.width, name="shared")(x))
        return {"a": nn.Dense(1, name="a_head")(h)[:, 0], "b": nn.Dense(1, name="b_head")(h)[:, 0]}


TASKS = (Task("a", "regression", 1), Task("b", "binary", 1))


def _data(seed: int, n: int) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return {"x": x, "a": x[:, 0].astype(np.float32), "b": (x[:, 1] > 0).astype(np.float32)}


def _gen(arrays: dict, size: int = 10):
    """A one-shot generator of batches (validation / test read through concatenate_batches)."""
    n = len(arrays["x"]) // size
    return ({k: v[i * size : (i + 1) * size] for k, v in arrays.items()} for i in range(n))


def _fit(wd, num_steps, *, model=None, tasks=TASKS, lr=0.1, validation=None, test=None, **kw):
    return jmtl.fit(
        model or Model(),
        tasks,
        lambda seed: [_data(0, 40)],
        workdir=wd,
        num_steps=num_steps,
        validation=_gen(validation or _data(1, 20)),
        test=_gen(test or _data(2, 20)),
        optimizer=optax.sgd(lr),
        progress_bar=False,
        eval_every_steps=2,
        checkpoint_every_steps=2,
        **kw,
    )


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    wd = tmp_path_factory.mktemp("fit") / "wd"
    _fit(wd, 2)
    return wd


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(validation=_data(7, 20)), r"the validation arrays differ \(fingerprint [0-9a-f]+ -> [0-9a-f]+\)"),
        (dict(test=_data(8, 20)), r"the test arrays differ"),
        (dict(lr=0.05), r"the optimizer \(a custom optax transform\) differs \(\S*step_size -0.1 -> -0.05\)"),
        (
            dict(tasks=(Task("a", "regression", 1), Task("b", "regression", 1))),
            r"the tasks differ \(task 'b': binary, 1 output\(s\) -> regression, 1 output\(s\)\)",
        ),
    ],
)
def test_fit_resume_with_other_data_optimizer_or_tasks_is_refused(fitted, change, words):
    before = snapshot(fitted)
    with pytest.raises(workdir_lib.ResumeIdentityError, match=words + r".*from what its checkpoint \(step 2\).*Fix:"):
        _fit(fitted, 4, **change)
    assert snapshot(fitted) == before


def test_fit_same_data_resumes(fitted, tmp_path):
    import shutil

    wd = tmp_path / "copy"
    shutil.copytree(fitted, wd)
    summary, state = _fit(wd, 4)
    assert summary["steps"] == 4 and int(state.step) == 4


def test_model_shape_mismatch_lists_every_changed_param(fitted):
    before = snapshot(fitted)
    with pytest.raises(CheckpointMismatchError) as e:
        _fit(fitted, 4, model=Model(width=7))
    message = str(e.value)
    for name in (
        "['shared']['kernel'] [4, 6] -> [4, 7]",
        "['shared']['bias'] [6] -> [7]",
        "['a_head']['kernel'] [6, 1] -> [7, 1]",
        "['b_head']['kernel'] [6, 1] -> [7, 1]",
    ):
        assert name in message, (name, message)
    assert snapshot(fitted) == before
