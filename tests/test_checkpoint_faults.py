"""Checkpoint faults: a failed save ends the run at once with one clear line; a damaged latest
checkpoint is set aside and the newest intact one restores (never a silently wrong state)."""

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import numpy as np
import pytest
from conftest import ROOT

from jmtl.runs.checkpoint import (
    Checkpointer,
    CheckpointMismatchError,
    CheckpointRestoreError,
    CheckpointSaveError,
)
from jmtl.runs.metric_writers import JsonlWriter
from jmtl.runs.workdir import StorageError, format_fatal

SIG = {"params": {"w": [64, 128]}, "tasks": ["t0"], "weighting": "equal"}


def _state(step):
    rng = np.random.default_rng(step)
    return {
        "w": rng.standard_normal((64, 128)).astype(np.float32),
        "b": rng.standard_normal(7),
        "step": np.asarray(step, np.int32),
    }


def _zeros():
    return {"w": np.zeros((64, 128), np.float32), "b": np.zeros(7), "step": np.asarray(0, np.int32)}


def _same(a, b):
    return all(np.asarray(a[k]).tobytes() == np.asarray(b[k]).tobytes() for k in a)


def _save(ckpt, step):
    ckpt.save(step, _state(step), {"signature": SIG, "step": step})


def _other_threads(before=()):
    """Non-daemon threads alive now that were not alive at ``before`` (other tests leave their own).

    Idle ``asyncio_N`` executor workers are left out: concurrent.futures wakes and joins them at exit.
    Whether a process really exits is checked end to end by the subprocess tests below."""
    return [
        t.name
        for t in threading.enumerate()
        if t is not threading.current_thread()
        and not t.daemon
        and t.is_alive()
        and t not in before
        and not t.name.startswith("asyncio_")
    ]


# ---- failed saves ----------------------------------------------------------------------------------
def _chattr_works(tmp_path) -> bool:
    probe = tmp_path / f"probe-{uuid.uuid4().hex}"
    probe.mkdir()
    try:
        if (
            shutil.which("chattr") is None
            or subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode
        ):
            return False
        try:
            (probe / "x").write_text("x")
            return False  # immutable but still writable: not a real immutable flag
        except OSError:
            return True
    finally:
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True)


def test_save_into_a_folder_replaced_by_a_file_fails_at_once(tmp_path):
    d = tmp_path / "checkpoints"
    ckpt = Checkpointer(d)
    _save(ckpt, 10)
    d.rename(tmp_path / "moved")
    d.write_text("a file where the checkpoint folder was")
    before = set(threading.enumerate())
    t0 = time.time()
    with pytest.raises(CheckpointSaveError) as info:
        _save(ckpt, 20)
    assert time.time() - t0 < 10
    msg = format_fatal(info.value)
    assert msg.startswith(f"CheckpointSaveError: saving checkpoint 20 failed ({d}): ")
    assert "Fix: " in msg and "\n" not in msg
    assert _other_threads(before) == []  # nothing left that would block interpreter shutdown


def test_immutable_folder_save_fails_naming_folder_and_fix(tmp_path):
    if not _chattr_works(tmp_path):
        pytest.skip("chattr +i does not work here (needs root and a file system with the immutable flag)")
    d = tmp_path / "checkpoints"
    ckpt = Checkpointer(d)
    _save(ckpt, 10)
    subprocess.run(["chattr", "+i", str(d)], check=True)
    before = set(threading.enumerate())
    try:
        with pytest.raises(CheckpointSaveError) as info:
            _save(ckpt, 20)
    finally:
        subprocess.run(["chattr", "-i", str(d)], check=True)
    assert str(info.value) == (
        f"saving checkpoint 20 failed ({d}): operation not permitted (the folder may be immutable: lsattr / "
        "chattr -i, or owned by another user). Fix: make the folder writable (chattr -i, chmod / chown) or use "
        "another --workdir"
    )
    assert _other_threads(before) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (a real ENOSPC); skipped where mounting is not permitted."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:  # lazy: a file a failed test left open must not keep the mount
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_full_disk_checkpoint_and_log_writes_fail_with_one_line(tiny_disk):
    ckpt = Checkpointer(tiny_disk / "checkpoints", max_to_keep=10)
    with pytest.raises(CheckpointSaveError) as info:
        for step in range(1, 20):  # 32 KiB of weights each: the disk fills within a few saves
            _save(ckpt, step)
    assert 1 < info.value.step < 20
    assert format_fatal(info.value).startswith(
        f"CheckpointSaveError: saving checkpoint {info.value.step} failed ({tiny_disk / 'checkpoints'}): the disk is full"
    )
    # The disk is full: the logs fail too, with the same kind of line.
    ckpt.manager.close()
    w = JsonlWriter(tiny_disk)
    with pytest.raises(StorageError) as info:
        for _ in range(100_000):
            w.write("eval", {"step": 1, "pad": "x" * 1000})
    for f in w._files.values():
        try:
            f.close()
        except OSError:  # its buffer cannot be written: the disk is full
            pass
    assert format_fatal(info.value).startswith(
        f"StorageError: writing the eval metrics failed ({tiny_disk / 'metrics.jsonl'}): the disk is full"
    )


