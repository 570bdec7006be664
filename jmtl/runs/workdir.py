"""The run's working directory: creating it, one run at a time, what may change on resume, fatal errors.

* ``prepare_workdir`` creates the folder; a file in the way or an unwritable disk is a one-line error,
  not a raw ``FileExistsError``.
* ``workdir_lock`` holds ``fcntl.flock`` on the workdir folder and on ``<workdir>/.lock`` for the whole
  run, so a second run into the same workdir fails at once (``WorkdirBusyError``) instead of interleaving
  checkpoints and logs -- also after ``.lock`` was deleted. ``.lock`` is never followed if it is a
  symlink; ``WorkdirLock.check`` (before each checkpoint) stops a run whose folder or lock file was
  removed or replaced (``WorkdirLostError``). The kernel drops an flock when its process dies, so a run
  killed with ``kill -9`` leaves no stuck lock (a lock *file* left behind is harmless: only the flock counts).
* ``check_resume`` decides which config fields may differ between the run that wrote a checkpoint and
  the run resuming it. Only fields that do not change what is computed may (how long to train -- extend
  only --, how often to evaluate / log / checkpoint, where data and caches live, the progress bar, the
  writers, the parallel driver, the non-finite policy); anything else (learning rate, batch size, model,
  weighting, seeds, dataset, ...) would silently mix two experiments in one workdir and is refused with
  every difference listed. ``record_resume`` keeps the history in ``<workdir>/resumes.jsonl``.
* ``format_fatal`` / ``exit_fatal``: what the top-level handler prints for a failure the user can fix
  (full disk, read-only folder, busy workdir, ...): one line naming the path and the fix.

No jax import here: the module is cheap to import and usable from tools.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, NoReturn

from jmtl.errors import JmtlError

LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"
RESUMES_NAME = "resumes.jsonl"


# ---- errors -----------------------------------------------------------------------------------------
class WorkdirError(JmtlError, OSError):
    """The workdir cannot be used (a file in the way, another run holds it). An ``OSError`` (errno unset),
    so handlers of I/O failures catch it; ``str()`` is the message alone."""

    def __init__(self, message: str, path: str | Path):
        super().__init__(message)
        self.path = Path(path)


class WorkdirNotADirectoryError(WorkdirError):
    """The workdir path, or one of its parents, is a file."""


class WorkdirBusyError(WorkdirError):
    """Another live run holds the workdir's lock."""


class ResumeConfigError(JmtlError, ValueError):
    """The resuming run's config differs from the checkpoint's in a field that may not change."""

    def __init__(self, message: str, changes: list["Change"]):
        super().__init__(message)
        self.changes = changes


class ResumeIdentityError(ResumeConfigError):
    """The resuming run trains on other data, another optimizer or other tasks than the checkpoint
    (``jmtl.runs.identity``); ``differences`` lists each in words."""

    def __init__(self, message: str, differences: list[str]):
        super().__init__(message, [])
        self.differences = differences


# Why an OS write error happened, and what to do about it, by errno.
_REASONS = {
    errno.ENOSPC: (
        "the disk is full (No space left on device)",
        "free space on that disk, or use a --workdir on another disk",
    ),
    errno.EDQUOT: ("the disk quota is exceeded", "free space within your quota, or use a --workdir on another disk"),
    errno.EROFS: ("the file system is read-only", "use a --workdir on a writable disk"),
    errno.EACCES: ("permission denied", "make the folder writable (chmod / chown) or use another --workdir"),
    errno.EPERM: (
        "operation not permitted (the folder may be immutable: lsattr / chattr -i, or owned by another user)",
        "make the folder writable (chattr -i, chmod / chown) or use another --workdir",
    ),
    errno.ENOTDIR: ("a file stands where a folder is expected", "remove or rename that file, or use another --workdir"),
    errno.EEXIST: ("a file stands where a folder is expected", "remove or rename that file, or use another --workdir"),
    errno.EISDIR: (
        "a folder stands where a file is expected",
        "remove or rename that folder, or use another --workdir",
    ),
    errno.EIO: (
        "an I/O error (failing disk or lost network mount)",
        "check the disk / mount, then resume with the same command",
    ),
}
_EXPECTED_ERRNOS = frozenset(_REASONS) - {errno.EEXIST, errno.EISDIR}


