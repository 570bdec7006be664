"""Provenance and result writing, shared by the experiment scripts and the benchmarks.

Every results file a script writes carries its provenance (:func:`provenance`): the command, the
git commit (and whether the tree had uncommitted changes), the date, the machine (CPU model, cores,
Python / jax / flax / torch versions, backend) and the load average when the run started and when
it ended. A shared machine's load changes what a timing means, so it is part of the result.

``experiments/*.py`` and ``experiments/bench/*.py`` both import this module; no experiment script
imports ``experiments.bench`` (a test walks the imports), so the two packages form no cycle.
``jax`` is imported lazily.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
PROVENANCE_MARK = "<!-- provenance -->"


# ----------------------------------------------------------------------------- provenance


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine() -> dict:
    """CPU model, cores and the versions the numbers depend on (torch only if already imported)."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import jax

        info.update(jax=jax.__version__, backend=jax.default_backend(), devices=jax.device_count())
    except ImportError:
        pass
    for name in ("flax", "torch"):
        mod = sys.modules.get(name)
        if mod is not None:
            info[name] = getattr(mod, "__version__", "?")
    if os.environ.get("XLA_FLAGS"):
        info["XLA_FLAGS"] = os.environ["XLA_FLAGS"]
    return info


def code_state() -> dict:
    """The code a run executes, read now: ``{"git_commit", "git_dirty"}`` of this checkout.

    Read when a run (or a grid's cell) *starts*: a commit read when the results are written names
    whatever the tree holds by then, which for a grid trained over hours need not be the code that
    trained it. ``git_dirty`` is True when tracked files differ from the commit (then the commit
    alone cannot name the code); both are None outside a git checkout.
    """
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status)}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


_STARTED = {"date": _now(), "load_average": load_average(), **code_state()}


def provenance(command: str | None = None, started: Mapping | None = None) -> dict:
    """Where a result came from: the code and load when the run started, the date it was written.

    Args:
      command: the command line that produced it; default: ``python -m <main module> <argv>`` of
        this process (``python <script> <argv>`` when not run with ``-m``).
      started: the date, load average and code (:func:`code_state`) at the start of the run, as
        :func:`started_now` gives; default: when this module was first imported, which for a
        benchmark script is its start.

    Returns:
      ``{"recorded": True, "command", "git_commit", "git_dirty", "date_start", "date",
      "machine": {...}, "load_average_start", "load_average_end"}`` (dates in UTC, ISO 8601).
      ``git_commit`` / ``git_dirty`` are the start's; when the tree changed while the run went on,
      ``git_commit_at_write`` / ``git_dirty_at_write`` say what it was when the file was written.
    """
    if command is None:
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        name = spec.name.removesuffix(".__main__") if spec is not None and spec.name else None
        head = f"python -m {name}" if spec is not None and spec.name else f"python {sys.argv[0]}"
        command = " ".join([head, *map(shlex.quote, sys.argv[1:])])
    started = started or _STARTED
    now = code_state()
    # A ``started`` from before code states were recorded (no git keys) cannot name its code.
    start_code = {k: started.get(k) for k in ("git_commit", "git_dirty")}
    out = {
        "recorded": True,
        "command": command,
        **start_code,
        "date_start": started["date"],
        "date": _now(),
        "machine": machine(),
        "load_average_start": list(started["load_average"]),
        "load_average_end": load_average(),
    }
    if now != start_code:
        out.update(git_commit_at_write=now["git_commit"], git_dirty_at_write=now["git_dirty"])
    return out


def started_now() -> dict:
    """The date, load average and code (:func:`code_state`) now: pass to :func:`provenance` as
    ``started`` for a run that begins later than the module's import."""
    return {"date": _now(), "load_average": load_average(), **code_state()}


# ----------------------------------------------------------------------------- per-cell code

CODE_RECORD = "code.jsonl"