_ASYNC_FAILURE = textwrap.dedent(
    """
    import sys, threading, numpy as np
    from jmtl.runs.checkpoint import Checkpointer
    from jmtl.runs.workdir import exit_fatal
    from pathlib import Path
    d = Path(sys.argv[1])
    ckpt = Checkpointer(d, asynchronous=True)
    state = {"w": np.ones((64, 128), np.float32)}
    ckpt.save(1, state, {})
    ckpt.wait()
    d.rename(d.with_name("moved")); d.write_text("a file")
    try:
        ckpt.save(2, state, {})   # fails in orbax's background threads
        ckpt.save(3, state, {})   # the failure surfaces here (or in close)
        ckpt.close(timeout=10)
    except Exception as e:
        stuck = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
        print("STUCK", len(stuck), flush=True)
        exit_fatal(e, join_timeout_s=1)
    print("NO ERROR", flush=True)
    """
)


def test_failed_async_save_exits_promptly_through_exit_fatal(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    t0 = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", _ASYNC_FAILURE, str(tmp_path / "ck")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert time.time() - t0 < 90  # orbax's stuck threads alone would hold the process for 300 s
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    stuck = int(proc.stdout.split("STUCK ")[1].split()[0])
    assert stuck > 0  # the threads that used to hang interpreter shutdown were there
    assert proc.stderr.strip().splitlines()[-1].startswith("CheckpointSaveError: saving checkpoint")
    assert str(tmp_path / "ck") in proc.stderr.strip().splitlines()[-1]


def test_training_run_ends_promptly_when_the_checkpoint_folder_breaks(tmp_path):
    """The issue's reproduction: a long run whose checkpoint folder becomes unwritable mid-run."""
    wd = tmp_path / "wd"
    immutable = _chattr_works(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    cmd = [
        sys.executable,
        "-m",
        "experiments.train",
        "--config",
        "experiments/configs/gradnorm_toy.py",
        "--workdir",
        str(wd),
        "--config.num_steps=100000",
        "--config.checkpoint_every_steps=20",
        "--config.eval_every_steps=1000",
        "--config.progress_bar=False",
        f"--config.dataset.cache_dir={tmp_path / 'cache'}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    ckpts = wd / "checkpoints"
    try:
        deadline = time.time() + 240
        while not (ckpts / "40").exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        if immutable:
            subprocess.run(["chattr", "+i", str(ckpts), str(wd)], check=True)
        else:  # portable: a file where the checkpoint folder was
            ckpts.rename(wd / "moved")
            ckpts.write_text("a file")
        t_fault = time.time()
        out, err = proc.communicate(timeout=120)  # a hang fails here, by timeout
        assert time.time() - t_fault < 90
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(ckpts), str(wd)], capture_output=True)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode not in (0, None), err[-3000:]
    last = err.strip().splitlines()[-1]
    assert "CheckpointSaveError: saving checkpoint" in last and str(ckpts) in last, err[-3000:]
    assert "Fix: " in last


# ---- damaged checkpoints ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    d = tmp_path_factory.mktemp("pristine") / "checkpoints"
    ckpt = Checkpointer(d)
    _save(ckpt, 10)
    _save(ckpt, 20)
    ckpt.close()
    return d


def _copy(pristine, tmp_path):
    d = tmp_path / "checkpoints"
    shutil.copytree(pristine, d)
    return d


def test_every_damaged_file_falls_back_or_restores_exactly(pristine, tmp_path, capsys):
    """Delete or empty each file of the latest step in turn: the restore is either step 20 bit for bit
    (orbax did not need that file) or step 10 with a warning, the damaged folder moved aside, never lost."""
    files = sorted(str(p.relative_to(pristine / "20")) for p in (pristine / "20").rglob("*") if p.is_file())
    assert "state/manifest.ocdbt" in files and "meta/metadata" in files
    fell_back = []
    for i, rel in enumerate(files):
        for mode in ("delete", "empty"):
            d = _copy(pristine, tmp_path / f"{i}{mode}")
            target = d / "20" / rel
            target.unlink() if mode == "delete" else target.write_bytes(b"")
            state, meta = Checkpointer(d).restore(_zeros(), SIG)
            if meta["step"] == 20:
                assert _same(state, _state(20)), (rel, mode)
                continue
            fell_back.append((rel, mode))
            assert meta["step"] == 10 and _same(state, _state(10)), (rel, mode)
            assert not (d / "20").exists()
            aside = [p.name for p in d.iterdir() if p.name.startswith(("20.damaged-", "20.incomplete-"))]
            assert len(aside) == 1, (rel, mode)
            assert (d / aside[0] / rel).exists() == (mode == "empty")  # moved, not deleted
    # The files every restore reads do fall back (the raw tracebacks).
    assert {("state/manifest.ocdbt", "delete"), ("state/manifest.ocdbt", "empty"), ("meta/metadata", "empty")} <= set(
        fell_back
    )
    capsys.readouterr()


def test_fallback_message_and_the_next_save_of_that_step(pristine, tmp_path, capsys):
    d = _copy(pristine, tmp_path)
    (d / "20" / "state" / "manifest.ocdbt").write_bytes(b"")
    ckpt = Checkpointer(d)
    assert ckpt.latest_step() == 20
    state, meta = ckpt.restore(_zeros(), SIG)
    assert meta["step"] == 10
    out = capsys.readouterr().err
    # The checksum record catches the emptied file before orbax reads it (it would say DATA_LOSS).
    assert (
        f"warning: resuming from step 10 instead of step 20: {d / '20'} is damaged (CheckpointIntegrityError: "
        "checksum mismatch: state/manifest.ocdbt has 0 bytes"
    ) in out
    ((aside, reason),) = ckpt.damaged
    assert aside.parent == d and aside.name.startswith("20.damaged-") and "manifest" in reason
    assert ckpt.latest_step() == 10
    _save(ckpt, 20)  # the resumed run reaches step 20 again: no collision with the damaged folder
    ckpt.close()
    state, meta = Checkpointer(d).restore(_zeros(), SIG)
    assert meta["step"] == 20 and _same(state, _state(20))
    assert aside.exists()


def test_no_intact_checkpoint_is_an_error_naming_every_folder(pristine, tmp_path):
    d = _copy(pristine, tmp_path)
    for step in (10, 20):
        (d / str(step) / "state" / "manifest.ocdbt").unlink()
    with pytest.raises(CheckpointRestoreError) as info:
        Checkpointer(d).restore(_zeros(), SIG)
    msg = str(info.value)
    missing = "(CheckpointIntegrityError: checksum mismatch: state/manifest.ocdbt missing)"
    assert msg.startswith(f"no checkpoint in {d} restores: step 20 {missing}")
    assert f"; step 10 {missing}" in msg and "Fix: copy an intact checkpoint folder back" in msg
    assert sorted(p.name for p in d.iterdir()) == ["10", "20"]  # nothing moved when nothing restores


def test_a_caller_error_is_not_mistaken_for_damage(pristine, tmp_path):
    """An abstract state the checkpoint cannot restore into fails every step: nothing may be set aside."""
    d = _copy(pristine, tmp_path)
    with pytest.raises(CheckpointRestoreError, match="the checkpoint's state has 3 arrays, this run's 4") as info:
        Checkpointer(d).restore({**_zeros(), "extra": np.zeros(2)}, SIG)
    assert "this run's 4" in str(info.value.__cause__)
    assert sorted(p.name for p in d.iterdir()) == ["10", "20"]
    # The per-array layout of earlier versions (pack=False) still reads, and orbax's own refusal of an
    # abstract state it cannot restore into is not damage either.
    legacy = tmp_path / "legacy"
    ckpt = Checkpointer(legacy, pack=False)
    _save(ckpt, 10)
    ckpt.close()
    state, _ = Checkpointer(legacy).restore(_zeros(), SIG)
    assert _same(state, _state(10))
    with pytest.raises(CheckpointRestoreError, match="Unsupported type") as info:
        Checkpointer(legacy).restore({**_zeros(), "step": np.int32(0)}, SIG)
    assert sorted(p.name for p in legacy.iterdir()) == ["10"]


def test_a_different_model_is_refused_not_treated_as_damage(pristine, tmp_path):
    d = _copy(pristine, tmp_path)
    with pytest.raises(CheckpointMismatchError, match="holds a checkpoint of a different model"):
        Checkpointer(d).restore(_zeros(), {**SIG, "tasks": ["t0", "t1"]})
    assert sorted(p.name for p in d.iterdir()) == ["10", "20"]  # nothing moved
