r"""The leaderboard: every weighting scheme × seeds × benchmarks under one protocol per benchmark,
with bootstrap intervals, paired differences from equal weighting and ranks with ties (the library
side of ``experiments/leaderboard.py``, which only defines the flags).

A *benchmark* (:class:`Benchmark`, registered in :data:`BENCHMARKS` by :func:`register`) is a
config factory plus the baseline its Δm% is measured against. Its protocol is the config: the same
budget (steps or epochs), batch, optimizer and **one learning rate for every scheme**, model
selection on the validation split only (each seed's best-validation evaluation; the train loop's
rule). Only ``config.weighting`` changes between the cells of a benchmark.

The cells reuse the ablation driver (:mod:`jmtl.drivers.ablation`): a cell is one scheme with its S
seeds trained together in one compiled program (``config.num_seeds``, a ``vmap`` over seeds) in
``WORKDIR/<benchmark>/cells/<cell>``; a cell with a ``summary.json`` is finished and never rerun; an
interrupted one resumes from its checkpoint. Each cell records its protocol in ``protocol.json``
(the cell's config less what does not change results, and a SHA-256 fingerprint of it) before it
trains: a rerun whose protocol differs for a cell already started is refused before any work,
naming what changed, so cells of two protocols are never ranked side by side.

Statistics (all over seeds; S seeds per cell, paired by seed value):

* Δm% per seed against the seed-mean baseline (:func:`jmtl.metrics.mtl.delta_m`).
* 95 % percentile bootstrap interval of the seed mean (:func:`bootstrap_ci`): ``B`` resamples of
  the S values with replacement, the 2.5 and 97.5 percentiles of the resampled means.
* Paired difference from equal weighting: ``d_s = Δm(scheme, s) - Δm(equal, s)`` over the seeds
  both cells have, with the same bootstrap interval (:func:`paired_difference`).
* Rank with ties (:func:`rank_with_ties`): ``rank = 1 + #{schemes whose whole interval lies below
  this scheme's interval}`` (lower Δm% is better). Two schemes whose intervals overlap never order
  each other, so they tie unless a third scheme separates from one of them and not the other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from jmtl import weighting
from jmtl.drivers import ablation
from jmtl.errors import GridMismatchError
from jmtl.metrics import mtl as mtl_metrics
from jmtl.training import config_schema
from jmtl.training.cli import suggest

EQUAL = "equal"
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
PROTOCOL_FILE = "protocol.json"
COST_FILE = "cost.json"
TIE_RULE = (
    "rank = 1 + the number of schemes whose whole 95 % interval of Δm% lies below (is better than) this "
    "scheme's interval; schemes whose intervals overlap never order each other, so they share a rank unless "
    "a third scheme separates from one of them and not the other."
)


# ----------------------------------------------------------------------------- benchmarks


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark of the board: its protocol (a config) and the baseline of its Δm%.

    Attributes:
      name: the registry key (``--benchmarks`` value).
      config: () -> the protocol's ``ConfigDict``: budget, batch, optimizer, the one learning rate,
        evaluation cadence (selection on validation). Its ``weighting`` is replaced per cell.
      description: one line for the board (what the data and the budget are).
      baseline: ``"single_task"`` (one model per task, the ablation driver's single-task cells) or
        ``"config"`` (one cell trained from ``baseline_config``, e.g. School's independent heads,
        whose per-task metrics are the single-task references).
      baseline_config: () -> the baseline cell's config (``baseline="config"`` only).
      arch: ``config.model.arch`` of the scheme cells.
      baseline_name: the baseline cell is ``baseline__<baseline_name>`` (``baseline="config"`` only).
    """

    name: str
    config: Callable[[], object]
    description: str
    baseline: str = "single_task"
    baseline_config: Callable[[], object] | None = None
    arch: str = "hps"
    baseline_name: str = "reference"


BENCHMARKS: dict[str, Benchmark] = {}


