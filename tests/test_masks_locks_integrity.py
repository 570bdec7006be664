"""Masks, locks and checkpoints that must not lie (issue 23, §3 and parts of §5).

Each test injects one fault and checks what the user gets: the exception (or exit code), a one-line
message naming the fix, and that no earlier file changed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import sys
from pathlib import Path

import flax.linen as nn
import numpy as np
import pytest

import jmtl
from jmtl import tasks as tasks_lib
from jmtl.data import iterables, pipeline
from jmtl.data.idx import DataError
from jmtl.runs import checkpoint as ckpt_lib
from jmtl.runs import workdir as workdir_lib
from jmtl.training import cli

TASKS = [jmtl.Task("a", "regression", 1), jmtl.Task("b", "regression", 1)]


class Model(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = nn.Dense(4, name="shared")(x)
        return {"a": nn.Dense(1, name="head_a")(h)[:, 0], "b": nn.Dense(1, name="head_b")(h)[:, 0]}


@pytest.fixture(autouse=True)
def _exit_through_system_exit(monkeypatch):
    """``cli.one_line_errors`` ends the process with ``os._exit`` when non-daemon threads linger (orbax
    workers left by earlier tests of this pytest process would make it kill pytest itself); these tests
    check the message and the code, so the exit goes through ``SystemExit``."""
    import threading

    lingering = [t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    if lingering:
        print("lingering non-daemon threads:", lingering)
    monkeypatch.setattr(workdir_lib, "exit_process", lambda code, **_: sys.exit(code))


def _arrays(n=40, seed=0, b_mask=None):
    rng = np.random.default_rng(seed)
    out = {
        "x": rng.normal(size=(n, 3)).astype(np.float32),
        "a": rng.normal(size=n).astype(np.float32),
        "b": rng.normal(size=n).astype(np.float32),
        "b_mask": np.ones(n, np.float32),
    }
    if b_mask is not None:
        out["b_mask"] = np.asarray(b_mask, np.float32)
    return out


def _batches(arrays, size=10):
    n = len(arrays["x"])
    return [{k: v[i : i + size] for k, v in arrays.items()} for i in range(0, n, size)]


def _tree_digest(path: Path) -> dict:
    """{relative path: sha256} of every file under ``path`` (what 'no earlier file changed' compares)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def _one_line(message: str) -> None:
    assert "\n" not in message and "Fix:" in message, message


# ---- label masks: one check for every data path ----------------------------------------------------
@pytest.mark.parametrize("bad", [0.5, -1.0, 2.0])
def test_a_mask_other_than_0_1_is_refused_by_every_data_path(bad):
    arrays = _arrays()
    arrays["b_mask"][3] = bad
    want = f"label mask 'b_mask' holds {bad:g} (1 of 40 entries) where only 0 (missing) and 1 (labelled)"
    # Arrays (jmtl.data.from_arrays, and fit's array path through it).
    with pytest.raises(DataError) as info:
        pipeline.from_arrays(
            "toy", {"train": arrays, "validation": _arrays(seed=1), "test": _arrays(seed=2)}, input_key="x"
        )
    assert want in str(info.value) and "split 'train'" in str(info.value)
    _one_line(str(info.value))
    # Evaluation splits and a first batch (check_labels: the evaluator and the model contract).
    with pytest.raises(ValueError, match="holds"):
        tasks_lib.check_labels(TASKS, arrays, where="validation split")
    # Every batch of an iterable, not only the first: the bad value sits in the second batch.
    good = _batches(_arrays())
    batches = [good[0], {**good[1], "b_mask": np.where(np.arange(10) == 2, bad, 1.0).astype(np.float32)}]
    it = iterables.ReplayIterator(batches, name="train", check=iterables.LabelCheck(TASKS))
    next(it)
    with pytest.raises(ValueError) as info:
        next(it)
    assert "the train data's batch 2 of epoch 0: label mask 'b_mask' holds" in str(info.value)
    _one_line(str(info.value))


