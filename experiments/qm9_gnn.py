r"""QM9 with the MPNN (experiments/configs/qm9_gnn.py): weighting schemes and single-task baselines,
per-target test MAE in Nash-MTL's units and Delta-m%, beside Navon et al. 2022's published numbers.

    python -m experiments.qm9_gnn --workdir /tmp/qm9_grid --out results/qm9/qm9_gnn_cpu_subset \
        --methods equal,mgda,pcgrad,nash_mtl,famo --single_task mu,homo,U0 \
        --train_size 10000 --eval_size 2000 --epochs 3 --seeds 0

Each cell is one ``jmtl.training.loop.train`` run in ``<workdir>/<method>-s<seed>`` (single-task:
``stl-<target>-s<seed>``). A finished cell, i.e. one with ``summary.json``, is not rerun, so a grid
can be extended (more targets, methods or seeds) by rerunning with the larger lists;
``--only_finished`` writes the report from the finished cells without training anything (missing
cells are listed in the report). The reported numbers are the test metrics of the best-validation
evaluation (the loop's model selection). MAE in the papers' units = std x MAE of the standardised
targets x ``qm9.REPORT_SCALE`` (``jmtl.metrics.mae_original_units`` on the standardised predictions
is the same thing: the mean cancels). Delta-m% (Navon et al. 2022, eq. in Sec. 6):
(1/K) sum_k (MAE_k - MAE_k^STL) / MAE_k^STL x 100 over the K targets that have a single-task run
here (all 11 for the full protocol), with MAE_k the mean over a row's seeds and MAE_k^STL the mean
over the single-task seeds. Delta-m% is affine in each MAE_k, so that equals the mean of the
per-seed Delta-m% (also recorded). ``--single_task_seeds`` lets the methods have more seeds than
the single-task baselines (one set of 11 single-task models is the expensive part on a CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import time
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from jmtl.metrics import mtl as mtl_metrics

if TYPE_CHECKING:
    import ml_collections

# Navon et al., ICML 2022 ("Multi-Task Learning as a Bargaining Game"): QM9 is their Table 1 (Delta-m%)
# and Table 6 (per-target test MAE, App. D.1), 300 epochs, mean of 3 seeds; read in two independent
# conversions of the paper that agree digit for digit (results/published.md names them). The STL row
# is the BASE array of their code (github.com/AvivNavon/nash-mtl, experiments/quantum_chemistry/utils.py),
# which Table 6 prints rounded. FAMO's row is Liu et al., NeurIPS 2023, Table 2 (same protocol).
PUBLISHED = {
    "STL (paper)": ([0.0671, 0.1814, 60.576, 53.915, 0.5027, 4.539, 58.838, 64.244, 63.852, 66.223, 0.07212], 0.0),
    "LS (paper)": ([0.106, 0.325, 73.57, 89.67, 5.19, 14.06, 143.4, 144.2, 144.6, 140.3, 0.128], 177.6),
    "MGDA (paper)": ([0.217, 0.368, 126.8, 104.6, 3.22, 5.69, 88.37, 89.4, 89.32, 88.01, 0.120], 120.5),
    "PCGrad (paper)": ([0.106, 0.293, 75.85, 88.33, 3.94, 9.15, 116.36, 116.8, 117.2, 114.5, 0.110], 125.7),
    "Nash-MTL (paper)": ([0.102, 0.248, 82.95, 81.89, 2.42, 5.38, 74.5, 75.02, 75.10, 74.16, 0.093], 62.0),
    "FAMO (Liu et al. 2023)": ([0.15, 0.30, 94.0, 95.2, 1.63, 4.95, 70.82, 71.2, 71.2, 70.3, 0.10], 58.5),
}
# Qin et al., NeurIPS 2025 ("NTKMTL"), Table 3 (identical to the re-run rows of App. C.1, Table 6): every
# baseline and the 11 single-task models re-run with the shared code at batch 60 and ReduceLROnPlateau
# patience 10 (instead of 120 and 5), 300 epochs, mean of 3 seeds. Read in two independent conversions of
# arXiv 2510.18258 (an HTML and a markdown table) that agree cell for cell; the STL row equals the
# ``BASE`` of their code (experiments/configs/qm9_geometry.py, protocol "ntkmtl").
PUBLISHED_QIN2025 = {
    "STL (Qin et al.)": ([0.060, 0.156, 60.54, 51.22, 0.419, 3.08, 39.3, 42.9, 41.7, 43.1, 0.061], 0.0),
    "LS (Qin et al.)": ([0.077, 0.253, 55.95, 68.59, 4.163, 11.08, 109.2, 109.8, 110.1, 106.7, 0.099], 179.8),
    "SI (Qin et al.)": ([0.159, 0.242, 109.6, 96.80, 0.732, 3.308, 34.35, 34.37, 34.33, 35.16, 0.081], 39.7),
    "RLW (Qin et al.)": ([0.090, 0.277, 62.49, 76.39, 4.948, 12.54, 124.8, 124.9, 125.0, 122.1, 0.115], 222.6),
    "DWA (Qin et al.)": ([0.078, 0.239, 55.17, 67.40, 3.992, 10.92, 107.4, 108.1, 108.3, 105.4, 0.098], 173.0),
    "UW (Qin et al.)": ([0.194, 0.274, 120.6, 102.8, 0.763, 3.698, 41.11, 41.13, 41.16, 41.75, 0.089], 58.4),
    "MGDA (Qin et al.)": ([0.154, 0.266, 95.20, 67.51, 3.088, 4.468, 49.38, 49.21, 49.62, 49.69, 0.087], 101.4),
    "PCGrad (Qin et al.)": ([0.078, 0.221, 59.14, 67.82, 2.937, 6.691, 88.24, 88.65, 88.85, 87.36, 0.084], 118.6),
    "CAGrad (Qin et al.)": ([0.083, 0.234, 57.80, 70.98, 2.718, 5.352, 76.47, 76.93, 77.05, 76.32, 0.089], 102.4),
    "Nash-MTL (Qin et al.)": ([0.086, 0.218, 69.78, 66.18, 2.153, 4.679, 59.63, 59.94, 59.98, 59.97, 0.082], 72.9),
    "FAMO (Qin et al.)": ([0.128, 0.230, 98.09, 84.42, 0.859, 3.541, 40.24, 40.57, 40.62, 40.21, 0.081], 38.9),
    "FairGrad (Qin et al.)": ([0.109, 0.208, 81.74, 72.82, 1.669, 3.418, 51.31, 51.67, 51.72, 51.97, 0.079], 57.0),
    "GO4Align (Qin et al.)": ([0.113, 0.314, 74.46, 91.04, 0.912, 3.632, 36.06, 36.38, 36.41, 36.58, 0.104], 40.5),
    "NTKMTL (Qin et al.)": ([0.091, 0.212, 70.97, 70.81, 2.113, 3.835, 44.18, 44.56, 44.53, 44.38, 0.077], 56.7),
    "NTKMTL-SR (Qin et al.)": ([0.081, 0.207, 75.95, 69.10, 1.176, 3.689, 40.14, 40.46, 40.48, 40.49, 0.074], 30.7),
}
PUBLISHED_QIN2025_NOTE_MD = (
    "Qin et al. 2025 (NTKMTL), Table 3: the same network and data as Navon et al.'s, with batch 60 and "
    "the scheduler's patience 10; every row, the single-task models included, re-run by them (3 seeds), "
    "so its Δm% divides by its own STL row. Sources in `results/published.md`."
)
# Written by the script (this note was once added to the results by hand, and that edit also lost
# this run's PCGrad row: the report must come out whole from the script).
PUBLISHED_NOTE_MD = (
    "Navon et al.'s Table 6 (per-target MAE) and Table 1 (Δm%), FAMO's row from Liu et al. 2023, Table 2; "
    "sources in `results/published.md`. Their protocol: all 110,831 training molecules, 300 epochs, 3-D "
    "geometry (inter-atomic distances on a fully connected graph), learning rate and early stopping on "
    "validation Δm%, 3 seeds. This run has none of these (2,400 molecules, 4 epochs, no coordinates), so "
    "only the orderings can be set side by side, not the numbers."
)
PUBLISHED_NOTE_JSON = (
    "Navon et al. 2022 Table 6 (per-target MAE) and Table 1 (Delta-m%); FAMO from Liu et al. 2023 Table 2; "
    "sources in results/published.md. Different protocol (full data, 300 epochs, 3-D geometry)."
)
LABELS = {
    "equal": "equal (LS)",
    "mgda": "MGDA",
    "pcgrad": "PCGrad",
    "nash_mtl": "Nash-MTL",
    "famo": "FAMO",
    "mgda@rep": "MGDA-UB (rep.)",
    "pcgrad@rep": "PCGrad (rep.)",
    "nash_mtl@rep": "Nash-MTL (rep.)",
}
SINGLE_TASK = "single-task"


def cell_config(method: str | None, task: str | None, seed: int, args) -> "ml_collections.ConfigDict":
    from experiments.configs import qm9_gnn

    name, _, mode = (method or "equal").partition("@")
    c = qm9_gnn.get_config(name)
    if mode:
        if mode != "rep":
            raise ValueError(f"method {method!r}: the only suffix is '@rep' (the representation Jacobian)")
        c.weighting.jacobian_mode = "representation"
    if task is not None:
        c.tasks = {task: dict(label=task, weight=1.0)}
    c.seed = seed
    c.dataset.data_dir = args.data_dir
    c.dataset.cache_dir = args.cache_dir
    c.dataset.kwargs.train_size = args.train_size
    c.dataset.kwargs.eval_size = args.eval_size
    c.num_epochs = args.epochs
    c.eval_batch_size = args.eval_batch_size
    c.progress_bar = False
    if args.inputs == "geometry":
        qm9_gnn.use_geometry(c, args.package_dir)
    return c


def cell_name(method: str | None, task: str | None, seed: int) -> str:
    """The cell's name in the report's wall times, e.g. ``mgda@rep-s0`` or ``stl-mu-s0``."""
    return f"stl-{task}-s{seed}" if method is None else f"{method}-s{seed}"


def run_cell(name: str, config, workdir: pathlib.Path, only_finished: bool = False) -> tuple[dict | None, bool]:
    """``(summary, reused)``: the finished cell's summary (``None`` when ``only_finished`` and the
    cell has none), and whether it was read from disk rather than trained now."""
    from jmtl.training import loop

    if (workdir / "summary.json").exists():
        return json.loads((workdir / "summary.json").read_text()), True
    if only_finished:
        print(f"[qm9_gnn] {name}: not finished ({workdir}), left out", flush=True)
        return None, False
    from experiments import results_io

    results_io.record_code_start(workdir)  # the code this cell starts (or resumes) with
    t0 = time.time()
    summary, _ = loop.train(config, workdir)
    print(f"[qm9_gnn] {name}: {time.time() - t0:.0f} s", flush=True)
    return summary, False


def test_mae(summary: dict, info) -> dict[str, float]:
    """Best-validation test MAE per task in the papers' units."""
    out = {}
    test = summary["best_validation"]["test"]
    for task, metrics in test.items():
        k = info.tasks.index(task)
        out[task] = float(metrics["mae"] * info.std[k] * info.report_scale[k])
    return out


