"""Split-level scores (jmtl.metrics.scores) against brute force / float64 references, and the
``binary`` task kind of jmtl.tasks."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from jmtl import metrics, tasks
from jmtl.data import pipeline


def brute_auc(scores, labels) -> float:
    """Counts every (positive, negative) pair: 1 if the positive scores higher, 1/2 on a tie."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(6))
def test_auc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    # Few distinct values, so many positive/negative ties.
    scores = rng.integers(0, int(rng.integers(1, 8)), n).astype(np.float64) + rng.choice([0.0, 0.5], n)
    labels = rng.random(n) < rng.uniform(0.1, 0.9)
    labels[0], labels[-1] = True, False  # both classes present
    assert metrics.binary_auc(scores, labels) == pytest.approx(brute_auc(scores, labels), abs=1e-12)


def test_auc_label_and_shape_forms_agree():
    rng = np.random.default_rng(7)
    s = rng.normal(size=200).round(1)
    y = rng.random(200) < 0.3
    ref = brute_auc(s, y)
    for labels in (y, y.astype(np.int32), y.astype(np.float32)):
        assert metrics.binary_auc(s, labels) == pytest.approx(ref, abs=1e-12)
    assert metrics.binary_auc(s[:, None], y) == pytest.approx(ref, abs=1e-12)  # [N, 1] head output
    # Invariances: a strictly increasing transform changes nothing; negating flips the AUC.
    assert metrics.binary_auc(1 / (1 + np.exp(-s)), y) == pytest.approx(ref, abs=1e-12)
    assert metrics.binary_auc(-s, y) == pytest.approx(1 - ref, abs=1e-12)


def test_auc_extremes():
    y = np.array([0, 0, 1, 1])
    assert metrics.binary_auc([0.1, 0.2, 0.3, 0.4], y) == 1.0
    assert metrics.binary_auc([0.4, 0.3, 0.2, 0.1], y) == 0.0
    assert metrics.binary_auc([1.0, 1.0, 1.0, 1.0], y) == 0.5


