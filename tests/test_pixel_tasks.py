"""Dense (per-pixel) task kinds: segmentation, depth, surface normals.

Truth: hand-worked small images, and a float64 numpy brute force of LibMTL's definitions
(``examples/nyu/utils.py``: pixel-pooled losses, the split's confusion matrix, angle errors of every
valid pixel of the split) written independently of jmtl's code (arccos where jmtl uses atan2,
explicit loops for the confusion matrix, ``np.median`` on all angles where jmtl uses a histogram).
"""

from __future__ import annotations

import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmtl import weighting
from jmtl.metrics import mtl as mtl_metrics
from jmtl.metrics import pixel
from jmtl.tasks import Task
from jmtl.training import evaluate
from jmtl.training import step as step_lib

# Values, not speed: the programs compile without XLA's optimisation passes (conftest's
# xla_optimizations_off; this file's compile-bound tests took ~0.6x the time in one measured run).
pytestmark = pytest.mark.usefixtures("xla_optimizations_off")


C = 3  # segmentation classes
TASKS = (Task("seg", "segmentation", C), Task("depth", "depth", 1), Task("normal", "normal", 3))


# --------------------------------------------------------------------------- numpy brute force (float64)


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_segmentation(logits, labels, num_classes=C):
    labels = np.asarray(labels)
    pred = np.asarray(logits).argmax(-1)
    valid = labels >= 0
    conf = np.zeros((num_classes, num_classes))
    for g, p in zip(labels[valid], pred[valid]):
        conf[g, p] += 1
    ious = [
        conf[c, c] / (conf[c].sum() + conf[:, c].sum() - conf[c, c])
        for c in range(num_classes)
        if conf[c].sum() + conf[:, c].sum() > 0
    ]
    ce = -np.take_along_axis(np_log_softmax(logits), np.maximum(labels, 0)[..., None], -1)[..., 0]
    return {"miou": np.mean(ious), "pixel_accuracy": np.trace(conf) / conf.sum(), "loss": ce[valid].mean()}


def np_depth(pred, labels):
    pred, labels = np.asarray(pred, np.float64)[..., 0], np.asarray(labels, np.float64)[..., 0]
    valid = labels != 0
    err = np.abs(pred - labels)[valid]
    return {"abs_err": err.mean(), "rel_err": (err / labels[valid]).mean(), "loss": err.mean()}


def np_normal(pred, labels):
    pred, labels = np.asarray(pred, np.float64), np.asarray(labels, np.float64)
    valid = np.any(labels != 0, -1)
    n = pred[valid] / np.linalg.norm(pred[valid], axis=-1, keepdims=True)
    cos = np.sum(n * labels[valid], -1)
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    return {
        "mean_angle": angle.mean(),
        "median_angle": np.median(angle),
        "within_11_25": np.mean(angle < 11.25),
        "within_22_5": np.mean(angle < 22.5),
        "within_30": np.mean(angle < 30),
        "loss": 1 - cos.mean(),
    }


BRUTE = {"seg": np_segmentation, "depth": np_depth, "normal": np_normal}


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def random_split(n=7, h=4, w=5, seed=0):
    """A split whose images differ in their number of valid pixels (so batch means are wrong)."""
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, C, size=(n, h, w)).astype(np.int32)
    seg[rng.random((n, h, w)) < np.linspace(0.05, 0.9, n)[:, None, None]] = -1
    depth = rng.uniform(0.5, 5.0, size=(n, h, w, 1)).astype(np.float32)
    depth[rng.random((n, h, w)) < np.linspace(0.8, 0.0, n)[:, None, None]] = 0
    normal = _unit(rng.normal(size=(n, h, w, 3))).astype(np.float32)
    normal[rng.random((n, h, w)) < np.linspace(0.0, 0.7, n)[:, None, None]] = 0
    # predictions: the input channels of the model below; normals near the label (small angles) and random
    seg_logits = rng.normal(size=(n, h, w, C)).astype(np.float32)
    depth_pred = (depth + rng.normal(scale=0.5, size=depth.shape)).astype(np.float32)
    normal_pred = (
        np.where(
            rng.random((n, h, w, 1)) < 0.5,
            normal + rng.normal(scale=0.2, size=normal.shape),
            rng.normal(size=normal.shape),
        ).astype(np.float32)
        * 3.0
    )
    image = np.concatenate([seg_logits, depth_pred, normal_pred], -1)
    return {"image": image, "seg": seg, "depth": depth, "normal": normal}


