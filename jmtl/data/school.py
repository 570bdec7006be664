"""ILEA School exam scores as distributed by Argyriou, Evgeniou & Pontil: 139 regression tasks.

Raw files (never copied into the repo), from ``data_dir`` / ``$JMTL_DATA_DIR`` (searched in
``school/school_splits/``, ``school_splits/`` and the folder itself): ``school_b.mat`` and the ten
split files ``school_<i>_indexes.mat`` (i = 1..10) of "Convex multi-task feature learning"
(Machine Learning 73, 2008). MATLAB v5 files, read with ``scipy.io.loadmat``:

* ``school_b.mat``: ``x`` uint8 [28, 15362] (27 attributes -- year one-hot, % free school meals, %
  VR band 1, gender, VR band, ethnic group, school gender, school denomination, categoricals coded
  as binary attributes -- plus a last row of 1s, the bias), ``y`` [15362, 1] exam scores,
  ``task_indexes`` [139, 1] the 1-based first row of each school (the rows are grouped by school).
* ``school_<i>_indexes.mat``: ``tr`` / ``tst`` 1-based row indexes of split i (11,472 / 3,890),
  grouped by school as ``tr_indexes`` / ``tst_indexes`` (1-based starts) say.

Verification (always): shapes and dtypes, the bias row, task starts increasing from 1, every
split row in range, train and test disjoint and covering all rows, each task's block of
``tr``/``tst`` holding only that school's rows. With ``verify_checksums=True`` (default) also the
published sha256 of both files (``jmtl.data.fingerprint.PUBLISHED``) and the published counts:
15,362 students, 139 schools, 28 features, 11,472 train / 3,890 test rows in every split.

``split_index`` 0..9 selects ``school_<split_index + 1>_indexes.mat``: the papers report the mean
over the 10 splits.

Features: by default (``standardize=True``) the two percentage columns (rows 4-5 of ``x``, %FSM
and %VR1, 0..91 and 0..43) are standardised with the mean and population s.d. over the split's
training students; the 25 binary columns and the bias are kept as 0/1. ``standardize=False`` gives
``x`` exactly as distributed (what the papers' linear methods use). Targets are the raw exam
scores in their original units (explained variance is computed on them).

Validation: the papers have none (they tune on the training data). ``validation_percent`` > 0
moves that share of each school's training students (``round(n_t * p / 100)``, at least 1, drawn
with ``default_rng([seed, task])``) to a ``validation`` split.

Two views (``load_school``):

* per task: ``SchoolData.splits[split][task] = {'x': float32 [n_t, 28], 'y': float32 [n_t]}``
  for task names ``school_001`` .. ``school_139`` -- each school is a task with its own students
  (per-task inputs);
* pooled (``SchoolData.pooled(split)`` and ``load_school_pooled`` -> ``MTLDataset``): one
  regression task ``score`` over all students; the school id is NOT a feature by default (the
  single-model baseline that ignores the task structure); ``school_id_feature=True`` appends its
  139-way one-hot.

* masked 139-task (``load_school_tasks`` -> ``MTLDataset``): one example per student, one
  regression label per school (``school_001`` .. ``school_139``), of which only the student's own
  school's is present: ``<school>_mask`` is the one-hot of the school (placeholder 0 elsewhere). The
  train step then takes each task's loss as the mean over that school's students in the batch (a
  zero loss and a zero gradient row for a school with none), which is the per-task-inputs
  objective sum_t (1/n_t) sum_{i in t} (f_t(x_i) - y_i)^2 in the built-in trainer.

Metric: ``jmtl.metrics.explained_variance`` over the pooled test students of all schools (x100
for the percentages the papers print).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from jmtl.data import fingerprint
from jmtl.data.idx import DataError
from jmtl.data.pipeline import MTLDataset, from_arrays

ENV_DATA_DIR = "JMTL_DATA_DIR"
DATA_FILE = "school_b.mat"
NUM_SPLITS = 10
NUM_TASKS = 139
NUM_STUDENTS = 15_362
NUM_FEATURES = 28
SPLIT_SIZES = {"train": 11_472, "test": 3_890}
PERCENT_COLUMNS = (3, 4)  # %FSM and %VR1 (rows 4-5 of x, 1-based)
BIAS_COLUMN = 27
TASK_NAMES = tuple(f"school_{t + 1:03d}" for t in range(NUM_TASKS))

_FIX = (
    "copy the School files of Argyriou, Evgeniou & Pontil (school_b.mat and school_1_indexes.mat .. "
    "school_10_indexes.mat, e.g. from GitHub tjanez/PyMTL data/school/) unchanged into one folder and "
    f"point data_dir / ${ENV_DATA_DIR} at it, or at a parent holding school/school_splits/"
)


def _error(path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}. Fix: {_FIX}.")


def split_file(split_index: int) -> str:
    """File name of split ``split_index`` (0-based)."""
    return f"school_{split_index + 1}_indexes.mat"


def find_folder(data_dir: os.PathLike[str] | str | None) -> pathlib.Path:
    """The folder holding ``school_b.mat`` and the split files."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_DATA_DIR) or None
    if data_dir is None:
        raise DataError(f"School: no data dir (neither a data_dir argument nor ${ENV_DATA_DIR}). Fix: {_FIX}.")
    root = pathlib.Path(data_dir).expanduser()
    for folder in (root / "school" / "school_splits", root / "school_splits", root):
        if (folder / DATA_FILE).is_file():
            return folder
    raise _error(root, f"no {DATA_FILE} here, in school_splits/ or in school/school_splits/")