@pytest.mark.parametrize(
    "scores, labels, match",
    [
        ([0.1, 0.2], [1, 1], "both classes"),
        ([0.1, 0.2], [0, 2], "labels must be 0 or 1"),
        ([0.1, np.nan], [0, 1], "finite"),
        ([0.1, 0.2, 0.3], [0, 1], "3 scores but 2 labels"),
        (np.zeros((3, 2)), [0, 1, 1], "one value per example"),
    ],
)
def test_auc_bad_input(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        metrics.binary_auc(scores, labels)


def test_explained_variance_reference():
    rng = np.random.default_rng(0)
    y = rng.normal(3.0, 2.0, 500)
    f = y + rng.normal(0, 1.0, 500)
    ref = 1 - np.sum((y - f) ** 2) / np.sum((y - y.mean()) ** 2)
    assert metrics.explained_variance(y, f) == pytest.approx(ref, rel=1e-12)
    assert metrics.explained_variance(y, y) == 1.0
    assert metrics.explained_variance(y, np.full_like(y, y.mean())) == pytest.approx(0.0, abs=1e-12)
    # A constant bias c costs c^2 / Var(y) (the papers' 1 - MSE/Var, not 1 - Var(residual)/Var).
    assert metrics.explained_variance(y, y + 0.5) == pytest.approx(1 - 0.25 / y.var(), rel=1e-12)


def test_explained_variance_pools_tasks():
    rng = np.random.default_rng(1)
    ys = [rng.normal(m, 1.0, n) for m, n in ((0.0, 5), (4.0, 40), (-2.0, 17))]
    fs = [y + rng.normal(0, 0.7, len(y)) for y in ys]
    pooled = metrics.explained_variance(np.concatenate(ys), np.concatenate(fs))
    assert metrics.explained_variance(ys, fs) == pytest.approx(pooled, rel=1e-12)
    # Pooling is not the mean of per-task scores (different task means inflate the total variance).
    per_task = np.mean([metrics.explained_variance(y, f) for y, f in zip(ys, fs)])
    assert abs(per_task - pooled) > 1e-3


def test_explained_variance_bad_input():
    with pytest.raises(ValueError, match="zero variance"):
        metrics.explained_variance([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.explained_variance([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        metrics.explained_variance([1.0, 2.0], [1.0, np.inf])


def test_mae_original_units():
    rng = np.random.default_rng(2)
    original = rng.normal([10.0, -3.0, 500.0], [2.0, 0.1, 80.0], size=(300, 3))
    mean, std = original.mean(0), original.std(0)
    pred_original = original + rng.normal(0, [0.5, 0.02, 10.0], size=original.shape)
    # The model sees standardised values; the score must be in the original units.
    got = metrics.mae_original_units((pred_original - mean) / std, (original - mean) / std, mean, std)
    np.testing.assert_allclose(got, np.abs(pred_original - original).mean(0), rtol=1e-10)
    one = metrics.mae_original_units(
        (pred_original[:, 0] - mean[0]) / std[0], (original[:, 0] - mean[0]) / std[0], mean[0], std[0]
    )
    assert isinstance(one, float) and one == pytest.approx(
        np.abs(pred_original[:, 0] - original[:, 0]).mean(), rel=1e-10
    )
    with pytest.raises(ValueError, match="positive"):
        metrics.mae_original_units(np.zeros(3), np.zeros(3), 0.0, 0.0)
    with pytest.raises(ValueError, match="per column"):
        metrics.destandardize(np.zeros((3, 2)), np.zeros(3), np.ones(3))


# ----------------------------------------------------------------------------- binary task kind


def test_binary_task_loss_accuracy_auc():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, size=(64, 1)).astype(np.float32)
    labels = (rng.random(64) < 0.4).astype(np.int32)
    task = tasks.Task("income", tasks.BINARY, 1)
    z, y = logits[:, 0].astype(np.float64), labels.astype(np.float64)
    p = 1 / (1 + np.exp(-z))
    ref_loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    np.testing.assert_allclose(
        np.asarray(task.loss(jnp.asarray(logits), jnp.asarray(labels))), ref_loss, rtol=1e-5, atol=1e-6
    )
    acc = {m.name: m for m in task.metrics}["accuracy"]
    np.testing.assert_array_equal(np.asarray(acc.fn(jnp.asarray(logits), jnp.asarray(labels))), (z > 0) == (y == 1))
    assert task.main_metric.name == "accuracy" and task.main_metric.higher_is_better
    (auc,) = task.split_metrics
    assert auc.name == "auc" and auc.higher_is_better
    assert auc.fn(logits, labels) == pytest.approx(brute_auc(z, labels == 1), abs=1e-12)
    assert tasks.Task("t", tasks.REGRESSION, 1).split_metrics == ()


def test_binary_task_from_spec_and_label_check():
    spec = pipeline.DatasetSpec(
        name="d",
        input_key="x",
        input_shape=(3,),
        labels={"a": pipeline.LabelSpec("a", "binary", None, ())},
        split_sizes={"train": 1},
    )
    (task,) = tasks.tasks_from_config({}, spec)
    assert task.kind == tasks.BINARY and task.num_outputs == 1
    tasks.check_labels([task], {"a": np.array([0, 1, 1])})
    with pytest.raises(ValueError, match="must be 0 or 1"):
        tasks.check_labels([task], {"a": np.array([0, 2])})
    with pytest.raises(ValueError, match="one logit"):
        tasks.Task("t", tasks.BINARY, 2)


def test_split_level_metrics_over_tasks():
    rng = np.random.default_rng(5)
    ts = [
        tasks.Task("a", tasks.BINARY, 1),
        tasks.Task("r", tasks.REGRESSION, 1),
        tasks.Task("b", tasks.BINARY, 1, label_key="yb"),
    ]
    outputs = {"a": rng.normal(size=(30, 1)), "r": rng.normal(size=(30, 1)), "b": rng.normal(size=(30, 1))}
    batch = {"a": rng.integers(0, 2, 30), "r": rng.normal(size=30), "yb": rng.integers(0, 2, 30)}
    batch["a"][:2], batch["yb"][:2] = [0, 1], [0, 1]
    got = metrics.split_level_metrics(ts, outputs, batch)
    assert set(got) == {"a", "b"}
    assert got["a"]["auc"] == pytest.approx(brute_auc(outputs["a"][:, 0], batch["a"] == 1), abs=1e-12)
    assert got["b"]["auc"] == pytest.approx(brute_auc(outputs["b"][:, 0], batch["yb"] == 1), abs=1e-12)
    with pytest.raises(ValueError, match="padding"):
        metrics.split_level_metrics(ts, {**outputs, "a": outputs["a"][:29]}, batch)


def test_split_level_metrics_leave_masked_rows_out():
    """The loop's evaluator (``evaluate.predict_split_metrics``) scores through this one function, so
    a task's ``<label>_mask`` must be honoured here: the AUC is that of the labelled rows only."""
    rng = np.random.default_rng(6)
    t = tasks.Task("a", tasks.BINARY, 1)
    f, y = rng.normal(size=(40, 1)), rng.integers(0, 2, 40)
    y[:2] = [0, 1]
    mask = (rng.random(40) > 0.3).astype(np.float32)
    mask[:2] = 1
    got = metrics.split_level_metrics([t], {"a": f}, {"a": y, t.mask_key: mask})
    keep = mask > 0
    assert got["a"]["auc"] == pytest.approx(brute_auc(f[keep, 0], y[keep] == 1), abs=1e-12)
    assert got["a"]["auc"] != pytest.approx(brute_auc(f[:, 0], y == 1), abs=1e-9)  # the mask matters here
