"""The vector table that every word-vector reader returns (text files in :mod:`jmtl.data.embeddings`,
PyPI wheels in :mod:`jmtl.data.packaged_embeddings`), and the filter that keeps the words a vocabulary
asks for. Its own module so that both readers import it and neither imports the other's reader."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Collection, Optional

import numpy as np

# Entries some files use for the unknown word (Senna: UNKNOWN); their vector seeds ``<unk>``.
FILE_UNKNOWN_WORDS = ("UNKNOWN", "<unk>", "UNK")


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """Vectors read from a file.

    Attributes:
      words: the file's words in file order (first occurrence of each; filtered by ``keep``).
      vectors: float32 ``[len(words), dim]``.
      dim: vector size.
      path: the file (Senna: ``words,vectors``).
      format: 'glove', 'word2vec' or 'senna'.
      num_lines: vectors in the file (all of them, kept or not).
      duplicates: repeated words that were skipped (the first occurrence is kept).
      scale: standard deviation of the kept vectors' entries (the scale of random rows).
    """

    words: tuple[str, ...]
    vectors: np.ndarray
    dim: int
    path: str
    format: str
    num_lines: int
    duplicates: int
    scale: float


class WordSelection:
    """Which of a file's words go into the table: the first occurrence of each (repeats are counted,
    not kept) among those ``keep`` asks for (or whose ``normalize``-d form it asks for), plus the
    unknown-word entries."""

    def __init__(self, keep: Optional[Collection[str]], normalize: Callable[[str], str]):
        self._keep, self._normalize = keep, normalize
        self._seen: set[str] = set()
        self.duplicates = 0

    def take(self, word: str) -> bool:
        """Whether ``word``'s vector goes into the table (call once per file entry, in file order)."""
        if word in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(word)
        keep = self._keep
        return keep is None or word in keep or self._normalize(word) in keep or word in FILE_UNKNOWN_WORDS


def make_embeddings(
    words: list[str], table: np.ndarray, path: str, fmt: str, num_lines: int, duplicates: int, *, repeats_in: str
) -> Embeddings:
    """The :class:`Embeddings` of the kept ``words`` and their float32 ``table`` rows; warns (naming
    ``repeats_in``) when the file repeated words."""
    if duplicates:
        warnings.warn(f"{repeats_in}: {duplicates} repeated word(s); the first vector of each was kept", stacklevel=3)
    scale = float(table.std()) if table.size else 0.0
    return Embeddings(tuple(words), table, int(table.shape[1]), path, fmt, num_lines, duplicates, scale)