def describe_os_error(exc: BaseException) -> tuple[str, str]:
    """(reason, fix) for an exception that is, or was caused by, an OS write error; a generic pair otherwise.

    Follows ``__cause__`` / ``__context__`` (orbax and tensorstore wrap the ``OSError``) and, for errors
    that only carry text (tensorstore's ``ValueError: ... No space left on device``), the message.
    """
    known = storage_reason(exc)
    if known is not None:
        return known
    os_error = find_os_error(exc)
    reason = f"{type(os_error or exc).__name__}: {os_error or exc}"
    return reason, "check that the folder exists and is writable, then resume with the same command"


def storage_reason(exc: BaseException) -> tuple[str, str] | None:
    """``describe_os_error``'s (reason, fix) when ``exc`` is a known refusal of the disk (full, quota,
    read-only, permissions, ...: by errno in the cause chain, or by its text), else None."""
    os_error = find_os_error(exc)
    if os_error is not None and os_error.errno in _REASONS:
        return _REASONS[os_error.errno]
    text = str(exc)
    for code, marker in (
        (errno.ENOSPC, "No space left"),
        (errno.EDQUOT, "quota exceeded"),
        (errno.EROFS, "Read-only file system"),
        (errno.EPERM, "Operation not permitted"),
        (errno.EACCES, "Permission denied"),
    ):
        if marker.lower() in text.lower():
            return _REASONS[code]
    return None