def test_bool_and_0_1_masks_pass():
    arrays = _arrays(b_mask=np.arange(40) % 2)
    tasks_lib.check_labels(TASKS, arrays)
    tasks_lib.check_labels(TASKS, {**arrays, "b_mask": arrays["b_mask"].astype(bool)})


def test_fit_refuses_a_bad_mask_in_an_iterable_before_writing(tmp_path):
    """Iterable validation data with a mask of -1 (the issue's test MSE x1.66): refused before the workdir
    exists; a later training batch with 0.5 stops the run at that batch, naming it."""
    workdir = tmp_path / "run"
    arrays = _arrays()
    bad_val = {**arrays, "b_mask": np.where(np.arange(40) == 0, -1.0, 1.0).astype(np.float32)}
    with pytest.raises(ValueError, match=r"the validation split: label mask 'b_mask' holds -1 .* Fix:"):
        jmtl.fit(
            Model(),
            TASKS,
            lambda seed: iter(_batches(arrays)),
            validation=iter(_batches(bad_val)),
            test=arrays,
            workdir=workdir,
            num_steps=2,
            input_key="x",
            progress_bar=False,
        )
    assert not workdir.exists()

    train = _batches(arrays)
    train[2] = {**train[2], "b_mask": np.full(10, 0.5, np.float32)}
    with pytest.raises(ValueError, match=r"the train data's batch 3 of epoch 0: label mask 'b_mask' holds 0.5"):
        jmtl.fit(
            Model(),
            TASKS,
            lambda seed: iter(train),
            validation=arrays,
            test=arrays,
            workdir=workdir,
            num_steps=4,
            input_key="x",
            progress_bar=False,
        )
    steps = [json.loads(line)["step"] for line in (workdir / "train_log.jsonl").read_text().splitlines()]
    assert max(steps, default=0) <= 2  # it trained on the two good batches only


def test_a_task_never_labelled_in_training_is_refused():
    """Decision: refuse (not warn). A task with no labelled training example trains on nothing (loss 0) and
    its untrained head would be scored and counted in model selection; no setting makes that useful."""
    arrays = _arrays(b_mask=np.zeros(40))
    splits = {"train": arrays, "validation": _arrays(seed=1), "test": _arrays(seed=2)}
    with pytest.raises(DataError) as info:
        pipeline.from_arrays("toy", splits, input_key="x")
    assert str(info.value).startswith("toy train split: task(s) 'b' have no labelled example")
    _one_line(str(info.value))
    # Unlabelled in validation / test only is fine (nothing trains on them).
    pipeline.from_arrays("toy", {**splits, "train": _arrays(), "test": _arrays(b_mask=np.zeros(40))}, input_key="x")


def test_fit_refuses_a_never_labelled_task_before_writing(tmp_path):
    arrays = _arrays(b_mask=np.zeros(40))
    with pytest.raises(ValueError, match="task\\(s\\) 'b' have no labelled example"):
        jmtl.fit(
            Model(),
            TASKS,
            arrays,
            validation=_arrays(seed=1),
            test=_arrays(seed=2),
            workdir=tmp_path / "run",
            batch_size=10,
            num_steps=2,
            input_key="x",
            progress_bar=False,
        )
    assert not (tmp_path / "run").exists()


def test_an_iterable_never_labelling_a_task_is_refused_at_the_first_epochs_end():
    batches = _batches(_arrays(b_mask=np.zeros(40)))
    it = iterables.ReplayIterator(batches, name="train", check=iterables.LabelCheck(TASKS))
    for _ in range(4):
        next(it)
    with pytest.raises(DataError, match="the train data's first epoch: task\\(s\\) 'b' have no labelled example"):
        next(it)
    # One labelled example anywhere in the epoch is enough; a resumed mid-epoch iterator does not judge.
    labelled = _batches(_arrays(b_mask=np.arange(40) == 37))
    it = iterables.ReplayIterator(labelled, check=iterables.LabelCheck(TASKS))
    for _ in range(9):
        next(it)
    it = iterables.ReplayIterator(batches, check=iterables.LabelCheck(TASKS))
    it.set_state({"epoch": 0, "position": 2, "total": 2})
    for _ in range(5):
        next(it)


