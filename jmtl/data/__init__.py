"""jmtl.data: multi-task datasets and their input pipeline.

Quick start::

  from jmtl import data
  ds = data.load('multi_mnist', data_dir='/path/with/mnist')  # or gradnorm_toy
  it = ds.train_iterator(batch_size=256, seed=0)
  batch = next(it)          # {'image': [256,28,28,1] uint8, 'left', 'right'}
  x = ds.spec.input_transform(batch['image'])  # normalised float32 (on device)
  val = ds.arrays('validation')

Datasets are built once into a tfds array_record cache (argument >
$JMTL_CACHE_DIR > ~/.cache/jmtl/tfds) and read back without TensorFlow.
"""

from jmtl.data.idx import DataError
from jmtl.data.pipeline import DEFAULT_DATASET
from jmtl.data.pipeline import DatasetSpec
from jmtl.data.pipeline import LabelSpec
from jmtl.data.pipeline import load
from jmtl.data.pipeline import MTLDataset
from jmtl.data.pipeline import names
from jmtl.data.pipeline import WithMetaBatches

__all__ = [
    'DEFAULT_DATASET',
    'DataError',
    'DatasetSpec',
    'LabelSpec',
    'MTLDataset',
    'load',
    'names',
    'WithMetaBatches',
]
