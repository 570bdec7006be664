r"""QM9 with the MPNN (experiments/configs/qm9_gnn.py): weighting methods and single-task baselines,
per-target test MAE in Nash-MTL's units and Delta-m%, beside Navon et al. 2022's published numbers.

    python -m experiments.qm9_gnn --workdir /tmp/qm9_grid --out results/qm9/qm9_gnn_cpu_subset \
        --methods equal,mgda,pcgrad,nash_mtl,famo --single_task mu,homo,U0 \
        --train_size 10000 --eval_size 2000 --epochs 3 --seeds 0

Each cell is one ``jmtl.training.loop.train`` run in ``<workdir>/<method>-s<seed>`` (a finished
cell, i.e. one with ``summary.json``, is not rerun). The reported numbers are the test metrics of
the best-validation evaluation (the loop's model selection). MAE in the papers' units =
std x MAE of the standardised targets x ``qm9.REPORT_SCALE`` (``jmtl.metrics.mae_original_units``
on the standardised predictions is the same thing: the mean cancels). Delta-m% (Navon et al.
2022, eq. in Sec. 6): (1/K) sum_k (MAE_k - MAE_k^STL) / MAE_k^STL x 100 over the K targets that
have a single-task run here (all 11 for the full protocol).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

# Navon et al., ICML 2022 ("Multi-Task Learning as a Bargaining Game"), Table 2 (QM9, test MAE,
# 300 epochs, mean of 3 seeds). The STL row is the BASE array of their code
# (github.com/AvivNavon/nash-mtl, experiments/quantum_chemistry/utils.py); Nash-MTL's Delta-m% 62.0
# is also listed by paperswithcode. The paper's other rows could not be read from its PDF here, so they
# are not quoted (no numbers from memory).
PUBLISHED = {
    "STL": ([0.0671, 0.1814, 60.576, 53.915, 0.5027, 4.539, 58.838, 64.244, 63.852, 66.223, 0.07212], 0.0),
}
LABELS = {"equal": "equal (LS)", "mgda": "MGDA", "pcgrad": "PCGrad", "nash_mtl": "Nash-MTL", "famo": "FAMO",
          "mgda@rep": "MGDA-UB (rep.)", "pcgrad@rep": "PCGrad (rep.)", "nash_mtl@rep": "Nash-MTL (rep.)"}


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
    return c


def run_cell(name: str, config, workdir: pathlib.Path) -> dict:
    from jmtl.training import loop

    if (workdir / "summary.json").exists():
        return json.loads((workdir / "summary.json").read_text())
    t0 = time.time()
    summary, _ = loop.train(config, workdir)
    print(f"[qm9_gnn] {name}: {time.time() - t0:.0f} s", flush=True)
    return summary


def test_mae(summary: dict, info) -> dict[str, float]:
    """Best-validation test MAE per task in the papers' units."""
    out = {}
    test = summary["best_validation"]["test"]
    for task, metrics in test.items():
        k = info.tasks.index(task)
        out[task] = float(metrics["mae"] * info.std[k] * info.report_scale[k])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="results path without suffix (.json / .md are written)")
    p.add_argument("--methods", default="equal,mgda,pcgrad,nash_mtl,famo",
                   help="comma-separated; 'name@rep' = per-task gradients w.r.t. the shared representation")
    p.add_argument("--single_task", default="all", help="'all', '' or comma-separated targets")
    p.add_argument("--seeds", default="0")
    p.add_argument("--train_size", type=int, default=0)
    p.add_argument("--eval_size", type=int, default=0)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--eval_batch_size", type=int, default=1000)
    p.add_argument("--data_dir", default="../shared/data")
    p.add_argument("--cache_dir", default="/tmp/jmtl_cache")
    args = p.parse_args(argv)

    from experiments.bench import common as bench_common
    from jmtl.data import qm9

    started = bench_common.started_now()
    methods = [m for m in args.methods.split(",") if m]
    stl_tasks = list(qm9.TASKS) if args.single_task == "all" else [t for t in args.single_task.split(",") if t]
    seeds = [int(s) for s in args.seeds.split(",")]
    # The standardisation statistics (the units of the MAE): the same data the runs load.
    info = qm9.load_qm9(data_dir=args.data_dir, inputs="composition", train_size=args.train_size,
                        eval_size=args.eval_size).qm9
    root = pathlib.Path(args.workdir)
    cells = {}
    for seed in seeds:
        for task in stl_tasks:
            s = run_cell(f"stl-{task}-s{seed}", cell_config(None, task, seed, args), root / f"stl-{task}-s{seed}")
            cells.setdefault("single-task", {}).setdefault(seed, {}).update(test_mae(s, info))
            cells.setdefault("_time", {})[f"stl-{task}-s{seed}"] = s["wall_time_s"]
        for m in methods:
            s = run_cell(f"{m}-s{seed}", cell_config(m, None, seed, args), root / f"{m.replace('@', '-')}-s{seed}")
            cells.setdefault(m, {})[seed] = test_mae(s, info)
            cells.setdefault("_time", {})[f"{m}-s{seed}"] = s["wall_time_s"]
    times = cells.pop("_time")

    def mean_row(per_seed: dict) -> dict[str, float]:
        tasks = [t for t in qm9.TASKS if all(t in r for r in per_seed.values())]
        return {t: float(np.mean([r[t] for r in per_seed.values()])) for t in tasks}

    def delta_m(row: dict, base: dict) -> float | None:
        ks = [t for t in base if t in row]
        return float(np.mean([(row[t] - base[t]) / base[t] for t in ks]) * 100) if ks else None

    rows = {name: mean_row(per_seed) for name, per_seed in cells.items()}
    base = rows.get("single-task", {})
    result = {
        "setup": dict(train_size=args.train_size or 110_831, eval_size=args.eval_size or 10_000, epochs=args.epochs,
                      seeds=seeds, methods=methods, single_task=stl_tasks, batch_size=120, lr=1e-3,
                      model="MPNN hidden 64, 3 NNConv+GRU rounds, Set2Set; bond graph with explicit H, no geometry"),
        "units": dict(zip(qm9.TASKS, qm9.REPORT_UNITS)),
        "test_mae": {name: {str(s): r for s, r in per_seed.items()} for name, per_seed in cells.items()},
        "test_mae_mean": rows,
        "delta_m_percent": {name: delta_m(r, base) for name, r in rows.items() if name != "single-task"},
        "delta_m_tasks": [t for t in qm9.TASKS if t in base],
        "wall_time_s": times,
        "published_navon2022": {k: dict(zip(qm9.TASKS, v[0]), delta_m=v[1]) for k, v in PUBLISHED.items()},
    }
    head = "| method | " + " | ".join(f"{t} ({u})" for t, u in zip(qm9.TASKS, qm9.REPORT_UNITS)) + " | Δm% ↓ |"
    sep = "|---|" + "---:|" * (len(qm9.TASKS) + 1)
    fmt = lambda v: "–" if v is None else (f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}")
    lines = [
        f"# QM9, MPNN, {result['setup']['train_size']:,} training molecules, {args.epochs} epoch(s), "
        f"seed(s) {', '.join(map(str, seeds))}", "",
        "Test MAE of the best-validation evaluation (validation / test: the first "
        f"{result['setup']['eval_size']:,} molecules of Nash-MTL-sized splits), in Nash-MTL's units. "
        f"Δm% against this run's single-task models over {', '.join(result['delta_m_tasks']) or 'no'} targets.", "",
        "## This run", "", head, sep,
    ]
    for name in (["single-task"] if base else []) + methods:
        r = rows.get(name, {})
        d = 0.0 if name == "single-task" else result["delta_m_percent"].get(name)
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(fmt(r.get(t)) for t in qm9.TASKS) + f" | {fmt(d)} |")
    lines += ["", "## Navon et al. 2022, Table 2 (full data, 300 epochs, 3D geometry, 3 seeds)", "", head, sep]
    for name, (vals, d) in PUBLISHED.items():
        lines.append(f"| {name} | " + " | ".join(fmt(v) for v in vals) + f" | {fmt(d)} |")
    lines += ["", "Wall time per cell (s, this shared machine): "
              + ", ".join(f"{k} {v:.0f}" for k, v in times.items())]
    bench_common.write_outputs(args.out, result, lines, bench_common.provenance(started=started))


if __name__ == "__main__":
    main()
