"""Evaluation over a whole split held in memory, data-parallel, with padding masks."""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jmtl import metrics as metrics_lib
from jmtl import tasks as tasks_lib
from jmtl.tasks import Task
from jmtl.training.step import StepConfig, mixed_precision_apply

PyTree = Any
TASK_COUNT = "_labelled"  # per-task labelled-example count in the eval sums (tasks with missing labels)
ACCUMULATED = "_accumulated"  # per-task sufficient statistics of Task.accumulated_metrics in the eval sums


def iterate_eval_batches(arrays: Mapping[str, np.ndarray], batch_size: int, multiple: int):
    """Fixed-size batches over a split; the last one padded (``mask`` = 0 on padding).

    ``batch_size`` is rounded up to a ``multiple`` of the global device count so every batch shards.
    """
    batch_size = int(math.ceil(batch_size / multiple) * multiple)
    n = len(jax.tree.leaves(arrays)[0])
    if n == 0:
        raise ValueError("cannot evaluate an empty split")
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        batch = jax.tree.map(lambda v: v[start:stop], dict(arrays))
        mask = np.ones((stop - start,), np.float32)
        pad = batch_size - (stop - start)
        if pad:
            batch = jax.tree.map(lambda v: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]), batch)
            mask = np.concatenate([mask, np.zeros((pad,), np.float32)])
        batch["mask"] = mask
        yield batch


class Placement(Protocol):
    """What :func:`evaluate` needs of the run's device driver (:class:`jmtl.training.parallel.Driver`)."""

    num_devices: int  # global devices: every eval batch is a multiple of this
    process_index: int  # this process's part of each global batch ...
    process_count: int  # ... of this many

    def shard_batch(self, local_batch: dict) -> dict: ...  # this process's part -> the placed global batch

    def unreplicate(self, tree: PyTree) -> PyTree: ...  # device results -> host numpy


def evaluate(
    eval_fn: Callable,
    params,
    arrays: Mapping[str, np.ndarray],
    tasks: Sequence[Task],
    *,
    driver: Placement,
    batch_size: int,
) -> dict[str, dict[str, float]]:
    """Mean of every task metric over the split: ``{task: {metric: value}}``.

    With stacked seeds' params (an ``eval_fn`` vmapped over seeds) the result is a list, one such
    dict per seed.

    Args:
      eval_fn: ``(params, placed batch) -> summed metrics`` (``driver.compile_eval`` of :func:`make_eval_step`).
      params: the params as the driver placed them.
      arrays: the split, ``{entry: array}``.
      tasks: the tasks to score.
      driver: the run's device driver (:class:`Placement`): the batch size is rounded up to a
        multiple of its devices, each process feeds its contiguous part of every global batch.
      batch_size: examples per evaluation batch.
    """
    process_index, process_count = driver.process_index, driver.process_count
    totals = None
    for batch in iterate_eval_batches(arrays, batch_size, driver.num_devices):
        if process_count > 1:
            per = len(batch["mask"]) // process_count
            batch = jax.tree.map(lambda v: v[process_index * per : (process_index + 1) * per], batch)
        sums = driver.unreplicate(eval_fn(params, driver.shard_batch(batch)))
        sums = jax.tree.map(lambda x: np.asarray(x, np.float64), sums)
        totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
    count = totals.pop("count")
    means, accumulated = {}, {}
    for t in tasks:
        sums = dict(totals[t.name])
        accumulated[t.name] = sums.pop(ACCUMULATED, {})
        n = sums.pop(TASK_COUNT, count)  # a task with missing labels: its own labelled count
        means[t.name] = {m: v / np.maximum(n, 1) if TASK_COUNT in totals[t.name] else v / n for m, v in sums.items()}
    stacked = np.ndim(count) != 0  # seeds trained together (jmtl.training.seeds): a leading seed axis
    results = (
        [jax.tree.map(lambda v: float(v[s]), means) for s in range(len(count))]
        if stacked
        else [jax.tree.map(float, means)]
    )
    for s, res in enumerate(results):
        for t in tasks:
            for acc in t.accumulated_metrics:
                stats = accumulated[t.name][acc.name]
                res[t.name].update(acc.finalize(jax.tree.map(lambda v: v[s], stats) if stacked else stats))
    return results if stacked else results[0]


