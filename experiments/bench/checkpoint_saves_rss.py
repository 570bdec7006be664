"""RSS per checkpoint save, without the training loop: ``Checkpointer.save`` called N times in a row.

Each variant runs in its own fresh interpreter (``--child``): a packed state of 12 arrays (as
``Checkpointer`` saves a host train state) and a meta JSON of ~30 KB (the loop's meta carries the whole
config), ``max_to_keep=2``; 50 warm-up saves, then N saves, RSS (``VmRSS``) read after each. Reported:
the least-squares slope of RSS over the N saves in KiB per save and its 95 % interval. Variants
alternate (``--rounds``) so both see the same machine load:

- ``fix``: as shipped (``checkpoint.AVOID_SPEC_JSON_LEAK = True``);
- ``no_fix``: orbax calls tensorstore's leaking ``KvStore.Spec.to_json`` for every array and twice
  per save.

    python -m experiments.bench.checkpoint_saves_rss [--saves 300] [--rounds 2]

Writes results/bench/checkpoint_saves_rss.json and .md. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from experiments.bench.common import RESULTS, ROOT, provenance, write_outputs


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(variant: str, saves: int) -> dict:
    from jmtl.runs import checkpoint

    checkpoint.AVOID_SPEC_JSON_LEAK = variant == "fix"
    directory = Path(tempfile.mkdtemp(prefix="jmtl_ckpt_rss_"))
    try:
        ck = checkpoint.Checkpointer(directory / "ck")
        state = {
            "params": {f"w{i}": np.full((100, 50), i, np.float32) for i in range(10)},
            "step": np.zeros((), np.int32),
            "rng": np.zeros((2,), np.uint32),
        }
        meta = {"config": {f"k{j}": {"a": list(range(20)), "s": "x" * 30} for j in range(300)}}
        for i in range(50):
            ck.save(i, state, {**meta, "i": i})
        xs, ys = [], []
        for i in range(50, 50 + saves):
            ck.save(i, state, {**meta, "i": i})
            xs.append(i)
            ys.append(_rss_kib())
        ck.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    coef = np.polyfit(x, y, 1)
    resid = y - np.polyval(coef, x)
    se = float(np.sqrt(resid.var(ddof=2) / ((x - x.mean()) ** 2).sum()))
    return {
        "variant": variant,
        "saves": saves,
        "kib_per_save": round(float(coef[0]), 3),
        "ci95_kib_per_save": round(1.96 * se, 3),
        "rss_first_kib": int(y[0]),
        "rss_last_kib": int(y[-1]),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--name", default="checkpoint_saves_rss")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.saves)))
        return 0
    prov = provenance()
    runs = []
    for _ in range(args.rounds):
        for variant in ("no_fix", "fix"):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "experiments.bench.checkpoint_saves_rss",
                    "--child",
                    variant,
                    "--saves",
                    str(args.saves),
                ],
                cwd=ROOT,
                env={**os.environ, "JAX_PLATFORMS": "cpu"},
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                check=True,
            )
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    med = {v: float(np.median([r["kib_per_save"] for r in runs if r["variant"] == v])) for v in ("no_fix", "fix")}
    end = provenance()
    prov.update(date=end["date"], load_average_end=end["load_average_end"])
    lines = [
        "# RSS per checkpoint save (``Checkpointer.save`` alone)",
        "",
        f"`{prov['command']}`: {args.saves} saves after 50 warm-up saves, each variant in a fresh interpreter, "
        f"alternating, {args.rounds} round(s); a packed state of 12 arrays and a ~30 KB meta JSON; RSS after "
        "each save; slope by least squares with its 95 % interval (OLS; successive samples are correlated, so "
        "the interval is a lower bound).",
        "",
        "| round | variant | KiB / save | 95 % interval | RSS first -> last (KiB) |",
        "|---:|---|---:|---:|---|",
    ]
    for i, r in enumerate(runs):
        lines.append(
            f"| {i // 2 + 1} | {r['variant']} | {r['kib_per_save']:+.2f} | ± {r['ci95_kib_per_save']:.2f} | "
            f"{r['rss_first_kib']} -> {r['rss_last_kib']} |"
        )
    lines += [
        "",
        f"Median slope: no_fix {med['no_fix']:+.2f} KiB/save, fix {med['fix']:+.2f} KiB/save "
        f"(difference {med['no_fix'] - med['fix']:+.2f} KiB/save).",
    ]
    write_outputs(Path(args.out) / args.name, {"runs": runs, "median_kib_per_save": med}, lines, prov)
    return 0


if __name__ == "__main__":
    sys.exit(main())
