"""Pretrained word embeddings (jmtl/data/embeddings.py) and their hook into the tagger: tiny files of
every format written here, checked against the numbers written into them."""

import gzip

import jax
import numpy as np
import pytest

from experiments.configs import common, hierarchical_sg
from jmtl.data import DataError, conll
from jmtl.data import embeddings as emb_lib
from jmtl.drivers import tagging
from jmtl.models import sequence
from jmtl.training import step as step_lib

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


def _vectors(words, dim, seed=0):
    return {w: np.round(np.random.default_rng([seed, i]).normal(size=dim), 4) for i, w in enumerate(words)}


def _write_text(path, table, header=False, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        if header:
            f.write(f"{len(table)} {len(next(iter(table.values())))}\n")
        for w, v in table.items():
            f.write(w + " " + " ".join(repr(float(x)) for x in v) + "\n")
    return str(path)


@pytest.mark.parametrize(
    "fmt,header,gz",
    [("glove", False, False), ("glove", False, True), ("word2vec", True, False), ("word2vec", True, True)],
)
def test_text_formats_read_back_the_written_vectors(tmp_path, fmt, header, gz):
    table = _vectors(["the", "Paris", "1990", "x\u00a0y"], 5)  # a non-breaking space stays inside the word
    path = _write_text(tmp_path / ("v.txt" + (".gz" if gz else "")), table, header, gzip.open if gz else open)
    for given in (fmt, "auto"):
        e = emb_lib.load_embeddings(path, given)
        assert e.format == fmt and e.dim == 5 and e.num_lines == 4 and e.duplicates == 0
        assert e.words == tuple(table)
        np.testing.assert_array_equal(e.vectors, np.stack([table[w] for w in e.words]).astype(np.float32))
        assert e.scale == pytest.approx(float(np.stack(list(table.values())).astype(np.float32).std()), rel=1e-5)


def _senna(root, words, dim):
    (root / "hash").mkdir(parents=True)
    (root / "embeddings").mkdir()
    (root / "hash" / "words.lst").write_text("".join(w + "\n" for w in words))
    table = _vectors(words, dim, seed=3)
    (root / "embeddings" / "embeddings.txt").write_text(
        "".join(" ".join(repr(float(x)) for x in table[w]) + "\n" for w in words)
    )
    return table


def test_senna_folder_and_file_pair(tmp_path):
    words = ["PADDING", "UNKNOWN", "the", "cat", "0000"]
    table = _senna(tmp_path / "senna", words, 4)
    for path, fmt in (
        (tmp_path / "senna", "auto"),
        (tmp_path / "senna", "senna"),
        (f"{tmp_path}/senna/hash/words.lst,{tmp_path}/senna/embeddings/embeddings.txt", "auto"),
    ):
        e = emb_lib.load_embeddings(path, fmt)
        assert e.format == "senna" and e.dim == 4 and e.num_lines == 5
        assert e.words == ("UNKNOWN", "the", "cat", "0000")  # PADDING is no word
        np.testing.assert_array_equal(e.vectors, np.stack([table[w] for w in e.words]).astype(np.float32))
    # UNKNOWN seeds <unk>; Senna's digit-zeroed keys are found from raw spellings via the fallback.
    m, found, cov = emb_lib.embedding_matrix(e, ["<pad>", "<unk>", "cat", "1987", "zebra"], seed=0)
    np.testing.assert_array_equal(m[1], table["UNKNOWN"].astype(np.float32))
    np.testing.assert_array_equal(m[3], table["0000"].astype(np.float32))
    assert cov.unk_from_file and found.tolist() == [False, False, True, True, False]


def test_senna_files_of_different_lengths(tmp_path):
    _senna(tmp_path / "s", ["the", "cat"], 3)
    with open(tmp_path / "s" / "hash" / "words.lst", "a") as f:
        f.write("dog\n")
    with pytest.raises(DataError, match=r"words.lst: 3 words but .*embeddings.txt has 2 vectors"):
        emb_lib.load_embeddings(tmp_path / "s")


@pytest.mark.parametrize(
    "content,fmt,pattern",
    [
        ("a 1 2 3\nb 1 2\n", "glove", r"v.txt:2: 2 vector entries, expected 3"),
        ("a 1 2 3\nb 1 oops 3\n", "glove", r"v.txt:2: non-numeric vector entry 'oops'"),
        ("a 1 2 nan\n", "glove", r"v.txt:1: non-finite"),
        ("", "auto", r"v.txt: empty embeddings file"),
        ("\n\n", "glove", r"v.txt: empty embeddings file"),
        ("3 2\na 1 2\nb 3 4\n", "word2vec", r"header says 3 vectors, the file has 2"),
        ("2 2\na 1 2\nb 3\n", "auto", r"v.txt:3: 1 vector entries, expected 2 \(as on the first header\)"),
        ("a 1 2\n", "word2vec", r"v.txt:1: a word2vec text file starts with a 'count dim' header"),
    ],
)
def test_bad_files_name_the_file_and_line(tmp_path, content, fmt, pattern):
    (tmp_path / "v.txt").write_text(content)
    with pytest.raises(DataError, match=pattern):
        emb_lib.load_embeddings(tmp_path / "v.txt", fmt)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match=r"nope.txt: embeddings file not found"):
        emb_lib.load_embeddings(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="unknown embeddings format 'fasttext'"):
        emb_lib.load_embeddings(tmp_path / "nope.txt", "fasttext")


