"""Task descriptions: the task set is declared once (in a config) and used everywhere."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from jmtl.metrics import pixel
from jmtl.models import crf

Array = jax.Array

CLASSIFICATION = "classification"
REGRESSION = "regression"
TAGGING = "tagging"
CRF_TAGGING = "crf_tagging"
BINARY = "binary"  # one logit, sigmoid cross-entropy; labels 0/1
MULTILABEL = "multilabel"  # num_outputs independent 0/1 labels, one logit each
CUSTOM = "custom"  # the user's loss_fn and metrics
SEGMENTATION = "segmentation"  # per-pixel classes: outputs [B, H, W, C] logits, labels [B, H, W] int (-1 ignore)
DEPTH = "depth"  # outputs and labels [B, H, W, 1]; label 0 = no measurement
NORMAL = "normal"  # surface normals: outputs and labels [B, H, W, 3]; zero label = no measurement
KINDS = (CLASSIFICATION, REGRESSION, TAGGING, CRF_TAGGING, BINARY, MULTILABEL, CUSTOM, SEGMENTATION, DEPTH, NORMAL)
PIXEL_KINDS = (SEGMENTATION, DEPTH, NORMAL)
MASK_SUFFIX = "_mask"  # batch[label_key + MASK_SUFFIX]: 1 where the example has this task's label
TOKEN_KINDS = (TAGGING, CRF_TAGGING)
TASK_DEFAULTS = "*"  # config.tasks['*']: fields every task gets unless its own entry sets them
IGNORE_LABEL = -1  # tagging labels at padding positions


@dataclasses.dataclass(frozen=True)
class Metric:
    """A per-example metric; the mean over a split is reported. ``higher_is_better`` drives model
    selection and Delta-m%."""

    name: str
    fn: Callable[[Array, Array], Array]  # (outputs [B, ...], labels [B, ...]) -> [B]
    higher_is_better: bool


def _accuracy(logits: Array, labels: Array) -> Array:
    return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def _cross_entropy(logits: Array, labels: Array) -> Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def _token_scale(labels: Array) -> tuple[Array, Array]:
    """Real-token mask ``[B, T]`` and the factor ``B / n_tokens`` that turns per-example token sums
    into values whose batch mean is the mean over the batch's real tokens."""
    mask = (labels != IGNORE_LABEL).astype(jnp.float32)
    scale = labels.shape[0] / jnp.maximum(jnp.sum(mask), 1.0)
    return mask, scale


def _tagging_cross_entropy(logits: Array, labels: Array) -> Array:
    mask, scale = _token_scale(labels)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.maximum(labels, 0))
    return jnp.sum(ce * mask, axis=-1) * scale


def _token_accuracy(predicted: Array, labels: Array) -> Array:
    mask, scale = _token_scale(labels)
    right = (predicted == labels).astype(jnp.float32)
    return jnp.sum(right * mask, axis=-1) * scale


def _tagging_accuracy(logits: Array, labels: Array) -> Array:
    return _token_accuracy(jnp.argmax(logits, axis=-1), labels)


def _crf_negative_log_likelihood(out: crf.CRFOutput, labels: Array) -> Array:
    mask, scale = _token_scale(labels)
    return -crf.log_likelihood(out, jnp.maximum(labels, 0), mask) * scale


def _crf_accuracy(out: crf.CRFOutput, labels: Array) -> Array:
    return _token_accuracy(crf.viterbi(out, labels != IGNORE_LABEL), labels)


def _binary_cross_entropy(logits: Array, labels: Array) -> Array:
    logits = logits.astype(jnp.float32).reshape(labels.shape[0])
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))


def _binary_accuracy(logits: Array, labels: Array) -> Array:
    return ((logits.reshape(labels.shape[0]) > 0) == (labels == 1)).astype(jnp.float32)


def _multilabel_cross_entropy(logits: Array, labels: Array) -> Array:
    logits = logits.astype(jnp.float32).reshape(labels.shape)
    return jnp.mean(
        optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)).reshape(labels.shape[0], -1), axis=-1
    )


