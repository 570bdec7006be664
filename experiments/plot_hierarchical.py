"""Learning curves of a hierarchical-tagging sweep: validation score per epoch, mean ± sample std over seeds.

Reads ``WORKDIR/VARIANT_seedS/metrics.jsonl`` (written by ``experiments/hierarchical_tagging.py``) for
the runs listed in ``PREFIX.json`` and writes ``PREFIX.curves.png`` and ``PREFIX.curves.md``.

    python -m experiments.plot_hierarchical --workdir /tmp/hsg --results results/hierarchical/sg --task chunk
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from jmtl.metrics.summary import mean_sd_text
from jmtl.runs.metric_writers import read_jsonl


def score(scores: dict, task: str) -> float:
    s = scores[task]
    return 100 * s.get("f1", s["accuracy"])


def curves(workdir: Path, records: list[dict], task: str, split: str = "validation") -> dict[str, np.ndarray]:
    """``{variant: [seeds, epochs]}`` of ``task``'s score on ``split`` (runs lacking the task are skipped)."""
    by_variant: dict[str, list[list[float]]] = defaultdict(list)
    for r in records:
        path = workdir / f"{r['variant']}_seed{r['seed']}" / "metrics.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"{path} (run {r['variant']} seed {r['seed']} of the results file)")
        lines = read_jsonl(path)
        if lines and task in lines[0][split]:
            by_variant[r["variant"]].append([score(rec[split], task) for rec in lines])
    out = {}
    for v, runs in by_variant.items():
        n = min(len(x) for x in runs)
        out[v] = np.asarray([x[:n] for x in runs])
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--results", required=True, help="path prefix of the sweep's .json")
    parser.add_argument("--task", required=True)
    parser.add_argument("--split", default="validation")
    args = parser.parse_args(argv)
    records = json.loads(Path(args.results + ".json").read_text())
    data = curves(Path(args.workdir), records, args.task, args.split)
    if not data:
        raise SystemExit(f"no run in {args.results}.json has task {args.task!r}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for v, arr in data.items():
        x = np.arange(1, arr.shape[1] + 1)
        mean, std = arr.mean(0), (arr.std(0, ddof=1) if len(arr) > 1 else np.zeros(arr.shape[1]))
        ax.plot(x, mean, marker="o", label=f"{v} ({arr.shape[0]} seed{'s' if arr.shape[0] > 1 else ''})")
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{args.task} {'F1' if args.task != 'pos' else 'accuracy'} ({args.split}, %)")
    ax.grid(alpha=0.3)
    ax.legend()
    lo = min(np.percentile(arr, 10) for arr in data.values())
    hi = max(arr.max() for arr in data.values())
    ax.set_ylim(lo - 1, hi + 0.5)
    fig.tight_layout()
    fig.savefig(args.results + ".curves.png", dpi=120)

    epochs = max(arr.shape[1] for arr in data.values())
    lines = [
        f"{args.split.capitalize()} {args.task} score per epoch (%), mean ± sample std over seeds.",
        "",
        "| epoch | " + " | ".join(data) + " |",
        "|---:|" + "---|" * len(data),
    ]

    def cell(arr, e):
        if e >= arr.shape[1]:
            return "–"
        return mean_sd_text(arr[:, e])  # sample std

    for e in range(epochs):
        cells = [cell(arr, e) for arr in data.values()]
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    Path(args.results + ".curves.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
