"""Preemption, hard kills and non-finite losses: no lost work, no silent wrong answer."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import ROOT, run_script, toy_config

from jmtl.data import pipeline
from jmtl.training.loop import NonFiniteLossError, train

STEPS = 400


def _xla_cache_env(cache) -> dict:
    """A persistent XLA compilation cache shared by this module's training subprocesses (beside their
    data cache): they all compile the same toy programs, so only the reference run pays for it.
    The programs (and so the bitwise comparisons below) are the same with or without the cache."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(Path(cache).parent / "xla_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }


def _start(workdir, cache, *overrides):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **_xla_cache_env(cache))
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tests/scripts/train_run.py"),
            str(workdir),
            f"dataset.cache_dir={cache}",
            f"num_steps={STEPS}",
            "eval_every_steps=100",
            "checkpoint_every_steps=25",
            *overrides,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _wait_for_steps(workdir, min_step, timeout=300):
    """Blocks until train_log.jsonl shows ``min_step`` (the run is mid-training)."""
    path = workdir / "train_log.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            lines = [l for l in path.read_text().splitlines() if l.strip()]
            try:
                if lines and json.loads(lines[-1])["step"] >= min_step:
                    return
            except ValueError:  # a line being written
                pass
        time.sleep(0.05)
    raise TimeoutError(f"no step {min_step} in {path}")


def _result(stdout):
    return json.loads([l for l in stdout.splitlines() if l.startswith("RESULT ")][-1][7:])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    cache = tmp / "cache"
    out = run_script(
        "train_run.py",
        str(tmp / "wd"),
        f"dataset.cache_dir={cache}",
        f"num_steps={STEPS}",
        "eval_every_steps=100",
        "checkpoint_every_steps=25",
        env=_xla_cache_env(cache),
    )
    return out, cache


def test_sigterm_saves_exits_zero_and_resumes_exactly(tmp_path, reference):
    ref, cache = reference
    wd = tmp_path / "wd"
    proc = _start(wd, cache, "log_every_steps=1")
    _wait_for_steps(wd, 60)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Received SIGTERM: saved a checkpoint at step" in stdout
    assert "Resume with the same command" in stdout
    stopped = _result(stdout)["summary"]["step"]
    assert 60 <= stopped < STEPS
    resumed = run_script(
        "train_run.py",
        str(wd),
        f"dataset.cache_dir={cache}",
        f"num_steps={STEPS}",
        "eval_every_steps=100",
        "checkpoint_every_steps=25",
        "log_every_steps=1",
        env=_xla_cache_env(cache),
    )
    assert resumed["params"] == ref["params"]  # bitwise (JSON floats round-trip exactly)
    assert resumed["summary"]["final"] == ref["summary"]["final"]


def _complete_checkpoint_steps(workdir):
    """Steps of the finished checkpoint folders (``<step>/`` with orbax's commit marker)."""
    ckpts = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists())


@pytest.mark.parametrize("kill_after_step", [37, 140])
def test_kill9_then_resume_is_bitwise_equal(tmp_path, reference, kill_after_step):
    ref, cache = reference
    wd = tmp_path / "wd"
    proc = _start(wd, cache, "log_every_steps=1")
    _wait_for_steps(wd, kill_after_step)
    proc.kill()  # SIGKILL: no handler runs; possibly mid-checkpoint
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL  # the kill landed: the run had not finished on its own
    # ... and mid-run: a checkpoint was written, and it is not the last step.
    killed_at = _complete_checkpoint_steps(wd)[-1]
    assert 0 < (kill_after_step // 25) * 25 <= killed_at < STEPS, killed_at  # saves are synchronous
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **_xla_cache_env(cache))
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests/scripts/train_run.py"),
            str(wd),
            f"dataset.cache_dir={cache}",
            f"num_steps={STEPS}",
            "eval_every_steps=100",
            "checkpoint_every_steps=25",
            "log_every_steps=1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The resumed run continued from the killed run's last checkpoint, not from scratch.
    assert f"Resuming from step {killed_at} of {STEPS}" in done.stdout, done.stdout[-2000:]
    resumed = _result(done.stdout)
    assert resumed["params"] == ref["params"]
    steps = [json.loads(l)["step"] for l in (wd / "metrics.jsonl").read_text().splitlines()]
    assert steps == [100, 200, 300, 400]  # no duplicated evaluations after the resume
    train_steps = [json.loads(l)["step"] for l in (wd / "train_log.jsonl").read_text().splitlines()]
    assert train_steps == list(range(1, STEPS + 1))  # every step logged once, none lost or repeated


def _nan_after(step_to_poison: int, task_key: str):
    """Wraps MTLDataset.train_iterator so batch number ``step_to_poison`` (1-based) has a NaN label."""
    original = pipeline.MTLDataset.train_iterator

    def patched(self, *args, **kwargs):
        it = original(self, *args, **kwargs)

        class Poisoned:
            count = 0

            def __next__(self_inner):
                batch = dict(next(it))
                self_inner.count += 1
                if self_inner.count >= step_to_poison:
                    batch[task_key] = batch[task_key].copy()
                    batch[task_key][0, 0] = np.nan
                return batch

            def get_state(self_inner):
                return it.get_state()

            def set_state(self_inner, s):
                it.set_state(s)

        return Poisoned()

    return patched