def _multilabel_accuracy(logits: Array, labels: Array) -> Array:
    right = ((logits.reshape(labels.shape) > 0) == (labels == 1)).astype(jnp.float32)
    return jnp.mean(right.reshape(labels.shape[0], -1), axis=-1)


@dataclasses.dataclass(frozen=True)
class SplitMetric:
    """A metric of a whole split that is not a mean of per-example values (e.g. ROC AUC): the
    evaluation gathers the task's outputs and labels over the split and calls ``fn`` once."""

    name: str
    fn: Callable[[Any, Any], float]  # (outputs [N, ...] as numpy, labels [N]) -> value
    higher_is_better: bool


@dataclasses.dataclass(frozen=True)
class AccumulatedMetric:
    """Metrics of a whole split computed from per-batch sufficient statistics (e.g. a confusion
    matrix, sums of errors and valid-pixel counts) that the jitted evaluation step sums over the
    split's batches and over devices -- for metrics that are neither means of per-example values
    nor affordable from gathered outputs (full-resolution dense predictions).

    name: the statistics' name (a key of the evaluation sums).
    stats: ``(outputs [B, ...], labels [B, ...], weights [B]) -> pytree of sums`` (jittable; examples
      with weight 0 -- padding, missing labels -- must count nothing, whatever their labels hold).
    finalize: ``pytree of sums (numpy, float64) -> {metric: value}``.
    directions: ``((metric, higher_is_better), ...)`` for every metric ``finalize`` returns.
    """

    name: str
    stats: Callable[[Array, Array, Array], Any]
    finalize: Callable[[Any], Mapping[str, float]]
    directions: tuple[tuple[str, bool], ...]


_PIXEL_ACCUMULATED = {
    SEGMENTATION: AccumulatedMetric(
        "confusion", pixel.segmentation_stats, pixel.segmentation_finalize, tuple(pixel.SEGMENTATION_METRICS.items())
    ),
    DEPTH: AccumulatedMetric(
        "depth_errors", pixel.depth_stats, pixel.depth_finalize, tuple(pixel.DEPTH_METRICS.items())
    ),
    NORMAL: AccumulatedMetric("angles", pixel.normal_stats, pixel.normal_finalize, tuple(pixel.NORMAL_METRICS.items())),
}
# Per-batch forms of the pixel metrics (train-step statistics; the main metric first). Evaluation
# reports the accumulated whole-split forms of the same names instead.
_PIXEL_BATCH_METRICS = {
    SEGMENTATION: (
        Metric("miou", pixel.batch_miou, True),
        Metric("pixel_accuracy", pixel.batch_pixel_accuracy, True),
        Metric("loss", pixel.segmentation_loss, False),
    ),
    DEPTH: (
        Metric("abs_err", pixel.depth_loss, False),
        Metric("rel_err", pixel.batch_rel_err, False),
        Metric("loss", pixel.depth_loss, False),
    ),
    NORMAL: (Metric("mean_angle", pixel.batch_mean_angle, False), Metric("loss", pixel.normal_loss, False)),
}
_PIXEL_LOSSES = {SEGMENTATION: pixel.segmentation_loss, DEPTH: pixel.depth_loss, NORMAL: pixel.normal_loss}
# What an unlabelled example's label entries become (missing-label masks): "no valid pixel".
_PIXEL_FILL = {SEGMENTATION: pixel.IGNORE, DEPTH: 0, NORMAL: 0}


def _split_auc(outputs: Any, labels: Any) -> float:
    from jmtl.metrics import scores  # numpy-only module; imported here to keep this one light

    return scores.binary_auc(outputs, labels)


def _split_f1(outputs: Any, labels: Any) -> float:
    from jmtl.metrics import scores

    return scores.binary_f1(outputs, labels)  # prediction logit > 0; 0 when nothing predicted or present


# Split-level metrics a task adds when its ``metric`` names them (per kind): FAMO's CelebA F1.
_OPTIONAL_SPLIT_METRICS = {BINARY: {"f1": SplitMetric("f1", _split_f1, True)}}


