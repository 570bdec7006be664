"""Before/after parity of a restructure of the step: the toy's metrics and final params bitwise, and
the step's time, paired in one run.

Runs the same child (this file with ``--child``) against two source trees, alternately, each in its
own process with the tree first on ``PYTHONPATH``:

* parity: the embedded default (GradNorm's toy, ``experiments/configs/gradnorm_toy.py``) trained for
  ``--epochs`` epochs with equal weighting, MGDA and PCGrad through ``jmtl.train``; the child hashes
  every logged number (the JSONL records without their timings) and the final params and scheme
  state, byte for byte;
* timing: the jitted train step on Multi-LeNet (batch 256, K = 2 and 10) and on the toy's MLP, for
  equal / MGDA / PCGrad / MGDA at the representation, medians of ``--reps`` calls per process, wall
  and CPU time, over ``--rounds`` alternating rounds.

    git worktree add --detach /tmp/before <old commit>
    python -m experiments.bench.core_parity --before /tmp/before [--rounds 3 --reps 15 --epochs 2]
    # -> results/bench/core_parity.{json,md}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
METHODS = ("equal", "mgda", "pcgrad")
TIMED = (
    # label, encoder, K, method, jacobian mode
    ("lenet/equal/K=2", "multi_lenet", 2, "equal", "params"),
    ("lenet/mgda/K=2", "multi_lenet", 2, "mgda", "params"),
    ("lenet/pcgrad/K=2", "multi_lenet", 2, "pcgrad", "params"),
    ("lenet/mgda_rep/K=2", "multi_lenet", 2, "mgda", "representation"),
    ("lenet/equal/K=10", "multi_lenet", 10, "equal", "params"),
    ("lenet/mgda/K=10", "multi_lenet", 10, "mgda", "params"),
    ("toy/equal", "mlp", 2, "equal", "params"),
    ("toy/pcgrad", "mlp", 2, "pcgrad", "params"),
)
TIMING_KEYS = ("time", "wall", "seconds", "per_s", "steps_per", "elapsed", "_ms", "date", "started")


def _digest(obj) -> str:
    import numpy as np

    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, dict):
            for k in sorted(x):
                h.update(str(k).encode())
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                feed(v)
        else:
            a = np.asarray(x)
            h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())

    feed(obj)
    return h.hexdigest()[:16]


def _strip_timings(rec):
    if isinstance(rec, dict):
        return {k: _strip_timings(v) for k, v in rec.items() if not any(t in k for t in TIMING_KEYS)}
    return rec


def child_parity(epochs: int) -> dict:
    import importlib.util

    import jax

    from jmtl.training import loop

    tree = Path(os.environ.get("CORE_PARITY_TREE", REPO))
    spec = importlib.util.spec_from_file_location("toy_config", tree / "experiments/configs/gradnorm_toy.py")
    out = {}
    for method in METHODS:
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        config = mod.get_config(method)
        config.num_epochs = epochs
        config.progress_bar = False
        with tempfile.TemporaryDirectory() as workdir:
            _, state = loop.train(config, workdir)
            records = [
                _strip_timings(json.loads(line))
                for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()
                if line.strip()
            ]
        out[method] = {
            "metrics": _digest([json.dumps(r, sort_keys=True) for r in records]),
            "records": len(records),
            "params": _digest(jax.device_get(state.params)),
            "weighting_state": _digest(jax.device_get(state.weighting_state)),
            "last_losses": [r.get("losses") for r in records if "losses" in r][-1:],
        }
    return out


def child_timing(reps: int) -> dict:
    import jax
    import numpy as np
    import optax

    from jmtl import weighting
    from jmtl.models import mtl
    from jmtl.tasks import Task
    from jmtl.training import step as step_lib

    rng = np.random.default_rng(0)
    out = {}
    for label, encoder, k, method, mode in TIMED:
        if encoder == "multi_lenet":
            x = rng.normal(size=(256, 28, 28, 1)).astype(np.float32)
            tasks = tuple(Task(f"t{i}", "classification", 10) for i in range(k))
            labels = {t.name: rng.integers(0, 10, 256).astype(np.int32) for t in tasks}
            model = mtl.build(tasks, encoder="multi_lenet")
        else:
            x = rng.normal(size=(100, 250)).astype(np.float32)
            tasks = tuple(Task(f"t{i}", "regression", 100) for i in range(k))
            labels = {t.name: rng.normal(size=(100, 100)).astype(np.float32) for t in tasks}
            model = mtl.build(
                tasks, encoder="mlp", encoder_kwargs=dict(features=(100, 100, 100, 100)), head_kwargs=dict(hidden=None)
            )
        batch = {"x": x, **labels}
        w = weighting.get(method)
        cfg = step_lib.StepConfig(input_key="x", jacobian_mode=mode, jacobian_chunk_size=1)
        state = step_lib.init_state(model, w, optax.adam(1e-3), x[:1], k, 0)
        step = jax.jit(step_lib.make_train_step(model, tasks, w, optax.adam(1e-3), cfg), donate_argnums=0)
        for _ in range(2):
            state, m = step(state, batch)
            jax.block_until_ready(m)
        ts, cs = [], []
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            state, m = step(state, batch)
            jax.block_until_ready(m)
            ts.append(time.perf_counter() - t0)
            cs.append(time.process_time() - c0)
        out[label] = {"wall_ms": 1e3 * float(np.median(ts)), "cpu_ms": 1e3 * float(np.median(cs))}
    return out


def _run_child(tree: Path, what: str, arg: int) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=str(tree),
        CORE_PARITY_TREE=str(tree),
        JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
    )
    # The children run this file (the old tree may predate it) with the tree under test first on sys.path.
    code = (
        f"import sys, json, importlib.util; sys.path.insert(0, {str(tree)!r}); "
        f"s = importlib.util.spec_from_file_location('core_parity_child', {__file__!r}); "
        "c = importlib.util.module_from_spec(s); s.loader.exec_module(c); "
        f"print('@@' + json.dumps(c.child_{what}({arg})))"
    )
    cmd = [sys.executable, "-c", code]
    res = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"child {what} in {tree} failed:\n{res.stderr[-3000:]}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("@@")][-1]
    return json.loads(line[2:])


def main(argv=None) -> None:
    from experiments.bench.common import RESULTS, _git, provenance, started_now, write_outputs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="a checkout (git worktree) of the old commit")
    parser.add_argument("--after", default=str(REPO), help="the new tree (default: this checkout)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "core_parity"))
    args = parser.parse_args(argv)
    started = started_now()
    before, after = Path(args.before).resolve(), Path(args.after).resolve()
    if not (before / "jmtl").is_dir():
        parser.error(f"--before {before} holds no jmtl/ package: pass a checkout of the old commit")
    before_commit = _git("-C", str(before), "rev-parse", "HEAD")

    parity = {name: _run_child(tree, "parity", args.epochs) for name, tree in (("before", before), ("after", after))}
    identical = {m: parity["before"][m] == parity["after"][m] for m in METHODS}
    samples: dict = {}
    for r in range(args.rounds):
        order = (("before", before), ("after", after)) if r % 2 == 0 else (("after", after), ("before", before))
        for name, tree in order:
            for label, t in _run_child(tree, "timing", args.reps).items():
                samples.setdefault(label, {}).setdefault(name, []).append(t)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    import numpy as np

    rows = {}
    for label, by in samples.items():
        row = {}
        for key in ("wall_ms", "cpu_ms"):
            b = [x[key] for x in by["before"]]
            a = [x[key] for x in by["after"]]
            row[key] = {
                "before": float(np.median(b)),
                "after": float(np.median(a)),
                "ratio": float(np.median([y / x for x, y in zip(b, a)])),
                "ratio_range": [float(min(y / x for x, y in zip(b, a))), float(max(y / x for x, y in zip(b, a)))],
            }
        rows[label] = row
    result = {
        "config": vars(args),
        "before_commit": before_commit,
        "parity": parity,
        "bitwise_identical": identical,
        "timing": rows,
        "samples": samples,
    }
    lines = [
        "# The step before and after a restructure: bitwise parity and paired timing",
        "",
        f"Before: `{before_commit}`; after: this commit (see provenance). The toy (GradNorm's regression, "
        f"`experiments/configs/gradnorm_toy.py`) trained {args.epochs} epochs through `jmtl.train` in each tree; "
        "digests (sha256, first 16 hex) of every logged record without its timings, of the final params and "
        "of the scheme's state.",
        "",
        "| scheme | records | metrics before | metrics after | params before | params after | identical |",
        "|---|---:|---|---|---|---|---|",
    ]
    for m in METHODS:
        b, a = parity["before"][m], parity["after"][m]
        lines.append(
            f"| {m} | {a['records']} | `{b['metrics']}` | `{a['metrics']}` | `{b['params']}` | `{a['params']}` | "
            f"{'yes' if identical[m] else 'NO'} |"
        )
    lines += [
        "",
        f"Step time: {args.rounds} rounds, the two trees alternating (the first tree of each round alternates too), "
        f"each process timing {args.reps} calls of the jitted step after 2 warm-up calls (chunks of 1). Medians over "
        "rounds; the ratio is the median of the per-round after/before ratios, with its range.",
        "",
        "| step | before wall ms | after wall ms | after/before (range) | before CPU ms | after CPU ms | after/before (range) |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for label, row in rows.items():
        w, c = row["wall_ms"], row["cpu_ms"]
        lines.append(
            f"| {label} | {w['before']:.1f} | {w['after']:.1f} | {w['ratio']:.2f} ({w['ratio_range'][0]:.2f}–"
            f"{w['ratio_range'][1]:.2f}) | {c['before']:.1f} | {c['after']:.1f} | {c['ratio']:.2f} "
            f"({c['ratio_range'][0]:.2f}–{c['ratio_range'][1]:.2f}) |"
        )
    write_outputs(args.out, result, lines, provenance(started=started))


if __name__ == "__main__":
    main()
