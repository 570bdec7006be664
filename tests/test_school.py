"""School (ILEA) builder: per-task arrays of a split, verification, standardisation, validation
carve, the pooled MTLDataset, and (when $JMTL_DATA_DIR is set) the real 139-task data.

Synthetic files are written with scipy.io.savemat in the layout of Argyriou et al.'s
school_b.mat / school_<i>_indexes.mat (1-based indexes, students grouped by school).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
import scipy.io

from jmtl import metrics
from jmtl.data import school
from jmtl.data.idx import DataError

TASK_SIZES = (7, 12, 9, 15)


def make_raw(seed: int = 0):
    rng = np.random.default_rng(seed)
    n = sum(TASK_SIZES)
    x = rng.integers(0, 2, size=(28, n)).astype(np.uint8)
    x[3] = rng.integers(5, 90, n)  # %FSM
    x[4] = rng.integers(3, 40, n)  # %VR1
    x[27] = 1  # bias
    y = rng.integers(1, 70, size=(n, 1)).astype(np.uint8)
    starts = np.cumsum((0,) + TASK_SIZES[:-1])
    return x, y, starts


def make_split(starts, seed):
    """Per school, a random ~30% of its rows as test (1-based, grouped by school)."""
    rng = np.random.default_rng(seed)
    tr, tst, tr_idx, tst_idx = [], [], [], []
    for s, size in zip(starts, TASK_SIZES):
        rows = s + rng.permutation(size)
        k = max(1, size * 3 // 10)
        tr_idx.append(len(tr) + 1)
        tst_idx.append(len(tst) + 1)
        tr.extend(rows[k:] + 1)
        tst.extend(rows[:k] + 1)
    u16 = lambda v: np.asarray(v, np.uint16)
    return dict(
        tr=u16(tr)[None], tst=u16(tst)[None], tr_indexes=u16(tr_idx)[:, None], tst_indexes=u16(tst_idx)[:, None]
    )


@pytest.fixture
def raw_dir(tmp_path):
    folder = tmp_path / "school" / "school_splits"
    folder.mkdir(parents=True)
    x, y, starts = make_raw()
    scipy.io.savemat(folder / school.DATA_FILE, dict(x=x, y=y, task_indexes=np.asarray(starts + 1, np.uint16)[:, None]))
    for i in range(2):
        scipy.io.savemat(folder / school.split_file(i), make_split(starts, seed=10 + i))
    return tmp_path


def test_per_task_arrays_follow_the_index_files(raw_dir):
    x, y, starts = make_raw()
    split = make_split(starts, seed=11)
    data = school.load_school(data_dir=raw_dir, split_index=1, standardize=False, verify_checksums=False)
    assert data.task_names == ("school_001", "school_002", "school_003", "school_004")
    assert set(data.splits) == {"train", "test"}
    for key, name in (("tr", "train"), ("tst", "test")):
        idx = split[key][0].astype(int) - 1
        bounds = list(split[f"{key}_indexes"][:, 0].astype(int) - 1) + [len(idx)]
        for t, task in enumerate(data.task_names):
            rows = idx[bounds[t] : bounds[t + 1]]
            np.testing.assert_array_equal(data.splits[name][task]["x"], x[:, rows].T.astype(np.float32))
            np.testing.assert_array_equal(data.splits[name][task]["y"], y[rows, 0].astype(np.float32))
            assert np.all((rows >= starts[t]) & (rows < starts[t] + TASK_SIZES[t]))  # each school its own students
    pooled = data.pooled("test")
    assert pooled["x"].shape == (sum(data.sizes("test").values()), 28)
    np.testing.assert_array_equal(np.bincount(pooled["school"]), list(data.sizes("test").values()))
    with_id = data.pooled("test", school_id_feature=True)
    np.testing.assert_array_equal(with_id["x"][:, 28:].argmax(1), pooled["school"])
    assert with_id["x"][:, 28:].sum() == len(pooled["y"])


def test_standardisation_uses_training_students_only(raw_dir):
    x, _, _ = make_raw()
    raw_data = school.load_school(data_dir=raw_dir, split_index=0, standardize=False, verify_checksums=False)
    data = school.load_school(data_dir=raw_dir, split_index=0, verify_checksums=False)
    train_x = raw_data.pooled("train")["x"].astype(np.float64)
    for col in school.PERCENT_COLUMNS:
        mean, std = train_x[:, col].mean(), train_x[:, col].std()
        for split in ("train", "test"):
            np.testing.assert_allclose(
                data.pooled(split)["x"][:, col],
                (raw_data.pooled(split)["x"][:, col] - mean) / std,
                rtol=1e-5,
                atol=1e-6,
            )
    others = [c for c in range(28) if c not in school.PERCENT_COLUMNS]
    np.testing.assert_array_equal(data.pooled("test")["x"][:, others], raw_data.pooled("test")["x"][:, others])
    assert np.all(data.pooled("train")["x"][:, school.BIAS_COLUMN] == 1)


def test_validation_carve(raw_dir):
    full = school.load_school(data_dir=raw_dir, split_index=0, verify_checksums=False, standardize=False)
    data = school.load_school(
        data_dir=raw_dir, split_index=0, validation_percent=25, seed=4, verify_checksums=False, standardize=False
    )
    for t in data.task_names:
        n = len(full.splits["train"][t]["y"])
        k = max(1, round(n * 25 / 100))
        assert len(data.splits["validation"][t]["y"]) == k and len(data.splits["train"][t]["y"]) == n - k
        # train + validation is the original training set (rows compared as whole feature/target rows).
        got = np.concatenate([np.c_[data.splits[s][t]["x"], data.splits[s][t]["y"]] for s in ("train", "validation")])
        ref = np.c_[full.splits["train"][t]["x"], full.splits["train"][t]["y"]]
        np.testing.assert_array_equal(np.unique(got, axis=0), np.unique(ref, axis=0))


def _rewrite_split(raw_dir, **changes):
    path = raw_dir / "school" / "school_splits" / school.split_file(0)
    mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    mat.update(changes)
    scipy.io.savemat(path, mat)
    return mat


def test_student_in_the_wrong_school_block(raw_dir):
    mat = scipy.io.loadmat(raw_dir / "school" / "school_splits" / school.split_file(0))
    tr = mat["tr"].copy()
    tr[0, 0], tr[0, -1] = tr[0, -1], tr[0, 0]  # first student of school 1 swapped with one of school 4
    _rewrite_split(raw_dir, tr=tr)
    with pytest.raises(DataError, match="tr block of school 1 holds row"):
        school.load_school(data_dir=raw_dir, verify_checksums=False)


def test_train_test_overlap(raw_dir):
    mat = scipy.io.loadmat(raw_dir / "school" / "school_splits" / school.split_file(0))
    tst = mat["tst"].copy()
    tst[0, 0] = mat["tr"][0, 0]  # a training student of school 1 also in test
    _rewrite_split(raw_dir, tst=tst)
    with pytest.raises(DataError, match="is in 2 of train/test"):
        school.load_school(data_dir=raw_dir, verify_checksums=False)


def test_bad_arguments_and_files(raw_dir, tmp_path):
    with pytest.raises(DataError, match=r"School \(ILEA\) checksum mismatch in 2 file"):
        school.load_school(data_dir=raw_dir)  # verify_checksums=True: these are not the published files
    with pytest.raises(DataError, match="the published data is \\[28, 15362\\]"):
        school.read_raw(raw_dir / "school" / "school_splits", 0, verify=True)
    with pytest.raises(DataError, match="split_index must be an int in 0..9"):
        school.load_school(data_dir=raw_dir, split_index=10, verify_checksums=False)
    with pytest.raises(DataError, match="school_3_indexes.mat: file not found"):
        school.load_school(data_dir=raw_dir, split_index=2, verify_checksums=False)
    with pytest.raises(DataError, match="no school_b.mat"):
        school.load_school(data_dir=tmp_path / "empty")
    (raw_dir / "school" / "school_splits" / school.DATA_FILE).write_bytes(b"MATLAB 5.0 garbage")
    with pytest.raises(DataError, match="not a readable MATLAB file"):
        school.load_school(data_dir=raw_dir, verify_checksums=False)


def test_pooled_dataset(raw_dir):
    ds = school.load_school_pooled(data_dir=raw_dir, split_index=1, validation_percent=20, verify_checksums=False)
    data = ds.school_data
    assert ds.spec.labels["score"].kind == "regression" and ds.spec.input_shape == (28,)
    assert ds.spec.split_sizes == {s: sum(data.sizes(s).values()) for s in ("train", "validation", "test")}
    np.testing.assert_array_equal(ds.arrays("test")["x"], data.pooled("test")["x"])
    np.testing.assert_array_equal(ds.arrays("test")["score"], data.pooled("test")["y"])
    batch = next(ds.train_iterator(8, seed=0))
    assert batch["x"].shape == (8, 28) and batch["score"].dtype == np.float32
    with_id = school.load_school_pooled(data_dir=raw_dir, split_index=1, school_id_feature=True, verify_checksums=False)
    assert with_id.spec.input_shape == (28 + len(TASK_SIZES),)


def test_real_files():
    d = os.environ.get("JMTL_DATA_DIR")
    if not d or not (pathlib.Path(d) / "school").is_dir():
        pytest.skip("real School files not available ($JMTL_DATA_DIR)")
    for i in range(school.NUM_SPLITS):
        data = school.load_school(data_dir=d, split_index=i)  # verify=True: the published sizes
        assert len(data.task_names) == 139
        assert sum(data.sizes("train").values()) == 11_472 and sum(data.sizes("test").values()) == 3_890
        sizes = np.add(list(data.sizes("train").values()), list(data.sizes("test").values()))
        assert sizes.sum() == 15_362 and sizes.min() == 22 and sizes.max() == 251
    # The per-school sizes agree with MALSAR's independent copy (one cell array entry per task).
    malsar = scipy.io.loadmat(pathlib.Path(d) / "school" / "malsar" / "school.mat")
    np.testing.assert_array_equal([len(v) for v in malsar["Y"][0]], sizes)
    # A ridge regression on the pooled students explains a sensible share of the test variance.
    train, test = data.pooled("train"), data.pooled("test")
    w = np.linalg.solve(train["x"].T.astype(np.float64) @ train["x"] + np.eye(28), train["x"].T @ train["y"])
    assert 0.2 < metrics.explained_variance(test["y"], test["x"] @ w) < 0.5
