"""Dense (per-pixel) tasks: losses and whole-split metrics of semantic segmentation, depth and
surface normals, with the definitions of LibMTL's NYUv2 example (``examples/nyu/utils.py``) and
MTAN (Liu et al., CVPR 2019).

Losses (outputs and labels are channels-last, ``[B, H, W, C]``):

* segmentation: softmax cross-entropy averaged over the pixels whose label is not ``IGNORE`` (-1),
  as ``torch.nn.CrossEntropyLoss(ignore_index=-1)``;
* depth: L1 averaged over the valid pixels (label != 0): ``sum |d - d*| m / sum m``;
* normal: ``1 - sum <n/|n|, n*> m / sum m`` over the valid pixels (label not the zero vector);
  predictions are L2-normalised first, labels are taken as unit vectors (as the datasets store them).

Each loss is returned per example in the form the train step takes (``[B]`` values whose batch
mean is the loss): example ``i`` gets its sum over valid pixels times ``B / (valid pixels in the
batch)``, so the batch mean is the mean over the batch's valid pixels -- LibMTL's pixel-pooled
batch loss -- and an example or batch without valid pixels contributes 0 (never NaN).

Whole-split metrics are computed from *sufficient statistics* summed over the split's batches and
devices (never a mean of batch means, never gathered full-resolution outputs):

* segmentation: the ``[C, C]`` confusion matrix (rows: label, columns: prediction) over labelled
  pixels -> ``miou`` (mean over classes of ``TP / (TP + FP + FN)``, over the classes that occur in
  the labels or the predictions; LibMTL's ``torch.mean`` gives NaN when a class occurs in neither)
  and ``pixel_accuracy`` (``trace / sum``);
* depth: sums of ``|d - d*|`` and ``|d - d*| / d*`` and the valid-pixel count -> ``abs_err``,
  ``rel_err`` (LibMTL weights its per-batch means by the batch's valid-pixel count, which is the
  same pooled mean);
* normal: the angle ``atan2(|n x n*|, <n, n*>)`` in degrees per valid pixel (= LibMTL's
  ``acos(clamp(<n, n*>))``, without acos's loss of precision near 0 degrees): its sum ->
  ``mean_angle``; exact counts below 11.25, 22.5 and 30 degrees -> ``within_11_25`` /
  ``within_22_5`` / ``within_30`` (fractions in [0, 1]); and a histogram of the angles with bins
  of ``ANGLE_BIN_DEGREES`` (0.01 degree) over [0, 180] -> ``median_angle`` by linear
  interpolation inside the median's bin, within one bin width (0.01 degree) of the exact median.

Every task also reports ``loss`` over the split (pixel-pooled, as in training).
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array

IGNORE = -1  # segmentation label of unlabelled pixels
ANGLE_BIN_DEGREES = 0.01  # resolution of the normal-angle histogram (median_angle's error bound)
ANGLE_BINS = int(round(180.0 / ANGLE_BIN_DEGREES))
ANGLE_THRESHOLDS = (11.25, 22.5, 30.0)
THRESHOLD_NAMES = ("within_11_25", "within_22_5", "within_30")

# Metric -> higher is better, per task kind (also what Delta-m% reads, see jmtl.metrics.mtl).
SEGMENTATION_METRICS = {"miou": True, "pixel_accuracy": True, "loss": False}
DEPTH_METRICS = {"abs_err": False, "rel_err": False, "loss": False}
NORMAL_METRICS = {
    "mean_angle": False,
    "median_angle": False,
    "within_11_25": True,
    "within_22_5": True,
    "within_30": True,
    "loss": False,
}


# --------------------------------------------------------------------------- validity masks


def segmentation_valid(labels: Array) -> Array:
    """``[B, H, W]`` bool: pixels with a class label (not -1)."""
    return labels >= 0


def depth_valid(labels: Array) -> Array:
    """``[B, H, W]`` bool: pixels with a depth measurement (label != 0)."""
    return labels[..., 0] != 0


def normal_valid(labels: Array) -> Array:
    """``[B, H, W]`` bool: pixels whose normal label is not the zero vector."""
    return jnp.any(labels != 0, axis=-1)


def _per_example(values: Array, valid: Array) -> Array:
    """Per-pixel ``values`` -> ``[B]`` sums over valid pixels times ``B / (valid pixels of the
    batch)``: the batch mean is the pooled mean over the batch's valid pixels."""
    v = valid.astype(jnp.float32)
    sums = jnp.sum(jnp.where(valid, values, 0.0).reshape(values.shape[0], -1), axis=-1)
    return sums * (values.shape[0] / jnp.maximum(jnp.sum(v), 1.0))


