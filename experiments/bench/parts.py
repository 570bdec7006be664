"""Step-time scaling in K, compile time with and without the persistent cache, and input-pipeline overhead.

Four parts, each writing ``<out-dir>/bench_<part>.json`` and ``.md`` (default ``results/bench/``, with
their provenance: command, commit, date, machine, load); every time is a median over repeats with its
p10 / p90, and every ratio is between rows timed in the same run (``common.time_round_robin``).

``scaling``
    Multi-LeNet, MultiMNIST shapes ([28, 28, 1] images, batch 256), Adam, one device, at each K of
    ``--ks`` (K heads on one encoder). Rows, timed round-robin after warm-up: equal weighting; the
    *bare Jacobian step* (per-task Jacobian of the shared params, unit weights: the floor of every
    gradient method) with all K rows in one ``vmap`` and in chunks of ``--chunks`` tasks
    (``StepConfig.jacobian_chunk_size``); the bare step in representation mode; the gradient methods
    of ``--methods``; and the PyTorch references (``experiments/bench/torch_reference.py``: (a) one
    backward of the summed losses, (b) K backward passes filling the [K, d] Jacobian). Each jmtl
    row also reports XLA's memory analysis of its compiled step (temp, arguments, outputs; the
    estimated peak is arguments + outputs - donated aliases + temp), and each K checks that chunking
    reduces the temp memory of the bare Jacobian step.
``compile``
    Trace/lower and XLA compile seconds of the equal and MGDA steps, each measured in a fresh
    interpreter: without the persistent compilation cache, with an empty cache (cold) and again with
    the cache the cold run filled (warm).
``pipeline``
    Steps per second of the train loop (``experiments/train.py``'s: next batch, ``shard_batch``,
    step, finiteness of the previous step fetched) fed by the real MultiMNIST pipeline
    (``jmtl.data.pipeline.load('multi_mnist').train_iterator(256, seed)``), against the same loop
    and compiled step fed from batches already on the device. Segments alternate; the goal is a
    ratio of at least 95 %.
``rows``
    Where one per-task backward row's time goes: forward + K rows w.r.t. growing sets of the shared
    params (fc, then conv2, conv1 bias, conv1 kernel), jmtl vs PyTorch.

Quick smoke run / full run::

    python -m experiments.bench.parts --parts scaling --ks 2,5 --repeats 3 --out-dir /tmp/bench_smoke
    python -m experiments.bench.parts      # all parts, K = 2,5,10,20,40, results/bench/bench_*.{json,md}

(``python -m experiments.bench`` runs this module too.) PyTorch is optional
(``experiments/bench/requirements.txt``); without it the torch rows are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.bench.common import (
    RESULTS,
    ROOT,
    lenet_step,
    provenance,
    spread,
    spread_of,
    time_round_robin,
    torch_setup,
    write_outputs,
)
from experiments.bench.common import (
    fmt as _fmt,
)
from experiments.bench.weighting import bare_jacobian
from jmtl import weighting
from jmtl.models import mtl
from jmtl.tasks import Task
from jmtl.training import parallel
from jmtl.training import step as step_lib

BARE = "bare Jacobian"
TORCH_A = "torch (a) equal: 1 backward"
TORCH_B = "torch (b) K backward passes"
DEFAULT_METHODS = "mgda,pcgrad,upgrad,nash_mtl,cagrad"


# ----------------------------------------------------------------------------- helpers


def meta_info(args) -> dict:
    """The settings recorded with every part's results (the machine is in the provenance)."""
    return {
        "batch": args.batch,
        "repeats": args.repeats,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
    }


def lenet_problem(num_tasks: int, batch_size: int, seed: int = 0):
    tasks = tuple(Task(f"task{k}", "classification", 10) for k in range(num_tasks))
    model = mtl.build(tasks, encoder="multi_lenet")
    rng = np.random.default_rng(seed)
    batch = {"image": jnp.asarray(rng.normal(size=(batch_size, 28, 28, 1)), jnp.float32)}
    for t in tasks:
        batch[t.name] = jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)
    return tasks, model, batch


# ----------------------------------------------------------------------------- scaling


def bare_label(chunk: int, mode: str = "params") -> str:
    if mode == "representation":
        return f"{BARE}, representation"
    return f"{BARE}, all K in one vmap" if chunk == 0 else f"{BARE}, chunks of {chunk}"


