"""Bad inputs fail early with a message that names the problem and the fix.

Table of every case (and where its test lives, some are elsewhere): results/reliability.md.
Already covered elsewhere: unknown weighting scheme / encoder / task label
(test_train_loop.py::test_bad_config_errors), a checkpoint of a different model
(test_train_loop.py::test_refuses_checkpoint_of_a_different_model), missing / truncated / corrupt
.gz, wrong IDX magic or counts, label range in IDX files, unknown dataset or dataset keyword
(test_data.py), CoNLL line with the wrong number of columns and missing CoNLL files (test_conll.py).
"""

import gzip
import os
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from conftest import ROOT, toy_config

from experiments.configs import (
    common,
    gradnorm_toy,
    hierarchical_conll03,
    hierarchical_jmt,
    hierarchical_sg,
    multifashion,
    multimnist,
)
from jmtl import data, weighting
from jmtl import tasks as tasks_lib
from jmtl.data import DataError, conll, pipeline
from jmtl.training.config_schema import validate_config
from jmtl.training.loop import train


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A folder whose ``cache/`` holds the toy dataset for every test of this module (built once)."""
    return tmp_path_factory.mktemp("shared")


def _config(shared, **overrides):
    return toy_config(shared, **{"num_steps": 4, "eval_every_steps": 2, "log_every_steps": 2, **overrides})


def _raises(config, workdir, exc, needle):
    """Runs train() and checks the error type and that ``needle`` is in the message's first line."""
    with pytest.raises(exc) as info:
        train(config, str(workdir))
    first_line = str(info.value).splitlines()[0]
    assert needle in first_line, first_line
    return first_line


# ---- unknown names: the message lists the valid ones -----------------------------------------------


@pytest.mark.parametrize(
    "overrides,exc,needle",
    [
        (
            {"dataset.name": "mnsit"},
            DataError,
            "unknown dataset 'mnsit'; valid names: celeba, cityscapes, gradnorm_toy, multi_fashion, multi_mnist, nyuv2, office31, office_home",
        ),
        ({"model.arch": "hsp"}, ValueError, "unknown arch 'hsp'; valid: hps, independent, soft_sharing"),
        ({"optimizer.name": "adamm"}, ValueError, "unknown optimizer 'adamm'; valid optimizers: adam, adamw, sgd"),
        ({"parallel": "dp"}, ValueError, "unknown parallel driver 'dp'; valid: shard_map, pmap, single"),
        ({"nonfinite.policy": "ignore"}, ValueError, "unknown nonfinite.policy 'ignore'; valid: raise, skip"),
        # A task the dataset does not have (its label key defaults to its name).
        (
            {"tasks": {"t0": {}, "t2": {}}},
            ValueError,
            "task 't2' asks for label 't2', which dataset 'gradnorm_toy' does not have; its labels: t0, t1",
        ),
        ({"tasks": {"t0": {"lable": "t1"}}}, ValueError, "task 't0': unknown field(s) lable; valid: label, weight"),
        (
            {"model.encoder_kwargs": {"featurs": (10,)}},
            ValueError,
            "bad arguments {'featurs': (10,)} for encoder 'mlp'; valid: features",
        ),
        (
            {"dataset.kwargs": {"num_task": 3}},
            DataError,
            "gradnorm_toy: unknown keyword(s) num_task; accepted: num_tasks, seed",
        ),
    ],
    ids=[
        "dataset",
        "arch",
        "optimizer",
        "parallel",
        "nonfinite_policy",
        "task_not_in_dataset",
        "task_field",
        "encoder_kwargs",
        "dataset_kwargs",
    ],
)
def test_unknown_names_list_the_valid_ones(shared, tmp_path, overrides, exc, needle):
    _raises(_config(shared, **overrides), tmp_path / "wd", exc, needle)


