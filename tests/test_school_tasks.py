"""School as K masked regression tasks (``jmtl.data.school.load_school_tasks``).

Truth: the per-school arrays of ``load_school`` (the masked dataset must hold exactly one label per
student, its own school's), and a float64 numpy forward pass of the model from its params: each
task's loss in the jitted train step must be the mean squared error over that school's students in
the batch, and a school without students in the batch a zero loss and an untouched head.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import optax
import pytest
import scipy.io

from jmtl import weighting
from jmtl.data import school
from jmtl.data.idx import DataError
from jmtl.models import mtl
from jmtl.tasks import tasks_from_config
from jmtl.training import step as step_lib

SIZES = (9, 14, 11, 16)  # students per synthetic school


@pytest.fixture
def raw_dir(tmp_path):
    """Synthetic files in the layout of school_b.mat / school_<i>_indexes.mat (1-based, grouped by school)."""
    rng = np.random.default_rng(3)
    n = sum(SIZES)
    x = rng.integers(0, 2, size=(28, n)).astype(np.uint8)
    x[3], x[4], x[27] = rng.integers(5, 90, n), rng.integers(3, 40, n), 1
    y = rng.integers(1, 70, size=(n, 1)).astype(np.uint8)
    starts = np.cumsum((0,) + SIZES[:-1])
    tr, tst, tr_idx, tst_idx = [], [], [], []
    for s, size in zip(starts, SIZES):
        rows = s + rng.permutation(size)
        k = size // 3
        tr_idx.append(len(tr) + 1)
        tst_idx.append(len(tst) + 1)
        tr.extend(rows[k:] + 1)
        tst.extend(rows[:k] + 1)
    folder = tmp_path / "school_splits"
    folder.mkdir()
    u16 = lambda v: np.asarray(v, np.uint16)
    scipy.io.savemat(folder / school.DATA_FILE, dict(x=x, y=y, task_indexes=u16(starts + 1)[:, None]))
    scipy.io.savemat(
        folder / school.split_file(0),
        dict(tr=u16(tr)[None], tst=u16(tst)[None], tr_indexes=u16(tr_idx)[:, None], tst_indexes=u16(tst_idx)[:, None]),
    )
    return tmp_path


def _load(raw_dir, **kw):
    return school.load_school_tasks(data_dir=raw_dir, verify_checksums=False, validation_percent=20, **kw)


def test_one_label_per_student_its_own_school(raw_dir):
    ds = _load(raw_dir)
    data = ds.school_data
    names = data.task_names
    assert list(ds.spec.labels) == list(names) and all(s.kind == "regression" for s in ds.spec.labels.values())
    for split in ("train", "validation", "test"):
        arr, pooled = ds.arrays(split), data.pooled(split)
        np.testing.assert_array_equal(arr["x"], pooled["x"])
        masks = np.stack([arr[n + "_mask"] for n in names], axis=1)
        np.testing.assert_array_equal(masks, np.eye(len(names))[pooled["school"]])  # one-hot of the school
        for k, name in enumerate(names):
            own = pooled["school"] == k
            np.testing.assert_array_equal(
                arr[name][own], data.splits[split][name]["y"]
            )  # the school's students, in order
            assert np.all(arr[name][~own] == 0)  # placeholders


def _forward64(params, x, names):
    """The model (shared ReLU layer, affine heads) in float64 numpy from its params."""
    enc = params["shared"]["Dense_0"]
    h = np.maximum(
        x.astype(np.float64) @ np.asarray(enc["kernel"], np.float64) + np.asarray(enc["bias"], np.float64), 0
    )
    out = {}
    for n in names:
        head = params["tasks"][n]["out"]
        out[n] = (h @ np.asarray(head["kernel"], np.float64) + np.asarray(head["bias"], np.float64))[:, 0]
    return out


@pytest.mark.parametrize("method", ["equal", "mgda"])
def test_step_loss_is_each_schools_mse_and_an_absent_school_a_zero_row(raw_dir, method):
    ds = _load(raw_dir)
    names = ds.school_data.task_names
    tasks = tasks_from_config({}, ds.spec)
    train = ds.arrays("train")
    school_of = ds.school_data.pooled("train")["school"]
    # A batch with uneven counts per school (1, 2 and 5 students) and none of school 3 (index 2).
    rows = np.concatenate(
        [np.flatnonzero(school_of == 0)[:1], np.flatnonzero(school_of == 1)[:2], np.flatnonzero(school_of == 3)[:5]]
    )
    batch = {k: np.asarray(v)[rows] for k, v in train.items()}
    model = mtl.build(tasks, encoder="mlp", encoder_kwargs={"features": (6,)}, head_kwargs={"hidden": None})
    w = weighting.get(method)
    state = step_lib.init_state(model, w, optax.sgd(0.05), batch["x"][:1], len(tasks), 1)
    step = jax.jit(step_lib.make_train_step(model, tasks, w, optax.sgd(0.05), step_lib.StepConfig(input_key="x")))
    new, metrics = step(state, batch)
    assert bool(metrics["finite"])
    preds = _forward64(jax.device_get(state.params), batch["x"], names)
    want = []
    for k, n in enumerate(names):
        own = school_of[rows] == k
        want.append(np.mean((preds[n][own] - batch[n][own].astype(np.float64)) ** 2) if own.any() else 0.0)
    np.testing.assert_allclose(np.asarray(metrics["losses"]), want, rtol=2e-5, atol=1e-6)
    assert float(metrics["losses"][2]) == 0.0
    for leaf_old, leaf_new in zip(
        jax.tree.leaves(state.params["tasks"][names[2]]), jax.tree.leaves(new.params["tasks"][names[2]])
    ):
        np.testing.assert_array_equal(np.asarray(leaf_old), np.asarray(leaf_new))  # no gradient reached school 3's head
    moved = [
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(
            jax.tree.leaves(state.params["tasks"][names[3]]), jax.tree.leaves(new.params["tasks"][names[3]])
        )
    ]
    assert any(moved)  # while a school with students in the batch did train


def test_own_task_predictions_and_bad_ids():
    outputs = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([[10.0], [20.0], [30.0]])}
    np.testing.assert_array_equal(
        school.own_task_predictions(outputs, ("a", "b"), np.array([1, 0, 1])), [10.0, 2.0, 30.0]
    )
    with pytest.raises(DataError, match="school ids must lie in 0..1"):
        school.masked_task_arrays({"x": np.zeros((2, 3)), "y": np.zeros(2), "school": np.array([0, 2])}, ("a", "b"))


def test_validation_carve_is_required(raw_dir):
    with pytest.raises(DataError, match="validation_percent must be 1..50"):
        school.load_school_tasks(data_dir=raw_dir, verify_checksums=False, validation_percent=0)


@pytest.mark.skipif(not os.environ.get(school.ENV_DATA_DIR), reason="needs the School files ($JMTL_DATA_DIR)")
def test_real_data_139_tasks():
    ds = school.load_school_tasks(split_index=0)
    assert len(ds.spec.labels) == school.NUM_TASKS == 139
    assert sum(ds.spec.split_sizes[s] for s in ("train", "validation")) == school.SPLIT_SIZES["train"]
    sizes = ds.school_data.sizes("train")
    train = ds.arrays("train")
    for name in ds.school_data.task_names:
        assert int(train[name + "_mask"].sum()) == sizes[name]
