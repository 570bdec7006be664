"""Dataset specs, `load`, and the grain input pipeline used by training.

Storage is tfds (array_record, read through a tfds data source; no
TensorFlow). A whole split of these datasets is small (MultiMNIST train is
47 MB of uint8), and decoding tfds records costs ~70 us each in Python, i.e.
~18 ms for a 256 batch -- as long as the train step itself. So the pipeline
reads each split out of the data source once, keeps the raw arrays in memory,
and lets grain drive *batch indices*: every element of the grain dataset is
one global batch, gathered with one vectorised numpy take. That makes a
256-batch cost well under a millisecond and keeps grain's exact
checkpoint/resume semantics.

Order: epoch e visits the examples in `default_rng([seed, e]).permutation(n)`;
global batch k of the epoch is positions [k*B, (k+1)*B) of that permutation,
and process p of P takes the p-th contiguous B/P slice of it. All processes
therefore agree on the global batch without talking to each other.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
import threading
from typing import Any, Callable, Mapping

import grain
import numpy as np
import tensorflow_datasets as tfds

from jmtl import tasks as tasks_lib
from jmtl.data import cache, fingerprint, gradnorm_toy, idx, multi_mnist
from jmtl.registry import Registry
from jmtl.tasks import MASK_SUFFIX

DataError = idx.DataError

ENV_CACHE_DIR = "JMTL_CACHE_DIR"
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "jmtl", "tfds")

# Sener & Koltun normalise MultiMNIST (and MultiFashion) with the MNIST
# statistics.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def normalise_pixels(x):
    """uint8 pixels -> `(x / 255 - MNIST_MEAN) / MNIST_STD` in float32, on device.

    Batches carry raw uint8 pixels (a quarter of the bytes to gather and move)
    and the train/eval steps apply this (`DatasetSpec.input_transform`); XLA
    fuses it into the first layer. Equal to the float64 formula to within
    float32 rounding (one multiply-add).
    """
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    return x.astype(jnp.float32) * np.float32(1.0 / (255.0 * MNIST_STD)) + np.float32(-MNIST_MEAN / MNIST_STD)


Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    """One task's label.

    Attributes:
      name: key of the label in a batch.
      kind: 'classification' or 'regression'.
      num_classes: number of classes, None for regression.
      shape: per-example label shape; () for class ids.
    """

    name: str
    kind: str
    num_classes: int | None
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a model and a trainer need to know about a dataset.

    Attributes:
      name: registry name, e.g. 'multi_mnist'.
      input_key: key of the model input in a batch.
      input_shape: per-example input shape.
      labels: task name -> LabelSpec, in task order.
      split_sizes: examples in 'train', 'validation' and 'test'.
      input_transform: applied on device to `batch[input_key]` before the model
        (train and eval steps: `StepConfig.input_transform`), e.g. uint8 pixels
        -> normalised float32; None = the batch holds the model input as is.
    """

    name: str
    input_key: str
    input_shape: tuple[int, ...]
    labels: dict[str, LabelSpec]
    split_sizes: dict[str, int]
    input_transform: Callable[[Any], Any] | None = None


def resolve_cache_dir(cache_dir: os.PathLike[str] | str | None) -> str:
    """tfds cache location: argument > $JMTL_CACHE_DIR > ~/.cache/jmtl/tfds."""
    if cache_dir is None:
        cache_dir = os.environ.get(ENV_CACHE_DIR) or DEFAULT_CACHE_DIR
    return os.path.expanduser(os.fspath(cache_dir))


def _pixel_batch(raw: Mapping[str, np.ndarray]) -> Batch:
    return {
        "image": np.asarray(raw["image"], np.uint8),
        "left": raw["left"].astype(np.int32),
        "right": raw["right"].astype(np.int32),
    }


def _as_float32(raw: Mapping[str, np.ndarray]) -> Batch:
    return {k: np.asarray(v, np.float32) for k, v in raw.items()}


