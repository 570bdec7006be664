r"""GradNorm's synthetic study (Chen et al. 2018, Sec. 5.1): equal weights vs uncertainty vs GradNorm.

T regression tasks whose targets differ in scale by 100× (sigma_i log-spaced in 1..100). Equal weighting
lets the large-scale tasks dominate the shared trunk; the small-scale tasks' *relative* error stays
high. The plot shows, for T = 2 and T = 10, the test error over training as the mean over tasks of
the normalised MSE ``mse_i / sigma_i^2`` (each task's error relative to its own scale), with the
per-task curves thin, and the task weights each method assigns.

    python -m experiments.gradnorm_toy_study --workdir workdirs/gradnorm_toy [--seeds 3]

Runs the grid through jmtl.drivers.ablation.run (as experiments/ablate.py does) (resumable; one cell per method and T) and writes
``results/toy/gradnorm_toy.{png,md,json}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from experiments.configs import gradnorm_toy  # noqa: E402
from jmtl.data import gradnorm_toy as toy_data  # noqa: E402
from jmtl.drivers import ablation  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results" / "toy"
METHODS = ("equal", "uncertainty", "gradnorm")
COLORS = {"equal": "tab:gray", "uncertainty": "tab:blue", "gradnorm": "tab:red"}


def normalised_curves(cell_dir: Path, num_tasks: int) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and ``[evals, T]`` test mse_i / sigma_i^2 (mean over seeds) from a cell's metrics.jsonl."""
    sigma2 = toy_data.task_scales(num_tasks) ** 2
    evals = [json.loads(l) for l in (cell_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    epochs = np.array([r["epoch"] for r in evals])
    mse = np.array([[r["test"][f"t{i}"]["mse"] for i in range(num_tasks)] for r in evals])
    return epochs, mse / sigma2


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="workdirs/gradnorm_toy")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tasks", default="2,10")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", default=str(RESULTS / "gradnorm_toy"))
    parser.add_argument(
        "--allow_fewer_cells",
        action="store_true",
        help="replace an --out report that holds cells (T, method) this run lacks",
    )
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    from jmtl.training import cli

    with cli.one_line_errors():
        run(args)


def study_cells(record) -> set[str]:
    """The cells of the study's JSON: one per (T, method)."""
    return {f"T{t} {m}" for t, by_method in record["by_T"].items() for m in by_method}


def check_options(args) -> list[int]:
    """Every option before any work; returns the task counts."""
    from experiments import script_checks

    ts = script_checks.int_list("--tasks", args.tasks, 1, example="2,10")
    script_checks.at_least("--seeds", args.seeds, 1)
    script_checks.at_least("--epochs", args.epochs, 1)
    script_checks.output_path("--out", args.out, (".json", ".md", ".png"))
    script_checks.check_cells(
        args.out + ".json", {f"T{t} {m}" for t in ts for m in METHODS}, study_cells, args.allow_fewer_cells
    )
    return ts


def run(args) -> None:
    from experiments import script_checks

    ts = check_options(args)

    fig, axes = plt.subplots(2, len(ts), figsize=(6.5 * len(ts), 8), squeeze=False)
    record = {"seeds": args.seeds, "epochs": args.epochs, "by_T": {}}
    for col, t in enumerate(ts):
        c = gradnorm_toy.get_config()
        c.unlock()
        c.dataset.kwargs = dict(num_tasks=t)
        c.num_epochs, c.progress_bar, c.parallel = args.epochs, False, "single"
        c.eval_every_steps = 40
        wd = Path(args.workdir) / f"T{t}"
        ablation.run(c, wd, list(METHODS), ["hps"], args.seeds, single_task=False)
        record["by_T"][t] = {}
        ax, axw = axes[0][col], axes[1][col]
        for method in METHODS:
            cell = wd / "cells" / f"hps__{method}"
            epochs, norm = normalised_curves(cell, t)
            ax.plot(epochs, norm.mean(axis=1), color=COLORS[method], lw=2, label=f"{method} (mean over tasks)")
            for i in range(t):
                ax.plot(epochs, norm[:, i], color=COLORS[method], lw=0.5, alpha=0.4)
            log = [json.loads(l) for l in (cell / "train_log.jsonl").read_text().splitlines() if l.strip()]
            weights = np.array([[np.nan if w is None else w for w in r["weights"]] for r in log])
            steps = [r["step"] for r in log]
            if method != "equal":
                for i in range(t):
                    axw.plot(
                        steps, weights[:, i], color=COLORS[method], lw=1, alpha=0.8, label=method if i == 0 else None
                    )
            final = norm[-1]
            record["by_T"][t][method] = {
                "final_normalised_mse_mean": float(final.mean()),
                "final_normalised_mse_per_task": final.tolist(),
                "final_worst_over_best_task": float(final.max() / final.min()),
            }
        ax.set(
            title=f"T = {t}: test error relative to each task's scale",
            xlabel="epoch",
            ylabel="test mse_i / sigma_i^2",
            yscale="log",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        axw.set(title=f"T = {t}: task weights (sigma_i = 1 ... 100)", xlabel="step", ylabel="weight", yscale="log")
        axw.grid(alpha=0.3)
        axw.legend(fontsize=8)
    fig.suptitle(f"GradNorm synthetic tasks, {args.seeds} seeds (mean), thin lines: individual tasks", fontsize=11)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out + ".png", dpi=110)
    lines = [
        "# GradNorm synthetic tasks: final test error relative to each task's scale",
        "",
        f"{args.epochs} epochs, {args.seeds} seeds in one program per cell; mse_i / sigma_i^2 at the last step, "
        "mean over seeds. Lower is better; *worst/best* is the spread between tasks (1 = balanced).",
        "",
        "| T | method | mean over tasks | worst / best task |",
        "|---:|---|---:|---:|",
    ]
    for t, by in record["by_T"].items():
        for m, r in by.items():
            lines.append(
                f"| {t} | `{m}` | {r['final_normalised_mse_mean']:.4f} | {r['final_worst_over_best_task']:.1f} |"
            )
    lines += ["", f"![GradNorm toy]({Path(args.out).name}.png)"]
    # .json and .md, each with its provenance
    script_checks.write_results(Path(args.out), record, lines, study_cells, args.allow_fewer_cells)


if __name__ == "__main__":
    main()
