"""Split-level scores that are not means of per-example values: binary ROC AUC, binary F1, explained
variance, and mean absolute error in original units after a standardisation.

All functions take the whole split at once (numpy or anything ``np.asarray`` accepts), compute in
float64 and return Python floats (or float64 arrays, one value per target column). They are meant
for the evaluation of a finished pass over a split, not for use inside a jitted step.
"""

from __future__ import annotations

from typing import Mapping, Sequence, Union

import numpy as np

ArrayLike = Union[np.ndarray, Sequence[float]]


def _as_1d(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]  # a [N, 1] head output is one score per example
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one value per example ([N] or [N, 1]), got shape {arr.shape}")
    return arr


def binary_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of a binary problem, ties between a positive and a negative counted 1/2.

    AUC = P(s_pos > s_neg) + P(s_pos = s_neg) / 2 over all (positive, negative) pairs, i.e. the
    Mann-Whitney statistic U / (n_pos * n_neg) with U = (sum of the positives' mid-ranks) -
    n_pos (n_pos + 1) / 2 (tied scores share the mean of their ranks). O(N log N).

    Args:
      scores: [N] (or [N, 1]) real scores, higher = more likely positive (logits or probabilities:
        any strictly increasing transform gives the same AUC).
      labels: [N] labels in {0, 1} (bool or integer; floats must be exactly 0.0 / 1.0).

    Returns:
      The AUC in [0, 1].

    Raises:
      ValueError: shapes differ, a score is NaN/inf, a label is not 0/1, or one class is absent
        (the AUC is undefined then).
    """
    s = _as_1d(scores, "scores").astype(np.float64)
    y = _as_1d(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"binary_auc: {s.shape[0]} scores but {y.shape[0]} labels")
    if not np.all(np.isfinite(s)):
        bad = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"binary_auc: score {bad} is {s[bad]}; all scores must be finite")
    if y.dtype != bool:
        if not np.all((y == 0) | (y == 1)):
            bad = int(np.flatnonzero((y != 0) & (y != 1))[0])
            raise ValueError(f"binary_auc: label {bad} is {y[bad]!r}; labels must be 0 or 1")
        y = y == 1
    n_pos = int(np.sum(y))
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"binary_auc: needs both classes, got {n_pos} positives and {n_neg} negatives "
            "(the AUC is undefined; evaluate on a split that holds both)"
        )
    # Mid-ranks (1-based): a block of t tied scores starting at sorted position p gets p + (t + 1) / 2.
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    mid_rank = starts + (counts + 1) / 2.0
    rank_sum = float(np.sum(mid_rank[inverse][y]))
    u = rank_sum - n_pos * (n_pos + 1) / 2.0
    return u / (float(n_pos) * float(n_neg))


def _check_binary_labels(y: np.ndarray, where: str) -> np.ndarray:
    """``y`` as bool, refusing anything but 0/1."""
    if y.dtype == bool:
        return y
    if not np.all((y == 0) | (y == 1)):
        bad = np.flatnonzero(((y != 0) & (y != 1)).reshape(-1))[0]
        raise ValueError(
            f"{where}: label {y.reshape(-1)[bad].item()!r} (flat index {bad}); labels must be 0 or 1. "
            "Fix: map the positive class to 1 and the negative to 0"
        )
    return y == 1


def binary_f1_counts(scores: ArrayLike, labels: ArrayLike, threshold: float = 0.0) -> np.ndarray:
    """True positives, false positives and false negatives of thresholded scores, per column.

    The prediction is ``score > threshold`` (the default 0 on logits is FAMO's ``sigmoid(logit) > 0.5``,
    Liu et al. 2023, ``experiments/celeba/trainer.py``). Counts add up: the counts of a split are the
    sums of its batches' counts, which is how a split-level F1 is accumulated (never a mean of batch F1s).

    Args:
      scores: [N] or [N, K] real scores (logits by default), higher = more likely positive.
      labels: the same shape, labels in {0, 1} (bool or numbers).
      threshold: the decision threshold on the scores (0.0 for logits, 0.5 for probabilities).

    Returns:
      int64 ``[3]`` (``[tp, fp, fn]``) for [N] inputs, ``[K, 3]`` for [N, K] inputs.

    Raises:
      ValueError: shapes differ, a score is NaN/inf, or a label is not 0/1.
    """
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels)
    if s.ndim == 2 and s.shape[1] == 1 and y.ndim == 1:
        s = s[:, 0]  # a [N, 1] head output is one score per example
    if s.shape != y.shape or s.ndim not in (1, 2):
        raise ValueError(f"binary_f1_counts: scores {s.shape} and labels {y.shape} must be equal [N] or [N, K]")
    if not np.all(np.isfinite(s)):
        bad = int(np.flatnonzero(~np.isfinite(s.reshape(-1)))[0])
        raise ValueError(
            f"binary_f1_counts: score {bad} (flat index) is {s.reshape(-1)[bad]}; scores must be finite. "
            "Fix: check the model's outputs (a diverged run gives NaN)"
        )
    y = _check_binary_labels(y, "binary_f1_counts")
    pred = s > threshold
    tp = np.sum(pred & y, axis=0, dtype=np.int64)
    fp = np.sum(pred & ~y, axis=0, dtype=np.int64)
    fn = np.sum(~pred & y, axis=0, dtype=np.int64)
    return np.stack([tp, fp, fn], axis=-1)


def f1_from_counts(counts: ArrayLike) -> np.ndarray | float:
    """F1 = 2 TP / (2 TP + FP + FN) from ``[..., 3]`` counts ``[tp, fp, fn]``.

    This is the harmonic mean of precision TP / (TP + FP) and recall TP / (TP + FN) written without
    the two ratios, so it is defined whenever anything was predicted or present. When nothing was
    (2 TP + FP + FN = 0: no positive predicted and none labelled) the F1 is **0**: scikit-learn's
    ``zero_division`` default (which also warns) and what FAMO's CelebA code returns (its
    ``2 P R / (P + R + 1e-8)`` with P = R = 0). No warning here: the value is a convention stated
    once, not an error, and a split with no positive of an attribute is a property of the data.
    (FAMO's ``1e-8`` terms change a nonzero F1 by less than 1e-7 relative.)

    Args:
      counts: ``[3]`` or ``[K, 3]`` non-negative counts (e.g. :func:`binary_f1_counts`' sums).

    Returns:
      A float for ``[3]`` counts, a float64 ``[K]`` array for ``[K, 3]``.
    """
    c = np.asarray(counts, np.float64)
    if c.shape[-1:] != (3,) or c.ndim not in (1, 2) or np.any(c < 0):
        raise ValueError(f"f1_from_counts: counts must be non-negative [3] or [K, 3] (tp, fp, fn), got {c.shape}")
    tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
    denominator = 2 * tp + fp + fn
    f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    return float(f1) if c.ndim == 1 else f1


def binary_f1(scores: ArrayLike, labels: ArrayLike, threshold: float = 0.0) -> float:
    """F1 of the positive class over a whole split: ``f1_from_counts(binary_f1_counts(...))``.

    The metric FAMO reports per CelebA attribute (Liu et al., NeurIPS 2023, Table 3): prediction
    ``logit > 0``, counts over the whole split, F1 = 2 TP / (2 TP + FP + FN); 0 when the split has
    no positive and none is predicted (see :func:`f1_from_counts`).

    Args:
      scores: [N] (or [N, 1]) real scores, logits by default.
      labels: [N] labels in {0, 1}.
      threshold: the decision threshold on the scores.
    """
    s = _as_1d(scores, "scores")
    return f1_from_counts(binary_f1_counts(s, _as_1d(labels, "labels"), threshold))


def _concat(x: ArrayLike | Sequence[ArrayLike], name: str) -> np.ndarray:
    """A single array, or a sequence of per-task arrays concatenated along the examples."""
    if isinstance(x, (list, tuple)) and len(x) and np.ndim(x[0]) >= 1:
        parts = [np.asarray(p, np.float64).reshape(len(p), -1) for p in x]
        widths = {p.shape[1] for p in parts}
        if len(widths) != 1:
            raise ValueError(f"{name}: per-task arrays have different widths {sorted(widths)}")
        return np.concatenate(parts)
    arr = np.asarray(x, np.float64)
    return arr.reshape(arr.shape[0], -1) if arr.ndim else arr.reshape(1, 1)


def explained_variance(targets: ArrayLike | Sequence[ArrayLike], predictions: ArrayLike | Sequence[ArrayLike]) -> float:
    """Explained variance as the multi-task School literature reports it (a fraction; x100 for %).

        EV = 1 - [ (1/N) sum_i (y_i - f_i)^2 ] / [ (1/N) sum_i (y_i - mean(y))^2 ]

    over the N test examples of *all* tasks pooled (one mean, one variance across tasks). This is
    the measure of Bakker & Heskes (JMLR 2003, "Task clustering and gating for Bayesian multitask
    learning") that Argyriou, Evgeniou & Pontil ("Convex multi-task feature learning", Machine
    Learning 73, 2008, School experiments) and Zhang & Yeung (MTRL, UAI 2010) report on School:
    one minus the mean squared test error divided by the total variance of the test targets,
    both taken across all tasks. It is the R^2 of the pooled test set: a constant bias of the
    predictions lowers it (unlike scikit-learn's ``explained_variance_score``, which subtracts the
    mean residual first).

    Args:
      targets: [N] or [N, K] array, or a sequence of per-task arrays (concatenated; each task
        counts with its number of examples, as in the papers).
      predictions: the same layout as ``targets``.

    Returns:
      The explained variance; with [N, K] inputs the K columns are pooled as well.

    Raises:
      ValueError: shapes differ, non-finite values, or the targets have zero variance.
    """
    y = _concat(targets, "targets")
    f = _concat(predictions, "predictions")
    if y.shape != f.shape:
        raise ValueError(f"explained_variance: targets {y.shape} and predictions {f.shape} differ in shape")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(f))):
        raise ValueError("explained_variance: targets and predictions must be finite")
    variance = float(np.mean((y - y.mean()) ** 2))
    if variance == 0.0:
        raise ValueError("explained_variance: the targets are constant (zero variance); the score is undefined")
    return 1.0 - float(np.mean((y - f) ** 2)) / variance


def destandardize(values: ArrayLike, mean: ArrayLike, std: ArrayLike) -> np.ndarray:
    """``values * std + mean`` in float64: standardised values back in original units.

    Args:
      values: [N] or [N, K] standardised values.
      mean: scalar or [K] per-column means used for the standardisation.
      std: scalar or [K] per-column standard deviations (must be > 0).
    """
    v = np.asarray(values, np.float64)
    m = np.asarray(mean, np.float64)
    s = np.asarray(std, np.float64)
    if np.any(s <= 0) or not np.all(np.isfinite(s)):
        raise ValueError(f"destandardize: std must be positive and finite, got {s}")
    if (
        m.ndim > 1
        or s.ndim > 1
        or (m.ndim == 1 and v.shape[-1:] != m.shape)
        or (s.ndim == 1 and v.shape[-1:] != s.shape)
    ):
        raise ValueError(f"destandardize: values {v.shape} do not match mean {m.shape} / std {s.shape} per column")
    return v * s + m


def mae_original_units(
    predictions: ArrayLike, targets: ArrayLike, mean: ArrayLike, std: ArrayLike
) -> np.ndarray | float:
    """Mean absolute error in the targets' original units, from standardised predictions and targets.

    Both are mapped back with ``x * std + mean`` (``destandardize``) before the absolute difference,
    so ``MAE = std * mean|pred_std - target_std|`` per column (the mean cancels). This is the MAE
    that QM9 papers (e.g. Navon et al. 2022, Nash-MTL, Table 3) report per target.

    Args:
      predictions: [N] or [N, K] standardised predictions.
      targets: the same shape, standardised targets.
      mean: scalar or [K] standardisation means.
      std: scalar or [K] standardisation standard deviations.

    Returns:
      A float for [N] inputs, a float64 array [K] for [N, K] inputs.
    """
    p = np.asarray(predictions, np.float64)
    t = np.asarray(targets, np.float64)
    if p.shape != t.shape or p.ndim not in (1, 2) or p.shape[0] == 0:
        raise ValueError(
            f"mae_original_units: predictions {p.shape} and targets {t.shape} must be equal [N] or [N, K], N > 0"
        )
    err = np.abs(destandardize(p, mean, std) - destandardize(t, mean, std)).mean(axis=0)
    return float(err) if p.ndim == 1 else err


def split_level_metrics(
    tasks: Sequence, outputs: Mapping[str, ArrayLike], batch: Mapping[str, ArrayLike]
) -> dict[str, dict[str, float]]:
    """Every task's split-level metrics (``Task.split_metrics``, e.g. the binary tasks' AUC).

    Args:
      tasks: ``jmtl.tasks.Task`` objects (anything with ``name``, ``label_key``, ``split_metrics``).
      outputs: task name -> the model's outputs over the WHOLE split, padding rows removed.
      batch: the split's arrays (``MTLDataset.arrays(split)``), holding each task's labels and,
        where a task has one, its ``<label>_mask`` (rows with mask 0 are left out).

    Returns:
      ``{task: {metric: value}}`` for the tasks that have split-level metrics.
    """
    out = {}
    for t in tasks:
        if t.split_metrics:
            y = np.asarray(batch[t.label_key])
            f = np.asarray(outputs[t.name])
            if len(f) != len(y):
                raise ValueError(
                    f"split_level_metrics: task {t.name!r} has {len(f)} outputs for {len(y)} labels "
                    "(drop the eval padding rows before calling)"
                )
            mask_key = getattr(t, "mask_key", None)
            if mask_key is not None and mask_key in batch:  # unlabelled rows score nothing
                keep = np.asarray(batch[mask_key]) > 0
                f, y = f[keep], y[keep]
            out[t.name] = {m.name: float(m.fn(f, y)) for m in t.split_metrics}
    return out
