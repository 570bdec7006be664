"""The split-level binary F1 (jmtl.metrics.binary_f1 / binary_f1_counts / f1_from_counts) and a
task's ``metric='f1'`` (FAMO's CelebA protocol, Liu et al. 2023, ``experiments/celeba/trainer.py``):
prediction logit > 0, TP / FP / FN counted over the whole split, F1 = 2 TP / (2 TP + FP + FN),
0 when nothing is predicted or present; selection on the mean validation F1."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from jmtl import metrics, tasks
from jmtl.data import pipeline
from jmtl.training import evaluate, loop, parallel
from jmtl.training.step import StepConfig


def brute_f1(logits, labels) -> float:
    """One example at a time: precision and recall as the textbook writes them, 0 when undefined."""
    tp = fp = fn = 0
    for z, y in zip(np.asarray(logits, np.float64).tolist(), np.asarray(labels).tolist()):
        pred = z > 0
        tp += pred and y == 1
        fp += pred and y == 0
        fn += (not pred) and y == 1
    if tp == 0:
        return 0.0  # precision or recall is 0 (or 0/0): F1 = 0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall)


def test_f1_counts_over_batches_masks_and_attributes_match_brute_force():
    """K attributes, a split cut in uneven batches, unlabelled rows: the counts summed over the
    batches give each attribute's F1 over its labelled rows, as counted one example at a time.
    Column 3 has no positive and no positive prediction (0/0): F1 0."""
    rng = np.random.default_rng(0)
    n, k = 53, 4
    logits = rng.normal(size=(n, k))
    labels = (rng.random((n, k)) < [0.3, 0.5, 0.8, 0.0]).astype(np.int32)
    logits[:, 3] = -np.abs(logits[:, 3]) - 0.1
    mask = (rng.random((n, k)) > 0.25).astype(np.float32)
    total = np.zeros((k, 3), np.int64)
    for start, stop in ((0, 7), (7, 30), (30, 31), (31, n)):
        for j in range(k):
            keep = mask[start:stop, j] > 0
            total[j] += metrics.binary_f1_counts(logits[start:stop, j][keep], labels[start:stop, j][keep])
    got = metrics.f1_from_counts(total)
    want = [brute_f1(logits[mask[:, j] > 0, j], labels[mask[:, j] > 0, j]) for j in range(k)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[3] == 0.0 and total[3].tolist() == [0, 0, 0] and 0 < got[:3].min()
    # [N, K] at once counts each column; the [N] form and the float form agree.
    np.testing.assert_array_equal(
        metrics.binary_f1_counts(logits, labels)[1], metrics.binary_f1_counts(logits[:, 1], labels[:, 1])
    )
    assert metrics.binary_f1(logits[:, 0:1], labels[:, 0]) == pytest.approx(
        brute_f1(logits[:, 0], labels[:, 0]), abs=1e-15
    )


def test_f1_hand_worked_and_conventions():
    assert metrics.f1_from_counts([0, 0, 0]) == 0.0  # nothing predicted, nothing present
    assert metrics.f1_from_counts([0, 3, 0]) == 0.0 and metrics.f1_from_counts([0, 0, 2]) == 0.0
    assert metrics.f1_from_counts([3, 1, 2]) == pytest.approx(6 / 9)  # P = 3/4, R = 3/5: 2PR/(P+R) = 2/3
    assert metrics.binary_f1([2.0, 1.0, -1.0, -3.0], [1, 1, 0, 0]) == 1.0
    # Prediction is logit > 0 (sigmoid > 0.5): a logit of exactly 0 is a negative.
    assert metrics.binary_f1([0.0, 1.0], [1, 1]) == pytest.approx(2 / 3)
    assert metrics.binary_f1([0.6, 0.4], [1, 1], threshold=0.5) == pytest.approx(2 / 3)  # probabilities
    for bad, match in [
        (([np.nan, 1.0], [0, 1]), "finite"),
        (([1.0, 1.0], [0, 2]), "0 or 1"),
        (([1.0, 1.0, 1.0], [0, 1]), "must be equal"),
    ]:
        with pytest.raises(ValueError, match=match):
            metrics.binary_f1(*bad)
    with pytest.raises(ValueError, match="non-negative"):
        metrics.f1_from_counts([1, -1, 0])


class _Pass(nn.Module):
    """Outputs the inputs as logits, times a per-seed scale: task ``t<j>``'s logit is ``s * x[:, j]``."""

    names: tuple[str, ...]

    @nn.compact
    def __call__(self, x, train: bool = False):
        s = self.param("scale", nn.initializers.ones, ())
        return {n: s * x[:, j : j + 1] for j, n in enumerate(self.names)}