def _read_all(source: Any, chunk: int = 4096, where: str = "split", folder: str | None = None) -> dict[str, np.ndarray]:
    """Reads a whole tfds data source into stacked numpy arrays.

    Raises:
      DataError: the split is empty, or reading it fails (a damaged
        array_record raises Riegeli/Zstd errors); names `folder`.
    """
    n = len(source)
    if n == 0:
        folder = folder or "under JMTL_CACHE_DIR, default ~/.cache/jmtl/tfds"
        raise DataError(
            f"{where} is empty (0 examples). Fix: delete its tfds "
            f"cache folder ({folder}) so it is rebuilt, and check the "
            "raw files"
        )
    try:
        first = source[0]
        out = {k: np.empty((n,) + np.shape(v), np.asarray(v).dtype) for k, v in first.items()}
        for start in range(0, n, chunk):
            records = source.__getitems__(range(start, min(n, start + chunk)))
            for k, arr in out.items():
                arr[start : start + len(records)] = [r[k] for r in records]
    except DataError:
        raise
    except Exception as e:  # pylint: disable=broad-except
        # Riegeli / Zstd / protobuf errors from a damaged array_record.
        raise DataError(
            f"{where}: cannot read the dataset cache {folder or ''} "
            f"({type(e).__name__}: {e}); the cache is damaged. Fix: move that "
            "folder away (or delete it) and load again to rebuild it"
        ) from e
    return out


class _EpochPermutations:
    """Per-epoch shuffles, keeping the two most recent (epochs change rarely)."""

    def __init__(self, n: int, seed: int):
        self._n, self._seed = n, seed
        self._cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __call__(self, epoch: int) -> np.ndarray:
        with self._lock:
            perm = self._cache.get(epoch)
            if perm is None:
                perm = np.random.default_rng([self._seed, epoch]).permutation(self._n)
                if len(self._cache) >= 2:
                    self._cache.pop(min(self._cache))
                self._cache[epoch] = perm
            return perm


class MTLDataset:
    """A loaded multi-task dataset: spec, train iterator and in-memory splits."""

    def __init__(
        self,
        spec: DatasetSpec,
        sources: Mapping[str, Any],
        transform: Callable[[Mapping[str, np.ndarray]], Batch],
        builder: tfds.core.DatasetBuilder | None = None,
        augment: Callable[..., Batch] | None = None,
    ):
        """Wraps per-split tfds data sources.

        Args:
          spec: the dataset's spec.
          sources: split name -> tfds data source (random access, `__getitems__`).
          transform: raw gathered arrays -> batch (normalisation, dtypes).
          builder: the tfds builder behind `sources`, kept for `info`.
          augment: `augment(batch, ids, seed, epoch) -> batch`, applied to batches
            of the 'train' split only (`ids`: the examples' indices in the split). It must be
            a function of its arguments alone (e.g. draws from
            `default_rng([seed, epoch, id])`), which keeps the iterator exactly
            resumable and independent of the process count.
        """
        self.spec = spec
        self.builder = builder
        self._augment = augment
        self._sources = dict(sources)
        self._transform = transform
        self._raw: dict[str, dict[str, np.ndarray]] = {}
        self._arrays: dict[str, Batch] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MTLDataset({self.spec.name}, splits={self.spec.split_sizes})"

    def source(self, split: str) -> Any:
        """The tfds data source of `split` (per-record random access)."""
        self._check_split(split)
        return self._sources[split]

    def _check_split(self, split: str) -> None:
        if split not in self._sources:
            raise DataError(f"{self.spec.name}: unknown split {split!r}; valid splits: {sorted(self._sources)}")

    def _raw_split(self, split: str) -> dict[str, np.ndarray]:
        self._check_split(split)
        with self._lock:
            if split not in self._raw:
                folder = getattr(self.builder, "data_dir", None)
                self._raw[split] = _read_all(
                    self._sources[split], where=f"{self.spec.name}/{split} split", folder=folder
                )
            return self._raw[split]

    def arrays(self, split: str) -> Batch:
        """The whole split in memory, in batch format (cached after first call)."""
        raw = self._raw_split(split)
        with self._lock:
            if split not in self._arrays:
                self._arrays[split] = self._transform(raw)
            return self._arrays[split]

    def steps_per_epoch(self, batch_size: int, split: str = "train", *, drop_remainder: bool = True) -> int:
        """Global batches per epoch of `split` for the global `batch_size`."""
        self._check_split(split)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        n = self.spec.split_sizes[split]
        return n // batch_size if drop_remainder else -(-n // batch_size)

    def train_iterator(
        self,
        batch_size: int,
        seed: int,
        *,
        split: str = "train",
        num_epochs: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
        drop_remainder: bool = True,
        prefetch: int = 2,
    ) -> grain.DatasetIterator:
        """Shuffled batches of `split`, sharded across processes, resumable.

        Args:
          batch_size: the GLOBAL batch size; each process yields
            batch_size // process_count examples per batch.
          seed: shuffle seed (non-negative); epoch e uses its own permutation.
          split: 'train', 'validation' or 'test'.
          num_epochs: epochs to run, None for an endless iterator.
          process_index: this process, in [0, process_count).
          process_count: number of processes sharing the global batch.
          drop_remainder: drop each epoch's last partial batch. If False, that
            batch is split between processes as evenly as possible.
          prefetch: batches prepared ahead by one background thread; 0 = none.

        Returns:
          A grain iterator of `dict[str, np.ndarray]` batches, with
          `get_state()` (JSON-serialisable) and `set_state(state)`.
        """
        if batch_size <= 0 or batch_size % process_count:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of "
                f"process_count ({process_count}): it is the global batch."
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if not 0 <= seed < 2**63:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        if num_epochs is not None and num_epochs <= 0:
            raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        steps = self.steps_per_epoch(batch_size, split, drop_remainder=drop_remainder)
        if steps == 0:
            raise ValueError(
                f"{self.spec.name}/{split} has {self.spec.split_sizes[split]} "
                f"examples, fewer than one batch of {batch_size}. Fix: lower "
                f"--config.batch_size to at most {self.spec.split_sizes[split]}."
            )
        raw = self._raw_split(split)
        n = self.spec.split_sizes[split]
        permutation = _EpochPermutations(n, seed)
        transform = self._transform
        # Augmentation is for the training split only (a bilevel scheme's meta
        # batches from 'validation' stay as stored).
        augment = self._augment if split == "train" else None
        local = batch_size // process_count

        def make_batch(step: int, _) -> Batch:
            epoch, k = divmod(step, steps)
            ids = permutation(epoch)[k * batch_size : (k + 1) * batch_size]
            if len(ids) == batch_size:
                ids = ids[process_index * local : (process_index + 1) * local]
            else:  # Last partial batch with drop_remainder=False.
                ids = np.array_split(ids, process_count)[process_index]
            batch = transform({key: arr[ids] for key, arr in raw.items()})
            return batch if augment is None else augment(batch, ids, seed, epoch)

        ds = grain.MapDataset.range(steps).repeat(num_epochs)
        ds = ds.map_with_index(make_batch)
        # One thread is enough for in-memory data (a batch is a sub-millisecond
        # gather) and leaves the other core to the train step; datasets read from
        # files set `read_threads` (jmtl.data.vision).
        threads = getattr(self, "read_threads", 1)
        options = grain.ReadOptions(
            num_threads=threads if prefetch else 0, prefetch_buffer_size=max(prefetch, threads) if prefetch else 0
        )
        return iter(ds.to_iter_dataset(options))


