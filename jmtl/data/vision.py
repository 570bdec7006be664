"""NYUv2 and Cityscapes in the preprocessed ``.npy`` formats MTAN and LibMTL distribute.

On-disk formats (what users have; read, never converted in place):

* **NYUv2** (MTAN's ``nyuv2.zip``, also LibMTL's NYUv2 example): ``<root>/{train,val}/{image,label,
  depth,normal}/{i}.npy`` for i = 0..n-1, one file per example, channels last (HWC):
  ``image`` float [288, 384, 3] in [0, 1]; ``label`` [288, 384] with the 13 class ids 0..12 and -1 =
  ignore (stored as float in MTAN's files; any integral values are accepted); ``depth`` float
  [288, 384, 1], 0 = no measurement; ``normal`` float [288, 384, 3], the zero vector = no
  measurement. 795 train / 654 val examples. Source of these conventions: ``im2im_pred/
  create_dataset.py`` of lorenmt/mtan (folders ``train``/``val``, sub-folders ``image``, ``label``,
  ``depth``, ``normal``, files ``{index:d}.npy``, ``np.moveaxis(.., -1, 0)`` = HWC on disk) and
  ``examples/nyu/create_dataset.py`` of median-research-group/LibMTL (the same layout; its
  ``RandomScaleCrop`` and flip, below).
* **Cityscapes** (MTAN's ``cityscapes2.zip``, 128x256): ``<root>/{train,val}/{image,depth,label_7,
  label_19,label_2}/{i}.npy``: ``image`` float [128, 256, 3] in [0, 1], ``depth`` float [128, 256, 1]
  (inverse depth / disparity, 0 = invalid), ``label_<C>`` [128, 256] class ids, -1 = ignore; 2975 /
  500 examples. LibMTL's ``examples/cityscapes/create_dataset.py`` reads the 7-class labels from a
  folder named ``label`` instead of ``label_7``; both are accepted (``label_7`` first). The folder
  names come from MTAN's README ("2, 7, and 19-class semantic labels ... and (inverse) depth labels")
  and the Cityscapes readers that load ``label_7/{i}.npy`` from that release (e.g. Nash-MTL's).

Splits: ``train`` = the ``train`` folder; ``test`` = the ``val`` folder (the only labelled held-out
set; MTAN, LibMTL, Nash-MTL and FAMO all report on it). ``validation``: by default the ``val``
folder too, since that is what those papers evaluate every epoch (LibMTL's ``examples/nyu/main.py``
passes the val/ loader as its test loader, ``NYUmodel.train(nyuv2_train_loader, nyuv2_test_loader,
epochs)``, and reports the best epoch on it; MTAN and FAMO average the last epochs) -- so a model
selected on it is selected on the test set; ``validation_percent=p`` instead holds out the last p% of the train indices (the train split
then has the rest), for honest model selection.

Storage: nothing is converted. Each split is read per example from the user's ``.npy`` files,
memory-mapped (``np.load(mmap_mode='r')``): NYUv2's train split is 795 x (288 x 384 x 7 floats + a
label map) ~ 1.3 GB as float32, its test split 1.1 GB, and copying them into a second cache would
double the disk use for no gain (a ``.npy`` file already is an uncompressed random-access array).
Batches gather a few examples; ``arrays(split)`` returns lazy columns (:class:`LazyColumn`) that the
evaluator slices batch by batch, so no split is ever held in memory whole.

What is cached instead is the *verification*: on first use every file is checked (file names 0..n-1
without gaps and the same in every sub-folder, shapes HWC, dtypes, finite values, image range [0, 1],
label ids in -1..C-1) and a record ``<cache>/<name>_verified/<fingerprint>.json`` is written,
keyed by the name, size and modification time of every file (re-verifying 2.6 GB on every load
would cost seconds). A changed file changes the key, so it is verified again. A bad file raises
``DataError`` naming the file and the fix, and nothing is recorded.

Augmentation (``augment=True``; LibMTL's NYUv2 example, off in MTAN's paper and LibMTL's default,
on in Nash-MTL's and FAMO's NYUv2 runs): per training example, a scale s drawn uniformly from
{1, 1.2, 1.5}, a crop of ``int(H / s) x int(W / s)`` at a uniform offset, resized back to H x W
(image and normals bilinear with ``align_corners=True``, labels and depth nearest as PyTorch's
``mode='nearest'``: ``src = floor(dst * in / out)`` in float32), depth divided by s; then with
probability 1/2 a horizontal flip, negating the normals' x component. Draws come from
``default_rng([seed, epoch, example index, 0x617567])``: a function of the example, the seed and
the epoch only, so batches are deterministic per seed, independent of the process count, and a
resumed iterator gives exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
from typing import Callable, Mapping, Sequence

import numpy as np

from jmtl.data.idx import DataError
from jmtl.data.pipeline import DatasetSpec, LabelSpec, MTLDataset, resolve_cache_dir

ENV_DATA_DIR = "JMTL_DATA_DIR"
DISK_SPLITS = ("train", "val")
SCALES = (1.0, 1.2, 1.5)
_AUG_STREAM = 0x617567  # 'aug': keeps the augmentation draws apart from any other use of the seed
_NPY = re.compile(r"^(\d+)\.npy$")


@dataclasses.dataclass(frozen=True)
class Field:
    """One per-example ``.npy`` file kind of a dense-prediction dataset.

    Attributes:
      key: the batch key (``image``, ``segmentation``, ``depth``, ``normal``).
      folder: its sub-folder on disk (``image``, ``label``, ``label_7``, ...).
      shape: the per-example shape on disk (HWC).
      kind: 'image' (float in [0, 1]), 'label' (class ids, -1 = ignore), 'depth' or 'normal'
        (finite floats, 0 = invalid).
      num_classes: for labels.
    """

    key: str
    folder: str
    shape: tuple[int, ...]
    kind: str
    num_classes: int | None = None


@dataclasses.dataclass(frozen=True)
class DenseFormat:
    """A dense-prediction dataset's on-disk format."""

    name: str
    title: str
    height: int
    width: int
    fields: tuple[Field, ...]
    split_sizes: Mapping[str, int]  # published sizes per disk folder (messages only)
    fix: str