def run_scaling(args) -> dict:
    torch_ref, torch_note = torch_setup(args.batch, not args.no_torch)
    methods = [m for m in args.methods.split(",") if m]
    result = {"meta": {**meta_info(args), "torch": torch_note, "chunks": args.chunks, "methods": methods}, "by_k": {}}
    for k in args.ks:
        fns, info, errors = {}, {}, {}

        def add(label, build, **extra):
            try:
                call, compile_s, mem = build()
            except Exception as e:  # a row that cannot run at this K is reported, not fatal
                errors[label] = f"{type(e).__name__}: {e}"[:300]
                print(f"K={k} FAILED {label}: {errors[label]}", flush=True)
                return
            fns[label] = call
            info[label] = {"compile_s": compile_s, "memory": mem, **extra}
            temp = "—" if mem is None else f"{mem['temp_mib']:.1f} MiB temp"
            print(f"K={k} compiled {label} ({compile_s:.1f}s, {temp})", flush=True)

        add("equal", lambda: lenet_step("equal", args.batch, k), kind="equal", chunk=None)
        chunks = [0] + [c for c in args.chunks if 0 < c < k]  # c >= K is the one-vmap step
        for c in chunks:
            add(bare_label(c), lambda c=c: lenet_step(bare_jacobian(), args.batch, k, chunk=c), kind="bare", chunk=c)
        if not args.no_rep:
            add(
                bare_label(0, "representation"),
                lambda: lenet_step(bare_jacobian(), args.batch, k, "representation"),
                kind="bare_rep",
                chunk=0,
            )
        for m in methods:
            for c in [c for c in args.method_chunks if c == 0 or c < k]:
                label = m if c == 0 else f"{m}, chunks of {c}"
                add(label, lambda m=m, c=c: lenet_step(m, args.batch, k, chunk=c), kind="method", chunk=c)
        if torch_ref is not None:
            timers = torch_ref.reference_timers(k, args.batch, "adam")
            fns[TORCH_A], info[TORCH_A] = timers["torch step (a) equal weighting"], {"kind": "torch", "chunk": None}
            fns[TORCH_B], info[TORCH_B] = timers["torch step (b) per-task grads"], {"kind": "torch", "chunk": None}

        samples = time_round_robin(fns, args.repeats, warmup=args.warmup)
        rows = {name: {**info[name], **spread(s)} for name, s in samples.items()}
        med = {n: r["median_ms"] for n, r in rows.items()}
        ref_bare = med.get(bare_label(0))
        for n, r in rows.items():
            r["vs_equal"] = med[n] / med["equal"] if "equal" in med else None
            r["vs_bare_vmap"] = med[n] / ref_bare if ref_bare else None
            same = bare_label(r["chunk"]) if r["kind"] in ("bare", "method") else None
            r["vs_bare_same_chunking"] = med[n] / med[same] if same in med else None
            r["vs_torch_a"] = med[n] / med[TORCH_A] if TORCH_A in med else None
            r["vs_torch_b"] = med[n] / med[TORCH_B] if TORCH_B in med else None
        bare_rows = {r["chunk"]: r for r in rows.values() if r["kind"] == "bare"}
        fastest = min(bare_rows, key=lambda c: bare_rows[c]["median_ms"]) if bare_rows else None
        memcheck = None
        if 0 in bare_rows and len(bare_rows) > 1 and bare_rows[0]["memory"] is not None:
            t0 = bare_rows[0]["memory"]["temp_mib"]
            memcheck = {
                "temp_mib_by_chunk": {str(c): r["memory"]["temp_mib"] for c, r in bare_rows.items()},
                "chunking_reduces_temp": all(r["memory"]["temp_mib"] < t0 for c, r in bare_rows.items() if c != 0),
            }
        result["by_k"][str(k)] = {
            "rows": rows,
            "fastest_bare_chunk": fastest,  # 0 = all K in one vmap
            "memory_check": memcheck,
            "errors": errors,
        }
    result["meta"]["load_average_end"] = os.getloadavg()
    return result


