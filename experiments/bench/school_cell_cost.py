r"""Where a School leaderboard cell's CPU seconds go, and what XLA's persistent compilation cache saves.

    python -m experiments.bench.school_cell_cost                                # equal and mgda, 100 steps
    python -m experiments.bench.school_cell_cost --steps 25 --out /tmp/cost     # a shorter cell

A cell is the leaderboard's (``experiments/configs/leaderboard.py``, benchmark ``school_s0``): one
scheme, 5 seeds vmapped in one program, 100 full-batch Adam steps, evaluated every 25 steps, with its
checkpoints and plots, trained by :func:`jmtl.training.loop.train` exactly as the board trains it.
Each run is its own child process, so its CPU time (user + system, ``getrusage(RUSAGE_CHILDREN)``)
is the whole cell's: start-up, tracing, XLA compilation, data, steps, evaluation, checkpoints.
Inside the child, the trainer's phases are timed with this process's CPU clock:

* ``setup``: building the experiment (data, model init) before the train loop;
* ``first_step``: tracing + compiling + running the first train step (blocked until done);
* ``steps``: every later step, each blocked until done (so its CPU is not billed to what follows);
* ``data``, ``pack``: the host batch (5 seeds' batches stacked) and its packing into a few arrays;
* ``evaluate`` (its first call compiles the eval step), ``checkpoint``, ``plots``.

Runs go in one interleaved order: ``equal`` without a cache, ``equal`` with an empty cache (it
fills it), ``mgda`` without, ``mgda`` with the cache ``equal`` filled (the eval program is the same
for every scheme of a benchmark: only its compile is saved), and ``equal`` again with the cache (a
resumed or repeated cell: both programs hit). Outputs are bitwise those of the run without a cache
(the SHA-256 of the final params is recorded per run). Writes ``--out``.json/.md with provenance.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from experiments.bench import common

OUT = common.RESULTS / "school_cell_cost"
BENCHMARK = "school_s0"
SEEDS = 5
PHASES = ("setup", "first_step", "steps", "data", "pack", "evaluate", "checkpoint", "plots")
# (scheme, cache): None = no cache; "cold" = an empty cache this run fills; "warm" = the cache the
# earlier runs filled.
ORDER = (("equal", None), ("equal", "cold"), ("mgda", None), ("mgda", "warm"), ("equal", "warm"))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(method: str, steps: int, workdir: str, cache_dir: str) -> dict:
    """Trains one cell with its phases timed; returns ``{phases, params_sha256, steps}``."""
    import jax
    import numpy as np

    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        # Every compiled program is written: the train step takes tens of seconds, the eval a few.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    from experiments.configs import leaderboard as benchmarks
    from jmtl.drivers import leaderboard
    from jmtl.training import loop, packing, seeds

    benchmarks.register_all()
    _, cells = leaderboard.cells_of(leaderboard.BENCHMARKS[BENCHMARK], [method], SEEDS)
    ((_, config),) = [x for x in cells if x[0].endswith("__" + method)]
    config.num_steps = steps
    acc: dict[str, float] = defaultdict(float)

    def timed(key, f):
        def g(*args, **kwargs):
            t = _cpu()
            try:
                return f(*args, **kwargs)
            finally:
                acc[key] += _cpu() - t

        return g

    trainer = loop._Trainer
    trainer.evaluate = timed("evaluate", trainer.evaluate)
    trainer.save = timed("checkpoint", trainer.save)
    trainer.plots_action = timed("plots", trainer.plots_action)
    seeds.StackedIterator.__next__ = timed("data", seeds.StackedIterator.__next__)
    packing.LeafPacker.pack = timed("pack", packing.LeafPacker.pack)
    run_loop = trainer.loop

    def timed_loop(self):
        acc["setup"] = _cpu() - start
        step, calls = self.train_step, [0]

        def blocked_step(*args):
            t = _cpu()
            out = jax.block_until_ready(step(*args))
            acc["first_step" if calls[0] == 0 else "steps"] += _cpu() - t
            calls[0] += 1
            return out

        self.train_step = blocked_step
        return run_loop(self)

    trainer.loop = timed_loop
    start = _cpu()
    result = loop.train(config, workdir)
    total = _cpu() - start
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(result[1].params):
        digest.update(np.asarray(leaf).tobytes())
    phases = {k: acc.get(k, 0.0) for k in PHASES}
    phases["other"] = total - sum(phases.values())
    return {"phases": phases, "params_sha256": digest.hexdigest()[:16], "steps": steps}


def run_one(method: str, steps: int, cache_dir: str, scratch: Path) -> dict:
    """One cell in a child process: its CPU (user + system) and wall seconds, and its phases."""
    workdir = scratch / f"cell_{method}_{len(list(scratch.iterdir()))}"
    cmd = [sys.executable, "-m", "experiments.bench.school_cell_cost", "--child", method, "--steps", str(steps)]
    cmd += ["--workdir", str(workdir), "--cache_dir", cache_dir]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=common.ROOT)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"cell {method} failed:\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("CELL ")][-1]
    shutil.rmtree(workdir, ignore_errors=True)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_s": cpu, "wall_s": wall, **json.loads(line[len("CELL ") :])}


def markdown(rows: list[dict], steps: int) -> list[str]:
    lines = [
        "# School leaderboard cell: where the CPU seconds go",
        "",
        f"One `{BENCHMARK}` cell ({SEEDS} seeds vmapped, {steps} full-batch steps, eval every 25, checkpoints, "
        "plots), each run its own process; CPU = user + system of that process. Phases: the trainer's, by this "
        "process's CPU clock (steps blocked until done). Cache: XLA's persistent compilation cache "
        "(`jax_compilation_cache_dir`); `cold` = empty (this run fills it), `warm` = filled by the runs above.",
        "",
        "| # | scheme | cache | CPU s | wall s | " + " | ".join(PHASES) + " | other | params sha256 |",
        "|---|---|---|---|---|" + "---|" * len(PHASES) + "---|---|",
    ]
    for i, r in enumerate(rows, 1):
        ph = r["phases"]
        lines.append(
            f"| {i} | {r['method']} | {r['cache'] or 'none'} | {r['cpu_s']:.1f} | {r['wall_s']:.0f} | "
            + " | ".join(f"{ph[k]:.1f}" for k in PHASES)
            + f" | {ph['other']:.1f} | `{r['params_sha256']}` |"
        )
    lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="train steps per cell (the board's: 100)")
    parser.add_argument("--out", default=None, help=f"output path without suffix (.json, .md); default {OUT}")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--cache_dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 25:
        parser.error(f"--steps must be >= 25 (one evaluation), got {args.steps}")
    if args.child:
        print("CELL " + json.dumps(child(args.child, args.steps, args.workdir, args.cache_dir)), flush=True)
        return
    out = common.output_path(parser, args, OUT)
    started = common.started_now()
    rows = []
    with tempfile.TemporaryDirectory(prefix="school_cell_cost_") as tmp:
        scratch, cache = Path(tmp) / "cells", Path(tmp) / "xla_cache"
        scratch.mkdir()
        for method, mode in ORDER:
            r = run_one(method, args.steps, str(cache) if mode else "", scratch)
            rows.append({"method": method, "cache": mode, **r})
            print(f"{method} cache={mode}: {r['cpu_s']:.1f} CPU s, {r['wall_s']:.0f} s wall", flush=True)
    record = {
        "benchmark": BENCHMARK,
        "seeds": SEEDS,
        "steps": args.steps,
        "order": [list(x) for x in ORDER],
        "rows": rows,
        "env": {k: os.environ.get(k, "") for k in ("JAX_PLATFORMS", "XLA_FLAGS")},
    }
    common.write_outputs(out, record, markdown(rows, args.steps), common.provenance(started=started))


if __name__ == "__main__":
    main()