def normalize(x: Array) -> Array:
    """``x / |x|`` along the last axis (a zero vector stays zero, with finite gradients)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


# --------------------------------------------------------------------------- per-pixel quantities


def _pixel_cross_entropy(logits: Array, labels: Array) -> Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.maximum(labels, 0))


def _pixel_abs(pred: Array, labels: Array) -> Array:
    return jnp.abs(pred[..., 0].astype(jnp.float32) - labels[..., 0])


def _pixel_cosine(pred: Array, labels: Array) -> Array:
    return jnp.sum(normalize(pred) * labels.astype(jnp.float32), axis=-1)


def angle_degrees(pred: Array, labels: Array) -> Array:
    """Angle in degrees between the predicted and the labelled normals, ``[B, H, W]``."""
    n, g = normalize(pred), labels.astype(jnp.float32)
    cross = jnp.linalg.norm(jnp.cross(n, g), axis=-1)
    return jnp.degrees(jnp.arctan2(cross, jnp.sum(n * g, axis=-1)))


# --------------------------------------------------------------------------- losses ([B], batch mean = pixel mean)


def segmentation_loss(logits: Array, labels: Array) -> Array:
    """Cross-entropy over labelled pixels. ``logits [B, H, W, C]``, ``labels [B, H, W]`` (-1 ignored)."""
    valid = segmentation_valid(labels)
    return _per_example(_pixel_cross_entropy(logits, labels), valid)


def depth_loss(pred: Array, labels: Array) -> Array:
    """L1 over pixels with a measurement. ``pred``, ``labels`` ``[B, H, W, 1]`` (label 0 = none)."""
    return _per_example(_pixel_abs(pred, labels), depth_valid(labels))


def normal_loss(pred: Array, labels: Array) -> Array:
    """``1 - cosine`` over pixels with a normal. ``pred``, ``labels`` ``[B, H, W, 3]``."""
    return _per_example(1.0 - _pixel_cosine(pred, labels), normal_valid(labels))


# --------------------------------------------------------------------------- batch metrics (train-step statistics)


def batch_miou(logits: Array, labels: Array) -> Array:
    """The batch's mIoU, repeated ``[B]`` (the train step logs the batch mean of a main metric)."""
    stats = segmentation_stats(logits, labels, jnp.ones(labels.shape[:1], jnp.float32))
    conf = stats["confusion"].astype(jnp.float32)
    tp = jnp.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    miou = jnp.sum(jnp.where(present, tp / jnp.maximum(union, 1.0), 0.0)) / jnp.maximum(jnp.sum(present), 1)
    return jnp.full(labels.shape[:1], miou)


def batch_pixel_accuracy(logits: Array, labels: Array) -> Array:
    right = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return _per_example(right, segmentation_valid(labels))


def batch_rel_err(pred: Array, labels: Array) -> Array:
    valid = depth_valid(labels)
    safe = jnp.where(valid, labels[..., 0], 1.0)
    return _per_example(_pixel_abs(pred, labels) / safe, valid)


def batch_mean_angle(pred: Array, labels: Array) -> Array:
    return _per_example(angle_degrees(pred, labels), normal_valid(labels))


# --------------------------------------------------------------------------- sufficient statistics (jittable, summed)


def _pixel_weights(valid: Array, weights: Array) -> Array:
    """Valid pixels of the examples with weight > 0 (padding / unlabelled examples count nothing)."""
    return valid & (weights.reshape((-1,) + (1,) * (valid.ndim - 1)) > 0)


def _count(mask: Array) -> Array:
    return jnp.sum(mask.astype(jnp.int32))


def _sum(values: Array, mask: Array) -> Array:
    return jnp.sum(jnp.where(mask, values, 0.0))  # where, not *: unlabelled entries may hold NaN