class Slices(nn.Module):
    """Outputs are slices of the input: the predictions are chosen by the test."""

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        return {"seg": x[..., :C], "depth": x[..., C : C + 1], "normal": x[..., C + 1 : C + 4]}


def _brute_split(arrays, keep=None):
    keep = np.ones(len(arrays["image"]), bool) if keep is None else keep
    x = arrays["image"]
    preds = {"seg": x[..., :C], "depth": x[..., C : C + 1], "normal": x[..., C + 1 : C + 4]}
    out = {}
    for t in TASKS:
        k = keep if t.name != "depth" else keep & (arrays.get("depth_mask", np.ones(len(x))) > 0)
        out[t.name] = BRUTE[t.name](preds[t.name][k], arrays[t.name][k])
    return out


def _finalized(task, outputs, labels):
    (acc,) = task.accumulated_metrics
    stats = jax.tree.map(np.asarray, acc.stats(jnp.asarray(outputs), jnp.asarray(labels), jnp.ones(len(labels))))
    return acc.finalize(stats)


# --------------------------------------------------------------------------- hand-worked images


def test_segmentation_metrics_on_a_hand_worked_image():
    labels = np.array([[[0, 0, 1], [1, 2, -1]]], np.int32)
    pred = np.array([[[0, 1, 1], [1, 1, 2]]])
    logits = np.eye(C, dtype=np.float32)[pred] * 5.0
    got = _finalized(TASKS[0], logits, labels)
    # confusion (rows label, columns prediction): [[1,1,0],[0,2,0],[0,1,0]]; IoU 1/2, 2/4, 0/1
    assert got["miou"] == pytest.approx(1 / 3)
    assert got["pixel_accuracy"] == pytest.approx(3 / 5)
    # the ignored pixel (label -1, predicted 2) counts nowhere; its loss does not either
    ce = -np_log_softmax(logits)[0]
    want_loss = np.mean([ce[0, 0, 0], ce[0, 1, 0], ce[0, 2, 1], ce[1, 0, 1], ce[1, 1, 2]])
    assert got["loss"] == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(
        np.mean(np.asarray(TASKS[0].loss(jnp.asarray(logits), jnp.asarray(labels)))), want_loss, rtol=1e-5
    )


def test_depth_metrics_on_a_hand_worked_image():
    labels = np.array([[[2.0, 0.0], [4.0, 1.0]]], np.float32)[..., None]
    pred = np.array([[[1.0, 5.0], [5.0, 1.0]]], np.float32)[..., None]
    got = _finalized(TASKS[1], pred, labels)
    # valid pixels 3 (the 0 is no measurement): |err| 1, 1, 0; relative 1/2, 1/4, 0
    assert got["abs_err"] == pytest.approx(2 / 3) and got["rel_err"] == pytest.approx(0.25)
    np.testing.assert_allclose(
        np.mean(np.asarray(TASKS[1].loss(jnp.asarray(pred), jnp.asarray(labels)))), 2 / 3, rtol=1e-6
    )


def test_normal_metrics_on_a_hand_worked_image():
    labels = np.array([[[[0, 0, 1], [0, 0, 0], [1, 0, 0]]]], np.float32)
    pred = np.array([[[[0, 0, 2], [7, 7, 7], [1, 1, 0]]]], np.float32)  # 0 degrees, invalid, 45 degrees
    got = _finalized(TASKS[2], pred, labels)
    assert got["mean_angle"] == pytest.approx(22.5, abs=1e-4)
    assert got["median_angle"] == pytest.approx(22.5, abs=pixel.ANGLE_BIN_DEGREES)
    assert (got["within_11_25"], got["within_22_5"], got["within_30"]) == (0.5, 0.5, 0.5)
    want_loss = 1 - (1 + np.sqrt(0.5)) / 2
    assert got["loss"] == pytest.approx(want_loss, rel=1e-5)
    np.testing.assert_allclose(
        np.mean(np.asarray(TASKS[2].loss(jnp.asarray(pred), jnp.asarray(labels)))), want_loss, rtol=1e-5
    )


