"""Decoded-image caches for the JPEG datasets (CelebA, Office-31, Office-Home).

JPEGs are decoded and resized once (PIL, which matplotlib already installs; nothing heavier) into
``.npy`` arrays under ``<cache>/<name>/<fingerprint>/`` and memory-mapped from then on. The
fingerprint covers the list files' sha256 and every image's name, size and modification time
(hashing 1.4 GB of CelebA JPEGs on every load would cost seconds; a replaced image has a new
modification time). The folder is built under a temporary name and renamed only when every image
decoded and every check passed, so bad input leaves nothing cached; it carries the same
``jmtl_cache.json`` record as the tfds caches (``jmtl.data.cache``: sizes and sha256 of every cache
file, checked before each use; a damaged folder is moved aside and rebuilt). That check is one sha256
pass over the cache: ~6 s for CelebA's 2.5 GB of 64x64 pixels at ~400 MB/s, against minutes to
decode the JPEGs again.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import pathlib
import shutil
import sys
from typing import Callable, Mapping, Sequence

import numpy as np

from jmtl.data import cache as cache_lib
from jmtl.data import fingerprint as fp_lib
from jmtl.data.idx import DataError


def decode_resized(path: pathlib.Path, width: int, height: int, fix: str) -> np.ndarray:
    """uint8 [height, width, 3]: ``PIL.Image.open(path).convert('RGB').resize((width, height), BILINEAR)``,
    what ``torchvision.transforms.Resize((height, width))`` does to a PIL image (PIL's bilinear filter
    widens with the scale, i.e. antialiases when shrinking)."""
    try:
        from PIL import Image  # pylint: disable=g-import-not-at-top
    except ImportError as e:
        raise DataError(
            "decoding the CelebA / Office JPEGs needs Pillow, which is not installed. Fix: "
            "pip install 'jmtl[vision]' (or pillow)"
        ) from e
    if not path.is_file():
        raise DataError(f"{path}: image not found. Fix: {fix}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((width, height), Image.BILINEAR), np.uint8)
    except Exception as e:  # PIL.UnidentifiedImageError, OSError on a truncated file
        raise DataError(
            f"{path}: cannot decode the image ({type(e).__name__}: {e}). Fix: re-copy it from the "
            f"original archive; {fix}"
        ) from e


def decode_all(paths: Sequence[pathlib.Path], width: int, height: int, fix: str) -> np.ndarray:
    """uint8 [len(paths), height, width, 3], decoded on a thread pool (PIL releases the GIL)."""
    out = np.empty((len(paths), height, width, 3), np.uint8)
    workers = max(1, min(16, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for i, img in enumerate(pool.map(lambda p: decode_resized(p, width, height, fix), paths, chunksize=64)):
            out[i] = img
    return out


def listing_key(files: Sequence[pathlib.Path], root: pathlib.Path) -> str:
    """sha256 of every file's path (relative to root), size and modification time."""
    h = hashlib.sha256()
    for p in files:
        try:
            st = p.stat()
        except OSError:
            h.update(f"{p.relative_to(root)}\0missing\n".encode())
            continue
        h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cached_arrays(
    name: str,
    version: str,
    cache_root: str,
    list_files: Sequence[pathlib.Path],
    images: Sequence[pathlib.Path],
    images_root: pathlib.Path,
    settings: str,
    build: Callable[[], Mapping[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """The arrays ``build()`` returns, from (or into) the cache folder of these sources.

    Args:
      name, version: the dataset and its builder version (part of the key).
      cache_root: the cache root.
      list_files: the annotation / split files (sha256-ed).
      images: every image file read (name, size, mtime).
      images_root: the folder ``images`` are named relative to.
      settings: anything else the arrays depend on (image size, ...).
      build: computes ``{file stem: array}``; raises ``DataError`` on bad input (nothing is cached).

    Returns:
      ``{stem: read-only memory-mapped array}``.
    """
    digests = [fp_lib.digest_file(p) for p in list_files]
    key = fp_lib.source_fingerprint(
        name,
        version,
        digests
        + [
            fp_lib.FileDigest("images", str(images_root), len(images), listing_key(images, images_root)),
            fp_lib.FileDigest("settings", "", 0, hashlib.sha256(settings.encode()).hexdigest()),
        ],
    )
    folder = pathlib.Path(cache_root, name, key)
    if folder.is_dir():
        problem = cache_lib.damage(folder, key)
        if problem is None:
            return {p.stem: np.load(p, mmap_mode="r") for p in sorted(folder.glob("*.npy"))}
        moved = cache_lib.move_aside(folder, cache_root)
        print(
            f"jmtl.data: damaged {name} cache {folder}: {problem}. Moved it to {moved} and rebuilding.",
            file=sys.stderr,
            flush=True,
        )
    arrays = build()  # raises before anything is written
    tmp = folder.with_name(f"{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for stem, arr in arrays.items():
            np.save(tmp / f"{stem}.npy", np.ascontiguousarray(arr))
        cache_lib.write_record(tmp, fingerprint=key, sources=digests)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not folder.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process built the same folder first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {p.stem: np.load(p, mmap_mode="r") for p in sorted(folder.glob("*.npy"))}
