"""The vector table that every word-vector reader returns (text files in :mod:`jmtl.data.embeddings`,
PyPI wheels in :mod:`jmtl.data.packaged_embeddings`), and the filter that keeps the words a vocabulary
asks for. Its own module so that both readers import it and neither imports the other's reader."""

from __future__ import annotations

import dataclasses
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


def _wanted(keep: Optional[Collection[str]], normalize: Callable[[str], str]) -> Callable[[str], bool]:
    if keep is None:
        return lambda w: True
    return lambda w: w in keep or normalize(w) in keep or w in FILE_UNKNOWN_WORDS
