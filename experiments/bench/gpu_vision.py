"""SegNet training throughput on one GPU: images/s and peak memory of equal, PCGrad, Nash-MTL, FAMO
and MGDA-UB, in float32 and bfloat16, on NYUv2-shaped generated data at full size (288x384).

Prepared for one H100 (< 8 minutes: 10 compilations, then ``--steps`` timed training steps each);
on CPU it runs at a tiny size (``--tiny``: 32x32, SegNet widths 4-8, 2 steps), which CI does.

    python -m experiments.bench.gpu_vision                 # -> results/gpu/gpu_vision.{json,md}
    python -m experiments.bench.gpu_vision --tiny --out /tmp/gpu_vision_smoke

Per (method, dtype): the jmtl train step (Adam, lr 1e-4, MTAN's pixel losses, ``compute_dtype``
float32 or bfloat16 with float32 master weights) is compiled, warmed up for ``--warmup`` steps, then
trained for ``--steps`` steps cycling over 4 generated batches; images/s = batch * steps / seconds.
Memory: XLA's memory analysis of the compiled step (its peak for that step alone) and the device's
``peak_bytes_in_use`` after the configuration (cumulative over the process, so it only grows).
A ``--budget_s`` guard skips the configurations that would start after the budget (listed as skipped).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from experiments.bench import vision_common as vc
from experiments.bench.common import ROOT, fmt, output_path, provenance, started_now, write_outputs

METHODS = (
    # label, method, jacobian mode
    ("equal", "equal", "params"),
    ("pcgrad", "pcgrad", "params"),
    ("nash_mtl", "nash_mtl", "params"),
    ("famo", "famo", "params"),
    ("mgda_ub", "mgda", "representation"),
)
DTYPES = ("float32", "bfloat16")
TINY_FILTERS = vc.TINY_FILTERS


def device_peak_mib():
    import jax

    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # CPU devices have none
        return None
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="32x32, narrow SegNet, 2 steps: a CPU smoke run")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--methods", default=",".join(m for m, _, _ in METHODS))
    parser.add_argument("--dtypes", default=",".join(DTYPES))
    parser.add_argument("--budget_s", type=float, default=420.0, help="start no configuration after this many seconds")
    parser.add_argument("--out", default=None, help="output path without suffix (default: the committed results file)")
    args = parser.parse_args(argv)
    args.out = output_path(parser, args, ROOT / "results" / "gpu" / "gpu_vision")
    started = started_now()
    t_start = time.perf_counter()

    import jax

    height, width, filters = (32, 32, TINY_FILTERS) if args.tiny else (288, 384, None)
    batch, steps, warmup = (2, 2, 1) if args.tiny else (args.batch, args.steps, args.warmup)
    chosen = [m for m in METHODS if m[0] in args.methods.split(",")]
    unknown = set(args.methods.split(",")) - {m[0] for m in METHODS}
    dtypes = args.dtypes.split(",")
    if unknown or not chosen or set(dtypes) - set(DTYPES):
        parser.error(f"--methods from {','.join(m for m, _, _ in METHODS)}; --dtypes from {','.join(DTYPES)}")
    batches = [vc.make_batch(batch, height, width, seed=s) for s in range(4)]
    rows, skipped = [], []
    for label, method, mode in chosen:
        for dtype in dtypes:
            if time.perf_counter() - t_start > args.budget_s:
                skipped.append(f"{label} {dtype}")
                continue
            call, info = vc.jmtl_step(
                method, batches[0], mode=mode, compute_dtype=dtype, filters=filters, batches=batches[1:]
            )
            for _ in range(warmup):
                first = call()
            t0 = time.perf_counter()
            for _ in range(steps):
                metrics = call()
            seconds = time.perf_counter() - t0
            losses = [float(x) for x in jax.device_get(metrics["losses"])]
            rows.append(
                {
                    "method": label,
                    "dtype": dtype,
                    "gradient_path": info["gradient_path"],
                    "chunk_size": info["chunk_size"],
                    "compile_s": info["compile_s"],
                    "images_per_s": batch * steps / seconds,
                    "step_ms": 1e3 * seconds / steps,
                    "compiled_peak_mib": (info["memory_mib"] or {}).get("peak_mib"),
                    "device_peak_mib_so_far": device_peak_mib(),
                    "losses_after_warmup": [float(x) for x in jax.device_get(first["losses"])],
                    "losses_last": losses,
                    "finite": bool(jax.device_get(metrics["finite"])),
                }
            )
            print(
                f"{label} {dtype}: {rows[-1]['images_per_s']:.1f} images/s, compiled peak "
                f"{fmt(rows[-1]['compiled_peak_mib'], '.0f')} MiB",
                flush=True,
            )
    device = str(jax.devices()[0].device_kind) if jax.devices() else "?"
    size = f"{height}x{width}, batch {batch}" + (", SegNet widths " + "-".join(map(str, filters)) if filters else "")
    result = {
        "config": vars(args),
        "size": size,
        "device": device,
        "tasks": vc.pixel_tasks()[1],
        "rows": rows,
        "skipped": skipped,
        "total_s": time.perf_counter() - t_start,
    }
    lines = [
        f"# SegNet training throughput on {device} ({size})",
        "",
        f"Tasks: {result['tasks']}. {steps} timed steps after {warmup} warm-up step(s), cycling over 4 generated "
        "batches. Compiled peak: XLA's memory analysis of the step; device peak: peak_bytes_in_use so far in the "
        "process (cumulative).",
        "",
        "| method | dtype | path | images/s | step ms | compiled peak MiB | device peak MiB (so far) | compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['dtype']} | {r['gradient_path']} | {r['images_per_s']:.1f} | {r['step_ms']:.1f} | "
            f"{fmt(r['compiled_peak_mib'], '.0f')} | {fmt(r['device_peak_mib_so_far'], '.0f')} | {r['compile_s']:.0f} |"
        )
    if skipped:
        lines += ["", f"Skipped (past --budget_s {args.budget_s:.0f}): {', '.join(skipped)}."]
    write_outputs(Path(args.out), result, lines, provenance(started=started))
    return result


if __name__ == "__main__":
    main()
