"""MultiMNIST / MultiFashion as built by Sener & Koltun (NeurIPS 2018).

Each image i is paired with one partner j drawn uniformly from the other
images of the same split. On a 36x36 zero canvas, image i goes at [0:28, 0:28]
(top-left) and j at [6:34, 6:34] (bottom-right); where they overlap the
brighter pixel wins (elementwise max). The canvas is then shrunk back to 28x28
with nearest-neighbour sampling using PIL's NEAREST convention,
`src = floor((dst + 0.5) * 36 / 28)`. Tasks: `left` = label_i (the top-left
digit), `right` = label_j. Train pairs come from the 60,000 train images, test
pairs from the 10,000 t10k images, so no test digit ever appears in training.

The tfds builders below cache the result as array_record (no TensorFlow
needed to write or read it); `jmtl.data.load` reads it back.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from jmtl.data import idx

CANVAS = 36
OFFSET = 6  # the partner's top-left corner on the canvas.
SIZE = idx.IMAGE_SIZE

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# Split ids keep the train and test partner draws independent streams of the
# same seed, so changing one split never changes the other.
_SPLIT_IDS = {"train": 0, "test": 1}


def draw_partners(n: int, rng: np.random.Generator) -> np.ndarray:
    """Returns partner indices j[i], uniform over {0..n-1} minus {i}.

    Self-pairs are excluded because a digit overlaid on a shifted copy of
    itself is not a two-digit example.
    """
    if n < 2:
        raise ValueError(f"need at least 2 images to pair, got {n}")
    return (np.arange(n) + rng.integers(1, n, size=n)) % n


def overlay(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Places `first` top-left and `second` bottom-right on a 36x36 canvas.

    Args:
      first: uint8 [N, 28, 28].
      second: uint8 [N, 28, 28].

    Returns:
      uint8 [N, 36, 36]; overlapping pixels take the elementwise max.
    """
    canvas = np.zeros((first.shape[0], CANVAS, CANVAS), first.dtype)
    canvas[:, :SIZE, :SIZE] = first
    window = canvas[:, OFFSET : OFFSET + SIZE, OFFSET : OFFSET + SIZE]
    np.maximum(window, second, out=window)
    return canvas


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index of each destination pixel under PIL's NEAREST resize."""
    # Integer form of floor((d + 0.5) * src / dst), exact with no float error.
    return ((2 * np.arange(dst) + 1) * src) // (2 * dst)