def _loadmat(path: pathlib.Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    import scipy.io  # pylint: disable=g-import-not-at-top  (only needed to build School)

    if not path.is_file():
        raise _error(path, "file not found")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises several types on a corrupt / truncated file
        raise _error(path, f"not a readable MATLAB file ({type(e).__name__}: {e})") from e
    missing = [k for k in keys if k not in mat]
    if missing:
        raise _error(
            path, f"variable(s) {missing} missing; it holds {sorted(k for k in mat if not k.startswith('__'))}"
        )
    return {k: np.asarray(mat[k]) for k in keys}


def _starts(values: np.ndarray, total: int, path, name: str, verify: bool) -> np.ndarray:
    """1-based block starts -> 0-based [T + 1] boundaries (the last one = total)."""
    starts = values.reshape(-1).astype(np.int64) - 1
    if verify and len(starts) != NUM_TASKS:
        raise _error(path, f"{name} has {len(starts)} task starts, the School data has {NUM_TASKS} schools")
    if len(starts) == 0 or starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= total:
        raise _error(
            path, f"{name} must increase strictly from 1 and stay below {total + 1}, got {values.reshape(-1)[:5]}..."
        )
    return np.concatenate([starts, [total]])


@dataclasses.dataclass(frozen=True)
class RawSchool:
    """The verified raw data of one split.

    Attributes:
      x: float64 [N, 28] all students (rows of school_b.mat's ``x'``).
      y: float64 [N] exam scores.
      task: int [N] the 0-based school of each student.
      rows: 'train' / 'test' -> list over schools of 0-based student rows (distribution order).
    """

    x: np.ndarray
    y: np.ndarray
    task: np.ndarray
    rows: dict[str, list[np.ndarray]]


def read_raw(folder: os.PathLike[str] | str, split_index: int, verify: bool = True) -> RawSchool:
    """Reads and checks ``school_b.mat`` and the split file ``split_index`` (0..9)."""
    if (
        not isinstance(split_index, (int, np.integer))
        or isinstance(split_index, bool)
        or not 0 <= split_index < NUM_SPLITS
    ):
        raise DataError(f"school: split_index must be an int in 0..{NUM_SPLITS - 1}, got {split_index!r}")
    folder = pathlib.Path(folder)
    path = folder / DATA_FILE
    d = _loadmat(path, ("x", "y", "task_indexes"))
    x, y = d["x"], d["y"]
    if x.ndim != 2 or y.ndim != 2 or y.shape[1] != 1 or x.shape[1] != y.shape[0]:
        raise _error(path, f"x must be [features, N] and y [N, 1], got {x.shape} and {y.shape}")
    n = x.shape[1]
    if verify and (x.shape[0] != NUM_FEATURES or n != NUM_STUDENTS):
        raise _error(path, f"x is {x.shape}, the published data is [{NUM_FEATURES}, {NUM_STUDENTS}]")
    x = x.T.astype(np.float64)
    if not np.all(x[:, -1] == 1):
        bad = int(np.flatnonzero(x[:, -1] != 1)[0])
        raise _error(path, f"the last row of x (the bias) is {x[bad, -1]} for student {bad + 1}, expected 1")
    y = y[:, 0].astype(np.float64)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise _error(path, "x or y holds non-finite values")
    bounds = _starts(d["task_indexes"], n, path, "task_indexes", verify)
    task = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))

    spath = folder / split_file(split_index)
    s = _loadmat(spath, ("tr", "tst", "tr_indexes", "tst_indexes"))
    rows: dict[str, list[np.ndarray]] = {}
    seen = np.zeros(n, np.int64)
    for split, key in (("train", "tr"), ("test", "tst")):
        idx = s[key].reshape(-1).astype(np.int64) - 1
        if verify and len(idx) != SPLIT_SIZES[split]:
            raise _error(spath, f"{key} has {len(idx)} rows, the published splits have {SPLIT_SIZES[split]}")
        if len(idx) == 0 or idx.min() < 0 or idx.max() >= n:
            raise _error(spath, f"{key} indexes must lie in 1..{n}")
        blocks = _starts(s[f"{key}_indexes"], len(idx), spath, f"{key}_indexes", verify)
        if len(blocks) != len(bounds):
            raise _error(spath, f"{key}_indexes has {len(blocks) - 1} tasks, {DATA_FILE} has {len(bounds) - 1}")
        per_task = [idx[blocks[t] : blocks[t + 1]] for t in range(len(blocks) - 1)]
        for t, r in enumerate(per_task):
            wrong = r[task[r] != t]
            if len(wrong):
                raise _error(
                    spath,
                    f"{key} block of school {t + 1} holds row {wrong[0] + 1}, a student of school {task[wrong[0]] + 1}",
                )
        np.add.at(seen, idx, 1)
        rows[split] = per_task
    if np.any(seen != 1):
        bad = int(np.flatnonzero(seen != 1)[0])
        raise _error(spath, f"student {bad + 1} is in {seen[bad]} of train/test; they must split the rows exactly")
    return RawSchool(x=x, y=y, task=task, rows=rows)