def nyuv2_format() -> DenseFormat:
    h, w = 288, 384
    return DenseFormat(
        name="nyuv2",
        title="NYUv2",
        height=h,
        width=w,
        fields=(
            Field("image", "image", (h, w, 3), "image"),
            Field("segmentation", "label", (h, w), "label", 13),
            Field("depth", "depth", (h, w, 1), "depth"),
            Field("normal", "normal", (h, w, 3), "normal"),
        ),
        split_sizes={"train": 795, "val": 654},
        fix=(
            "unpack MTAN's preprocessed NYUv2 (nyuv2.zip: train/ and val/, each with image/, label/, depth/, "
            "normal/ holding 0.npy, 1.npy, ...) unchanged and point --config.dataset.data_dir / $JMTL_DATA_DIR "
            "at its folder or at a parent holding nyuv2/"
        ),
    )


def cityscapes_format(num_classes: int = 7, label_folder: str = "label_7") -> DenseFormat:
    h, w = 128, 256
    return DenseFormat(
        name="cityscapes",
        title="Cityscapes",
        height=h,
        width=w,
        fields=(
            Field("image", "image", (h, w, 3), "image"),
            Field("segmentation", label_folder, (h, w), "label", num_classes),
            Field("depth", "depth", (h, w, 1), "depth"),
        ),
        split_sizes={"train": 2975, "val": 500},
        fix=(
            "unpack MTAN's preprocessed 128x256 Cityscapes (cityscapes2.zip: train/ and val/, each with image/, "
            "depth/, label_7/ (or LibMTL's label/), label_19/ holding 0.npy, 1.npy, ...) unchanged and point "
            "--config.dataset.data_dir / $JMTL_DATA_DIR at its folder or at a parent holding cityscapes/"
        ),
    )


def _error(path, problem: str, fix: str) -> DataError:
    return DataError(f"{path}: {problem}. Fix: {fix}")


