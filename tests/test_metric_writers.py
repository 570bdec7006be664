"""Metric writers: JSONL bytes as before, truthful logs on resume / fresh start, TensorBoard, W&B, errors."""

import errno
import json
import math
import struct
import sys
import types

import numpy as np
import pytest

from jmtl.runs import metric_writers as mw
from jmtl.runs.workdir import StorageError, format_fatal

TRAIN = [
    {"step": s, "losses": [1.0 / s, 2.5e-7 * s], "weights": [None, 0.5], "objective": 0.1 * s, "grad_norm": 3.0}
    for s in (10, 20, 30, 40)
]
EVAL = [
    {"step": s, "epoch": s / 80, "validation": {"t0": {"mse": 0.3 / s}}, "test": {"t0": {"mse": 0.1}}} for s in (20, 40)
]


def _expected(records):
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _write_all(writer, train=TRAIN, eval_=EVAL):
    for r in train:
        writer.write("train", r)
        for e in eval_:
            if e["step"] == r["step"]:
                writer.write("eval", e)
    writer.close()


def test_jsonl_bytes_are_json_dumps_plus_newline(tmp_path):
    _write_all(mw.make_writers(("jsonl",), tmp_path, True))
    assert (tmp_path / "train_log.jsonl").read_bytes() == _expected(TRAIN)
    assert (tmp_path / "metrics.jsonl").read_bytes() == _expected(EVAL)


def test_eval_record_flushes_both_files(tmp_path):
    w = mw.JsonlWriter(tmp_path)
    w.write("train", TRAIN[0])
    w.write("eval", EVAL[0])
    # On disk before close: a reader (plotting, a watching user) sees both.
    assert (tmp_path / "train_log.jsonl").read_bytes() == _expected(TRAIN[:1])
    assert (tmp_path / "metrics.jsonl").read_bytes() == _expected(EVAL[:1])
    with pytest.raises(ValueError, match="unknown record stream 'val'; valid: train, eval"):
        w.write("val", EVAL[0])
    w.close()


def test_resume_keeps_records_up_to_the_step_byte_for_byte(tmp_path):
    _write_all(mw.JsonlWriter(tmp_path))
    # A run killed mid-write: a partial last line in the train log.
    with open(tmp_path / "train_log.jsonl", "a") as f:
        f.write('{"step": 50, "losses": [0.1')
    w = mw.JsonlWriter(tmp_path, resume_step=20)
    assert (tmp_path / "train_log.jsonl").read_bytes() == _expected(TRAIN[:2])
    assert (tmp_path / "metrics.jsonl").read_bytes() == _expected(EVAL[:1])
    _write_all(w, TRAIN[2:], EVAL[1:])  # the resumed run writes the rest
    assert (tmp_path / "train_log.jsonl").read_bytes() == _expected(TRAIN)
    assert (tmp_path / "metrics.jsonl").read_bytes() == _expected(EVAL)
    assert not list(tmp_path.glob("*.tmp"))


def test_partial_last_line_is_dropped_with_a_warning_not_a_decode_error(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(_expected(EVAL) + b'{"step": 60, "validation": {"t0": {"ms')
    assert mw.read_jsonl(path) == EVAL
    assert "dropped a partial last line" in capsys.readouterr().err
    assert mw.truncate_to_step(path, 100) == 0
    assert path.read_bytes() == _expected(EVAL)
    # A last record that lost only its newline is kept (and the newline restored).
    path.write_bytes(_expected(EVAL)[:-1])
    mw.truncate_to_step(path, 100)
    assert path.read_bytes() == _expected(EVAL)


def test_fresh_start_rotates_old_logs_instead_of_appending(tmp_path, capsys):
    _write_all(mw.JsonlWriter(tmp_path))  # an old run that never checkpointed
    _write_all(mw.JsonlWriter(tmp_path), TRAIN[:1], [])  # fresh start 1: rotates to .1
    out = capsys.readouterr().err
    assert "but no checkpoint to resume from" in out and "train_log.1.jsonl, metrics.1.jsonl" in out
    assert (tmp_path / "train_log.1.jsonl").read_bytes() == _expected(TRAIN)
    assert (tmp_path / "metrics.1.jsonl").read_bytes() == _expected(EVAL)
    assert (tmp_path / "train_log.jsonl").read_bytes() == _expected(TRAIN[:1])
    assert (tmp_path / "metrics.jsonl").read_bytes() == b""
    _write_all(mw.JsonlWriter(tmp_path), [], [])  # fresh start 2: the non-empty train log goes to .2
    assert (tmp_path / "train_log.2.jsonl").read_bytes() == _expected(TRAIN[:1])
    assert not (tmp_path / "metrics.2.jsonl").exists()  # empty files are not worth keeping
    assert (tmp_path / "train_log.1.jsonl").read_bytes() == _expected(TRAIN)  # older rotations untouched


def test_make_writers_names_and_processes(tmp_path, monkeypatch):
    with pytest.raises(
        ValueError, match="unknown writer\\(s\\) 'csv' in config.writers; valid: jsonl, tensorboard, wandb"
    ):
        mw.make_writers(("jsonl", "csv"), tmp_path, True)
    w = mw.make_writers((), tmp_path / "x", False)  # not the main process: nothing, not even a folder
    _write_all(w)
    assert not (tmp_path / "x").exists()
    w = mw.make_writers((), tmp_path, True)
    assert [type(x).__name__ for x in w.writers] == ["JsonlWriter"]  # jsonl always, first
    w.close()
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ValueError, match="needs the wandb package: pip install wandb"):
        mw.make_writers(("jsonl", "wandb"), tmp_path, True, resume_step=40)