def test_loop_evaluator_f1_is_split_level_not_a_mean_of_batches_per_seed():
    """The loop's evaluator, batch size 2 on a 6-row split, two seeds trained together. Hand-worked,
    task ``a`` (labels all 1, the 5th row unlabelled): logits +1 -1 | -1 -1 | (+1) +1 give batch F1s
    2/3, 0, 1 (mean 5/9) but the split's TP 2, FN 3: F1 4/7. The second seed's scale -1 flips every
    prediction: TP 3, FN 2, F1 3/4. Task ``b`` (one positive, row 6): seed 0 predicts only row 3
    (TP 0: F1 0), seed 1 all rows but row 3 (TP 1, FP 4: F1 1/3). Task ``c`` has no positive: seed 0
    predicts none (2 TP + FP + FN = 0: F1 0, not an error), seed 1 all (FP 6: F1 0). Selection: the
    mean F1 over the tasks."""
    names = ("a", "b", "c")
    x = np.array([[1, -1, -1], [-1, -1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1], [1, -1, -1]], np.float32)
    arrays = {
        "x": x,
        "a": np.ones(6, np.int32),
        "a_mask": np.array([1, 1, 1, 1, 0, 1], np.float32),
        "b": np.array([0, 0, 0, 0, 0, 1], np.int32),
        "c": np.zeros(6, np.int32),
    }
    ts = tuple(tasks.Task(n, tasks.BINARY, 1, metric="f1") for n in names)
    assert all(t.main_metric.name == "f1" and t.main_metric.higher_is_better for t in ts)
    ev = loop.InMemoryEvaluator(
        {"validation": arrays, "test": arrays},
        ts,
        StepConfig(input_key="x"),
        _Pass(names),
        2,
        parallel.Driver("single"),
        loop.SeedAxis(0, 2),
    )
    results = ev({"scale": jnp.array([1.0, -1.0])}, ("validation", "test"))
    val = [r["validation"] for r in results]
    assert val[0]["a"]["f1"] == pytest.approx(4 / 7) and val[1]["a"]["f1"] == pytest.approx(3 / 4)
    assert val[0]["b"]["f1"] == 0.0 and val[1]["b"]["f1"] == pytest.approx(1 / 3)
    assert val[0]["c"]["f1"] == 0.0 and val[1]["c"]["f1"] == 0.0
    keep = arrays["a_mask"] > 0
    for v, sign in zip(val, (1, -1)):  # against the one-example-at-a-time count
        assert v["a"]["f1"] == pytest.approx(brute_f1(sign * x[keep, 0], arrays["a"][keep]), abs=1e-15)
        assert v["b"]["f1"] == pytest.approx(brute_f1(sign * x[:, 1], arrays["b"]), abs=1e-15)
    batch_f1s = [brute_f1(x[i : i + 2, 0][keep[i : i + 2]], arrays["a"][i : i + 2][keep[i : i + 2]]) for i in (0, 2, 4)]
    assert np.mean(batch_f1s) == pytest.approx(5 / 9) and val[0]["a"]["f1"] != pytest.approx(np.mean(batch_f1s))
    # Selection reads the mean over tasks of the validation F1s (FAMO's val_f1.mean()).
    assert [ev.score(v) for v in val] == pytest.approx([(4 / 7 + 0 + 0) / 3, (3 / 4 + 1 / 3 + 0) / 3])
    assert evaluate.selection_score(val[1], ts) == pytest.approx(13 / 36)
    assert results[1]["test"] == val[1]  # the test split is scored the same way


def test_task_metric_field_and_config_defaults():
    spec = pipeline.DatasetSpec(
        name="d",
        input_key="x",
        input_shape=(3,),
        labels={n: pipeline.LabelSpec(n, "binary", None, ()) for n in ("a", "b")},
        split_sizes={"train": 1},
    )
    plain = tasks.tasks_from_config({}, spec)
    assert [t.main_metric.name for t in plain] == ["accuracy"] * 2
    assert all(set(t.metric_directions) == {"accuracy", "loss", "auc"} for t in plain)  # no F1 unless asked
    f1 = tasks.tasks_from_config({"*": {"metric": "f1"}}, spec)  # every label, each with metric f1
    assert [t.name for t in f1] == ["a", "b"] and [t.main_metric.name for t in f1] == ["f1", "f1"]
    assert [m.name for m in f1[0].split_metrics] == ["f1"]  # instead of the AUC (FAMO reports F1 alone)
    assert f1[0].metric_directions == {"accuracy": True, "loss": False, "f1": True}
    mixed = tasks.tasks_from_config({"*": {"metric": "f1"}, "b": {"metric": "auc", "weight": 2.0}}, spec)
    assert [(t.name, t.metric, t.weight) for t in mixed] == [("b", "auc", 2.0)]  # '*' alone means every label
    with pytest.raises(ValueError, match="every task would read that one label"):
        tasks.tasks_from_config({"*": {"label": "a"}}, spec)
    with pytest.raises(ValueError, match="valid: label, weight, metric"):
        tasks.tasks_from_config({"a": {"metrc": "f1"}}, spec)
    with pytest.raises(ValueError, match="metric 'f1' is not one it reports; valid: mse, mae"):
        tasks.Task("r", tasks.REGRESSION, 1, metric="f1")
    assert tasks.Task("s", tasks.SEGMENTATION, 3, metric="pixel_accuracy").main_metric.name == "pixel_accuracy"


def test_ablation_single_task_cells_keep_the_task_defaults():
    """An ablation's single-task baselines of a '*' config (CelebA) are reported by the same metric."""
    from experiments.configs import celeba
    from jmtl.drivers import ablation

    cells = dict(ablation.grid(celeba.get_config(None), ["equal"], ["hps"], ["smiling"], 1, True))
    assert cells["single_task__smiling"].tasks.to_dict() == {"smiling": {"label": "smiling"}, "*": {"metric": "f1"}}
