"""tfds caches that know what they were built from, and notice damage.

`prepare` wraps `builder.download_and_prepare()`:

* after a build it writes `jmtl_cache.json` into the tfds folder
  (`<cache>/<name>/<config>/<version>/`): the source fingerprint, the raw
  files (name, path, size, sha256) and the size and sha256 of every cache
  file;
* before using an existing folder it checks that record: a missing cache
  file, another size (a truncated array_record) or another sha256 (flipped
  bytes) marks the folder as damaged. A damaged folder is never deleted and
  never read: it is moved to `<cache>/_damaged/<name>/<config>/<version>-<time>`,
  a note naming both folders goes to stderr, and the dataset is rebuilt from
  its raw files. Without raw files to rebuild from, `DataError` names the
  folder and the fix instead.

Checking costs one sha256 pass over the cache files: 0.06 s for the 28 MB
of a MultiMNIST cache on the 2-core CI machine (a whole cached
`load('multi_mnist')`, raw-file hashes included, takes 0.11 s), small next
to reading the splits into memory (~2 s).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import pathlib
import shutil
import sys
from typing import Any, Iterable

import tensorflow_datasets as tfds

from jmtl.data import fingerprint as fp_lib
from jmtl.data.idx import DataError

RECORD = "jmtl_cache.json"
DAMAGED = "_damaged"
_RECORD_FORMAT = 1


def dataset_folder(cache_root: str, builder_cls: type, config: Any) -> pathlib.Path:
    """`<cache_root>/<name>/[<config>/]<version>`: where tfds puts the build."""
    parts = [cache_root, builder_cls.name]
    if config is not None:
        parts.append(config.name)
    parts.append(str(builder_cls.VERSION))
    return pathlib.Path(*parts)


def _cache_files(folder: pathlib.Path) -> dict[str, dict[str, Any]]:
    return {
        p.name: {"bytes": p.stat().st_size, "sha256": fp_lib.sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != RECORD
    }


def write_record(folder: pathlib.Path, *, fingerprint: str | None, sources: Iterable[fp_lib.FileDigest]) -> dict:
    """Writes `folder/jmtl_cache.json` (atomically) and returns it."""
    record = {
        "format": _RECORD_FORMAT,
        "fingerprint": fingerprint,
        "sources": [d._asdict() for d in sources],
        "files": _cache_files(folder),
    }
    tmp = folder / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, folder / RECORD)
    return record


def read_record(folder: pathlib.Path) -> dict | None:
    """The folder's record; None when it has none (or it is unreadable)."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def damage(folder: pathlib.Path, fingerprint: str | None) -> str | None:
    """Why the cache in `folder` cannot be trusted; None if it checks out.

    Args:
      folder: a tfds dataset folder holding a `jmtl_cache.json`.
      fingerprint: the source fingerprint the folder must have been built
        from; None to skip that comparison (generated datasets).
    """
    record = read_record(folder)
    if record is None or not isinstance(record.get("files"), dict):
        return f"its {RECORD} is missing or unreadable"
    if fingerprint is not None and record.get("fingerprint") != fingerprint:
        return f"it was built from sources with fingerprint {record.get('fingerprint')}, not {fingerprint}"
    files = record["files"]
    present = {p.name for p in folder.iterdir() if p.name != RECORD}
    for name, want in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            return f"cache file {name} is missing"
        size = path.stat().st_size
        if size != want.get("bytes"):
            return (
                f"cache file {name} has {size:,} bytes, {want.get('bytes'):,} "
                "when it was written (truncated or overwritten)"
            )
    for name, want in sorted(files.items()):
        got = fp_lib.sha256_file(folder / name)
        if got != want.get("sha256"):
            return f"cache file {name} has sha256 {got}, not {want.get('sha256')} as written (its bytes changed)"
    extra = sorted(present - set(files))
    if any(n.endswith(".array_record") or ".array_record-" in n for n in extra):
        return f"unrecorded cache file(s) {', '.join(extra)}"
    return None