@dataclasses.dataclass(frozen=True)
class SchoolData:
    """One split of the School data, per task and pooled.

    Attributes:
      split_index: which of the 10 splits (0-based).
      task_names: ``school_001`` .. ``school_139``.
      splits: split ('train', 'test', and 'validation' if carved) -> task name ->
        ``{'x': float32 [n_t, 28], 'y': float32 [n_t]}``.
      feature_mean, feature_std: float64 [28] applied as ``(x - mean) / std`` (0 and 1 except
        the standardised percentage columns).
    """

    split_index: int
    task_names: tuple[str, ...]
    splits: dict[str, dict[str, dict[str, np.ndarray]]]
    feature_mean: np.ndarray
    feature_std: np.ndarray

    def pooled(self, split: str, school_id_feature: bool = False) -> dict[str, np.ndarray]:
        """All students of ``split`` in task order: ``{'x': float32 [n, 28] (+ [n, 139] one-hot
        school with school_id_feature), 'y': float32 [n], 'school': int32 [n] (0-based)}``."""
        if split not in self.splits:
            raise DataError(f"school: unknown split {split!r}; valid: {sorted(self.splits)}")
        per = self.splits[split]
        x = np.concatenate([per[t]["x"] for t in self.task_names])
        y = np.concatenate([per[t]["y"] for t in self.task_names])
        school = np.concatenate([np.full(len(per[t]["y"]), i, np.int32) for i, t in enumerate(self.task_names)])
        if school_id_feature:
            x = np.concatenate([x, np.eye(len(self.task_names), dtype=np.float32)[school]], axis=1)
        return {"x": x, "y": y, "school": school}

    def sizes(self, split: str) -> dict[str, int]:
        """Students per task in ``split``."""
        return {t: len(v["y"]) for t, v in self.splits[split].items()}