def find_root(data_dir, name: str, aliases: Sequence[str], fix: str, must_have: str = "train") -> pathlib.Path:
    """The dataset folder: ``data_dir`` itself or its ``<alias>/`` sub-folder (argument > $JMTL_DATA_DIR)."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_DATA_DIR) or None
    if data_dir is None:
        raise DataError(
            f"{name}: no data dir (neither data_dir / --config.dataset.data_dir nor ${ENV_DATA_DIR}). Fix: {fix}"
        )
    root = pathlib.Path(data_dir).expanduser()
    for folder in [root / a for a in aliases] + [root]:
        if (folder / must_have).exists():
            return folder
    raise _error(root, f"no {must_have}/ here or in {', '.join(a + '/' for a in aliases)}", fix)


# ---------------------------------------------------------------------------------------- checks


def _list_indices(folder: pathlib.Path, fix: str) -> list[int]:
    if not folder.is_dir():
        raise _error(folder, "missing folder", fix)
    ids = []
    for p in folder.iterdir():
        m = _NPY.match(p.name)
        if m:
            ids.append(int(m.group(1)))
        elif p.suffix == ".npy":
            raise _error(p, "file name is not <index>.npy", fix)
    if not ids:
        raise _error(folder, "no <index>.npy files", fix)
    ids.sort()
    n = len(ids)
    if ids != list(range(n)):
        present = set(ids)
        gap = next(i for i in range(n + 1) if i not in present)
        raise _error(
            folder / f"{gap}.npy",
            f"missing: the indices must run 0..{n - 1} without gaps (found {n} files, up to {ids[-1]}.npy)",
            fix + " (re-copy the missing file)",
        )
    return ids


def _check_array(x: np.ndarray, path: pathlib.Path, field: Field, fix: str) -> None:
    """Shape, dtype and values of one example's array against the format."""
    shape = tuple(x.shape)
    if shape != field.shape:
        if len(shape) == len(field.shape) and shape[0] == field.shape[-1] and shape[1:] == field.shape[:-1]:
            raise _error(
                path,
                f"shape {shape} is channels-first (CHW); this format is HWC {field.shape}",
                "convert with np.save(path, np.moveaxis(x, 0, -1)), or use the unmodified MTAN/LibMTL files",
            )
        if field.kind == "label" and shape == field.shape + (1,):
            raise _error(
                path, f"shape {shape}, a label map must be {field.shape} (no channel axis)", "np.save(path, x[..., 0])"
            )
        raise _error(path, f"shape {shape}, expected {field.shape} ({field.key}, HWC)", fix)
    if field.kind == "label":
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise _error(path, f"dtype {x.dtype}; a label map holds numbers (class ids, -1 = ignore)", fix)
        v = np.asarray(x)
        if np.issubdtype(v.dtype, np.floating):
            if not np.all(np.isfinite(v)) or np.any(v != np.round(v)):
                raise _error(
                    path,
                    "label values are not whole numbers (NaN or fractions); class ids must be integers",
                    "regenerate the file from the integer label map",
                )
        lo, hi = float(v.min()), float(v.max())
        if lo < -1 or hi > field.num_classes - 1:
            bad = lo if lo < -1 else hi
            raise _error(
                path,
                f"label {bad:g} is outside the {field.num_classes} classes (valid 0..{field.num_classes - 1},"
                " and -1 = ignore)",
                "map unlabelled pixels to -1 and the classes to 0.."
                f"{field.num_classes - 1}, or load the matching class count (e.g. num_classes=19)",
            )
        return
    if not np.issubdtype(x.dtype, np.floating):
        raise _error(
            path,
            f"dtype {x.dtype}; {field.key} must be a float array"
            + (" in [0, 1] (an 8-bit image?)" if field.kind == "image" else ""),
            "np.save(path, x.astype(np.float32) / 255)" if field.kind == "image" else fix,
        )
    v = np.asarray(x)
    finite = np.isfinite(v)
    if not finite.all():
        where = np.argwhere(~finite)[0]
        raise _error(
            path,
            f"{field.key} holds NaN/inf (first at pixel {tuple(int(i) for i in where[:2])}); "
            f"invalid {field.key} pixels must be 0, not NaN",
            "x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0) before saving",
        )
    if field.kind == "image":
        lo, hi = float(v.min()), float(v.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise _error(
                path,
                f"image values span [{lo:g}, {hi:g}], this format stores [0, 1]",
                "divide 8-bit images by 255" if hi > 1.5 else fix,
            )


def _fingerprint(files: Sequence[pathlib.Path], root: pathlib.Path, extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def verify_dense(root: pathlib.Path, fmt: DenseFormat, cache_root: str) -> dict[str, int]:
    """Checks every file of both disk splits (once per file set; see the module docstring).

    Returns:
      examples per disk split, ``{'train': n, 'val': m}``.

    Raises:
      DataError: a missing split or sub-folder, a gap in the indices, sub-folders with different
        indices, a file of the wrong shape / dtype / values. Nothing is recorded then.
    """
    sizes, files = {}, []
    for split in DISK_SPLITS:
        if not (root / split).is_dir():
            raise _error(root / split, f"missing split folder ({fmt.title} has train/ and val/)", fmt.fix)
        ids = None
        for f in fmt.fields:
            got = _list_indices(root / split / f.folder, fmt.fix)
            if ids is not None and len(got) != len(ids):
                raise _error(
                    root / split / f.folder,
                    f"{len(got)} files but {split}/{fmt.fields[0].folder}/ has "
                    f"{len(ids)}; every example needs all of {', '.join(x.folder for x in fmt.fields)}",
                    fmt.fix,
                )
            ids = got
            files += [root / split / f.folder / f"{i}.npy" for i in got]
        sizes[split] = len(ids)
    key = _fingerprint(files, root, json.dumps([dataclasses.asdict(f) for f in fmt.fields]))
    record = pathlib.Path(cache_root, f"{fmt.name}_verified", f"{key}.json")
    if record.is_file():
        return sizes
    for path in files:
        field = next(f for f in fmt.fields if f.folder == path.parent.name)
        try:
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as e:  # ValueError / OSError / EOFError on a damaged or non-npy file
            raise _error(path, f"not a readable .npy file ({type(e).__name__}: {e})", fmt.fix) from e
        _check_array(x, path, field, fmt.fix)
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps({"root": str(root), "sizes": sizes, "files": len(files)}))
    os.replace(tmp, record)
    return sizes


# ------------------------------------------------------------------------------ lazy per-example data


class NpySource:
    """Random access to one split: example i = ``{key: array}`` read from ``<split>/<folder>/<idx>.npy``.

    Args:
      folder: the split folder (``<root>/train``).
      fields: the format's fields.
      indices: the file indices of this split's examples, in order.
    """

    def __init__(self, folder: pathlib.Path, fields: Sequence[Field], indices: Sequence[int]):
        self.folder, self.fields, self.indices = folder, tuple(fields), np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, key: str, i: int) -> np.ndarray:
        field = next(f for f in self.fields if f.key == key)
        x = np.load(self.folder / field.folder / f"{int(self.indices[i])}.npy", mmap_mode="r")
        return np.asarray(x, np.int32 if field.kind == "label" else np.float32)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {f.key: self.read(f.key, i) for f in self.fields}

    def __getitems__(self, ids) -> list[dict[str, np.ndarray]]:
        return [self[int(i)] for i in ids]


