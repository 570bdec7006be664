"""Where a run's records go: JSONL files (always), TensorBoard and Weights & Biases (optional).

The train loop produces two *streams* of records, each a JSON-able dict with a ``"step"`` key:
``"train"`` (losses, task weights, ... every ``log_every_steps``) and ``"eval"`` (validation and test
metrics at every evaluation). A writer takes ``write(stream, record)``, ``flush()`` and ``close()``.

``JsonlWriter`` is the record of truth (a resume reads it): ``train_log.jsonl`` and ``metrics.jsonl``
in the workdir, one ``json.dumps(record) + "\\n"`` per record. Its files always tell the truth about
the run in the workdir:

* resuming from step ``s`` (``resume_step=s``) drops records with step > ``s`` (written after the
  checkpoint by the run that died), so no step is counted twice;
* starting without a checkpoint (``resume_step=None``) while old logs exist (a run killed during its
  first save, a run stopped by the NaN guard before any checkpoint) moves them aside to
  ``train_log.<n>.jsonl`` / ``metrics.<n>.jsonl`` (with a warning) instead of appending to them;
* a partial last line (a run killed mid-write) is dropped with a warning, never a ``JSONDecodeError``.

Write failures (full disk, read-only folder) raise ``StorageError`` naming the file and the fix.
TensorBoard (``tensorboardX``) and W&B (``wandb``) are imported only when chosen.
"""

from __future__ import annotations

import json
import math
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Iterable, Optional, Protocol, Sequence

from jmtl.runs.workdir import StorageError

STREAMS = {"train": "train_log.jsonl", "eval": "metrics.jsonl"}
_WHAT = {"train": "writing the train log", "eval": "writing the eval metrics"}
WRITER_NAMES = ("jsonl", "tensorboard", "wandb")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class MetricWriter(Protocol):
    """What the train loop calls; ``stream`` is ``"train"`` or ``"eval"``; ``record`` has ``"step"``."""

    def write(self, stream: str, record: dict) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _check_stream(stream: str) -> None:
    if stream not in STREAMS:
        raise ValueError(f"unknown record stream {stream!r}; valid: {', '.join(STREAMS)}")