def find_os_error(exc: BaseException | None) -> OSError | None:
    """The first ``OSError`` with an errno in ``exc``'s cause / context chain (``exc`` itself included)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


class StorageError(JmtlError, OSError):
    """Writing ``path`` failed (full disk, read-only or immutable folder, permissions, ...).

    ``str()`` is one line: what failed, the path, the reason and the fix.

    Args:
      what: what was being written, e.g. ``"writing the train log"``.
      path: the file or folder.
      cause: the original exception (kept as ``__cause__`` by ``raise ... from``); its errno is copied.
      fix: the fix to print (default: by the errno, for a workdir).
    """

    def __init__(self, what: str, path: str | Path, cause: BaseException | None = None, fix: str | None = None):
        os_error = find_os_error(cause)
        reason, default_fix = describe_os_error(cause) if cause is not None else ("unknown error", "retry")
        fix = fix or default_fix
        code = os_error.errno if os_error is not None else None
        super().__init__(code, f"{what} failed ({path}): {reason}. Fix: {fix}")
        self.what, self.path, self.reason, self.fix = what, Path(path), reason, fix

    def __str__(self) -> str:
        return self.strerror


# ---- the folder -------------------------------------------------------------------------------------
def prepare_workdir(path: str | Path) -> Path:
    """Creates ``path`` (and its parents) if needed and returns it as an absolute ``Path``.

    Raises:
      WorkdirNotADirectoryError: ``path`` or one of its parents is a file.
      StorageError: the folder cannot be created or written (read-only, permissions, full disk).
    """
    path = Path(path).expanduser().absolute()
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            what = "is a file" if p == path else f"cannot be created: {p} is a file"
            raise WorkdirNotADirectoryError(
                f"the workdir {path} {what}, not a folder. Fix: pass another --workdir, or move that file away",
                path,
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError("creating the workdir", path, e) from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise StorageError(
            "writing to the workdir", path, PermissionError(errno.EACCES, "Permission denied", str(path))
        )
    return path


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class WorkdirLostError(WorkdirError):
    """The workdir, or its lock file, is no longer the one this run locked (deleted or replaced mid-run)."""


class WorkdirLock(dict):
    """What ``workdir_lock`` yields: the holder record (pid, host, start time) and ``check()``.

    The run holds two ``flock`` locks: one on the workdir folder itself and one on ``<workdir>/.lock``. The
    folder's lock is what makes deleting ``.lock`` harmless: a second run started after that still finds
    the folder locked and is refused (before its start-up could touch the first run's in-flight
    checkpoint). ``check()`` compares the folder and the lock file found at their paths now with the ones
    this run opened (device and inode): a workdir removed or replaced, or a ``.lock`` deleted or swapped,
    stops the run (``WorkdirLostError``) before it writes more.
    """

    def __init__(self, info: dict, path: Path, dir_fd: int, lock_fd: int):
        super().__init__(info)
        self.path, self._dir_fd, self._lock_fd = path, dir_fd, lock_fd

    def check(self) -> None:
        """Raises ``WorkdirLostError`` when the workdir or its ``.lock`` is no longer what this run locked."""
        lock_path = self.path / LOCK_NAME
        for what, where, fd, stat in (
            ("the workdir", self.path, self._dir_fd, os.stat),
            (f"its lock file {LOCK_NAME}", lock_path, self._lock_fd, os.lstat),
        ):
            held = os.fstat(fd)
            try:
                now = stat(where)
                same = (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
            except OSError:
                same = False
            if not same:
                raise WorkdirLostError(
                    f"{what} {where} was deleted or replaced while this run (pid {os.getpid()}) held it: another run "
                    "may now write there, so this run stops without writing more. Fix: if it was removed by mistake, "
                    "rerun the same command (it resumes from the last checkpoint left, if any); never delete a "
                    "running run's workdir or lock",
                    self.path,
                )


def _open_lock_file(lock_path: Path) -> int:
    """Opens (creating) ``.lock`` without following a symbolic link (``O_NOFOLLOW``) and without blocking
    on a FIFO; anything but a regular file there is refused, naming it."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(lock_path, flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP or lock_path.is_symlink():
            target = os.readlink(lock_path) if lock_path.is_symlink() else "?"
            raise WorkdirError(
                f"the workdir lock {lock_path} is a symbolic link (to {target}); jmtl never follows it (the lock "
                "file is written). Fix: remove the link (rm the link itself), then rerun",
                lock_path.parent,
            ) from None
        raise StorageError("creating the workdir lock", lock_path, e) from e
    import stat as stat_lib

    if not stat_lib.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise WorkdirError(
            f"the workdir lock {lock_path} is not a regular file. Fix: remove it, then rerun", lock_path.parent
        )
    return fd


def _busy(path: Path, lock_path: Path) -> WorkdirBusyError:
    holder = {}
    try:  # read only: never created, never followed
        fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            holder = _read_holder(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    who = (
        f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
        if holder
        else "holder unknown"
    )
    return WorkdirBusyError(
        f"the workdir {path} is in use by another run ({who}); wait for it to finish or use another --workdir", path
    )


@contextlib.contextmanager
def workdir_lock(path: str | Path) -> Iterator[WorkdirLock]:
    """Holds exclusive ``flock`` locks on the workdir folder and on ``<path>/.lock`` while the block runs.

    The lock file records the holder (pid, host, start time) for the message a second run gets; it is
    opened with ``O_NOFOLLOW`` (a symbolic link there is refused, never followed and written through).
    Take it on the main process only: the processes of one multi-host run share the workdir. The kernel
    drops both locks when the process dies (``kill -9`` leaves no stuck lock). A file system without
    ``flock`` on folders (some network mounts) falls back to the lock file's ``flock`` alone.

    Args:
      path: the workdir (must exist; see ``prepare_workdir``).

    Yields:
      A :class:`WorkdirLock`: ``{"pid": ..., "host": ..., "started": ...}`` (written to the lock file)
      with ``check()``, which the loop calls before each checkpoint and at the end.

    Raises:
      WorkdirBusyError: another live process holds the lock.
      WorkdirError: ``.lock`` is a symbolic link or not a regular file.
    """
    path = Path(path)
    lock_path = path / LOCK_NAME
    try:
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise StorageError("opening the workdir", path, e) from e
    lock_fd = None
    try:
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(path, lock_path) from None
        except OSError:  # no flock on folders here: the lock file's flock alone
            pass
        lock_fd = _open_lock_file(lock_path)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a run of an earlier version, which locked the file only
            raise _busy(path, lock_path) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, (json.dumps(info) + "\n").encode(), 0)
        yield WorkdirLock(info, path, dir_fd, lock_fd)
    finally:
        if lock_fd is not None:
            os.close(lock_fd)
        os.close(dir_fd)  # closing the last descriptors releases the flocks


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