def test_a_batch_without_valid_pixels_gives_zero_loss_and_finite_gradients():
    for t, shape, labels in (
        (TASKS[0], (2, 3, 3, C), -np.ones((2, 3, 3), np.int32)),
        (TASKS[1], (2, 3, 3, 1), np.zeros((2, 3, 3, 1), np.float32)),
        (TASKS[2], (2, 3, 3, 3), np.zeros((2, 3, 3, 3), np.float32)),
    ):
        g = jax.grad(lambda p, t=t, labels=labels: jnp.mean(t.loss(p, labels)))(jnp.zeros(shape))
        assert np.all(np.isfinite(np.asarray(g))) and float(jnp.mean(t.loss(jnp.zeros(shape), labels))) == 0.0


# --------------------------------------------------------------------------- whole split, several batches, devices


@functools.lru_cache(maxsize=None)
def _eval_fn(num_devices):
    step = evaluate.make_eval_step(Slices(), TASKS, step_lib.StepConfig(input_key="image"), axis_name="d")
    return jax.jit(jax.vmap(step, axis_name="d", in_axes=(None, 0)))


def _evaluate(arrays, batch_size, num_devices):
    shard = lambda b: jax.tree.map(lambda v: np.asarray(v).reshape((num_devices, -1) + np.shape(v)[1:]), b)
    return evaluate.evaluate(
        _eval_fn(num_devices),
        {},
        arrays,
        TASKS,
        driver=types.SimpleNamespace(
            shard_batch=shard,
            num_devices=num_devices,
            process_index=0,
            process_count=1,
            unreplicate=lambda s: jax.tree.map(lambda v: v[0], s),
        ),
        batch_size=batch_size,
    )


@pytest.mark.parametrize("num_devices", [1, 2])
def test_split_metrics_accumulate_over_batches_and_devices(num_devices):
    arrays = random_split()
    want = _brute_split(arrays)
    got = _evaluate(arrays, batch_size=4, num_devices=num_devices)  # 2 batches, the last one padded
    for task, metrics in want.items():
        for name, value in metrics.items():
            tol = pixel.ANGLE_BIN_DEGREES if name == "median_angle" else 1e-5 * max(1.0, abs(value))
            assert got[task][name] == pytest.approx(value, abs=tol), (task, name)
    # the data tells a whole-split metric from a mean of batch means (what the test guards against)
    batches = [slice(0, 4), slice(4, 7)]
    per_batch = [_brute_split({k: v[s] for k, v in arrays.items()}) for s in batches]
    for task, name in (("seg", "miou"), ("depth", "abs_err"), ("normal", "mean_angle"), ("normal", "median_angle")):
        batch_mean = np.mean([b[task][name] for b in per_batch])
        assert abs(batch_mean - want[task][name]) > 10 * pixel.ANGLE_BIN_DEGREES * (name == "median_angle") + 1e-3, (
            task,
            name,
        )


def test_missing_label_masks_in_evaluation_count_labelled_examples_only():
    arrays = random_split(seed=1)
    mask = np.array([1, 0, 1, 1, 0, 1, 0], np.float32)
    arrays["depth_mask"] = mask
    arrays["depth"] = np.where(mask[:, None, None, None] > 0, arrays["depth"], np.nan).astype(np.float32)
    got = _evaluate(arrays, batch_size=4, num_devices=1)
    want = _brute_split(arrays)
    for name, value in want["depth"].items():
        assert got["depth"][name] == pytest.approx(value, rel=1e-5), name
    assert got["seg"]["miou"] == pytest.approx(want["seg"]["miou"], rel=1e-6)