# ---- reading and repairing JSONL --------------------------------------------------------------------
def _parse_lines(path: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    """``[(line text, record)]`` for the readable lines of ``path`` and warnings for the others."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")
    tail_unterminated = not text.endswith("\n")
    if not tail_unterminated:
        lines = lines[:-1]  # the empty string after the final newline
    good, warnings = [], []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            last = i == len(lines) - 1
            kind = "partial last line (the run was killed while writing it)" if last else f"unreadable line {i + 1}"
            warnings.append(f"{path}: dropped a {kind}: {line[:80]!r}")
            continue
        good.append((line, record))
    return good, warnings


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL log; a partial or unreadable line is skipped with a warning on stderr."""
    path = Path(path)
    if not path.exists():
        return []
    good, warnings = _parse_lines(path)
    for w in warnings:
        _warn(w)
    return [r for _, r in good]


def _rewrite(path: Path, lines: Sequence[str], what: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text("".join(l + "\n" for l in lines))
        os.replace(tmp, path)
    except OSError as e:
        raise StorageError(what, path, e) from e


def truncate_to_step(path: str | Path, step: int) -> int:
    """Keeps the records of ``path`` with ``"step" <= step`` (lines kept byte for byte); returns how many
    were dropped. A partial last line is dropped with a warning."""
    path = Path(path)
    if not path.exists():
        return 0
    good, warnings = _parse_lines(path)
    for w in warnings:
        _warn(w)
    keep = [line for line, rec in good if not isinstance(rec.get("step"), (int, float)) or rec["step"] <= step]
    dropped = len(good) - len(keep)
    unterminated = bool(keep) and not path.read_bytes().endswith(b"\n")
    if dropped or warnings or unterminated:
        _rewrite(path, keep, f"truncating {path.name}")
    return dropped


def _rotation_index(workdir: Path, names: Iterable[str]) -> int:
    """The smallest n >= 1 such that no ``<stem>.<n><suffix>`` exists for any of ``names``."""
    n = 1
    while any((workdir / f"{Path(name).stem}.{n}{Path(name).suffix}").exists() for name in names):
        n += 1
    return n


def rotate_old_logs(workdir: str | Path, names: Sequence[str] = tuple(STREAMS.values())) -> Optional[int]:
    """Moves non-empty ``names`` in ``workdir`` to ``<stem>.<n><suffix>`` (one n for all); returns n or None."""
    workdir = Path(workdir)
    present = [name for name in names if (workdir / name).exists() and (workdir / name).stat().st_size > 0]
    if not present:
        return None
    n = _rotation_index(workdir, names)
    for name in present:
        src, dst = workdir / name, workdir / f"{Path(name).stem}.{n}{Path(name).suffix}"
        try:
            src.rename(dst)
        except OSError as e:
            raise StorageError(f"moving the old {name} aside", src, e) from e
    _warn(
        f"{workdir} holds logs ({', '.join(present)}) but no checkpoint to resume from (an earlier run ended "
        f"before its first checkpoint); moved them to {', '.join(f'{Path(p).stem}.{n}{Path(p).suffix}' for p in present)} "
        "and starting a fresh run"
    )
    return n


# ---- writers ----------------------------------------------------------------------------------------
class JsonlWriter:
    """``train_log.jsonl`` / ``metrics.jsonl`` in ``workdir``: ``json.dumps(record) + "\\n"`` per record.

    Args:
      workdir: the run's folder (must exist).
      resume_step: the checkpoint step the run resumes from: records after it are dropped. None (a fresh
        start): existing non-empty logs are rotated to ``<name>.<n>.jsonl`` first.
    """

    def __init__(self, workdir: str | Path, *, resume_step: Optional[int] = None):
        self.workdir = Path(workdir)
        self.paths = {stream: self.workdir / name for stream, name in STREAMS.items()}
        if resume_step is None:
            rotate_old_logs(self.workdir)
        else:
            for path in self.paths.values():
                truncate_to_step(path, resume_step)
        self._files = {}
        for stream, path in self.paths.items():
            try:
                self._files[stream] = open(path, "a")
            except OSError as e:
                raise StorageError(f"opening {path.name}", path, e) from e

    def _guard(self, stream: str, fn) -> None:
        try:
            fn()
        except OSError as e:
            raise StorageError(_WHAT[stream], self.paths[stream], e) from e

    def write(self, stream: str, record: dict) -> None:
        _check_stream(stream)
        f = self._files[stream]
        self._guard(stream, lambda: f.write(json.dumps(record) + "\n"))
        if stream == "eval":  # an evaluation is the natural point to make both files current on disk
            self.flush()

    def flush(self) -> None:
        for stream in ("eval", "train"):
            self._guard(stream, self._files[stream].flush)

    def close(self) -> None:
        for stream, f in self._files.items():
            if not f.closed:
                self._guard(stream, f.close)


def _scalars(record: dict, task_names: Optional[Sequence[str]] = None) -> dict[str, float]:
    """Flattens a record's numbers to ``{"losses/t0": 0.3, "validation/t0/mse": ...}`` (step excluded).

    Lists as long as ``task_names`` are labelled by task; other lists by index. ``None`` and
    non-numbers are skipped.
    """
    out: dict[str, float] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, bool) or node is None:
            return
        if isinstance(node, (int, float)):
            out[prefix] = float(node)
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        elif isinstance(node, (list, tuple)):
            labels = task_names if task_names is not None and len(task_names) == len(node) else range(len(node))
            for label, v in zip(labels, node):
                walk(v, f"{prefix}/{label}")

    for key, value in record.items():
        if key != "step":
            walk(value, key)
    return out


class TensorBoardWriter:
    """TensorBoard event files under ``<workdir>/tensorboard`` (``tensorboardX``; imported here only).

    Scalars are tagged ``"<stream>/<path>"`` (``train/losses/t0``, ``eval/validation/t0/mse``).

    Args:
      workdir: the run's folder.
      resume_step: on resume, events after this step are purged (``purge_step``); None on a fresh start
        moves an existing ``tensorboard/`` folder aside to ``tensorboard.<n>/``.
      task_names: labels for per-task lists (``losses``, ``weights``).
    """

    def __init__(
        self, workdir: str | Path, *, resume_step: Optional[int] = None, task_names: Optional[Sequence[str]] = None
    ):
        try:
            from tensorboardX import SummaryWriter
        except ImportError as e:
            raise ValueError("the 'tensorboard' writer needs the tensorboardX package: pip install tensorboardX") from e
        self.logdir = Path(workdir) / "tensorboard"
        if resume_step is None and self.logdir.exists() and any(self.logdir.iterdir()):
            n = 1
            while self.logdir.with_name(f"tensorboard.{n}").exists():
                n += 1
            self.logdir.rename(self.logdir.with_name(f"tensorboard.{n}"))
        self.task_names = list(task_names) if task_names is not None else None
        purge = None if resume_step is None else resume_step + 1
        self._writer = SummaryWriter(logdir=str(self.logdir), purge_step=purge)

    def write(self, stream: str, record: dict) -> None:
        _check_stream(stream)
        step = int(record["step"])
        for tag, value in _scalars(record, self.task_names).items():
            self._writer.add_scalar(f"{stream}/{tag}", value, step)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbWriter:
    """Weights & Biases (``wandb``; imported here only). One W&B run per workdir: its id is kept in
    ``<workdir>/wandb_run_id.txt`` and a resume continues it (``resume="allow"``).

    The project comes from ``$WANDB_PROJECT`` (default ``"jmtl"``); ``WANDB_MODE=offline`` works
    without network. W&B keeps its steps increasing: after a resume from step ``s`` it ignores the
    records it already holds up to its own last step (the JSONL files are the record of truth).

    Args:
      workdir: the run's folder.
      resume_step: the step resumed from (None: a fresh start with a new run id).
      config: the run's config (logged flattened to dotted names).
      task_names: labels for per-task lists.
    """

    def __init__(
        self,
        workdir: str | Path,
        *,
        resume_step: Optional[int] = None,
        config: Any = None,
        task_names: Optional[Sequence[str]] = None,
    ):
        try:
            import wandb
        except ImportError as e:
            raise ValueError("the 'wandb' writer needs the wandb package: pip install wandb") from e
        from jmtl.runs.workdir import flatten_config

        self.workdir = Path(workdir)
        id_file = self.workdir / "wandb_run_id.txt"
        if resume_step is not None and id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            id_file.write_text(run_id + "\n")
        self.task_names = list(task_names) if task_names is not None else None
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "jmtl"),
            dir=str(self.workdir),
            id=run_id,
            resume="allow",
            name=self.workdir.name,
            config=flatten_config(config) if config is not None else None,
        )

    def write(self, stream: str, record: dict) -> None:
        _check_stream(stream)
        data = {f"{stream}/{k}": v for k, v in _scalars(record, self.task_names).items() if math.isfinite(v)}
        self._run.log(data, step=int(record["step"]))

    def flush(self) -> None:
        pass  # wandb sends in the background

    def close(self) -> None:
        self._run.finish()


