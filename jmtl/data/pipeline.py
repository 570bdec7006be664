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
import threading
from typing import Any, Callable, Mapping

import grain
import numpy as np
import tensorflow_datasets as tfds

from jmtl.data import gradnorm_toy
from jmtl.data import idx
from jmtl.data import multi_mnist

DataError = idx.DataError

ENV_CACHE_DIR = 'JMTL_CACHE_DIR'
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'jmtl', 'tfds')

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
  return (x.astype(jnp.float32) * np.float32(1.0 / (255.0 * MNIST_STD))
          + np.float32(-MNIST_MEAN / MNIST_STD))

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
  return {'image': np.asarray(raw['image'], np.uint8),
          'left': raw['left'].astype(np.int32),
          'right': raw['right'].astype(np.int32)}


def _as_float32(raw: Mapping[str, np.ndarray]) -> Batch:
  return {k: np.asarray(v, np.float32) for k, v in raw.items()}


def _read_all(source: Any, chunk: int = 4096,
              where: str = 'split') -> dict[str, np.ndarray]:
  """Reads a whole tfds data source into stacked numpy arrays."""
  n = len(source)
  if n == 0:
    raise DataError(f'{where} is empty (0 examples). Fix: delete its tfds '
                    'cache folder (JMTL_CACHE_DIR, default ~/.cache/jmtl/tfds) '
                    'so it is rebuilt, and check the raw files')
  first = source[0]
  out = {k: np.empty((n,) + np.shape(v), np.asarray(v).dtype)
         for k, v in first.items()}
  for start in range(0, n, chunk):
    records = source.__getitems__(range(start, min(n, start + chunk)))
    for k, arr in out.items():
      arr[start:start + len(records)] = [r[k] for r in records]
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

  def __init__(self, spec: DatasetSpec, sources: Mapping[str, Any],
               transform: Callable[[Mapping[str, np.ndarray]], Batch],
               builder: tfds.core.DatasetBuilder | None = None):
    """Wraps per-split tfds data sources.

    Args:
      spec: the dataset's spec.
      sources: split name -> tfds data source (random access, `__getitems__`).
      transform: raw gathered arrays -> batch (normalisation, dtypes).
      builder: the tfds builder behind `sources`, kept for `info`.
    """
    self.spec = spec
    self.builder = builder
    self._sources = dict(sources)
    self._transform = transform
    self._raw: dict[str, dict[str, np.ndarray]] = {}
    self._arrays: dict[str, Batch] = {}
    self._lock = threading.Lock()

  def __repr__(self) -> str:
    return f'MTLDataset({self.spec.name}, splits={self.spec.split_sizes})'

  def source(self, split: str) -> Any:
    """The tfds data source of `split` (per-record random access)."""
    self._check_split(split)
    return self._sources[split]

  def _check_split(self, split: str) -> None:
    if split not in self._sources:
      raise DataError(f'{self.spec.name}: unknown split {split!r}; '
                      f'valid splits: {sorted(self._sources)}')

  def _raw_split(self, split: str) -> dict[str, np.ndarray]:
    self._check_split(split)
    with self._lock:
      if split not in self._raw:
        self._raw[split] = _read_all(
            self._sources[split], where=f'{self.spec.name}/{split} split')
      return self._raw[split]

  def arrays(self, split: str) -> Batch:
    """The whole split in memory, in batch format (cached after first call)."""
    raw = self._raw_split(split)
    with self._lock:
      if split not in self._arrays:
        self._arrays[split] = self._transform(raw)
      return self._arrays[split]

  def steps_per_epoch(self, batch_size: int, split: str = 'train', *,
                      drop_remainder: bool = True) -> int:
    """Global batches per epoch of `split` for the global `batch_size`."""
    self._check_split(split)
    if batch_size <= 0:
      raise ValueError(f'batch_size must be positive, got {batch_size}')
    n = self.spec.split_sizes[split]
    return n // batch_size if drop_remainder else -(-n // batch_size)

  def train_iterator(self, batch_size: int, seed: int, *,
                     split: str = 'train', num_epochs: int | None = None,
                     process_index: int = 0, process_count: int = 1,
                     drop_remainder: bool = True,
                     prefetch: int = 2) -> grain.DatasetIterator:
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
          f'batch_size ({batch_size}) must be a positive multiple of '
          f'process_count ({process_count}): it is the global batch.')
    if not 0 <= process_index < process_count:
      raise ValueError(f'process_index {process_index} not in '
                       f'[0, {process_count})')
    if not 0 <= seed < 2**63:
      raise ValueError(f'seed must be a non-negative int, got {seed}')
    if num_epochs is not None and num_epochs <= 0:
      raise ValueError(f'num_epochs must be positive or None, got {num_epochs}')
    if prefetch < 0:
      raise ValueError(f'prefetch must be >= 0, got {prefetch}')
    steps = self.steps_per_epoch(batch_size, split,
                                 drop_remainder=drop_remainder)
    if steps == 0:
      raise ValueError(
          f'{self.spec.name}/{split} has {self.spec.split_sizes[split]} '
          f'examples, fewer than one batch of {batch_size}. Fix: lower '
          f'--config.batch_size to at most {self.spec.split_sizes[split]}.')
    raw = self._raw_split(split)
    n = self.spec.split_sizes[split]
    permutation = _EpochPermutations(n, seed)
    transform = self._transform
    local = batch_size // process_count

    def make_batch(step: int, _) -> Batch:
      epoch, k = divmod(step, steps)
      ids = permutation(epoch)[k * batch_size:(k + 1) * batch_size]
      if len(ids) == batch_size:
        ids = ids[process_index * local:(process_index + 1) * local]
      else:  # Last partial batch with drop_remainder=False.
        ids = np.array_split(ids, process_count)[process_index]
      return transform({key: arr[ids] for key, arr in raw.items()})

    ds = grain.MapDataset.range(steps).repeat(num_epochs)
    ds = ds.map_with_index(make_batch)
    # One thread is enough (a batch is a sub-millisecond gather) and leaves
    # the other core to the train step.
    options = grain.ReadOptions(num_threads=1 if prefetch else 0,
                                prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(options))