def delta_m(row: Mapping[str, float], base: Mapping[str, float]) -> float | None:
    """Navon et al.'s Delta-m% of ``row``'s MAEs (lower is better) against ``base`` over the targets
    both have (None: none): :func:`jmtl.metrics.mtl.delta_m_of`."""
    return mtl_metrics.delta_m_of(row, base, higher_is_better=False, skip_missing=True)


def build_report(
    cells: Mapping[str, Mapping[int, Mapping[str, float]]],
    methods: Sequence[str],
    tasks: Sequence[str],
    units: Sequence[str],
    setup: Mapping,
    times: Mapping[str, float],
    reused: Sequence[str] = (),
    missing: Sequence[str] = (),
    finished: Mapping[str, str] | None = None,
    code: Mapping[str, Mapping] | None = None,
    notes: Sequence[str] = (),
) -> tuple[dict, list[str]]:
    """The JSON record and the markdown lines of a grid.

    Args:
      cells: ``{row: {seed: {target: test MAE}}}``; rows are ``'single-task'`` (each seed's dict has
        the targets that have a single-task model) and the method names.
      methods: the method rows in table order; each gets a row, '–' where it has no finished cell.
      tasks: all targets, in column order (``qm9.TASKS``).
      units: the targets' units (``qm9.REPORT_UNITS``).
      setup: train_size, eval_size, epochs, ... (recorded as given; the title reads train_size,
        eval_size, epochs).
      times: wall time per cell name (s).
      reused: cell names read from an earlier invocation's workdir (marked in the wall times).
      missing: cell names that have no finished run (listed in the report).
      finished: when each cell's ``summary.json`` was written (UTC, ISO 8601; recorded in the JSON:
        a grid grown over several invocations has cells older than the provenance's start date).
      code: cell name -> the code that trained it (``results_io.cell_code``); a row with a cell
        that is absent here or not one clean commit is marked (``results_io.CODE_NOTE``).
      notes: markdown lines added under the run's table (e.g. what a rerun found).

    Returns:
      ``(result, lines)`` for ``results_io.write_outputs``.
    """

    def mean_row(per_seed: Mapping[int, Mapping[str, float]]) -> dict[str, float]:
        # Per target over the seeds that have it: single-task models are one run per target, and a
        # target's second seed may exist before another's.
        vals = {t: [r[t] for r in per_seed.values() if t in r] for t in tasks}
        return {t: float(np.mean(v)) for t, v in vals.items() if v}

    rows = {name: mean_row(per_seed) for name, per_seed in cells.items()}
    base = rows.get(SINGLE_TASK, {})
    seeds_of = {name: sorted(per_seed) for name, per_seed in cells.items()}
    all_seeds = sorted({s for v in seeds_of.values() for s in v})
    result = {
        "setup": dict(setup),
        "units": dict(zip(tasks, units)),
        "test_mae": {name: {str(s): r for s, r in sorted(per_seed.items())} for name, per_seed in cells.items()},
        "test_mae_mean": rows,
        "seeds_per_row": seeds_of,
        "delta_m_percent": {name: delta_m(r, base) for name, r in rows.items() if name != SINGLE_TASK},
        "delta_m_percent_per_seed": {
            name: {str(s): delta_m(r, base) for s, r in sorted(per_seed.items())}
            for name, per_seed in cells.items()
            if name != SINGLE_TASK
        },
        "delta_m_tasks": [t for t in tasks if t in base],
        "wall_time_s": dict(times),
        "cells_reused": list(reused),
        "cells_missing": list(missing),
        "cell_finished_utc": dict(finished or {}),
        "cell_code": {name: (code or {}).get(name) for name in times},
        "notes": list(notes),
        "published_navon2022": {k: dict(zip(tasks, v[0]), delta_m=v[1]) for k, v in PUBLISHED.items()},
        "published_navon2022_note": PUBLISHED_NOTE_JSON,
        "published_qin2025": {k: dict(zip(tasks, v[0]), delta_m=v[1]) for k, v in PUBLISHED_QIN2025.items()},
        "published_qin2025_note": "Qin et al. 2025 (NTKMTL) Table 3: batch 60, patience 10, every row re-run "
        "(STL included); sources in results/published.md.",
    }
    cols = " | ".join(f"{t} ({u})" for t, u in zip(tasks, units))
    fmt = lambda v: "–" if v is None else (f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}")
    run_head = f"| method | seeds | {cols} | Δm% ↓ | Δm% per seed |"
    run_sep = "|---|---|" + "---:|" * (len(tasks) + 2)
    lines = [
        f"# QM9, MPNN{' with 3-D geometry' if setup.get('inputs') == 'geometry' else ''}, "
        f"{setup['train_size']:,} training molecules, {setup['epochs']} epoch(s), "
        f"seed(s) {', '.join(map(str, all_seeds)) or 'none'}",
        "",
        "Test MAE of the best-validation evaluation (validation / test: the first "
        f"{setup['eval_size']:,} molecules of Nash-MTL-sized splits), in Nash-MTL's units, mean over the row's "
        f"seeds. Δm% against this run's single-task models (mean over their seeds) over "
        f"{len(result['delta_m_tasks'])} target(s): {', '.join(result['delta_m_tasks']) or 'none'}.",
        "",
        "## This run",
        "",
        run_head,
        run_sep,
    ]
    from experiments import results_io

    def row_mark(name: str) -> str:
        # A row is as well named as its least-named cell.
        names = [n for n in times if (n.startswith("stl-") if name == SINGLE_TASK else n.rsplit("-s", 1)[0] == name)]
        marks = {results_io.code_mark((code or {}).get(n)) for n in names} - {""}
        return "".join(sorted(marks))

    marks = {}
    for name in ([SINGLE_TASK] if base else []) + list(methods):
        r = rows.get(name, {})
        marks[name] = row_mark(name)
        d = 0.0 if name == SINGLE_TASK else result["delta_m_percent"].get(name)
        per_seed = result["delta_m_percent_per_seed"].get(name, {})
        per = ", ".join(fmt(v) for v in per_seed.values()) if len(per_seed) > 1 else ""
        lines.append(
            f"| {LABELS.get(name, name)}{marks[name]} | {', '.join(map(str, seeds_of.get(name, []))) or '–'} | "
            + " | ".join(fmt(r.get(t)) for t in tasks)
            + f" | {fmt(d)} | {per} |"
        )
    if any(marks.values()):
        lines += ["", results_io.CODE_NOTE]
    if notes:
        lines += ["", *notes]
    head = f"| method | {cols} | Δm% ↓ |"
    sep = "|---|" + "---:|" * (len(tasks) + 1)
    lines += [
        "",
        "## Published: Navon et al. 2022, Tables 1 and 6 (full data, 300 epochs, 3D geometry, 3 seeds)",
        "",
        PUBLISHED_NOTE_MD
        if setup.get("inputs", "graph") != "geometry"
        else PUBLISHED_NOTE_MD.replace("no coordinates", "the same 3-D geometry input"),
        "",
        head,
        sep,
    ]
    for name, (vals, d) in PUBLISHED.items():
        lines.append(f"| {name} | " + " | ".join(fmt(v) for v in vals) + f" | {fmt(d)} |")
    lines += [
        "",
        "## Published: Qin et al. 2025, Table 3 (the corrected protocol: batch 60, patience 10)",
        "",
        PUBLISHED_QIN2025_NOTE_MD,
        "",
        head,
        sep,
    ]
    for name, (vals, d) in PUBLISHED_QIN2025.items():
        lines.append(f"| {name} | " + " | ".join(fmt(v) for v in vals) + f" | {fmt(d)} |")
    if times and set(times) <= set(reused):
        # Every cell read back: the provenance below dates this report, not the training.
        done = sorted((finished or {}).values())
        when = f", finished between {done[0]} and {done[-1]} (UTC)" if done else ""
        lines += [
            "",
            f"Wall time per cell (s, this shared machine; all cells trained by earlier invocations into "
            f"the same workdir{when} and read back here): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()),
        ]
    else:
        lines += [
            "",
            "Wall time per cell (s, this shared machine; * = trained by an earlier invocation into the same "
            "workdir, read back here): "
            + ", ".join(f"{k}{'*' if k in reused else ''} {v:.0f}" for k, v in times.items()),
        ]
    if missing:
        lines += ["", "Cells without a finished run (left out of the means): " + ", ".join(missing)]
    return result, lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="results path without suffix (.json / .md are written)")
    p.add_argument(
        "--methods",
        default="equal,mgda,pcgrad,nash_mtl,famo",
        help="comma-separated; 'name@rep' = per-task gradients w.r.t. the shared representation",
    )
    p.add_argument("--single_task", default="all", help="'all', '' or comma-separated targets")
    p.add_argument("--seeds", default="0", help="comma-separated seeds of the methods")
    p.add_argument(
        "--single_task_seeds", default=None, help="comma-separated seeds of the single-task models (default: --seeds)"
    )
    p.add_argument(
        "--only_finished",
        action="store_true",
        help="train nothing: report the cells that have a summary.json, list the others as missing",
    )
    p.add_argument(
        "--inputs",
        default="graph",
        choices=("graph", "geometry"),
        help="'graph': bond graphs from the SMILES (no coordinates); 'geometry': complete graphs with "
        "interatomic distances from qm9pack (pip install 'jmtl[qm9]')",
    )
    p.add_argument("--package_dir", default=None, help="qm9pack folder for --inputs geometry (default: installed)")
    p.add_argument("--train_size", type=int, default=0)
    p.add_argument("--eval_size", type=int, default=0)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--eval_batch_size", type=int, default=1000)
    p.add_argument("--data_dir", default="../shared/data")
    p.add_argument("--cache_dir", default="/tmp/jmtl_cache")
    p.add_argument(
        "--allow_fewer_cells", action="store_true", help="replace an --out report that holds cells this grid lacks"
    )
    args = p.parse_args(argv)
    from jmtl.training import cli

    with cli.one_line_errors():
        run(args)


