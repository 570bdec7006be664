"""Markdown + JSON table of finished training runs (from their ``summary.json``), next to paper numbers.

    python -m experiments.report_runs --runs workdirs/mm_equal workdirs/mm_mgda_ub \
        --paper "equal=96.46/94.99" "mgda=97.26/95.90" --out results/runs/multimnist
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments import script_checks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--paper", nargs="*", default=[], help="weighting=left/right accuracies in %%")
    parser.add_argument("--title", default="MultiMNIST, Multi-LeNet")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--allow_fewer_cells", action="store_true", help="replace an --out that holds runs this one lacks"
    )
    args = parser.parse_args(argv)
    from jmtl.training import cli

    with cli.one_line_errors():
        run(args)


def run_cells(record) -> set[str]:
    return {r["run"] for r in record["runs"]}


def check_options(args) -> dict[str, str]:
    """Every option before anything is written; returns the paper numbers by weighting."""
    bad = [p for p in args.paper if "=" not in p]
    if bad:
        raise ValueError(f"--paper: {bad[0]!r} is not WEIGHTING=LEFT/RIGHT. Fix: e.g. --paper equal=96.46/94.99")
    for run in map(Path, args.runs):
        for name in ("summary.json", "config.json"):
            if not (run / name).is_file():
                raise ValueError(
                    f"--runs: {run / name} does not exist (not a finished run's workdir). Fix: pass "
                    "workdirs of finished runs"
                )
    names = [Path(r).name for r in args.runs]
    if len(set(names)) < len(names):
        raise ValueError(f"--runs: two runs share a folder name ({names}); the table names runs by it. Fix: rename one")
    script_checks.output_path("--out", args.out)
    script_checks.check_cells(args.out + ".json", set(names), run_cells, args.allow_fewer_cells)
    return dict(p.split("=", 1) for p in args.paper)


def run(args) -> None:
    paper = check_options(args)

    rows, lines = (
        [],
        [
            f"# {args.title}",
            "",
            "Test accuracy (%) of the checkpoint with the best validation accuracy (model selection on the "
            "validation split only), and at the last step.",
            "",
            "| run | weighting | Jacobian | epochs | best-val epoch | test left | test right | final left | final right | paper left / right | wall s / epoch |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
        ],
    )
    for run in args.runs:
        run = Path(run)
        s = json.loads((run / "summary.json").read_text())
        cfg = json.loads((run / "config.json").read_text())
        best, final = s["best_validation"], s["final"]["test"]
        tasks = s["tasks"]
        row = {
            "run": run.name,
            "weighting": s["weighting"],
            "jacobian_mode": cfg["weighting"].get("jacobian_mode", "params"),
            "epochs": s["epochs"],
            "best_val_epoch": best["step"] * s["epochs"] / s["steps"],
            "best_val_test": {t: best["test"][t]["accuracy"] for t in tasks},
            "final_test": {t: final[t]["accuracy"] for t in tasks},
            "wall_time_per_epoch_s": s["wall_time_per_epoch_s"],
            "paper": paper.get(s["weighting"]),
        }
        rows.append(row)
        b, f = row["best_val_test"], row["final_test"]
        mode = row["jacobian_mode"] if s["weighting"] not in ("equal", "uncertainty", "static") else "—"
        lines.append(
            f"| {run.name} | {s['weighting']} | {mode} | {row['epochs']:.0f} | {row['best_val_epoch']:.0f} | "
            f"{100 * b[tasks[0]]:.2f} | {100 * b[tasks[1]]:.2f} | {100 * f[tasks[0]]:.2f} | {100 * f[tasks[1]]:.2f} | "
            f"{row['paper'] or '—'} | {row['wall_time_per_epoch_s']:.1f} |"
        )
    # .json and .md, each with its provenance
    script_checks.write_results(Path(args.out), {"runs": rows}, lines, run_cells, args.allow_fewer_cells)


if __name__ == "__main__":
    main()
