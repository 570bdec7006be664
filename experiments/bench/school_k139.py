r"""Every weighting scheme's train step at K = 139 tasks (School, hard sharing, minibatch 512):
its gradient path, XLA's memory estimate and its step time, timed round-robin in one process.

    python -m experiments.bench.school_k139 --data-dir ../shared/data            # all methods
    python -m experiments.bench.school_k139 --methods equal,mgda --repeats 3     # a subset

Each method's step is built exactly as the training loop builds it (``loop.build_experiment`` on
``experiments/configs/school_tasks.py``'s ``hps_linear`` variant, jitted on one device), compiled
once, then called on the same batch and state: every round calls every step once in a fresh random
order (``common.time_round_robin``), so the machine's drifts hit all rows alike. A method that
refuses to build (a clear error) or fails to compile is recorded with its message, not dropped.
Writes ``results/school/k139_step_time.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import time
import traceback
from pathlib import Path

import jax

from experiments.bench import common

OUT = common.ROOT / "results" / "school" / "k139_step_time"


def build(method: str, data_dir: str, batch_size: int):
    """(compiled step, state, batch, record) for one method, as the loop builds it."""
    from experiments.configs import school_tasks
    from jmtl.training import loop
    from jmtl.training import step as step_lib

    config = school_tasks.get_config(f"hps_linear,{method}")
    config.dataset.data_dir = data_dir
    config.batch_size = batch_size
    if method == "static":
        config.weighting.hparams.weights = (1.0,) * 139
    exp = loop.build_experiment(config)
    path = step_lib.make_gradient_path(exp.model, exp.tasks, exp.weighting, exp.step_config, None)
    step = jax.jit(step_lib.make_train_step(exp.model, exp.tasks, exp.weighting, exp.optimizer, exp.step_config))
    state = step_lib.init_state(exp.model, exp.weighting, exp.optimizer, exp.example_input, len(exp.tasks), 0)
    batch = jax.device_put(next(exp.train_iterator(0)))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    record = {
        "method": method,
        "status": "ran",
        "path": type(path).__name__,
        "requires": exp.weighting.requires,
        "compile_s": compile_s,
        "memory": common.memory_mib(compiled),
        "num_tasks": len(exp.tasks),
    }
    return compiled, state, batch, record


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir", default=os.environ.get("JMTL_DATA_DIR", str(common.ROOT.parent / "shared" / "data"))
    )
    parser.add_argument("--methods", default="", help="comma-separated; default: every registered method")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    from jmtl import weighting

    methods = args.methods.split(",") if args.methods else weighting.names()
    records, fns = {}, {}
    for m in methods:
        t0 = time.perf_counter()
        try:
            compiled, state, batch, rec = build(m, args.data_dir, args.batch_size)
            fns[m] = lambda c=compiled, s=state, b=batch: jax.block_until_ready(c(s, b))
        except Exception as e:  # noqa: BLE001  (a refusal or a failure is the finding)
            rec = {
                "method": m,
                "status": "refused" if isinstance(e, (ValueError, TypeError)) else "failed",
                "error": f"{type(e).__name__}: {str(e)[:400]}",
                "where": traceback.format_exc().strip().splitlines()[-3:],
                "compile_s": time.perf_counter() - t0,
            }
        records[m] = rec
        print(f"{m}: {rec['status']} ({rec['compile_s']:.1f} s)", flush=True)
    times = common.time_round_robin(fns, repeats=args.repeats, warmup=1) if fns else {}
    for m, seconds in times.items():
        records[m].update(common.spread(seconds), seconds=seconds)
    ran = [r for r in records.values() if r["status"] == "ran"]
    equal_ms = records.get("equal", {}).get("median_ms")
    lines = [
        f"# School, K = 139: every weighting scheme's train step (hard sharing, batch {args.batch_size})",
        "",
        f"Step time of each method's compiled train step on one batch, {args.repeats} round-robin rounds "
        "(every step once per round, fresh random order; median and 10th-90th percentile), one process, "
        "one CPU device; XLA's memory estimate of the compiled step (temporaries, and the peak = arguments + "
        "outputs - aliased + temporaries). The path is the gradient path the step chose (loss-level schemes "
        "need one backward pass; Jacobian / Gramian ones the 139 per-task rows, in chunks of one task on CPU).",
        "",
        f"{len(ran)} of {len(records)} methods ran; "
        + (
            ", ".join(f"`{m}` {r['status']}" for m, r in records.items() if r["status"] != "ran")
            or "none refused or failed"
        )
        + ".",
        "",
        "| method | path | ms / step (median) | p10-p90 | × equal | XLA temp MiB | peak MiB | compile s |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for m, r in sorted(records.items(), key=lambda kv: kv[1].get("median_ms", float("inf"))):
        if r["status"] != "ran":
            lines.append(f"| `{m}` | {r['status']} | — | — | — | — | — | — |")
            continue
        mem = r.get("memory") or {}
        ratio = r["median_ms"] / equal_ms if equal_ms else None
        lines.append(
            f"| `{m}` | {r['path']} | {r['median_ms']:.1f} | {r['p10_ms']:.1f}-{r['p90_ms']:.1f} | "
            f"{common.fmt(ratio)} | {common.fmt(mem.get('temp_mib'), '.1f')} | "
            f"{common.fmt(mem.get('peak_mib'), '.1f')} | {r['compile_s']:.1f} |"
        )
    for m, r in records.items():
        if r["status"] != "ran":
            lines.append(f"\n`{m}`: {r['error']}")
    common.write_outputs(
        Path(args.out), {"records": records, "batch_size": args.batch_size, "repeats": args.repeats}, lines
    )
    return records


if __name__ == "__main__":
    main()