# ---- the workdir lock -------------------------------------------------------------------------------
def test_deleting_the_lock_file_does_not_let_a_second_run_in(tmp_path):
    """The first run's in-flight checkpoint (a ``.orbax-checkpoint-tmp`` folder) survives a second run
    started after ``.lock`` was deleted: the folder's own lock refuses it before its start-up."""
    workdir = tmp_path / "run"
    inflight = workdir / "checkpoints" / "30.orbax-checkpoint-tmp"
    inflight.mkdir(parents=True)
    (inflight / "data").write_bytes(b"half a save")
    with workdir_lib.workdir_lock(workdir) as lock:
        (workdir / ".lock").unlink()
        before = _tree_digest(workdir)
        with pytest.raises(workdir_lib.WorkdirBusyError, match="is in use by another run"):
            jmtl.fit(
                Model(),
                TASKS,
                _arrays(),
                validation=_arrays(),
                test=_arrays(),
                workdir=workdir,
                batch_size=10,
                num_steps=2,
                input_key="x",
                progress_bar=False,
            )
        assert _tree_digest(workdir) == before and inflight.exists()
        # The holder notices that its lock file is gone and stops loudly.
        with pytest.raises(workdir_lib.WorkdirLostError) as info:
            lock.check()
        assert "its lock file .lock" in str(info.value) and "was deleted or replaced" in str(info.value)
        _one_line(str(info.value))


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlinked_lock_is_never_followed(tmp_path, dangling):
    workdir = tmp_path / "run"
    workdir.mkdir()
    target = tmp_path / "precious.txt"
    if not dangling:
        target.write_text("not yours to overwrite\n")
    (workdir / ".lock").symlink_to(target)
    with pytest.raises(workdir_lib.WorkdirError) as info:
        with workdir_lib.workdir_lock(workdir):
            pass
    assert f"the workdir lock {workdir / '.lock'} is a symbolic link (to {target})" in str(info.value)
    _one_line(str(info.value))
    if dangling:
        assert not target.exists()  # O_CREAT through the link would have created it
    else:
        assert target.read_text() == "not yours to overwrite\n"


