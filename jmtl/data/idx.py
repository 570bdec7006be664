"""Reading and verifying MNIST-format IDX files (MNIST and Fashion-MNIST).

Every failure -- a missing folder or file, a truncated or corrupt gzip stream,
a wrong magic number, a header count that disagrees with the bytes present,
image/label count mismatch, a label outside 0..9 -- raises `DataError` whose
message names the file, the problem and the fix. Silent truncation would
otherwise surface much later as a baffling accuracy number.

The IDX format (LeCun et al.): a big-endian header `magic:u32, n:u32` (labels)
or `magic:u32, n:u32, rows:u32, cols:u32` (images), followed by `n` (labels) or
`n*rows*cols` (images) unsigned bytes. Magic 2049 = 0x00000801 (u8, 1 dim),
2051 = 0x00000803 (u8, 3 dims).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pathlib
import struct
import urllib.request
import zlib

import numpy as np

from jmtl.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
NUM_CLASSES = 10
IMAGE_SIZE = 28

ENV_DATA_DIR = "JMTL_DATA_DIR"

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)


@dataclasses.dataclass(frozen=True)
class RawSource:
    """Where a family of IDX files lives officially.

    Attributes:
      name: short name, also the expected subfolder of the data dir.
      title: human readable name used in messages.
      urls: base URLs (ending in '/') tried in order by `download`.
      md5: official MD5 of each `.gz` file, checked after a download.
    """

    name: str
    title: str
    urls: tuple[str, ...]
    md5: dict[str, str]


MNIST = RawSource(
    name="mnist",
    title="MNIST",
    urls=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    md5={
        TRAIN_IMAGES: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        TRAIN_LABELS: "d53e105ee54ea40749a09fcbcd1e9432",
        TEST_IMAGES: "9fb629c4189551a2d022fa330f9573f3",
        TEST_LABELS: "ec29112dd5afa0611ce80d1b7f02629c",
    },
)

FASHION_MNIST = RawSource(
    name="fashion_mnist",
    title="Fashion-MNIST",
    urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    md5={
        TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
        TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79",
        TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310",
    },
)

SOURCES = {s.name: s for s in (MNIST, FASHION_MNIST)}


def fix_text(source: RawSource) -> str:
    """The fix quoted in every error about `source`'s raw files."""
    return (
        f"re-download the {source.title} files from {source.urls[0]} (or pass "
        "download=True), or point --data_dir / "
        f"{ENV_DATA_DIR} at the folder holding the four {source.title} .gz "
        f"files (or its parent, with a {source.name}/ subfolder): " + ", ".join(FILES)
    )


def _error(path: os.PathLike[str] | str, problem: str, source: RawSource) -> DataError:
    return DataError(f"{path}: {problem}. Fix: {fix_text(source)}.")


def resolve_data_dir(data_dir: os.PathLike[str] | str | None, source: RawSource) -> pathlib.Path:
    """Returns the raw-data root: explicit argument > $JMTL_DATA_DIR > error."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_DATA_DIR) or None
    if data_dir is None:
        raise DataError(
            f"No data dir given for {source.title}: neither a data_dir argument "
            f"nor ${ENV_DATA_DIR} is set. Fix: {fix_text(source)}."
        )
    return pathlib.Path(data_dir).expanduser()


def find_files(data_dir: os.PathLike[str] | str, source: RawSource) -> pathlib.Path:
    """Returns the folder holding `source`'s four files under `data_dir`.

    Accepts `data_dir/<source.name>/` (the layout of a shared data root) or
    `data_dir` itself holding the files.

    Raises:
      DataError: the folder or any of the four files is missing.
    """
    root = pathlib.Path(data_dir).expanduser()
    if not root.is_dir():
        raise _error(root, "data dir does not exist or is not a directory", source)
    candidates = [root / source.name, root]
    for folder in candidates:
        if all((folder / f).is_file() for f in FILES):
            return folder
    # Report against the candidate that holds the most files: that is almost
    # certainly the folder the user meant.
    folder = max(candidates, key=lambda d: sum((d / f).is_file() for f in FILES))
    missing = [f for f in FILES if not (folder / f).is_file()]
    raise _error(folder / missing[0], f"missing {source.title} file(s) {', '.join(missing)}", source)


def _read_gz(path: pathlib.Path, source: RawSource) -> bytes:
    try:
        with open(path, "rb") as f:
            compressed = f.read()
    except OSError as e:
        raise _error(path, f"cannot read file ({e})", source) from e
    try:
        # gzip checks the CRC32 and length trailer, so bit flips and truncation
        # are caught here rather than as wrong pixels later.
        return gzip.decompress(compressed)
    except EOFError as e:
        raise _error(
            path, f"truncated gzip file ({len(compressed)} bytes on disk; the download was probably cut short)", source
        ) from e
    except (gzip.BadGzipFile, zlib.error, OSError) as e:
        raise _error(path, f"corrupt gzip file ({e})", source) from e


def read_idx_images(path: os.PathLike[str] | str, source: RawSource = MNIST) -> np.ndarray:
    """Reads a gzipped IDX3 image file into a uint8 array [N, 28, 28].

    Raises:
      DataError: on any of the verification failures listed in the module doc.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise _error(path, "file not found", source)
    raw = _read_gz(path, source)
    if len(raw) < 16:
        raise _error(
            path, f"only {len(raw)} bytes after decompression, too short for the 16-byte IDX3 image header", source
        )
    magic, n, rows, cols = struct.unpack(">4I", raw[:16])
    if magic != IMAGES_MAGIC:
        raise _error(
            path,
            f"bad IDX magic {magic} (expected {IMAGES_MAGIC} for "
            "an image file; is this a label file or a different format?)",
            source,
        )
    if (rows, cols) != (IMAGE_SIZE, IMAGE_SIZE):
        raise _error(path, f"images are {rows}x{cols}, expected {IMAGE_SIZE}x{IMAGE_SIZE}", source)
    expected = n * rows * cols
    present = len(raw) - 16
    if present != expected:
        raise _error(
            path, f"header says {n} images ({expected} bytes) but {present} bytes of pixels are present", source
        )
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols)