class WithMetaBatches:
  """Adds a second ("meta") batch to every training batch, as `prefix + key`.

  Bilevel weighting schemes (Auto-Lambda, MOML, FORUM) evaluate validation
  losses after a look-ahead step; this gives the train step that batch from
  its own resumable iterator (usually over the validation split).
  State: `{'train': ..., 'meta': ...}`.
  """

  def __init__(self, train: Any, meta: Any, prefix: str = 'meta/'):
    self.train, self.meta, self.prefix = train, meta, prefix

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    batch = dict(next(self.train))
    batch.update({self.prefix + k: v for k, v in next(self.meta).items()})
    return batch

  def get_state(self) -> dict:
    return {'train': self.train.get_state(), 'meta': self.meta.get_state()}

  def set_state(self, state: dict) -> None:
    if not isinstance(state, dict) or set(state) != {'train', 'meta'}:
      raise ValueError('data iterator state has no meta-batch iterator: the '
                       'checkpoint was written by a run without a bilevel '
                       'weighting scheme')
    self.train.set_state(state['train'])
    self.meta.set_state(state['meta'])


# ----------------------------------------------------------------------------
# Registry.


def _prepare(builder_cls: type[tfds.core.GeneratorBasedBuilder],
             config: tfds.core.BuilderConfig, cache_dir: str,
             **init_kwargs) -> tfds.core.GeneratorBasedBuilder:
  # tfds refuses a new config object named like a predefined one, so reuse
  # the predefined instance when there is one.
  predefined = {c.name: c for c in builder_cls.BUILDER_CONFIGS}
  config = predefined.get(config.name, config)
  builder = builder_cls(data_dir=cache_dir, config=config,
                        file_format='array_record', **init_kwargs)
  # A no-op when the cache already holds this name/config/version.
  builder.download_and_prepare()
  return builder


def _sources(builder, split_map: Mapping[str, str]) -> tuple[dict, dict]:
  sources = {s: builder.as_data_source(split=t) for s, t in split_map.items()}
  sizes = {s: len(src) for s, src in sources.items()}
  return sources, sizes


