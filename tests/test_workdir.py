"""The workdir: a file in the way, one run at a time (flock), what may change on resume, fatal errors."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, toy_config

from jmtl.runs import workdir as wd_lib
from jmtl.runs.workdir import (
    Change,
    ResumeConfigError,
    StorageError,
    WorkdirBusyError,
    WorkdirNotADirectoryError,
    check_resume,
    flatten_config,
    format_fatal,
    record_resume,
)


# ---- the folder ------------------------------------------------------------------------------------
def test_prepare_creates_nested_folders_and_returns_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = wd_lib.prepare_workdir("a/b/c")
    assert path == tmp_path / "a" / "b" / "c" and path.is_dir() and path.is_absolute()
    assert wd_lib.prepare_workdir(path) == path  # existing folder: fine


@pytest.mark.parametrize("where", ["itself", "parent"])
def test_workdir_that_is_a_file_is_a_clear_error(tmp_path, where):
    (tmp_path / "f").write_text("not a folder")
    target = tmp_path / "f" if where == "itself" else tmp_path / "f" / "run"
    with pytest.raises(WorkdirNotADirectoryError) as info:
        wd_lib.prepare_workdir(target)
    msg = format_fatal(info.value)
    assert str(tmp_path / "f") in msg and "not a folder" in msg and "Fix: pass another --workdir" in msg
    assert "\n" not in msg and not isinstance(info.value, FileExistsError)
    assert (tmp_path / "f").read_text() == "not a folder"  # untouched


# ---- the lock --------------------------------------------------------------------------------------
_HOLD = textwrap.dedent(
    """
    import sys, time
    from jmtl.runs.workdir import workdir_lock
    with workdir_lock(sys.argv[1]) as info:
        print("LOCKED", info["pid"], flush=True)
        time.sleep(120)
    """
)
_TRY = textwrap.dedent(
    """
    import sys
    from jmtl.runs.workdir import WorkdirBusyError, workdir_lock, format_fatal
    try:
        with workdir_lock(sys.argv[1]):
            print("GOT IT", flush=True)
    except WorkdirBusyError as e:
        print(format_fatal(e), flush=True)
        sys.exit(3)
    """
)


def _python(code, *args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        **kw,
    )


def test_second_run_fails_fast_and_a_killed_holder_leaves_no_stuck_lock(tmp_path):
    holder = _python(_HOLD, str(tmp_path))
    try:
        line = holder.stdout.readline()
        assert line.startswith("LOCKED"), holder.stderr.read()
        holder_pid = int(line.split()[1])
        assert holder_pid == holder.pid
        t0 = time.time()
        second = _python(_TRY, str(tmp_path))
        out, err = second.communicate(timeout=60)
        assert second.returncode == 3, err
        assert time.time() - t0 < 30  # fails at once, never waits for the holder
        assert f"WorkdirBusyError: the workdir {tmp_path} is in use by another run (pid {holder_pid} on " in out
        assert "wait for it to finish or use another --workdir" in out
    finally:
        holder.send_signal(signal.SIGKILL)  # no handler, no cleanup: the kernel drops the flock
        holder.communicate(timeout=30)
    assert (tmp_path / ".lock").exists()  # the file stays; only the flock counts
    third = _python(_TRY, str(tmp_path))
    out, err = third.communicate(timeout=60)
    assert third.returncode == 0 and "GOT IT" in out, err


def test_lock_is_exclusive_within_one_process_and_released_after_the_block(tmp_path):
    with wd_lib.workdir_lock(tmp_path) as info:
        assert info["pid"] == os.getpid()
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(WorkdirBusyError, match=rf"pid {os.getpid()} on"):
            with wd_lib.workdir_lock(tmp_path):
                pass
    with wd_lib.workdir_lock(tmp_path):  # released
        pass


# ---- resume policy ---------------------------------------------------------------------------------
def test_flatten_config_gives_dotted_leaves(tmp_path):
    flat = flatten_config({"a": 1, "b": {"c": [1, 2], "d": {"e": None}, "f": {}}})
    assert flat == {"a": 1, "b.c": [1, 2], "b.d.e": None, "b.f": {}}
    c = toy_config(tmp_path)
    flat = flatten_config(c)
    assert flat["optimizer.learning_rate"] == c.optimizer.learning_rate
    assert flat["dataset.kwargs.num_tasks"] == 2
    # The saved config.json (what the workdir holds) flattens to the same thing.
    assert flatten_config(json.loads(c.to_json_best_effort(indent=2))) == flat


def test_resume_allows_cadence_paths_and_longer_runs(tmp_path):
    old = toy_config(tmp_path)
    new = toy_config(
        tmp_path,
        num_epochs=30,
        log_every_steps=5,
        eval_every_steps=7,
        progress_bar=True,
        **{"dataset.cache_dir": "/elsewhere", "nonfinite.policy": "skip"},
    )
    changes = check_resume(json.loads(old.to_json_best_effort()), new, restored_step=160, total_steps=2400)
    assert changes == sorted(changes)
    assert {c.field: (c.old, c.new) for c in changes} == {
        "num_epochs": (15, 30),
        "log_every_steps": (10, 5),
        "eval_every_steps": (-1, 7),
        "progress_bar": (False, True),
        "dataset.cache_dir": (old.dataset.cache_dir, "/elsewhere"),
        "nonfinite.policy": ("raise", "skip"),
    }
    assert check_resume(old, toy_config(tmp_path)) == []  # the same config: nothing to record


def test_resume_refuses_every_other_change_listing_all_of_them(tmp_path):
    old = toy_config(tmp_path)
    new = toy_config(
        tmp_path,
        batch_size=50,
        seed=3,
        log_every_steps=5,
        **{"optimizer.learning_rate": 0.01, "weighting.name": "mgda", "dataset.kwargs.num_tasks": 3},
    )
    with pytest.raises(ResumeConfigError) as info:
        check_resume(old, new)
    msg = str(info.value)
    for part in (
        "batch_size: 100 -> 50",
        "seed: 0 -> 3",
        "optimizer.learning_rate: 0.001 -> 0.01",
        "weighting.name: 'equal' -> 'mgda'",
        "dataset.kwargs.num_tasks: 2 -> 3",
    ):
        assert part in msg, part
    assert "log_every_steps" not in msg.split("Fix:")[0]  # allowed changes are not listed as problems
    assert "Fix: restore the old values to resume, or use a new --workdir" in msg
    refused = {c.field for c in info.value.changes}
    assert refused == {"batch_size", "seed", "optimizer.learning_rate", "weighting.name", "dataset.kwargs.num_tasks"}
    # A field present on one side only (a hyperparameter of another method) is a change too.
    saved = {"weighting": {"name": "uncertainty", "hparams": {"init": 0.0}}}
    other = {"weighting": {"name": "mgda", "hparams": {"normalization": "loss+"}}}
    with pytest.raises(ResumeConfigError) as info:
        check_resume(saved, other)
    assert {(c.field, c.old, c.new) for c in info.value.changes} == {
        ("weighting.name", "uncertainty", "mgda"),
        ("weighting.hparams.init", 0.0, wd_lib._MISSING),
        ("weighting.hparams.normalization", wd_lib._MISSING, "loss+"),
    }


def test_fields_added_since_the_checkpoint_count_as_their_default(tmp_path):
    new = toy_config(tmp_path)
    saved = json.loads(new.to_json_best_effort())
    del saved["optimizer"]["clip_norm"], saved["writers"]  # a config.json written before these fields existed
    defaults = {"optimizer": {"clip_norm": 0.0}, "writers": ["jsonl"]}
    assert check_resume(saved, new, defaults=defaults) == []
    new.optimizer.clip_norm = 1.0  # not the default: the old run did not clip
    with pytest.raises(ResumeConfigError, match=r"optimizer.clip_norm: '<absent>' -> 1.0"):
        check_resume(saved, new, defaults=defaults)
    with pytest.raises(ResumeConfigError, match=r"optimizer.clip_norm: '<absent>' -> 1.0"):
        check_resume(saved, new)  # without defaults every new field is a change


def test_an_empty_default_that_changed_type_is_no_change(tmp_path):
    """selection_reference was () in a few commits and {} after: a workdir started with [] resumes
    (the board's rlw cell was refused with 'selection_reference: [] -> {}'); a non-empty value still counts."""
    new = toy_config(tmp_path)
    saved = json.loads(new.to_json_best_effort())
    saved["selection_reference"] = []
    assert check_resume(saved, new) == []
    saved["selection_reference"] = ["left"]
    with pytest.raises(ResumeConfigError, match=r"selection_reference: \['left'\] -> \{\}"):
        check_resume(saved, new)
    from jmtl.training import config_schema

    assert config_schema.differences({"a": [], "b": 1}, {"a": {}, "b": 1}) == []
    assert config_schema.differences({"a": [1]}, {"a": {}}) == ["a: [1] -> {}"]


def test_resume_refuses_a_run_shorter_than_the_checkpoint(tmp_path):
    old = toy_config(tmp_path, num_steps=200)
    with pytest.raises(ResumeConfigError, match="the checkpoint is at step 160 but the new run would stop at 80"):
        check_resume(old, toy_config(tmp_path, num_steps=80), restored_step=160, total_steps=80)
    # Stopping exactly at the checkpoint, or later, is fine.
    assert check_resume(old, toy_config(tmp_path, num_steps=160), restored_step=160, total_steps=160)


def test_record_resume_appends_history_and_updates_config(tmp_path):
    old = toy_config(tmp_path)
    wd_lib.write_config(tmp_path, old)
    assert (tmp_path / "config.json").read_text() == old.to_json_best_effort(indent=2)  # as before
    mid = toy_config(tmp_path, num_epochs=20)
    ch1 = check_resume(wd_lib.load_saved_config(tmp_path), mid, restored_step=100, total_steps=1600)
    record_resume(tmp_path, 100, ch1, mid)
    new = toy_config(tmp_path, num_epochs=40, log_every_steps=1)
    ch2 = check_resume(wd_lib.load_saved_config(tmp_path), new, restored_step=1600, total_steps=3200)
    assert [c.field for c in ch2] == ["log_every_steps", "num_epochs"]
    assert ch2[1] == Change("num_epochs", 20, 40)  # compared with the config of the latest resume
    record_resume(tmp_path, 1600, ch2, new)
    assert flatten_config(wd_lib.load_saved_config(tmp_path)) == flatten_config(new)
    lines = [json.loads(l) for l in (tmp_path / "resumes.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [100, 1600]
    assert lines[0]["changes"] == {"num_epochs": [15, 20]} and lines[0]["pid"] == os.getpid() and lines[0]["host"]
    # The history rebuilds the first config: undo the resumes, newest first.
    flat = flatten_config(wd_lib.load_saved_config(tmp_path))
    for rec in reversed(lines):
        for field, (before, _) in rec["changes"].items():
            flat[field] = before
    assert flat == flatten_config(old)


# ---- fatal errors ----------------------------------------------------------------------------------
def test_full_disk_is_one_line_naming_the_path_and_the_fix(tmp_path):
    path = tmp_path / "train_log.jsonl"
    raw = OSError(errno.ENOSPC, "No space left on device", str(path))
    for exc in (raw, StorageError("writing the train log", path, raw)):
        assert wd_lib.is_expected_failure(exc)
        msg = format_fatal(exc)
        assert "\n" not in msg and str(path) in msg, msg
        assert "the disk is full" in msg and "Fix: free space on that disk, or use a --workdir on another disk" in msg
    # tensorstore reports ENOSPC only in its message text
    wrapped = ValueError('DATA_LOSS: Error writing local file "/x/ocdbt/d/1": No space left on device [errno 28]')
    assert StorageError("saving checkpoint 3", "/x", wrapped).reason.startswith("the disk is full")
    assert not wd_lib.is_expected_failure(ValueError("a bug"))


def test_exit_fatal_does_not_wait_for_stuck_threads(tmp_path):
    code = textwrap.dedent(
        """
        import threading, time
        from jmtl.runs.workdir import StorageError, exit_fatal
        threading.Thread(target=time.sleep, args=(300,), name="stuck-orbax-like").start()  # non-daemon
        print("partial output", end="", flush=False)
        exit_fatal(StorageError("saving checkpoint 7", "/w/checkpoints", PermissionError(1, "Operation not permitted")),
                   join_timeout_s=0.5)
        """
    )
    t0 = time.time()
    proc = _python(code)
    out, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 30
    assert proc.returncode == 1
    assert out == "partial output"  # flushed before os._exit
    assert err.strip().splitlines() == [
        "StorageError: saving checkpoint 7 failed (/w/checkpoints): operation not permitted (the folder may be "
        "immutable: lsattr / chattr -i, or owned by another user). Fix: make the folder writable (chattr -i, "
        "chmod / chown) or use another --workdir"
    ]