def _mse(pred: Array, target: Array) -> Array:
    err = (pred.astype(jnp.float32) - target) ** 2
    return jnp.mean(err.reshape(err.shape[0], -1), axis=-1)


def _mae(pred: Array, target: Array) -> Array:
    err = jnp.abs(pred.astype(jnp.float32) - target)
    return jnp.mean(err.reshape(err.shape[0], -1), axis=-1)


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of the multi-task problem.

    name: unique task name (also the key of its head's params under ``params['tasks']``).
    kind: ``'classification'`` (integer labels, softmax cross-entropy), ``'regression'`` (MSE) or
      ``'tagging'`` (one class per token: outputs ``[B, T, C]``, labels ``[B, T]`` with -1 at
      padding). A tagging example's loss / accuracy is its sum over real tokens times
      ``B / (real tokens in the batch)``, so the batch mean -- what the train step takes -- is the
      mean over the batch's real tokens, and padding counts for nothing. (Evaluating such batch
      means with ``make_eval_step`` gives a batch-weighted token mean; corpus-level tagging
      metrics, span F1 included, are in :mod:`jmtl.metrics`.) ``'crf_tagging'``: the same labels,
      outputs a :class:`jmtl.models.crf.CRFOutput` (emissions ``[B, T, C]`` and transition
      scores); the loss is the sentence's CRF negative log-likelihood, scaled like the tagging
      loss, and the accuracy is the Viterbi path's. ``'binary'``: one logit per example
      (``num_outputs`` 1), labels 0/1, sigmoid cross-entropy; per-example metrics accuracy (logit >
      0) and loss, plus the split-level ROC AUC in ``split_metrics``.
      ``'multilabel'``: ``num_outputs`` independent 0/1 labels ``[B, num_outputs]``, one logit each,
      sigmoid cross-entropy averaged over labels; accuracy is the mean per-label accuracy.
      ``'custom'``: the user's ``loss_fn`` and ``custom_metrics``.
      Dense (per-pixel) kinds, LibMTL's / MTAN's definitions (:mod:`jmtl.metrics.pixel`):
      ``'segmentation'`` (outputs ``[B, H, W, C]`` logits, labels ``[B, H, W]`` int with -1 =
      ignore; pixel cross-entropy; ``miou`` from the split's confusion matrix, ``pixel_accuracy``),
      ``'depth'`` (outputs and labels ``[B, H, W, 1]``, label 0 = no measurement; L1 on valid
      pixels; ``abs_err``, ``rel_err``), ``'normal'`` (outputs and labels ``[B, H, W, 3]``, the zero
      vector = no measurement; predictions L2-normalised, ``1 - cosine`` on valid pixels;
      ``mean_angle``, ``median_angle`` in degrees, ``within_11_25`` / ``within_22_5`` / ``within_30``
      fractions of pixels). Their losses are pooled over the batch's valid pixels (the per-example
      values, like tagging's, have the pixel mean as batch mean); their evaluation metrics
      (``accumulated_metrics``) accumulate over the whole split and all devices.
    num_outputs: number of classes, or the regression output size (flattened).
    label_key: the batch entry holding this task's labels (default: ``name``).
    weight: static loss weight (used by the ``static`` weighting scheme).
    loss_fn: ``(outputs [B, ...], labels [B, ...]) -> [B]`` per-example loss; required for
      ``'custom'``, and replaces the kind's loss for any other kind.
    custom_metrics: per-example :class:`Metric` s (name, fn, higher_is_better); the first is the
      main metric (model selection, Delta-m%). Required for ``'custom'``; for other kinds they
      replace the kind's metrics.
    metric: the metric that model selection and Delta-m% read (``main_metric``); ``''`` = the kind's
      first metric (accuracy, MSE, mIoU, ...). Any per-example or split-level metric the task reports
      may be named (a binary task: ``accuracy``, ``loss``, ``auc``), and ``'f1'`` on a binary task
      reports the split-level F1 of the positive class instead of the AUC (prediction logit > 0,
      counts over the whole split, F1 = 2 TP / (2 TP + FP + FN), 0 when nothing is predicted or
      present: :func:`jmtl.metrics.binary_f1`), the metric FAMO reports per CelebA attribute.

    Missing labels: a batch entry ``label_key + '_mask'`` (1 = labelled, 0 = missing, shape ``[B]``)
    makes the task's loss and metrics means over its labelled examples only; a batch with none of
    them gives the task a zero loss and a zero gradient row (never NaN). Unlabelled examples may hold
    any placeholder label (NaN or -1 included).
    """

    name: str
    kind: str
    num_outputs: int
    label_key: str = ""
    weight: float = 1.0
    loss_fn: Callable[[Array, Array], Array] | None = None
    custom_metrics: tuple[Metric, ...] = ()
    metric: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: unknown kind {self.kind!r}; valid kinds: {', '.join(KINDS)}")
        if not self.name.isidentifier():
            raise ValueError(f"task name {self.name!r} must be a Python identifier (it names a params subtree)")
        if self.num_outputs < 1:
            raise ValueError(f"task {self.name!r}: num_outputs must be >= 1, got {self.num_outputs}")
        if self.kind == DEPTH and self.num_outputs != 1:
            raise ValueError(
                f"task {self.name!r}: a depth task predicts one channel (num_outputs=1), got {self.num_outputs}"
            )
        if self.kind == NORMAL and self.num_outputs != 3:
            raise ValueError(
                f"task {self.name!r}: a normal task predicts 3 channels (num_outputs=3), got {self.num_outputs}"
            )
        if self.kind == BINARY and self.num_outputs != 1:
            raise ValueError(f"task {self.name!r}: a binary task has one logit (num_outputs=1), got {self.num_outputs}")
        if self.kind == CUSTOM and (self.loss_fn is None or not self.custom_metrics):
            raise ValueError(
                f"task {self.name!r}: a 'custom' task needs loss_fn=(outputs, labels) -> [B] and "
                "custom_metrics=(jmtl.tasks.Metric(name, fn, higher_is_better), ...)"
            )
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise TypeError(f"task {self.name!r}: loss_fn must be callable, got {self.loss_fn!r}")
        object.__setattr__(self, "custom_metrics", tuple(self.custom_metrics))
        for m in self.custom_metrics:
            if not isinstance(m, Metric):
                raise TypeError(
                    f"task {self.name!r}: custom_metrics must be jmtl.tasks.Metric(name, fn, higher_is_better), got {m!r}"
                )
        if not self.label_key:
            object.__setattr__(self, "label_key", self.name)
        if self.metric:
            reported = self.metric_directions  # what evaluation reports (pixel kinds: the accumulated forms)
            valid = [m.name for m in self.metrics + self.split_metrics if m.name in reported]
            valid += [n for n in _OPTIONAL_SPLIT_METRICS.get(self.kind, {}) if n not in valid]
            if self.metric not in valid:
                raise ValueError(
                    f"task {self.name!r} ({self.kind}): metric {self.metric!r} is not one it reports; valid: "
                    f"{', '.join(valid)}. Fix: metric='{valid[0]}' (or leave it empty for the kind's first metric)"
                )

    @property
    def mask_key(self) -> str:
        """The batch entry marking which examples carry this task's label (optional)."""
        return self.label_key + MASK_SUFFIX

    def loss(self, outputs: Array, labels: Array) -> Array:
        """Per-example loss ``[B]``."""
        if self.loss_fn is not None:
            return self.loss_fn(outputs, labels)
        if self.kind == MULTILABEL:
            return _multilabel_cross_entropy(outputs, labels)
        if self.kind == CLASSIFICATION:
            return _cross_entropy(outputs, labels)
        if self.kind == TAGGING:
            return _tagging_cross_entropy(outputs, labels)
        if self.kind == CRF_TAGGING:
            return _crf_negative_log_likelihood(outputs, labels)
        if self.kind == BINARY:
            return _binary_cross_entropy(outputs, labels)
        if self.kind in PIXEL_KINDS:
            return _PIXEL_LOSSES[self.kind](outputs, labels)
        return _mse(outputs, labels.reshape(outputs.shape))

    @property
    def metrics(self) -> tuple[Metric, ...]:
        if self.custom_metrics:
            return self.custom_metrics
        if self.kind == MULTILABEL:
            return (Metric("accuracy", _multilabel_accuracy, True), Metric("loss", _multilabel_cross_entropy, False))
        if self.kind == CLASSIFICATION:
            return (Metric("accuracy", _accuracy, True), Metric("loss", _cross_entropy, False))
        if self.kind == TAGGING:
            return (Metric("accuracy", _tagging_accuracy, True), Metric("loss", _tagging_cross_entropy, False))
        if self.kind == CRF_TAGGING:
            return (Metric("accuracy", _crf_accuracy, True), Metric("loss", _crf_negative_log_likelihood, False))
        if self.kind == BINARY:
            return (Metric("accuracy", _binary_accuracy, True), Metric("loss", _binary_cross_entropy, False))
        if self.kind in PIXEL_KINDS:
            return _PIXEL_BATCH_METRICS[self.kind]
        return (
            Metric("mse", lambda p, t: _mse(p, t.reshape(p.shape)), False),
            Metric("mae", lambda p, t: _mae(p, t.reshape(p.shape)), False),
        )

    @property
    def split_metrics(self) -> tuple[SplitMetric, ...]:
        """Metrics computed once over a whole split (``binary``: ROC AUC with ties counted 1/2, or
        the F1 instead when ``metric='f1'``)."""
        if self.kind == BINARY:
            optional = _OPTIONAL_SPLIT_METRICS[BINARY]
            # F1 replaces the AUC: FAMO's protocol reports F1 alone, and the AUC is undefined (an
            # error) on a split where the task has one class, where the F1 is defined.
            return (optional[self.metric],) if self.metric in optional else (SplitMetric("auc", _split_auc, True),)
        return ()

    @property
    def accumulated_metrics(self) -> tuple[AccumulatedMetric, ...]:
        """Whole-split metrics from summed sufficient statistics (the pixel kinds; none when
        ``custom_metrics`` replace the kind's metrics). Evaluation reports these instead of the
        per-example ``metrics``, which for pixel kinds are per-batch train-step statistics."""
        if self.kind in PIXEL_KINDS and not self.custom_metrics:
            return (_PIXEL_ACCUMULATED[self.kind],)
        return ()

    @property
    def metric_directions(self) -> dict[str, bool]:
        """``{metric: higher_is_better}`` of every metric the evaluation reports for this task
        (what Delta-m% and model selection read)."""
        if self.accumulated_metrics:
            return {n: hib for acc in self.accumulated_metrics for n, hib in acc.directions}
        out = {m.name: m.higher_is_better for m in self.metrics}
        out.update({m.name: m.higher_is_better for m in self.split_metrics})
        return out

    @property
    def main_metric(self) -> Metric | SplitMetric:
        """The metric used for model selection and Delta-m%: the one ``metric`` names, else the kind's
        first (accuracy, MSE; ``miou``, ``abs_err``, ``mean_angle`` for the pixel kinds). Callers read
        its ``name`` and ``higher_is_better``."""
        if self.metric:
            return next(m for m in self.metrics + self.split_metrics if m.name == self.metric)
        return self.metrics[0]

    def safe_labels(self, labels: Array, mask: Array | None) -> Array:
        """:func:`safe_labels` with the kind's "nothing labelled" value: pixel kinds fill unlabelled
        examples with invalid pixels (-1 / 0), so they add no pixel to the pooled loss."""
        return safe_labels(labels, mask, _PIXEL_FILL.get(self.kind, 0) if not self.loss_fn else 0)


def masked_mean(values: Array, mask: Array | None, total: Array | None = None) -> Array:
    """Mean of per-example ``values [B]`` over the examples where ``mask`` is 1 (all if None).

    Args:
      values: per-example values; entries where the mask is 0 may be anything (NaN included).
      mask: ``[B]`` 0/1 (or bool), or None.
      total: the number of labelled examples to divide by (default ``sum(mask)``; the train step
        passes the count over all devices so that the device mean is the global masked mean).
    """
    if mask is None:
        return jnp.mean(values)
    m = mask.astype(bool).reshape(values.shape[:1])
    total = jnp.sum(m.astype(values.dtype)) if total is None else total
    return jnp.sum(jnp.where(m, values, 0)) / jnp.maximum(total, 1)


def safe_labels(labels: Array, mask: Array | None, fill: float = 0) -> Array:
    """``labels`` with unlabelled examples' entries replaced by ``fill`` (0), so that a NaN or -1
    placeholder cannot reach the loss or its gradient (``where`` alone would still pass NaN gradients)."""
    if mask is None:
        return labels
    m = mask.astype(bool).reshape(labels.shape[:1] + (1,) * (labels.ndim - 1))
    return jnp.where(m, labels, jnp.asarray(fill, labels.dtype))


def tasks_from_config(task_configs: Mapping[str, Mapping[str, Any]], dataset_spec: Any) -> tuple[Task, ...]:
    """Builds the task tuple from ``config.tasks`` (``{name: {label, weight, metric}}``) checked against
    the dataset's label specs. An empty mapping means one task per dataset label.

    An entry ``'*'`` holds fields every task gets unless its own entry sets them (``{'*': {'metric':
    'f1'}}``: one task per dataset label, each selected and reported by its F1).
    """
    labels = dataset_spec.labels
    task_configs = dict(task_configs)
    defaults = dict(task_configs.pop(TASK_DEFAULTS, None) or {})
    if "label" in defaults:
        raise ValueError(
            f"config.tasks[{TASK_DEFAULTS!r}] sets 'label': every task would read that one label. "
            "Fix: give the label in each task's own entry"
        )
    if not task_configs:
        task_configs = {name: {} for name in labels}
    tasks = []
    for name, cfg in task_configs.items():
        cfg = {**defaults, **dict(cfg)}
        label_key = cfg.pop("label", name)
        weight = float(cfg.pop("weight", 1.0))
        metric = str(cfg.pop("metric", ""))
        if cfg:
            raise ValueError(f"task {name!r}: unknown field(s) {', '.join(sorted(cfg))}; valid: label, weight, metric")
        if label_key not in labels:
            raise ValueError(
                f"task {name!r} asks for label {label_key!r}, which dataset {dataset_spec.name!r} does not have; "
                f"its labels: {', '.join(labels)}"
            )
        spec = labels[label_key]
        if spec.kind in (CLASSIFICATION, TAGGING, SEGMENTATION):
            num_outputs = int(spec.num_classes)
        elif spec.kind in (DEPTH, NORMAL):
            num_outputs = int(spec.shape[-1])  # channels per pixel (1 / 3)
        else:
            num_outputs = int(max(1, _prod(spec.shape)))
        tasks.append(
            Task(name=name, kind=spec.kind, num_outputs=num_outputs, label_key=label_key, weight=weight, metric=metric)
        )
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate task names in {names}")
    return tuple(tasks)


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def check_mask_values(mask: Any, mask_key: str, where: str = "batch", error: type = ValueError) -> None:
    """Refuses a label mask holding anything but 0 and 1 (bool is fine): the one check every data path
    (arrays, iterables, evaluation splits) runs.

    A value such as 0.5, -1 or 2 would count the example as labelled (``mask.astype(bool)``) while a
    mean weighted by the mask would divide by its sum: the loss and the metrics would silently change.

    Args:
      mask: the mask entry (any array-like).
      mask_key: its name (``<label>_mask``), for the message.
      where: how to name the batch or split in the message.
      error: the exception class to raise (``DataError`` for datasets).
    """
    import numpy as np

    m = np.asarray(mask)
    if m.dtype == bool:
        return
    if not np.issubdtype(m.dtype, np.number):
        raise error(
            f"{where}: label mask {mask_key!r} has dtype {m.dtype}; it must hold 0 (missing) and 1 (labelled). "
            "Fix: pass a numeric or bool 0/1 array"
        )
    bad = ~((m == 0) | (m == 1))
    if bad.any():
        found = np.unique(m[bad])
        shown = ", ".join(f"{v:g}" for v in found[:5].tolist()) + (", ..." if len(found) > 5 else "")
        raise error(
            f"{where}: label mask {mask_key!r} holds {shown} ({int(bad.sum())} of {m.size} entries) where only 0 "
            "(missing) and 1 (labelled) are allowed: such an example counts as labelled but the mean is weighted "
            f"by the mask. Fix: pass a 0/1 mask, e.g. `({mask_key} > 0).astype(np.float32)`"
        )


def check_masks(tasks: Sequence[Task], batch: Mapping[str, Any], where: str = "batch") -> None:
    """``check_mask_values`` for each task's mask entry present in ``batch``."""
    for t in tasks:
        if isinstance(batch, Mapping) and t.mask_key in batch:
            check_mask_values(batch[t.mask_key], t.mask_key, where)


def no_labelled_examples(tasks: Sequence[Task], split: Mapping[str, Any]) -> list[str]:
    """Names of the tasks whose mask entry in ``split`` is 0 on every example."""
    import numpy as np

    return [t.name for t in tasks if t.mask_key in split and not np.any(np.asarray(split[t.mask_key]))]


def unlabelled_task_message(names: Sequence[str], where: str) -> str:
    """The one-line refusal for tasks without a single labelled training example."""
    shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"{where}: task(s) {shown} have no labelled example (their label mask is 0 on every training example): "
        "such a task would train on nothing (loss 0), report an untrained head's test numbers and still count "
        "in model selection. Fix: drop the task(s), or give them labelled training examples"
    )