# ---- resume policy ----------------------------------------------------------------------------------
class Change(NamedTuple):
    """One config field that differs between the saved and the new run (dotted name)."""

    field: str
    old: Any
    new: Any


_MISSING = "<absent>"
# Fields that may differ on resume: they change when or where things happen, not what is computed.
# Data paths may move (the data layer keys caches by the raw files' fingerprint, so other content under
# a new path is a new cache, and the same content resumes exactly). 'parallel': checkpoints hold the
# unreplicated host state, and the drivers agree bitwise (tests/test_parallel.py). 'nonfinite.*': the
# NaN guard's own message suggests rerunning with policy=skip.
RESUMABLE_FIELDS = (
    "num_epochs",
    "num_steps",
    "eval_every_steps",
    "eval_batch_size",
    "log_every_steps",
    "checkpoint_every_steps",
    "checkpoint_every_minutes",
    "progress_bar",
    "writers",
    "parallel",
    "nonfinite.policy",
    "nonfinite.max_consecutive_skips",
    "dataset.data_dir",
    "dataset.cache_dir",
)


def _plain(config: Any) -> Any:
    """ConfigDict / FrozenConfigDict / JSON text -> plain dicts and lists (JSON round trip)."""
    if isinstance(config, str):
        return json.loads(config)
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config, default=repr))


def flatten_config(config: Any) -> dict[str, Any]:
    """``{"optimizer": {"learning_rate": 1e-3}}`` -> ``{"optimizer.learning_rate": 1e-3}``.

    Args:
      config: an ``ml_collections.ConfigDict``, a nested dict, or its JSON text. Lists and tuples are
        leaves (compared whole, as JSON lists); an empty dict is a leaf ``{}``.
    """
    out: dict[str, Any] = {}

    def walk(node, prefix):
        if isinstance(node, Mapping) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = node

    walk(_plain(config), "")
    return out


def empty_setting(value: Any) -> bool:
    """An empty list and an empty mapping are the same setting (nothing given): a field whose empty
    default changed type between versions (``selection_reference``: ``()`` then ``{}``) is no change."""
    return isinstance(value, (list, tuple, Mapping)) and len(value) == 0