def test_unknown_weighting_hyperparameter_lists_the_valid_ones(shared, tmp_path):
    c = _config(shared)
    c.weighting = gradnorm_toy.get_config("mgda").weighting
    c.weighting.hparams.normalisation = "l2"  # British spelling of 'normalization'
    _raises(
        c,
        tmp_path / "wd",
        ValueError,
        "unknown hyperparameter(s) normalisation for weighting scheme 'mgda'; valid: normalization, max_iter, tol",
    )


# ---- config fields of the wrong type or out of range -----------------------------------------------


def _with_field(config, field, value):
    """``config`` with ``field`` set to ``value`` whatever its type (a config built from a dict or
    JSON is not type-checked by ml_collections the way a ``--config.x=`` flag is)."""
    d = config.to_dict()
    node = d
    *path, last = field.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    return ml_collections.ConfigDict(d)


@pytest.mark.parametrize(
    "field,value,message",
    [
        (
            "batch_size",
            "256",
            "config.batch_size must be an int, got '256' (str). Fix: write 256 without quotes in "
            "the config file, or pass --config.batch_size=256",
        ),
        (
            "optimizer.learning_rate",
            "fast",
            "config.optimizer.learning_rate must be a number, got 'fast' (str). "
            "Fix: pass a number, e.g. --config.optimizer.learning_rate=0.001",
        ),
        (
            "num_epochs",
            -3,
            "config.num_epochs must be >= 1 when config.num_steps <= 0, got num_epochs=-3. "
            "Fix: e.g. --config.num_epochs=10, or --config.num_steps=N",
        ),
        ("batch_size", 0, "config.batch_size must be >= 1, got 0. Fix: e.g. --config.batch_size=256"),
        ("batch_size", 2.5, "config.batch_size must be an int, got 2.5 (float). Fix: pass an int"),
        ("batch_size", True, "config.batch_size must be an int, got True (bool)"),
        (
            "optimizer.learning_rate",
            0.0,
            "config.optimizer.learning_rate must be > 0, got 0.0. Fix: e.g. --config.optimizer.learning_rate=0.001",
        ),
        ("optimizer.learning_rate", float("nan"), "config.optimizer.learning_rate must be a finite number, got nan"),
        ("log_every_steps", 0, "config.log_every_steps must be >= 1, got 0. Fix: e.g. --config.log_every_steps=20"),
        ("seed", -1, "config.seed must be >= 0, got -1. Fix: e.g. --config.seed=0"),
        ("progress_bar", "no", "config.progress_bar must be a bool, got 'no' (str). Fix: pass a bool"),
        ("nonfinite.max_consecutive_skips", 0, "config.nonfinite.max_consecutive_skips must be >= 1, got 0"),
        (
            "optimizer.decay_rate",
            1.5,
            "config.optimizer.decay_rate must be <= 1.0 (a decay factor; above 1 the "
            "learning rate grows), got 1.5. Fix: e.g. --config.optimizer.decay_rate=0.85",
        ),
        ("optimizer.clip_norm", -1.0, "config.optimizer.clip_norm must be >= 0, got -1.0"),
        (
            "writers",
            ("jsonl", "tensorbord"),
            "config.writers: unknown writer(s) ['tensorbord']; valid: jsonl, tensorboard, wandb",
        ),
    ],
)
def test_wrong_field_type_or_range_names_field_and_fix(shared, tmp_path, field, value, message):
    config = _with_field(_config(shared), field, value)
    if field == "num_epochs":
        config.num_steps = -1  # num_epochs counts only when num_steps <= 0
    with pytest.raises(ValueError, match=re.escape(message)):
        train(config, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()  # refused before any work, nothing written


def test_negative_static_weights_are_refused(shared, tmp_path):
    c = _config(shared)
    c.weighting = gradnorm_toy.get_config("static").weighting
    c.weighting.hparams.weights = (1.0, -2.0)
    with pytest.raises(
        ValueError,
        match=re.escape("config.weighting.hparams.weights must be finite numbers >= 0 (one per task), got (1.0, -2.0)"),
    ):
        train(c, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_workdir_that_is_a_file(shared, tmp_path):
    path = tmp_path / "a_file"
    path.write_text("keep me\n")
    with pytest.raises(
        OSError, match=re.escape(f"the workdir {path} is a file, not a folder. Fix: pass another --workdir")
    ):
        train(_config(shared), str(path))
    assert path.read_text() == "keep me\n"


def test_validate_config_accepts_every_shipped_config():
    checked = 0
    for module in (gradnorm_toy, multimnist, multifashion):
        for method in [None] + weighting.names():
            common.validate_config(module.get_config(method))
            checked += 1
    assert checked == 3 * (1 + len(weighting.names()))
    for module in (hierarchical_sg, hierarchical_jmt, hierarchical_conll03):
        validate_config(module.get_config())
    bad = hierarchical_sg.get_config()
    bad.num_epochs = 0  # the tagging configs go through the same validation
    with pytest.raises(ValueError, match="config.num_epochs must be >= 1"):
        validate_config(bad)
    # num_epochs is unused when num_steps > 0.
    common.validate_config(_with_field(_with_field(gradnorm_toy.get_config(), "num_epochs", 0), "num_steps", 10))
    common.validate_config(_with_field(gradnorm_toy.get_config(), "optimizer.learning_rate", 1))  # an int is a number


def test_command_line_wrong_type_is_refused_by_the_flag_parser(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            "--config",
            "experiments/configs/gradnorm_toy.py",
            "--workdir",
            str(tmp_path / "wd"),
            "--config.batch_size=abc",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)),
    )
    assert proc.returncode != 0
    assert "flag --config.batch_size=abc: invalid literal for int()" in proc.stderr
    assert not (tmp_path / "wd").exists()