def load_school(
    *,
    data_dir: os.PathLike[str] | str | None = None,
    split_index: int = 0,
    validation_percent: int = 0,
    seed: int = 0,
    standardize: bool = True,
    verify_checksums: bool = True,
) -> SchoolData:
    """Loads one of the 10 School splits as per-task arrays (the data is 40 KB; no cache needed).

    Args:
      data_dir: raw files (argument > $JMTL_DATA_DIR); see ``find_folder``.
      split_index: 0..9, the split ``school_<split_index + 1>_indexes.mat``.
      validation_percent: 0 (default, the papers' protocol: train/test only) or 1..50: that share
        of each school's training students becomes 'validation'.
      seed: draws the validation students (with ``default_rng([seed, task])``).
      standardize: standardise the two percentage columns with training statistics.
      verify_checksums: check the files' published sha256s and sizes (15,362 students, 139
        schools, 11,472 / 3,890 rows); False only for a deliberately modified copy.
    """
    if not isinstance(validation_percent, (int, np.integer)) or not 0 <= validation_percent <= 50:
        raise DataError(f"school: validation_percent must be an int in 0..50, got {validation_percent!r}")
    folder = find_folder(data_dir)
    if verify_checksums and isinstance(split_index, (int, np.integer)) and 0 <= split_index < NUM_SPLITS:
        names = (DATA_FILE, split_file(int(split_index)))
        fingerprint.check_family_files("school", {n: folder / n for n in names if (folder / n).is_file()})
    raw = read_raw(folder, split_index, verify_checksums)
    rows = dict(raw.rows)
    if validation_percent:
        train, val = [], []
        for t, r in enumerate(rows["train"]):
            k = max(1, int(round(len(r) * validation_percent / 100)))
            if k >= len(r):
                raise DataError(f"school: school {t + 1} has {len(r)} training students, too few to hold out {k}")
            perm = np.random.default_rng([seed, t]).permutation(len(r))
            val.append(np.sort(r[perm[:k]]))
            train.append(np.sort(r[perm[k:]]))
        rows["train"], rows["validation"] = train, val
    mean = np.zeros(raw.x.shape[1])
    std = np.ones(raw.x.shape[1])
    if standardize:
        train_rows = np.concatenate(rows["train"])
        cols = list(PERCENT_COLUMNS)
        mean[cols] = raw.x[train_rows][:, cols].mean(axis=0)
        std[cols] = raw.x[train_rows][:, cols].std(axis=0)
        if np.any(std[cols] == 0):
            raise DataError("school: a percentage column is constant over the training students; cannot standardise")
    x = ((raw.x - mean) / std).astype(np.float32)
    y = raw.y.astype(np.float32)
    names = TASK_NAMES[: len(rows["train"])]
    splits = {
        split: {names[t]: {"x": x[r], "y": y[r]} for t, r in enumerate(per_task)} for split, per_task in rows.items()
    }
    return SchoolData(split_index=int(split_index), task_names=names, splits=splits, feature_mean=mean, feature_std=std)


def load_school_pooled(
    *,
    data_dir: os.PathLike[str] | str | None = None,
    cache_dir: Any = None,
    split_index: int = 0,
    validation_percent: int = 10,
    seed: int = 0,
    school_id_feature: bool = False,
    standardize: bool = True,
    verify_checksums: bool = True,
) -> MTLDataset:
    """The pooled School problem as an ``MTLDataset``: one regression task ``score``.

    Args:
      data_dir: raw files (argument > $JMTL_DATA_DIR).
      cache_dir: ignored (the data is read from the .mat files in milliseconds).
      split_index: 0..9.
      validation_percent: 1..50, per-school share of training students held out as 'validation'
        (the training loop needs a validation split; default 10).
      seed: validation draw.
      school_id_feature: append the one-hot school (139 columns) to the 28 features.
      standardize, verify_checksums: as in ``load_school``.

    Returns:
      A ``jmtl.data.from_arrays`` dataset (input ``x``, label ``score``) with the per-task view
      attached as ``dataset.school_data``.
    """
    del cache_dir
    if not validation_percent:
        raise DataError(
            "school (pooled): validation_percent must be 1..50; the training loop evaluates a validation split"
        )
    data = load_school(
        data_dir=data_dir,
        split_index=split_index,
        validation_percent=validation_percent,
        seed=seed,
        standardize=standardize,
        verify_checksums=verify_checksums,
    )
    splits = {}
    for split in ("train", "validation", "test"):
        p = data.pooled(split, school_id_feature)
        splits[split] = {"x": p["x"], "score": p["y"]}
    dataset = from_arrays("school_pooled", splits, input_key="x", labels={"score": "regression"})
    dataset.school_data = data
    return dataset


