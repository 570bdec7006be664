"""Orbax checkpoints of the whole train state plus the JSON needed to resume exactly.

A checkpoint holds params, optimizer and weighting state, step and PRNG key (the ``TrainState``) and
a JSON record: the data iterator's state, the best-validation record, and a *model signature* (the
params tree's paths and shapes, the task names, the weighting scheme). Restoring into a workdir whose
checkpoint has a different signature is refused (nothing is overwritten). Orbax writes each
checkpoint to a temporary directory and renames it when complete, so a half-written checkpoint is
never picked up as the latest: orbax 0.12.8 on a local disk writes ``<step>.orbax-checkpoint-tmp/``,
adds ``commit_success.txt`` last and renames the folder to ``<step>/``; orbax ignores the temporary
name, and left-over temporary folders of a killed save are deleted when the next run starts. A
``<step>/`` folder that still lacks a file of a finished save (copied or synced half-way, a file
system without atomic rename) would be taken as complete by orbax, so ``Checkpointer`` moves it
aside to ``<step>.incomplete-<time>/`` before looking for the latest step.

Saves are synchronous by default (``asynchronous=False``): a failed save (read-only or immutable
folder, full disk, permissions) raises ``CheckpointSaveError`` from ``save`` at once, naming the folder
and the OS error. An asynchronous orbax save that fails leaves non-daemon worker threads waiting for
signals that never come, which blocks interpreter shutdown for minutes (seen with ``chattr +i`` on the
checkpoint folder mid-run); the synchronous save costs little here (see ``Checkpointer``).

A finished checkpoint that no longer reads (a file deleted or emptied afterwards) is *damaged*:
``restore`` moves it aside to ``<step>.damaged-<time>/`` (never deleted; the next save of that step
cannot collide with it), warns, and resumes from the newest earlier checkpoint that restores.

Integrity: a file that still reads can hold other bytes (a flipped bit on disk, a bad copy), which
orbax restores as other values without notice. So each save also writes ``<step>/jmtl_checksums.json``
(the sha256 and size of every file of the step, written atomically after orbax's commit), and
``restore`` verifies it before reading anything: a mismatch, or a missing file, is damage as above
(named, moved aside, the newest intact step restored). The meta JSON of such a save says
``"integrity": 1``; a step without the record whose meta says so was cut between the two writes and is
damaged too. Checkpoints written before this (no record, no flag) restore unverified.

Host (numpy) state is saved packed, one flat array per dtype (``pack_state``, layout in the meta): the
memory an orbax save keeps grows with the number of arrays saved. Both layouts restore.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jmtl.errors import CheckpointMismatchError, JmtlError
from jmtl.runs.workdir import StorageError

PyTree = Any


class CheckpointSaveError(StorageError):
    """Saving a checkpoint failed; the message names the folder, the OS error and the fix."""

    def __init__(self, step: Optional[int], directory: str | Path, cause: BaseException):
        what = f"saving checkpoint {step}" if step is not None else "saving a checkpoint"
        super().__init__(what, directory, cause)
        self.step = step


class CheckpointRestoreError(JmtlError, OSError):
    """No checkpoint in the folder restores (every step is damaged). ``str()`` is the message alone."""


def model_signature(state_host: PyTree, task_names, weighting_name: str) -> dict:
    params_shapes = {
        jax.tree_util.keystr(path): list(np.shape(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(state_host.params)[0]
    }
    return {"params": params_shapes, "tasks": list(task_names), "weighting": weighting_name}


def _describe_difference(saved: dict, current: dict) -> str:
    parts = []
    if saved.get("tasks") != current.get("tasks"):
        parts.append(f"tasks {saved.get('tasks')} vs {current.get('tasks')}")
    if saved.get("weighting") != current.get("weighting"):
        parts.append(f"weighting {saved.get('weighting')!r} vs {current.get('weighting')!r}")
    sp, cp = saved.get("params", {}), current.get("params", {})
    # Every changed param is listed (not the first few): the message is the whole diff of the model.
    missing = sorted(set(sp) - set(cp))
    extra = sorted(set(cp) - set(sp))
    shape = [k for k in sorted(set(sp) & set(cp)) if sp[k] != cp[k]]
    if missing:
        parts.append(f"params only in the checkpoint: {missing}")
    if extra:
        parts.append(f"params only in this model: {extra}")
    if shape:
        parts.append("shape changes: " + ", ".join(f"{k} {sp[k]} -> {cp[k]}" for k in shape))
    return "; ".join(parts) or "signatures differ"


_STEP_DIR = re.compile(r"^(0|[1-9][0-9]*)$")  # orbax's default step-folder names
# What a finished save of ``Checkpointer.save`` holds (orbax 0.12.8): the commit marker is written last.
_COMPLETE_FILES = ("commit_success.txt", "_CHECKPOINT_METADATA", "state/_METADATA", "meta/metadata")


PACKED = "packed"  # meta["layout"] of a state saved as one flat array per dtype


def _packable(state: PyTree) -> bool:
    """Host state (numpy leaves) of a one-process run: saved packed. Device or multi-host state (the
    ``shard_map`` driver's global arrays) keeps orbax's per-array layout."""
    leaves = jax.tree_util.tree_leaves(state)
    return bool(leaves) and jax.process_count() == 1 and all(isinstance(x, (np.ndarray, np.generic)) for x in leaves)


def pack_state(state: PyTree) -> tuple[dict, list]:
    """``state`` -> ``({dtype name: 1-D array of every leaf of that dtype, in tree order}, layout)``.

    Why: an orbax 0.12.8 / tensorstore save keeps some resident memory per saved *array* that is never
    given back (native; it grows with the number of arrays, not their bytes). A train state has tens to
    hundreds of leaves (params, two Adam moments each, the weighting's state); packed, a save writes one
    array per dtype (per-save growth with and without: ``results/bench/soak_checkpoints_*.md``).
    ``layout`` (JSON: each leaf's dtype and shape) goes into the meta.
    """
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]
    layout = [[x.dtype.name, list(x.shape)] for x in leaves]
    groups: dict[str, list] = {}
    for x in leaves:
        groups.setdefault(x.dtype.name, []).append(x.reshape(-1))
    return {name: np.concatenate(parts) for name, parts in groups.items()}, layout


def unpack_state(packed: dict, layout: list, like: PyTree) -> PyTree:
    """Inverse of ``pack_state`` into ``like``'s tree structure (its leaves' dtypes and shapes must match
    the saved layout: a different state is refused, naming the first difference)."""
    leaves, treedef = jax.tree_util.tree_flatten(like)
    want = [[np.asarray(x).dtype.name, list(np.shape(x))] for x in leaves]
    if want != layout:
        first = next((i for i, (a, b) in enumerate(zip(layout, want)) if a != b), min(len(layout), len(want)))
        raise ValueError(
            f"the checkpoint's state has {len(layout)} arrays, this run's {len(want)}; the first that "
            f"differs is #{first}: {layout[first] if first < len(layout) else None} vs "
            f"{want[first] if first < len(want) else None}"
        )
    offsets: dict[str, int] = {}
    out = []
    for name, shape in layout:
        size = int(np.prod(shape, dtype=np.int64))
        start = offsets.get(name, 0)
        out.append(np.asarray(packed[name][start : start + size]).reshape(shape))
        offsets[name] = start + size
    return jax.tree_util.tree_unflatten(treedef, out)


CHECKSUMS = "jmtl_checksums.json"
INTEGRITY_FORMAT = 1


class CheckpointIntegrityError(JmtlError, OSError):
    """A checkpoint's files differ from the checksums recorded at its save. ``str()`` is the message."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def step_files(step_dir: Path) -> dict[str, dict]:
    """``{relative path: {"bytes", "sha256"}}`` of every file under ``step_dir`` but the record itself."""
    return {
        str(p.relative_to(step_dir)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(step_dir.rglob("*"))
        if p.is_file() and p.name != CHECKSUMS
    }


def write_checksums(step_dir: Path) -> None:
    """Writes ``<step>/jmtl_checksums.json`` (tmp file + rename: a half-written record never exists)."""
    record = {"format": INTEGRITY_FORMAT, "files": step_files(step_dir)}
    tmp = step_dir / (CHECKSUMS + ".tmp")
    with open(tmp, "w") as f:
        # One-shot ``dumps`` without ``indent``: the C encoder. ``json.dump`` (and any ``indent``) use
        # the pure-Python encoder, whose nested closures form a reference cycle per call: 33 objects of
        # garbage per save for the cycle collector (``tests/test_checkpoint_memory.py``). Its share of
        # the RSS per save was within the noise (``cyclic_json`` in results/bench/checkpoint_saves_rss.md).
        f.write(json.dumps(record, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, step_dir / CHECKSUMS)


def verify_checksums(step_dir: Path) -> Optional[bool]:
    """Checks ``step_dir``'s files against its record: True (intact), None (no record: an unverified
    checkpoint of an earlier version, or a save cut before the record), or raises.

    Raises:
      CheckpointIntegrityError: a recorded file is missing, has another size, or another sha256 (each
        named, with the first few).
    """
    path = step_dir / CHECKSUMS
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointIntegrityError(f"its checksum record {CHECKSUMS} does not read ({e})") from None
    bad = []
    for rel, want in sorted(files.items()):
        p = step_dir / rel
        if not p.is_file():
            bad.append(f"{rel} missing")
        elif p.stat().st_size != want["bytes"]:
            bad.append(f"{rel} has {p.stat().st_size} bytes, {want['bytes']} at save")
        elif _sha256(p) != want["sha256"]:
            bad.append(f"{rel} sha256 differs from the save's")
    if bad:
        raise CheckpointIntegrityError(
            "checksum mismatch: " + "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        )
    return True


def incomplete_step_dirs(directory: str | Path) -> list[Path]:
    """Step folders (``<step>/``) under ``directory`` missing a file that every finished save has."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(
        (
            p
            for p in directory.iterdir()
            if p.is_dir() and _STEP_DIR.match(p.name) and not all((p / f).exists() for f in _COMPLETE_FILES)
        ),
        key=lambda p: int(p.name),
    )


def _set_aside_incomplete(directory: Path) -> None:
    if jax.process_index() == 0:
        for path in incomplete_step_dirs(directory):
            missing = [f for f in _COMPLETE_FILES if not (path / f).exists()]
            aside = path.with_name(f"{path.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
            path.rename(aside)
            logging.warning(
                "checkpoint %s is incomplete (missing %s: its save was interrupted, or files were deleted later); moved it to %s and "
                "resuming from the latest complete checkpoint instead",
                path,
                ", ".join(missing),
                aside.name,
            )
    if jax.process_count() > 1:  # every process must see the same steps
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jmtl_checkpoint_set_aside_incomplete")


class _DropOrbaxThreadErrors:
    """absl-logger filter: drops orbax's ``_SignalingThread.run() raised an exception`` records.

    orbax logs each failing worker thread's traceback (a full disk gives ~140 lines) *and* hands the
    exception to the caller, where ``Checkpointer.save`` turns it into one ``CheckpointSaveError`` line
    (the original stays chained as ``__cause__``). Only these duplicate records are dropped.
    """

    def filter(self, record) -> bool:
        return not ("orbax" in record.pathname and "raised an exception" in str(record.msg))


def _is_late_loop_callback(unraisable) -> bool:
    """tensorstore completing a read's future after orbax closed its event loop (a failed restore):
    ``RuntimeError('Event loop is closed')`` from ``call_soon_threadsafe``, harmless, printed ~15 times."""
    exc = unraisable.exc_value
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


_QUIETED = False


def _quiet_orbax_noise() -> None:
    global _QUIETED
    if _QUIETED:
        return
    _QUIETED = True
    logging.get_absl_logger().addFilter(_DropOrbaxThreadErrors())
    previous = sys.unraisablehook

    def hook(unraisable):
        if not _is_late_loop_callback(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook


# tensorstore 0.1.86's ``KvStore.Spec.to_json()`` leaks its result's Python objects (the path string
# and the dict's values keep two extra references each: ~0.25 KiB of RSS per call, measured with
# malloc_trim over 20,000 calls). orbax 0.12.8 calls it for every array and twice more per save
# (``tensorstore_utils._build_ocdbt_kvstore_tspec``, only to normalise the local base spec), so each
# save leaked ~1 KiB of Python objects (tracemalloc over 300 saves; ``tests/test_checkpoint_memory.py``
# checks that none is left; the RSS left per save is mostly native, results/bench/checkpoint_saves_rss.md).
# For a local ``file`` spec whose
# path is already normal, ``to_json()`` returns its input unchanged (``tests/test_checkpoint_memory.py``
# checks this against tensorstore), so the spec orbax asks for is answered without the call; any other
# spec goes to tensorstore as before. Set to False to measure without it.
AVOID_SPEC_JSON_LEAK = True


def _is_normal_local_file_spec(spec: Any) -> bool:
    """``{'driver': 'file', 'path': '/abs/normal/path/'}`` exactly (what orbax builds for a local disk)."""
    if not isinstance(spec, dict) or set(spec) != {"driver", "path"} or spec["driver"] != "file":
        return False
    path = spec["path"]
    return (
        isinstance(path, str) and path.startswith("/") and path.endswith("/") and os.path.normpath(path) + "/" == path
    )


class _FileSpecJson:
    """Stands in for ``ts.KvStore.Spec(spec)`` of a normal local file spec: ``to_json()`` is the spec
    itself (a copy); anything else is asked of the real ``Spec``, built on first use."""

    def __init__(self, spec: dict):
        self._json = dict(spec)
        self._real = None

    def to_json(self, *args, **kwargs) -> dict:
        if args or kwargs:
            return self.real().to_json(*args, **kwargs)
        return dict(self._json)

    def real(self):
        if self._real is None:
            import tensorstore as ts

            self._real = ts.KvStore.Spec(self._json)
        return self._real

    def __getattr__(self, name: str):
        return getattr(self.real(), name)


class _KvStoreWithoutSpecJsonLeak:
    """``tensorstore.KvStore`` as orbax's ``tensorstore_utils`` sees it: ``Spec`` of a normal local file
    spec is a ``_FileSpecJson``; ``open`` takes it too; every other attribute is tensorstore's."""

    def __init__(self, kvstore):
        self._kvstore = kvstore

    def Spec(self, spec, *args, **kwargs):  # noqa: N802 (tensorstore's name)
        if AVOID_SPEC_JSON_LEAK and not args and not kwargs and _is_normal_local_file_spec(spec):
            return _FileSpecJson(spec)
        return self._kvstore.Spec(spec, *args, **kwargs)

    def open(self, spec, *args, **kwargs):
        if isinstance(spec, _FileSpecJson):
            spec = spec.real()
        return self._kvstore.open(spec, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._kvstore, name)


class _TensorstoreWithoutSpecJsonLeak:
    """The ``tensorstore`` module with ``KvStore`` replaced (above); every other attribute is the module's."""

    def __init__(self, module):
        self._module = module
        self.KvStore = _KvStoreWithoutSpecJsonLeak(module.KvStore)

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def _avoid_spec_json_leak() -> None:
    """Installs ``_TensorstoreWithoutSpecJsonLeak`` as the ``ts`` of orbax's ``tensorstore_utils`` (once;
    only where that module is as in orbax 0.12.8: it imports tensorstore as ``ts`` and has the function
    that calls ``to_json``)."""
    try:
        import tensorstore
        from orbax.checkpoint._src.serialization import tensorstore_utils
    except ImportError:  # another orbax layout: leave it alone
        return
    if tensorstore_utils.__dict__.get("ts") is tensorstore and hasattr(tensorstore_utils, "_build_ocdbt_kvstore_tspec"):
        tensorstore_utils.ts = _TensorstoreWithoutSpecJsonLeak(tensorstore)


# Most of what was left after the two fixes above is not a leak but the allocator. orbax does each
# save's work on fresh threads (a commit thread, thread pools), and glibc gives each new thread its own
# malloc arena (up to 8 per core), so a save's transient buffers spread over many heaps that each
# creep up with fragmentation (issue 23: orbax saves alone, after a full gc and malloc_trim, grew RSS
# with the heap in use, ``mallinfo2().uordblks``, flat; with one arena RSS was flat too). Capped at 2:
# results/bench/checkpoint_saves_rss.md (``fix`` vs ``spec_only``). A ``MALLOC_ARENA_MAX`` in the
# environment wins (glibc read it at start); ``JMTL_MALLOC_ARENAS=0`` leaves glibc's default. The cap is
# process-wide (every library's malloc): heavy multi-threaded host allocation may wait on the arena
# locks; set ``JMTL_MALLOC_ARENAS`` higher then.
#
# Where: glibc fixes its arena limit for good the first time a thread needs a ninth arena (64-bit
# ``arena_test``), and jax's first computation starts XLA's CPU thread pool, which takes them: on the
# 2-core bench machine a process has 1 arena after importing this module and 16 (8 per core, the limit
# then fixed) after the first ``jnp`` op. ``jmtl.train`` creates its ``Checkpointer`` after the model's
# init (16 arenas there without a cap, measured), so a cap set there would change nothing (``late_cap``
# in results/bench/checkpoint_saves_rss.md: 16 arenas to the end, vs 2 with the cap at import; with
# jax's threads running the cap's share of the RSS per save is smaller than without them, ~0.3-0.6 of
# ~2.3-2.9 KiB/save in two runs). Hence once per process when this module is imported
# (``jmtl.train`` / ``jmtl.fit`` load it with the trainer; ``python -m experiments.train`` caps in time,
# 2 arenas at its end, measured), the latest point that precedes a typical program's first jax op;
# ``Checkpointer`` names a cap that came too late, with the fix.
M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
MALLOC_ARENAS = 2


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> bool:
    """Caps glibc's malloc arenas at ``n`` (``mallopt(M_ARENA_MAX, n)``); True if set.

    Not set (False): ``n <= 0``, ``MALLOC_ARENA_MAX`` is in the environment (the user's choice), or the
    C library is not glibc. Arenas that already exist stay; no new one is made past ``n``.
    """
    if n <= 0 or "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, n))


def _arenas_from_env() -> int:
    text = os.environ.get("JMTL_MALLOC_ARENAS", str(MALLOC_ARENAS))
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"JMTL_MALLOC_ARENAS={text!r} is not an integer; set it to a number of malloc arenas "
            f"(default {MALLOC_ARENAS}; 0 leaves glibc's default)"
        ) from None


_LIBC = None


def malloc_arena_count() -> Optional[int]:
    """How many malloc arenas glibc has made so far (``malloc_info``); None where that is unknown."""
    global _LIBC
    try:
        import ctypes

        if _LIBC is None:  # once: each ``CDLL`` makes a class in a reference cycle (garbage per call)
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.open_memstream.restype = ctypes.c_void_p
            _LIBC.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
            _LIBC.fclose.argtypes = [ctypes.c_void_p]
        libc = _LIBC
        buf, size = ctypes.c_char_p(), ctypes.c_size_t()
        stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
        if not stream:
            return None
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        text = ctypes.string_at(buf, size.value).decode()
        libc.free(buf)
    except (OSError, AttributeError, UnicodeDecodeError):
        return None
    return len(re.findall(r"<heap nr=", text)) or None


_ARENA_TEST = 8
_ARENA_CAP: Optional[dict] = None  # what ``cap_malloc_arenas`` did, once per process


def cap_malloc_arenas() -> dict:
    """Caps glibc's malloc arenas at ``JMTL_MALLOC_ARENAS`` (default 2; 0 = off), once per process.

    The first call reads the setting and calls ``limit_malloc_arenas``; later calls change nothing and
    return the first call's record.

    Returns:
      ``{"arenas": n asked, "limited": whether mallopt set it, "arenas_before": arenas that existed
      then (None if not limited or unknown), "in_time": False if glibc had fixed its own limit before}``.

    Raises:
      ValueError: ``JMTL_MALLOC_ARENAS`` is not an integer (naming it and the fix).
    """
    global _ARENA_CAP
    if _ARENA_CAP is None:
        n = _arenas_from_env()
        before = malloc_arena_count() if n > 0 else None
        limited = limit_malloc_arenas(n)
        _ARENA_CAP = {
            "arenas": n,
            "limited": limited,
            "arenas_before": before if limited else None,
            "in_time": not (limited and before is not None and before > _ARENA_TEST),
            "warned": False,
        }
    return {k: v for k, v in _ARENA_CAP.items() if k != "warned"}


MALLOC_ARENAS_LIMITED = cap_malloc_arenas()["limited"]


def _warn_if_arena_cap_came_late() -> None:
    cap = _ARENA_CAP
    if cap is not None and not cap["in_time"] and not cap["warned"]:
        cap["warned"] = True  # once per process
        logging.warning(
            "jmtl.runs.checkpoint was imported after this process made %d malloc arenas, too late to cap "
            "them: RSS may grow a few KiB per checkpoint save (allocator fragmentation, not a leak). Fix: "
            "start the program with MALLOC_ARENA_MAX=2 in the environment, or import jmtl.runs.checkpoint "
            "before jax's first computation",
            cap["arenas_before"],
        )


# glibc keeps the buffers orbax / tensorstore free after a save in its per-thread arenas instead of
# returning them to the OS, so without a trim the process RSS grows by a few KiB per save (issue 23:
# results/bench/soak_checkpoints_*.md). Set to False to measure without it.
TRIM_HEAP_AFTER_SAVE = True


def release_freed_heap() -> None:
    """Returns the heap pages freed by a save to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere)."""
    if not TRIM_HEAP_AFTER_SAVE:
        return
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


class Checkpointer:
    """Saves and restores ``(TrainState, meta JSON)`` pairs under ``directory/<step>/`` with orbax.

    Args:
      directory: the checkpoint folder (``<workdir>/checkpoints``); created if missing.
      max_to_keep: how many of the newest checkpoints to keep (default 2: the newest may be damaged
        later, by a half-done copy or a bad disk, and ``restore`` then falls back to the other).
      asynchronous: save in orbax's background threads (default False). Synchronous saves raise a
        failure at once and leave no thread behind; an asynchronous failure surfaces at the next
        ``save``/``wait`` and its threads can block shutdown (use ``workdir.exit_fatal``).
      pack: save host (numpy) state as one array per dtype (``pack_state``: bounded memory per save);
        default ``Checkpointer.PACK`` (True). Restore reads either layout.
    """

    PACK = True

    def __init__(
        self, directory: str | Path, *, max_to_keep: int = 2, asynchronous: bool = False, pack: Optional[bool] = None
    ):
        self.directory = Path(directory).absolute()
        self.damaged: list[tuple[Path, str]] = []  # (moved-to folder, reason) of steps restore set aside
        self.asynchronous = asynchronous
        self.pack = self.PACK if pack is None else pack
        self._pending_checksums: list[int] = []  # saved steps whose checksum record is still to write
        _quiet_orbax_noise()
        _avoid_spec_json_leak()
        _warn_if_arena_cap_came_late()
        _set_aside_incomplete(self.directory)
        try:
            self.manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=max_to_keep,
                    create=True,
                    cleanup_tmp_directories=True,
                    enable_async_checkpointing=asynchronous,
                ),
            )
        except OSError as e:
            raise CheckpointSaveError(None, self.directory, e) from e

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: PyTree, meta: dict) -> None:
        """Writes checkpoint ``step``; raises ``CheckpointSaveError`` (folder, OS error, fix) if it fails."""
        meta = {**meta, "integrity": INTEGRITY_FORMAT}
        if self.pack and _packable(state):
            state, meta["layout"] = pack_state(state)
            state = {PACKED: state}
        try:
            self._write_pending_checksums()
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            )
            self._pending_checksums.append(step)
            if not self.asynchronous:
                self._write_pending_checksums()
                release_freed_heap()
        except CheckpointSaveError:
            raise
        except Exception as e:  # orbax / tensorstore wrap the OSError in various types
            raise CheckpointSaveError(step, self.directory, e) from e

    def _write_pending_checksums(self) -> None:
        """The checksum records of the saves finished since the last call (an asynchronous save's files
        exist only once it finished: orbax waits for it before the next save starts)."""
        if not self._pending_checksums:
            return
        if self.asynchronous:
            self.manager.wait_until_finished()
        steps, self._pending_checksums = self._pending_checksums, []
        if jax.process_index() != 0:
            return
        for step in steps:
            step_dir = self.directory / str(step)
            if step_dir.is_dir():  # not when max_to_keep dropped it already
                try:
                    write_checksums(step_dir)
                except OSError as e:
                    raise CheckpointSaveError(step, self.directory, e) from e

    def wait(self, timeout: Optional[float] = None) -> None:
        """Waits for a pending asynchronous save; ``CheckpointSaveError`` if it failed or took over ``timeout`` s."""
        _call_with_timeout(self.manager.wait_until_finished, timeout, self.directory)
        self._write_pending_checksums()

    def read_meta(self, step: int) -> dict:
        """The meta JSON of checkpoint ``step`` (signature, data position, best records, the run's
        config and identity), without reading its state."""
        return self._read_meta(step)

    def _read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def _check_signature(self, meta: dict, signature: dict) -> None:
        saved = meta.get("signature", {})
        if json.dumps(saved, sort_keys=True) != json.dumps(signature, sort_keys=True):
            raise CheckpointMismatchError(
                f"the workdir {self.directory.parent} holds a checkpoint of a different model "
                f"({_describe_difference(saved, signature)}); refusing to resume or overwrite it. "
                "Use a new --workdir, or delete that directory if you no longer need it."
            )

    def _restore_step(self, step: int, abstract_state: PyTree, signature: dict) -> tuple[PyTree, dict]:
        # Before anything is read: orbax would restore flipped bits as other values, without notice.
        verified = verify_checksums(self.directory / str(step))
        meta = self._read_meta(step)
        if verified is None and meta.get("integrity"):
            raise CheckpointIntegrityError(f"its checksum record {CHECKSUMS} is missing (the save was cut before it)")
        if "layout" in meta:  # saved packed (pack_state)
            self._check_signature(meta, signature)
            names = sorted({name for name, _ in meta["layout"]})
            sizes = {n: sum(int(np.prod(sh, dtype=np.int64)) for d, sh in meta["layout"] if d == n) for n in names}
            target = {PACKED: {n: np.zeros((sizes[n],), jax.numpy.dtype(n)) for n in names}}
            packed = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))[
                "state"
            ][PACKED]
            return unpack_state(packed, meta["layout"], abstract_state), meta
        self._check_signature(meta, signature)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))[
            "state"
        ]
        return restored, meta

    def restore(self, abstract_state: PyTree, signature: dict, step: Optional[int] = None) -> tuple[PyTree, dict]:
        """Restores the latest (or given) step into ``abstract_state``'s structure.

        With ``step=None`` a checkpoint that fails to read (a file deleted or emptied after the save)
        is skipped and the next older one tried; once one restores, the newer failed ones are moved
        aside to ``<step>.damaged-<time>/`` (never deleted) with a warning naming them.

        Raises:
          CheckpointMismatchError: the checkpoint's model signature differs from ``signature``
            (naming the differences; no fallback: older steps are of the same other model).
          CheckpointRestoreError: no step restores (naming every folder tried and the fix). Nothing is
            moved then: when every step fails the cause may be the caller's, not the files.
          FileNotFoundError: there is no checkpoint at all.
        """
        if step is not None:
            return self._restore_step(step, abstract_state, signature)
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        failures: list[tuple[int, str, BaseException]] = []
        for s in steps:
            try:
                result = self._restore_step(s, abstract_state, signature)
            except CheckpointMismatchError:
                raise
            except Exception as e:  # any read / decode error
                failures.append((s, f"{type(e).__name__}: {_short(e)}", e))
                continue
            # Only now, with an older step that restores, are the newer failures known to be damage
            # (and not a caller's error, which would fail every step): set them aside.
            moved = [(f, self._set_aside_damaged(f, r), r) for f, r, _ in failures]
            if moved:
                print(
                    f"warning: resuming from step {s} instead of step {moved[0][0]}: "
                    + "; ".join(f"{self.directory / str(f)} is damaged ({r}), moved to {a.name}" for f, a, r in moved),
                    file=sys.stderr,
                    flush=True,
                )
            return result
        raise CheckpointRestoreError(
            f"no checkpoint in {self.directory} restores: "
            + "; ".join(f"step {f} ({r})" for f, r, _ in failures)
            + ". Fix: copy an intact checkpoint folder back from a backup, or move the checkpoints folder away "
            "(and the logs) to start over, or use a new --workdir"
        ) from failures[0][2]

    def _set_aside_damaged(self, step: int, reason: str) -> Path:
        path = self.directory / str(step)
        aside = path.with_name(f"{step}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        if jax.process_index() == 0:
            path.rename(aside)  # the caller prints one warning naming every folder moved
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"jmtl_checkpoint_set_aside_damaged_{step}")
        self.manager.reload()  # forget the step, so the next save of that number starts clean
        self.damaged.append((aside, reason))
        return aside

    def close(self, timeout: Optional[float] = 60.0) -> None:
        """Waits (at most ``timeout`` s) for a pending save, then closes the manager."""
        try:
            self.wait(timeout)
        finally:
            _call_with_timeout(self.manager.close, timeout, self.directory)


def _short(e: BaseException, limit: int = 300) -> str:
    """The first ``limit`` characters of ``e``'s message, one line, without tensorstore's long spec dump."""
    text = " ".join(str(e).split()).split(" [tensorstore_spec")[0]
    # tensorstore nests "Error opening X driver: ..." prefixes; the cause (file, decode error) is at the end.
    return text if len(text) <= limit else text[:60] + " ... " + text[-(limit - 65) :]


def _call_with_timeout(fn, timeout: Optional[float], directory: Path) -> None:
    """Runs ``fn()``; with a timeout, in a daemon thread so a stuck orbax wait cannot hold the process."""
    if timeout is None:
        try:
            fn()
        except CheckpointSaveError:
            raise
        except Exception as e:
            raise CheckpointSaveError(None, directory, e) from e
        return
    box: dict = {}

    def run():
        try:
            fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, name="jmtl-checkpoint-wait", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise CheckpointSaveError(
            None, directory, TimeoutError(f"the checkpoint save did not finish within {timeout} s")
        )
    if "error" in box:
        e = box["error"]
        if isinstance(e, CheckpointSaveError):
            raise e
        raise CheckpointSaveError(None, directory, e) from e