def resize_nearest(images: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Nearest-neighbour resize of [N, H, W] square images to [N, size, size]."""
    rows = nearest_indices(images.shape[1], size)
    cols = nearest_indices(images.shape[2], size)
    return images[:, rows[:, None], cols[None, :]]


def make_multi(
    images: np.ndarray, labels: np.ndarray, seed: int, split: str = "train", chunk: int = 10_000
) -> dict[str, np.ndarray]:
    """Builds the Multi-* version of one split.

    Args:
      images: uint8 [N, 28, 28] single-digit images.
      labels: [N] class ids.
      seed: pairing seed; the same (seed, split) always gives the same pairs.
      split: 'train' or 'test', selects an independent random stream.
      chunk: rows composed at a time, to bound the 36x36 canvas memory.

    Returns:
      {'image': uint8 [N, 28, 28, 1], 'left': int64 [N], 'right': int64 [N],
       'partner': int64 [N]} where partner[i] is the index j paired with i.
    """
    rng = np.random.default_rng([seed, _SPLIT_IDS[split]])
    partner = draw_partners(len(images), rng)
    out = np.empty((len(images), SIZE, SIZE, 1), np.uint8)
    for start in range(0, len(images), chunk):
        sl = slice(start, start + chunk)
        out[sl, ..., 0] = resize_nearest(overlay(images[sl], images[partner[sl]]))
    labels = labels.astype(np.int64)
    return {"image": out, "left": labels, "right": labels[partner], "partner": partner.astype(np.int64)}


@dataclasses.dataclass(eq=False)
class MultiConfig(tfds.core.BuilderConfig):
    """Builder config; the name encodes the pairing seed and the source
    fingerprint, so caches of other seeds or other raw files never mix."""

    seed: int = 0
    source_fingerprint: str = ""


def multi_config(seed: int = 0, source_fingerprint: str = "") -> MultiConfig:
    """Validates the seed and returns the matching config.

    Args:
      seed: partner-pairing seed (non-negative int).
      source_fingerprint: `fingerprint.source_fingerprint` of the raw files
        ('' for the bare seed config); appended to the config name as
        `-src<fingerprint>`, so the cache folder is tied to the exact files.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise idx.DataError(f"seed must be a non-negative int, got {seed!r}")
    name = f"seed{int(seed)}"
    if source_fingerprint:
        name += f"-src{source_fingerprint}"
    return MultiConfig(
        name=name,
        seed=int(seed),
        source_fingerprint=source_fingerprint,
        description=f"partners drawn with seed {int(seed)}",
    )


def locate_raw(
    source: idx.RawSource, raw_data_dir: os.PathLike[str] | str | None, download: bool = False
) -> pathlib.Path:
    """The folder holding `source`'s four IDX files (downloading if asked).

    Args:
      source: idx.MNIST or idx.FASHION_MNIST.
      raw_data_dir: the files' folder or its parent; None = $JMTL_DATA_DIR
        (or, with `download`, ~/.cache/jmtl/raw).
      download: fetch absent files from the official URLs.

    Raises:
      DataError: no data dir, or files missing (see `idx.find_files`).
    """
    if download:
        root = raw_data_dir or os.environ.get(idx.ENV_DATA_DIR) or (os.path.join("~", ".cache", "jmtl", "raw"))
        root = os.path.expanduser(root)
        try:
            return idx.find_files(root, source)
        except idx.DataError:
            return idx.download(os.path.join(root, source.name), source)
    root = idx.resolve_data_dir(raw_data_dir, source)
    return idx.find_files(root, source)


class _MultiBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder for the Multi-* datasets; subclasses set SOURCE."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Sener & Koltun 2018 construction."}
    SOURCE: idx.RawSource = idx.MNIST
    CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
    BUILDER_CONFIGS = [multi_config(0)]

    def __init__(self, *, raw_folder: os.PathLike[str] | str | None = None, **kwargs):
        """Creates the builder; nothing is read until it has to be built.

        Args:
          raw_folder: folder holding the four IDX files (see `locate_raw`);
            only read when the dataset has to be built. The caller checks these
            files against the config's source fingerprint.
          **kwargs: forwarded to `tfds.core.GeneratorBasedBuilder`
            (data_dir = the tfds cache, config, ...).
        """
        self._raw_folder_path = raw_folder
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        label = tfds.features.ClassLabel(names=list(self.CLASS_NAMES))
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                f"Multi-{self.SOURCE.title} (Sener & Koltun 2018): two overlapping digits, tasks left / right class."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(SIZE, SIZE, 1), dtype=np.uint8),
                    "left": label,
                    "right": label,
                }
            ),
            supervised_keys=None,
            # Keep the generation order so that train[:90%] is a fixed prefix;
            # the training iterator shuffles anyway.
            disable_shuffling=True,
            citation="Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018.",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Raw files come from the local data dir, not tfds.
        if self._raw_folder_path is None:
            raise idx.DataError(
                f"{self.name}: no raw {self.SOURCE.title} files to build the cache "
                f"from. Fix: {idx.fix_text(self.SOURCE)}."
            )
        folder = pathlib.Path(self._raw_folder_path)
        # Read and verify both splits before writing anything.
        raw = {s: idx.read_split(folder, s, self.SOURCE) for s in _SPLIT_IDS}
        seed = self.builder_config.seed
        return {s: self._generate_examples(make_multi(*raw[s], seed, s)) for s in _SPLIT_IDS}

    def _generate_examples(self, data: dict[str, np.ndarray]) -> Iterator[tuple[int, dict]]:
        images, left, right = data["image"], data["left"], data["right"]
        for i in range(len(images)):
            yield i, {"image": images[i], "left": left[i], "right": right[i]}


class MultiMnist(_MultiBuilder, skip_registration=True):
    """MultiMNIST (from the MNIST IDX files)."""

    name = "multi_mnist"
    SOURCE = idx.MNIST


class MultiFashion(_MultiBuilder, skip_registration=True):
    """MultiFashion (from the Fashion-MNIST IDX files)."""

    name = "multi_fashion"
    SOURCE = idx.FASHION_MNIST
    CLASS_NAMES = FASHION_CLASSES