class WithMetaBatches:
    """Adds a second ("meta") batch to every training batch, as `prefix + key`.

    Bilevel weighting schemes (Auto-Lambda, MOML, FORUM) evaluate validation
    losses after a look-ahead step; this gives the train step that batch from
    its own resumable iterator (usually over the validation split).
    State: `{'train': ..., 'meta': ...}`.
    """

    def __init__(self, train: Any, meta: Any, prefix: str = "meta/"):
        self.train, self.meta, self.prefix = train, meta, prefix

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        batch = dict(next(self.train))
        batch.update({self.prefix + k: v for k, v in next(self.meta).items()})
        return batch

    def get_state(self) -> dict:
        return {"train": self.train.get_state(), "meta": self.meta.get_state()}

    def set_state(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != {"train", "meta"}:
            raise ValueError(
                "data iterator state has no meta-batch iterator: the "
                "checkpoint was written by a run without a bilevel "
                "weighting scheme"
            )
        self.train.set_state(state["train"])
        self.meta.set_state(state["meta"])


# ----------------------------------------------------------------------------
# Registry.


def _sources(builder, split_map: Mapping[str, str]) -> tuple[dict, dict]:
    try:
        sources = {s: builder.as_data_source(split=t) for s, t in split_map.items()}
        sizes = {s: len(src) for s, src in sources.items()}
    except Exception as e:  # pylint: disable=broad-except
        # A cache damaged in a way its record cannot show (one without a record).
        raise DataError(
            f"{builder.name}: cannot open the dataset cache {builder.data_dir} "
            f"({type(e).__name__}: {e}); the cache is damaged. Fix: move that "
            "folder away (or delete it) and load again to rebuild it"
        ) from e
    return sources, sizes


def _multi_config(
    builder_cls: type[multi_mnist._MultiBuilder],
    data_dir,
    cache_root: str,
    seed: int,
    download: bool,
    verify_checksums: bool,
) -> tuple[Any, dict]:
    """The cache config tied to the raw files, and `cache.prepare` kwargs.

    With no data dir given at all (no argument, no $JMTL_DATA_DIR, no
    download), an existing cache is used if exactly one was built for this
    seed; stderr names the files it was built from.
    """
    source = builder_cls.SOURCE
    given = data_dir is not None or bool(os.environ.get(idx.ENV_DATA_DIR)) or download
    if not given:
        built = cache.find_built(cache_root, builder_cls, f"seed{seed}-src")
        if len(built) > 1:
            raise DataError(
                f"{builder_cls.name}: no data dir given and the cache holds "
                f"{len(built)} builds from different raw files: "
                + ", ".join(str(b) for b in built)
                + f". Fix: {idx.fix_text(source)} (it picks the matching build)."
            )
        if built:
            record = cache.read_record(built[0]) or {}
            fp = record.get("fingerprint") or ""
            paths = [d.get("path", "?") for d in record.get("sources", [])]
            print(
                f"jmtl.data: no data dir given; using the cached "
                f"{builder_cls.name} in {built[0]}, built from "
                f"{', '.join(paths) or 'unrecorded files'} (fingerprint {fp}).",
                file=sys.stderr,
                flush=True,
            )
            return multi_mnist.multi_config(seed, fp), dict(
                fingerprint=fp, can_rebuild=False, rebuild_fix=idx.fix_text(source)
            )
    folder = multi_mnist.locate_raw(source, data_dir, download)
    digests = fingerprint.check_family_files(source.name, {f: folder / f for f in idx.FILES}, verify=verify_checksums)
    fp = fingerprint.source_fingerprint(builder_cls.name, str(builder_cls.VERSION), digests)
    return multi_mnist.multi_config(seed, fp), dict(fingerprint=fp, sources=digests, raw_folder=folder)


def _load_multi(
    builder_cls: type[multi_mnist._MultiBuilder],
    *,
    data_dir,
    cache_dir,
    seed: int = 0,
    download: bool = False,
    validation_percent: int = 10,
    verify_checksums: bool = True,
) -> MTLDataset:
    """MultiMNIST / MultiFashion.

    Args:
      data_dir: raw IDX files; hashed on every load, since the cache is keyed
        by their fingerprint (see `jmtl.data.fingerprint`).
      cache_dir: tfds cache.
      seed: partner-pairing seed (part of the cache key).
      download: fetch absent raw files from the official URLs.
      validation_percent: last percent of train held out as 'validation'.
      verify_checksums: refuse raw files whose sha256 differs from the
        published one (default True); False for deliberately changed files.
    """
    if not isinstance(validation_percent, int) or not (1 <= validation_percent <= 50):
        raise DataError(f"validation_percent must be an int in 1..50, got {validation_percent!r}")
    multi_mnist.multi_config(seed)  # Validates the seed before any file work.
    cache_root = resolve_cache_dir(cache_dir)
    config, prepare_kwargs = _multi_config(builder_cls, data_dir, cache_root, seed, download, verify_checksums)
    builder = cache.prepare(builder_cls, config, cache_root, **prepare_kwargs)
    cut = 100 - validation_percent
    sources, sizes = _sources(builder, {"train": f"train[:{cut}%]", "validation": f"train[{cut}%:]", "test": "test"})
    num_classes = builder.info.features["left"].num_classes
    spec = DatasetSpec(
        name=builder.name,
        input_key="image",
        input_shape=(multi_mnist.SIZE, multi_mnist.SIZE, 1),
        labels={k: LabelSpec(k, "classification", num_classes, ()) for k in ("left", "right")},
        split_sizes=sizes,
        input_transform=normalise_pixels,
    )
    return MTLDataset(spec, sources, _pixel_batch, builder)


def _load_toy(
    *,
    data_dir,
    cache_dir,
    num_tasks: int = 2,
    seed: int = 0,
    n_train: int = 8000,
    n_validation: int = 1000,
    n_test: int = 1000,
) -> MTLDataset:
    """GradNorm toy regression (no files needed; `data_dir` is ignored)."""
    del data_dir
    config = gradnorm_toy.toy_config(num_tasks, seed, n_train, n_validation, n_test)
    # Generated from the config alone: no source fingerprint, but the cache
    # files are still recorded and checked for damage.
    builder = cache.prepare(gradnorm_toy.GradnormToy, config, resolve_cache_dir(cache_dir))
    sources, sizes = _sources(builder, {s: s for s in ("train", "validation", "test")})
    spec = DatasetSpec(
        name=builder.name,
        input_key="x",
        input_shape=(gradnorm_toy.INPUT_DIM,),
        labels={f"t{i}": LabelSpec(f"t{i}", "regression", None, (gradnorm_toy.OUTPUT_DIM,)) for i in range(num_tasks)},
        split_sizes=sizes,
    )
    return MTLDataset(spec, sources, _as_float32, builder)


_REGISTRY: Registry[Callable[..., MTLDataset]] = Registry(
    "dataset",
    {
        "gradnorm_toy": _load_toy,
        "multi_mnist": functools.partial(_load_multi, multi_mnist.MultiMnist),
        "multi_fashion": functools.partial(_load_multi, multi_mnist.MultiFashion),
    },
    valid_label="valid names",
    error=DataError,
)

DEFAULT_DATASET = "gradnorm_toy"  # Needs no files at all.


def names() -> list[str]:
    """Names accepted by `load` (built-in and `register`-ed)."""
    return _REGISTRY.names()


def _takes(fn: Callable[..., Any]) -> tuple[list[str], bool]:
    """(named keyword parameters of `fn`, whether it takes **kwargs)."""
    params = inspect.signature(fn).parameters.values()
    named = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return named, any(p.kind == p.VAR_KEYWORD for p in params)


def load(
    name: str,
    *,
    data_dir: os.PathLike[str] | str | None = None,
    cache_dir: os.PathLike[str] | str | None = None,
    **builder_kwargs,
) -> MTLDataset:
    """Loads (building and caching on first use) a dataset by name.

    Args:
      name: one of `names()`.
      data_dir: folder with the raw files (argument > $JMTL_DATA_DIR); holds
        `mnist/` and `fashion_mnist/` subfolders, or the four files directly.
        The files are hashed on every load: the cache is keyed by their
        fingerprint, so other files never reuse it.
      cache_dir: tfds cache (argument > $JMTL_CACHE_DIR > ~/.cache/jmtl/tfds).
      **builder_kwargs: per dataset --
        multi_mnist / multi_fashion: seed=0, download=False,
          validation_percent=10, verify_checksums=True;
        gradnorm_toy: num_tasks=2, seed=0, n_train=8000, n_validation=1000,
          n_test=1000;
        a `register`-ed dataset: its loader's keywords.

    Raises:
      DataError: unknown name or keyword, missing or corrupt raw data.
    """
    load_fn = _REGISTRY.lookup(name)
    named, var_kw = _takes(load_fn)
    accepted = [p for p in named if p not in ("data_dir", "cache_dir")]
    unknown = sorted(set(builder_kwargs) - set(accepted))
    if unknown and not var_kw:
        raise DataError(f"{name}: unknown keyword(s) {', '.join(unknown)}; accepted: {', '.join(accepted) or 'none'}")
    for key, value in (("data_dir", data_dir), ("cache_dir", cache_dir)):
        if key in named or var_kw:
            builder_kwargs[key] = value
        elif value is not None and key == "data_dir":
            # A cache dir is a general setting, fine to ignore; raw files given to
            # a dataset that reads none are probably meant for another one.
            raise DataError(
                f"{name}: this dataset reads no raw files, but "
                f"data_dir={value!r} was given. Fix: leave "
                "--config.dataset.data_dir empty"
            )
    return load_fn(**builder_kwargs)


# ----------------------------------------------------------------------------
# User datasets.


def register(name: str, loader: Callable[..., Any] | MTLDataset, *, overwrite: bool = False) -> None:
    """Makes `load(name, ...)` (and so a config's `dataset.name`) find a dataset.

    Example (e.g. inside an experiment config's `get_config`, so the CLI sees
    it too)::

      ds = jmtl.data.from_arrays('my_data', splits, input_key='x',
                                 labels={'price': 'regression'})
      jmtl.data.register('my_data', ds)

    Args:
      name: the registry name.
      loader: a dataset (anything with `spec`, `steps_per_epoch`,
        `train_iterator` and `arrays`, e.g. from `from_arrays`), or a
        function returning one. The function gets `data_dir=` / `cache_dir=`
        only if it takes them, plus the config's `dataset.kwargs`.
      overwrite: replace an existing registration (default False: an error).

    Raises:
      DataError: `name` is taken or empty, or `loader` is neither.
    """
    _REGISTRY.check_new(name, overwrite=overwrite)  # before the loader is read
    if all(hasattr(loader, a) for a in ("spec", "train_iterator", "arrays", "steps_per_epoch")):
        dataset = loader

        def loader():  # pylint: disable=function-redefined
            return dataset
    elif not callable(loader):
        raise DataError(
            f"register({name!r}, ...): expected a dataset (with spec, "
            "train_iterator, arrays, steps_per_epoch) or a function "
            f"returning one, got {type(loader).__name__}"
        )
    _REGISTRY.register(name, loader, overwrite=overwrite)


def unregister(name: str) -> None:
    """Removes a `register`-ed name (tests; replacing with overwrite=True)."""
    if name not in _REGISTRY:
        raise DataError(f"dataset {name!r} is not registered; registered: {', '.join(names())}")
    del _REGISTRY[name]


class _ArraySource:
    """In-memory stand-in for a tfds data source (random access by index)."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self.arrays = dict(arrays)
        self._n = len(next(iter(self.arrays.values())))

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self.arrays.items()}

    def __getitems__(self, ids) -> list[dict[str, np.ndarray]]:
        return [self[i] for i in ids]


class _ArrayDataset(MTLDataset):
    """`MTLDataset` over in-memory arrays (see `from_arrays`)."""

    def _raw_split(self, split: str) -> dict[str, np.ndarray]:
        self._check_split(split)
        return self._sources[split].arrays


REQUIRED_SPLITS = ("train", "validation", "test")


# Label kinds `from_arrays` accepts (jmtl.tasks kinds of one label array each).
ARRAY_LABEL_KINDS = (
    "classification",
    "regression",
    "binary",
    "multilabel",
    "custom",
)  # custom: the user's loss; the array kept as is


def _label_spec(key: str, value: Any, arrays: Mapping[str, Mapping], name: str) -> LabelSpec:
    """Turns a `from_arrays` label entry into a LabelSpec, checking the data."""
    shape = tuple(np.shape(arrays["train"][key])[1:])
    if isinstance(value, LabelSpec):
        spec = value
    else:
        if isinstance(value, str):
            value = {"kind": value}
        if not isinstance(value, Mapping) or "kind" not in value:
            raise DataError(
                f"{name}: label {key!r} must be a LabelSpec, a kind "
                "('classification' / 'regression') or a dict with "
                f'"kind" (and "num_classes"), got {value!r}'
            )
        kind, num_classes = value["kind"], value.get("num_classes")
        if kind == "classification" and num_classes is None:
            num_classes = 1 + max(int(np.max(arrays[s][key])) for s in arrays)
        spec = LabelSpec(key, kind, num_classes, shape)
    if spec.name != key:
        raise DataError(f"{name}: LabelSpec name {spec.name!r} is filed under label {key!r}. Fix: use the same name")
    if spec.kind not in ARRAY_LABEL_KINDS:
        raise DataError(f"{name}: label {key!r} has kind {spec.kind!r}; valid: " + ", ".join(ARRAY_LABEL_KINDS))
    if tuple(spec.shape) != shape:
        raise DataError(
            f"{name}: label {key!r} is declared with per-example shape {tuple(spec.shape)} but the arrays have {shape}"
        )
    for split, cols in arrays.items():
        y = cols[key]
        if spec.kind == "classification":
            if not np.issubdtype(y.dtype, np.integer):
                raise DataError(
                    f"{name}: classification label {key!r} in split "
                    f"{split!r} has dtype {y.dtype}; Fix: pass integer "
                    "class ids"
                )
            if not isinstance(spec.num_classes, int) or spec.num_classes < 2:
                raise DataError(f"{name}: label {key!r} needs num_classes >= 2, got {spec.num_classes!r}")
            rows = y.reshape(len(y), -1)
            bad_rows = np.flatnonzero(((rows < 0) | (rows >= spec.num_classes)).any(axis=1))
            if bad_rows.size:
                i = int(bad_rows[0])
                value = int(rows[i][(rows[i] < 0) | (rows[i] >= spec.num_classes)][0])
                raise DataError(
                    f"{name}: label {key!r} in split {split!r} has class id {value} "
                    f"at example {i}, outside 0..{spec.num_classes - 1}. Fix: pass "
                    "num_classes above every id, or map the ids to "
                    "0..num_classes-1"
                )
        elif spec.kind in ("binary", "multilabel"):
            if not np.issubdtype(y.dtype, np.integer) and not np.issubdtype(y.dtype, np.bool_):
                raise DataError(
                    f"{name}: {spec.kind} label {key!r} in split {split!r} has dtype {y.dtype}; Fix: pass 0/1 integers"
                )
            if not np.all((y == 0) | (y == 1)):
                raise DataError(
                    f"{name}: {spec.kind} label {key!r} in split "
                    f"{split!r} has values other than 0 and 1. Fix: map "
                    "the positive class to 1, the negative to 0"
                )
        elif spec.kind == "custom":
            pass  # the task's own loss_fn defines what its labels mean
        elif not np.all(np.isfinite(np.asarray(y, np.float64))):
            i = int(np.flatnonzero(~np.isfinite(np.asarray(y, np.float64).reshape(len(y), -1)).any(axis=1))[0])
            raise DataError(
                f"{name}: regression label {key!r} in split {split!r} "
                f"is not finite at example {i}. Fix: drop or impute it"
            )
    return spec


def from_arrays(
    name: str,
    splits: Mapping[str, Mapping[str, Any]],
    *,
    input_key: str,
    labels: Mapping[str, LabelSpec | Mapping | str] | None = None,
    input_transform: Callable[[Any], Any] | None = None,
) -> MTLDataset:
    """A multi-task dataset from in-memory numpy arrays, usable like `load`'s.

    The result has the same interface as the built-in datasets (`spec`,
    `steps_per_epoch`, `train_iterator` with exact `get_state`/`set_state`
    resume, `arrays(split)`); `register` it to name it in a config.

    Args:
      name: the dataset's name (`spec.name`, used in messages).
      splits: {'train': {...}, 'validation': {...}, 'test': {...}}, each
        mapping the input key and every label key to an array whose first
        axis is the example (the same length within a split).
      input_key: key of the model input.
      labels: label key -> a `LabelSpec`, a kind ('classification' /
        'regression'), or {'kind': ..., 'num_classes': ...}; task order is
        this order. Default None: every other key, integer arrays as
        classification, floating ones as regression. A classification
        label's num_classes defaults to 1 + its largest id over all splits.
      input_transform: applied on device to the input batch (e.g. uint8 ->
        normalised float32), as `DatasetSpec.input_transform`; None = as is.

    Returns:
      An `MTLDataset`. Arrays are copied (later changes to yours do not
      leak in); floating inputs and regression labels become float32,
      classification labels int32.

    Raises:
      DataError: a missing split, a split missing a key or with extra ones,
        arrays of different lengths, shapes or dtypes differing between
        splits, class ids out of range, non-finite values.
    """
    if not isinstance(splits, Mapping):
        raise DataError(f"{name}: splits must be a dict split -> dict of arrays, got {type(splits).__name__}")
    missing = [s for s in REQUIRED_SPLITS if s not in splits]
    if missing:
        raise DataError(
            f"{name}: split(s) {', '.join(missing)} missing (got "
            f"{', '.join(map(str, splits)) or 'none'}). Fix: pass splits= with "
            "'train', 'validation' and 'test'; with no validation set, hold out "
            "part of train (e.g. its last 10%)"
        )
    arrays = {s: {k: np.asarray(v) for k, v in cols.items()} for s, cols in splits.items()}
    label_keys = (
        list(labels)
        if labels is not None
        else [k for k in arrays["train"] if k != input_key and not k.endswith(MASK_SUFFIX)]
    )
    # Missing labels: an optional '<label>_mask' entry (1 = labelled) per label.
    mask_keys = [k + MASK_SUFFIX for k in label_keys if k + MASK_SUFFIX in arrays["train"]]
    want = {input_key, *label_keys, *mask_keys}
    for split, cols in arrays.items():
        if set(cols) != want:
            lacking, extra = sorted(want - set(cols)), sorted(set(cols) - want)
            raise DataError(
                f"{name}: split {split!r} "
                + "; ".join(
                    ([f"lacks {', '.join(map(repr, lacking))}"] if lacking else [])
                    + ([f"has unlisted key(s) {', '.join(map(repr, extra))}"] if extra else [])
                )
                + f". Fix: give every split the input {input_key!r} and the "
                f"labels {', '.join(map(repr, label_keys))} (list extra keys in "
                "labels=, or drop them)"
            )
        lengths = {k: (len(v) if v.ndim else None) for k, v in cols.items()}
        if len(set(lengths.values())) != 1 or None in lengths.values():
            raise DataError(
                f"{name}: split {split!r} arrays have different lengths ("
                + ", ".join(f"{k}: {n}" for k, n in lengths.items())
                + "). Fix: one row per example in every array of a split"
            )
        if not next(iter(lengths.values())):
            raise DataError(f"{name}: split {split!r} is empty. Fix: give it at least one example")
        for k, v in cols.items():
            ref = arrays["train"][k]
            if v.shape[1:] != ref.shape[1:] or v.dtype.kind != ref.dtype.kind:
                raise DataError(
                    f"{name}: {k!r} is {v.dtype}{list(v.shape[1:])} per example in "
                    f"split {split!r} but {ref.dtype}{list(ref.shape[1:])} in train. "
                    "Fix: the same per-example shape and dtype in every split"
                )
    for split, cols in arrays.items():
        for mk in mask_keys:
            m, key = cols[mk], mk[: -len(MASK_SUFFIX)]
            if m.ndim != 1:
                raise DataError(
                    f"{name}: label mask {mk!r} in split {split!r} has "
                    f"shape {list(m.shape)}. Fix: a [N] array of 0/1 "
                    "(1 = labelled)"
                )
            # The same check as batches from iterables and evaluation splits.
            tasks_lib.check_mask_values(m, mk, f"{name} split {split!r}", DataError)
            # Placeholders of unlabelled examples (NaN, -1, ...) become 0: the
            # losses and metrics skip them, and the label checks below pass.
            keep = m.reshape((-1,) + (1,) * (cols[key].ndim - 1)) > 0
            cols[key] = np.where(keep, cols[key], np.zeros((), cols[key].dtype))
    # A label never present in training would train a head on nothing and still be scored and counted
    # in model selection: refused (the array case knows it up front; iterables: jmtl.data.iterables).
    empty = [mk[: -len(MASK_SUFFIX)] for mk in mask_keys if not np.any(arrays["train"][mk])]
    if empty:
        raise DataError(tasks_lib.unlabelled_task_message(empty, f"{name} train split"))
    if labels is None:
        labels = {
            k: ("classification" if np.issubdtype(arrays["train"][k].dtype, np.integer) else "regression")
            for k in label_keys
        }
    specs = {k: _label_spec(k, v, arrays, name) for k, v in labels.items()}
    x = arrays["train"][input_key]
    if np.issubdtype(x.dtype, np.floating):
        for split, cols in arrays.items():
            bad = ~np.isfinite(cols[input_key].reshape(len(cols[input_key]), -1))
            if bad.any():
                raise DataError(
                    f"{name}: input {input_key!r} in split {split!r} is "
                    f"not finite at example {int(np.flatnonzero(bad.any(1))[0])}. "
                    "Fix: drop or impute it"
                )

    def convert(key: str, v: np.ndarray) -> np.ndarray:
        if key == input_key:
            out = v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
        elif key in mask_keys:
            out = v.astype(np.float32)
        elif specs[key].kind in ("classification", "binary", "multilabel"):
            out = v.astype(np.int32)
        elif specs[key].kind == "custom":
            out = v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
        else:
            out = v.astype(np.float32)
        out = np.array(out, copy=True, order="C")
        out.flags.writeable = False
        return out

    sources = {
        s: _ArraySource({k: convert(k, cols[k]) for k in [input_key, *specs, *mask_keys]}) for s, cols in arrays.items()
    }
    spec = DatasetSpec(
        name=name,
        input_key=input_key,
        input_shape=tuple(x.shape[1:]),
        labels=specs,
        split_sizes={s: len(src) for s, src in sources.items()},
        input_transform=input_transform,
    )
    return _ArrayDataset(spec, sources, dict)