def result_cells(record) -> set[str]:
    """The cells of a report's JSON: row / seed / target of every test MAE."""
    return {
        f"{name} s{seed} {task}"
        for name, per_seed in record["test_mae"].items()
        for seed, row in per_seed.items()
        for task in row
    }


def check_options(args) -> tuple[list[str], list[str], list[int], list[int]]:
    """Every option, before any data is read or anything trains (``ValueError`` naming the option and
    the fix); returns the methods, single-task targets, seeds and single-task seeds."""
    from experiments import script_checks
    from jmtl.data import qm9

    methods = script_checks.weighting_methods("--methods", args.methods.split(","))
    stl_tasks = list(qm9.TASKS) if args.single_task == "all" else [t for t in args.single_task.split(",") if t]
    script_checks.choices("--single_task", stl_tasks, list(qm9.TASKS), "mu,homo")
    seeds = script_checks.int_list("--seeds", args.seeds, 0, example="0,1,2")
    stl_seeds = (
        seeds
        if args.single_task_seeds is None
        else script_checks.int_list("--single_task_seeds", args.single_task_seeds, 0, example="0")
    )
    script_checks.at_least("--train_size", args.train_size, 0)
    script_checks.at_least("--eval_size", args.eval_size, 0)
    script_checks.at_least("--epochs", args.epochs, 1)
    script_checks.at_least("--eval_batch_size", args.eval_batch_size, 1)
    if not pathlib.Path(args.data_dir).expanduser().is_dir():
        raise ValueError(f"--data_dir: {args.data_dir} is not a folder. Fix: pass the folder holding qm9/")
    for flag, folder in (("--workdir", args.workdir), ("--cache_dir", args.cache_dir)):
        path = pathlib.Path(folder).expanduser()
        for q in (path, *path.parents):
            if q.exists() and not q.is_dir():
                raise ValueError(f"{flag}: {q} is a file, not a folder. Fix: pass another {flag}")
    script_checks.output_path("--out", args.out)
    return methods, stl_tasks, seeds, stl_seeds