def test_a_replaced_lock_or_a_removed_workdir_is_detected(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    with workdir_lib.workdir_lock(workdir) as lock:
        lock.check()  # untouched: fine
        (workdir / "other").write_text("{}")
        os.replace(workdir / "other", workdir / ".lock")  # same name, another file
        with pytest.raises(workdir_lib.WorkdirLostError, match="its lock file"):
            lock.check()
    with workdir_lib.workdir_lock(workdir) as lock:
        workdir.rename(tmp_path / "moved")
        with pytest.raises(workdir_lib.WorkdirLostError, match=f"the workdir {workdir} was deleted or replaced"):
            lock.check()
        workdir.mkdir()  # a new, empty folder at the same path is not the run's folder either
        with pytest.raises(workdir_lib.WorkdirLostError):
            lock.check()


def test_a_workdir_removed_mid_run_fails_loudly(tmp_path, capsys):
    """The issue's exit 0 with the logs gone: the run stops at its next checkpoint with one line, exit 2
    through the command-line handler, and the moved folder keeps what was written."""
    workdir, moved = tmp_path / "run", tmp_path / "moved"
    arrays = _arrays()

    def train(seed, epoch=0):
        for i, batch in enumerate(_batches(arrays)):
            if epoch == 0 and i == 3 and workdir.exists():
                workdir.rename(moved)
            yield batch

    with pytest.raises(workdir_lib.WorkdirLostError) as info:
        jmtl.fit(
            Model(),
            TASKS,
            train,
            validation=arrays,
            test=arrays,
            workdir=workdir,
            num_steps=6,
            input_key="x",
            progress_bar=False,
            checkpoint_every_steps=2,
            eval_every_steps=2,
        )
    assert f"the workdir {workdir} was deleted or replaced while this run" in str(info.value)
    assert not (moved / "checkpoints" / "4").exists() and (moved / "checkpoints" / "2").exists()
    with pytest.raises(SystemExit) as code:
        with cli.one_line_errors():
            raise info.value
    assert code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("WorkdirLostError: the workdir")


# ---- checkpoint integrity ---------------------------------------------------------------------------
SIG = {"params": {"w": [8, 16]}, "tasks": ["t0"], "weighting": "equal"}


def _state(step):
    rng = np.random.default_rng(step)
    return {"w": rng.standard_normal((8, 16)).astype(np.float32), "step": np.asarray(step, np.int32)}


def _zeros():
    return {"w": np.zeros((8, 16), np.float32), "step": np.asarray(0, np.int32)}


def _same(a, b):
    return all(np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in a)


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    d = tmp_path_factory.mktemp("integrity") / "checkpoints"
    ckpt = ckpt_lib.Checkpointer(d)
    for step in (10, 20):
        ckpt.save(step, _state(step), {"signature": SIG, "step": step})
    ckpt.close()
    return d


def _copy(src, tmp_path):
    import shutil

    d = tmp_path / "checkpoints"
    shutil.copytree(src, d)
    return d


def _flip(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 1 << bit
    path.write_bytes(bytes(data))


def test_every_save_records_checksums_of_every_file(two_steps):
    for step in (10, 20):
        record = json.loads((two_steps / str(step) / ckpt_lib.CHECKSUMS).read_text())
        files = {
            str(p.relative_to(two_steps / str(step)))
            for p in (two_steps / str(step)).rglob("*")
            if p.is_file() and p.name != ckpt_lib.CHECKSUMS
        }
        assert set(record["files"]) == files and "state/manifest.ocdbt" in files
        for rel, entry in record["files"].items():
            data = (two_steps / str(step) / rel).read_bytes()
            assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_single_bit_flips_fall_back_to_the_newest_intact_step(two_steps, tmp_path, capsys):
    """A bit flipped anywhere in step 20's data (the array chunks, the manifest, the meta JSON): never a
    'successful' restore of other values; step 10 restores exactly and step 20 is named and kept aside."""
    data_files = sorted(
        str(p.relative_to(two_steps / "20"))
        for p in (two_steps / "20").rglob("*")
        if p.is_file() and p.name != ckpt_lib.CHECKSUMS
    )
    chunks = [f for f in data_files if f.startswith("state/d/")]
    assert chunks, data_files
    cases = [
        (chunks[0], 7, 0),
        (chunks[0], -5, 6),
        (chunks[-1], 100, 3),
        ("state/manifest.ocdbt", 20, 1),
        ("meta/metadata", 2, 5),
    ]
    for i, (rel, offset, bit) in enumerate(cases):
        d = _copy(two_steps, tmp_path / str(i))
        _flip(d / "20" / rel, offset, bit)
        state, meta = ckpt_lib.Checkpointer(d).restore(_zeros(), SIG)
        assert meta["step"] == 10 and _same(state, _state(10)), rel
        err = capsys.readouterr().err
        assert (
            f"warning: resuming from step 10 instead of step 20: {d / '20'} is damaged (CheckpointIntegrityError: "
            f"checksum mismatch: {rel} sha256 differs from the save's)"
        ) in err, err
        aside = [p for p in d.iterdir() if p.name.startswith("20.damaged-")]
        assert len(aside) == 1 and (aside[0] / rel).exists()


def test_flipped_bits_in_every_step_are_an_error_not_a_restore(two_steps, tmp_path):
    d = _copy(two_steps, tmp_path)
    for step in (10, 20):
        chunk = next(p for p in sorted((d / str(step) / "state" / "d").iterdir()) if p.is_file())
        _flip(chunk, 9, 2)
    before = _tree_digest(d)
    with pytest.raises(ckpt_lib.CheckpointRestoreError) as info:
        ckpt_lib.Checkpointer(d).restore(_zeros(), SIG)
    msg = str(info.value)
    assert (
        "step 20 (CheckpointIntegrityError: checksum mismatch" in msg and "; step 10 (CheckpointIntegrityError" in msg
    )
    assert "Fix: copy an intact checkpoint folder back" in msg
    assert _tree_digest(d) == before  # nothing moved or rewritten when nothing restores


def test_a_missing_record_is_damage_only_for_saves_that_wrote_one(two_steps, tmp_path, capsys):
    d = _copy(two_steps, tmp_path)
    (d / "20" / ckpt_lib.CHECKSUMS).unlink()  # a save cut between orbax's commit and the record
    state, meta = ckpt_lib.Checkpointer(d).restore(_zeros(), SIG)
    assert meta["step"] == 10 and "checksum record jmtl_checksums.json is missing" in capsys.readouterr().err
    # A checkpoint of an earlier version (no record, no integrity flag in its meta) restores unverified.
    legacy = tmp_path / "legacy"
    ckpt = ckpt_lib.Checkpointer(legacy)
    ckpt.manager.save(
        5,
        args=ckpt_lib.ocp.args.Composite(
            state=ckpt_lib.ocp.args.StandardSave(_state(5)), meta=ckpt_lib.ocp.args.JsonSave({"signature": SIG})
        ),
    )
    ckpt.close()
    state, _ = ckpt_lib.Checkpointer(legacy).restore(_zeros(), SIG)
    assert _same(state, _state(5))


def test_asynchronous_saves_get_their_record_too(tmp_path):
    d = tmp_path / "checkpoints"
    ckpt = ckpt_lib.Checkpointer(d, asynchronous=True)
    ckpt.save(3, _state(3), {"signature": SIG})
    ckpt.save(4, _state(4), {"signature": SIG})
    ckpt.close()
    for step in (3, 4):
        assert ckpt_lib.verify_checksums(d / str(step)) is True


# ---- one line, not a traceback ----------------------------------------------------------------------
def test_a_second_sigterm_during_a_save_lets_the_save_finish(tmp_path, capsys):
    from jmtl.training import loop

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = loop._StopRequest()
        ckpt = ckpt_lib.Checkpointer(tmp_path / "checkpoints")
        stop._handle(signal.SIGTERM, None)  # the first: a flag
        with stop.saving():
            os.kill(os.getpid(), signal.SIGTERM)  # the second, delivered inside the save
            ckpt.save(7, _state(7), {"signature": SIG})
        ckpt.close()
        assert stop.signal == "SIGTERM"
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            "Received SIGTERM again during a checkpoint save: finishing the save (a few seconds), then stopping."
        ]
        state, _ = ckpt_lib.Checkpointer(tmp_path / "checkpoints").restore(_zeros(), SIG)
        assert _same(state, _state(7))
        with pytest.raises(KeyboardInterrupt):  # outside a save the second signal still stops at once ...
            stop._handle(signal.SIGTERM, None)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    with pytest.raises(SystemExit) as code:  # ... and the command line prints one line for it
        with cli.one_line_errors():
            raise KeyboardInterrupt
    assert code.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("KeyboardInterrupt: stopped at once") and "Fix: rerun" in err[0]


def test_a_full_disk_during_a_cache_build_is_one_line(tmp_path, monkeypatch, capsys):
    from jmtl.data import cache, gradnorm_toy

    builder_cls = gradnorm_toy.GradnormToy
    config = gradnorm_toy.toy_config(n_train=20, n_validation=5, n_test=5)

    def full_disk(self, *args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.array_record"))
        except OSError as e:  # tfds' writers wrap the OS error in their own types
            raise RuntimeError("Failed to write the array_record shard") from e

    monkeypatch.setattr(builder_cls, "download_and_prepare", full_disk)
    root = tmp_path / "cache"
    with pytest.raises(workdir_lib.StorageError) as info:
        cache.prepare(builder_cls, config, str(root))
    msg = str(info.value)
    assert msg.startswith("building the dataset cache failed (") and "the disk is full (No space left on device)" in msg
    assert "JMTL_CACHE_DIR" in msg and info.value.errno == errno.ENOSPC
    _one_line(msg)
    with pytest.raises(SystemExit) as code:
        with cli.one_line_errors():
            raise info.value
    assert code.value.code == 1 and len(capsys.readouterr().err.strip().splitlines()) == 1
    # Any other failure keeps its own type and traceback (it is a bug, not the disk).
    monkeypatch.setattr(builder_cls, "download_and_prepare", lambda self, *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cache.prepare(builder_cls, config, str(root))


# ---- grids ------------------------------------------------------------------------------------------
def test_a_second_grid_run_on_one_folder_is_refused_at_once(tmp_path, monkeypatch):
    from jmtl.drivers import ablation

    monkeypatch.setattr(ablation, "train", lambda *a, **k: pytest.fail("a cell trained"))
    grid = tmp_path / "grid"
    config = _toy_config(tmp_path)
    with ablation.grid_lock(grid):
        before = _tree_digest(grid)
        with pytest.raises(workdir_lib.WorkdirBusyError, match=f"the workdir {grid} is in use by another run"):
            ablation.run(config, grid, ["equal"], ["hps"], seeds=1)
        assert _tree_digest(grid) == before


def test_a_disk_or_folder_failure_stops_the_grid_instead_of_a_failed_cell(tmp_path, monkeypatch):
    from jmtl.drivers import ablation

    def lost(config, workdir):
        raise workdir_lib.WorkdirLostError(f"the workdir {workdir} was deleted or replaced. Fix: rerun", workdir)

    monkeypatch.setattr(ablation, "train", lost)
    config = _toy_config(tmp_path)
    with pytest.raises(workdir_lib.WorkdirLostError):
        ablation.run(config, tmp_path / "grid", ["equal"], ["hps"], seeds=1, single_task=False)
    assert not list((tmp_path / "grid").rglob("error.txt"))


def test_census_grid_out_that_is_a_file_is_refused_before_training(tmp_path, monkeypatch):
    from experiments import census_grid
    from jmtl.drivers import ablation

    monkeypatch.setattr(ablation, "task_list", lambda *a: pytest.fail("data was loaded"))
    monkeypatch.setattr(census_grid, "train", lambda *a, **k: pytest.fail("a cell trained"))
    out = tmp_path / "report.md"
    out.write_text("an earlier report\n")
    config = _toy_config(tmp_path)  # never read: --out is checked first
    for bad in (out, out / "sub"):
        with pytest.raises(ValueError) as info:
            census_grid.run(config, tmp_path / "grid", ["equal"], ["hps"], 1, out=str(bad))
        assert str(bad) in str(info.value) and "Fix: pass a folder path" in str(info.value)
        _one_line(str(info.value))
    assert out.read_text() == "an earlier report\n" and not (tmp_path / "grid").exists()


def _toy_config(tmp_path):
    """The grid tests' toy config, on a 200-example GradNorm toy (built once per test in ~0.2 s)."""
    from conftest import toy_config

    c = toy_config(tmp_path, num_steps=4, parallel="single")
    c.dataset.kwargs = dict(num_tasks=2, n_train=200, n_validation=50, n_test=50)
    return c


def test_packed_state_round_trips_every_dtype_and_shape():
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    state = {
        "a": rng.standard_normal((3, 4)).astype(np.float32),
        "b": np.asarray(7, np.int32),
        "c": [rng.standard_normal(5), np.zeros((0, 2), np.float32)],
        "d": np.array([True, False]),
        "e": np.asarray(rng.standard_normal(4), jnp.bfloat16),
        "f": rng.integers(0, 9, (2, 2)).astype(np.uint32),
    }
    packed, layout = ckpt_lib.pack_state(state)
    assert sorted(packed) == ["bfloat16", "bool", "float32", "float64", "int32", "uint32"]
    assert packed["float32"].size == 12 and json.loads(json.dumps(layout)) == layout
    import jax

    back = ckpt_lib.unpack_state(packed, layout, jax.tree.map(np.zeros_like, state))
    assert jax.tree.structure(back) == jax.tree.structure(state)
    for x, y in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(back)):
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
