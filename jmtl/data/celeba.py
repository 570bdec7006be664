"""CelebA's 40 binary attributes as Sener & Koltun (2018) and FAMO (Liu et al. 2023) use them.

Raw files (the official release, unchanged), found under ``data_dir`` (or its ``celeba/`` / ``CelebA/``
sub-folder) in FAMO's layout or flat (torchvision's):

* ``Anno/list_attr_celeba.txt`` (or ``list_attr_celeba.txt``): line 1 the image count N, line 2 the 40
  attribute names, then N lines ``<image> v_1 .. v_40`` with v = 1 or -1;
* ``Eval/list_eval_partition.txt`` (or flat): N lines ``<image> p``, p = 0 train / 1 val / 2 test
  (162,770 / 19,867 / 19,962), in the same image order;
* ``Img/img_align_celeba/<image>`` (or ``img_align_celeba/``): the aligned 178x218 JPEGs.

Conventions, from FAMO's ``experiments/celeba/data.py`` (Cranial-XIX/FAMO): the attribute names are
line 2 of the attribute file, every later line is split on whitespace, the partition and attribute
files must list the same image on each line (FAMO asserts it), a label is 1 where the file says
``1`` and 0 otherwise, and the image is ``Image.open(..).convert('RGB')`` through
``transforms.Resize((64, 64))`` and ``ToTensor`` (x / 255, no normalisation). Here the 64x64 uint8
pixels are cached (``jmtl.data.image_cache``) and ``input_transform`` divides by 255 on device.

Tasks: one ``binary`` label per attribute, named by the attribute lower-cased with a leading digit
spelled out (``5_o_Clock_Shadow`` -> ``five_o_clock_shadow``), in the file's order.
"""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np

from jmtl.data import image_cache
from jmtl.data.idx import DataError
from jmtl.data.pipeline import DatasetSpec, LabelSpec, _ArrayDataset, _ArraySource, resolve_cache_dir

ENV_DATA_DIR = "JMTL_DATA_DIR"
NUM_ATTRIBUTES = 40
VERSION = "1.0.0"
SPLITS = {0: "train", 1: "validation", 2: "test"}
FIX = (
    "put the official CelebA files unchanged in one folder -- Anno/list_attr_celeba.txt, "
    "Eval/list_eval_partition.txt and Img/img_align_celeba/*.jpg (or the three flat) -- and point "
    "--config.dataset.data_dir / $JMTL_DATA_DIR at it or at a parent holding celeba/"
)
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def task_name(attribute: str) -> str:
    """``5_o_Clock_Shadow`` -> ``five_o_clock_shadow``: lower case, non-identifier characters -> ``_``,
    a leading digit spelled out."""
    name = re.sub(r"\W", "_", attribute.strip().lower())
    if name and name[0].isdigit():
        name = _DIGITS[int(name[0])] + name[1:]
    return name


def to_float(x):
    """uint8 pixels -> float32 in [0, 1] on device (``ToTensor``)."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    return x.astype(jnp.float32) * np.float32(1.0 / 255.0)


def _first(*candidates: pathlib.Path) -> pathlib.Path | None:
    return next((c for c in candidates if c.exists()), None)


def find_files(data_dir) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """(attribute file, partition file, image folder)."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_DATA_DIR) or None
    if data_dir is None:
        raise DataError(
            f"celeba: no data dir (neither data_dir / --config.dataset.data_dir nor ${ENV_DATA_DIR}). Fix: {FIX}"
        )
    base = pathlib.Path(data_dir).expanduser()
    for root in (base / "celeba", base / "CelebA", base):
        attr = _first(root / "Anno" / "list_attr_celeba.txt", root / "list_attr_celeba.txt")
        if attr is None:
            continue
        part = _first(root / "Eval" / "list_eval_partition.txt", root / "list_eval_partition.txt")
        if part is None:
            raise DataError(
                f"{root}: list_attr_celeba.txt is here but list_eval_partition.txt is not (in Eval/ "
                f"or here). Fix: {FIX}"
            )
        images = _first(root / "Img" / "img_align_celeba", root / "img_align_celeba")
        if images is None:
            raise DataError(f"{root}: no image folder Img/img_align_celeba/ or img_align_celeba/. Fix: {FIX}")
        return attr, part, images
    raise DataError(f"{base}: no list_attr_celeba.txt (in Anno/, here, celeba/ or CelebA/). Fix: {FIX}")