def _load_multi(builder_cls: type[multi_mnist._MultiBuilder], *,
                data_dir, cache_dir, seed: int = 0, download: bool = False,
                validation_percent: int = 10) -> MTLDataset:
  """MultiMNIST / MultiFashion.

  Args:
    data_dir: raw IDX files (only needed for the first build).
    cache_dir: tfds cache.
    seed: partner-pairing seed (part of the cache key).
    download: fetch absent raw files from the official URLs.
    validation_percent: last percent of train held out as 'validation'.
  """
  if not isinstance(validation_percent, int) or not (
      1 <= validation_percent <= 50):
    raise DataError(f'validation_percent must be an int in 1..50, got '
                    f'{validation_percent!r}')
  builder = _prepare(builder_cls, multi_mnist.multi_config(seed),
                     resolve_cache_dir(cache_dir), raw_data_dir=data_dir,
                     download=download)
  cut = 100 - validation_percent
  sources, sizes = _sources(builder, {'train': f'train[:{cut}%]',
                                      'validation': f'train[{cut}%:]',
                                      'test': 'test'})
  num_classes = builder.info.features['left'].num_classes
  spec = DatasetSpec(
      name=builder.name, input_key='image',
      input_shape=(multi_mnist.SIZE, multi_mnist.SIZE, 1),
      labels={k: LabelSpec(k, 'classification', num_classes, ())
              for k in ('left', 'right')},
      split_sizes=sizes, input_transform=normalise_pixels)
  return MTLDataset(spec, sources, _pixel_batch, builder)


def _load_toy(*, data_dir, cache_dir, num_tasks: int = 2, seed: int = 0,
              n_train: int = 8000, n_validation: int = 1000,
              n_test: int = 1000) -> MTLDataset:
  """GradNorm toy regression (no files needed; `data_dir` is ignored)."""
  del data_dir
  config = gradnorm_toy.toy_config(num_tasks, seed, n_train, n_validation,
                                   n_test)
  builder = _prepare(gradnorm_toy.GradnormToy, config,
                     resolve_cache_dir(cache_dir))
  sources, sizes = _sources(builder, {s: s for s in
                                      ('train', 'validation', 'test')})
  spec = DatasetSpec(
      name=builder.name, input_key='x', input_shape=(gradnorm_toy.INPUT_DIM,),
      labels={f't{i}': LabelSpec(f't{i}', 'regression', None,
                                 (gradnorm_toy.OUTPUT_DIM,))
              for i in range(num_tasks)},
      split_sizes=sizes)
  return MTLDataset(spec, sources, _as_float32, builder)


_REGISTRY: dict[str, Callable[..., MTLDataset]] = {
    'gradnorm_toy': _load_toy,
    'multi_mnist': functools.partial(_load_multi, multi_mnist.MultiMnist),
    'multi_fashion': functools.partial(_load_multi, multi_mnist.MultiFashion),
}

DEFAULT_DATASET = 'gradnorm_toy'  # Needs no files at all.


def names() -> list[str]:
  """Names accepted by `load`."""
  return sorted(_REGISTRY)


def load(name: str, *, data_dir: os.PathLike[str] | str | None = None,
         cache_dir: os.PathLike[str] | str | None = None,
         **builder_kwargs) -> MTLDataset:
  """Loads (building and caching on first use) a dataset by name.

  Args:
    name: one of `names()`.
    data_dir: folder with the raw files (argument > $JMTL_DATA_DIR); holds
      `mnist/` and `fashion_mnist/` subfolders, or the four files directly.
      Only read when the tfds cache does not have the dataset yet.
    cache_dir: tfds cache (argument > $JMTL_CACHE_DIR > ~/.cache/jmtl/tfds).
    **builder_kwargs: per dataset --
      multi_mnist / multi_fashion: seed=0, download=False,
        validation_percent=10;
      gradnorm_toy: num_tasks=2, seed=0, n_train=8000, n_validation=1000,
        n_test=1000.

  Raises:
    DataError: unknown name or keyword, missing or corrupt raw data.
  """
  if name not in _REGISTRY:
    raise DataError(f'unknown dataset {name!r}; valid names: '
                    f'{", ".join(names())}')
  load_fn = _REGISTRY[name]
  accepted = [p for p in inspect.signature(load_fn).parameters
              if p not in ('data_dir', 'cache_dir')]
  unknown = sorted(set(builder_kwargs) - set(accepted))
  if unknown:
    raise DataError(f'{name}: unknown keyword(s) {", ".join(unknown)}; '
                    f'accepted: {", ".join(accepted)}')
  return load_fn(data_dir=data_dir, cache_dir=cache_dir, **builder_kwargs)
