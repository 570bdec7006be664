"""Summary measures of a multi-task method against single-task baselines.

* Δm% (Maninis et al. 2019; in the form of Navon et al. 2022, "Multi-Task Learning as a Bargaining
  Game", Sec. 6):

      Δm = (1/K) Σ_k (-1)^{δ_k} (M_{m,k} - M_{b,k}) / M_{b,k} × 100,   δ_k = 1 if higher is better,

  so a method that improves on the single-task baselines has Δm < 0 (lower is better).
* Mean rank (MR, Navon et al. 2022): each method's rank on every task metric (1 = best, ties share
  the mean rank), averaged over the metrics.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def delta_m(method: Sequence[float], baseline: Sequence[float], higher_is_better: Sequence[bool]) -> float:
    """Δm% of one method's metrics ``M_m,k`` against the baselines ``M_b,k`` (lower is better)."""
    m, b = np.asarray(method, np.float64), np.asarray(baseline, np.float64)
    hib = np.asarray(higher_is_better, bool)
    if not (m.shape == b.shape == hib.shape) or m.ndim != 1 or len(m) == 0:
        raise ValueError(f"delta_m needs K metrics of each: got {m.shape}, {b.shape}, {hib.shape}")
    if np.any(b == 0):
        raise ValueError("delta_m: a baseline metric is 0; the relative change is undefined")
    sign = np.where(hib, -1.0, 1.0)
    return float(np.mean(sign * (m - b) / b) * 100.0)


def mean_rank(table: Mapping[str, Sequence[float]], higher_is_better: Sequence[bool]) -> dict[str, float]:
    """``{method: [M_k]}`` -> ``{method: mean over k of its rank on metric k}`` (1 = best)."""
    names = list(table)
    values = np.asarray([table[n] for n in names], np.float64)  # [methods, K]
    hib = np.asarray(higher_is_better, bool)
    if values.ndim != 2 or values.shape[1] != len(hib):
        raise ValueError(f"mean_rank needs [methods, {len(hib)}] metrics, got {values.shape}")
    ranks = np.zeros_like(values)
    for k in range(values.shape[1]):
        col = -values[:, k] if hib[k] else values[:, k]  # smaller is better after the flip
        for i, v in enumerate(col):
            better, equal = np.sum(col < v), np.sum(col == v)
            ranks[i, k] = better + (equal + 1) / 2.0  # ties share the mean of their ranks
    return {n: float(r) for n, r in zip(names, ranks.mean(axis=1))}


def pareto_front(points: np.ndarray, higher_is_better: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the non-dominated rows of ``points`` [N, K]."""
    p = np.asarray(points, np.float64) * np.where(np.asarray(higher_is_better, bool), 1.0, -1.0)
    n = len(p)
    mask = np.ones(n, bool)
    for i in range(n):
        dominated_by = np.all(p >= p[i], axis=1) & np.any(p > p[i], axis=1)
        mask[i] = not np.any(dominated_by)
    return mask