def read_attributes(path: pathlib.Path) -> tuple[list[str], list[str], np.ndarray]:
    """(attribute names, image names, int8 [N, 40] labels in {0, 1}) from ``list_attr_celeba.txt``."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise DataError(
            f"{path}: {len(lines)} line(s); the file starts with the image count and the attribute names. Fix: {FIX}"
        )
    try:
        count = int(lines[0].split()[0])
    except (ValueError, IndexError):
        raise DataError(f"{path}: line 1 is {lines[0][:40]!r}, not the image count. Fix: {FIX}") from None
    attrs = lines[1].split()
    if len(attrs) != NUM_ATTRIBUTES:
        raise DataError(f"{path}: line 2 names {len(attrs)} attributes, CelebA has {NUM_ATTRIBUTES}. Fix: {FIX}")
    rows = [ln.split() for ln in lines[2:] if ln.strip()]
    if len(rows) != count:
        raise DataError(f"{path}: line 1 says {count} images but {len(rows)} rows follow (truncated file?). Fix: {FIX}")
    names, labels = [], np.empty((len(rows), NUM_ATTRIBUTES), np.int8)
    for i, row in enumerate(rows):
        if len(row) != NUM_ATTRIBUTES + 1:
            raise DataError(
                f"{path}: line {i + 3} has {len(row)} columns, expected {NUM_ATTRIBUTES + 1} (the image "
                f"name and {NUM_ATTRIBUTES} values 1 / -1). Fix: re-extract the file from the official "
                "archive (an edited or wrapped line?)"
            )
        if any(v not in ("1", "-1") for v in row[1:]):
            bad = next(v for v in row[1:] if v not in ("1", "-1"))
            raise DataError(f"{path}: line {i + 3} has value {bad!r}; attribute values are 1 or -1. Fix: {FIX}")
        names.append(row[0])
        labels[i] = [1 if v == "1" else 0 for v in row[1:]]
    return attrs, names, labels


def read_partition(path: pathlib.Path, names: list[str]) -> np.ndarray:
    """int [N] split ids (0/1/2) from ``list_eval_partition.txt``, checked against the attribute file's order."""
    rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    if len(rows) != len(names):
        raise DataError(f"{path}: {len(rows)} rows, the attribute file lists {len(names)} images. Fix: {FIX}")
    out = np.empty(len(rows), np.int64)
    for i, row in enumerate(rows):
        if len(row) != 2 or row[1] not in ("0", "1", "2"):
            raise DataError(f"{path}: line {i + 1} is {' '.join(row)!r}; expected '<image> 0|1|2'. Fix: {FIX}")
        if row[0] != names[i]:
            raise DataError(
                f"{path}: line {i + 1} names {row[0]}, the attribute file's row {i + 1} names {names[i]}; "
                f"both files list the images in the same order. Fix: {FIX}"
            )
        out[i] = int(row[1])
    return out


def load_celeba(*, data_dir=None, cache_dir=None, image_size: int = 64) -> _ArrayDataset:
    """CelebA, 40 binary tasks (see the module docstring).

    Args:
      data_dir: the CelebA folder or a parent holding ``celeba/`` (argument > $JMTL_DATA_DIR).
      cache_dir: the decoded-image cache (argument > $JMTL_CACHE_DIR > ~/.cache/jmtl/tfds).
      image_size: the square side images are resized to (FAMO: 64).

    Returns:
      A dataset with input ``image`` uint8 [S, S, 3] (``spec.input_transform``: / 255 -> float32) and 40
      ``binary`` labels int32 []; splits train / validation / test = partitions 0 / 1 / 2. The first
      build decodes every JPEG (202,599 at full size: minutes, on all cores); later loads memory-map it.
    """
    if not isinstance(image_size, int) or isinstance(image_size, bool) or not 8 <= image_size <= 512:
        raise DataError(f"celeba: image_size must be an int in 8..512, got {image_size!r}")
    attr_file, part_file, image_dir = find_files(data_dir)
    attrs, names, labels = read_attributes(attr_file)
    tasks = [task_name(a) for a in attrs]
    if len(set(tasks)) != len(tasks):
        raise DataError(f"{attr_file}: attribute names {attrs} are not distinct once lower-cased. Fix: {FIX}")
    part = read_partition(part_file, names)
    images = [image_dir / n for n in names]

    def build():
        missing = next((p for p in images if not p.is_file()), None)
        if missing is not None:
            raise DataError(f"{missing}: image listed in {attr_file.name} not found. Fix: {FIX}")
        out = {}
        for k, s in SPLITS.items():  # split by split: one copy of the pixels in memory (2.5 GB at full size)
            out[f"{s}_image"] = image_cache.decode_all(
                [p for p, q in zip(images, part) if q == k], image_size, image_size, FIX
            )
            out[f"{s}_labels"] = labels[part == k]
        return out

    arrays = image_cache.cached_arrays(
        "celeba",
        VERSION,
        resolve_cache_dir(cache_dir),
        [attr_file, part_file],
        images,
        image_dir,
        f"size={image_size}",
        build,
    )
    sources = {}
    for s in SPLITS.values():
        if len(arrays[f"{s}_labels"]) == 0:
            raise DataError(f"{part_file}: no image in the {s} partition. Fix: {FIX}")
        lab = arrays[f"{s}_labels"]
        cols = {"image": arrays[f"{s}_image"]}
        cols.update({t: np.ascontiguousarray(lab[:, j], np.int32) for j, t in enumerate(tasks)})
        sources[s] = _ArraySource(cols)
    spec = DatasetSpec(
        name="celeba",
        input_key="image",
        input_shape=(image_size, image_size, 3),
        labels={t: LabelSpec(t, "binary", None, ()) for t in tasks},
        split_sizes={s: len(src) for s, src in sources.items()},
        input_transform=to_float,
    )
    dataset = _ArrayDataset(spec, sources, dict)
    dataset.attributes = tuple(attrs)
    return dataset
