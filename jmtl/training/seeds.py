"""Several seeds of one experiment trained together in one compiled program.

Every seed has its own params, optimizer and weighting state, PRNG key and data order; the per-device
step is ``vmap``-ed over a leading seed axis of the state. The batch carries its seed axis *second*
(``[B, S, ...]``) so that its leading axis is still the one the drivers split over devices; the
vmapped step maps that axis. One dispatch, one data-loader step and one set of XLA kernels then
serve S seeds, which is where the saving over S separate runs comes from (large when per-step
overhead dominates, smaller when the step is compute bound: see ``experiments/bench/seeds.py``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
BATCH_SEED_AXIS = 1


def stack(trees: Sequence[PyTree]) -> PyTree:
    """S pytrees of equal structure -> one pytree with a leading seed axis (host numpy)."""
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def take(tree: PyTree, seed_index: int) -> PyTree:
    """The ``seed_index``-th seed of a stacked pytree."""
    return jax.tree.map(lambda x: x[seed_index], tree)


SEED_MODES = ("vmap", "map")


def over_seeds(
    make_per_device: Callable[[Optional[str]], Callable], mode: str = "vmap"
) -> Callable[[Optional[str]], Callable]:
    """``(state, batch) -> (state, metrics)`` per device -> the same over stacked seeds.

    State and metrics gain a leading seed axis; the batch has it at axis 1. ``mode='vmap'`` batches
    the seeds into every op (best for small models, where per-op overhead dominates); ``'map'``
    runs the seeds one after another inside the same compiled step (``lax.map``: one dispatch and one
    data step for all seeds, but each seed's convolutions/matmuls keep their single-seed shapes, which
    XLA:CPU runs faster than the batched ones for Multi-LeNet: results/bench/bench_seeds.md).
    """
    if mode not in SEED_MODES:
        raise ValueError(f"unknown seeds mode {mode!r}; valid: {', '.join(SEED_MODES)}")

    def make(axis_name):
        step = make_per_device(axis_name)
        if mode == "vmap":
            return jax.vmap(step, in_axes=(0, BATCH_SEED_AXIS), out_axes=(0, 0))

        def mapped(state, batch):
            per_seed = jax.tree.map(lambda x: jnp.moveaxis(x, BATCH_SEED_AXIS, 0), batch)
            return jax.lax.map(lambda sb: step(*sb), (state, per_seed))

        return mapped

    return make


def over_seeds_eval(make_per_device: Callable[[Optional[str]], Callable]) -> Callable[[Optional[str]], Callable]:
    """``(params, batch) -> sums`` per device -> stacked params, shared batch, sums with a seed axis."""

    def make(axis_name):
        return jax.vmap(make_per_device(axis_name), in_axes=(0, None))

    return make


class StackedIterator:
    """One batch iterator per seed -> batches ``[B, S, ...]``, resumable (state = list of states)."""

    def __init__(self, iterators: Sequence[Any]):
        self.iterators = list(iterators)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batches = [next(it) for it in self.iterators]
        # A tree map, not a loop over keys: per-task batches are nested ({task: {entry: array}}).
        return jax.tree.map(lambda *xs: np.stack(xs, axis=BATCH_SEED_AXIS), *batches)

    def get_state(self) -> list:
        return [it.get_state() for it in self.iterators]

    def set_state(self, states: list) -> None:
        if not isinstance(states, list) or len(states) != len(self.iterators):
            raise ValueError(
                f"data iterator state is for {len(states) if isinstance(states, list) else 1} seed(s), "
                f"this run has {len(self.iterators)}"
            )
        for it, s in zip(self.iterators, states):
            it.set_state(s)