def test_duplicates_keep_the_first_and_are_counted(tmp_path):
    (tmp_path / "v.txt").write_text("a 1 2\nb 3 4\na 5 6\nb 7 8\na 9 9\n")
    with pytest.warns(UserWarning, match="3 repeated word"):
        e = emb_lib.load_embeddings(tmp_path / "v.txt")
    assert e.words == ("a", "b") and e.duplicates == 3 and e.num_lines == 5
    np.testing.assert_array_equal(e.vectors, [[1, 2], [3, 4]])


def test_keep_filters_words_but_still_checks_every_line(tmp_path):
    (tmp_path / "v.txt").write_text("the 1 2\nParis 3 4\nzebra 5 6\nUNKNOWN 0 0\n")
    e = emb_lib.load_embeddings(tmp_path / "v.txt", keep={"paris"})
    assert e.words == ("Paris", "UNKNOWN") and e.num_lines == 4  # kept by its normalised form
    (tmp_path / "w.txt").write_text("the 1 2\nzebra 5\n")
    with pytest.raises(DataError, match="w.txt:2"):
        emb_lib.load_embeddings(tmp_path / "w.txt", keep={"the"})


def test_matrix_rows_lookup_fallback_random_rows_and_coverage(tmp_path):
    dim = 8
    table = _vectors(["the", "paris", "Paris", "1990", "1991", "cat"], dim)
    e = emb_lib.load_embeddings(_write_text(tmp_path / "v.txt", table))
    oov = [f"oov{i}" for i in range(3000)]
    vocab = ["<pad>", "<unk>", "the", "Paris", "PARIS", "0000", "cat", *oov]
    counts = np.r_[0, 0, 10, 3, 1, 2, 4, np.ones(len(oov))]
    m, found, cov = emb_lib.embedding_matrix(e, vocab, seed=7, token_counts=counts)
    f32 = lambda w: table[w].astype(np.float32)  # noqa: E731
    np.testing.assert_array_equal(m[2], f32("the"))
    np.testing.assert_array_equal(m[3], f32("Paris"))  # exact spelling first
    np.testing.assert_array_equal(m[4], f32("paris"))  # then the normalised key, first in file order
    np.testing.assert_array_equal(m[5], f32("1990"))  # 1990 and 1991 share the key 0000: the first wins
    np.testing.assert_array_equal(m[0], np.zeros(dim))  # padding
    assert found[2:7].all() and not found[7:].any() and not found[:2].any()
    assert (cov.exact, cov.normalized, cov.unk_from_file) == (3, 2, False)
    assert cov.types == pytest.approx(5 / (len(vocab) - 2))
    assert cov.tokens == pytest.approx(20 / (20 + len(oov)))
    # Unknown words: mean 0, the file's entry scale (3000 x 8 draws: within a few percent).
    rand = m[7:]
    assert abs(rand.mean()) < 0.02 and rand.std() == pytest.approx(e.scale, rel=0.05)
    assert np.abs(m[1]).sum() > 0  # <unk> random as well (the file has no unknown entry)
    m2, _, _ = emb_lib.embedding_matrix(e, vocab, seed=7)
    m3, _, _ = emb_lib.embedding_matrix(e, vocab, seed=8)
    np.testing.assert_array_equal(m, m2)
    assert not np.array_equal(m[7:], m3[7:]) and np.array_equal(m[2:7], m3[2:7])


# ----------------------------------------------------------------------------- the tagger


