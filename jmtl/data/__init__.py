"""jmtl.data: multi-task datasets and their input pipeline.

Quick start::

  from jmtl import data
  ds = data.load('multi_mnist', data_dir='/path/with/mnist')  # or gradnorm_toy
  it = ds.train_iterator(batch_size=256, seed=0)
  batch = next(it)          # {'image': [256,28,28,1] uint8, 'left', 'right'}
  x = ds.spec.input_transform(batch['image'])  # normalised float32 (on device)
  val = ds.arrays('validation')

Your own data (in-memory numpy arrays), named in configs::

  ds = data.from_arrays('mine', {'train': {...}, 'validation': {...},
                                 'test': {...}}, input_key='x',
                        labels={'a': 'classification', 'b': 'regression'})
  data.register('mine', ds)   # config: dataset.name = 'mine'

Vision benchmarks (issue 24), in the formats users have on disk: 'nyuv2' and
'cityscapes' (MTAN's preprocessed .npy files, jmtl.data.vision), 'celeba'
(jmtl.data.celeba), 'office31' / 'office_home' (LibMTL's split lists, per-task
inputs: jmtl.data.office). Tiny fakes of each: jmtl.data.fake_vision.write.

Datasets built from raw files are cached once in a tfds array_record cache
(argument > $JMTL_CACHE_DIR > ~/.cache/jmtl/tfds), keyed by a fingerprint of
the raw files (jmtl.data.fingerprint) and checked for damage before each use
(jmtl.data.cache); they are read back without TensorFlow.
"""

from jmtl.data import celeba as _celeba
from jmtl.data import office as _office
from jmtl.data import pipeline as _pipeline
from jmtl.data import vision as _vision
from jmtl.data.idx import DataError
from jmtl.data.iterables import DataExhaustedError, ReplayIterator
from jmtl.data.office import PerTaskDataset
from jmtl.data.per_task import PerTaskBatches
from jmtl.data.pipeline import (
    DEFAULT_DATASET,
    DatasetSpec,
    LabelSpec,
    MTLDataset,
    WithMetaBatches,
    from_arrays,
    load,
    names,
    register,
    unregister,
)

# The vision benchmarks (issue 24): built-in names, like multi_mnist.
_pipeline._REGISTRY.update(
    {
        "nyuv2": _vision.load_nyuv2,
        "cityscapes": _vision.load_cityscapes,
        "celeba": _celeba.load_celeba,
        "office31": _office.load_office31,
        "office_home": _office.load_office_home,
    }
)

__all__ = [
    "DEFAULT_DATASET",
    "DataError",
    "DatasetSpec",
    "LabelSpec",
    "MTLDataset",
    "from_arrays",
    "load",
    "names",
    "register",
    "unregister",
    "WithMetaBatches",
    "PerTaskBatches",
    "ReplayIterator",
    "DataExhaustedError",
    "PerTaskDataset",
]