def check_resume(
    saved_config: Any,
    new_config: Any,
    *,
    restored_step: int | None = None,
    total_steps: int | None = None,
    defaults: Any = None,
) -> list[Change]:
    """The allowed differences between the checkpoint's config and the resuming run's.

    Args:
      saved_config: the config the workdir was started with (``config.json``: dict, JSON text or ConfigDict).
      new_config: the resuming run's config.
      restored_step: the step of the checkpoint being resumed (None: skip the length check).
      total_steps: the step the new run would stop at (None: skip the length check).
      defaults: the config defaults (e.g. ``config_schema.default_config()``), or None. A field absent
        from ``saved_config`` (written before the field existed) whose new value equals its default
        here is not a change: the old run behaved as the default.

    Returns:
      The differing fields in ``RESUMABLE_FIELDS`` (``Change(field, old, new)``, sorted by field).

    Raises:
      ResumeConfigError: any other field differs (every such field is listed as ``field: old -> new``),
        or the new run would stop before ``restored_step``.
    """
    old, new = flatten_config(saved_config), flatten_config(new_config)
    default = flatten_config(defaults) if defaults is not None else {}
    for k, v in new.items():
        if k not in old and k in default and default[k] == v:
            old[k] = v
    changes = [
        Change(k, old.get(k, _MISSING), new.get(k, _MISSING))
        for k in sorted(set(old) | set(new))
        if old.get(k, _MISSING) != new.get(k, _MISSING)
        and not (empty_setting(old.get(k)) and empty_setting(new.get(k)))
    ]
    refused = [c for c in changes if c.field not in RESUMABLE_FIELDS]
    problems, fixes = [], []
    if refused:
        problems.append(
            "the config differs from the one this workdir was started with (config.json) in "
            + "; ".join(f"{c.field}: {c.old!r} -> {c.new!r}" for c in refused)
        )
        fixes.append(
            "restore the old values to resume, or use a new --workdir for the new config (fields that "
            "may change on resume: " + ", ".join(RESUMABLE_FIELDS) + ")"
        )
    if restored_step is not None and total_steps is not None and total_steps < restored_step:
        problems.append(
            f"the checkpoint is at step {restored_step} but the new run would stop at {total_steps} "
            "(num_epochs / num_steps may only grow on resume)"
        )
        fixes.append(
            f"train to step {restored_step} or beyond (--config.num_steps / --config.num_epochs), or use "
            "a new --workdir"
        )
    if problems:
        raise ResumeConfigError("cannot resume: " + "; and ".join(problems) + ". Fix: " + "; ".join(fixes), refused)
    return changes


def load_saved_config(workdir: str | Path) -> dict | None:
    """``<workdir>/config.json`` as a dict, None if there is none (or it is unreadable, with a warning).

    The training loop reads the config each checkpoint carries instead (``read_saved_config`` only
    for checkpoints written before they carried one)."""
    config, problem = read_saved_config(workdir)
    if problem and problem != "missing":
        print(f"warning: cannot read {Path(workdir) / CONFIG_NAME} ({problem})", file=sys.stderr)
    return config


def read_saved_config(workdir: str | Path) -> tuple[dict | None, str | None]:
    """``(config, problem)``: ``<workdir>/config.json`` as a dict and None, or None and why not
    (``"missing"``, or the read / parse error)."""
    path = Path(workdir) / CONFIG_NAME
    if not path.exists():
        return None, "missing"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return None, f"{type(e).__name__}: {e}"
    if not isinstance(config, dict):
        return None, f"it holds a JSON {type(config).__name__}, not an object"
    return config, None


def set_aside(path: str | Path, tag: str) -> Path:
    """Renames ``path`` to ``<path>.<tag>-<time>`` (never deleting a file the user may want) and returns
    the new path."""
    path = Path(path)
    aside = path.with_name(f"{path.name}.{tag}-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.{tag}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"), n + 1
    try:
        os.replace(path, aside)
    except OSError as e:
        raise StorageError(f"moving {path.name} aside", path, e) from e
    return aside


def _config_text(config: Any) -> str:
    if hasattr(config, "to_json_best_effort"):
        return config.to_json_best_effort(indent=2)
    return json.dumps(_plain(config), indent=2)


def _write_text_atomically(path: Path, text: str, what: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        raise StorageError(what, path, e) from e


def write_config(workdir: str | Path, config: Any) -> None:
    """Writes ``<workdir>/config.json`` (``config.to_json_best_effort(indent=2)`` for a ConfigDict)."""
    path = Path(workdir) / CONFIG_NAME
    _write_text_atomically(path, _config_text(config), "writing the config")


def record_resume(workdir: str | Path, step: int, changes: list[Change], new_config: Any) -> None:
    """Appends this resume to ``<workdir>/resumes.jsonl`` and rewrites ``config.json`` with ``new_config``.

    Each line: ``{"time", "step", "changes": {field: [old, new]}, "host", "pid"}``; with the first
    ``config.json`` and these lines every config the workdir ran with can be rebuilt.

    Args:
      workdir: the run's folder.
      step: the step resumed from.
      changes: ``check_resume``'s result (allowed changes only).
      new_config: the resuming run's config (written to ``config.json``).
    """
    workdir = Path(workdir)
    record = {
        "time": _now(),
        "step": int(step),
        "changes": {c.field: [c.old, c.new] for c in changes},
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    path = workdir / RESUMES_NAME
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record, default=repr) + "\n")
    except OSError as e:
        raise StorageError("recording the resume", path, e) from e
    if changes:
        write_config(workdir, new_config)