def scaling_report(result) -> list[str]:
    m = result["meta"]
    lines = [
        "# Train-step time and memory vs number of tasks K (Multi-LeNet, MultiMNIST shapes)",
        "",
        f"Batch {m['batch']}, Adam, one device; {m['repeats']} round-robin repeats per row after warm-up; jax {m['jax']} "
        f"on {m['backend']} ({m['cpu_count']} cores; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_end'])}); {m['torch']}. Bare Jacobian step = per-task "
        "Jacobian of the shared params with unit weights (the floor of every gradient method). Memory: XLA's "
        "memory analysis of the compiled step (peak = arguments + outputs - donated + temp).",
    ]
    summary = [
        "",
        "## Summary",
        "",
        "| K | equal ms | bare, one vmap ms | fastest bare chunking | its ms | "
        "temp MiB by chunk (0 = one vmap) | chunking cuts temp | torch (a) ms | torch (b) ms |",
        "|---:|---:|---:|---|---:|---|---|---:|---:|",
    ]
    for k, res in result["by_k"].items():
        rows = res["rows"]
        get = lambda n: rows[n]["median_ms"] if n in rows else None
        fc = res["fastest_bare_chunk"]
        fastest_ms = get(bare_label(fc)) if fc is not None else None
        mc = res["memory_check"]
        temps = "—" if mc is None else ", ".join(f"{c}: {t:.1f}" for c, t in mc["temp_mib_by_chunk"].items())
        cuts = "—" if mc is None else ("yes" if mc["chunking_reduces_temp"] else "no")
        summary.append(
            f"| {k} | {_fmt(get('equal'), '.1f')} | {_fmt(get(bare_label(0)), '.1f')} | "
            f"{'—' if fc is None else ('one vmap' if fc == 0 else f'chunks of {fc}')} | {_fmt(fastest_ms, '.1f')} | {temps} | {cuts} | "
            f"{_fmt(get(TORCH_A), '.1f')} | {_fmt(get(TORCH_B), '.1f')} |"
        )
    lines += summary
    for k, res in result["by_k"].items():
        lines += [
            "",
            f"## K = {k}",
            "",
            "| step | median ms | p10 / p90 | vs equal | vs bare (one vmap) | vs bare (same chunking) | "
            "vs torch (a) | vs torch (b) | temp MiB | peak MiB | compile s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n, r in res["rows"].items():
            mem = r.get("memory")
            lines.append(
                f"| {n} | {r['median_ms']:.1f} | {r['p10_ms']:.1f} / {r['p90_ms']:.1f} | {_fmt(r['vs_equal'])} | "
                f"{_fmt(r['vs_bare_vmap'])} | {_fmt(r['vs_bare_same_chunking'])} | {_fmt(r['vs_torch_a'])} | {_fmt(r['vs_torch_b'])} | "
                f"{_fmt(mem and mem['temp_mib'], '.1f')} | {_fmt(mem and mem['peak_mib'], '.1f')} | "
                f"{_fmt(r.get('compile_s'), '.1f')} |"
            )
        for n, e in res["errors"].items():
            lines.append(f"| {n} | failed: {e} | | | | | | | | | |")
    return lines


# ----------------------------------------------------------------------------- compile


def compile_worker(args) -> None:
    """In a fresh interpreter: lower and compile the equal and MGDA steps; prints a RESULT line."""
    if args.cache_dir:
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    out = {}
    for method in ("equal", "mgda"):
        tasks, model, batch = lenet_problem(args.compile_k, args.batch)
        transform, opt = weighting.get(method), optax.adam(1e-3)
        state = step_lib.init_state(model, transform, opt, jnp.zeros((1, 28, 28, 1)), len(tasks), seed=0)
        fn = jax.jit(
            step_lib.make_train_step(model, tasks, transform, opt, step_lib.StepConfig(input_key="image")),
            donate_argnums=0,
        )
        t0 = time.perf_counter()
        lowered = fn.lower(state, batch)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        jax.block_until_ready(compiled(state, batch))
        out[method] = {"lower_s": t1 - t0, "compile_s": t2 - t1, "total_s": t2 - t0}
    print("RESULT " + json.dumps(out), flush=True)


def _run_worker(args, cache_dir: str | None) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "experiments.bench.parts",
        "compile-worker",
        "--batch",
        str(args.batch),
        "--compile-k",
        str(args.compile_k),
    ]
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=1800)
    wall = time.perf_counter() - t0
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(
            f"compile worker failed (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    res = json.loads(lines[-1][len("RESULT ") :])
    res["process_wall_s"] = wall
    return res


def _cache_entries(d: str) -> int:
    return sum(len(files) for _, _, files in os.walk(d))


def run_compile(args) -> dict:
    runs = {"no cache": [], "cache cold": [], "cache warm": []}
    entries = []
    for i in range(args.compile_repeats):
        runs["no cache"].append(_run_worker(args, None))
        with tempfile.TemporaryDirectory(prefix="jmtl_jax_cache_") as d:
            runs["cache cold"].append(_run_worker(args, d))
            after_cold = _cache_entries(d)
            runs["cache warm"].append(_run_worker(args, d))
            entries.append({"after_cold": after_cold, "added_by_warm": _cache_entries(d) - after_cold})
        print(f"compile repeat {i + 1}/{args.compile_repeats} done", flush=True)
    rows = {}
    for setting, rs in runs.items():
        for method in ("equal", "mgda"):
            rows[f"{method} / {setting}"] = {
                "method": method,
                "setting": setting,
                **{key: spread_of([r[method][key] for r in rs], "_s") for key in ("lower_s", "compile_s", "total_s")},
                "process_wall": spread_of([r["process_wall_s"] for r in rs], "_s"),
            }
    for method in ("equal", "mgda"):
        cold, warm = rows[f"{method} / cache cold"], rows[f"{method} / cache warm"]
        warm["total_vs_cold"] = warm["total_s"]["median_s"] / cold["total_s"]["median_s"]
    return {
        "meta": {
            **meta_info(args),
            "repeats": args.compile_repeats,
            "tasks": args.compile_k,
            "cache_entries": entries,
            "load_average_end": os.getloadavg(),
        },
        "rows": rows,
    }


def compile_report(result) -> list[str]:
    m = result["meta"]
    lines = [
        "# Compile time of the train step, with and without JAX's persistent compilation cache",
        "",
        f"Multi-LeNet, K = {m['tasks']}, batch {m['batch']}; each figure the median (p10 / p90) of {m['repeats']} fresh "
        f"interpreters; jax {m['jax']} on {m['backend']} ({m['cpu_count']} cores; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_end'])}). *cache cold*: an empty cache dir "
        "(`jax_compilation_cache_dir`, min compile time 0, min entry size -1); *cache warm*: a new interpreter "
        f"on the dir the cold run filled. Cache entries after cold / added by warm: "
        f"{', '.join(str(e['after_cold']) + '/' + str(e['added_by_warm']) for e in m['cache_entries'])}.",
        "",
        "| step / setting | trace + lower s | XLA compile s | total s | warm / cold total | process wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    f = lambda d: f"{d['median_s']:.2f} ({d['p10_s']:.2f} / {d['p90_s']:.2f})"
    for name, r in result["rows"].items():
        lines.append(
            f"| {name} | {f(r['lower_s'])} | {f(r['compile_s'])} | {f(r['total_s'])} | "
            f"{_fmt(r.get('total_vs_cold'))} | {f(r['process_wall'])} |"
        )
    return lines


# ----------------------------------------------------------------------------- pipeline


def run_pipeline(args) -> dict:
    from jmtl.data import pipeline

    data_dir = args.data_dir or os.environ.get("JMTL_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    ds = pipeline.load("multi_mnist", data_dir=data_dir, cache_dir=args.data_cache_dir)
    tasks = tuple(Task(name, "classification", spec.num_classes) for name, spec in ds.spec.labels.items())
    model = mtl.build(tasks, encoder="multi_lenet")
    transform, opt = weighting.get("equal"), optax.adam(1e-3)
    driver = parallel.Driver("single")
    cfg = step_lib.StepConfig(input_key=ds.spec.input_key, input_transform=ds.spec.input_transform)
    step = driver.compile_step(lambda ax: step_lib.make_train_step(model, tasks, transform, opt, cfg, axis_name=ax))
    example = np.zeros((1,) + tuple(ds.spec.input_shape), np.float32)
    state = driver.replicate(step_lib.init_state(model, transform, opt, example, len(tasks), seed=0))
    it = ds.train_iterator(args.batch, seed=0)
    # The in-memory feed: distinct batches of the same data, placed on the device beforehand.
    resident = [driver.shard_batch(next(it)) for _ in range(min(args.pipeline_steps, 64))]

    def loop(state, n: int, feed):
        """experiments/train.py's loop: batch, step, the previous step's finiteness fetched."""
        pending = None
        t0 = time.perf_counter()
        for i in range(n):
            state, metrics = step(state, feed(i))
            if pending is not None:
                driver.host_metrics({"finite": pending["finite"], "losses_finite": pending["losses_finite"]})
            pending = metrics
        jax.block_until_ready((state, pending))
        return state, time.perf_counter() - t0

    feeds = {
        "pipeline": lambda i: driver.shard_batch(next(it)),
        "in-memory device batches": lambda i: resident[i % len(resident)],
    }
    for feed in feeds.values():  # warm-up (compilation, prefetch thread)
        state, _ = loop(state, 20, feed)
    secs = {name: [] for name in feeds}
    for _ in range(args.pipeline_repeats):
        for name, feed in feeds.items():
            state, s = loop(state, args.pipeline_steps, feed)
            secs[name].append(s)
    rows = {}
    for name, s in secs.items():
        sps = args.pipeline_steps / np.asarray(s)
        rows[name] = {**spread_of(sps, "_steps_per_s"), **spread(np.asarray(s) / args.pipeline_steps)}
    ratios = np.asarray(secs["in-memory device batches"]) / np.asarray(secs["pipeline"])  # throughput ratio
    ratio = spread_of(ratios)
    return {
        "meta": {
            **meta_info(args),
            "repeats": args.pipeline_repeats,
            "steps_per_segment": args.pipeline_steps,
            "dataset": ds.spec.name,
            "data_dir": data_dir,
            "load_average_end": os.getloadavg(),
        },
        "rows": rows,
        "throughput_ratio": ratio,  # pipeline / in-memory, per alternating pair of segments
        "goal_met": ratio["median"] >= 0.95,
    }


def pipeline_report(result) -> list[str]:
    m, r = result["meta"], result["throughput_ratio"]
    lines = [
        "# Train-loop throughput: real MultiMNIST pipeline vs in-memory device batches",
        "",
        f"Multi-LeNet, equal weighting, batch {m['batch']}, one device; {m['repeats']} alternating segments of "
        f"{m['steps_per_segment']} steps per feed after warm-up; jax {m['jax']} on {m['backend']} "
        f"({m['cpu_count']} cores; load average at the end {', '.join(f'{x:.1f}' for x in m['load_average_end'])}).",
        "",
        "| feed | steps/s median | p10 / p90 | ms per step |",
        "|---|---:|---:|---:|",
    ]
    for name, row in result["rows"].items():
        lines.append(
            f"| {name} | {row['median_steps_per_s']:.1f} | {row['p10_steps_per_s']:.1f} / "
            f"{row['p90_steps_per_s']:.1f} | {row['median_ms']:.1f} |"
        )
    lines += [
        "",
        f"Pipeline / in-memory throughput: **{100 * r['median']:.1f} %** (p10 {100 * r['p10']:.1f} %, "
        f"p90 {100 * r['p90']:.1f} %); goal >= 95 %: {'met' if result['goal_met'] else 'NOT met'}.",
    ]
    return lines


# ----------------------------------------------------------------------------- rows

# Cumulative sets of shared Multi-LeNet params the per-task rows are taken w.r.t., from the top:
# each step down adds one piece of the backward pass (see rows_report).
ROW_SETS = (
    ("fc", ("fc.kernel", "fc.bias")),
    ("+ conv2 weights", ("conv2.kernel", "conv2.bias")),
    ("+ conv1 bias", ("conv1.bias",)),
    ("+ conv1 kernel", ("conv1.kernel",)),
)
_TORCH_NAMES = {"fc.kernel": "fc.weight", "conv2.kernel": "conv2.weight", "conv1.kernel": "conv1.weight"}


def _jmtl_rows(k: int, batch_size: int, wanted: tuple[str, ...]):
    """A jitted forward + K per-task gradient rows (``lax.map`` of plain vjp calls, the CPU default)
    w.r.t. the shared leaves named in ``wanted`` (the others are constants); ``()`` = forward only."""
    tasks, model, batch = lenet_problem(k, batch_size)
    params = model.init(jax.random.key(0), batch["image"][:1])["params"]
    names = [t.name for t in tasks]
    flat = {f"{layer}.{leaf}": v for layer, leaves in params["shared"].items() for leaf, v in leaves.items()}

    def losses(sub, rest, heads, data):
        shared: dict = {}
        for key, v in {**rest, **sub}.items():
            layer, leaf = key.split(".")
            shared.setdefault(layer, {})[leaf] = v
        out = model.apply({"params": {"shared": shared, "tasks": heads}}, data["image"])
        return jnp.stack([optax.softmax_cross_entropy_with_integer_labels(out[n], data[n]).mean() for n in names])

    # Everything is an argument: a closed-over constant would let XLA fold the forward away.
    @jax.jit
    def rows(sub, rest, heads, data):
        if not sub:
            return losses(sub, rest, heads, data)
        _, vjp = jax.vjp(lambda s: losses(s, rest, heads, data), sub)
        return jax.lax.map(lambda e: jax.flatten_util.ravel_pytree(vjp(e)[0])[0], jnp.eye(k))

    sub = {key: flat[key] for key in wanted}
    rest = {key: v for key, v in flat.items() if key not in wanted}
    args = (sub, rest, params["tasks"], batch)
    jax.block_until_ready(rows(*args))
    return lambda: jax.block_until_ready(rows(*args))


def _torch_rows(torch_ref, k: int, batch_size: int, wanted: tuple[str, ...]):
    """PyTorch's forward + K ``backward(retain_graph=True)`` with only ``wanted`` requiring grad."""

    model = torch_ref.MultiLeNet(k)
    model.train()
    x, ys = torch_ref.make_batch(batch_size, k)
    # The forward-only baseline builds the whole graph (every encoder param requires grad), as the
    # K-backward step's forward does.
    enabled = {_TORCH_NAMES.get(n, n) for n in wanted} if wanted else {n for n, _ in model.encoder.named_parameters()}
    for name, p in model.encoder.named_parameters():
        p.requires_grad_(name in enabled)
    for p in model.heads.parameters():
        p.requires_grad_(False)

    def call():
        losses = torch_ref.task_losses(model, x, ys)
        if not wanted:
            return
        for i, loss in enumerate(losses):
            loss.backward(retain_graph=i + 1 < len(losses))

    return call


def run_rows(args) -> dict:
    """Time of one per-task backward row, split by how far down the encoder it reaches."""
    import jax.flatten_util  # noqa: F401  (used inside the jitted rows)

    torch_ref, torch_note = torch_setup(args.batch, not args.no_torch)
    k = args.rows_k
    fns = {"jmtl forward": _jmtl_rows(k, args.batch, ())}
    if torch_ref is not None:
        fns["torch forward"] = _torch_rows(torch_ref, k, args.batch, ())
    wanted: tuple[str, ...] = ()
    for label, leaves in ROW_SETS:
        wanted += leaves
        fns[f"jmtl {label}"] = _jmtl_rows(k, args.batch, wanted)
        if torch_ref is not None:
            fns[f"torch {label}"] = _torch_rows(torch_ref, k, args.batch, wanted)
    samples = time_round_robin(fns, args.repeats, warmup=args.warmup)
    med = {n: float(np.median(v) * 1e3) for n, v in samples.items()}
    result = {
        "meta": {**meta_info(args), "torch": torch_note, "k": k, "load_average_end": list(os.getloadavg())},
        "median_ms": med,
        "samples_ms": {n: [x * 1e3 for x in v] for n, v in samples.items()},
        "rows": {},
    }
    for lib in ("jmtl", "torch"):
        if f"{lib} forward" not in med:
            continue
        prev = 0.0
        for label, _ in ROW_SETS:
            per_row = (med[f"{lib} {label}"] - med[f"{lib} forward"]) / k
            result["rows"].setdefault(label, {})[lib] = {"per_row_ms": per_row, "added_ms": per_row - prev}
            prev = per_row
    return result


def rows_report(result: dict) -> list[str]:
    m = result["meta"]
    has_torch = any("torch" in r for r in result["rows"].values())
    lines = [
        "# Where one per-task backward row's time goes (Multi-LeNet, CPU)",
        "",
        f"Batch {m['batch']}, K = {m['k']} tasks; forward + K per-task gradient rows w.r.t. growing sets of the "
        f"shared params, from the top of the encoder down; {m['repeats']} round-robin repeats; jax {m['jax']} on "
        f"{m['backend']} ({m['cpu_count']} cores; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_end'])}); {m['torch']}. jmtl rows: `lax.map` of plain vjp "
        "calls (the CPU default, `jacobian_chunk_size=1`); PyTorch: K `backward(retain_graph=True)` with only "
        "those params requiring grad. Per row = (median of the variant − median of the forward alone) / K.",
        "",
        "What each step down adds to a row: `fc` the fc layer's gradient; `+ conv2 weights` the backward "
        "through the pool/ReLU of stage 2 and conv2's weight gradient; `+ conv1 bias` conv2's input gradient "
        "and the backward through pool/ReLU of stage 1; `+ conv1 kernel` conv1's weight gradient.",
        "",
        "| rows w.r.t. | jmtl ms / row | added | "
        + ("PyTorch ms / row | added | jmtl / PyTorch |" if has_torch else ""),
        "|---|---:|---:|" + ("---:|---:|---:|" if has_torch else ""),
    ]
    for label, r in result["rows"].items():
        row = f"| {label} | {r['jmtl']['per_row_ms']:.2f} | {r['jmtl']['added_ms']:.2f} |"
        if has_torch and "torch" in r:
            ratio = r["jmtl"]["per_row_ms"] / r["torch"]["per_row_ms"] if r["torch"]["per_row_ms"] > 0 else float("nan")
            row += f" {r['torch']['per_row_ms']:.2f} | {r['torch']['added_ms']:.2f} | {ratio:.2f} |"
        lines.append(row)
    lines += [
        "",
        "Forward alone: "
        + ", ".join(f"{n} {v:.1f} ms" for n, v in result["median_ms"].items() if "forward" in n)
        + ".",
    ]
    return lines


# ----------------------------------------------------------------------------- main

PARTS = {
    "scaling": (run_scaling, scaling_report),
    "compile": (run_compile, compile_report),
    "pipeline": (run_pipeline, pipeline_report),
    "rows": (run_rows, rows_report),
}


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", nargs="?", default="run", choices=("run", "compile-worker"), help=argparse.SUPPRESS)
    p.add_argument("--parts", default="scaling,compile,pipeline,rows")
    p.add_argument("--ks", type=_ints, default=[2, 5, 10, 20, 40])
    p.add_argument("--repeats", type=int, default=15, help="round-robin repeats per scaling row")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument(
        "--chunks", type=_ints, default=[1, 4], help="chunk sizes of the bare Jacobian rows (0 is always run)"
    )
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--method-chunks", type=_ints, default=[0, 1], help="chunk sizes the methods run with")
    p.add_argument("--no-torch", action="store_true", help="leave out the PyTorch rows")
    p.add_argument("--no-rep", action="store_true", help="leave out the representation-mode row")
    p.add_argument("--rows-k", type=int, default=8, help="tasks of the per-row profile (part rows)")
    p.add_argument("--compile-repeats", type=int, default=3)
    p.add_argument("--compile-k", type=int, default=2)
    p.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)  # compile-worker only
    p.add_argument("--pipeline-steps", type=int, default=200, help="steps per timed segment")
    p.add_argument("--pipeline-repeats", type=int, default=5)
    p.add_argument("--data-dir", default="", help="raw MNIST files (default $JMTL_DATA_DIR or ../shared/data)")
    p.add_argument("--data-cache-dir", default=None, help="tfds cache (default $JMTL_CACHE_DIR or ~/.cache/jmtl/tfds)")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    args.parts = [x for x in args.parts.split(",") if x]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"unknown part(s) {', '.join(sorted(unknown))}; valid: {', '.join(PARTS)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.mode == "compile-worker":
        compile_worker(args)
        return {}
    results = {}
    for part in args.parts:
        run, report = PARTS[part]
        results[part] = run(args)
        write_outputs(Path(args.out_dir) / f"bench_{part}", results[part], report(results[part]), provenance())
    return results


if __name__ == "__main__":
    main()
