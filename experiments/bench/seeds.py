r"""S seeds trained in one program (``config.num_seeds``) vs S separate runs, same steps.

Both sides run ``experiments.train.train`` in this process, end to end (data loading, compilation,
the steps, one evaluation at the end), so the ratio is what a user waits for. The steady-state step
rate is separated from the fixed costs by timing two lengths, N and 2N steps:
``per_step = (T(2N) - T(N)) / N``.

    python -m experiments.bench.seeds [--configs toy,multimnist] [--seeds 8] [--steps toy:1000,multimnist:100]

Writes ``results/bench/bench_seeds.{json,md}`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import jax
from absl import logging

from experiments.bench.common import RESULTS, ROOT, provenance, write_outputs
from experiments.configs import gradnorm_toy, multimnist
from jmtl.training.loop import train

CONFIGS = {"toy": gradnorm_toy.get_config, "multimnist": multimnist.get_config}


def _config(name: str, steps: int, seeds: int, seed: int, method: str, mode: str = "vmap"):
    c = CONFIGS[name](method)
    c.seeds_mode = mode
    c.num_steps, c.eval_every_steps, c.checkpoint_every_steps = steps, steps, steps
    c.log_every_steps, c.progress_bar, c.parallel = steps, False, "single"
    c.num_seeds, c.seed = seeds, seed
    if name == "multimnist":
        c.dataset.data_dir = os.environ.get("JMTL_DATA_DIR", str(ROOT.parent / "shared/data"))
    c.dataset.cache_dir = os.environ.get("JMTL_CACHE_DIR", "")
    return c


def _wall(name: str, steps: int, seeds: int, method: str, separate: bool, mode: str = "vmap") -> float:
    """Seconds for S seeds: one program with num_seeds=S, or S runs one after another."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if separate:
            for i in range(seeds):
                train(_config(name, steps, 1, i, method), f"{tmp}/run{i}")
        else:
            train(_config(name, steps, seeds, 0, method, mode), f"{tmp}/all")
        return time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="toy,multimnist")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", default="toy:1000,multimnist:100", help="N per config")
    parser.add_argument("--methods", default="equal,mgda")
    parser.add_argument("--modes", default="vmap", help="seeds modes of the one-program side: vmap,map")
    parser.add_argument("--out", default=str(RESULTS / "bench_seeds"), help="path prefix of the .json and .md")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    steps = {k: int(v) for k, v in (x.split(":") for x in args.steps.split(","))}
    out = {
        "meta": {
            "seeds": args.seeds,
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(),
            "steps": steps,
        },
        "rows": [],
    }
    for name in args.configs.split(","):
        # Dataset caches built and read once before timing: the first load of a split is not a per-run cost
        # of either side.
        train(_config(name, 2, 1, 0, "equal"), tempfile.mkdtemp())
    for name in args.configs.split(","):
        n = steps[name]
        for method in args.methods.split(","):
            row = {"config": name, "method": method, "steps": n, "seeds": args.seeds}
            modes = args.modes.split(",")
            sides = [(f"one_program_{m}", False, m) for m in modes] + [("separate_runs", True, "vmap")]
            for label, separate, mode in sides:
                t1 = _wall(name, n, args.seeds, method, separate, mode)
                t2 = _wall(name, 2 * n, args.seeds, method, separate, mode)
                row[label] = {
                    "wall_s_N": t1,
                    "wall_s_2N": t2,
                    "ms_per_step_all_seeds": (t2 - t1) / n * 1000,
                    "fixed_s": 2 * t1 - t2,
                }
                print(name, method, label, json.dumps(row[label]), flush=True)
            for m in modes:
                one, sep = row[f"one_program_{m}"], row["separate_runs"]
                out["rows"].append(
                    {
                        **row,
                        "mode": m,
                        "one_program": one,
                        "speedup_wall_N": sep["wall_s_N"] / one["wall_s_N"],
                        "speedup_wall_2N": sep["wall_s_2N"] / one["wall_s_2N"],
                        "speedup_steady": sep["ms_per_step_all_seeds"] / one["ms_per_step_all_seeds"],
                    }
                )
    prov = provenance()
    out["meta"]["load_avg_end"] = prov["load_average_end"]
    lines = [
        f"# {args.seeds} seeds in one program vs {args.seeds} separate runs",
        "",
        f"jax {jax.__version__}, {jax.default_backend()}, {os.cpu_count()} cores; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in out['meta']['load_avg_end'])}. Each side runs `experiments.train.train` "
        "end to end (data, compile, steps, one evaluation); steady-state ms/step = (T(2N) - T(N)) / N for all seeds.",
        "",
        "| config | method | seeds mode | N | one program: wall N / 2N (s) | separate: wall N / 2N (s) | steady ms/step one / separate | speedup wall (2N) | speedup steady |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["rows"]:
        a, b = r["one_program"], r["separate_runs"]
        lines.append(
            f"| {r['config']} | `{r['method']}` | {r['mode']} | {r['steps']} | {a['wall_s_N']:.1f} / {a['wall_s_2N']:.1f} | "
            f"{b['wall_s_N']:.1f} / {b['wall_s_2N']:.1f} | {a['ms_per_step_all_seeds']:.1f} / {b['ms_per_step_all_seeds']:.1f} | "
            f"{r['speedup_wall_2N']:.2f}× | {r['speedup_steady']:.2f}× |"
        )
    write_outputs(Path(args.out), out, lines, prov)


if __name__ == "__main__":
    main()
