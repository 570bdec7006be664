"""RSS per checkpoint save, without the training loop: ``Checkpointer.save`` called N times in a row.

Each variant runs in its own fresh interpreter (``--child``): it imports ``jmtl.runs.checkpoint``,
runs one jax computation (as ``jmtl.train`` does before its ``Checkpointer``: it starts XLA's CPU
thread pool), then saves a packed state of 12 arrays (as ``Checkpointer`` saves a host train state)
and a meta JSON of ~30 KB (the loop's meta carries the whole config), ``max_to_keep=2``; ``--warmup``
saves (default 50), then N saves, RSS (``VmRSS``) and glibc's heap in use (``mallinfo2().uordblks``)
read after each. Reported: the least-squares slope over the N saves in KiB per save with two 95 %
intervals: OLS (assumes independent residuals: too narrow here, successive RSS readings are
correlated) and Newey-West (autocorrelation-robust, Bartlett kernel, ``ceil(sqrt(N))`` lags), which the
verdict "0 in the interval" uses. The variants of a round run at the same time (``--rounds`` of them)
so all see the same machine load:

- ``fix``: as shipped (``AVOID_SPEC_JSON_LEAK`` and the malloc arena cap, set when the module is
  imported, ``cap_malloc_arenas``);
- ``late_cap``: the cap set when the ``Checkpointer`` is created, after the jax computation (where
  ``jmtl.train`` creates it): glibc has fixed its own limit by then;
- ``cyclic_json``: ``fix`` with the checksum record written as before this session's fix
  (``json.dump(indent=1)``: 33 objects of cyclic garbage per save);
- ``spec_only``: the spec-json fix alone (``JMTL_MALLOC_ARENAS=0``: glibc's default arenas);
- ``no_fix``: neither (orbax calls tensorstore's leaking ``KvStore.Spec.to_json`` for every array and
  twice per save).

    python -m experiments.bench.checkpoint_saves_rss [--saves 1000] [--rounds 2] [--warmup 50]

Writes results/bench/checkpoint_saves_rss.json and .md. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from experiments.bench.common import RESULTS, ROOT, provenance, write_outputs
from experiments.bench.process_stats import heap_in_use_kib, rss_kib

VARIANTS = ("no_fix", "spec_only", "fix")
# ``fix_gc``: ``fix`` with a full ``gc.collect()`` before each sample (``--variants fix,fix_gc``): what
# of the rest is cyclic garbage that CPython's next full collection would free.
ALL_VARIANTS = (*VARIANTS, "fix_gc", "late_cap", "cyclic_json")


def _write_checksums_cyclic(step_dir: Path) -> None:
    """The checksum record as written before (``json.dump(indent=1)``: the pure-Python encoder, whose
    closures leave a reference cycle per call), for the ``cyclic_json`` variant."""
    from jmtl.runs import checkpoint

    record = {"format": checkpoint.INTEGRITY_FORMAT, "files": checkpoint.step_files(step_dir)}
    tmp = step_dir / (checkpoint.CHECKSUMS + ".tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, step_dir / checkpoint.CHECKSUMS)


def child(variant: str, saves: int, warmup: int = 50) -> dict:
    # Before anything starts a thread: the arena cap is set when jmtl.runs.checkpoint is imported.
    os.environ["JMTL_MALLOC_ARENAS"] = "2" if variant in ("fix", "fix_gc", "cyclic_json") else "0"
    from jmtl.runs import checkpoint

    checkpoint.AVOID_SPEC_JSON_LEAK = variant != "no_fix"
    if variant == "cyclic_json":
        checkpoint.write_checksums = _write_checksums_cyclic
    import jax.numpy as jnp

    jnp.ones((64, 64)).sum().block_until_ready()  # XLA's CPU client and its threads, as model init
    arenas_at_checkpointer = checkpoint.malloc_arena_count()
    if variant == "late_cap":  # where a cap at ``Checkpointer()`` would come
        assert checkpoint.limit_malloc_arenas(2)
    directory = Path(tempfile.mkdtemp(prefix="jmtl_ckpt_rss_"))
    try:
        ck = checkpoint.Checkpointer(directory / "ck")
        state = {
            "params": {f"w{i}": np.full((100, 50), i, np.float32) for i in range(10)},
            "step": np.zeros((), np.int32),
            "rng": np.zeros((2,), np.uint32),
        }
        meta = {"config": {f"k{j}": {"a": list(range(20)), "s": "x" * 30} for j in range(300)}}
        for i in range(warmup):
            ck.save(i, state, {**meta, "i": i})
        xs, ys, heap = [], [], []
        for i in range(warmup, warmup + saves):
            ck.save(i, state, {**meta, "i": i})
            if variant == "fix_gc":
                gc.collect()
            xs.append(i)
            ys.append(rss_kib())
            heap.append(heap_in_use_kib())
        ck.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    slope, ci, ci_nw = _slope(x, y)
    heap_slope, heap_ci, heap_ci_nw = _slope(x, np.asarray(heap, float))
    return {
        "variant": variant,
        "saves": saves,
        "warmup": warmup,
        "malloc_arenas_limited": checkpoint.MALLOC_ARENAS_LIMITED or variant == "late_cap",
        "malloc_arenas_at_checkpointer": arenas_at_checkpointer,
        "malloc_arenas_end": checkpoint.malloc_arena_count(),
        "kib_per_save": round(slope, 3),
        "ci95_kib_per_save": round(ci, 3),
        "ci95_newey_west_kib_per_save": round(ci_nw, 3),
        "heap_in_use_kib_per_save": round(heap_slope, 3),
        "heap_ci95_kib_per_save": round(heap_ci, 3),
        "heap_ci95_newey_west_kib_per_save": round(heap_ci_nw, 3),
        "rss_first_kib": int(y[0]),
        "rss_last_kib": int(y[-1]),
    }


def _slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares slope of ``y`` over ``x`` and the half-widths of its 95 % interval: OLS, and
    Newey-West (HAC; Bartlett weights ``1 - l / (L + 1)`` over ``L = ceil(sqrt(n))`` lags of the
    score ``(x - mean x) * residual``; Newey & West 1987, eq. 2)."""
    coef = np.polyfit(x, y, 1)
    resid = y - np.polyval(coef, x)
    xc = x - x.mean()
    sxx = float((xc**2).sum())
    se = float(np.sqrt(resid.var(ddof=2) / sxx))
    u = xc * resid
    lags = int(np.ceil(np.sqrt(len(x))))
    s = float((u * u).sum()) + 2 * sum((1 - k / (lags + 1)) * float((u[k:] * u[:-k]).sum()) for k in range(1, lags + 1))
    se_nw = float(np.sqrt(max(s, 0.0))) / sxx
    return float(coef[0]), 1.96 * se, 1.96 * se_nw


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=50, help="saves before the N measured ones")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {ALL_VARIANTS}")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--name", default="checkpoint_saves_rss")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.saves, args.warmup)))
        return 0
    variants = tuple(args.variants.split(","))
    if not set(variants) <= set(ALL_VARIANTS):
        parser.error(f"--variants {args.variants!r}: each must be one of {', '.join(ALL_VARIANTS)}")
    prov = provenance()
    runs = []
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}  # the variants set the arenas
    for _ in range(args.rounds):
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "experiments.bench.checkpoint_saves_rss",
                    "--child",
                    v,
                    "--saves",
                    str(args.saves),
                    "--warmup",
                    str(args.warmup),
                ],
                cwd=ROOT,
                env={**env, "JAX_PLATFORMS": "cpu"},
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for v in variants
        ]
        for v, p in zip(variants, procs):
            out, _ = p.communicate()
            if p.returncode:
                raise RuntimeError(f"variant {v} failed (exit {p.returncode})")
            runs.append(json.loads(out.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    med = {v: float(np.median([r["kib_per_save"] for r in runs if r["variant"] == v])) for v in variants}
    end = provenance()
    prov.update(date=end["date"], load_average_end=end["load_average_end"])
    lines = [
        "# RSS per checkpoint save (``Checkpointer.save`` alone)",
        "",
        f"`{prov['command']}`: {args.saves} saves after {args.warmup} warm-up saves, each variant in a fresh "
        f"interpreter (after one jax computation, as `jmtl.train` before its `Checkpointer`), the "
        f"{len(variants)} variants of a round at the same time, {args.rounds} round(s); a packed state of 12 "
        "arrays and a ~30 KB meta JSON; RSS and glibc's heap in use (`mallinfo2().uordblks`, all arenas) after "
        "each save; slope by least squares with two 95 % intervals: OLS (too narrow: successive readings are "
        "correlated) and Newey-West (autocorrelation-robust, ceil(sqrt(N)) lags), the one the verdict uses.",
        "",
        "Variants: `no_fix` (orbax 0.12.8 / tensorstore as they are), `spec_only` (the tensorstore spec-json "
        "leak avoided; glibc's default malloc arenas, 8 per core), `late_cap` (that and the arenas capped at 2 "
        "when the `Checkpointer` is created, after jax's first computation), `fix` (as shipped: the cap set "
        "when `jmtl.runs.checkpoint` is imported, `checkpoint.cap_malloc_arenas`, and the checksum record "
        "written without cyclic garbage), `cyclic_json` (`fix` with the record written as before: "
        "`json.dump(indent=1)`, 33 objects in reference cycles per save), `fix_gc` (`fix` with a full "
        "`gc.collect()` before each sample).",
        "",
        "| round | variant | arenas at `Checkpointer()` -> end | RSS KiB / save | OLS 95 % | Newey-West 95 % "
        "| 0 in NW interval | heap in use KiB / save (NW 95 %) | RSS first -> last (KiB) |",
        "|---:|---|---|---:|---:|---:|---|---:|---|",
    ]
    for i, r in enumerate(runs):
        flat = abs(r["kib_per_save"]) <= r["ci95_newey_west_kib_per_save"]
        lines.append(
            f"| {i // len(variants) + 1} | {r['variant']} | {r['malloc_arenas_at_checkpointer']} -> "
            f"{r['malloc_arenas_end']} | {r['kib_per_save']:+.3f} | ± {r['ci95_kib_per_save']:.3f} | "
            f"± {r['ci95_newey_west_kib_per_save']:.3f} | {'yes' if flat else 'no'} | "
            f"{r['heap_in_use_kib_per_save']:+.3f} ± {r['heap_ci95_newey_west_kib_per_save']:.3f} | "
            f"{r['rss_first_kib']} -> {r['rss_last_kib']} |"
        )
    lines += ["", "Median RSS slope: " + ", ".join(f"{v} {med[v]:+.3f} KiB/save" for v in variants) + "."]
    write_outputs(Path(args.out) / args.name, {"runs": runs, "median_kib_per_save": med}, lines, prov)
    return 0


if __name__ == "__main__":
    sys.exit(main())
