"""What every benchmark shares: round-robin timing, spreads, provenance and the JSON / markdown output.

Every results file a benchmark writes carries its provenance (:func:`provenance`): the command,
the git commit (and whether the tree had uncommitted changes), the date, the machine (CPU model,
cores, Python / jax / flax / torch versions, backend) and the load average when the run started
and when it ended. A shared machine's load changes what a timing means, so it is part of the result.

``jax`` is imported lazily, so :mod:`experiments.bench.torch_reference` can use the timer without it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results" / "bench"
PROVENANCE_MARK = "<!-- provenance -->"


# ----------------------------------------------------------------------------- timing


def time_round_robin(
    fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 3, seed: int = 0
) -> dict[str, list[float]]:
    """Seconds per call of each fn, ``repeats`` rounds, every fn once per round in a fresh random order.

    Interleaving makes a shared machine's slow drifts hit every row alike. The order is shuffled
    because a fixed one biases rows: a step timed right after a step with a large working set (e.g.
    the one-vmap Jacobian's ~0.5-1 GB of temporaries) ran ~12 % slower than the same computation
    timed after a small one (K = 20, Multi-LeNet on CPU), so in a fixed order one row always paid
    for its neighbour.

    Args:
      fns: name -> zero-argument callable that finishes its work before returning (JAX callers
        block on their outputs).
      repeats: rounds; each round calls every fn once.
      warmup: untimed calls of each fn before the first round (compilation, caches); default 3.
      seed: seed of the shuffles (default 0), so a rerun times in the same orders.

    Returns:
      name -> list of ``repeats`` seconds, in round order (so ``samples[a][r] / samples[b][r]`` is
      a within-round, paired ratio).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    rng = random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
    return samples


def spread(seconds: Sequence[float]) -> dict:
    """Median, 10th and 90th percentile of timings given in seconds, in ms."""
    ms = np.asarray(seconds, float) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p10_ms": float(np.percentile(ms, 10)),
        "p90_ms": float(np.percentile(ms, 90)),
    }


def spread_of(values: Sequence[float], key: str = "") -> dict:
    """Median, p10 and p90 of any values, keys suffixed with ``key`` (e.g. ``"_s"``)."""
    v = np.asarray(values, float)
    return {
        f"median{key}": float(np.median(v)),
        f"p10{key}": float(np.percentile(v, 10)),
        f"p90{key}": float(np.percentile(v, 90)),
    }


def fmt(x, spec: str = ".2f") -> str:
    """``x`` formatted, or an em dash for a missing value."""
    return "—" if x is None else format(x, spec)


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


def torch_setup(batch_size: int, enabled: bool = True):
    """The PyTorch reference and a note on it: ``(torch_reference module or None, note)``.

    Picks the thread count the project rule asks for: as many threads as cores unless fewer are
    measurably faster (fastest median of fwd+bwd over 1 and ``os.cpu_count()`` threads).

    Args:
      batch_size: batch of the thread-choice timing.
      enabled: False skips PyTorch (``--no-torch``); default True.
    """
    if not enabled:
        return None, "PyTorch rows skipped (--no-torch)"
    try:
        import torch

        from experiments.bench import torch_reference
    except ImportError:
        note = "PyTorch not installed: pip install -r experiments/bench/requirements.txt"
        print(note, file=sys.stderr)
        return None, note
    threads = torch_reference.choose_num_threads(sorted({1, os.cpu_count() or 1}), batch_size, repeats=10)
    best = min(threads, key=threads.get)
    torch.set_num_threads(best)
    return torch_reference, f"torch {torch.__version__}, {best} thread(s) (fastest of {sorted(threads)})"


def lenet_step(method, batch_size: int, num_tasks: int = 2, mode: str = "params", chunk: int = 0):
    """One compiled, donated jmtl train step of Multi-LeNet on a fixed random MultiMNIST-shaped batch.

    Args:
      method: a weighting scheme name or a ``WeightingTransform``.
      batch_size: images per batch ([28, 28, 1] each).
      num_tasks: K heads on the one encoder (default 2).
      mode: ``StepConfig.jacobian_mode``, ``"params"`` (default) or ``"representation"``.
      chunk: ``StepConfig.jacobian_chunk_size`` (0 = all K rows in one vmap, the default).

    Returns:
      ``(call, compile_s, memory)``: a zero-argument callable running one step (blocking on it),
      the seconds lowering + compiling took, and XLA's memory analysis in MiB (or None).
    """
    import jax
    import jax.numpy as jnp
    import optax

    from jmtl import weighting
    from jmtl.models import mtl
    from jmtl.tasks import Task
    from jmtl.training import step as step_lib

    tasks = tuple(Task(f"task{k}", "classification", 10) for k in range(num_tasks))
    model = mtl.build(tasks, encoder="multi_lenet")
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(batch_size, 28, 28, 1)), jnp.float32)}
    for t in tasks:
        batch[t.name] = jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)
    transform = weighting.get(method) if isinstance(method, str) else method
    if transform.requires == weighting.BILEVEL:  # the upper-level (meta) batch: another batch
        batch.update({step_lib.META_PREFIX + key: jnp.roll(v, 1, axis=0) for key, v in batch.items()})
    opt = optax.adam(1e-3)
    state = step_lib.init_state(model, transform, opt, jnp.zeros((1, 28, 28, 1)), num_tasks, seed=0)
    cfg = step_lib.StepConfig(input_key="image", jacobian_mode=mode, jacobian_chunk_size=chunk)
    t0 = time.perf_counter()
    compiled = (
        jax.jit(step_lib.make_train_step(model, tasks, transform, opt, cfg), donate_argnums=0)
        .lower(state, batch)
        .compile()
    )
    compile_s = time.perf_counter() - t0
    holder = [state]

    def call():
        holder[0], _ = compiled(holder[0], batch)
        jax.block_until_ready(holder[0])

    call()
    return call, compile_s, memory_mib(compiled)


MIB = 2**20


def memory_mib(compiled) -> dict | None:
    """XLA's memory analysis of a compiled executable, in MiB (None where the backend gives none)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    get = lambda name: float(getattr(m, name, 0) or 0) / MIB
    out = {
        "temp_mib": get("temp_size_in_bytes"),
        "argument_mib": get("argument_size_in_bytes"),
        "output_mib": get("output_size_in_bytes"),
        "alias_mib": get("alias_size_in_bytes"),
    }
    out["peak_mib"] = out["argument_mib"] + out["output_mib"] - out["alias_mib"] + out["temp_mib"]
    return out