# ---- fatal errors -----------------------------------------------------------------------------------
def is_expected_failure(exc: BaseException) -> bool:
    """True for failures the user fixes outside the code (disk, folder, config): print one line, no traceback."""
    if isinstance(exc, (StorageError, WorkdirError, ResumeConfigError)):
        return True
    if type(exc).__name__ in ("CheckpointSaveError", "CheckpointRestoreError", "CheckpointMismatchError"):
        return True
    os_error = find_os_error(exc)
    return os_error is not None and os_error.errno in _EXPECTED_ERRNOS


def format_fatal(exc: BaseException) -> str:
    """One line for the user: the error type, what failed, the path, the reason and the fix.

    A bare ``OSError`` (e.g. ENOSPC from a log write not wrapped in ``StorageError``) is described by
    its errno and file name; anything else is ``"<Type>: <first line of its message>"``.
    """
    if isinstance(exc, (StorageError, WorkdirError, ResumeConfigError)) or type(exc).__name__.startswith("Checkpoint"):
        text = str(exc)
    elif isinstance(exc, OSError) and find_os_error(exc) is not None:
        os_error = find_os_error(exc)
        reason, fix = describe_os_error(exc)
        where = os_error.filename or "a file"
        text = f"writing {where} failed: {reason}. Fix: {fix}"
    else:
        text = str(exc)
    lines = text.split("\n") if text else [""]
    # A message of this project's own (it ends in "Fix: ...") or one whose first line announces what
    # follows (a checksum mismatch's files) is kept whole, on one line: cutting it at its first line
    # dropped the file names and the fix. Other messages (a library's long explanation) keep their
    # first line.
    keep = "Fix:" in text or lines[0].rstrip().endswith(":")
    first = " ".join((" ".join(lines) if keep else lines[0]).split())
    return f"{type(exc).__name__}: {first}"


def exit_fatal(exc: BaseException, code: int = 1, *, join_timeout_s: float = 5.0) -> NoReturn:
    """Prints ``format_fatal(exc)`` to stderr and exits with ``code`` -- promptly, whatever threads remain.

    ``sys.exit`` waits for every non-daemon thread; after a failed asynchronous orbax save its worker
    threads wait minutes for signals that never come. So when such threads are still alive after
    ``join_timeout_s``, this flushes stdout / stderr and ends the process with ``os._exit``.

    Args:
      exc: the exception that ends the run.
      code: the exit status (default 1).
      join_timeout_s: how long to wait for other non-daemon threads before ``os._exit``.
    """
    print(format_fatal(exc), file=sys.stderr, flush=True)
    exit_process(code, join_timeout_s=join_timeout_s)


def exit_process(code: int, *, join_timeout_s: float = 5.0) -> NoReturn:
    """``sys.exit(code)``, or -- when other non-daemon threads are still alive after ``join_timeout_s``
    (the workers of a failed asynchronous orbax save) -- flush stdout / stderr and ``os._exit(code)``.

    Args:
      code: the exit status.
      join_timeout_s: how long to wait for other non-daemon threads in total.
    """
    deadline = time.time() + join_timeout_s
    lingering = []
    try:
        # Polled, not joined: orbax's thread classes override join() (and raise TimeoutError from it).
        while True:
            lingering = [
                t
                for t in threading.enumerate()
                if t is not threading.current_thread() and not t.daemon and t.is_alive()
            ]
            if not lingering or time.time() >= deadline:
                break
            time.sleep(0.05)
    finally:
        if lingering:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    sys.exit(code)