def _dataset():
    words = [[WORDS[(3 * s + i) % len(WORDS)] for i in range(4 + s % 3)] for s in range(8)]
    words[0][0] = "The"  # capitalised in the text: looked up as 'the'
    cols = {
        "words": words,
        "pos": [[POS[w.lower()] for w in s] for s in words],
        "chunk": [[CHUNK[POS[w.lower()]] for w in s] for s in words],
    }
    return conll.TaggingDataset(
        "toy", {"train": cols, "validation": cols}, tasks=("pos", "chunk"), buckets=(8,), max_word_length=4
    )


def _config(path="", freeze=False, word_dim=4):
    c = hierarchical_sg.get_config("hier")
    c.variants.hier = dict(pos=1, chunk=1)  # one layer: compiling dominates these tests' time
    c.model.update(
        num_layers=1,
        hidden=4,
        word_dim=word_dim,
        char_dim=2,
        char_features=2,
        word_dropout=0.0,
        pretrained_embeddings=path,
        freeze_embeddings=freeze,
    )
    c.weighting = common.method_config("equal")
    c.optimizer.name, c.optimizer.weight_decay = "adamw", 0.1  # decay would move a table the gradient does not
    c.batch_size, c.compilation_cache_dir = 4, ""
    return c


KNOWN = ["the", "cat", "dog", "sat", "ran"]  # 'a', 'fast', 'home', 'in', 'it' are not in the file


def test_tagger_coverage_and_settings(tmp_path):
    ds = _dataset()
    vocab = ds.word_vocab
    config = _config(_write_text(tmp_path / "g.txt", _vectors(KNOWN + ["zebra"], 4, seed=5)))
    _, summary = tagging.pretrained_words(config, ds)
    counts = ds.word_counts("train")
    want_tokens = sum(counts[vocab.id(w)] for w in KNOWN) / counts[2:].sum()
    assert summary["found_words"] == 5 and summary["vocab_words"] == len(vocab) - 2 == 10
    assert summary["coverage_types"] == pytest.approx(0.5)
    assert summary["coverage_train_tokens"] == pytest.approx(want_tokens)
    # The settings reach the record and the fingerprint only when a file is given.
    assert "pretrained_embeddings" not in tagging.model_settings(_config())
    assert tagging.fingerprint(_config()) != tagging.fingerprint(config)


def test_dimension_mismatch_and_freeze_without_file(tmp_path):
    ds = _dataset()
    path = _write_text(tmp_path / "g.txt", _vectors(["the", "cat"], 3))
    with pytest.raises(ValueError, match=r"g.txt: the vectors have dimension 3 but config.model.word_dim is 4"):
        tagging.build_experiment(_config(path), ds)
    with pytest.raises(ValueError, match="freeze_embeddings=True needs a file"):
        tagging.build_experiment(_config("", freeze=True), ds)
    init = sequence.pretrained_init(np.zeros((5, 3)), "g.txt")
    with pytest.raises(ValueError, match=r"shape \(7, 3\).*g.txt of shape \(5, 3\)"):
        init(None, (7, 3))


def _one_step(config, ds):
    exp, _, _ = tagging.build_experiment(config, ds)
    state = step_lib.init_state(exp.model, exp.weighting, exp.optimizer, exp.example_input, len(exp.tasks), seed=0)
    step = jax.jit(step_lib.make_train_step(exp.model, exp.tasks, exp.weighting, exp.optimizer, exp.step_config))
    new, metrics = step(state, next(exp.train_iterator(0)))
    assert bool(metrics["finite"])
    return state.params, new.params


@pytest.mark.parametrize("freeze", [True, False])
def test_frozen_table_does_not_move_in_a_train_step(tmp_path, freeze):
    ds = _dataset()
    vectors = _vectors(KNOWN, 4, seed=2)
    before, after = _one_step(_config(_write_text(tmp_path / "g.txt", vectors), freeze=freeze), ds)
    table = lambda p: np.asarray(p["shared"]["words"]["embed"]["embedding"])  # noqa: E731
    for w in KNOWN:  # the initial params hold the file's vectors ('The' in the text is looked up as 'the')
        np.testing.assert_array_equal(table(before)[ds.word_vocab.id(w)], vectors[w].astype(np.float32))
    np.testing.assert_array_equal(table(before)[conll.PAD_ID], 0.0)
    lstm = lambda p: np.concatenate([np.ravel(x) for x in jax.tree.leaves(p["shared"]["lstm_1"])])  # noqa: E731
    assert not np.array_equal(lstm(before), lstm(after))  # the step did train
    assert np.array_equal(table(before), table(after)) == freeze