def _cli(module: str, *args: str, cwd=ROOT):
    """Runs ``python -m experiments.<module> args``; returns the exit code and stderr's lines."""
    proc = subprocess.run(
        [sys.executable, "-m", f"experiments.{module}", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)),
    )
    return proc.returncode, [l for l in proc.stderr.splitlines() if l.strip()]


@pytest.mark.parametrize(
    "module,args,message",
    [
        (
            "train",
            ["--config", "experiments/configs/gradnorm_toy.py", "--config.nmu_epochs=3"],
            "error: unknown config field --config.nmu_epochs (did you mean 'num_epochs'?)",
        ),
        (
            "train",
            ["--config", "experiments/configs/gradnorm_toy.py", "--config.optimizer.learnig_rate=0.1"],
            "error: unknown config field --config.optimizer.learnig_rate (did you mean 'learning_rate'?)",
        ),
        # The comma list parses to a tuple (an untyped placeholder field), and a negative weight is refused.
        (
            "train",
            ["--config", "experiments/configs/gradnorm_toy.py:static", "--config.weighting.hparams.weights=1,-2"],
            "ValueError: config.weighting.hparams.weights must be finite numbers >= 0 (one per task), got (1, -2).",
        ),
        (
            "hierarchical_tagging",
            ["--config", "experiments/configs/hierarchical_sg.py", "--variants=single,hierr"],
            "ValueError: unknown variant(s) ['hierr'] (did you mean 'hier'?); valid: hier, single, top",
        ),
        (
            "hierarchical_tagging",
            ["--config", "experiments/configs/hierarchical_sg.py", "--seeds=0,l"],
            "ValueError: --seeds: 'l' is not an integer. Fix: e.g. --seeds=0,1,2",
        ),
        (
            "ablate",
            ["--config", "experiments/configs/gradnorm_toy.py", "--archs", "hsp"],
            "ValueError: unknown architecture(s) ['hsp'] (did you mean 'hps'?); valid: hps, independent",
        ),
        (
            "ablate",
            ["--config", "experiments/configs/gradnorm_toy.py", "--methods", "equal,mdga"],
            "ValueError: unknown weighting scheme(s) ['mdga'] (did you mean 'mgda'?); valid schemes:",
        ),
    ],
    ids=[
        "misspelt_field",
        "misspelt_nested_field",
        "negative_static_weights",
        "variant_typo",
        "seed_typo",
        "arch_typo",
        "method_typo",
    ],
)
def test_command_line_mistakes_print_one_line_and_exit_2(tmp_path, module, args, message):
    code, lines = _cli(module, *args, "--workdir", str(tmp_path / "wd"))
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith(message), lines
    assert not (tmp_path / "wd").exists()  # refused before anything was written or trained