class LazyColumn:
    """One key of a split as an array-like: ``col[i]``, ``col[a:b]``, ``col[index_array]`` read those
    examples from disk (stacked); ``len``, ``shape``, ``dtype``; ``np.asarray(col)`` reads all."""

    def __init__(self, source: NpySource, key: str):
        self.source, self.key = source, key
        field = next(f for f in source.fields if f.key == key)
        self.dtype = np.dtype(np.int32 if field.kind == "label" else np.float32)
        self.shape = (len(source),) + tuple(field.shape)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.source.read(self.key, int(index))
        ids = np.arange(len(self))[index]
        out = np.empty((len(ids),) + self.shape[1:], self.dtype)
        for j, i in enumerate(ids):
            out[j] = self.source.read(self.key, int(i))
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyColumn({self.key}, shape={self.shape}, dtype={self.dtype})"


# ------------------------------------------------------------------------------------ augmentation


def resize_bilinear_align_corners(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """[h, w, C] -> [out_h, out_w, C], bilinear with ``align_corners=True`` (PyTorch's
    ``F.interpolate(..., mode='bilinear', align_corners=True)``): output pixel d samples the input at
    ``d * (in - 1) / (out - 1)``, so the corner pixels map onto each other exactly."""
    h, w = x.shape[:2]

    def axis(n_in, n_out):
        src = np.arange(n_out, dtype=np.float64) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, wy = axis(h, out_h)
    x0, x1, wx = axis(w, out_w)
    x = np.asarray(x, np.float32)
    # Separable (rows, then columns): the same bilinear weights as the 2-D formula, half the gathers.
    rows = x[y0] * (1 - wy)[:, None, None] + x[y1] * wy[:, None, None]
    return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def nearest_indices_torch(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel under PyTorch's ``mode='nearest'`` (no scale factor given):
    ``floor(d * scale)`` with ``scale = float32(n_in / n_out)``, computed in float32 as PyTorch does."""
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)


def resize_nearest(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """[h, w, ...] -> [out_h, out_w, ...] by :func:`nearest_indices_torch` on both axes."""
    rows = nearest_indices_torch(x.shape[0], out_h)
    cols = nearest_indices_torch(x.shape[1], out_w)
    return x[rows][:, cols]


@dataclasses.dataclass(frozen=True)
class AugmentDraw:
    """One example's augmentation: scale, crop offset (top, left) and flip."""

    scale: float
    top: int
    left: int
    flip: bool


def draw_augmentation(
    rng: np.random.Generator, height: int, width: int, scales: Sequence[float] = SCALES
) -> AugmentDraw:
    """LibMTL's ``RandomScaleCrop`` draws (scale uniform over ``scales``; crop ``int(H / s) x int(W / s)``
    at offsets uniform in 0..H-h and 0..W-w inclusive) and its flip with probability 1/2."""
    s = float(scales[int(rng.integers(len(scales)))])
    h, w = int(height / s), int(width / s)
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return AugmentDraw(s, top, left, bool(rng.random() < 0.5))


def augment_example(example: Mapping[str, np.ndarray], draw: AugmentDraw) -> dict[str, np.ndarray]:
    """Applies one draw to ``{'image', 'segmentation', 'depth'[, 'normal']}`` (HWC numpy arrays).

    Scale-crop: crop ``[top:top+h, left:left+w]``, resize back (image / normal bilinear
    align_corners, segmentation / depth nearest), depth / scale. Flip: reverse the width axis of
    every key and negate the normals' x (channel 0)."""
    height, width = example["image"].shape[:2]
    h, w = int(height / draw.scale), int(width / draw.scale)
    crop = (slice(draw.top, draw.top + h), slice(draw.left, draw.left + w))
    out = {}
    for key, x in example.items():
        c = x[crop]
        if key in ("image", "normal"):
            y = resize_bilinear_align_corners(c, height, width)
        elif key in ("segmentation", "depth"):
            y = resize_nearest(c, height, width)
            if key == "depth":
                y = y / np.float32(draw.scale)
        else:
            raise ValueError(f"augment_example: no rule for key {key!r}")
        if draw.flip:
            y = y[:, ::-1]
            if key == "normal":
                y = y * np.array([-1, 1, 1], np.float32)
        out[key] = np.ascontiguousarray(y, dtype=x.dtype)
    return out


def make_augmenter(scales: Sequence[float] = SCALES) -> Callable:
    """``augment(batch, ids, seed, epoch) -> batch``: each example i of the batch (dataset index
    ``ids[i]``) gets the draw of ``default_rng([seed, epoch, ids[i], _AUG_STREAM])``."""

    def augment(batch: dict, ids: np.ndarray, seed: int, epoch: int) -> dict:
        keys = [k for k in batch if k in ("image", "segmentation", "depth", "normal")]
        out = {k: np.empty_like(batch[k]) for k in keys}
        for j, i in enumerate(np.asarray(ids)):
            rng = np.random.default_rng([seed, epoch, int(i), _AUG_STREAM])
            ex = augment_example(
                {k: batch[k][j] for k in keys}, draw_augmentation(rng, *batch["image"].shape[1:3], scales)
            )
            for k in keys:
                out[k][j] = ex[k]
        return {**batch, **out}

    return augment


# ------------------------------------------------------------------------------------------ loaders


class DenseDataset(MTLDataset):
    """An :class:`MTLDataset` read per example from ``.npy`` files (see the module docstring)."""

    def __init__(self, spec: DatasetSpec, sources: Mapping[str, NpySource], augment: Callable | None = None):
        super().__init__(spec, sources, dict, augment=augment)
        # Reading and augmenting a 288x384 batch is milliseconds per example (numpy releases the GIL in
        # its loops), so several batches are prepared in parallel to keep an accelerator fed.
        self.read_threads = max(1, min(8, (os.cpu_count() or 1) - 1))

    def _raw_split(self, split: str) -> dict[str, LazyColumn]:
        self._check_split(split)
        src = self._sources[split]
        return {f.key: LazyColumn(src, f.key) for f in src.fields}

    def arrays(self, split: str) -> dict[str, LazyColumn]:
        """The split as lazy columns (read from disk batch by batch when sliced)."""
        return self._raw_split(split)


def _dense_dataset(
    fmt: DenseFormat, root: pathlib.Path, cache_dir, validation_percent: int, augment: bool
) -> DenseDataset:
    if (
        not isinstance(validation_percent, (int, np.integer))
        or isinstance(validation_percent, bool)
        or not (0 <= validation_percent <= 50)
    ):
        raise DataError(
            f"{fmt.name}: validation_percent must be an int in 0..50 (0 = validate on the val folder, "
            f"as the papers do), got {validation_percent!r}"
        )
    if not isinstance(augment, bool):
        raise DataError(f"{fmt.name}: augment must be True or False, got {augment!r}")
    sizes = verify_dense(root, fmt, resolve_cache_dir(cache_dir))
    train_ids = np.arange(sizes["train"])
    val_ids = np.arange(sizes["val"])
    if validation_percent:
        cut = sizes["train"] - max(1, int(round(sizes["train"] * validation_percent / 100)))
        if cut < 1:
            raise DataError(
                f"{fmt.name}: train/ has {sizes['train']} examples, too few to hold out {validation_percent}%"
            )
        splits = {
            "train": (root / "train", train_ids[:cut]),
            "validation": (root / "train", train_ids[cut:]),
            "test": (root / "val", val_ids),
        }
    else:
        splits = {
            "train": (root / "train", train_ids),
            "validation": (root / "val", val_ids),
            "test": (root / "val", val_ids),
        }
    sources = {s: NpySource(folder, fmt.fields, ids) for s, (folder, ids) in splits.items()}
    labels = {}
    for f in fmt.fields[1:]:
        kind = "segmentation" if f.kind == "label" else f.kind
        labels[f.key] = LabelSpec(f.key, kind, f.num_classes if f.kind == "label" else None, f.shape)
    spec = DatasetSpec(
        name=fmt.name,
        input_key="image",
        input_shape=fmt.fields[0].shape,
        labels=labels,
        split_sizes={s: len(src) for s, src in sources.items()},
    )
    dataset = DenseDataset(spec, sources, make_augmenter() if augment else None)
    dataset.root = root
    return dataset


def load_nyuv2(*, data_dir=None, cache_dir=None, validation_percent: int = 0, augment: bool = False) -> DenseDataset:
    """NYUv2 (13-class segmentation, depth, surface normals) from MTAN's preprocessed ``.npy`` files.

    Args:
      data_dir: the folder holding ``train/`` and ``val/``, or a parent holding ``nyuv2/`` (argument >
        $JMTL_DATA_DIR).
      cache_dir: where the verification record goes (argument > $JMTL_CACHE_DIR > ~/.cache/jmtl/tfds).
      validation_percent: 0 (default): validation = the val folder (= test, the papers' protocol);
        1..50: the last that % of train held out instead.
      augment: LibMTL's random scale-crop and flip on training batches.

    Returns:
      A :class:`DenseDataset`: input ``image`` float32 [288, 384, 3]; labels ``segmentation`` int32
      [288, 384] (13 classes, -1 ignore), ``depth`` float32 [288, 384, 1], ``normal`` float32
      [288, 384, 3].
    """
    fmt = nyuv2_format()
    root = find_root(data_dir, fmt.name, ("nyuv2", "NYUv2", "nyu_v2"), fmt.fix)
    return _dense_dataset(fmt, root, cache_dir, validation_percent, augment)


def load_cityscapes(
    *, data_dir=None, cache_dir=None, num_classes: int = 7, validation_percent: int = 0, augment: bool = False
) -> DenseDataset:
    """Cityscapes 128x256 (segmentation, depth) from MTAN's preprocessed ``.npy`` files.

    Args:
      data_dir: the folder holding ``train/`` and ``val/``, or a parent holding ``cityscapes/`` or
        ``cityscapes2/``.
      cache_dir: as in :func:`load_nyuv2`.
      num_classes: 7 (``label_7/``, or LibMTL's ``label/``) or 19 (``label_19/``).
      validation_percent, augment: as in :func:`load_nyuv2` (the flip has no normals to negate).
    """
    if num_classes not in (7, 19):
        raise DataError(f"cityscapes: num_classes must be 7 or 19 (MTAN's label_7/ and label_19/), got {num_classes!r}")
    fmt = cityscapes_format(num_classes)
    root = find_root(data_dir, fmt.name, ("cityscapes", "cityscapes2", "Cityscapes"), fmt.fix)
    folder = f"label_{num_classes}"
    if num_classes == 7 and not (root / "train" / folder).is_dir() and (root / "train" / "label").is_dir():
        folder = "label"  # LibMTL's copy names the 7-class folder label/
    elif not (root / "train" / folder).is_dir() and (root / "train").is_dir():
        raise _error(
            root / "train" / folder,
            f"missing folder: no {num_classes}-class labels here"
            + (
                " (MTAN's release has label_19/; LibMTL's copy has only the 7-class label/)"
                if num_classes == 19
                else ""
            ),
            "load num_classes=7, or " + fmt.fix,
        )
    fmt = cityscapes_format(num_classes, folder)
    return _dense_dataset(fmt, root, cache_dir, validation_percent, augment)
