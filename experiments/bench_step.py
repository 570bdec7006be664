"""Median ms per train step: jmtl's joint step vs an equivalent plain PyTorch step, in one run.

MultiMNIST shapes (batch 256, [28, 28, 1] images, 2 tasks), Multi-LeNet, Adam. Rows:

* jmtl equal weighting (one backward of the sum of losses);
* jmtl MGDA (per-task Jacobian of the shared params by one vjp + vmap, Frank-Wolfe/closed form);
* jmtl MGDA-UB (representation-level Jacobian, one weighted backward through the encoder);
* PyTorch (a): forward, sum of losses, one backward, Adam step (the reference for equal weighting);
* PyTorch (b): K backward passes collecting per-task gradients, the way the PyTorch MTL libraries
  do it (the reference for gradient methods).

All rows are timed round-robin (so a shared machine's drifts hit them alike), after warm-up, each
call ending in ``block_until_ready``. PyTorch is optional (``experiments/requirements-bench.txt``).

    python -m experiments.bench_step [--repeats 40] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmtl import weighting
from jmtl.models import mtl
from jmtl.tasks import Task
from jmtl.training import step as step_lib

RESULTS = Path(__file__).resolve().parents[1] / "results"


def jmtl_timer(method, batch_size: int, num_tasks: int = 2, mode: str = "params", chunk_size: int = 0):
    """A zero-argument callable running one jitted, donated jmtl train step on a fixed batch, and the
    seconds its first call took (compilation). ``method``: a scheme name or a ``WeightingTransform``;
    ``chunk_size``: ``StepConfig.jacobian_chunk_size``."""
    tasks = tuple(Task(f"task{k}", "classification", 10) for k in range(num_tasks))
    model = mtl.build(tasks, encoder="multi_lenet")
    transform = weighting.get(method) if isinstance(method, str) else method
    opt = optax.adam(1e-3)
    state = step_lib.init_state(model, transform, opt, jnp.zeros((1, 28, 28, 1)), num_tasks, seed=0)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(batch_size, 28, 28, 1)), jnp.float32)}
    for t in tasks:
        batch[t.name] = jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)
    if transform.requires == weighting.BILEVEL:  # the upper-level (meta) batch: another batch
        batch.update({step_lib.META_PREFIX + key: jnp.roll(v, 1, axis=0) for key, v in batch.items()})
    cfg = step_lib.StepConfig(jacobian_mode=mode, jacobian_chunk_size=chunk_size)
    fn = jax.jit(step_lib.make_train_step(model, tasks, transform, opt, cfg), donate_argnums=0)
    holder = [state]

    def call():
        holder[0], metrics = fn(holder[0], batch)
        jax.block_until_ready(holder[0])

    t0 = time.perf_counter()
    call()
    compile_s = time.perf_counter() - t0
    return call, compile_s


def meta_info(args) -> dict:
    """Machine and settings recorded with every benchmark's results (``args``: batch, repeats)."""
    return {
        "batch": args.batch,
        "repeats": args.repeats,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def time_round_robin(fns: dict, repeats: int, warmup: int = 3, seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each fn, ``repeats`` rounds, every fn once per round in a fresh random order.

    The order is shuffled because a fixed one biases rows: a step timed right after a step with a large
    working set (e.g. the one-vmap Jacobian's ~0.5-1 GB of temporaries) ran ~12 % slower than the same
    computation timed after a small one (K = 20, Multi-LeNet on CPU), so in a fixed order one row always
    paid for its neighbour."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {name: [] for name in fns}
    names = list(fns)
    rng = random.Random(seed)
    for _ in range(repeats):
        rng.shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
    return samples


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", default=str(RESULTS / "bench_step"))
    args = parser.parse_args(argv)

    fns, compile_s = {}, {}
    for label, method, mode in (
        ("jmtl equal weighting", "equal", "params"),
        ("jmtl MGDA (param Jacobian)", "mgda", "params"),
        ("jmtl MGDA-UB (representation)", "mgda", "representation"),
    ):
        fns[label], compile_s[label] = jmtl_timer(method, args.batch, mode=mode)

    torch_note = None
    try:
        import torch

        from experiments import torch_reference

        threads = torch_reference.choose_num_threads(sorted({1, os.cpu_count() or 1}), args.batch, repeats=10)
        best = min(threads, key=threads.get)
        torch.set_num_threads(best)
        timers = torch_reference.reference_timers(2, args.batch, "adam")
        fns["PyTorch (a) equal: sum, 1 backward"] = timers["torch step (a) equal weighting"]
        fns["PyTorch (b) K backward passes"] = timers["torch step (b) per-task grads"]
        torch_note = f"torch {torch.__version__}, {best} thread(s) (fastest of {sorted(threads)})"
    except ImportError:
        torch_note = "PyTorch not installed: pip install -r experiments/requirements-bench.txt"
        print(torch_note, file=sys.stderr)

    samples = time_round_robin(fns, args.repeats)
    rows = {}
    for name, s in samples.items():
        ms = np.array(s) * 1e3
        rows[name] = {
            "median_ms": float(np.median(ms)),
            "p10_ms": float(np.percentile(ms, 10)),
            "p90_ms": float(np.percentile(ms, 90)),
            "compile_s": compile_s.get(name),
        }
    ref_a = rows.get("PyTorch (a) equal: sum, 1 backward", {}).get("median_ms")
    ref_b = rows.get("PyTorch (b) K backward passes", {}).get("median_ms")
    for name, r in rows.items():
        r["vs_torch_a"] = r["median_ms"] / ref_a if ref_a else None
        r["vs_torch_b"] = r["median_ms"] / ref_b if ref_b else None

    meta = {**meta_info(args), "tasks": 2, "load_average": os.getloadavg(), "torch": torch_note}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# Train-step time: jmtl vs plain PyTorch (Multi-LeNet, MultiMNIST shapes)",
        "",
        f"Batch {args.batch}, 2 tasks, Adam; {args.repeats} round-robin repeats after warm-up; "
        f"jax {jax.__version__} on {meta['backend']} ({meta['cpu_count']} cores, load average at the end "
        f"{', '.join(f'{x:.1f}' for x in meta['load_average'])}); {torch_note}.",
        "",
        "| step | median ms | p10 / p90 ms | vs PyTorch (a) | vs PyTorch (b) | compile s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        fmt = lambda x: "—" if x is None else f"{x:.2f}"
        lines.append(
            f"| {name} | {r['median_ms']:.2f} | {r['p10_ms']:.1f} / {r['p90_ms']:.1f} | {fmt(r['vs_torch_a'])} | "
            f"{fmt(r['vs_torch_b'])} | {fmt(r['compile_s'])} |"
        )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