def move_aside(folder: pathlib.Path, cache_root: str) -> pathlib.Path:
    """Moves a damaged dataset folder under `<cache_root>/_damaged/`; returns it."""
    rel = folder.relative_to(cache_root)
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S%f")
    dest = pathlib.Path(cache_root, DAMAGED, *rel.parts[:-1], f"{rel.parts[-1]}-{stamp}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(os.fspath(folder), os.fspath(dest))
    return dest


class _DropCustomConfigNote(logging.Filter):
    """Every fingerprinted config is a 'custom' one to tfds, which logs a
    warning per load; it says nothing useful here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Using custom data configuration")


@contextlib.contextmanager
def _quiet_custom_config():
    logger, note = logging.getLogger("absl"), _DropCustomConfigNote()
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


def prepare(
    builder_cls: type[tfds.core.GeneratorBasedBuilder],
    config: Any,
    cache_root: str,
    *,
    fingerprint: str | None = None,
    sources: Iterable[fp_lib.FileDigest] = (),
    can_rebuild: bool = True,
    rebuild_fix: str = "",
    **init_kwargs,
) -> tfds.core.GeneratorBasedBuilder:
    """Builds (or reuses a verified) tfds cache and returns the builder.

    Args:
      builder_cls: the tfds builder class.
      config: its BuilderConfig (None for builders without configs). A
        predefined config of the same name is used instead (tfds refuses a
        second object of that name).
      cache_root: the tfds data dir.
      fingerprint: the source fingerprint recorded with the cache and checked
        before each reuse (None for data generated from its config alone).
      sources: digests of the raw files, recorded for the user's benefit.
      can_rebuild: whether the raw files are at hand to rebuild a damaged
        cache; if not, a damaged cache raises `DataError`.
      rebuild_fix: what to do when a damaged cache cannot be rebuilt.
      **init_kwargs: forwarded to the builder.

    Raises:
      DataError: a damaged cache that cannot be rebuilt.
    """
    if config is not None:
        predefined = {c.name: c for c in builder_cls.BUILDER_CONFIGS}
        config = predefined.get(config.name, config)
    sources = list(sources)
    cache_root = os.path.abspath(cache_root)
    folder = dataset_folder(cache_root, builder_cls, config)
    # Two processes preparing the same cache at once (two runs started together, parallel test
    # workers) would both build it and race on tfds' final rename, or one would adopt the other's
    # half-recorded folder: one at a time per dataset folder.
    with _build_lock(folder, cache_root):
        return _prepare_locked(
            builder_cls, config, cache_root, folder, fingerprint, sources, can_rebuild, rebuild_fix, init_kwargs
        )


@contextlib.contextmanager
def _build_lock(folder: pathlib.Path, cache_root: str):
    """An exclusive advisory lock (``flock``) of one dataset folder, in ``<cache root>/.locks/`` (out
    of the dataset folders, which other code lists), released when the block ends or the process
    dies; a read-only cache is used without one."""
    rel = folder.relative_to(cache_root)
    lock_path = pathlib.Path(cache_root, ".locks", "__".join(rel.parts) + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a")  # noqa: SIM115  (held for the block)
    except OSError:
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()


def _prepare_locked(
    builder_cls, config, cache_root, folder, fingerprint, sources, can_rebuild, rebuild_fix, init_kwargs
):
    if folder.exists():
        has_info = (folder / "dataset_info.json").is_file()
        if not (folder / RECORD).exists() and has_info:
            # Built by tfds before jmtl kept records (generated datasets) or the
            # process stopped between tfds' final rename and our record: adopt it.
            # The folder's name already binds it to its sources and version.
            try:
                write_record(folder, fingerprint=fingerprint, sources=sources)
            except OSError:  # A read-only cache: used unchecked, as before.
                pass
        problem = damage(folder, fingerprint) if (folder / RECORD).exists() or not has_info else None
        if problem is not None:
            if not can_rebuild:
                raise DataError(
                    f"damaged dataset cache {folder}: {problem}. Fix: "
                    f"{rebuild_fix or 'give the raw data dir so it can be rebuilt'}; "
                    "the damaged folder is then moved aside, never deleted"
                )
            moved = move_aside(folder, cache_root)
            print(
                f"jmtl.data: damaged dataset cache {folder}: {problem}. Moved it to "
                f"{moved} (delete it when you no longer need it) and rebuilding "
                "from the raw files.",
                file=sys.stderr,
                flush=True,
            )
    with _quiet_custom_config():
        builder = builder_cls(data_dir=cache_root, config=config, file_format="array_record", **init_kwargs)
    assert pathlib.Path(builder.data_dir) == folder, (builder.data_dir, folder)
    if not folder.exists():
        try:
            builder.download_and_prepare()
            write_record(folder, fingerprint=fingerprint, sources=sources)
        except Exception as e:  # noqa: BLE001  (re-raised unless the disk refused a write)
            raise _storage_error(e, folder, cache_root) or e
    return builder


def _storage_error(exc: BaseException, folder: pathlib.Path, cache_root: str) -> Exception | None:
    """A one-line `StorageError` for a cache build the disk refused (full,
    read-only, quota, permissions), else None. tfds raises such failures in
    several wrappings (its writers' own exception types, the `OSError` chained
    or only its text); each is recognised here, as for a workdir write."""
    from jmtl.runs import workdir as workdir_lib  # no jax; no jmtl import

    if workdir_lib.storage_reason(exc) is None:
        return None  # not a disk refusal: the original error, with its traceback
    # tfds builds in `<parent>/incomplete.<id>_<version>/` and renames at the
    # end; one left behind holds space and nothing else.
    partial = sorted(str(p) for p in folder.parent.glob(f"incomplete.*_{folder.name}"))
    error = workdir_lib.StorageError(
        "building the dataset cache",
        folder,
        exc,
        fix=(
            f"free space on the disk of {cache_root}"
            + (f" (delete the partial build {', '.join(partial)})" if partial else "")
            + ", or set JMTL_CACHE_DIR / --config.dataset.cache_dir to a "
            "folder on another disk, then rerun"
        ),
    )
    error.__cause__ = exc
    return error


def find_built(cache_root: str, builder_cls: type, config_prefix: str) -> list[pathlib.Path]:
    """Existing recorded builds of `builder_cls` whose config name starts with
    `config_prefix` (newest first)."""
    base = pathlib.Path(cache_root, builder_cls.name)
    if not base.is_dir():
        return []
    found = [
        d / str(builder_cls.VERSION)
        for d in base.iterdir()
        if d.name.startswith(config_prefix) and (d / str(builder_cls.VERSION) / RECORD).is_file()
    ]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
