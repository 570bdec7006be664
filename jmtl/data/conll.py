"""CoNLL-2000 (POS + chunking) and CoNLL-2003 English (POS + chunking + NER) as tagging datasets.

Raw files (never copied into the repo) come from ``data_dir`` / ``$JMTL_DATA_DIR``:

* ``conll2000/train.txt.gz``, ``conll2000/test.txt.gz`` (``word POS chunk``, IOB2);
* ``conll2003/eng.train.gz``, ``eng.testa.gz``, ``eng.testb.gz`` (``word POS chunk NER``, IOB1;
  ``-DOCSTART-`` lines are skipped).

A tfds builder stores the sentences as they are (strings, array_record, read back without
TensorFlow) under ``cache_dir`` / ``$JMTL_CACHE_DIR``. Everything derived from the text is done at
load time, where it is cheap (~10k sentences) and configurable:

* **dev split.** CoNLL-2000 has no dev set: the last ``dev_sentences`` sentences of ``train.txt``
  (the end of WSJ section 18, a contiguous block, so no document straddles train and dev) are held
  out as ``validation``. CoNLL-2003 uses ``eng.testa`` / ``eng.testb`` as validation / test.
* **vocabularies** from the (carved) train split only. Words are looked up lowercased with every
  digit mapped to ``0`` by default (``lowercase``), which folds sentence-initial capitals and
  numbers into one entry; the character CNN still sees the original spelling, so case information
  is not lost. Every train word is kept (the model learns the ``<unk>`` embedding by word dropout).
  Characters of a word longer than ``max_word_length`` keep its first and last halves (prefix and
  suffix carry the morphology). Tag vocabularies have ``<unk>`` at id 0: a tag that occurs only
  outside train (``I-LST`` in CoNLL-2000 test) maps to it; no model predicts it, so such a token
  is always an error, and its gold span is still scored from the gold strings.
* **span tags** are rewritten as IOB2 by default (``tag_scheme='iob2'``); that keeps every span
  (see :func:`jmtl.metrics.to_iob2`) and gives each span an explicit start for the model to learn.
* **bucketing.** A batch is padded to the smallest bucket length that holds its longest sentence
  (default 16/32/48/64/128), and the train iterator draws each batch from one bucket, so the
  jitted step sees at most ``len(buckets)`` shapes. Short batches are filled with empty rows
  (word id 0, labels -1), so the batch size never changes either.

Batch format (numpy)::

  {'inputs': {'words': int32 [B, T], 'chars': int32 [B, T, W]},
   <task>: int32 [B, T] tag ids, -1 at padding,
   'mask': float32 [B] (0 for filler rows)}
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import os
import re
import sys
import zlib
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from jmtl.data import cache as cache_lib
from jmtl.data import fingerprint
from jmtl.data.idx import DataError
from jmtl.data.pipeline import DatasetSpec, LabelSpec, resolve_cache_dir
from jmtl.metrics import spans as spans_lib

ENV_DATA_DIR = "JMTL_DATA_DIR"
PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1  # in the word and character vocabularies
TAG_UNK_ID = 0  # in the tag vocabularies
IGNORE = -1  # label at padding positions
DOCSTART = "-DOCSTART-"
TAGGING = "tagging"
DEFAULT_BUCKETS = (16, 32, 48, 64, 128)

Sentence = list[tuple[str, ...]]  # one tuple of columns per token


# ----------------------------------------------------------------------------- reading


def _open_bytes(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_conll(path: os.PathLike[str] | str, num_columns: int, *, skip_docstart: bool = True) -> list[Sentence]:
    """Reads a CoNLL file (plain or ``.gz``): one token per line, blank lines between sentences.

    Lines are decoded one at a time, so a byte that is not UTF-8 is reported with its line.

    Raises:
      DataError: naming the file and the (1-based) line number: a line with other than
        ``num_columns`` space-separated columns; a byte that is not UTF-8 (with its byte offset
        in the -- decompressed -- text); a truncated or corrupt file.
    """
    path = os.fspath(path)
    sentences: list[Sentence] = []
    current: Sentence = []
    lineno = 0
    offset = 0  # of the current line in the (decompressed) text
    try:
        with _open_bytes(path) as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    text = " of the decompressed text" if path.endswith(".gz") else ""
                    shown = raw.rstrip(b"\r\n")[:80]
                    raise DataError(
                        f"{path}:{lineno}: byte 0x{raw[e.start]:02x} at byte offset {offset + e.start}{text} "
                        f"(column {e.start + 1} of line {lineno}) is not valid UTF-8 ({e.reason}): "
                        f"{shown!r}. Fix: convert the file to UTF-8 (e.g. "
                        f"`iconv -f latin1 -t utf-8`, gzipped again if it was), or fix that line"
                    ) from None
                offset += len(raw)
                line = line.rstrip("\r\n")
                if not line.strip():
                    if current:
                        sentences.append(current)
                        current = []
                    continue
                cols = line.split()
                if skip_docstart and cols[0] == DOCSTART:
                    continue
                if len(cols) != num_columns:
                    raise DataError(
                        f"{path}:{lineno}: expected {num_columns} space-separated columns, got {len(cols)}: "
                        f"{line!r}. Fix: give every token line {num_columns} columns (a blank line ends a "
                        "sentence), or delete that line"
                    )
                current.append(tuple(cols))
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        if isinstance(e, FileNotFoundError):
            raise DataError(f"{path}: file not found. Fix: pass data_dir= or set ${ENV_DATA_DIR}") from e
        raise DataError(
            f"{path}: truncated or corrupt file after line {lineno} ({type(e).__name__}: {e}). "
            "Fix: copy or download it again"
        ) from e
    if current:
        sentences.append(current)
    if not sentences:
        raise DataError(f"{path}: no sentences")
    return sentences


# ----------------------------------------------------------------------------- vocabularies


@dataclasses.dataclass(frozen=True)
class Vocab:
    """An id <-> string table. ``unk_id`` is where unknown strings go."""

    tokens: tuple[str, ...]
    unk_id: int

    def __post_init__(self):
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})
        if len(self._index) != len(self.tokens):
            raise ValueError("duplicate vocabulary entries")

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    def id(self, token: str) -> int:
        return self._index.get(token, self.unk_id)

    def encode(self, tokens: Iterable[str]) -> np.ndarray:
        return np.asarray([self._index.get(t, self.unk_id) for t in tokens], np.int32)

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[int(i)] for i in ids]


def build_vocab(sequences: Iterable[Iterable[str]], specials: Sequence[str], *, min_count: int = 1) -> Vocab:
    """Specials first, then tokens with ``count >= min_count`` by decreasing count (ties by string,
    so the ids do not depend on the order of the sentences)."""
    counts = collections.Counter(t for seq in sequences for t in seq)
    tokens = sorted(
        (t for t, c in counts.items() if c >= min_count and t not in specials), key=lambda t: (-counts[t], t)
    )
    return Vocab(tuple(specials) + tuple(tokens), unk_id=specials.index(UNK))


_DIGITS = re.compile(r"\d")


def normalize_word(word: str, lowercase: bool = True) -> str:
    """The word-vocabulary key: lowercased, digits -> 0 (``lowercase=False`` keeps it as is)."""
    return _DIGITS.sub("0", word.lower()) if lowercase else word


def word_chars(word: str, max_length: int) -> str:
    """At most ``max_length`` characters: a longer word keeps its prefix and suffix halves."""
    if len(word) <= max_length:
        return word
    head = (max_length + 1) // 2
    return word[:head] + word[len(word) - (max_length - head) :]


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n; past the last bucket, the next multiple of it."""
    for b in buckets:
        if n <= b:
            return int(b)
    last = int(buckets[-1])
    return -(-n // last) * last


# ----------------------------------------------------------------------------- tfds builders


@dataclasses.dataclass(eq=False)
class ConllConfig(tfds.core.BuilderConfig):
    """Config named ``src<fingerprint>``: the cache folder is tied to the exact raw files."""

    source_fingerprint: str = ""


class _ConllBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Stores the raw sentences: one example per sentence, one string array per column."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Raw sentences, one string tensor per column."}
    SUBDIR = ""
    COLUMNS: tuple[str, ...] = ()
    FILES: dict[str, str] = {}  # split -> file name
    CITATION = ""

    def __init__(self, *, raw_folder: str | None = None, **kwargs):
        """raw_folder: the folder holding ``FILES`` (see ``locate``); only read when the cache has
        to be built."""
        self._raw_folder = raw_folder
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        col = lambda: tfds.features.Tensor(shape=(None,), dtype=np.object_)  # noqa: E731
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.name}: columns {', '.join(self.COLUMNS)}, one example per sentence.",
            features=tfds.features.FeaturesDict({c: col() for c in self.COLUMNS}),
            # File order is kept: the dev split is a fixed slice of train.
            disable_shuffling=True,
            citation=self.CITATION,
        )

    @classmethod
    def locate(cls, raw_data_dir) -> str:
        """The folder holding ``FILES``: ``raw_data_dir`` (or ``$JMTL_DATA_DIR``) or its ``SUBDIR/``."""
        root = raw_data_dir or os.environ.get(ENV_DATA_DIR)
        if not root:
            raise DataError(
                f"{cls.name}: no raw data folder; pass data_dir= or set ${ENV_DATA_DIR} to a folder holding "
                f"{cls.SUBDIR}/ ({', '.join(cls.FILES.values())})"
            )
        root = os.path.expanduser(os.fspath(root))
        for folder in (os.path.join(root, cls.SUBDIR), root):
            if all(_find(folder, f) for f in cls.FILES.values()):
                return folder
        raise DataError(
            f"{cls.name}: {', '.join(cls.FILES.values())} not found in {root} or {os.path.join(root, cls.SUBDIR)}. "
            f"Fix: pass data_dir= (--config.dataset.data_dir) or set ${ENV_DATA_DIR} to a folder holding "
            f"{cls.SUBDIR}/"
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Files come from the local data dir.
        if self._raw_folder is None:
            raise DataError(
                f"{self.name}: no raw files to build the cache from. Fix: pass data_dir= or set ${ENV_DATA_DIR}"
            )
        folder = self._raw_folder
        # Parse (and so validate) every file before writing anything.
        data = {s: read_conll(_find(folder, f), len(self.COLUMNS)) for s, f in self.FILES.items()}
        return {s: self._generate_examples(sents) for s, sents in data.items()}

    def _generate_examples(self, sentences: list[Sentence]):
        for i, sent in enumerate(sentences):
            cols = list(zip(*sent))
            yield i, {c: np.asarray(v, dtype=object) for c, v in zip(self.COLUMNS, cols)}


def _find(folder: str, name: str) -> str | None:
    """``name`` in ``folder``, gzipped or not."""
    stem = name[:-3] if name.endswith(".gz") else name
    for candidate in (stem + ".gz", stem):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    return None


class Conll2000(_ConllBuilder, skip_registration=True):
    """CoNLL-2000 chunking: WSJ sections 15-18 (train) and 20 (test)."""

    name = "conll2000"
    SUBDIR = "conll2000"
    COLUMNS = ("words", "pos", "chunk")
    FILES = {"train": "train.txt.gz", "test": "test.txt.gz"}
    CITATION = "Tjong Kim Sang & Buchholz, Introduction to the CoNLL-2000 Shared Task: Chunking, 2000."


class Conll2003(_ConllBuilder, skip_registration=True):
    """CoNLL-2003 English NER (Reuters): eng.train / eng.testa (dev) / eng.testb (test)."""

    name = "conll2003"
    SUBDIR = "conll2003"
    COLUMNS = ("words", "pos", "chunk", "ner")
    FILES = {"train": "eng.train.gz", "validation": "eng.testa.gz", "test": "eng.testb.gz"}
    CITATION = "Tjong Kim Sang & De Meulder, Introduction to the CoNLL-2003 Shared Task, 2003."


# ----------------------------------------------------------------------------- the dataset


@dataclasses.dataclass
class _Split:
    words: list[np.ndarray]  # [n] int32 per sentence
    chars: list[np.ndarray]  # [n, W] int32 per sentence
    tags: dict[str, list[np.ndarray]]  # task -> [n] int32 per sentence
    gold: dict[str, list[list[str]]]  # task -> tag strings per sentence
    tokens: list[list[str]]
    lengths: np.ndarray  # [N]


class TaggingDataset:
    """A loaded tagging dataset: vocabularies, encoded splits, bucketed padded batches.

    Attributes:
      spec: the ``DatasetSpec`` (``input_key='inputs'``; labels of kind ``'tagging'``).
      word_vocab, char_vocab: input vocabularies (train only).
      tag_vocabs: task -> tag vocabulary (train only, ``<unk>`` first).
    """

    def __init__(
        self,
        name: str,
        splits: Mapping[str, Mapping[str, list[list[str]]]],
        *,
        tasks: Sequence[str],
        lowercase: bool = True,
        max_word_length: int = 16,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        tag_scheme: str = "iob2",
        span_tasks: Sequence[str] = ("chunk", "ner"),
    ):
        """Builds vocabularies from ``splits['train']`` and encodes every split.

        Args:
          name: dataset name.
          splits: split -> column -> one string list per sentence (must have 'words').
          tasks: the tag columns to expose as tasks.
          lowercase: look words up lowercased with digits -> 0.
          max_word_length: characters kept per word (W).
          buckets: increasing padded lengths.
          tag_scheme: 'iob2' (rewrite span columns as IOB2) or 'asis'.
          span_tasks: which columns hold spans (scored by span F1; rewritten by tag_scheme).
        """
        if tag_scheme not in ("iob2", "asis"):
            raise DataError(f"tag_scheme must be 'iob2' or 'asis', got {tag_scheme!r}")
        if list(buckets) != sorted(set(buckets)) or not buckets or buckets[0] < 1:
            raise DataError(f"buckets must be increasing positive lengths, got {buckets!r}")
        if max_word_length < 1:
            raise DataError(f"max_word_length must be >= 1, got {max_word_length}")
        self.name = name
        self.lowercase = lowercase
        self.max_word_length = int(max_word_length)
        self.buckets = tuple(int(b) for b in buckets)
        self.task_names = tuple(tasks)
        self.span_tasks = tuple(t for t in self.task_names if t in span_tasks)
        splits = {s: dict(cols) for s, cols in splits.items()}
        if tag_scheme == "iob2":
            for cols in splits.values():
                for t in self.span_tasks:
                    cols[t] = [spans_lib.to_iob2(seq) for seq in cols[t]]
        train = splits["train"]
        self.word_vocab = build_vocab(([normalize_word(w, lowercase) for w in s] for s in train["words"]), (PAD, UNK))
        self.char_vocab = build_vocab(("".join(s) for s in train["words"]), (PAD, UNK))
        self.tag_vocabs = {t: build_vocab(train[t], (UNK,)) for t in self.task_names}
        self._splits = {s: self._encode(cols) for s, cols in splits.items()}
        self.spec = DatasetSpec(
            name=name,
            input_key="inputs",
            input_shape=(None,),
            labels={t: LabelSpec(t, TAGGING, len(self.tag_vocabs[t]), (None,)) for t in self.task_names},
            split_sizes={s: len(sp.words) for s, sp in self._splits.items()},
        )

    def __repr__(self) -> str:
        return f"TaggingDataset({self.name}, splits={self.spec.split_sizes}, tasks={self.task_names})"

    # -- encoding ------------------------------------------------------------------------------

    def _encode(self, cols: Mapping[str, list[list[str]]]) -> _Split:
        w = self.max_word_length
        words, chars = [], []
        for sent in cols["words"]:
            words.append(self.word_vocab.encode(normalize_word(t, self.lowercase) for t in sent))
            c = np.zeros((len(sent), w), np.int32)
            for i, tok in enumerate(sent):
                ids = self.char_vocab.encode(word_chars(tok, w))
                c[i, : len(ids)] = ids
            chars.append(c)
        tags = {t: [self.tag_vocabs[t].encode(seq) for seq in cols[t]] for t in self.task_names}
        gold = {t: [list(seq) for seq in cols[t]] for t in self.task_names}
        return _Split(
            words,
            chars,
            tags,
            gold,
            [list(s) for s in cols["words"]],
            np.asarray([len(s) for s in cols["words"]], np.int64),
        )

    def split(self, split: str) -> _Split:
        if split not in self._splits:
            raise DataError(f"{self.name}: unknown split {split!r}; valid splits: {sorted(self._splits)}")
        return self._splits[split]

    def word_counts(self, split: str = "train") -> np.ndarray:
        """int64 ``[len(word_vocab)]``: how often each word id occurs in ``split`` (e.g. for the
        token coverage of pretrained embeddings)."""
        words = self.split(split).words
        flat = np.concatenate(words) if words else np.zeros(0, np.int32)
        return np.bincount(flat, minlength=len(self.word_vocab)).astype(np.int64)

    def gold(self, split: str, task: str) -> list[list[str]]:
        """Gold tag strings of ``task`` per sentence (after ``tag_scheme``; test-only tags kept)."""
        return self.split(split).gold[task]

    def decode(self, task: str, ids: Iterable[int]) -> list[str]:
        """Predicted ids -> tag strings; ``<unk>`` becomes ``O`` for span tasks (it is no span)."""
        tags = self.tag_vocabs[task].decode(ids)
        if task in self.span_tasks:
            tags = [spans_lib.OUTSIDE if t == UNK else t for t in tags]
        return tags

    # -- batching ------------------------------------------------------------------------------

    def make_batch(self, split: str, ids: Sequence[int], batch_size: int, length: int | None = None) -> dict:
        """Pads sentences ``ids`` of ``split`` into one batch of ``batch_size`` rows (filler rows
        empty) and ``length`` positions (default: the bucket of the longest)."""
        sp = self.split(split)
        if len(ids) > batch_size:
            raise ValueError(f"{len(ids)} sentences do not fit a batch of {batch_size}")
        longest = max((int(sp.lengths[i]) for i in ids), default=1)
        length = bucket_length(longest, self.buckets) if length is None else length
        if longest > length:
            raise ValueError(f"a sentence of {longest} tokens does not fit length {length}")
        words = np.zeros((batch_size, length), np.int32)
        chars = np.zeros((batch_size, length, self.max_word_length), np.int32)
        tags = {t: np.full((batch_size, length), IGNORE, np.int32) for t in self.task_names}
        mask = np.zeros((batch_size,), np.float32)
        for row, i in enumerate(ids):
            n = int(sp.lengths[i])
            words[row, :n] = sp.words[i]
            chars[row, :n] = sp.chars[i]
            for t in self.task_names:
                tags[t][row, :n] = sp.tags[t][i]
            mask[row] = 1.0
        return {"inputs": {"words": words, "chars": chars}, **tags, "mask": mask}

    def _bucketed(self, split: str) -> dict[int, np.ndarray]:
        lengths = self.split(split).lengths
        keys = np.asarray([bucket_length(int(n), self.buckets) for n in lengths])
        return {int(b): np.flatnonzero(keys == b) for b in np.unique(keys)}

    def steps_per_epoch(self, batch_size: int, split: str = "train") -> int:
        """Batches in one epoch of ``split`` (every bucket's last batch is filled up, none dropped)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return sum(-(-len(ids) // batch_size) for ids in self._bucketed(split).values())

    def epoch_plan(self, batch_size: int, seed: int, epoch: int, split: str = "train") -> list[tuple[int, np.ndarray]]:
        """``[(length, sentence ids), ...]``: the batches of one epoch in order. Sentences are
        shuffled within their bucket, cut into batches, and the batches shuffled, all from
        ``default_rng([seed, epoch])``, so an epoch is reproducible on its own."""
        rng = np.random.default_rng([seed, epoch])
        plan = []
        for length, ids in sorted(self._bucketed(split).items()):
            ids = rng.permutation(ids)
            plan += [(length, ids[k : k + batch_size]) for k in range(0, len(ids), batch_size)]
        order = rng.permutation(len(plan))
        return [plan[i] for i in order]

    def train_iterator(
        self, batch_size: int, seed: int, *, split: str = "train", num_epochs: int | None = None, start_epoch: int = 0
    ) -> Iterator[dict]:
        """Shuffled bucketed batches, epoch after epoch (endless when ``num_epochs`` is None)."""
        epoch = start_epoch
        while num_epochs is None or epoch < start_epoch + num_epochs:
            for length, ids in self.epoch_plan(batch_size, seed, epoch, split):
                yield self.make_batch(split, ids, batch_size, length)
            epoch += 1

    def length_matched_batches(self, split: str, batch_size: int, seed: int) -> Callable[[int], dict]:
        """``length -> batch``: the next batch of ``split`` sentences that fit ``length``, padded to it.

        Bilevel weighting schemes take their meta batch this way, at the training batch's length: the
        step then compiles once per bucket instead of once per (train, meta) pair of buckets. Each
        length cycles through its own pool (the sentences whose bucket is at most ``length``),
        reshuffled every cycle from ``default_rng([seed, length, cycle])``; a pool smaller than a
        batch gives a partly filled batch.
        """
        keys = np.asarray([bucket_length(int(n), self.buckets) for n in self.split(split).lengths])
        cursors: dict[int, list] = {}  # length -> [cycle, position, order]

        def next_batch(length: int) -> dict:
            length = int(length)
            if length not in cursors:
                pool = np.flatnonzero(keys <= length)
                if not len(pool):
                    raise DataError(f"{self.name}: no {split!r} sentence fits length {length}")
                cursors[length] = [-1, len(pool), pool]
            cursor = cursors[length]
            cycle, pos, order = cursor
            if pos >= len(order) or (len(order) >= batch_size and pos + batch_size > len(order)):
                cycle += 1
                order = np.random.default_rng([seed, length, cycle]).permutation(np.sort(order))
                pos = 0
            ids = order[pos : pos + batch_size]
            cursor[:] = [cycle, pos + len(ids), order]
            return self.make_batch(split, ids, batch_size, length)

        return next_batch

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[np.ndarray, dict]]:
        """``(sentence ids, batch)`` covering ``split`` once, grouped by bucket (fixed batch size)."""
        for length, ids in sorted(self._bucketed(split).items()):
            for k in range(0, len(ids), batch_size):
                chunk = ids[k : k + batch_size]
                yield chunk, self.make_batch(split, chunk, batch_size, length)

    def arrays(self, split: str) -> dict:
        """The whole split as one batch padded to its longest bucket (for generic per-batch tools;
        bucketed iteration is much faster for recurrent models)."""
        n = self.spec.split_sizes[split]
        return self.make_batch(split, range(n), n)

    def example_input(self, length: int | None = None) -> dict:
        """A one-row zero input (for ``model.init``)."""
        length = length or self.buckets[0]
        return {
            "words": np.zeros((1, length), np.int32),
            "chars": np.zeros((1, length, self.max_word_length), np.int32),
        }


# ----------------------------------------------------------------------------- loaders


def _read_builder(builder: tfds.core.DatasetBuilder, split_map: Mapping[str, str]) -> dict:
    """split -> column -> list of string lists, read through tfds data sources (no TensorFlow)."""
    out = {}
    for split, tfds_split in split_map.items():
        try:
            source = builder.as_data_source(split=tfds_split)
            records = source.__getitems__(range(len(source))) if len(source) else []
        except Exception as e:  # pylint: disable=broad-except  (Riegeli/Zstd errors of a damaged cache)
            raise DataError(
                f"{builder.name}/{split}: cannot read the dataset cache {builder.data_dir} ({type(e).__name__}: {e}); "
                "the cache is damaged. Fix: move that folder away (or delete it) and load again to rebuild it"
            ) from e
        out[split] = {
            c: [[v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in r[c]] for r in records]
            for c in builder.COLUMNS
        }
    return out


def _prepare(builder_cls: type[_ConllBuilder], data_dir, cache_dir, verify_checksums: bool = True) -> _ConllBuilder:
    """The builder over a cache tied to the raw files' fingerprint (built on first use).

    With no data dir at all (no argument, no ``$JMTL_DATA_DIR``), the one existing build is used
    (stderr says which files it came from)."""
    cache_root = resolve_cache_dir(cache_dir)
    if not (data_dir or os.environ.get(ENV_DATA_DIR)):
        built = cache_lib.find_built(cache_root, builder_cls, "src")
        if len(built) == 1:
            record = cache_lib.read_record(built[0]) or {}
            fp = record.get("fingerprint") or ""
            paths = ", ".join(d.get("path", "?") for d in record.get("sources", []))
            print(
                f"jmtl.data: no data dir given; using the cached {builder_cls.name} in {built[0]}, built from "
                f"{paths or 'unrecorded files'} (fingerprint {fp}).",
                file=sys.stderr,
                flush=True,
            )
            return cache_lib.prepare(
                builder_cls,
                ConllConfig(name=f"src{fp}", source_fingerprint=fp),
                cache_root,
                fingerprint=fp,
                can_rebuild=False,
                rebuild_fix=f"pass data_dir= or set ${ENV_DATA_DIR}",
            )
        if len(built) > 1:
            raise DataError(
                f"{builder_cls.name}: no data dir given and the cache holds {len(built)} builds from "
                f"different raw files ({', '.join(map(str, built))}). Fix: pass data_dir= or set "
                f"${ENV_DATA_DIR}"
            )
    folder = builder_cls.locate(data_dir)
    files = {f: _find(folder, f) for f in builder_cls.FILES.values()}
    # Published checksums are for the .gz files; a plain copy is checked by its text's sha256.
    digests = [fingerprint.digest_file(p) for p in files.values()]
    if verify_checksums:
        _check_conll_checksums(builder_cls.SUBDIR, digests)
    fp = fingerprint.source_fingerprint(builder_cls.name, str(builder_cls.VERSION), digests)
    return cache_lib.prepare(
        builder_cls,
        ConllConfig(name=f"src{fp}", source_fingerprint=fp),
        cache_root,
        fingerprint=fp,
        sources=digests,
        raw_folder=folder,
    )


def _check_conll_checksums(family: str, digests: list) -> None:
    """Published .gz checksums; an uncompressed copy must have the published text's sha256."""
    gz = [d for d in digests if d.name.endswith(".gz")]
    fingerprint.check_published(family, gz)
    table = fingerprint.PUBLISHED.get(family, {})
    for d in digests:
        want = table.get(d.name + ".gz")
        if d.name.endswith(".gz") or want is None or want.content_sha256 in (None, d.sha256):
            continue
        raise DataError(
            f"{want.dataset} checksum mismatch: {d.path}: sha256 {d.sha256}, expected {want.content_sha256} as "
            f"published for the text of {want.name}. Fix: copy or download the file again; if you changed it on "
            f"purpose, pass {fingerprint.FLAG_HINT}. Nothing was written to the cache."
        )


def load_conll2000(
    *,
    data_dir=None,
    cache_dir=None,
    dev_sentences: int = 1000,
    lowercase: bool = True,
    max_word_length: int = 16,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    tag_scheme: str = "iob2",
    verify_checksums: bool = True,
) -> TaggingDataset:
    """CoNLL-2000 with tasks ``pos`` and ``chunk``; the last ``dev_sentences`` train sentences are
    the validation split. ``verify_checksums``: refuse files that differ from the published ones
    (False for your own or edited files; the cache is keyed by the files' hashes either way)."""
    builder = _prepare(Conll2000, data_dir, cache_dir, verify_checksums)
    n = builder.info.splits["train"].num_examples
    if not 0 < dev_sentences < n:
        raise DataError(f"dev_sentences must be in 1..{n - 1}, got {dev_sentences}")
    cut = n - dev_sentences
    raw = _read_builder(builder, {"train": f"train[:{cut}]", "validation": f"train[{cut}:]", "test": "test"})
    return TaggingDataset(
        "conll2000",
        raw,
        tasks=("pos", "chunk"),
        lowercase=lowercase,
        max_word_length=max_word_length,
        buckets=buckets,
        tag_scheme=tag_scheme,
    )


def load_conll2003(
    *,
    data_dir=None,
    cache_dir=None,
    lowercase: bool = True,
    max_word_length: int = 16,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    tag_scheme: str = "iob2",
    verify_checksums: bool = True,
) -> TaggingDataset:
    """CoNLL-2003 English with tasks ``pos``, ``chunk`` and ``ner`` (testa = validation, testb = test).
    ``verify_checksums`` as in :func:`load_conll2000`."""
    builder = _prepare(Conll2003, data_dir, cache_dir, verify_checksums)
    raw = _read_builder(builder, {"train": "train", "validation": "validation", "test": "test"})
    return TaggingDataset(
        "conll2003",
        raw,
        tasks=("pos", "chunk", "ner"),
        lowercase=lowercase,
        max_word_length=max_word_length,
        buckets=buckets,
        tag_scheme=tag_scheme,
    )


LOADERS: dict[str, Callable[..., TaggingDataset]] = {"conll2000": load_conll2000, "conll2003": load_conll2003}