def check_labels(tasks: Sequence[Task], batch: Mapping[str, Any], where: str = "batch") -> None:
    """Raises a clear error when a label mask holds anything but 0/1 (``check_masks``) or a
    classification label is outside ``[0, num_classes)`` (tagging labels may also be -1, padding)."""
    import numpy as np

    check_masks(tasks, batch, where)
    for t in tasks:
        if t.label_key not in batch:
            raise ValueError(f"{where} has no entry {t.label_key!r} for task {t.name!r}; entries: {', '.join(batch)}")
        labelled = np.asarray(batch[t.mask_key]).astype(bool) if t.mask_key in batch else None
        if t.kind == BINARY:
            y = np.asarray(batch[t.label_key])
            y = y if labelled is None else y[labelled]
            if y.size and not np.all((y == 0) | (y == 1)):
                raise ValueError(
                    f"{where}: labels of task {t.name!r} (binary) must be 0 or 1, found {np.unique(y)[:10]}. "
                    "Fix: map the positive class to 1 and the negative to 0 in the data"
                )
            continue
        if t.kind in (DEPTH, NORMAL):
            y = np.asarray(batch[t.label_key])
            y = y if labelled is None else y[labelled]
            if y.size and not np.all(np.isfinite(y)):
                raise ValueError(
                    f"{where}: {t.kind} labels of task {t.name!r} hold NaN or inf. Fix: write 0 "
                    f"{'(the zero vector) ' if t.kind == NORMAL else ''}at pixels without a measurement"
                )
            continue
        if t.kind not in (CLASSIFICATION, *TOKEN_KINDS, SEGMENTATION):
            continue
        y = np.asarray(batch[t.label_key])
        y = y if labelled is None else y[labelled]
        ignorable = t.kind in TOKEN_KINDS or t.kind == SEGMENTATION
        ignored = "ignored pixels" if t.kind == SEGMENTATION else "padding"
        low = IGNORE_LABEL if ignorable else 0
        if y.size and (y.min() < low or y.max() >= t.num_outputs):
            raise ValueError(
                f"{where}: labels of task {t.name!r} span [{y.min()}, {y.max()}] but its head has "
                f"{t.num_outputs} classes (valid labels 0..{t.num_outputs - 1}"
                f"{f', and -1 for {ignored}' if ignorable else ''}). Fix: correct the labels in the data, or "
                f"the dataset's num_classes for {t.label_key!r} (the head size comes from it)"
            )