def register(benchmark: Benchmark, overwrite: bool = False) -> Benchmark:
    """Adds ``benchmark`` to :data:`BENCHMARKS` (a name already taken raises unless ``overwrite``)."""
    if benchmark.baseline not in ("single_task", "config"):
        raise ValueError(
            f"benchmark {benchmark.name}: baseline must be 'single_task' or 'config', got {benchmark.baseline!r}"
        )
    if benchmark.baseline == "config" and benchmark.baseline_config is None:
        raise ValueError(f"benchmark {benchmark.name}: baseline='config' needs baseline_config")
    if benchmark.name in BENCHMARKS and not overwrite:
        raise ValueError(f"benchmark {benchmark.name!r} is registered already; pass overwrite=True to replace it")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def parse_benchmarks(spec: str | Sequence[str], registry: Mapping[str, Benchmark] | None = None) -> list[str]:
    """``'all'`` or a comma list of registered benchmark names; an unknown name raises, naming the valid ones."""
    registry = BENCHMARKS if registry is None else registry
    names = (
        list(registry) if spec == "all" else [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    )
    names = [n for n in names if n]
    unknown = [n for n in names if n not in registry]
    if unknown or not names:
        hint = suggest(unknown[0], list(registry)) if unknown else ""
        raise ValueError(f"unknown benchmark(s) {unknown or names}{hint}; valid: {', '.join(registry)}")
    return names


def parse_methods(spec: str) -> list[str]:
    """``'all'`` (every registered scheme) or a comma list, in the order given; ``equal`` always comes
    first (the paired differences need it)."""
    methods = ablation.parse_methods(spec)
    return [EQUAL, *(m for m in methods if m != EQUAL)]


# ----------------------------------------------------------------------------- cells and protocol


def cells_of(benchmark: Benchmark, methods: Sequence[str], seeds: int) -> tuple[list, list]:
    """``(baseline cells, scheme cells)``, each ``[(cell name, config)]``; every cell trains its
    ``seeds`` seeds in one program."""
    config = benchmark.config()
    config_schema.validate_config(config)
    names = [t.name for t in ablation.task_list(config)]
    cells = ablation.grid(config, list(methods), [benchmark.arch], names, seeds, benchmark.baseline == "single_task")
    base = [(n, c) for n, c in cells if n.startswith(ablation.SINGLE)]
    schemes = [(n, c) for n, c in cells if not n.startswith(ablation.SINGLE)]
    if benchmark.baseline == "config":
        c = ablation._copy(benchmark.baseline_config())
        c.weighting = config_schema.method_config(EQUAL)
        c.num_seeds = seeds
        config_schema.validate_config(c)
        base = [(f"baseline__{benchmark.baseline_name}", c)]
    return base, schemes


def protocol_key(config) -> dict:
    """What a cell's results depend on: its config less where data is read from and how progress
    shows (:data:`jmtl.drivers.ablation._NOT_COMPARED`)."""
    return ablation.grid_key(config, int(config.num_seeds), None)["config"]


def fingerprint(key: Mapping) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_protocols(bench_dir: Path, cells: Sequence[tuple[str, object]]) -> None:
    """Refuses (``GridMismatchError``) when a cell already started in ``bench_dir`` under another
    protocol, naming the cell and what changed; a started cell without a protocol record is refused too."""
    for name, config in cells:
        cell_dir = bench_dir / "cells" / name
        path = cell_dir / PROTOCOL_FILE
        if not path.exists():
            if cell_dir.exists() and any(cell_dir.iterdir()):
                raise GridMismatchError(
                    f"{cell_dir} holds a cell without a {PROTOCOL_FILE}, so its protocol is unknown and it cannot be "
                    "ranked beside this run's cells. Fix: remove that folder, or use a new --workdir"
                )
            continue
        saved = json.loads(path.read_text())
        key = protocol_key(config)
        if saved.get("fingerprint") != fingerprint(key):
            diff = config_schema.differences(saved.get("key", {}), key)
            shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
            raise GridMismatchError(
                f"cell {name} in {bench_dir} was trained under another protocol ({shown or 'fingerprint differs'}); "
                "mixing them would rank cells of two protocols side by side. Fix: use a new --workdir for this "
                "protocol, or rerun with the old settings"
            )


def write_protocol(bench_dir: Path, name: str, config) -> None:
    cell_dir = bench_dir / "cells" / name
    cell_dir.mkdir(parents=True, exist_ok=True)
    key = protocol_key(config)
    (cell_dir / PROTOCOL_FILE).write_text(json.dumps({"fingerprint": fingerprint(key), "key": key}, indent=2))


def finished(bench_dir: Path, name: str) -> bool:
    dirs = ablation.program_dirs(bench_dir, name)
    return bool(dirs) and all((d / "summary.json").exists() for d in dirs)


def train_cell(bench_dir: Path, name: str, config, on_start: Callable[[Path], object] | None = None) -> dict | None:
    """Trains one cell (resuming it if interrupted; nothing if finished); records its wall and CPU
    seconds (this process's user + system time) in ``cost.json``. ``on_start(cell_dir)`` runs first
    (the script records the code the cell starts from: ``code.jsonl``). Returns the error, if any."""
    if finished(bench_dir, name):
        return None
    write_protocol(bench_dir, name, config)
    if on_start is not None:
        on_start(bench_dir / "cells" / name)
    wall0, cpu0 = time.perf_counter(), _cpu_s()
    errors = ablation.run_grid([(name, config)], bench_dir)
    cost_path = bench_dir / "cells" / name / COST_FILE
    prev = json.loads(cost_path.read_text()) if cost_path.exists() else {"wall_s": 0.0, "cpu_s": 0.0, "sessions": 0}
    cost = {
        "wall_s": prev["wall_s"] + time.perf_counter() - wall0,
        "cpu_s": prev["cpu_s"] + _cpu_s() - cpu0,
        "sessions": prev["sessions"] + 1,
    }
    cost_path.write_text(json.dumps(cost))
    return errors.get(name)


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ----------------------------------------------------------------------------- statistics


def bootstrap_ci(
    values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the sample mean and its percentile bootstrap interval (Efron &
    Tibshirani 1993, Ch. 13): ``resamples`` draws of ``n`` values with replacement, the
    ``(1 - confidence)/2`` and ``(1 + confidence)/2`` quantiles of the resampled means (numpy's
    linear interpolation). Fixed ``seed``: the board is reproducible.

    Args:
      values: the per-seed values (at least 2).
      confidence: the interval's coverage (default 0.95).
      resamples: bootstrap draws B (default 10 000).
      seed: the resampling RNG's seed.
    """
    x = np.asarray(values, np.float64)
    if x.ndim != 1 or len(x) < 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"bootstrap_ci needs >= 2 finite values, got {x.tolist()}. Fix: run more seeds (--seeds)")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(resamples, len(x)))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(x.mean()), float(low), float(high)


def paired_difference(
    scheme: Mapping[int, float], reference: Mapping[int, float], **kwargs
) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)`` of ``scheme[s] - reference[s]`` over the seeds ``s`` both have (a
    paired comparison: each seed's shared randomness cancels), with :func:`bootstrap_ci`'s interval."""
    common = sorted(set(scheme) & set(reference))
    if len(common) < 2:
        raise ValueError(
            f"paired_difference needs >= 2 seeds present in both cells, got {common}. Fix: finish both cells' seeds"
        )
    d = [scheme[s] - reference[s] for s in common]
    return (*bootstrap_ci(d, **kwargs), len(common))


def rank_with_ties(intervals: Mapping[str, tuple[float, float]]) -> dict[str, int]:
    """``{name: rank}`` from ``{name: (low, high)}`` intervals of a lower-is-better quantity: rank =
    1 + the number of entries whose ``high`` is strictly below this entry's ``low`` (see :data:`TIE_RULE`)."""
    return {n: 1 + sum(1 for m, (_, hi) in intervals.items() if m != n and hi < lo) for n, (lo, _) in intervals.items()}


# ----------------------------------------------------------------------------- results


def _seed_metrics(bench_dir: Path, name: str, tasks) -> dict[int, list[float]] | None:
    """``{seed: [main metric per task (None if the cell lacks it)]}`` at each seed's best-validation
    evaluation, or None while the cell is unfinished."""
    if not finished(bench_dir, name):
        return None
    out = {}
    for d in ablation.program_dirs(bench_dir, name):
        summary = json.loads((d / "summary.json").read_text())
        for entry in summary["seeds"]:
            test = entry["best_validation"].get("test", {})
            out[int(entry["seed"])] = [test.get(t.name, {}).get(t.main_metric.name) for t in tasks]
    return out


def cell_record(bench_dir: Path, name: str) -> dict:
    """Provenance of one cell: its protocol fingerprint, the code it ran under, cost and steps."""
    cell_dir = bench_dir / "cells" / name
    rec = {"cell": name}
    if (cell_dir / PROTOCOL_FILE).exists():
        rec["fingerprint"] = json.loads((cell_dir / PROTOCOL_FILE).read_text())["fingerprint"]
    if (cell_dir / COST_FILE).exists():
        rec.update(json.loads((cell_dir / COST_FILE).read_text()))
    dirs = ablation.program_dirs(bench_dir, name)
    codes = []
    for d in dirs:
        if (d / "code.jsonl").exists():
            codes += [json.loads(x) for x in (d / "code.jsonl").read_text().splitlines() if x.strip()]
    if codes:
        commits = {c.get("git_commit") for c in codes}
        rec["git_commit"] = commits.pop() if len(commits) == 1 else "mixed"
        rec["git_dirty"] = any(c.get("git_dirty") for c in codes)
    for d in dirs:
        if (d / "summary.json").exists():
            s = json.loads((d / "summary.json").read_text())
            rec.update(steps=s.get("steps"), train_wall_s=s.get("wall_time_s"))
    if (cell_dir / "error.txt").exists():
        rec["error"] = (cell_dir / "error.txt").read_text().splitlines()[0]
    return rec


def benchmark_results(bench_dir: Path, benchmark: Benchmark, methods: Sequence[str], seeds: int) -> dict:
    """The board's entries for one benchmark from its finished cells (nothing trains here)."""
    config = benchmark.config()
    tasks = ablation.task_list(config)
    base_cells, scheme_cells = cells_of(benchmark, methods, seeds)
    check_protocols(bench_dir, base_cells + scheme_cells)
    hib = [t.main_metric.higher_is_better for t in tasks]
    # The baseline per task: the seed mean of the cell that trains that task alone.
    baseline, missing = [], []
    for k, t in enumerate(tasks):
        vals = []
        for name, _ in base_cells:
            m = _seed_metrics(bench_dir, name, tasks)
            if m:
                vals += [v[k] for v in m.values() if v[k] is not None]
        baseline.append(float(np.mean(vals)) if vals else None)
    missing += [n for n, _ in base_cells if not finished(bench_dir, n)]
    per_seed: dict[str, dict[int, float]] = {}
    for name, _ in scheme_cells:
        m = _seed_metrics(bench_dir, name, tasks)
        if m is None:
            missing.append(name)
            continue
        if any(b is None for b in baseline):
            continue
        per_seed[name.split("__", 1)[1]] = {s: mtl_metrics.delta_m(v, baseline, hib) for s, v in m.items()}
    entries = {}
    for method, vals in per_seed.items():
        mean, lo, hi = bootstrap_ci(list(vals.values()))
        e = {"delta_m": mean, "ci": [lo, hi], "seeds": sorted(vals), "per_seed": {str(s): v for s, v in vals.items()}}
        if EQUAL in per_seed:
            dm, dlo, dhi, n = paired_difference(vals, per_seed[EQUAL])
            e.update(vs_equal=dm, vs_equal_ci=[dlo, dhi], vs_equal_seeds=n)
        entries[method] = e
    ranks = rank_with_ties({m: tuple(e["ci"]) for m, e in entries.items()})
    for m, e in entries.items():
        e["rank"] = ranks[m]
    cells = [cell_record(bench_dir, n) for n, _ in base_cells + scheme_cells if (bench_dir / "cells" / n).exists()]
    return {
        "description": benchmark.description,
        "protocol": protocol_summary(config, seeds),
        "tasks": [{"name": t.name, "metric": t.main_metric.name, "higher_is_better": h} for t, h in zip(tasks, hib)],
        "baseline": benchmark.baseline,
        "entries": entries,
        "missing": missing,
        "cells": cells,
    }


def protocol_summary(config, seeds: int) -> dict:
    budget = f"{config.num_steps} steps" if config.num_steps > 0 else f"{config.num_epochs} epoch(s)"
    return {
        "budget": budget,
        "batch_size": int(config.batch_size),
        "optimizer": str(config.optimizer.name),
        "learning_rate": float(config.optimizer.learning_rate),
        "eval_every_steps": int(config.eval_every_steps),
        "seeds": list(range(int(config.seed), int(config.seed) + seeds)),
        "selection": "each seed's best evaluation on the validation split (the train loop's rule); test read there",
        "fingerprint": fingerprint(protocol_key(config)),
    }


# ----------------------------------------------------------------------------- plan


def plan(
    workdir: Path,
    benchmarks: Sequence[Benchmark],
    methods: Sequence[str],
    seeds: int,
    pilot_steps: int = 6,
    measure: Callable[[Benchmark, str, int], dict] | None = None,
) -> dict:
    """Cells × measured seconds per cell, per benchmark: for each requirement class among
    ``methods`` (losses / gramian / jacobian / bilevel), a pilot cell of its first scheme trains
    ``pilot_steps`` steps (with every seed, in ``WORKDIR/pilot``) and its seconds per step (the
    second half, compilation excluded) and fixed cost (compilation, data, evaluation) are scaled to
    the benchmark's budget. Finished cells count their recorded cost instead, and a class with
    finished cells in the benchmark is estimated by their median cost (no pilot)."""
    measure = measure or (lambda b, m, s: _pilot(workdir, b, m, s, pilot_steps))
    out = {"benchmarks": {}, "pilot_steps": pilot_steps}
    total_todo = total_done = 0.0
    for b in benchmarks:
        bench_dir = workdir / b.name
        base_cells, scheme_cells = cells_of(b, methods, seeds)
        check_protocols(bench_dir, base_cells + scheme_cells)
        config = b.config()
        steps = _budget_steps(config)
        costs, rows = {}, []
        classes = {}
        for name, _ in base_cells + scheme_cells:
            method = EQUAL if name.startswith((ablation.SINGLE, "baseline")) else name.split("__", 1)[1]
            classes[name] = weighting.get(method.removesuffix(ablation.REP)).requires
        # A class with finished cells here is measured by them (their median CPU seconds): no pilot.
        done_cost: dict = {}
        for name, _ in base_cells + scheme_cells:
            if finished(bench_dir, name) and "cpu_s" in (rec := cell_record(bench_dir, name)):
                done_cost.setdefault(classes[name], []).append(rec["cpu_s"])
        for name, c in base_cells + scheme_cells:
            cls = classes[name]
            if finished(bench_dir, name):
                rec = cell_record(bench_dir, name)
                rows.append(
                    {
                        "cell": name,
                        "class": str(cls),
                        "seconds": rec.get("cpu_s", rec.get("train_wall_s", 0.0)),
                        "done": True,
                    }
                )
                total_done += rows[-1]["seconds"] or 0.0
                continue
            if cls not in costs and cls in done_cost:
                costs[cls] = {"method": "finished cells", "cell_s": float(np.median(done_cost[cls]))}
            elif cls not in costs:
                first = next(
                    m
                    for n, m in ((n, n.split("__", 1)[1]) for n, _ in scheme_cells)
                    if weighting.get(m.removesuffix(ablation.REP)).requires == cls
                )
                costs[cls] = measure(b, first, seeds)
            p = costs[cls]
            est = p["cell_s"] if "cell_s" in p else p["fixed_s"] + p["s_per_step"] * steps
            rows.append({"cell": name, "class": str(cls), "seconds": est, "done": False})
            total_todo += est
        out["benchmarks"][b.name] = {
            "budget_steps": steps,
            "pilots": {str(k): v for k, v in costs.items()},
            "cells": rows,
            "todo_s": sum(r["seconds"] for r in rows if not r["done"]),
            "done_s": sum(r["seconds"] or 0.0 for r in rows if r["done"]),
        }
    out["todo_cpu_hours"] = total_todo / 3600.0
    out["done_cpu_hours"] = total_done / 3600.0
    return out


def _budget_steps(config) -> int:
    """A benchmark's budget in steps (its protocol fixes ``num_steps``: the same for every scheme)."""
    if config.num_steps <= 0:
        raise ValueError(
            f"a leaderboard benchmark fixes its budget in steps; {config.dataset.name}'s config has num_steps="
            f"{config.num_steps}. Fix: set num_steps in the benchmark's config factory"
        )
    return int(config.num_steps)


def _pilot(workdir: Path, b: Benchmark, method: str, seeds: int, pilot_steps: int) -> dict:
    """Trains ``method`` on ``b`` for ``pilot_steps`` steps with ``seeds`` seeds; returns its
    seconds per step (second half of the steps: compilation excluded), fixed seconds and CPU seconds."""
    _, scheme_cells = cells_of(b, [method], seeds)
    name, c = next((n, c) for n, c in scheme_cells if n.endswith("__" + method))
    c.num_steps, c.eval_every_steps = pilot_steps, max(1, pilot_steps // 2)
    run_dir = workdir / "pilot" / b.name / name
    summary_path = run_dir / "summary.json"
    cpu0, wall0 = _cpu_s(), time.perf_counter()
    if not summary_path.exists():
        ablation.train(c, str(run_dir))
    cpu, wall = _cpu_s() - cpu0, time.perf_counter() - wall0
    s = json.loads(summary_path.read_text())
    intervals = s.get("train_time_per_eval_s") or [s["wall_time_s"]]
    per_step = intervals[-1] / max(1, pilot_steps - pilot_steps // 2)
    # CPU seconds scale like wall seconds on this machine (the ratio measured on the pilot itself).
    ratio = (cpu / wall) if wall > 0 and cpu > 0 else 1.0
    fixed = max(0.0, s["wall_time_s"] - per_step * pilot_steps)
    return {"method": method, "s_per_step": per_step * ratio, "fixed_s": fixed * ratio, "cpu_per_wall": ratio}


# ----------------------------------------------------------------------------- run


def run(
    workdir: str | Path,
    benchmark_names: Sequence[str],
    methods: Sequence[str],
    seeds: int,
    *,
    registry: Mapping[str, Benchmark] | None = None,
    report_only: bool = False,
    deadline: float | None = None,
    on_cell_start: Callable[[Path], object] | None = None,
) -> dict:
    """Trains every unfinished cell (benchmarks in the given order, cells in ``methods`` order,
    baselines first), then returns the board's record. Everything checkable is checked before the
    first cell trains. ``deadline`` (a ``time.time()``): start no cell after it. ``on_cell_start``:
    see :func:`train_cell`."""
    registry = BENCHMARKS if registry is None else registry
    workdir = Path(workdir)
    check_options(seeds)
    benchmarks = [registry[n] for n in parse_benchmarks(list(benchmark_names), registry)]
    methods = parse_methods(",".join(methods))
    todo = []
    for b in benchmarks:  # every benchmark's cells and protocols checked before any trains
        base, schemes = cells_of(b, methods, seeds)
        check_protocols(workdir / b.name, base + schemes)
        todo.append((b, base + schemes))
    if not report_only:
        for b, cells in todo:
            bench_dir = workdir / b.name
            with ablation.grid_lock(bench_dir):
                for name, c in cells:
                    if deadline is not None and time.time() > deadline and not finished(bench_dir, name):
                        break
                    train_cell(bench_dir, name, c, on_cell_start)
    record = board(workdir, benchmarks, methods, seeds)
    record["not_on_board"] = {n: registry[n].description for n in registry if n not in record["benchmarks"]}
    return record


def check_options(seeds: int) -> None:
    if seeds < 2:
        raise ValueError(f"--seeds must be >= 2 for a bootstrap interval over seeds (5 or more advised), got {seeds}")


def board(workdir: Path, benchmarks: Sequence[Benchmark], methods: Sequence[str], seeds: int) -> dict:
    results = {b.name: benchmark_results(workdir / b.name, b, methods, seeds) for b in benchmarks}
    cpu = sum(c.get("cpu_s", 0.0) for r in results.values() for c in r["cells"])
    wall = sum(c.get("wall_s", 0.0) for r in results.values() for c in r["cells"])
    return {
        "methods": list(methods),
        "seeds": seeds,
        "confidence": CONFIDENCE,
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "tie_rule": TIE_RULE,
        "benchmarks": results,
        "cpu_hours": cpu / 3600.0,
        "wall_hours": wall / 3600.0,
    }


def board_cells(record: Mapping) -> list[str]:
    """The finished (benchmark/scheme) entries of a board record: what a rewrite must not lose."""
    return [f"{b}/{m}" for b, r in record["benchmarks"].items() for m in r["entries"]]


# ----------------------------------------------------------------------------- rendering


def _f(x: float, d: int = 2) -> str:
    return f"{x:+.{d}f}"


def markdown(record: Mapping) -> list[str]:
    """The board as markdown lines (the provenance block is appended by the writer)."""
    lines = [
        "# Leaderboard: every weighting scheme under one protocol per benchmark",
        "",
        f"Δm% (lower is better) against the single-task references, seed mean with a {int(record['confidence'] * 100)} % "
        f"percentile bootstrap interval over seeds ({record['bootstrap_resamples']} resamples). *vs equal*: the "
        "paired difference Δm%(scheme, seed) − Δm%(equal, seed) over the same seeds, with its bootstrap interval "
        "(an interval that contains 0: no difference from equal weighting beyond seed noise).",
        "",
        f"**Tie rule.** {record['tie_rule']}",
        "",
        "**Protocol.** Per benchmark: the same budget, batch, optimizer and **one learning rate for all schemes** "
        "(the benchmark's, not tuned per scheme); model selection on the validation split only. Each cell's "
        "protocol fingerprint is listed under *Cells*; cells of different protocols are refused, never mixed.",
        "",
        f"Total CPU time of the cells on the board: {record['cpu_hours']:.2f} CPU hours "
        f"({record['wall_hours']:.2f} wall hours): the training process's user+system time while each cell trained "
        "(a run killed mid-cell does not add the part it ran; wall ≫ CPU on a shared, loaded machine).",
        "",
    ]
    if record.get("not_on_board"):
        lines += [
            "**Registered benchmarks not on this board** (not run yet; every cell of each is missing): "
            + "; ".join(f"`{n}` ({d})" for n, d in record["not_on_board"].items()),
            "",
        ]
    for name, r in record["benchmarks"].items():
        p = r["protocol"]
        lines += [
            f"## {name}",
            "",
            r["description"],
            "",
            f"- protocol `{p['fingerprint']}`: {p['budget']}, batch {p['batch_size']}, {p['optimizer']} lr "
            f"{p['learning_rate']:g} (all schemes), evaluation every {p['eval_every_steps']} steps (<= 0: each epoch), "
            f"seeds {p['seeds']}; selection: {p['selection']}",
            f"- Δm% over the tasks' main metrics: {', '.join(t['name'] + ' ' + t['metric'] for t in r['tasks'][:4])}"
            + (f", ... ({len(r['tasks'])} tasks)" if len(r["tasks"]) > 4 else "")
            + f"; baseline: {'single-task models' if r['baseline'] == 'single_task' else 'independent per-task models (no shared parameters)'}",
            "",
        ]
        entries = sorted(r["entries"].items(), key=lambda kv: (kv[1]["rank"], kv[1]["delta_m"]))
        if entries:
            lines += [
                "| rank | scheme | Δm% | 95 % CI | vs equal (paired) | 95 % CI | seeds |",
                "|---|---|---|---|---|---|---|",
            ]
            for m, e in entries:
                vs = (
                    ("—", "—")
                    if "vs_equal" not in e
                    else (_f(e["vs_equal"]), f"[{_f(e['vs_equal_ci'][0])}, {_f(e['vs_equal_ci'][1])}]")
                )
                lines.append(
                    f"| {e['rank']} | `{m}` | {_f(e['delta_m'])} | [{_f(e['ci'][0])}, {_f(e['ci'][1])}] | {vs[0]} | {vs[1]} | {len(e['seeds'])} |"
                )
            sep = [m for m, e in entries if "vs_equal_ci" in e and (e["vs_equal_ci"][0] > 0 or e["vs_equal_ci"][1] < 0)]
            lines += [
                "",
                "Separated from equal weighting (paired interval excludes 0): "
                + (", ".join(f"`{m}`" for m in sep) or "none")
                + ".",
            ]
        else:
            lines.append("No finished cells yet.")
        if r["missing"]:
            lines += [
                "",
                f"**Missing cells ({len(r['missing'])})**, not run yet or unfinished: "
                + ", ".join(f"`{m}`" for m in r["missing"]),
            ]
        lines += [
            "",
            "<details><summary>Cells (provenance per cell)</summary>",
            "",
            "| cell | fingerprint | commit | CPU s | steps |",
            "|---|---|---|---|---|",
        ]
        for c in r["cells"]:
            commit = (c.get("git_commit") or "unknown")[:10] + (" (dirty)" if c.get("git_dirty") else "")
            cpu = f"{c['cpu_s']:.0f}" if "cpu_s" in c else "—"
            lines.append(
                f"| `{c['cell']}` | `{c.get('fingerprint', '—')}` | {commit} | {cpu} | {c.get('steps', '—')} |"
                + (f" error: {c['error'][:120]}" if c.get("error") else "")
            )
        lines += ["", "</details>", ""]
    return lines


def plot(record: Mapping, path: Path) -> None:
    """One panel per benchmark: each scheme's Δm% with its 95 % interval, equal weighting marked."""
    plt = ablation.plt
    names = [n for n, r in record["benchmarks"].items() if r["entries"]]
    if not names:
        return
    fig, axes = plt.subplots(
        1,
        len(names),
        figsize=(5 * len(names), 0.3 * max(max(len(record["benchmarks"][n]["entries"]) for n in names), 4) + 1.5),
        squeeze=False,
    )
    for ax, name in zip(axes[0], names):
        entries = sorted(record["benchmarks"][name]["entries"].items(), key=lambda kv: kv[1]["delta_m"])
        y = np.arange(len(entries))
        for i, (m, e) in enumerate(entries):
            color = "black" if m == EQUAL else "tab:blue"
            ax.errorbar(
                e["delta_m"],
                i,
                xerr=[[e["delta_m"] - e["ci"][0]], [e["ci"][1] - e["delta_m"]]],
                fmt="o",
                color=color,
                ms=4,
                capsize=2,
            )
        if EQUAL in dict(entries):
            eq = dict(entries)[EQUAL]
            ax.axvspan(eq["ci"][0], eq["ci"][1], color="grey", alpha=0.2, lw=0)
        ax.set_yticks(y, [m for m, _ in entries], fontsize=7)
        ax.set(title=name, xlabel="Δm% (lower is better), 95 % bootstrap CI")
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