def segmentation_stats(logits: Array, labels: Array, weights: Array) -> dict:
    """``{'confusion': [C, C] int32 (label, prediction), 'loss_sum', 'count'}`` over the batch's
    labelled pixels of examples with ``weights > 0``."""
    num_classes = logits.shape[-1]
    valid = _pixel_weights(segmentation_valid(labels), weights)
    pred = jnp.argmax(logits, axis=-1)
    index = jnp.where(valid, jnp.clip(labels, 0, num_classes - 1) * num_classes + pred, num_classes * num_classes)
    counts = jnp.zeros((num_classes * num_classes + 1,), jnp.int32).at[index.reshape(-1)].add(1)
    return {
        "confusion": counts[:-1].reshape(num_classes, num_classes),
        "loss_sum": _sum(_pixel_cross_entropy(logits, labels), valid),
        "count": _count(valid),
    }


def depth_stats(pred: Array, labels: Array, weights: Array) -> dict:
    """``{'abs_sum', 'rel_sum', 'count'}`` over the batch's valid pixels of examples with ``weights > 0``."""
    valid = _pixel_weights(depth_valid(labels), weights)
    err = _pixel_abs(pred, labels)
    safe = jnp.where(valid, labels[..., 0], 1.0)
    return {"abs_sum": _sum(err, valid), "rel_sum": _sum(err / safe, valid), "count": _count(valid)}


def normal_stats(pred: Array, labels: Array, weights: Array) -> dict:
    """``{'angle_sum', 'cos_sum', 'within': [3] int32, 'histogram': [ANGLE_BINS] int32, 'count'}``."""
    valid = _pixel_weights(normal_valid(labels), weights)
    angle = angle_degrees(pred, labels)
    within = jnp.stack([_count(valid & (angle < th)) for th in ANGLE_THRESHOLDS])
    bins = jnp.clip(jnp.floor(angle / ANGLE_BIN_DEGREES).astype(jnp.int32), 0, ANGLE_BINS - 1)
    bins = jnp.where(valid, bins, ANGLE_BINS)  # invalid pixels go to a dropped overflow bin
    hist = jnp.zeros((ANGLE_BINS + 1,), jnp.int32).at[bins.reshape(-1)].add(1)[:-1]
    return {
        "angle_sum": _sum(angle, valid),
        "cos_sum": _sum(_pixel_cosine(pred, labels), valid),
        "within": within,
        "histogram": hist,
        "count": _count(valid),
    }


# --------------------------------------------------------------------------- finalisation (host, numpy)


def _ratio(num, den) -> float:
    den = float(den)
    return float(num) / den if den > 0 else math.nan  # no valid pixel in the split: undefined


def segmentation_finalize(stats: Mapping[str, np.ndarray]) -> dict[str, float]:
    conf = np.asarray(stats["confusion"], np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    miou = float(np.mean(tp[present] / union[present])) if present.any() else math.nan
    return {
        "miou": miou,
        "pixel_accuracy": _ratio(tp.sum(), conf.sum()),
        "loss": _ratio(stats["loss_sum"], stats["count"]),
    }


def depth_finalize(stats: Mapping[str, np.ndarray]) -> dict[str, float]:
    n = stats["count"]
    return {
        "abs_err": _ratio(stats["abs_sum"], n),
        "rel_err": _ratio(stats["rel_sum"], n),
        "loss": _ratio(stats["abs_sum"], n),
    }


def histogram_median(hist: np.ndarray, bin_width: float = ANGLE_BIN_DEGREES) -> float:
    """The median of values binned in ``hist`` (bins ``[i w, (i + 1) w)``), as numpy's median
    (the mean of the two middle values for an even count), each middle value placed by linear
    interpolation inside its bin: within one bin width of the exact median."""
    hist = np.asarray(hist, np.float64)
    n = hist.sum()
    if n <= 0:
        return math.nan
    cum = np.cumsum(hist)

    def value_at(rank: float) -> float:  # rank: 0-based position in the sorted values
        b = int(np.searchsorted(cum, rank, side="right"))
        before = cum[b] - hist[b]
        return (b + (rank - before + 0.5) / hist[b]) * bin_width

    lo, hi = (n - 1) // 2, n // 2
    return 0.5 * (value_at(lo) + value_at(hi))


def normal_finalize(stats: Mapping[str, np.ndarray]) -> dict[str, float]:
    n = stats["count"]
    within = np.asarray(stats["within"], np.float64)
    out = {"mean_angle": _ratio(stats["angle_sum"], n), "median_angle": histogram_median(stats["histogram"])}
    out.update({name: _ratio(w, n) for name, w in zip(THRESHOLD_NAMES, within)})
    out["loss"] = 1.0 - _ratio(stats["cos_sum"], n)
    return out