INPUTS_MARK = "qm9_inputs.txt"


def check_workdir_inputs(root: pathlib.Path, inputs: str) -> None:
    """A grid workdir holds cells of one input kind: finished cells are reused, so cells trained
    on bond graphs must never be read back as geometry cells (or the reverse). The first run writes
    ``<workdir>/qm9_inputs.txt``; a later one with other inputs is refused (``ValueError``)."""
    mark = root / INPUTS_MARK
    if mark.is_file():
        was = mark.read_text().strip()
        if was != inputs:
            raise ValueError(
                f"--workdir {root} holds cells trained with --inputs {was}, not {inputs}. Fix: pass another --workdir"
            )
        return
    if root.is_dir() and any(root.iterdir()):
        if inputs != "graph":  # cells from before the mark existed were all trained on bond graphs
            raise ValueError(
                f"--workdir {root} holds cells without an inputs record (trained on bond graphs). Fix: pass another "
                "--workdir for --inputs geometry"
            )
    root.mkdir(parents=True, exist_ok=True)
    mark.write_text(inputs + "\n")


def run(args) -> None:
    from experiments import results_io, script_checks
    from jmtl.data import qm9

    started = results_io.started_now()
    methods, stl_tasks, seeds, stl_seeds = check_options(args)
    planned = {f"{SINGLE_TASK} s{s} {t}" for s in stl_seeds for t in stl_tasks if stl_tasks} | {
        f"{m} s{s} {t}" for m in methods for s in seeds for t in qm9.TASKS
    }
    out_json = pathlib.Path(args.out + ".json")
    if not args.only_finished:  # --only_finished reports what exists; the check at the write still holds
        script_checks.check_cells(out_json, planned, result_cells, args.allow_fewer_cells)
    root = pathlib.Path(args.workdir)
    check_workdir_inputs(root, args.inputs)
    # The standardisation statistics (the units of the MAE): the same data the runs load.
    if args.inputs == "geometry":
        raw, _, _ = qm9.load_qm9pack(args.package_dir)
        info = qm9.dataset_from_raw(raw, seed=0, train_size=args.train_size, eval_size=args.eval_size).qm9
    else:
        info = qm9.load_qm9(
            data_dir=args.data_dir, inputs="composition", train_size=args.train_size, eval_size=args.eval_size
        ).qm9
    cells: dict[str, dict[int, dict[str, float]]] = {}
    times, reused, missing, finished = {}, [], [], {}
    plan = []  # seed-major, single-task models first in each seed (as the grid has always run)
    for seed in sorted(set(seeds) | set(stl_seeds), key=(seeds + stl_seeds).index):
        if seed in stl_seeds:
            plan += [(None, task, seed) for task in stl_tasks]
        if seed in seeds:
            plan += [(m, None, seed) for m in methods]
    for method, task, seed in plan:
        name = cell_name(method, task, seed)
        workdir = root / name.replace("@", "-")
        s, was_reused = run_cell(name, cell_config(method, task, seed, args), workdir, args.only_finished)
        if s is None:
            missing.append(name)
            continue
        mae = test_mae(s, info)
        if method is None:
            cells.setdefault(SINGLE_TASK, {}).setdefault(seed, {}).update(mae)
        else:
            cells.setdefault(method, {})[seed] = mae
        times[name] = s["wall_time_s"]
        finished[name] = datetime.datetime.fromtimestamp(
            (workdir / "summary.json").stat().st_mtime, datetime.timezone.utc
        ).isoformat(timespec="seconds")
        if was_reused:
            reused.append(name)

    setup = dict(
        train_size=args.train_size or 110_831,
        eval_size=args.eval_size or 10_000,
        epochs=args.epochs,
        seeds=seeds,
        single_task_seeds=stl_seeds,
        methods=methods,
        single_task=stl_tasks,
        batch_size=120,
        lr=1e-3,
        inputs=args.inputs,
        model=(
            "MPNN hidden 64, 3 NNConv+GRU rounds, Set2Set; "
            + (
                "complete graph with explicit H, edge features = bond one-hot + interatomic distance (qm9pack xyz)"
                if args.inputs == "geometry"
                else "bond graph with explicit H, no geometry"
            )
        ),
    )
    code = {name: results_io.cell_code(root / name.replace("@", "-")) for name in times}
    result, lines = build_report(
        cells, methods, qm9.TASKS, qm9.REPORT_UNITS, setup, times, reused, missing, finished, code
    )
    script_checks.write_results(
        args.out, result, lines, result_cells, args.allow_fewer_cells, results_io.provenance(started=started)
    )


if __name__ == "__main__":
    main()