def selection_score(metrics: Mapping[str, Mapping[str, float]], tasks: Sequence[Task]) -> float:
    """Scalar used to pick the best validation checkpoint (higher is better).

    Mean over tasks of the main metric, with lower-is-better metrics entered as ``-log(m)`` so that
    tasks on different scales (regression MSEs) count by relative change.
    """
    vals = []
    for t in tasks:
        m = metrics[t.name][t.main_metric.name]
        vals.append(m if t.main_metric.higher_is_better else -math.log(max(m, 1e-12)))
    return float(np.mean(vals))


def make_eval_step(
    model: nn.Module, tasks: Sequence[Task], config: StepConfig = StepConfig(), *, axis_name: Optional[str] = None
) -> Callable[[PyTree, dict], dict]:
    """Per-device ``(params, local_batch) -> {task: {metric: sum}, 'count': n}`` summed over devices.

    The batch may carry ``'mask'`` (1 for real examples, 0 for padding) so any split size works.
    A task with ``accumulated_metrics`` (the pixel kinds) contributes, instead of per-example
    metric sums, its sufficient statistics under ``ACCUMULATED`` (confusion matrix, error sums,
    angle histogram), which :func:`evaluate` sums over the split and finalises once.
    """
    tasks = tuple(tasks)
    apply = mixed_precision_apply(model.apply, config.compute_dtype)

    def step(params: PyTree, batch: dict) -> dict:
        outputs = apply({"params": params}, config.model_input(batch), train=False)
        mask = batch.get("mask")
        if mask is None:
            mask = jnp.ones((jax.tree.leaves(batch[config.input_key])[0].shape[0],), jnp.float32)
        sums = {}
        for t in tasks:
            if t.accumulated_metrics:
                weights, labels = mask, batch[t.label_key]
                if t.mask_key in batch:
                    weights = mask * batch[t.mask_key].astype(mask.dtype)
                    labels = t.safe_labels(labels, batch[t.mask_key])
                sums[t.name] = {
                    ACCUMULATED: {a.name: a.stats(outputs[t.name], labels, weights) for a in t.accumulated_metrics}
                }
                continue
            if t.mask_key in batch:  # missing labels: the task's means run over its labelled examples
                task_mask = mask * batch[t.mask_key].astype(mask.dtype)
                labels = tasks_lib.safe_labels(batch[t.label_key], batch[t.mask_key])
                sums[t.name] = {
                    m.name: jnp.sum(jnp.where(task_mask > 0, m.fn(outputs[t.name], labels), 0)) for m in t.metrics
                }
                sums[t.name][TASK_COUNT] = jnp.sum(task_mask)
            else:
                sums[t.name] = {m.name: jnp.sum(m.fn(outputs[t.name], batch[t.label_key]) * mask) for m in t.metrics}
        sums["count"] = jnp.sum(mask)
        if axis_name is not None:
            sums = jax.lax.psum(sums, axis_name)
        return sums

    return step


def make_predict(model: nn.Module, config: StepConfig = StepConfig()) -> Callable[[PyTree, Any], dict]:
    """A jitted ``(params, batch) -> {task: output}`` in eval mode (for split-level metrics)."""
    apply = mixed_precision_apply(model.apply, config.compute_dtype)
    return jax.jit(lambda params, batch: apply({"params": params}, config.model_input(batch), train=False))


def predict_split_metrics(
    predict: Callable[[PyTree, Any], dict],
    params: PyTree,
    arrays: Mapping[str, np.ndarray],
    tasks: Sequence[Task],
    *,
    batch_size: int,
) -> dict[str, dict[str, float]]:
    """Metrics that are not means of per-example values (``Task.split_metrics``, e.g. ROC AUC): the
    outputs gathered over the whole split, then :func:`jmtl.metrics.split_level_metrics` (masked rows
    left out): ``{task: {metric: value}}``.

    Args:
      predict: ``(params, batch) -> {task: output}`` (see :func:`make_predict`).
      params: one model's params (not replicated, no seed axis).
      arrays: the split's arrays (input and labels, optional ``<label>_mask`` entries).
      tasks: the tasks; those without ``split_metrics`` are skipped.
      batch_size: examples per forward pass.
    """
    wanted = [t for t in tasks if t.split_metrics]
    if not wanted:
        return {}
    outputs: dict[str, list] = {t.name: [] for t in wanted}
    n = len(jax.tree.leaves(arrays)[0])
    for start in range(0, n, batch_size):
        batch = jax.tree.map(lambda v: v[start : start + batch_size], dict(arrays))
        out = jax.device_get(predict(params, batch))
        for t in wanted:
            outputs[t.name].append(np.asarray(out[t.name]))
    return metrics_lib.split_level_metrics(wanted, {k: np.concatenate(v) for k, v in outputs.items()}, arrays)