def test_full_disk_while_logging_is_one_clear_line(tmp_path):
    w = mw.JsonlWriter(tmp_path)

    class FullDisk:
        closed = False

        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

        flush = close = lambda self: None

    w._files["train"] = FullDisk()
    with pytest.raises(StorageError) as info:
        w.write("train", TRAIN[0])
    msg = format_fatal(info.value)
    assert msg == (
        f"StorageError: writing the train log failed ({tmp_path / 'train_log.jsonl'}): the disk is full "
        "(No space left on device). Fix: free space on that disk, or use a --workdir on another disk"
    )
    assert info.value.errno == errno.ENOSPC


# ---- TensorBoard -------------------------------------------------------------------------------------
def _read_events(logdir):
    """(tag, step, value) of every scalar in the TFRecord event files under ``logdir``."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.append((v.tag, event.step, v.simple_value))
    return out


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboardX")
    _write_all(mw.make_writers(("jsonl", "tensorboard"), tmp_path, True, task_names=["t0", "t1"]))
    events = _read_events(tmp_path / "tensorboard")
    got = {(tag, step): value for tag, step, value in events}
    for r in TRAIN:
        assert got[("train/losses/t1", r["step"])] == pytest.approx(r["losses"][1], rel=1e-6)  # float32
        assert got[("train/objective", r["step"])] == pytest.approx(r["objective"], rel=1e-6)
        assert ("train/weights/t0", r["step"]) not in got  # None is not a number
    assert got[("eval/validation/t0/mse", 40)] == pytest.approx(0.3 / 40, rel=1e-6)
    assert got[("eval/epoch", 20)] == pytest.approx(0.25)
    assert len(events) == len(got)  # nothing written twice
    assert (tmp_path / "train_log.jsonl").read_bytes() == _expected(TRAIN)  # JSONL still written


# ---- Weights & Biases (a fake module: tests never reach the network) --------------------------------------
class _FakeWandb(types.ModuleType):
    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logs, self.finished = [], [], 0

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self

        class Run:
            def log(self, data, step):
                fake.logs.append((step, data))

            def finish(self):
                fake.finished += 1

        return Run()


def test_wandb_logs_scalars_and_resumes_the_same_run(tmp_path, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    config = {"optimizer": {"learning_rate": 0.01}, "seed": 0}
    _write_all(
        mw.make_writers(("jsonl", "wandb"), tmp_path, True, config=config, task_names=["t0", "t1"]), TRAIN[:2], EVAL[:1]
    )
    assert fake.finished == 1
    first = fake.inits[0]
    assert first["resume"] == "allow" and first["config"] == {"optimizer.learning_rate": 0.01, "seed": 0}
    r = TRAIN[0]
    assert fake.logs[0] == (
        10,
        {
            "train/losses/t0": r["losses"][0],
            "train/losses/t1": r["losses"][1],
            "train/weights/t1": 0.5,
            "train/objective": r["objective"],
            "train/grad_norm": 3.0,
        },
    )
    assert [s for s, _ in fake.logs] == [10, 20, 20]
    assert fake.logs[2][1]["eval/validation/t0/mse"] == 0.3 / 20
    # A resume continues the same W&B run; a fresh start opens a new one.
    mw.make_writers(("wandb",), tmp_path, True, resume_step=20).close()
    assert fake.inits[1]["id"] == first["id"]
    mw.make_writers(("wandb",), tmp_path, True).close()
    assert fake.inits[2]["id"] != first["id"]
    assert all(math.isfinite(v) for _, d in fake.logs for v in d.values())


def test_plots_and_grid_curves_survive_the_partial_line_a_killed_run_leaves(tmp_path):
    """Plotting and the ablation grid's curves read logs through the one JSONL reader: the partial last
    line a killed run leaves is skipped (they used to crash on exactly that line)."""
    from jmtl import plotting
    from jmtl.drivers import ablation

    run = tmp_path / "cells" / "equal"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    full = {
        "step": 1,
        "epoch": 1,
        "losses": [1.0, 2.0],
        "weights": [1.0, 1.0],
        "validation": {"a": {"accuracy": 0.5}, "b": {"accuracy": 0.25}},
    }
    for name in ("train_log.jsonl", "metrics.jsonl"):
        (run / name).write_text(json.dumps(full) + "\n" + json.dumps(full)[:25])  # killed mid-write
    written = plotting.plot_training(run, ["a", "b"])
    assert [p.name for p in written] and all(p.exists() for p in written)
    x, values = ablation._cell_series(
        tmp_path, "equal", "metrics.jsonl", "epoch", lambda r: [r["validation"]["a"]["accuracy"]]
    )
    assert list(x) == [1] and np.allclose(values, [[0.5]])