def masked_task_arrays(pooled: dict[str, np.ndarray], task_names: Sequence[str]) -> dict[str, np.ndarray]:
    """``SchoolData.pooled(split)`` -> the masked-labels columns of ``from_arrays``.

    Args:
      pooled: ``{'x': [n, d], 'y': [n], 'school': int [n] (0-based)}``.
      task_names: the K task names, in school order (task k = school k).

    Returns:
      ``{'x': [n, d], name_k: float32 [n] (y where school == k, else 0), name_k + '_mask':
      float32 [n] (1 where school == k)}`` for every k.
    """
    school = np.asarray(pooled["school"])
    if school.size and (school.min() < 0 or school.max() >= len(task_names)):
        raise DataError(f"school: school ids must lie in 0..{len(task_names) - 1}, got {school.min()}..{school.max()}")
    y = np.asarray(pooled["y"], np.float32)
    cols: dict[str, np.ndarray] = {"x": np.asarray(pooled["x"])}
    for k, name in enumerate(task_names):
        own = school == k
        cols[name] = np.where(own, y, np.float32(0.0)).astype(np.float32)
        cols[name + "_mask"] = own.astype(np.float32)
    return cols


def load_school_tasks(
    *,
    data_dir: os.PathLike[str] | str | None = None,
    cache_dir: Any = None,
    split_index: int = 0,
    validation_percent: int = 10,
    seed: int = 0,
    standardize: bool = True,
    verify_checksums: bool = True,
) -> MTLDataset:
    """The 139-task School problem as an ``MTLDataset`` with missing labels (see the module docstring).

    One example per student (input ``x``, the 28 features); task ``school_<k>`` (k = 001..139) is
    a regression label present only for school k's students (``school_<k>_mask`` = 1). Each task's
    loss in the train step is the mean squared error over its own students in the batch; a school
    without students in a batch contributes a zero loss and a zero gradient row.

    Args:
      data_dir: raw files (argument > $JMTL_DATA_DIR).
      cache_dir: ignored (the data is read from the .mat files in milliseconds).
      split_index: 0..9, the split ``school_<split_index + 1>_indexes.mat``.
      validation_percent: 1..50, per-school share of training students held out as 'validation'
        (the training loop needs a validation split; default 10).
      seed: validation draw.
      standardize, verify_checksums: as in ``load_school``.

    Returns:
      A ``jmtl.data.from_arrays`` dataset with 139 regression labels and their masks, and the
      per-task view attached as ``dataset.school_data`` (the 'school' ids of a split's rows:
      ``dataset.school_data.pooled(split)['school']``, the same order as the dataset's rows).
    """
    del cache_dir
    if not validation_percent:
        raise DataError(
            "school (tasks): validation_percent must be 1..50; the training loop evaluates a validation split"
        )
    data = load_school(
        data_dir=data_dir,
        split_index=split_index,
        validation_percent=validation_percent,
        seed=seed,
        standardize=standardize,
        verify_checksums=verify_checksums,
    )
    splits = {
        split: masked_task_arrays(data.pooled(split), data.task_names) for split in ("train", "validation", "test")
    }
    labels = {name: "regression" for name in data.task_names}
    dataset = from_arrays("school_tasks", splits, input_key="x", labels=labels)
    dataset.school_data = data
    return dataset


def own_task_predictions(outputs: dict[str, Any], task_names: Sequence[str], school: np.ndarray) -> np.ndarray:
    """Each student's prediction by its own school's task: ``outputs[task_names[school[i]]][i]``.

    Args:
      outputs: task name -> predictions ``[n]`` (or ``[n, 1]``) for all n students.
      task_names: task order (task k = school k).
      school: int ``[n]`` 0-based school of each student.
    """
    preds = np.stack([np.asarray(outputs[name]).reshape(len(school)) for name in task_names], axis=1)  # [n, K]
    return preds[np.arange(len(school)), np.asarray(school)]
