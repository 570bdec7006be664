r"""The training loop's step rate at K = 139 (School, hard sharing, equal weighting, batch 512) with
the batch's 279 label and mask entries sent as they are vs packed into a few arrays
(``jmtl/training/packing.py``). Runs alternate (off, on, off, on, ...) in one process; the rate of
each run is its steps after the first evaluation interval (which holds the compilation) over their
training time.

    python -m experiments.bench.many_task_loop --rounds 3 --steps 200

Writes ``results/bench/many_task_loop.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

import numpy as np

from experiments.bench import common

OUT = common.ROOT / "results" / "bench" / "many_task_loop"


def run_once(packed: bool, steps: int, data_dir: str, parallel: str) -> float:
    """Seconds per step after the first interval, one loop run."""
    from experiments.configs import school_tasks
    from jmtl.training import loop, packing

    c = school_tasks.get_config("hps_linear,equal")
    c.dataset.data_dir = data_dir
    c.batch_size, c.num_steps, c.eval_every_steps, c.log_every_steps = 512, steps, steps // 4, steps // 4
    c.parallel = parallel
    exp = dataclasses.replace(loop.build_experiment(c), plots=False)
    saved = packing.MIN_LEAVES
    packing.MIN_LEAVES = 16 if packed else 10**9
    try:
        with tempfile.TemporaryDirectory() as d:
            summary, _ = loop.run(exp, c, d)
    finally:
        packing.MIN_LEAVES = saved
    intervals = summary["train_time_per_eval_s"][1:]
    return float(np.sum(intervals) / (len(intervals) * (steps // 4)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir", default=os.environ.get("JMTL_DATA_DIR", str(common.ROOT.parent / "shared" / "data"))
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--parallel", default="shard_map")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    runs = {"as is": [], "packed": []}
    for r in range(args.rounds):
        for name in ("as is", "packed") if r % 2 == 0 else ("packed", "as is"):
            runs[name].append(run_once(name == "packed", args.steps, args.data_dir, args.parallel))
            print(f"round {r}: {name} {1e3 * runs[name][-1]:.1f} ms/step", flush=True)
    med = {k: float(np.median(v)) for k, v in runs.items()}
    lines = [
        "# The loop at K = 139: label entries sent as they are vs packed",
        "",
        f"School, hard sharing, equal weighting, batch 512, driver `{args.parallel}` on one CPU device; "
        f"{args.rounds} alternating rounds of a {args.steps}-step run each; ms per step after the first "
        "evaluation interval (compilation excluded), median over rounds.",
        "",
        "| batch entries | ms / step (median) | each round |",
        "|---|---:|---|",
        *[f"| {k} | {1e3 * med[k]:.1f} | {', '.join(f'{1e3 * x:.1f}' for x in v)} |" for k, v in runs.items()],
        "",
        f"Packed / as is: {med['packed'] / med['as is']:.2f}.",
    ]
    common.write_outputs(
        args.out, {"seconds_per_step": runs, "median": med, "steps": args.steps, "parallel": args.parallel}, lines
    )
    return med


if __name__ == "__main__":
    main()
