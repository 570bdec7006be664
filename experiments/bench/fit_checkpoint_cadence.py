"""What ``jmtl.fit``'s checkpoint cadence costs on small data: per epoch (the old default) vs by time
(the default since issue 23: at most every ``checkpoint_every_minutes`` = 5, and at the end).

The problem is the issue's: a 3,000-example, 7-task regression (inputs 16-dimensional, targets
random linear functions plus noise), an MLP trunk (64, 64) with one linear head per task, Adam 1e-3,
batch 100 (30 steps per epoch), equal weighting, an evaluation per epoch. Each repeat runs both
cadences in a fresh workdir, in a shuffled order (the machine is shared: drifts hit both alike); the
report gives medians, the per-repeat paired ratio, and the checkpoint time each run's summary reports.

    python -m experiments.bench.fit_checkpoint_cadence            # writes results/bench/fit_checkpoint_cadence.{md,json}
    python -m experiments.bench.fit_checkpoint_cadence --repeats 1 --epochs 2 --out /tmp/cadence
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments.bench import common

TASKS, N_TRAIN, N_EVAL, DIM, BATCH = 7, 3000, 500, 16, 100


def problem(seed: int = 0):
    """Train / validation / test arrays of the 7-task regression."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(DIM, TASKS))

    def split(n):
        x = rng.normal(size=(n, DIM)).astype(np.float32)
        y = x @ w + 0.1 * rng.normal(size=(n, TASKS))
        return {"x": x, **{f"t{k}": y[:, k].astype(np.float32) for k in range(TASKS)}}

    return split(N_TRAIN), split(N_EVAL), split(N_EVAL)


def make_model():
    import flax.linen as nn

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x, *, train: bool = False):
            h = nn.relu(nn.Dense(64)(nn.relu(nn.Dense(64, name="shared")(x))))
            return {f"t{k}": nn.Dense(1, name=f"head{k}")(h)[:, 0] for k in range(TASKS)}

    return Model()


def run_once(cadence: str, epochs: int, data, workdir: Path) -> dict:
    import jmtl

    train, val, test = data
    tasks = [jmtl.Task(f"t{k}", "regression", 1) for k in range(TASKS)]
    extra = {"checkpoint_every_steps": N_TRAIN // BATCH} if cadence == "per_epoch" else {}
    t0 = time.perf_counter()
    summary, _ = jmtl.fit(
        make_model(),
        tasks,
        train,
        validation=val,
        test=test,
        workdir=workdir,
        batch_size=BATCH,
        num_epochs=epochs,
        progress_bar=False,
        **extra,
    )
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "checkpoint_time_s": summary["checkpoint_time_s"],
        "checkpoints_saved": summary["checkpoints_saved"],
        "steps": summary["steps"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default=str(common.RESULTS / "fit_checkpoint_cadence"))
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.epochs < 1:
        parser.error("--repeats and --epochs must be >= 1")
    prov = common.provenance()  # the commit and the tree's state at the start
    data = problem()
    cadences = ["per_epoch", "by_time"]
    runs: dict[str, list[dict]] = {c: [] for c in cadences}
    rng = random.Random(0)
    root = Path(tempfile.mkdtemp(prefix="jmtl_cadence_"))
    try:
        for r in range(args.repeats):
            order = list(cadences)
            rng.shuffle(order)
            for c in order:
                wd = root / f"{c}_{r}"
                runs[c].append(run_once(c, args.epochs, data, wd))
                shutil.rmtree(wd, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {
        c: {k: float(np.median([x[k] for x in runs[c]])) for k in ("wall_s", "checkpoint_time_s", "checkpoints_saved")}
        for c in cadences
    }
    ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(runs["per_epoch"], runs["by_time"])]
    steps = runs["by_time"][0]["steps"]
    result = {
        "problem": {
            "tasks": TASKS,
            "n_train": N_TRAIN,
            "n_eval": N_EVAL,
            "dim": DIM,
            "batch_size": BATCH,
            "epochs": args.epochs,
            "steps": steps,
            "model": "MLP 64-64, linear heads",
            "optimizer": "adam 1e-3",
        },
        "repeats": args.repeats,
        "runs": runs,
        "median": med,
        "paired_ratio_per_epoch_over_by_time": ratios,
    }
    lines = [
        "# jmtl.fit: checkpoint cadence on small data",
        "",
        f"{N_TRAIN:,}-example, {TASKS}-task regression, batch {BATCH}, {args.epochs} epochs ({steps} steps, an "
        f"evaluation per epoch), {args.repeats} interleaved repeats per cadence; wall time of the whole "
        "`jmtl.fit` call (compilation included), checkpoint time as the run's summary reports it.",
        "",
        "| cadence | checkpoints | checkpoint time (s, median) | fit wall time (s, median) |",
        "|---|---:|---:|---:|",
        f"| every epoch (old default) | {med['per_epoch']['checkpoints_saved']:.0f} | "
        f"{med['per_epoch']['checkpoint_time_s']:.2f} | {med['per_epoch']['wall_s']:.2f} |",
        f"| by time, <= every 5 min + at the end (default) | {med['by_time']['checkpoints_saved']:.0f} | "
        f"{med['by_time']['checkpoint_time_s']:.2f} | {med['by_time']['wall_s']:.2f} |",
        "",
        f"Paired ratio (every epoch / by time), per repeat: {', '.join(f'{x:.2f}' for x in ratios)}; "
        f"median {np.median(ratios):.2f}.",
    ]
    prov = {**prov, **{k: v for k, v in common.provenance().items() if k in ("date", "load_average_end")}}
    common.write_outputs(args.out, result, lines, prov)


if __name__ == "__main__":
    main()