# ---- data: labels, empty splits, missing / corrupt files -------------------------------------------


def test_labels_out_of_range_for_a_head():
    clf = tasks_lib.Task("digit", tasks_lib.CLASSIFICATION, 10)
    with pytest.raises(ValueError) as e:
        tasks_lib.check_labels([clf], {"digit": np.array([0, 3, 10])}, where="multi_mnist train batch")
    msg = str(e.value)
    assert msg.startswith(
        "multi_mnist train batch: labels of task 'digit' span [0, 10] but its head has 10 classes "
        "(valid labels 0..9). Fix: correct the labels in the data"
    )
    tag = tasks_lib.Task("pos", tasks_lib.TAGGING, 5)
    tasks_lib.check_labels([tag], {"pos": np.array([[0, 4, -1]])})  # -1 is padding: fine
    with pytest.raises(
        ValueError,
        match=re.escape("span [-2, 4] but its head has 5 classes (valid labels 0..4, and -1 for padding). Fix:"),
    ):
        tasks_lib.check_labels([tag], {"pos": np.array([[0, 4, -2]])})
    with pytest.raises(ValueError, match="batch has no entry 'digit' for task 'digit'; entries: left, right"):
        tasks_lib.check_labels([clf], {"left": np.zeros(2), "right": np.zeros(2)})


def test_empty_split_names_dataset_split_and_fix(shared):
    ds = data.load("gradnorm_toy", cache_dir=shared / "cache")
    empty = pipeline.MTLDataset(ds.spec, {"train": [], "validation": [], "test": []}, lambda raw: raw)
    with pytest.raises(
        DataError,
        match=re.escape(f"{ds.spec.name}/validation split is empty (0 examples). Fix: delete its tfds cache folder"),
    ):
        empty.arrays("validation")


def test_train_split_smaller_than_a_batch(shared, tmp_path):
    c = _config(shared, **{"dataset.kwargs": {"num_tasks": 2, "n_train": 50}}, batch_size=100)
    _raises(
        c,
        tmp_path / "wd",
        ValueError,
        "gradnorm_toy/train has 50 examples, fewer than one batch of 100. "
        "Fix: lower --config.batch_size to at most 50.",
    )


def test_missing_data_dir_from_the_config(shared, tmp_path):
    c = _config(
        shared,
        **{
            "dataset.name": "multi_mnist",
            "dataset.kwargs": {},
            "dataset.data_dir": str(tmp_path / "nope"),
            "dataset.cache_dir": str(tmp_path / "cache"),
        },
    )
    line = _raises(
        c, tmp_path / "wd", DataError, f"{tmp_path / 'nope'}: data dir does not exist or is not a directory. Fix:"
    )
    assert "JMTL_DATA_DIR" in line


@pytest.mark.parametrize("how", ["truncated", "not_gzip"])
def test_corrupt_conll_gz_names_the_file(tmp_path, how):
    path = tmp_path / "train.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write("The DT B-NP\ncat NN I-NP\n\n" * 2000)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2] if how == "truncated" else b"plain text, not gzip\n")
    with pytest.raises(DataError) as e:
        conll.read_conll(path, 3)
    msg = str(e.value)
    assert msg.startswith(f"{path}: truncated or corrupt file after line ")
    assert msg.endswith("Fix: copy or download it again")


def test_conll_bad_line_message_has_a_fix(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("The DT B-NP\ncat NN\n")
    with pytest.raises(
        DataError,
        match=re.escape(
            f"{bad}:2: expected 3 space-separated columns, got 2: 'cat NN'. Fix: give every token line 3 columns"
        ),
    ):
        conll.read_conll(bad, 3)
