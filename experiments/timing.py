"""Interleaved timing and spreads, shared by the experiment scripts and the benchmarks.

Imports numpy only (no jax), so :mod:`experiments.bench.torch_reference` can use the timer without it.
"""

from __future__ import annotations

import random
import time
from typing import Callable, Mapping, Sequence

import numpy as np


def time_round_robin(
    fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 3, seed: int = 0
) -> dict[str, list[float]]:
    """Seconds per call of each fn, ``repeats`` rounds, every fn once per round in a fresh random order.

    Interleaving makes a shared machine's slow drifts hit every row alike. The order is shuffled
    because a fixed one biases rows: a step timed right after a step with a large working set (e.g.
    the one-vmap Jacobian's ~0.5-1 GB of temporaries) ran ~12 % slower than the same computation
    timed after a small one (K = 20, Multi-LeNet on CPU), so in a fixed order one row always paid
    for its neighbour.

    Args:
      fns: name -> zero-argument callable that finishes its work before returning (JAX callers
        block on their outputs).
      repeats: rounds; each round calls every fn once.
      warmup: untimed calls of each fn before the first round (compilation, caches); default 3.
      seed: seed of the shuffles (default 0), so a rerun times in the same orders.

    Returns:
      name -> list of ``repeats`` seconds, in round order (so ``samples[a][r] / samples[b][r]`` is
      a within-round, paired ratio).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    rng = random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
    return samples


def spread(seconds: Sequence[float]) -> dict:
    """Median, 10th and 90th percentile of timings given in seconds, in ms."""
    ms = np.asarray(seconds, float) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p10_ms": float(np.percentile(ms, 10)),
        "p90_ms": float(np.percentile(ms, 90)),
    }


def spread_of(values: Sequence[float], key: str = "") -> dict:
    """Median, p10 and p90 of any values, keys suffixed with ``key`` (e.g. ``"_s"``)."""
    v = np.asarray(values, float)
    return {
        f"median{key}": float(np.median(v)),
        f"p10{key}": float(np.percentile(v, 10)),
        f"p90{key}": float(np.percentile(v, 90)),
    }


def fmt(x, spec: str = ".2f") -> str:
    """``x`` formatted, or an em dash for a missing value."""
    return "—" if x is None else format(x, spec)
