"""Office-31 and Office-Home with LibMTL's split lists: per-task inputs, one task per domain.

Format, from LibMTL's ``examples/office/create_dataset.py`` and ``examples/office/data_txt/``
(median-research-group/LibMTL): for each domain and mode in train / val / test a list
``<Domain>_<mode>.txt`` whose lines are ``<image path> <class id>`` separated by one space, the path
relative to the dataset's image root (Office-31: ``dslr/images/back_pack/frame_0008.jpg 0``;
Office-Home: ``Real_World/Calendar/00020.jpg 0``); domains ``amazon``, ``dslr``, ``webcam`` (31
classes) and ``Art``, ``Clipart``, ``Product``, ``Real_World`` (65 classes). Each image is
``Image.open(..).convert('RGB')``, ``transforms.Resize((224, 224))``, ``ToTensor`` and
``Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])``; every domain is its own task
with its own data (LibMTL's ``multi_input=True``).

Layout read here: the dataset folder is ``data_dir/office31`` (or ``office-31``, ``Office31``) /
``data_dir/office_home`` (or ``office-home``, ``OfficeHome``), or ``data_dir`` itself; it holds the
images at the lists' relative paths, and the lists in ``data_txt/``, ``data_txt/office-31/`` /
``data_txt/office-home/`` (LibMTL's folder, copied as is) or the folder itself; ``lists_dir=``
points elsewhere.

Storage: the 224x224 uint8 pixels of every list are decoded once into a cache
(``jmtl.data.image_cache``); ``input_transform`` applies ``/ 255`` and the ImageNet normalisation on
device. The loader returns a :class:`PerTaskDataset`: ``tasks[domain]`` is an ordinary
:class:`~jmtl.data.MTLDataset` with input ``image`` and one ``classification`` label named by the
domain (lower case: ``amazon``, ``real_world``), which is the layout of ``jmtl.fit(...,
per_task_inputs=True)`` and of config-driven runs (``jmtl.training.loop.build_experiment``).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Mapping

import numpy as np

from jmtl.data import image_cache
from jmtl.data.idx import DataError
from jmtl.data.pipeline import DatasetSpec, LabelSpec, MTLDataset, _ArrayDataset, _ArraySource, resolve_cache_dir

ENV_DATA_DIR = "JMTL_DATA_DIR"
VERSION = "1.0.0"
MODES = {"train": "train", "validation": "val", "test": "test"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class OfficeFormat:
    name: str
    title: str
    domains: tuple[str, ...]  # as in the list file names
    num_classes: int
    aliases: tuple[str, ...]
    list_folder: str  # LibMTL's data_txt/<list_folder>/


FORMATS = {
    "office31": OfficeFormat(
        "office31",
        "Office-31",
        ("amazon", "dslr", "webcam"),
        31,
        ("office31", "office-31", "Office31", "Office-31"),
        "office-31",
    ),
    "office_home": OfficeFormat(
        "office_home",
        "Office-Home",
        ("Art", "Clipart", "Product", "Real_World"),
        65,
        ("office_home", "office-home", "OfficeHome", "Office-Home"),
        "office-home",
    ),
}


def _fix(fmt: OfficeFormat) -> str:
    return (
        f"put the {fmt.title} images in one folder and LibMTL's split lists (examples/office/data_txt/"
        f"{fmt.list_folder}/<Domain>_{{train,val,test}}.txt) in its data_txt/, and point "
        f"--config.dataset.data_dir / $JMTL_DATA_DIR at that folder or at a parent holding {fmt.name}/"
    )


def normalise(x):
    """uint8 pixels -> ``(x / 255 - mean) / std`` with the ImageNet statistics, float32, on device."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    scale = np.float32(1 / 255) / np.asarray(IMAGENET_STD, np.float32)
    shift = -np.asarray(IMAGENET_MEAN, np.float32) / np.asarray(IMAGENET_STD, np.float32)
    return x.astype(jnp.float32) * scale + shift


def task_name(domain: str) -> str:
    return domain.lower()


