"""Mean ± sample standard deviation over seeds (or splits): the one computation and the one formatter
behind every results table of jmtl and ``experiments/``.

The spread is the sample standard deviation (Bessel's correction, ``ddof = 1``):

    s = sqrt( Σ_i (x_i - x̄)² / (n - 1) ),

numpy's ``std(ddof=1)`` (or, with ``exact=True``, Python's correctly rounded ``statistics.fmean`` /
``stdev``, which the census grids' records were computed with: the two can differ in the last
bit, so each table keeps the one its committed numbers came from). One value has no sample spread: :func:`mean_sd` returns ``single`` for it
(0.0 by default, NaN where a table shows the mean alone), and :func:`format_mean_sd` writes the mean
alone when the spread is None or NaN.
"""

from __future__ import annotations

import math
import statistics
from typing import Iterable

import numpy as np

__all__ = ["format_mean_sd", "mean_sd", "mean_sd_text"]


def _missing(v) -> bool:
    return v is None or math.isnan(float(v))


def mean_sd(
    values: Iterable[float | None],
    ddof: int = 1,
    single: float = 0.0,
    drop_missing: bool = False,
    exact: bool = False,
) -> tuple[float, float]:
    """Mean and standard deviation of ``values`` (numpy's, in float64).

    Args:
      values: the samples (e.g. one metric over seeds).
      ddof: delta degrees of freedom of the spread; 1 (the default) is the sample s.d.
      single: the spread reported for one value (default 0.0; ``math.nan`` to show no spread).
      drop_missing: leave None / NaN values out (default False: a NaN makes the result NaN).
      exact: correctly rounded mean and spread (``statistics.fmean`` / ``stdev`` / ``pstdev``;
        ddof 0 or 1 only) instead of numpy's pairwise sums (default False).

    Returns:
      ``(mean, sd)``; ``(nan, nan)`` when no value is left.
    """
    vals = [v for v in values if not (drop_missing and _missing(v))]
    v = np.asarray(vals, np.float64)
    if v.ndim != 1:
        raise ValueError(f"mean_sd: values must be one sequence of numbers, got shape {v.shape}")
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) <= ddof:
        return (statistics.fmean(vals) if exact else float(v.mean())), float(single)
    if exact:
        if ddof not in (0, 1):
            raise ValueError(f"mean_sd: exact=True takes ddof 0 or 1, got {ddof}. Fix: exact=False for numpy's std")
        return statistics.fmean(vals), (statistics.stdev(vals) if ddof == 1 else statistics.pstdev(vals))
    return float(v.mean()), float(v.std(ddof=ddof))


def format_mean_sd(
    mean: float | None,
    sd: float | None = None,
    spec: str = ".2f",
    scale: float = 1.0,
    signed: bool = False,
    missing: str = "—",
) -> str:
    """``"mean ± sd"`` with ``format(·, spec)``; the mean alone where ``sd`` is None or NaN.

    Args:
      mean: the mean (e.g. from :func:`mean_sd`).
      sd: the spread (e.g. from :func:`mean_sd`); None or NaN shows the mean alone.
      spec: the format spec of both numbers (default ``".2f"``; e.g. ``".4f"``, ``"g"``).
      scale: multiplies both before formatting (e.g. 100 for a fraction shown in %).
      signed: write the mean with its sign (``+1.20 ± 0.30``).
      missing: what a missing mean (None or NaN) shows (default an em dash).
    """
    if _missing(mean):
        return missing
    text = format(mean * scale, ("+" if signed else "") + spec)
    return text if _missing(sd) else f"{text} ± {format(sd * scale, spec)}"


def mean_sd_text(values: Iterable[float], spec: str = ".2f", scale: float = 1.0) -> str:
    """The values times ``scale`` (scaled before the statistics), then ``"mean ± sample sd"``; one
    value shows its mean alone."""
    v = scale * np.asarray(list(values), np.float64)
    return format_mean_sd(*mean_sd(v, single=math.nan), spec=spec)
