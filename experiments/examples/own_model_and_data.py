r"""Your own Flax encoder and in-memory data, trained by jmtl's loop (checkpoints, best-validation
selection, metrics, plots), with one task labelled on only 10 % of the examples.

    python -m experiments.examples.own_model_and_data --workdir /tmp/own --method pcgrad

The same two `register` calls inside an experiment config's `get_config` make the dataset and the
encoder nameable on the command line and in `experiments.ablate` grids.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import numpy as np

import jmtl
from jmtl.models import encoders
from jmtl.training import config_schema


class MyEncoder(nn.Module):
    """Any Linen module with ``__call__(x, *, train)`` works as the shared encoder."""

    width: int = 32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = nn.relu(nn.Dense(self.width)(x))
        x = nn.Dropout(0.1, deterministic=not train)(x)
        return nn.relu(nn.Dense(self.width)(x))


def make_splits(seed: int = 0, sizes=(2000, 500, 500)) -> dict:
    """Three tasks on 8 features: a 4-class label, a regression target, and a rare binary label
    (10 % of the examples labelled: ``rare_mask``)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(8, 3))
    splits = {}
    for name, n in zip(("train", "validation", "test"), sizes):
        x = rng.normal(size=(n, 8)).astype(np.float32)
        z = x @ w
        splits[name] = {
            "x": x,
            "kind": np.digitize(z[:, 0], [-1.0, 0.0, 1.0]).astype(np.int32),
            "size": (z[:, 1] + 0.1 * rng.normal(size=n)).astype(np.float32),
            "rare": (z[:, 2] > 0).astype(np.int32),
            "rare_mask": (rng.random(n) < 0.1).astype(np.float32),
        }
    return splits


def get_config(method: str = "pcgrad", num_epochs: int = 5):
    encoders.register("my_encoder", MyEncoder, overwrite=True)
    jmtl.data.register(
        "my_data",
        jmtl.data.from_arrays(
            "my_data",
            make_splits(),
            input_key="x",
            labels={"kind": "classification", "size": "regression", "rare": "classification"},
        ),
        overwrite=True,
    )
    config = config_schema.default_config()
    config.dataset.name = "my_data"
    config.model.encoder = "my_encoder"
    config.model.encoder_kwargs = {"width": 32}
    config.weighting = config_schema.method_config(method)
    config.batch_size = 100
    config.num_epochs = num_epochs
    return config


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--method", default="pcgrad")
    parser.add_argument("--num_epochs", type=int, default=5)
    args = parser.parse_args(argv)
    config = get_config(args.method, args.num_epochs)
    config.progress_bar = False
    summary, _ = jmtl.train(config, args.workdir)
    return summary


if __name__ == "__main__":
    main()