def _config(tmp_path, **kw):
    # log_every_steps=7: the NaN steps fall between logging steps, and every step is still checked.
    # checkpoint_every_steps=20: a checkpoint at each evaluation (the default cadence is by time).
    return toy_config(
        tmp_path, **{"num_steps": 60, "eval_every_steps": 20, "log_every_steps": 7, "checkpoint_every_steps": 20, **kw}
    )


def test_nan_loss_raises_naming_task_step_and_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.MTLDataset, "train_iterator", _nan_after(31, "t1"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 31 in task\(s\) t1.*step 20"):
        train(_config(tmp_path), str(tmp_path / "wd"))
    # Only finite states were checkpointed: the latest is step 20, and it restores.
    ckpts = sorted(int(p.name) for p in (tmp_path / "wd" / "checkpoints").iterdir() if p.name.isdigit())
    assert ckpts[-1] == 20


def test_nan_skip_policy_skips_and_stops_after_m_consecutive(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.MTLDataset, "train_iterator", _nan_after(41, "t0"))
    with pytest.raises(NonFiniteLossError, match="5 consecutive non-finite steps up to step 45"):
        train(
            _config(tmp_path, **{"nonfinite.policy": "skip", "nonfinite.max_consecutive_skips": 5}),
            str(tmp_path / "wd"),
        )


# ---- determinism, and a crash in the middle of a checkpoint save ------------------------------------
# (1 device vs 8 devices agree: tests/test_parallel.py.)

SHORT = {"num_steps": 40, "eval_every_steps": 10, "checkpoint_every_steps": 10, "log_every_steps": 5}
CRASH_STEP = 30  # the save that is "interrupted"


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state.params)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """A 40-step run, with copies of its step-30 checkpoint folder taken at every rename orbax makes
    while saving it: what a process killed at that moment leaves behind, exactly as orbax wrote it."""
    import shutil

    from orbax.checkpoint._src.path import async_path

    tmp = tmp_path_factory.mktemp("uninterrupted")
    snapshots = []
    rename = async_path.rename

    async def spying_rename(src, dst):
        tmp_name = f"{CRASH_STEP}.orbax-checkpoint-tmp"
        step_tmp = next((p for p in (Path(src), *Path(src).parents) if p.name == tmp_name), None)
        if step_tmp is not None:
            snapshots.append((f"before renaming {Path(src).name}", tmp / f"snap{len(snapshots)}"))
            shutil.copytree(step_tmp, snapshots[-1][1])
        return await rename(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(async_path, "rename", spying_rename)
        _, state = train(toy_config(tmp, **SHORT), str(tmp / "wd"))
    # orbax 0.12.8: items meta and state are renamed inside '30.orbax-checkpoint-tmp', then the step folder.
    assert [s[0] for s in snapshots] == [
        "before renaming meta.orbax-checkpoint-tmp",
        "before renaming state.orbax-checkpoint-tmp",
        f"before renaming {CRASH_STEP}.orbax-checkpoint-tmp",
    ], snapshots
    return tmp, state, snapshots


def test_same_config_and_seed_is_bitwise_reproducible(uninterrupted, tmp_path):
    tmp, state, _ = uninterrupted
    _, again = train(toy_config(tmp, **SHORT), str(tmp_path / "wd"))
    for name in ("metrics.jsonl", "train_log.jsonl"):
        assert (tmp_path / "wd" / name).read_bytes() == (tmp / "wd" / name).read_bytes(), name
    for a, b in zip(_leaves(again), _leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.tobytes() == b.tobytes()  # bitwise, -0.0 and NaN payloads included


@pytest.fixture(scope="module")
def stopped_at_20(uninterrupted):
    tmp = uninterrupted[0]
    train(toy_config(tmp, **{**SHORT, "num_steps": 20}), str(tmp / "part"))
    return tmp / "part"


@pytest.mark.parametrize("snapshot", [0, 1, 2, "step_dir_without_commit_marker"])
def test_half_written_checkpoint_is_never_the_latest(uninterrupted, stopped_at_20, tmp_path, snapshot):
    import shutil

    import orbax.checkpoint as ocp

    from jmtl.runs.checkpoint import Checkpointer

    tmp, full_state, snapshots = uninterrupted
    wd = tmp_path / "wd"
    shutil.copytree(stopped_at_20, wd)
    ckpts = wd / "checkpoints"
    # The crashed run had got to step 30 and evaluated there before it died mid-save.
    full_metrics = (tmp / "wd" / "metrics.jsonl").read_text().splitlines()
    with open(wd / "metrics.jsonl", "a") as f:
        f.write(full_metrics[2] + "\n")
    if snapshot == "step_dir_without_commit_marker":
        # What orbax never leaves on a local disk (it renames a finished folder) but a half-done copy or
        # sync of a workdir does: '30/' holding part of the files. orbax alone would take it as the latest.
        broken = ckpts / str(CRASH_STEP)
        shutil.copytree(snapshots[2][1], broken)
        (broken / "commit_success.txt").unlink()
        data_file = max((p for p in (broken / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
        manager = ocp.CheckpointManager(ckpts, options=ocp.CheckpointManagerOptions(read_only=True))
        assert manager.latest_step() == CRASH_STEP  # the reason Checkpointer sets such folders aside
        manager.close()
    else:
        shutil.copytree(snapshots[snapshot][1], ckpts / f"{CRASH_STEP}.orbax-checkpoint-tmp")

    ckpt = Checkpointer(ckpts)
    assert ckpt.latest_step() == 20
    assert ckpt.manager.all_steps() == [10, 20]
    ckpt.close()

    _, resumed = train(toy_config(tmp, **SHORT), str(wd))
    for a, b in zip(_leaves(resumed), _leaves(full_state), strict=True):
        assert a.tobytes() == b.tobytes()
    assert (wd / "metrics.jsonl").read_bytes() == (tmp / "wd" / "metrics.jsonl").read_bytes()
    names = sorted(p.name for p in ckpts.iterdir())
    assert f"{CRASH_STEP}.orbax-checkpoint-tmp" not in names  # left-overs of killed saves are deleted
    assert [n for n in names if n.isdigit()] == ["30", "40"]
    if snapshot == "step_dir_without_commit_marker":
        assert [n for n in names if n.startswith(f"{CRASH_STEP}.incomplete-")]  # moved aside, not deleted


# ---- logs that tell the truth, refused resumes, one run per workdir ---------------------------------
def test_resume_drops_partial_log_lines_and_refuses_a_changed_config(uninterrupted, stopped_at_20, tmp_path):
    import shutil

    from jmtl.runs.workdir import ResumeConfigError

    tmp, full_state, _ = uninterrupted
    wd = tmp_path / "wd"
    shutil.copytree(stopped_at_20, wd)
    # Killed while writing: a partial last line in each log (and records past the checkpoint).
    full_train = (tmp / "wd" / "train_log.jsonl").read_text().splitlines()
    with open(wd / "train_log.jsonl", "a") as f:
        f.write(full_train[4] + "\n" + full_train[5][:17])
    with open(wd / "metrics.jsonl", "a") as f:
        f.write('{"step": 30, "epoch": 0.37, "valid')
    before = {p.name: p.read_bytes() for p in wd.iterdir() if p.is_file() and p.name != ".lock"}
    with pytest.raises(
        ResumeConfigError, match=r"optimizer.learning_rate: 0.001 -> 0.002.*Fix: restore the old values"
    ):
        train(toy_config(tmp, **{**SHORT, "optimizer.learning_rate": 2e-3}), str(wd))
    assert {p.name: p.read_bytes() for p in wd.iterdir() if p.is_file() and p.name in before} == before  # untouched
    _, resumed = train(toy_config(tmp, **SHORT), str(wd))  # num_steps 20 -> 40: extending is allowed
    for a, b in zip(_leaves(resumed), _leaves(full_state), strict=True):
        assert a.tobytes() == b.tobytes()
    for name in ("metrics.jsonl", "train_log.jsonl"):
        assert (wd / name).read_bytes() == (tmp / "wd" / name).read_bytes(), name
    (record,) = [json.loads(l) for l in (wd / "resumes.jsonl").read_text().splitlines()]
    assert record["step"] == 20 and record["changes"] == {"num_steps": [20, 40]}
    assert json.loads((wd / "config.json").read_text())["num_steps"] == 40


def test_fresh_start_moves_old_logs_aside(uninterrupted, tmp_path):
    tmp = uninterrupted[0]
    wd = tmp_path / "wd"
    wd.mkdir()
    # A run killed during its first checkpoint save: logs, no checkpoint.
    (wd / "train_log.jsonl").write_text('{"step": 5, "losses": [9.0, 9.0]}\n{"step": 10, "los')
    train(toy_config(tmp, **SHORT), str(wd))
    assert (wd / "train_log.jsonl").read_bytes() == (tmp / "wd" / "train_log.jsonl").read_bytes()
    assert (wd / "train_log.1.jsonl").read_text().startswith('{"step": 5, ')  # kept, not appended to


def test_second_run_into_a_busy_workdir_is_refused(tmp_path):
    from jmtl.runs.workdir import WorkdirBusyError, workdir_lock

    wd = tmp_path / "wd"
    wd.mkdir()
    with workdir_lock(wd):  # another live run holds it
        with pytest.raises(WorkdirBusyError, match=rf"the workdir {wd} is in use by another run \(pid {os.getpid()} "):
            train(toy_config(tmp_path, **SHORT), str(wd))
    assert not (wd / "checkpoints").exists() and not (wd / "train_log.jsonl").exists()