def record_code_start(run_dir: Path | str) -> dict:
    """Appends the code this cell starts with (:func:`code_state` and the date) to
    ``run_dir/code.jsonl``; called before the cell trains, once per start, so a cell resumed under
    other code lists every code that trained it. Returns the line written."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    entry = {**code_state(), "date": _now()}
    with open(run_dir / CODE_RECORD, "a") as f:
        f.write(json.dumps(entry) + "\n")
    return entry


def cell_code(*run_dirs: Path | str) -> dict:
    """The code that trained a cell, from its programs' ``code.jsonl`` (:func:`record_code_start`).

    Returns:
      ``{"git_commit": str | None, "git_dirty": bool | None, "status": s}`` where ``s`` is
      ``"clean"`` (one commit, no uncommitted changes: the commit names the code), ``"dirty"``
      (uncommitted changes at some start), ``"mixed"`` (started or resumed under several commits)
      or ``"unknown"`` (a program without a start record, e.g. trained before they were kept).
    """
    entries, missing = [], False
    for d in run_dirs:
        path = Path(d) / CODE_RECORD
        if not path.exists():
            missing = True
            continue
        entries += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return code_of([None] if missing else entries)


def code_of(starts: Sequence[Mapping | None]) -> dict:
    """What :func:`cell_code` returns, from the cell's start records (:func:`code_state` each; None
    for a start that recorded none): one clean commit, dirty, mixed or unknown."""
    commits = {None if e is None else e.get("git_commit") for e in starts}
    if not starts or None in commits:
        return {"git_commit": None, "git_dirty": None, "status": "unknown"}
    dirty = any(e.get("git_dirty") for e in starts)
    if len(commits) > 1:
        return {"git_commit": None, "git_dirty": dirty, "status": "mixed"}
    return {"git_commit": commits.pop(), "git_dirty": dirty, "status": "dirty" if dirty else "clean"}


CODE_MARKS = {"clean": "", "dirty": "‡", "mixed": "§", "unknown": "†"}
CODE_NOTE = (
    "† = the cell's code is unknown (no commit recorded when it started; trained before start records "
    "were kept), ‡ = it started from a tree with uncommitted changes, § = it was started or resumed "
    "under several commits: such a cell cannot name the code that produced it."
)


def code_mark(code: Mapping | None) -> str:
    """The mark a table puts beside a cell whose code is not one clean commit (see :data:`CODE_NOTE`)."""
    return CODE_MARKS["unknown" if not code else code.get("status", "unknown")]


def provenance_markdown(prov: Mapping) -> list[str]:
    """The provenance as a markdown block (starts with :data:`PROVENANCE_MARK`), recorded or recovered."""
    lines = ["", PROVENANCE_MARK, "", "## Provenance", ""]
    if prov.get("recorded"):
        lines.append("Recorded by the script when it wrote this file.")
    else:
        lines.append(f"**Recovered after the fact**, not recorded by the run: {prov.get('note', '')}".rstrip())
    lines.append("")
    m = prov.get("machine")
    machine_text = (
        m
        if isinstance(m, str)
        else (
            f"{m.get('cpu')}, {m.get('cores')} cores; python {m.get('python')}"
            + "".join(f", {k} {m[k]}" for k in ("jax", "flax", "torch") if m.get(k))
            + (f"; backend {m['backend']}" if m.get("backend") else "")
            + (f"; XLA_FLAGS `{m['XLA_FLAGS']}`" if m.get("XLA_FLAGS") else "")
        )
        if m
        else "not recorded"
    )
    load = prov.get("load_average_end", prov.get("load_average"))
    load_text = (
        load
        if isinstance(load, str)
        else (
            "not recorded"
            if load is None
            else (
                f"{', '.join(f'{x:.1f}' for x in prov['load_average_start'])} at the start, "
                if prov.get("load_average_start")
                else ""
            )
            + f"{', '.join(f'{x:.1f}' for x in load)} at the end (1, 5, 15 min)"
        )
    )
    commit = prov.get("git_commit") or "unknown"
    dirty = " (with uncommitted changes)" if prov.get("git_dirty") else ""
    if "git_commit_at_write" in prov:  # the tree changed while the run went on
        dirty += (
            f" at the start; `{prov['git_commit_at_write'] or 'unknown'}`"
            + (" (with uncommitted changes)" if prov.get("git_dirty_at_write") else "")
            + " when written"
        )
    lines += [
        f"- command: `{prov.get('command') or 'not recorded'}`",
        f"- git commit: `{commit}`{dirty}",
        f"- date: {prov.get('date') or 'not recorded'}"
        + (f" (started {prov['date_start']})" if prov.get("date_start") else ""),
        f"- machine: {machine_text}",
        f"- load average: {load_text}",
    ]
    if prov.get("command_source"):
        lines.append(f"- command from: {prov['command_source']}")
    if prov.get("added_in") and prov["added_in"].get("commit") != prov.get("git_commit"):
        lines.append(f"- file first added in: `{prov['added_in']['commit']}` ({prov['added_in']['date']})")
    if prov.get("original_path"):
        lines.append(f"- path when committed: `{prov['original_path']}`")
    return lines


# ----------------------------------------------------------------------------- output


def index_figure(path: Path | str, prov: Mapping, data: str | None = None) -> None:
    """Records a figure's provenance in its folder's ``provenance.json`` (a PNG cannot carry its own;
    ``experiments/recover_provenance.py --check`` reads the index). ``data``: the file it plots."""
    path = Path(path)
    index_path = path.parent / "provenance.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    index[path.name] = {**prov, **({"data": data} if data else {})}
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")


def write_outputs(
    out: Path | str, result: dict, lines: Sequence[str], prov: Mapping | None = None, echo: bool = True
) -> dict:
    """Writes ``<out>.json`` (``result`` plus a ``"provenance"`` entry) and ``<out>.md`` (``lines``
    plus the provenance block); creates the folder.

    Args:
      out: path without suffix, e.g. ``results/bench/bench_step``.
      result: the JSON-serialisable record.
      lines: the markdown report, one line each.
      prov: the provenance; default :func:`provenance` () of this process.
      echo: also print the markdown (default True).

    Returns:
      The provenance written.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prov = dict(prov) if prov is not None else provenance()
    record = {**result, "provenance": prov}
    out.with_name(out.name + ".json").write_text(json.dumps(record, indent=2) + "\n")
    text = "\n".join([*lines, *provenance_markdown(prov)]) + "\n"
    out.with_name(out.name + ".md").write_text(text)
    if echo:
        print("\n".join(lines), flush=True)
    return prov
