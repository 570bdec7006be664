"""CoNLL readers, tfds round trip, vocabularies from train only, bucketing."""

import gzip

import numpy as np
import pytest

from jmtl.data import DataError, conll

TRAIN = """\
The DT B-NP
cat NN I-NP
sat VBD B-VP

Dogs NNS B-NP
run VBP B-VP
in IN B-PP
1999 CD B-NP
. . O

A DT B-NP
dog NN I-NP
barked VBD B-VP
loudly RB B-ADVP
"""
TEST = """\
The DT B-NP
zebra NN I-NP
1. LS I-LST
"""
CONLL03 = """\
-DOCSTART- -X- O O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER
Smith NNP I-NP B-PER
"""


def _write(path, text, gz=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


@pytest.fixture(scope="module")
def c2000(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    _write(root / "conll2000" / "train.txt.gz", TRAIN)
    _write(root / "conll2000" / "test.txt.gz", TEST)
    return conll.load_conll2000(
        data_dir=root,
        cache_dir=tmp_path_factory.mktemp("cache"),
        verify_checksums=False,
        dev_sentences=1,
        buckets=(2, 4),
        max_word_length=4,
    )


def test_read_conll_reports_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    _write(bad, "The DT B-NP\ncat NN\n\n", gz=False)
    with pytest.raises(DataError, match=rf"{bad}:2: expected 3 space-separated columns, got 2"):
        conll.read_conll(bad, 3)
    gz = tmp_path / "bad.txt.gz"
    _write(gz, "a B C\n\nx y z w\n")
    with pytest.raises(DataError, match=rf"{gz}:3: expected 3 .* got 4"):
        conll.read_conll(gz, 3)


def test_build_fails_on_a_bad_line_naming_it(tmp_path):
    _write(tmp_path / "conll2000" / "train.txt.gz", TRAIN + "\nbroken line here too\n")
    _write(tmp_path / "conll2000" / "test.txt.gz", TEST)
    with pytest.raises(DataError, match=r"train.txt.gz:16: expected 3"):
        conll.load_conll2000(data_dir=tmp_path, cache_dir=tmp_path / "cache", dev_sentences=1, verify_checksums=False)


def test_missing_files_are_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="train.txt.gz, test.txt.gz not found"):
        conll.load_conll2000(data_dir=tmp_path, cache_dir=tmp_path / "cache")


def test_splits_and_vocabularies_come_from_train_only(c2000):
    ds = c2000
    assert ds.spec.split_sizes == {"train": 2, "validation": 1, "test": 1}
    # The dev split is the last train sentence, so its words are unknown.
    assert ds.split("validation").tokens == [["A", "dog", "barked", "loudly"]]
    wv = ds.word_vocab
    assert wv.tokens[:2] == ("<pad>", "<unk>")
    for w in ("the", "cat", "dogs", "0000"):  # lowercased, digits -> 0
        assert w in wv
    for w in ("The", "dog", "barked", "zebra", "1999"):
        assert w not in wv
    assert ds.split("validation").words[0].tolist() == [wv.id("a") if "a" in wv else 1, 1, 1, 1]
    assert ds.split("test").words[0].tolist()[:2] == [wv.id("the"), conll.UNK_ID]
    # Characters keep case; 'z' never occurs in train.
    assert "T" in ds.char_vocab and "z" not in ds.char_vocab
    # Tags: <unk> first, train tags only; I-LST (test only) maps to <unk> but keeps its gold string.
    chunk = ds.tag_vocabs["chunk"]
    assert chunk.tokens[0] == "<unk>" and "I-LST" not in chunk and "B-ADVP" not in chunk
    assert ds.split("test").tags["chunk"][0].tolist()[2] == conll.TAG_UNK_ID
    assert ds.gold("test", "chunk")[0] == ["B-NP", "I-NP", "B-LST"]  # rewritten as IOB2, type kept
    assert ds.decode("chunk", [conll.TAG_UNK_ID, chunk.id("B-NP")]) == ["O", "B-NP"]
    assert ds.spec.labels["chunk"].kind == "tagging"
    assert ds.spec.labels["chunk"].num_classes == len(chunk)


def test_long_words_keep_prefix_and_suffix():
    assert conll.word_chars("abcdefgh", 4) == "abgh"
    assert conll.word_chars("abcdefg", 5) == "abcfg"
    assert conll.word_chars("ab", 4) == "ab"


def test_bucketing_shapes_and_epochs(c2000):
    ds = c2000
    assert conll.bucket_length(1, (2, 4)) == 2 and conll.bucket_length(4, (2, 4)) == 4
    assert conll.bucket_length(5, (2, 4)) == 8
    # Train sentences have 3 and 5 tokens: buckets 4 and 8 (past the last bucket: multiples of 4).
    assert ds.steps_per_epoch(1) == 2 and ds.steps_per_epoch(3) == 2
    batches = list(ds.train_iterator(3, seed=0, num_epochs=1))
    assert len(batches) == 2
    lengths = sorted(b["inputs"]["words"].shape[1] for b in batches)
    assert lengths == [4, 8]
    for b in batches:
        n, t = b["inputs"]["words"].shape
        assert n == 3 and b["inputs"]["chars"].shape == (3, t, 4)
        real = b["inputs"]["words"] > 0
        assert b["mask"].tolist() == [1.0, 0.0, 0.0]  # one sentence per bucket, two filler rows
        for task in ("pos", "chunk"):
            assert b[task].shape == (3, t)
            assert np.all((b[task] >= 0) == real)  # labels -1 exactly at padding
    # Each epoch covers every sentence once; epochs are reproducible from (seed, epoch).
    plan = ds.epoch_plan(1, seed=3, epoch=0)
    assert sorted(int(i) for _, ids in plan for i in ids) == [0, 1]
    assert [ids.tolist() for _, ids in ds.epoch_plan(1, 3, 5)] == [ids.tolist() for _, ids in ds.epoch_plan(1, 3, 5)]
    eval_ids = [i for ids, _ in ds.eval_batches("train", 8) for i in ids]
    assert sorted(eval_ids) == [0, 1]


def test_conll2003_skips_docstart_and_rewrites_iob1(tmp_path):
    for name in ("eng.train", "eng.testa", "eng.testb"):
        _write(tmp_path / "conll2003" / f"{name}.gz", CONLL03)
    ds = conll.load_conll2003(data_dir=tmp_path, cache_dir=tmp_path / "cache", verify_checksums=False)
    assert ds.task_names == ("pos", "chunk", "ner")
    assert ds.spec.split_sizes == {"train": 2, "validation": 2, "test": 2}
    assert ds.gold("train", "ner") == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER", "B-PER"]]
    assert ds.gold("train", "chunk")[0] == ["B-NP", "B-VP", "B-NP", "I-NP"]
    asis = conll.load_conll2003(
        data_dir=tmp_path, cache_dir=tmp_path / "cache", tag_scheme="asis", verify_checksums=False
    )
    assert asis.gold("train", "ner")[1] == ["I-PER", "I-PER", "B-PER"]
