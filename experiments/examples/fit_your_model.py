r"""Your whole Flax model and your data, trained by ``jmtl.fit`` (checkpoints and exact resume,
best-validation selection, non-finite policy, metrics, plots) with any weighting scheme.

    python -m experiments.examples.fit_your_model --workdir /tmp/fit --method pcgrad
    python -m experiments.examples.fit_your_model --workdir /tmp/fit_pt --per_task   # each task its own data

The shared trunk is called ``trunk`` (not ``shared``), so the step is told: ``shared="trunk"``.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import numpy as np

import jmtl


class HousePrices(nn.Module):
    """A trunk shared by three heads: a 4-class label, a regression target and a binary label."""

    width: int = 32

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = nn.relu(nn.Dense(self.width, name="trunk")(x))
        h = nn.Dropout(0.1, deterministic=not train)(h)
        return {
            "kind": nn.Dense(4, name="kind_head")(h),
            "price": nn.Dense(1, name="price_head")(h)[:, 0],
            "sold": nn.Dense(1, name="sold_head")(h)[:, 0],
        }


TASKS = [jmtl.Task("kind", "classification", 4), jmtl.Task("price", "regression", 1), jmtl.Task("sold", "binary", 1)]


def make_split(rng: np.random.Generator, n: int, shift: float = 0.0) -> dict:
    """Eight features; the three labels are functions of three directions of them."""
    x = rng.normal(loc=shift, size=(n, 8)).astype(np.float32)
    z = x @ np.linspace(-1, 1, 24).reshape(8, 3)
    return {
        "x": x,
        "kind": np.digitize(z[:, 0], [-1.0, 0.0, 1.0]).astype(np.int32),
        "price": (z[:, 1] + 0.1 * rng.normal(size=n)).astype(np.float32),
        "sold": (z[:, 2] > 0).astype(np.int32),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--method", default="pcgrad")
    parser.add_argument("--num_epochs", type=int, default=5)
    parser.add_argument("--per_task", action="store_true", help="each task has its own examples (multi_input)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    if args.per_task:  # {task: that task's data}; here each task sees a shifted population
        split = lambda n: {t.name: make_split(rng, n, shift=0.3 * i) for i, t in enumerate(TASKS)}
    else:
        split = lambda n: make_split(rng, n)
    train, validation, test = split(2000), split(500), split(500)
    summary, _ = jmtl.fit(
        HousePrices(),
        TASKS,
        train,
        validation=validation,
        test=test,
        workdir=args.workdir,
        weighting=args.method,
        optimizer={"name": "adam", "learning_rate": 1e-2},
        batch_size=100,
        num_epochs=args.num_epochs,
        per_task_inputs=args.per_task,
        step_config=jmtl.StepConfig(input_key="x", shared="trunk"),
        progress_bar=False,
    )
    return summary


if __name__ == "__main__":
    main()
