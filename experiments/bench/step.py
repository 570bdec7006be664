"""Median ms per train step: jmtl's joint step vs an equivalent plain PyTorch step, in one run.

MultiMNIST shapes (batch 256, [28, 28, 1] images, 2 tasks), Multi-LeNet, Adam. Rows:

* jmtl equal weighting (one backward of the sum of losses);
* jmtl MGDA (per-task Jacobian of the shared params by one vjp + vmap, Frank-Wolfe/closed form);
* jmtl MGDA-UB (representation-level Jacobian, one weighted backward through the encoder);
* PyTorch (a): forward, sum of losses, one backward, Adam step (the reference for equal weighting);
* PyTorch (b): K backward passes collecting per-task gradients, the way the PyTorch MTL libraries
  do it (the reference for gradient methods).

All rows are timed round-robin (so a shared machine's drifts hit them alike), after warm-up, each
call ending in ``block_until_ready``. PyTorch is optional (``experiments/bench/requirements.txt``).

    python -m experiments.bench.step [--repeats 40] [--batch 256]   # results/bench/bench_step.{json,md}
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import jax

from experiments.bench.common import (
    RESULTS,
    fmt,
    lenet_step,
    provenance,
    spread,
    time_round_robin,
    torch_setup,
    write_outputs,
)

TORCH_A = "PyTorch (a) equal: sum, 1 backward"
TORCH_B = "PyTorch (b) K backward passes"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true", help="leave out the PyTorch rows")
    parser.add_argument("--out", default=str(RESULTS / "bench_step"), help="path prefix of the .json and .md")
    args = parser.parse_args(argv)

    fns, compile_s = {}, {}
    for label, method, mode in (
        ("jmtl equal weighting", "equal", "params"),
        ("jmtl MGDA (param Jacobian)", "mgda", "params"),
        ("jmtl MGDA-UB (representation)", "mgda", "representation"),
    ):
        fns[label], compile_s[label], _ = lenet_step(method, args.batch, mode=mode)

    torch_ref, torch_note = torch_setup(args.batch, not args.no_torch)
    if torch_ref is not None:
        timers = torch_ref.reference_timers(2, args.batch, "adam")
        fns[TORCH_A] = timers["torch step (a) equal weighting"]
        fns[TORCH_B] = timers["torch step (b) per-task grads"]

    samples = time_round_robin(fns, args.repeats, warmup=args.warmup)
    rows = {name: {**spread(s), "compile_s": compile_s.get(name)} for name, s in samples.items()}
    ref_a = rows.get(TORCH_A, {}).get("median_ms")
    ref_b = rows.get(TORCH_B, {}).get("median_ms")
    for name, r in rows.items():
        r["vs_torch_a"] = r["median_ms"] / ref_a if ref_a else None
        r["vs_torch_b"] = r["median_ms"] / ref_b if ref_b else None

    prov = provenance()
    meta = {
        "batch": args.batch,
        "repeats": args.repeats,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "tasks": 2,
        "load_average": prov["load_average_end"],
        "torch": torch_note,
    }
    lines = [
        "# Train-step time: jmtl vs plain PyTorch (Multi-LeNet, MultiMNIST shapes)",
        "",
        f"Batch {args.batch}, 2 tasks, Adam; {args.repeats} round-robin repeats after warm-up; "
        f"jax {jax.__version__} on {meta['backend']} ({meta['cpu_count']} cores, load average at the end "
        f"{', '.join(f'{x:.1f}' for x in meta['load_average'])}); {torch_note}. compile s: lowering + XLA compile.",
        "",
        "| step | median ms | p10 / p90 ms | vs PyTorch (a) | vs PyTorch (b) | compile s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['median_ms']:.2f} | {r['p10_ms']:.1f} / {r['p90_ms']:.1f} | {fmt(r['vs_torch_a'])} | "
            f"{fmt(r['vs_torch_b'])} | {fmt(r['compile_s'])} |"
        )
    write_outputs(Path(args.out), {"meta": meta, "rows": rows}, lines, prov)


if __name__ == "__main__":
    main()