def test_median_within_one_bin_of_numpy_on_many_angles():
    rng = np.random.default_rng(3)
    for n in (1, 2, 101, 1000):
        angles = rng.uniform(0, 90, size=n)
        hist, _ = np.histogram(angles, bins=pixel.ANGLE_BINS, range=(0, 180))
        assert abs(pixel.histogram_median(hist) - np.median(angles)) <= pixel.ANGLE_BIN_DEGREES


def test_directions_are_known_to_delta_m():
    for t in TASKS:
        for name, hib in t.metric_directions.items():
            assert mtl_metrics.METRIC_DIRECTIONS[name] == hib, (t.kind, name)
    base = {
        "seg": {"miou": 0.4, "pixel_accuracy": 0.6},
        "depth": {"abs_err": 0.5, "rel_err": 0.2},
        "normal": {"mean_angle": 20.0, "within_11_25": 0.3},
    }
    better = {
        "seg": {"miou": 0.44, "pixel_accuracy": 0.66},
        "depth": {"abs_err": 0.45, "rel_err": 0.18},
        "normal": {"mean_angle": 18.0, "within_11_25": 0.33},
    }
    assert mtl_metrics.delta_m_table(better, base) == pytest.approx(-10.0)
    with pytest.raises(ValueError, match="directions="):
        mtl_metrics.delta_m_table(better, {"seg": {"weird": 1.0}})


def test_bad_pixel_labels_are_refused_by_name():
    from jmtl.tasks import check_labels

    with pytest.raises(ValueError, match="seg.*valid labels 0..2"):
        check_labels(TASKS[:1], {"seg": np.full((1, 2, 2), 3, np.int32)})
    check_labels(TASKS[:1], {"seg": np.full((1, 2, 2), -1, np.int32)})
    with pytest.raises(ValueError, match="NaN or inf.*Fix"):
        check_labels(TASKS[1:2], {"depth": np.full((1, 2, 2, 1), np.nan, np.float32)})
    with pytest.raises(ValueError, match="num_outputs=3"):
        Task("n", "normal", 1)


# --------------------------------------------------------------------------- training: every gradient path


class TinyConv(nn.Module):
    """A shared conv encoder and one conv head per pixel task; declares the fast paths' capabilities."""

    separable: bool = True

    def setup(self):
        self.enc = nn.Conv(4, (3, 3), name="shared")
        self.heads = {"seg": nn.Conv(C, (1, 1)), "depth": nn.Conv(1, (1, 1)), "normal": nn.Conv(3, (1, 1))}

    @property
    def separable_heads(self) -> bool:
        return self.separable

    def encode(self, x, *, train=False):
        return nn.tanh(self.enc(x))

    def decode(self, rep, *, train=False):
        return {k: h(rep) for k, h in self.heads.items()}

    def decode_split(self, reps, *, train=False):
        return {k: h(r) for (k, h), r in zip(self.heads.items(), reps)}

    def __call__(self, x, *, train=False):
        return self.decode(self.encode(x, train=train), train=train)


def _train_batch(n=4, seed=2):
    arrays = random_split(n=n, h=5, w=6, seed=seed)
    rng = np.random.default_rng(seed)
    arrays["image"] = rng.normal(size=(n, 5, 6, 3)).astype(np.float32)
    return arrays


def reference_losses(model, params, batch, depth_keep=None):
    """LibMTL's pooled batch losses, written directly (masked depth: the labelled examples' slice)."""
    out = model.apply({"params": params}, batch["image"])
    seg, labels = out["seg"], batch["seg"]
    valid = labels >= 0
    ce = optax.softmax_cross_entropy_with_integer_labels(seg, jnp.maximum(labels, 0))
    l_seg = jnp.sum(ce * valid) / jnp.sum(valid)
    d, dl = out["depth"], batch["depth"]
    if depth_keep is not None:
        d, dl = d[depth_keep], dl[depth_keep]
    dvalid = dl != 0
    l_depth = jnp.sum(jnp.abs(d - dl) * dvalid) / jnp.sum(dvalid)
    n = out["normal"] / jnp.linalg.norm(out["normal"], axis=-1, keepdims=True)
    nvalid = jnp.any(batch["normal"] != 0, -1)
    l_normal = 1 - jnp.sum(jnp.sum(n * batch["normal"], -1) * nvalid) / jnp.sum(nvalid)
    return jnp.stack([l_seg, l_depth, l_normal])


