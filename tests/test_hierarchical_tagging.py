"""experiments/hierarchical_tagging.py end to end on a tiny CoNLL-2000, and the length-matched meta
batches its bilevel runs take."""

import gzip
import json

import numpy as np
import pytest

from experiments import hierarchical_tagging
from experiments.configs import hierarchical_sg
from jmtl.data import DataError, conll

WORDS = "the a cat dog sat ran fast home in it".split()
POS = {"the": "DT", "a": "DT", "cat": "NN", "dog": "NN", "sat": "VBD", "ran": "VBD", "fast": "RB",
       "home": "NN", "in": "IN", "it": "PRP"}
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
        return {"words": words, "pos": [[POS[w] for w in s] for s in words],
                "chunk": [[CHUNK[POS[w]] for w in s] for s in words]}

    return conll.TaggingDataset("toy", {"train": cols([3, 5]), "validation": cols(lengths)},
                                tasks=("pos", "chunk"), buckets=buckets, max_word_length=4)


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
    # Results accumulate run by run in PREFIX.json and the table is rewritten.
    prefix = str(tmp_path / "res" / "table")
    hierarchical_tagging.append_result(prefix, record, "toy")
    hierarchical_tagging.append_result(prefix, record, "toy")
    assert len(json.loads(open(prefix + ".json").read())) == 2
    assert ("| hier (CRF: chunk) |" if method else "| hier |") in open(prefix + ".table.md").read()
    with pytest.raises(ValueError, match="crf_tasks"):
        config.crf_tasks = ("ner",)
        hierarchical_tagging.train_run(config, tmp_path / "runs")
