"""experiments/hierarchical_tagging.py end to end on a tiny CoNLL-2000, and the length-matched meta
batches its bilevel runs take."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from experiments.configs import hierarchical_sg
from jmtl.data import DataError, conll
from jmtl.drivers import tagging as hierarchical_tagging

# Values, not speed: the programs compile without XLA's optimisation passes (conftest's
# xla_optimizations_off; this file's compile-bound tests took ~0.6x the time in one measured run).
pytestmark = pytest.mark.usefixtures("xla_optimizations_off")


WORDS = "the a cat dog sat ran fast home in it".split()
POS = {
    "the": "DT",
    "a": "DT",
    "cat": "NN",
    "dog": "NN",
    "sat": "VBD",
    "ran": "VBD",
    "fast": "RB",
    "home": "NN",
    "in": "IN",
    "it": "PRP",
}
CHUNK = {"DT": "B-NP", "NN": "I-NP", "VBD": "B-VP", "RB": "B-ADVP", "IN": "B-PP", "PRP": "B-NP"}


def _corpus(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        for w in rng.choice(WORDS, size=int(rng.integers(1, 12))):
            lines.append(f"{w} {POS[w]} {CHUNK[POS[w]]}")
        lines.append("")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    (root / "conll2000").mkdir()
    for name, n, seed in (("train.txt.gz", 60, 0), ("test.txt.gz", 12, 1)):
        with gzip.open(root / "conll2000" / name, "wt") as f:
            f.write(_corpus(n, seed))
    return root


def _dataset(lengths, buckets=(2, 4, 8)):
    def cols(ls):
        words = [[WORDS[i % len(WORDS)] for i in range(n)] for n in ls]
        return {
            "words": words,
            "pos": [[POS[w] for w in s] for s in words],
            "chunk": [[CHUNK[POS[w]] for w in s] for s in words],
        }

    return conll.TaggingDataset(
        "toy",
        {"train": cols([3, 5]), "validation": cols(lengths)},
        tasks=("pos", "chunk"),
        buckets=buckets,
        max_word_length=4,
    )


def test_length_matched_batches_cycle_through_the_sentences_that_fit():
    lengths = [1, 2, 3, 4, 5, 6, 7]
    ds = _dataset(lengths)
    draw = ds.length_matched_batches("validation", 2, seed=0)

    def sentences(batch):  # the drawn sentences' lengths, from the padded batch
        return sorted(int(n) for n, m in zip((batch["inputs"]["words"] > 0).sum(1), batch["mask"]) if m)

    # Length 4: the pool is the four sentences of buckets 2 and 4; one cycle draws each once.
    first = [draw(4) for _ in range(2)]
    assert all(b["inputs"]["words"].shape == (2, 4) and b["chunk"].shape == (2, 4) for b in first)
    assert sorted(sum((sentences(b) for b in first), [])) == [1, 2, 3, 4]
    # Length 8: all seven; batches of 2 use six per cycle (the remainder waits for a reshuffle).
    cycle = sum((sentences(draw(8)) for _ in range(3)), [])
    assert len(cycle) == len(set(cycle)) == 6 and set(cycle) <= set(lengths)
    # Each length keeps its own position: length 4's next cycle still covers its pool.
    assert sorted(sum((sentences(draw(4)) for _ in range(2)), [])) == [1, 2, 3, 4]
    # Reproducible from the seed; another seed gives another order.
    again = ds.length_matched_batches("validation", 2, seed=0)
    assert [sentences(again(4)) for _ in range(2)] == [sentences(b) for b in first]
    orders = {tuple(sentences(ds.length_matched_batches("validation", 2, seed=s)(8))) for s in range(8)}
    assert len(orders) > 1
    # Labels are -1 exactly at padding, as in training batches.
    b = draw(8)
    assert np.all((b["pos"] >= 0) == (b["inputs"]["words"] > 0))


def test_length_matched_batches_small_pools_and_no_fit():
    ds = _dataset([1, 2, 6])
    draw = ds.length_matched_batches("validation", 4, seed=0)
    b = draw(2)  # two sentences fit: one partly filled batch, every time
    assert b["mask"].tolist() == [1.0, 1.0, 0.0, 0.0] and draw(2)["mask"].sum() == 2
    ds = _dataset([5, 6])
    with pytest.raises(DataError, match="no 'validation' sentence fits length 4"):
        ds.length_matched_batches("validation", 2, seed=0)(4)


def _config(raw_dir, tmp_path, method):
    c = hierarchical_sg.get_config("hier" + (f",{method}" if method else ""))
    c.dataset.data_dir, c.dataset.cache_dir = str(raw_dir), str(tmp_path / "cache")
    c.dataset.kwargs.buckets = (8, 16)  # two step shapes: compiling dominates this test's time
    c.dataset.kwargs.dev_sentences = 10
    c.dataset.kwargs.verify_checksums = False  # a made-up corpus, not the published files
    c.variants.hier = dict(pos=1, chunk=2)
    c.model.update(num_layers=2, hidden=8, word_dim=8, char_dim=4, char_features=4)
    c.batch_size, c.num_epochs, c.compilation_cache_dir = 8, 2, ""
    return c


@pytest.mark.parametrize("method", ["", "auto_lambda"])
def test_train_run_writes_per_epoch_logs_and_a_record(raw_dir, tmp_path, method, monkeypatch):
    config = _config(raw_dir, tmp_path, method)
    if method:  # the second run also gives chunking a CRF output (decoded by Viterbi)
        config.crf_tasks = ("chunk",)
    calls = []
    if method:  # the bilevel run draws one meta batch per step, at the training batch's length
        original = conll.TaggingDataset.length_matched_batches

        def spy(self, split, batch_size, seed):
            draw = original(self, split, batch_size, seed)
            calls.append(split)
            return lambda length: calls.append(length) or draw(length)

        monkeypatch.setattr(conll.TaggingDataset, "length_matched_batches", spy)
    record = hierarchical_tagging.train_run(config, tmp_path / "runs")
    lines = [json.loads(x) for x in (tmp_path / "runs" / "hier_seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert record["weighting"] == (method or "alternating") and 1 <= record["best_epoch"] <= 2
    for split in ("validation", "test"):
        assert set(record[split]) == {"pos", "chunk"}
        assert 0.0 <= record[split]["chunk"]["f1"] <= 1.0 and 0.0 <= record[split]["pos"]["accuracy"] <= 1.0
    if method:
        ds = hierarchical_tagging.load_dataset(config)
        steps = ds.steps_per_epoch(config.batch_size)
        assert calls[0] == "train"  # Auto-Lambda's default meta split
        assert len(calls) == 1 + 2 * steps and set(calls[1:]) <= set(config.dataset.kwargs.buckets)
    else:
        assert not calls
    assert record["crf_tasks"] == (["chunk"] if method else [])
    # The scores are corpus-level span scores: F1 is the harmonic mean of the record's precision and
    # recall, the best epoch is the one with the highest validation F1 of config.select_on, and the
    # reported scores are that epoch's line of metrics.jsonl (test scored when validation improved).
    for split in ("validation", "test"):
        s = record[split]["chunk"]
        p_r = s["precision"] + s["recall"]
        assert s["f1"] == pytest.approx(2 * s["precision"] * s["recall"] / p_r if p_r else 0.0, abs=1e-12)
    dev_f1 = [x["validation"]["chunk"]["f1"] for x in lines]
    assert dev_f1[record["best_epoch"] - 1] == max(dev_f1)
    best_line = lines[record["best_epoch"] - 1]
    assert best_line["validation"] == record["validation"] and best_line["test"] == record["test"]
    assert "test" in lines[0] and record["final_validation"] == lines[-1]["validation"]
    assert all(set(x["train_loss"]) == {"pos", "chunk"} and x["train_time_s"] >= 0 for x in lines)
    # Results accumulate run by run in PREFIX.json and the table is rewritten; the same run added
    # again replaces its record (no duplicate, so no made-up "± 0.00" spread over copies of one run).
    prefix = str(tmp_path / "res" / "table")
    assert hierarchical_tagging.append_result(prefix, record, "toy") == "added"
    assert hierarchical_tagging.append_result(prefix, record, "toy") == "replaced"
    assert len(json.loads(open(prefix + ".json").read())) == 1
    table = open(prefix + ".table.md").read()
    assert ("| hier (CRF: chunk) |" if method else "| hier |") in table and "±" not in table
    # A rerun of the finished run returns its record and leaves its files as they were.
    before = _hashes(tmp_path / "runs")
    assert hierarchical_tagging.train_run(config, tmp_path / "runs") == record
    assert _hashes(tmp_path / "runs") == before
    if not method:
        # A rerun with num_epochs=0 used to open metrics.jsonl for writing, then crash: refused up
        # front now (one line, exit 2), the finished run's files untouched.
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "experiments.hierarchical_tagging",
                "--config",
                "experiments/configs/hierarchical_sg.py:hier",
                "--workdir",
                str(tmp_path / "runs"),
                "--config.num_epochs=0",
                f"--config.dataset.data_dir={raw_dir}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
            env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)),
        )
        lines = [l for l in proc.stderr.splitlines() if l.strip()]
        assert proc.returncode == 2 and lines == [
            "ValueError: config.num_epochs must be >= 1 when config.num_steps <= 0, got num_epochs=0. "
            "Fix: e.g. --config.num_epochs=10, or --config.num_steps=N to train N steps"
        ], proc.stderr
        assert _hashes(tmp_path / "runs") == before
    with pytest.raises(ValueError, match="crf_tasks"):
        bad = config.copy_and_resolve_references()
        bad.crf_tasks = ("ner",)
        hierarchical_tagging.train_run(bad, tmp_path / "runs")
    if method:
        # Stopped after epoch 1 and resumed: the same numbers as the uninterrupted run (the data
        # order and the meta batches' cursors continue exactly).
        config.num_epochs = 1
        hierarchical_tagging.train_run(config, tmp_path / "part")
        config.num_epochs = 2
        resumed = hierarchical_tagging.train_run(config, tmp_path / "part")
        for key in ("best_epoch", "validation", "test", "final_validation"):
            assert resumed[key] == record[key], key


def _hashes(root):
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_records_of_different_configs_are_kept_apart(tmp_path):
    """Two records of one variant and seed under different configs are two rows, never one row
    with a spread; the same run twice is one record."""
    base = {
        "variant": "hier",
        "depths": {"pos": 1, "chunk": 2},
        "seed": 0,
        "weighting": "equal",
        "epochs": 2,
        "batch_size": 8,
        "best_epoch": 1,
        "epoch_time_s": 1.0,
        "wall_time_s": 60.0,
        "crf_tasks": [],
        "dataset": "conll2000",
        "model": {},
        "config": "a",
        "validation": {"pos": {"accuracy": 0.5}, "chunk": {"f1": 0.25}},
        "test": {"pos": {"accuracy": 0.5}, "chunk": {"f1": 0.25}},
    }
    prefix = str(tmp_path / "t")
    hierarchical_tagging.append_result(prefix, base, "")
    hierarchical_tagging.append_result(
        prefix, {**base, "config": "b", "epochs": 3, "test": {"pos": {"accuracy": 0.5}, "chunk": {"f1": 0.75}}}, ""
    )
    hierarchical_tagging.append_result(
        prefix, {**base, "seed": 1, "test": {"pos": {"accuracy": 0.5}, "chunk": {"f1": 0.35}}}, ""
    )
    rows = [l for l in open(prefix + ".table.md").read().splitlines() if l.startswith("| hier")]
    assert len(rows) == 2
    # Config a: seeds 0 and 1, test F1 25 and 35 -> 30.00 ± 7.07 (sample std); config b: one run, no ±.
    assert "30.00 ± 7.07" in rows[0] and "| 0,1 |" in rows[0]
    assert "75.00" in rows[1] and "±" not in rows[1]
