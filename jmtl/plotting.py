"""PNG plots of a training run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# One JSONL reader for the whole library: it skips (with a warning) the partial last line a killed run leaves.
from jmtl.runs.metric_writers import read_jsonl as _read_jsonl  # noqa: E402

MAX_LEGEND = 12  # more tasks than this: no legend (139 School tasks would bury the curves)


def plot_training(workdir: str | Path, task_names: Sequence[str]) -> list[Path]:
    """Per-task training losses, task weights, and per-task validation/test metrics over steps."""
    workdir = Path(workdir)
    out_dir = workdir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    train = _read_jsonl(workdir / "train_log.jsonl")
    if train:
        steps = np.array([r["step"] for r in train])
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for k, name in enumerate(task_names):
            axes[0].plot(steps, [r["losses"][k] for r in train], label=name)
            axes[1].plot(steps, [r["weights"][k] if r["weights"][k] is not None else np.nan for r in train], label=name)
        axes[0].set(title="training loss per task", xlabel="step", yscale="log")
        axes[1].set(title="task weights", xlabel="step")
        for ax in axes:
            if len(task_names) <= MAX_LEGEND:
                ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(out_dir / "losses_and_weights.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    evals = _read_jsonl(workdir / "metrics.jsonl")
    if evals:
        metric_names = sorted({m for r in evals for m in r.get("validation", {}).get(task_names[0], {})})
        fig, axes = plt.subplots(1, len(metric_names), figsize=(5.5 * len(metric_names), 4), squeeze=False)
        steps = [r["step"] for r in evals]
        for ax, metric in zip(axes[0], metric_names):
            for name in task_names:
                for split, style in (("validation", "-"), ("test", "--")):
                    vals = [r.get(split, {}).get(name, {}).get(metric, np.nan) for r in evals]
                    ax.plot(steps, vals, style, label=f"{name} ({split})")
            ax.set(title=metric, xlabel="step")
            # Tasks on different scales (regression errors, losses) stay readable on a log axis.
            values = [v for line in ax.get_lines() for v in line.get_ydata() if np.isfinite(v)]
            if metric != "accuracy" and values and min(values) > 0 and max(values) / min(values) > 20:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            if len(task_names) <= MAX_LEGEND:
                ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out_dir / "eval_metrics.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def plot_relation_matrix(
    matrix: np.ndarray, task_names: Sequence[str], path: str | Path, title: str = "task-relation matrix W"
) -> Path:
    """Heatmap of a K x K task-relation matrix with task names on both axes."""
    matrix = np.asarray(matrix)
    k = matrix.shape[0]
    # Capped: at K = 139 (School) the uncapped size would be a 77 x 70 inch figure.
    fig, ax = plt.subplots(figsize=(min(1.0 + 0.55 * k, 14.0), min(0.8 + 0.5 * k, 12.0)))
    lim = float(np.max(np.abs(matrix))) or 1.0
    im = ax.imshow(matrix, cmap="RdBu_r", vmin=-lim, vmax=lim)
    if k <= 40:
        ax.set_xticks(range(k), task_names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), task_names, fontsize=8)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