def read_idx_labels(path: os.PathLike[str] | str, source: RawSource = MNIST) -> np.ndarray:
    """Reads a gzipped IDX1 label file into a uint8 array [N] with values 0..9.

    Raises:
      DataError: on any of the verification failures listed in the module doc.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise _error(path, "file not found", source)
    raw = _read_gz(path, source)
    if len(raw) < 8:
        raise _error(
            path, f"only {len(raw)} bytes after decompression, too short for the 8-byte IDX1 label header", source
        )
    magic, n = struct.unpack(">2I", raw[:8])
    if magic != LABELS_MAGIC:
        raise _error(
            path,
            f"bad IDX magic {magic} (expected {LABELS_MAGIC} for "
            "a label file; is this an image file or a different format?)",
            source,
        )
    present = len(raw) - 8
    if present != n:
        raise _error(path, f"header says {n} labels but {present} bytes of labels are present", source)
    labels = np.frombuffer(raw, np.uint8, offset=8)
    if labels.size and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise _error(path, f"label {int(labels[bad])} at index {bad} is outside 0..{NUM_CLASSES - 1}", source)
    return labels


def read_split(folder: os.PathLike[str] | str, split: str, source: RawSource = MNIST) -> tuple[np.ndarray, np.ndarray]:
    """Reads and cross-checks the images and labels of 'train' or 'test'.

    Returns:
      (images uint8 [N, 28, 28], labels uint8 [N]).
    """
    folder = pathlib.Path(folder)
    names = {"train": (TRAIN_IMAGES, TRAIN_LABELS), "test": (TEST_IMAGES, TEST_LABELS)}[split]
    images = read_idx_images(folder / names[0], source)
    labels = read_idx_labels(folder / names[1], source)
    if len(images) != len(labels):
        raise _error(folder, f"{names[0]} holds {len(images)} images but {names[1]} holds {len(labels)} labels", source)
    return images, labels


def _md5(path: pathlib.Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(folder: os.PathLike[str] | str, source: RawSource) -> pathlib.Path:
    """Downloads whichever of `source`'s four files are absent into `folder`.

    Only used when the caller asked for it (download=True); each file is
    checked against its official MD5 and moved into place atomically, so an
    interrupted download never leaves a half file under the final name.

    Returns:
      `folder`.
    """
    folder = pathlib.Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        dest = folder / name
        if dest.is_file():
            continue
        tmp = dest.with_suffix(dest.suffix + ".part")
        errors = []
        for base in source.urls:
            try:
                with urllib.request.urlopen(base + name, timeout=60) as r, open(tmp, "wb") as f:
                    while chunk := r.read(1 << 20):
                        f.write(chunk)
            except OSError as e:
                errors.append(f"{base + name}: {e}")
                continue
            if _md5(tmp) != source.md5[name]:
                errors.append(f"{base + name}: MD5 mismatch")
                continue
            os.replace(tmp, dest)
            break
        else:
            tmp.unlink(missing_ok=True)
            raise _error(dest, "download failed (" + "; ".join(errors) + ")", source)
    return folder
