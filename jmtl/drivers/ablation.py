r"""Ablation grid: weighting schemes × architectures × seeds, with single-task baselines, Δm% and MR
(the library side of ``experiments/ablate.py``, which only defines the flags).

Each cell (one method on one architecture) trains its S seeds together in one compiled program
(``config.num_seeds``, a ``vmap`` over seeds: jmtl/training/seeds.py) in ``WORKDIR/cells/<cell>``
through :func:`jmtl.training.loop.train`. ``seeds_per_program=P`` splits them into programs of P
seeds, in ``WORKDIR/cells/<cell>/seed_<s>`` (seed ``s`` first): on a compute-bound CPU, one program
per seed is faster per step than batching convolution-heavy seeds together
(results/bench/bench_seeds_multimnist.md), while one program for all seeds saves start-up and compilation
on short cells and wins on accelerators. A program with a ``summary.json`` is done and skipped; an
interrupted one resumes from its checkpoint. The single-task baselines (one model per task, same
encoder, equal weighting of its one loss) are cells too. Model selection uses the validation split
only: the reported test numbers are those of each seed's best-validation evaluation; the final-step
numbers are reported beside them.

A grid's cells are compared under one config: ``WORKDIR/grid.json`` stores it (with the seed count
and the Jacobian mode), and a rerun under a different one is refused, listing the differences,
before anything trains (use another workdir for the other config). Unknown methods or architectures
are refused up front too, listing the valid names.

Writes ``WORKDIR/results.csv`` (one row per method, arch and seed), ``WORKDIR/table.md`` (mean ± std
per task metric, Δm%, MR, ms/step) and ``WORKDIR/plots/{pareto,learning_curves,weights}.png``.
``report_only`` rebuilds those from the finished cells without training.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import traceback
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from jmtl import data as data_lib  # noqa: E402
from jmtl import tasks as tasks_lib  # noqa: E402
from jmtl import weighting  # noqa: E402
from jmtl.errors import GridMismatchError
from jmtl.metrics import mtl as mtl_metrics  # noqa: E402
from jmtl.metrics import summary as summary_lib  # noqa: E402
from jmtl.models import architectures  # noqa: E402
from jmtl.runs import workdir as workdir_lib  # noqa: E402
from jmtl.runs.metric_writers import read_jsonl as _read_jsonl  # noqa: E402  (survives a partial last line)
from jmtl.training import config_schema  # noqa: E402
from jmtl.training.cli import suggest  # noqa: E402
from jmtl.training.loop import train  # noqa: E402

SINGLE = "single_task"
# "mgda@rep": the method on the Jacobian of the shared representation (MGDA-UB for mgda).
REP = "@rep"


# ----------------------------------------------------------------------------- the grid


def write_grid_record(
    workdir: Path, config, methods, archs, seeds: int, seeds_per_program: int, single_task: bool, cells, key
) -> None:
    """``grid.json``: what the grid trains and the config its cells are compared under (``key`` is
    what :func:`check_grid` compares on a rerun)."""
    (workdir / "grid.json").write_text(
        json.dumps(
            {
                "methods": methods,
                "archs": archs,
                "seeds": seeds,
                "seeds_per_program": seeds_per_program,
                "single_task": single_task,
                "cells": [n for n, _ in cells],
                "key": key,
                "config": json.loads(config.to_json_best_effort()),
            },
            indent=2,
        )
    )


def grid(
    config,
    methods: list[str],
    archs: list[str],
    task_names: list[str],
    seeds: int,
    single_task: bool,
    jacobian_mode: str | None = None,
) -> list[tuple[str, object]]:
    """``[(cell name, config)]``: single-task baselines first, then every (arch, method)."""
    cells = []
    if single_task:
        for name in task_names:
            c = _copy(config)
            c.tasks = {name: config.tasks[name].to_dict()} if name in config.tasks else {name: {"label": name}}
            if tasks_lib.TASK_DEFAULTS in config.tasks:  # the fields every task gets (e.g. metric='f1')
                c.tasks[tasks_lib.TASK_DEFAULTS] = config.tasks[tasks_lib.TASK_DEFAULTS].to_dict()
            c.weighting = config_schema.method_config("equal")
            c.model.arch, c.num_seeds = "hps", seeds
            cells.append((f"{SINGLE}__{name}", c))
    for arch in archs:
        for method in methods:
            c = _copy(config)
            name, rep = (method[: -len(REP)], True) if method.endswith(REP) else (method, False)
            mode = "representation" if rep else (jacobian_mode or config.weighting.jacobian_mode)
            if weighting.get(name).rep_level_only:  # defined on the representation only (NTKMTL-SR)
                mode = "representation"
            c.weighting = config_schema.method_config(name)
            c.weighting.jacobian_mode = mode
            if name == config.weighting.name:  # keep hyperparameters set on the command line
                c.weighting.hparams = config.weighting.hparams
            c.model.arch, c.num_seeds = arch, seeds
            cells.append((f"{arch}__{method}", c))
    return cells


def _copy(config):
    c = config.copy_and_resolve_references()
    c.unlock()
    return c


def programs(cells, seeds_per_program: int = 0) -> list[tuple[str, Path, object]]:
    """``[(cell, program dir relative to cells/, config)]``: each cell's seeds split into programs of
    ``seeds_per_program`` seeds (0: one program in the cell's own folder)."""
    out = []
    for name, c in cells:
        if seeds_per_program <= 0 or seeds_per_program >= c.num_seeds:
            out.append((name, Path(name), c))
            continue
        for first in range(0, c.num_seeds, seeds_per_program):
            p = _copy(c)
            p.seed, p.num_seeds = c.seed + first, min(seeds_per_program, c.num_seeds - first)
            out.append((name, Path(name) / f"seed_{p.seed}", p))
    return out


def program_dirs(workdir: Path, name: str) -> list[Path]:
    """The folders of a cell's programs that have run or started: the cell's own folder, or its
    ``seed_<s>`` subfolders when its seeds were split (ordered by first seed)."""
    cell_dir = workdir / "cells" / name
    if (cell_dir / "summary.json").exists() or (cell_dir / "config.json").exists():
        return [cell_dir]
    return sorted(cell_dir.glob("seed_*"), key=lambda d: int(d.name.split("_")[1]))


def run_grid(cells, workdir: Path, seeds_per_program: int = 0) -> dict[str, str]:
    """Trains every unfinished program; returns ``{cell: error}`` for the cells that failed."""
    errors = {}
    progs = programs(cells, seeds_per_program)
    todo = [(n, d, c) for n, d, c in progs if not (workdir / "cells" / d / "summary.json").exists()]
    bar = tqdm(total=len(progs), initial=len(progs) - len(todo), desc="grid", unit="program", position=0)
    for name, rel, c in todo:
        bar.set_description(f"grid: {rel}")
        run_dir = workdir / "cells" / rel
        if name in errors:  # a method that failed on its first seeds fails on the rest too
            bar.update(1)
            continue
        try:
            summary, _ = train(c, str(run_dir))
        except (KeyboardInterrupt, SystemExit):
            raise
        except OSError:  # the disk or the folders (full, removed, locked): every later cell would fail too
            raise
        except Exception as e:  # a method that cannot run here (e.g. krum with K < 5) is reported, not fatal
            errors[name] = f"{type(e).__name__}: {e}"
            cell_dir = workdir / "cells" / name
            cell_dir.mkdir(parents=True, exist_ok=True)
            (cell_dir / "error.txt").write_text(errors[name] + "\n\n" + traceback.format_exc())
            tqdm.write(f"cell {name} failed: {errors[name][:300]}")
        else:
            if summary.get("interrupted"):
                tqdm.write(f"interrupted in {rel}; rerun the same command to resume.")
                sys.exit(0)
            (workdir / "cells" / name / "error.txt").unlink(missing_ok=True)
        bar.update(1)
    bar.close()
    return errors


# ----------------------------------------------------------------------------- results


def collect(cells, workdir: Path, tasks) -> list[dict]:
    """One row per (cell, seed) from the finished cells' summaries."""
    rows = []
    for name, c in cells:
        cell_dir = workdir / "cells" / name
        arch, method = name.split("__", 1)
        summaries = [
            json.loads((d / "summary.json").read_text())
            for d in program_dirs(workdir, name)
            if (d / "summary.json").exists()
        ]
        if sum(len(s["seeds"]) for s in summaries) < c.num_seeds:  # failed, or some seeds not run yet
            err = (
                (cell_dir / "error.txt").read_text().splitlines()[0] if (cell_dir / "error.txt").exists() else "not run"
            )
            if summaries:
                err = f"{sum(len(s['seeds']) for s in summaries)} of {c.num_seeds} seeds done; {err}"
            rows.append({"cell": name, "arch": arch, "method": method, "seed": None, "error": err})
        # The cost of all the cell's seeds: a split cell's programs ran one after another.
        ms = sum(1000.0 / s["steps_per_s"] if s.get("steps_per_s") else math.nan for s in summaries)
        wall = sum(s["wall_time_s"] for s in summaries)
        for s in summaries:
            for entry in s["seeds"]:
                row = {
                    "cell": name,
                    "arch": arch,
                    "method": method,
                    "seed": entry["seed"],
                    "error": "",
                    "epochs": s["epochs"],
                    "best_step": entry["best_validation"].get("step"),
                    "ms_per_step": ms,
                    "num_seeds_in_program": len(s["seeds"]),
                    "wall_time_s": wall,
                }
                for prefix, res in (
                    ("test", entry["best_validation"].get("test", {})),
                    ("validation", entry["best_validation"].get("validation", {})),
                    ("final_test", entry["final"]["test"]),
                ):
                    for task, metrics in res.items():
                        for metric, value in metrics.items():
                            row[f"{prefix}.{task}.{metric}"] = value
                rows.append(row)
    _add_delta_m(rows, tasks)
    return rows


def _add_delta_m(rows: list[dict], tasks) -> None:
    """Δm% of every multi-task row against the seed-mean single-task baselines (best-val and final)."""
    hib = [t.main_metric.higher_is_better for t in tasks]
    for prefix, key in (("test", "delta_m"), ("final_test", "delta_m_final")):
        base = []
        for t in tasks:
            vals = [r.get(f"{prefix}.{t.name}.{t.main_metric.name}") for r in rows if r["arch"] == SINGLE]
            vals = [v for v in vals if v is not None]
            base.append(float(np.mean(vals)) if vals else None)
        if any(b is None for b in base):
            continue
        for r in rows:
            if r["arch"] == SINGLE or r["seed"] is None:
                continue
            m = [r.get(f"{prefix}.{t.name}.{t.main_metric.name}") for t in tasks]
            if all(v is not None for v in m):
                r[key] = mtl_metrics.delta_m(m, base, hib)


def write_csv(rows: list[dict], path: Path) -> None:
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def summarise(rows: list[dict], tasks) -> list[dict]:
    """Seed mean and std per (arch, method); the single-task cells merge into one 'single-task' row."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["seed"] is None:
            continue
        key = (SINGLE, "single-task") if r["arch"] == SINGLE else (r["arch"], r["method"])
        groups.setdefault(key, []).append(r)
    out = []
    for (arch, method), rs in groups.items():
        entry = {"arch": arch, "method": method, "seeds": len({r["seed"] for r in rs})}
        for t in tasks:
            for prefix in ("test", "final_test"):
                col = f"{prefix}.{t.name}.{t.main_metric.name}"
                vals = [r[col] for r in rs if col in r]
                entry[col] = _mean_std(vals) if vals else None
        for key in ("delta_m", "delta_m_final"):
            vals = [r[key] for r in rs if key in r]
            entry[key] = _mean_std(vals) if vals else ((0.0, 0.0) if arch == SINGLE else None)
        entry["ms_per_step"] = float(np.median([r["ms_per_step"] for r in rs]))
        entry["epochs"] = rs[0]["epochs"]
        out.append(entry)
    hib = [t.main_metric.higher_is_better for t in tasks]
    cols = [f"test.{t.name}.{t.main_metric.name}" for t in tasks]
    complete = {f"{e['arch']}/{e['method']}": [e[c][0] for c in cols] for e in out if all(e[c] for c in cols)}
    ranks = mtl_metrics.mean_rank(complete, hib) if complete else {}
    for e in out:
        e["mean_rank"] = ranks.get(f"{e['arch']}/{e['method']}")
    out.sort(key=lambda e: (e["delta_m"] is None, e["delta_m"][0] if e["delta_m"] else 0.0))
    return out


def _mean_std(vals) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single seed)."""
    return summary_lib.mean_sd(vals)


def _pm(v, scale=1.0, digits=2) -> str:
    return "—" if v is None else summary_lib.format_mean_sd(*v, spec=f".{digits}f", scale=scale)


def write_table(summary: list[dict], rows: list[dict], tasks, path: Path, title: str) -> None:
    pct = lambda t: 100.0 if t.main_metric.name == "accuracy" else 1.0
    unit = lambda t: " (%)" if t.main_metric.name == "accuracy" else ""
    head = [
        "arch",
        "method",
        *[f"{t.name} {t.main_metric.name}{unit(t)}" for t in tasks],
        "Δm% ↓",
        "MR ↓",
        *[f"{t.name} final" for t in tasks],
        "Δm% final",
        "ms/step",
        "seeds",
    ]
    lines = [
        f"# {title}",
        "",
        "Test metrics at each seed's best-validation evaluation (mean ± sample std over seeds); *final* = last step. "
        "Δm% against the single-task models (Navon et al. 2022; lower is better); MR = mean rank over tasks. "
        "ms/step: wall time per step for all the cell's seeds (summed over its programs when the seeds were "
        "split), evaluation included.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for e in summary:
        cells = [e["arch"], f"`{e['method']}`"]
        cells += [_pm(e[f"test.{t.name}.{t.main_metric.name}"], pct(t)) for t in tasks]
        cells += [_pm(e["delta_m"]), "—" if e["mean_rank"] is None else f"{e['mean_rank']:.2f}"]
        cells += [_pm(e[f"final_test.{t.name}.{t.main_metric.name}"], pct(t)) for t in tasks]
        cells += [_pm(e["delta_m_final"]), f"{e['ms_per_step']:.0f}", str(e["seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["seed"] is None]
    if failed:
        lines += ["", "Cells without results:", ""] + [f"- `{r['cell']}`: {r['error']}" for r in failed]
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- plots


def _cell_series(workdir: Path, name: str, filename: str, x_key: str, values) -> tuple[list, np.ndarray] | None:
    """``(x, mean over programs of values(record))`` from each program's ``filename`` (records already
    hold the mean over a program's seeds); ``None`` if no program has logged yet."""
    logs = [_read_jsonl(d / filename) for d in program_dirs(workdir, name)]
    logs = [log for log in logs if log]
    if not logs:
        return None
    n = min(len(log) for log in logs)  # programs still running have fewer records
    as_float = lambda v: np.nan if v is None else float(v)
    vals = np.array([[[as_float(v) for v in values(r)] for r in log[:n]] for log in logs])
    with warnings.catch_warnings():  # a method without weights logs None (NaN) in every program
        warnings.simplefilter("ignore", RuntimeWarning)
        return [r[x_key] for r in logs[0][:n]], np.nanmean(vals, axis=0)


def plot_pareto(summary: list[dict], tasks, path: Path) -> None:
    """Task 1 vs task 2 test metric (seed mean ± std) with the Pareto front."""
    if len(tasks) < 2:
        return
    t1, t2 = tasks[:2]
    c1, c2 = (f"test.{t.name}.{t.main_metric.name}" for t in (t1, t2))
    pts = [e for e in summary if e[c1] and e[c2]]
    if not pts:
        return
    xy = np.array([[e[c1][0], e[c2][0]] for e in pts])
    front = mtl_metrics.pareto_front(xy, [t1.main_metric.higher_is_better, t2.main_metric.higher_is_better])
    fig, ax = plt.subplots(figsize=(7, 6))
    for e, (x, y), on in zip(pts, xy, front):
        marker = "*" if e["arch"] == SINGLE else "o"
        ax.errorbar(
            x,
            y,
            xerr=e[c1][1],
            yerr=e[c2][1],
            fmt=marker,
            ms=9 if marker == "*" else 5,
            color="tab:red" if on else "tab:blue",
            alpha=0.8,
            capsize=2,
        )
        label = e["method"] if e["arch"] in ("hps", SINGLE) else f"{e['arch']}/{e['method']}"
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    order = np.argsort(xy[front, 0])
    ax.plot(xy[front][order, 0], xy[front][order, 1], "--", color="tab:red", lw=1, label="Pareto front")
    ax.set(
        xlabel=f"{t1.name} {t1.main_metric.name} (test)",
        ylabel=f"{t2.name} {t2.main_metric.name} (test)",
        title="methods on the two tasks (best-validation checkpoints)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_learning_curves(cells, workdir: Path, tasks, path: Path, split: str = "validation") -> None:
    """Per task, the seed-mean validation main metric of every cell over epochs."""
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for name, _ in cells:
        series = _cell_series(
            workdir,
            name,
            "metrics.jsonl",
            "epoch",
            lambda r: [r.get(split, {}).get(t.name, {}).get(t.main_metric.name) for t in tasks],
        )
        if series is None:
            continue
        epochs, vals = series
        for k, (ax, t) in enumerate(zip(axes[0], tasks)):
            if np.isnan(vals[:, k]).all():
                continue
            single = name.startswith(SINGLE)  # one black curve per panel: that task's own model
            style = (
                dict(color="black", lw=2, label="single-task") if single else dict(lw=1, label=name.split("__", 1)[1])
            )
            ax.plot(epochs, vals[:, k], **style)
    for ax, t in zip(axes[0], tasks):
        ax.set(title=f"{t.name}: {t.main_metric.name} ({split}, mean over seeds)", xlabel="epoch")
        if not t.main_metric.higher_is_better:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize=6, ncol=1 + len(labels) // 30)
        fig.tight_layout(rect=(0, 0, 0.82, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_weights(cells, workdir: Path, tasks, path: Path) -> None:
    """Task weights over training (seed mean), one panel per method that produces weights."""
    series = []
    for name, _ in cells:
        found = (
            None
            if name.startswith(SINGLE)
            else _cell_series(workdir, name, "train_log.jsonl", "step", lambda r: r["weights"])
        )
        if found is None or np.isnan(found[1]).all():
            continue
        series.append((name, found))
    if not series:
        return
    cols = min(6, len(series))
    rows_n = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.6 * rows_n), squeeze=False, sharex=True)
    for ax, (name, (steps, weights)) in zip(axes.flat, series):
        for k, t in enumerate(tasks):
            ax.plot(steps, weights[:, k], lw=1, label=t.name)
        ax.set_title(name.split("__", 1)[1], fontsize=8)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle("task weights over training steps (mean over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(cells, workdir: Path, tasks, title: str) -> list[dict]:
    rows = collect(cells, workdir, tasks)
    write_csv(rows, workdir / "results.csv")
    summary = summarise(rows, tasks)
    write_table(summary, rows, tasks, workdir / "table.md", title)
    (workdir / "plots").mkdir(exist_ok=True)
    plot_pareto(summary, tasks, workdir / "plots" / "pareto.png")
    plot_learning_curves(cells, workdir, tasks, workdir / "plots" / "learning_curves.png")
    plot_weights(cells, workdir, tasks, workdir / "plots" / "weights.png")
    return summary


# ----------------------------------------------------------------------------- main


def parse_methods(spec: str) -> list[str]:
    """``'all'`` or a comma list (``name@rep`` allowed); unknown names raise, listing the valid ones."""
    if spec == "all":
        return weighting.names()
    methods = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in methods if m.removesuffix(REP) not in weighting.names()]
    if unknown:
        hint = suggest(unknown[0].removesuffix(REP), weighting.names())
        raise ValueError(f"unknown weighting scheme(s) {unknown}{hint}; valid schemes: {', '.join(weighting.names())}")
    return methods


def parse_archs(spec: str | list[str]) -> list[str]:
    """A comma list of architectures (``config.model.arch`` values); unknown names raise, listing the valid ones."""
    archs = [a.strip() for a in (spec.split(",") if isinstance(spec, str) else spec) if a.strip()]
    unknown = [a for a in archs if a not in architectures.NAMES]
    if unknown or not archs:
        hint = suggest(unknown[0], architectures.NAMES) if unknown else ""
        raise ValueError(f"unknown architecture(s) {unknown or archs}{hint}; valid: {', '.join(architectures.NAMES)}")
    return archs


# Fields that do not change what a cell computes (where data is read from, how progress shows).
_NOT_COMPARED = ("progress_bar", "writers", "dataset.data_dir", "dataset.cache_dir")


def grid_key(config, seeds: int, jacobian_mode: str | None) -> dict:
    """What every cell of a grid must share to be compared: the config (less ``_NOT_COMPARED``), the
    seed count and the Jacobian mode."""
    c = config_schema.as_dict(config)
    for dotted in _NOT_COMPARED:
        node, last = config_schema.field_parent(c, dotted)
        node.pop(last, None)
    # Fields added since grids were recorded, at their inert values: left out (same fingerprints).
    config_schema.strip_inert(c)
    return {"config": c, "seeds": seeds, "jacobian_mode": jacobian_mode}


def check_grid(workdir: Path, key: dict) -> None:
    """Refuses to add to a grid trained under another config (its cells would be ranked side by side)."""
    path = workdir / "grid.json"
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    if "key" not in saved:  # a grid.json of an earlier version: its config, less what is not compared
        legacy = {"config": saved.get("config", {}), "seeds": saved.get("seeds"), "jacobian_mode": None}
        for dotted in _NOT_COMPARED:
            node, last = config_schema.field_parent(legacy["config"], dotted)
            node.pop(last, None)
        saved["key"] = {**legacy, "jacobian_mode": key["jacobian_mode"]}
    diff = config_schema.differences(saved["key"], key)
    if diff:
        shown = "; ".join(d.removeprefix("config.") for d in diff[:5]) + (
            f"; and {len(diff) - 5} more" if len(diff) > 5 else ""
        )
        raise GridMismatchError(
            f"{workdir} holds a grid trained under another config ({shown}); its cells would be compared with "
            "this run's. Fix: use a new --workdir for this config, or rerun with the grid's settings"
        )


def grid_lock(workdir: Path):
    """The grid folder's lock (``workdir.workdir_lock``), held while cells train or reports are written:
    a second run on the same grid is refused at once (``WorkdirBusyError``) instead of finding every cell
    locked and reporting it as failed."""
    workdir = workdir_lib.prepare_workdir(workdir)
    return workdir_lib.workdir_lock(workdir)


def check_out_folder(out: str | Path, flag: str = "--out") -> None:
    """Refuses, before any training, an output folder path that is a file or lies under one."""
    if not out:
        return
    path = Path(out).expanduser().absolute()
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            where = "is a file" if p == path else f"lies under the file {p}"
            raise ValueError(
                f"{flag} {out} {where}; it names a folder for the reports. Fix: pass a folder path "
                f"(new or existing), or move that file away"
            )


def task_list(config):
    spec = data_lib.load(
        config.dataset.name,
        data_dir=config.dataset.data_dir or None,
        cache_dir=config.dataset.cache_dir or None,
        **dict(config.dataset.kwargs),
    ).spec
    return tasks_lib.tasks_from_config(config.tasks.to_dict(), spec)


def run(
    config,
    workdir: str | Path,
    methods: list[str],
    archs: list[str],
    seeds: int,
    *,
    single_task: bool = True,
    jacobian_mode: str | None = None,
    report_only: bool = False,
    seeds_per_program: int = 0,
) -> list[dict]:
    workdir = Path(workdir)
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if seeds_per_program < 0:
        raise ValueError(f"--seeds_per_program must be >= 0 (0: all seeds in one program), got {seeds_per_program}")
    # Everything a cell would refuse is refused here, before the first cell trains.
    methods, archs = parse_methods(",".join(methods)), parse_archs(archs)
    config_schema.validate_config(config)
    key = grid_key(config, seeds, jacobian_mode)
    if not report_only:
        check_grid(workdir, key)
    tasks = task_list(config)
    cells = grid(config, methods, archs, [t.name for t in tasks], seeds, single_task, jacobian_mode)
    with grid_lock(workdir) as lock:
        if not report_only:
            write_grid_record(workdir, config, methods, archs, seeds, seeds_per_program, single_task, cells, key)
            run_grid(cells, workdir, seeds_per_program)
        title = f"{config.dataset.name}: {len(methods)} method(s) × {len(archs)} arch(s) × {seeds} seed(s)"
        lock.check()  # the grid folder removed mid-run: say so, not a report of "failed" cells
        summary = report(cells, workdir, tasks, title)
    print((workdir / "table.md").read_text())
    return summary
