"""The library loop on user data: split-level AUC of binary tasks, the contract on the first batch."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import jmtl
from jmtl.training import config_schema


def _splits(seed=0, sizes=(400, 200, 200), float_labels=False):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(6, 2))
    out = {}
    for name, n in zip(("train", "validation", "test"), sizes):
        x = rng.normal(size=(n, 6)).astype(np.float32)
        z = x @ w + 0.5 * rng.normal(size=(n, 2))
        flag = (z[:, 0] > 0).astype(np.float32 if float_labels else np.int32)
        out[name] = {"x": x, "flag": flag, "amount": z[:, 1].astype(np.float32)}
    return out


def _config(name, num_epochs=2):
    config = config_schema.default_config()
    config.dataset.name = name
    config.model.encoder_kwargs = {"features": (16,)}
    config.batch_size = 50
    config.num_epochs = num_epochs
    config.progress_bar = False
    config.weighting = config_schema.method_config("mgda")
    return config


def _brute_force_auc(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_binary_task_gets_split_level_auc(tmp_path):
    splits = _splits()
    jmtl.data.register(
        "auc_data",
        jmtl.data.from_arrays("auc_data", splits, input_key="x", labels={"flag": "binary", "amount": "regression"}),
        overwrite=True,
    )
    config = _config("auc_data", num_epochs=4)
    config.optimizer.learning_rate = 1e-2
    summary, state = jmtl.train(config, tmp_path / "wd")
    from jmtl import tasks as tasks_lib
    from jmtl.training import builders

    tasks = tasks_lib.tasks_from_config({}, jmtl.data.load("auc_data").spec)
    model = builders.model(_config("auc_data"), tasks)
    logits = np.asarray(model.apply({"params": jax.device_get(state.params)}, splits["test"]["x"])["flag"]).reshape(-1)
    want = _brute_force_auc(logits, splits["test"]["flag"])
    got = summary["final"]["test"]["flag"]["auc"]
    assert got == pytest.approx(want, abs=1e-6)
    assert 0.7 < got <= 1.0  # the task is learnable
    records = [json.loads(l) for l in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
    assert all("auc" in r["validation"]["flag"] for r in records)


def test_a_user_encoder_without_train_argument_is_refused_before_training(tmp_path):
    import flax.linen as nn

    from jmtl.models import encoders

    class NoTrain(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4)(x)

    encoders.register("no_train_encoder", NoTrain, overwrite=True)
    jmtl.data.register(
        "contract_data",
        jmtl.data.from_arrays(
            "contract_data", _splits(), input_key="x", labels={"flag": "binary", "amount": "regression"}
        ),
        overwrite=True,
    )
    config = _config("contract_data")
    config.model.encoder = "no_train_encoder"
    with pytest.raises((TypeError, ValueError), match="train"):
        jmtl.train(config, tmp_path / "wd")
    assert not list((tmp_path / "wd").glob("checkpoints/*")) if (tmp_path / "wd").exists() else True
    assert not (tmp_path / "wd" / "metrics.jsonl").exists()