def find_folders(fmt: OfficeFormat, data_dir, lists_dir=None) -> tuple[pathlib.Path, pathlib.Path]:
    """(image root, list folder)."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_DATA_DIR) or None
    if data_dir is None:
        raise DataError(
            f"{fmt.name}: no data dir (neither data_dir / --config.dataset.data_dir nor "
            f"${ENV_DATA_DIR}). Fix: {_fix(fmt)}"
        )
    base = pathlib.Path(data_dir).expanduser()
    first = f"{fmt.domains[0]}_train.txt"
    roots = [base / a for a in fmt.aliases if (base / a).is_dir()] + [base]
    for root in roots:
        candidates = (
            [pathlib.Path(lists_dir).expanduser()]
            if lists_dir
            else [root / "data_txt" / fmt.list_folder, root / "data_txt", root]
        )
        for lists in candidates:
            if (lists / first).is_file():
                return root, lists
    raise DataError(
        f"{base}: no {fmt.title} split list {first} (looked in {', '.join(str(r) for r in roots)} "
        f"and their data_txt/{fmt.list_folder}/, data_txt/). Fix: {_fix(fmt)}"
    )


def read_list(path: pathlib.Path, num_classes: int, fix: str) -> tuple[list[str], np.ndarray]:
    """(relative image paths, int32 class ids) of one LibMTL list file."""
    if not path.is_file():
        raise DataError(f"{path}: split list not found. Fix: {fix}")
    paths, ys = [], []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        parts = line.rsplit(" ", 1)
        if len(parts) != 2 or not parts[1].strip().lstrip("-").isdigit():
            raise DataError(f"{path}: line {i + 1} is {line[:60]!r}; expected '<image path> <class id>'. Fix: {fix}")
        y = int(parts[1])
        if not 0 <= y < num_classes:
            raise DataError(
                f"{path}: line {i + 1} has class {y}, outside 0..{num_classes - 1}. Fix: correct the "
                f"list (LibMTL's lists number the {num_classes} classes 0..{num_classes - 1})"
            )
        paths.append(parts[0])
        ys.append(y)
    if not paths:
        raise DataError(f"{path}: empty split list. Fix: {fix}")
    return paths, np.asarray(ys, np.int32)


class PerTaskDataset:
    """Per-task inputs: ``tasks[name]`` is task ``name``'s own :class:`MTLDataset`.

    Attributes:
      spec: a :class:`DatasetSpec` listing every task's label (for ``tasks_from_config``); its
        ``split_sizes`` are the totals over tasks.
      tasks: ``{label name: MTLDataset}`` (input ``spec.input_key`` and that one label).
      per_task_inputs: True (what ``jmtl.training.loop.build_experiment`` looks for).
    """

    per_task_inputs = True

    def __init__(self, spec: DatasetSpec, tasks: Mapping[str, MTLDataset]):
        self.spec, self.tasks = spec, dict(tasks)

    def __repr__(self) -> str:
        return f"PerTaskDataset({self.spec.name}, tasks={list(self.tasks)})"

    def steps_per_epoch(self, batch_size: int, split: str = "train") -> int:
        """The longest task's batches per epoch (LibMTL's multi-input epoch; shorter tasks cycle)."""
        return max(d.steps_per_epoch(batch_size, split) for d in self.tasks.values())


def load_office(name: str, *, data_dir=None, cache_dir=None, lists_dir=None, image_size: int = 224) -> PerTaskDataset:
    """Office-31 (``name='office31'``) or Office-Home (``'office_home'``), one task per domain.

    Args:
      name: office31 | office_home.
      data_dir: the dataset folder or a parent holding it (argument > $JMTL_DATA_DIR).
      cache_dir: the decoded-image cache (argument > $JMTL_CACHE_DIR > ~/.cache/jmtl/tfds).
      lists_dir: the folder of the ``<Domain>_<mode>.txt`` lists, when not under the dataset folder.
      image_size: the square side of the resized images (LibMTL: 224).
    """
    fmt = FORMATS[name]
    if not isinstance(image_size, int) or isinstance(image_size, bool) or not 8 <= image_size <= 512:
        raise DataError(f"{name}: image_size must be an int in 8..512, got {image_size!r}")
    fix = _fix(fmt)
    root, lists = find_folders(fmt, data_dir, lists_dir)
    table = {}
    for domain in fmt.domains:
        for split, mode in MODES.items():
            table[domain, split] = read_list(lists / f"{domain}_{mode}.txt", fmt.num_classes, fix)
    list_files = [lists / f"{d}_{m}.txt" for d in fmt.domains for m in MODES.values()]
    images = [root / p for paths, _ in table.values() for p in paths]

    def build():
        out = {}
        for (domain, split), (paths, ys) in table.items():
            out[f"{task_name(domain)}_{split}_image"] = image_cache.decode_all(
                [root / p for p in paths], image_size, image_size, fix
            )
            out[f"{task_name(domain)}_{split}_labels"] = ys
        return out

    arrays = image_cache.cached_arrays(
        name, VERSION, resolve_cache_dir(cache_dir), list_files, images, root, f"size={image_size}", build
    )
    per_task, labels, totals = {}, {}, dict.fromkeys(MODES, 0)
    for domain in fmt.domains:
        t = task_name(domain)
        sources = {
            s: _ArraySource({"image": arrays[f"{t}_{s}_image"], t: np.asarray(arrays[f"{t}_{s}_labels"], np.int32)})
            for s in MODES
        }
        label = LabelSpec(t, "classification", fmt.num_classes, ())
        spec = DatasetSpec(
            name=f"{name}/{t}",
            input_key="image",
            input_shape=(image_size, image_size, 3),
            labels={t: label},
            split_sizes={s: len(src) for s, src in sources.items()},
            input_transform=normalise,
        )
        per_task[t] = _ArrayDataset(spec, sources, dict)
        labels[t] = label
        for s in MODES:
            totals[s] += spec.split_sizes[s]
    spec = DatasetSpec(
        name=name,
        input_key="image",
        input_shape=(image_size, image_size, 3),
        labels=labels,
        split_sizes=totals,
        input_transform=normalise,
    )
    return PerTaskDataset(spec, per_task)


def load_office31(*, data_dir=None, cache_dir=None, lists_dir=None, image_size: int = 224) -> PerTaskDataset:
    """Office-31: tasks ``amazon``, ``dslr``, ``webcam`` (31 classes each); see :func:`load_office`."""
    return load_office("office31", data_dir=data_dir, cache_dir=cache_dir, lists_dir=lists_dir, image_size=image_size)


def load_office_home(*, data_dir=None, cache_dir=None, lists_dir=None, image_size: int = 224) -> PerTaskDataset:
    """Office-Home: tasks ``art``, ``clipart``, ``product``, ``real_world`` (65 classes); see :func:`load_office`."""
    return load_office(
        "office_home", data_dir=data_dir, cache_dir=cache_dir, lists_dir=lists_dir, image_size=image_size
    )