@functools.lru_cache(maxsize=None)
def _jacobian(separable, depth_keep=None):
    model = TinyConv(separable=separable)
    keep = None if depth_keep is None else np.asarray(depth_keep)
    return jax.jit(jax.jacrev(lambda p, b: reference_losses(model, p, b, keep)))


LR = 0.1


@pytest.mark.parametrize(
    "method,separable,mode",
    [
        ("equal", True, "params"),
        ("mgda", True, "params"),
        ("mgda", False, "params"),
        ("pcgrad", False, "params"),
        ("mgda", True, "representation"),
    ],
)
def test_every_gradient_path_trains_pixel_tasks(method, separable, mode):
    batch = _train_batch()
    model, w, opt = TinyConv(separable=separable), weighting.get(method), optax.sgd(LR)
    state = step_lib.init_state(model, w, opt, batch["image"], 3, 0)
    step = jax.jit(
        step_lib.make_train_step(model, TASKS, w, opt, step_lib.StepConfig(input_key="image", jacobian_mode=mode))
    )
    new, metrics = step(state, batch)
    np.testing.assert_allclose(
        np.asarray(metrics["losses"]), np.asarray(reference_losses(model, state.params, batch)), rtol=1e-5
    )
    if mode == "params" and method != "pcgrad":
        # heads move by their own task's gradient, the shared conv by weights @ J (rows = jax.grad of each loss)
        jac = _jacobian(separable)(state.params, batch)
        wts = np.asarray(metrics["weights"])
        for name, rows_w in (
            ("heads_seg", [1, 0, 0]),
            ("heads_depth", [0, 1, 0]),
            ("heads_normal", [0, 0, 1]),
            ("shared", wts),
        ):
            want = jax.tree.map(
                lambda g: np.tensordot(np.asarray(rows_w, np.float32), np.asarray(g), axes=1), jac[name]
            )
            got = jax.tree.map(lambda a, b: (np.asarray(a) - np.asarray(b)) / LR, state.params[name], new.params[name])
            for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_allclose(g, e, rtol=2e-4, atol=1e-5, err_msg=f"{method} {name}")
    # more steps of the same compiled step: the summed loss goes down
    first = float(np.sum(metrics["losses"]))
    for _ in range(12):
        new, metrics = step(new, batch)
        assert bool(metrics["finite"])
    assert float(np.sum(metrics["losses"])) < 0.9 * first


def test_missing_depth_labels_in_training_equal_the_labelled_slice():
    batch = _train_batch()
    keep = (True, False, True, False)
    batch["depth_mask"] = np.asarray(keep, np.float32)
    batch["depth"] = np.where(np.asarray(keep)[:, None, None, None], batch["depth"], np.nan).astype(np.float32)
    model, w, opt = TinyConv(separable=False), weighting.get("mgda"), optax.sgd(LR)
    state = step_lib.init_state(model, w, opt, batch["image"], 3, 0)
    new, metrics = jax.jit(step_lib.make_train_step(model, TASKS, w, opt, step_lib.StepConfig(input_key="image")))(
        state, batch
    )
    assert bool(metrics["finite"])
    np.testing.assert_allclose(
        np.asarray(metrics["losses"]),
        np.asarray(reference_losses(model, state.params, batch, np.asarray(keep))),
        rtol=1e-5,
    )
    jac = _jacobian(False, keep)(state.params, batch)
    want = jax.tree.map(lambda g: np.tensordot(np.asarray(metrics["weights"]), np.asarray(g), axes=1), jac["shared"])
    got = jax.tree.map(lambda a, b: (np.asarray(a) - np.asarray(b)) / LR, state.params["shared"], new.params["shared"])
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, e, rtol=2e-4, atol=1e-5)
