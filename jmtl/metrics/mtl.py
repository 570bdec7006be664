"""Summary measures of a multi-task method against single-task baselines.

* Δm% (Maninis et al. 2019; in the form of Navon et al. 2022, "Multi-Task Learning as a Bargaining
  Game", Sec. 6):

      Δm = (1/K) Σ_k (-1)^{δ_k} (M_{m,k} - M_{b,k}) / M_{b,k} × 100,   δ_k = 1 if higher is better,

  so a method that improves on the single-task baselines has Δm < 0 (lower is better).
* Mean rank (MR, Navon et al. 2022): each method's rank on every task metric (1 = best, ties share
  the mean rank), averaged over the metrics.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def delta_m(
    method: Sequence[float],
    baseline: Sequence[float],
    higher_is_better: Sequence[bool],
    groups: Sequence[str] | None = None,
) -> float:
    """Δm% of one method's metrics ``M_m,k`` against the baselines ``M_b,k`` (lower is better).

    The one Δm% of jmtl (Maninis et al. 2019; Liu et al. 2019, MTAN; Navon et al. 2022, Sec. 6):
    ``100/K Σ_k (-1)^{l_k} (M_m,k - M_b,k) / M_b,k``, ``l_k = 1`` if higher is better. Every
    table and script computes it here (the dict adapter :func:`delta_m_of`, the metric-table one
    :func:`delta_m_table`).

    Args:
      method: the method's K metric values.
      baseline: the baselines' K values, in the same order and units (none may be 0).
      higher_is_better: per metric, True where a larger value is better.
      groups: optional label per metric (e.g. its task): then the mean is over the groups of each
        group's mean (LibMTL's Δp averaging, with Δm's sign); default: the mean over the K metrics.
    """
    m, b = np.asarray(method, np.float64), np.asarray(baseline, np.float64)
    hib = np.asarray(higher_is_better, bool)
    if not (m.shape == b.shape == hib.shape) or m.ndim != 1 or len(m) == 0:
        raise ValueError(f"delta_m needs K metrics of each: got {m.shape}, {b.shape}, {hib.shape}")
    if np.any(b == 0):
        raise ValueError(
            "delta_m: a baseline metric is 0; the relative change is undefined. "
            "Fix: leave that metric out of the comparison (or report it in other units)"
        )
    sign = np.where(hib, -1.0, 1.0)
    rel = sign * (m - b) / b
    if groups is None:
        return float(np.mean(rel) * 100.0)
    if len(groups) != len(m):
        raise ValueError(f"delta_m: {len(groups)} group labels for {len(m)} metrics. Fix: one label per metric")
    labels = list(dict.fromkeys(groups))
    g = np.asarray(groups, object)
    return float(np.mean([np.mean(rel[g == label]) for label in labels]) * 100.0)


def _missing(v) -> bool:
    return v is None or math.isnan(float(v))


def delta_m_of(
    method: Mapping[str, float | None],
    baseline: Mapping[str, float | None],
    higher_is_better: bool | Mapping[str, bool],
    tasks: Sequence[str] | None = None,
    skip_missing: bool = False,
) -> float | None:
    """:func:`delta_m` of ``{task: value}`` rows (the results scripts' tables).

    Args:
      method: ``{task: M_m,k}``.
      baseline: ``{task: M_b,k}`` (the single-task models).
      higher_is_better: one direction for every task, or ``{task: direction}``.
      tasks: the tasks compared, in this order; default: the baseline's keys.
      skip_missing: a task whose value is missing (absent, None or NaN) in either row is left out
        (True) or makes the result None (False, the default).

    Returns:
      Δm% over the tasks compared, or None when a task is missing (``skip_missing=False``) or no
      task is left.
    """
    names = list(baseline if tasks is None else tasks)
    kept = [t for t in names if not (_missing(method.get(t)) or _missing(baseline.get(t)))]
    if (len(kept) != len(names) and not skip_missing) or not kept:
        return None
    hib = [higher_is_better if isinstance(higher_is_better, bool) else higher_is_better[t] for t in kept]
    return delta_m([method[t] for t in kept], [baseline[t] for t in kept], hib)


# Direction of every metric jmtl reports (True = higher is better), for Delta-m% over whole metric
# tables. The dense-prediction metrics are those of LibMTL's / MTAN's NYUv2 and Cityscapes tables
# (mIoU, pixel accuracy, absolute / relative depth error, mean / median normal angle error, % of
# pixels within 11.25 / 22.5 / 30 degrees); jmtl.tasks.Task.metric_directions agrees (tested).
METRIC_DIRECTIONS: dict[str, bool] = {
    "accuracy": True,
    "loss": False,
    "mse": False,
    "mae": False,
    "auc": True,
    "miou": True,
    "pixel_accuracy": True,
    "abs_err": False,
    "rel_err": False,
    "mean_angle": False,
    "median_angle": False,
    "within_11_25": True,
    "within_22_5": True,
    "within_30": True,
}


def delta_m_table(
    method: Mapping[str, Mapping[str, float]],
    baseline: Mapping[str, Mapping[str, float]],
    directions: Mapping[str, bool] | None = None,
) -> float:
    """Δm% over every ``(task, metric)`` of ``baseline`` (e.g. NYUv2's nine: ``miou``,
    ``pixel_accuracy``, ``abs_err``, ``rel_err``, ``mean_angle``, ``median_angle``, ``within_11_25``,
    ``within_22_5``, ``within_30``), each metric's direction from ``directions`` or
    :data:`METRIC_DIRECTIONS`; ``K`` is the number of metrics, as in the papers' NYUv2 Δm%.

    Args:
      method: ``{task: {metric: value}}`` of the method (may hold more metrics than the baseline).
      baseline: ``{task: {metric: value}}`` of the single-task baselines: the metrics compared.
      directions: ``{metric: higher_is_better}`` overriding / extending :data:`METRIC_DIRECTIONS`.
    """
    known = {**METRIC_DIRECTIONS, **dict(directions or {})}
    m, b, hib = [], [], []
    for task, metrics in baseline.items():
        for name, value in metrics.items():
            if name not in known:
                raise ValueError(
                    f"delta_m_table: no direction for metric {name!r} of task {task!r}. "
                    f"Fix: pass directions={{{name!r}: True or False}} (True = higher is better)"
                )
            if task not in method or name not in method[task]:
                raise ValueError(f"delta_m_table: the method has no {task}.{name} to compare with the baseline's")
            m.append(method[task][name])
            b.append(value)
            hib.append(known[name])
    return delta_m(m, b, hib)


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
