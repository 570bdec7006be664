"""Median ms per train step of every weighting scheme, vs equal weighting and the bare Jacobian step.

Multi-LeNet, batch 256, MultiMNIST shapes; K = 2 and K = 10 (ten heads on the same encoder). The
*bare Jacobian step* computes the per-task Jacobian (one vjp + vmap) and applies unit weights: it is
the floor for every gradient method, whose own cost is the combination on top. All rows of one K are
timed round-robin in the same run (ratios are within-run), after warm-up.

    python -m experiments.bench.weighting [--ks 2,10] [--repeats 15] [--methods mgda,pcgrad]   # results/bench/bench_weighting.{json,md}
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.common import RESULTS, lenet_step, provenance, spread, time_round_robin, write_outputs
from jmtl import weighting
from jmtl.training import builders

BARE = "(bare Jacobian step)"


def bare_jacobian() -> weighting.WeightingTransform:
    """Requests the Jacobian and returns unit weights: the Jacobian step without a combination."""

    def update(inputs: weighting.JacobianInputs, state):
        return weighting.WeightingOutput(weights=jnp.ones_like(inputs.losses), extra_loss=0.0), state

    return weighting.WeightingTransform(lambda num_tasks, **_: (), update, weighting.JACOBIAN)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="2,10")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--methods", default="all")
    parser.add_argument("--chunk", type=int, default=-1, help="jacobian_chunk_size; -1: auto (1 on CPU)")
    parser.add_argument("--out", default=str(RESULTS / "bench_weighting"), help="path prefix of the .json and .md")
    args = parser.parse_args(argv)
    methods = weighting.names() if args.methods == "all" else args.methods.split(",")
    chunk = builders.jacobian_chunk_size(args.chunk)

    results = {
        "meta": {
            "batch": args.batch,
            "repeats": args.repeats,
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(),
            "jacobian_chunk_size": chunk,
        },
        "by_k": {},
    }
    for k in [int(x) for x in args.ks.split(",")]:
        fns, compile_s, requires, errors = {}, {}, {}, {}
        for name in [BARE, *methods]:
            try:
                # Auto-Lambda's look-ahead learning rate defaults to the optimizer's (Adam 1e-3 here).
                extra = (
                    {"lookahead_lr": 1e-3} if name != BARE and "lookahead_lr" in weighting.hyperparameters(name) else {}
                )
                t = bare_jacobian() if name == BARE else weighting.get(name, **extra)
                if name == "krum" and k < 5:
                    raise ValueError("krum needs K >= 2f+3")
                fns[name], compile_s[name], _ = lenet_step(t, args.batch, num_tasks=k, chunk=chunk)
                requires[name] = t.requires
            except Exception as e:  # a method that cannot run at this K is reported, not fatal
                errors[name] = f"{type(e).__name__}: {e}"[:300]
            print(f"K={k} compiled {name} ({compile_s.get(name, float('nan')):.1f}s)", flush=True)
        samples = time_round_robin(fns, args.repeats, warmup=2)
        med = {n: float(np.median(s) * 1e3) for n, s in samples.items()}
        rows = {
            n: {
                "requires": requires[n],
                **spread(samples[n]),
                "vs_equal": med[n] / med["equal"] if "equal" in med else None,
                "vs_bare_jacobian": med[n] / med[BARE],
                "compile_s": compile_s[n],
            }
            for n in med
        }
        results["by_k"][str(k)] = {"rows": rows, "errors": errors}
    prov = provenance()
    results["meta"]["load_average_end"] = prov["load_average_end"]
    lines = [
        "# Train-step time of every weighting scheme (Multi-LeNet, batch 256)",
        "",
        f"jax {jax.__version__}, {results['meta']['backend']}, {os.cpu_count()} cores; {args.repeats} round-robin "
        f"repeats per row; per-task gradients in chunks of {chunk or 'K (one vmap)'}; load average at the end {', '.join(f'{x:.1f}' for x in results['meta']['load_average_end'])}. "
        "Goals: gradient methods <= 1.25x the bare Jacobian step, loss-level methods <= 1.1x equal weighting. "
        "Bilevel schemes (look-ahead step, meta batch) have no goal; their cost is shown against equal weighting.",
    ]
    for k, res in results["by_k"].items():
        lines += [
            "",
            f"## K = {k}",
            "",
            "| method | needs | median ms | p10 / p90 | vs equal | vs bare Jacobian | goal met |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for n, r in sorted(res["rows"].items(), key=lambda kv: kv[1]["median_ms"]):
            if n == BARE or r["requires"] == "bilevel":  # bilevel schemes have no target (extra passes by design)
                goal = ""
            elif r["requires"] == "losses":
                goal = "yes" if r["vs_equal"] is not None and r["vs_equal"] <= 1.1 else "no"
            else:
                goal = "yes" if r["vs_bare_jacobian"] <= 1.25 else "no"
            ve = "—" if r["vs_equal"] is None else f"{r['vs_equal']:.2f}"
            lines.append(
                f"| `{n}` | {r['requires']} | {r['median_ms']:.1f} | {r['p10_ms']:.0f} / {r['p90_ms']:.0f} | "
                f"{ve} | {r['vs_bare_jacobian']:.2f} | {goal} |"
            )
        for n, e in res["errors"].items():
            lines.append(f"| `{n}` | — | failed: {e} | | | | |")
    write_outputs(Path(args.out), results, lines, prov)


if __name__ == "__main__":
    main()