class MultiWriter:
    """Sends each call to every writer in order (the JSONL writer first)."""

    def __init__(self, writers: Sequence[MetricWriter]):
        self.writers = list(writers)

    def write(self, stream: str, record: dict) -> None:
        for w in self.writers:
            w.write(stream, record)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()


def make_writers(
    names: Sequence[str],
    workdir: str | Path,
    is_main: bool,
    *,
    resume_step: Optional[int] = None,
    config: Any = None,
    task_names: Optional[Sequence[str]] = None,
) -> MultiWriter:
    """The writers named in ``names`` (``config.writers``, e.g. ``("jsonl", "tensorboard")``).

    Args:
      names: any of ``jsonl``, ``tensorboard``, ``wandb``; ``jsonl`` is always added (resume reads it).
      workdir: the run's folder.
      is_main: False on the other processes of a multi-host run: no writer (an empty ``MultiWriter``).
      resume_step: the checkpoint step resumed from, or None for a fresh start (see ``JsonlWriter``).
      config: the run's config, for W&B.
      task_names: labels for per-task lists (TensorBoard, W&B).

    Raises:
      ValueError: an unknown writer name (listing the valid ones), or a missing optional package.
    """
    if isinstance(names, str):
        names = (names,)
    unknown = [n for n in names if n not in WRITER_NAMES]
    if unknown:
        raise ValueError(
            f"unknown writer(s) {', '.join(map(repr, unknown))} in config.writers; valid: {', '.join(WRITER_NAMES)}"
        )
    if not is_main:
        return MultiWriter([])
    wanted = ["jsonl"] + [n for n in dict.fromkeys(names) if n != "jsonl"]
    writers: list[MetricWriter] = []
    try:
        for name in wanted:
            if name == "jsonl":
                writers.append(JsonlWriter(workdir, resume_step=resume_step))
            elif name == "tensorboard":
                writers.append(TensorBoardWriter(workdir, resume_step=resume_step, task_names=task_names))
            else:
                writers.append(WandbWriter(workdir, resume_step=resume_step, config=config, task_names=task_names))
    except BaseException:
        for w in writers:
            w.close()
        raise
    return MultiWriter(writers)
