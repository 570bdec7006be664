"""Batch packing (jmtl/training/packing.py): many label entries sent as a few arrays change nothing.

Truth: the unpacked batch equals the original leaf for leaf, and a 20-task run with packing gives the
same params and records as the same run with packing off.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

import jmtl
from jmtl.training import packing

K = 20


def _batch(rng, n=8):
    b = {f"t{k}": rng.normal(size=n).astype(np.float32) for k in range(K)}
    b.update({f"t{k}_mask": (rng.random(n) < 0.5).astype(np.float32) for k in range(0, K, 2)})
    b["x"] = rng.normal(size=(n, 3)).astype(np.float32)
    b["c"] = rng.integers(0, 3, size=n).astype(np.int32)
    return b


def test_unpack_gives_back_every_entry():
    rng = np.random.default_rng(0)
    p = packing.LeafPacker()
    batch = _batch(rng)
    packed = p.pack(batch)
    assert p.active and len(jax.tree.leaves(packed)) == 3  # float [8] group, x, c
    out = jax.jit(p.unpack)(packed)
    assert set(out) == set(batch)
    for key in batch:
        np.testing.assert_array_equal(np.asarray(out[key]), batch[key])
        assert out[key].dtype == batch[key].dtype
    with pytest.raises(ValueError, match="layout of the first"):
        p.pack({**batch, "x": batch["x"][:, :2]})


def test_few_entries_pass_through():
    p = packing.LeafPacker()
    batch = {"x": np.zeros((4, 2), np.float32), "a": np.zeros(4, np.int32), "b": np.zeros(4, np.float32)}
    assert p.pack(batch) is batch and not p.active


class Model(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = nn.tanh(nn.Dense(8, name="shared")(x))
        return {f"t{k}": nn.Dense(1, name=f"head{k}")(h)[:, 0] for k in range(K)}


def test_a_many_task_run_is_the_same_packed_or_not(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    split = lambda n: {k: v for k, v in _batch(rng, n).items() if k != "c"}
    data = {s: split(n) for s, n in (("train", 64), ("validation", 32), ("test", 32))}
    tasks = [jmtl.Task(f"t{k}", "regression", 1) for k in range(K)]
    runs = {}
    for name, threshold in (("packed", 16), ("as_is", 10**9)):
        monkeypatch.setattr(packing, "MIN_LEAVES", threshold)
        summary, state = jmtl.fit(
            Model(),
            tasks,
            data["train"],
            validation=data["validation"],
            test=data["test"],
            workdir=tmp_path / name,
            weighting="pcgrad",
            batch_size=16,
            num_steps=6,
            input_key="x",
            progress_bar=False,
        )
        runs[name] = (state.params, (tmp_path / name / "train_log.jsonl").read_text())
    jax.tree.map(np.testing.assert_array_equal, runs["packed"][0], runs["as_is"][0])
    assert [json.loads(l)["losses"] for l in runs["packed"][1].splitlines()] == [
        json.loads(l)["losses"] for l in runs["as_is"][1].splitlines()
    ]
