r"""The architecture zoo on MultiMNIST: test accuracy (left / right), #params and ms/step of every
architecture with equal weighting and with MGDA, from short but complete runs of
``experiments.train.train`` (Multi-LeNet encoders, the multimnist config otherwise unchanged).

    python -m experiments.bench.architectures --data-dir /work/shared/data --epochs 1

Writes ``results/bench/architectures.json`` (after every run, so an interrupted bench keeps what it
has and ``--resume`` continues it) and ``results/bench/architectures.md``, both with their provenance.
ms/step is timed apart from the run: the same jitted step (single device) on one fixed batch, median of ``--timing-steps`` steps after
two warm-up steps. Also fits a 4-task grouped regression with the MTRL regularizer and plots its
task covariance Omega to ``results/bench/architectures_mtrl_omega.png``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.bench.common import RESULTS, cpu_model, provenance, provenance_markdown, time_round_robin
from experiments.configs import multimnist
from jmtl import data as data_lib
from jmtl import plotting
from jmtl import tasks as tasks_lib
from jmtl.models import architectures, mtl, regularizers
from jmtl.training import builders, parallel
from jmtl.training import loop as train_lib
from jmtl.training import step as step_lib

# Architectures built for one encoder (mtan_segnet: SegNet) do not run on Multi-LeNet.
ARCHS = tuple(a for a in architectures.NAMES if a not in architectures.ENCODER_SPECIFIC)
METHODS = ("equal", "mgda")
# Options for these short runs (the library defaults otherwise).
ARCH_KWARGS = {
    # decay the Gumbel temperature within one epoch (211 steps): 5.0 -> ~1.7
    "learning_to_branch": dict(temperature=5.0, temperature_decay=0.95, temperature_decay_steps=10),
}


def _config(arch: str, method: str, epochs: float, data_dir: str):
    c = multimnist.get_config(method)
    c.dataset.data_dir = data_dir
    c.model.arch = arch
    c.model.arch_kwargs = dict(ARCH_KWARGS.get(arch, {}))
    c.num_epochs = int(max(1, round(epochs)))
    c.parallel = "single"
    c.progress_bar = False
    c.log_every_steps = 50
    return c


def build_step(config):
    """The jitted train step train() would run (one device), its initial state, one fixed train
    batch and the model's param count."""
    ds = data_lib.load(config.dataset.name, data_dir=config.dataset.data_dir or None, **dict(config.dataset.kwargs))
    spec = ds.spec
    tasks = tasks_lib.tasks_from_config(config.tasks.to_dict(), spec)
    model = builders.model(config, tasks)
    steps_per_epoch = ds.steps_per_epoch(config.batch_size)
    weighting = builders.weighting_from_config(config, tasks, steps_per_epoch)
    optimizer = builders.optimizer(config.optimizer, steps_per_epoch)
    driver = parallel.Driver("single")
    example = np.zeros((1,) + tuple(spec.input_shape), np.float32)
    state = driver.replicate(step_lib.init_state(model, weighting, optimizer, example, len(tasks), config.seed))
    cfg = builders.step_config(config, model, spec.input_key, spec.input_transform)
    fn = driver.compile_step(lambda ax: step_lib.make_train_step(model, tasks, weighting, optimizer, cfg, axis_name=ax))
    batch = driver.shard_batch(next(ds.train_iterator(config.batch_size, config.seed)))
    return fn, state, batch, architectures.count_params(state.params)


def _timed(fn, state, batch):
    t0 = time.perf_counter()
    state, metrics = fn(state, batch)
    jax.block_until_ready(metrics["losses"])
    return state, 1e3 * (time.perf_counter() - t0)


def time_step(config, n: int) -> tuple[float, int]:
    """Median ms of the jitted train step over ``n`` steps after two warm-up steps, and #params."""
    fn, state, batch, n_params = build_step(config)
    times = []
    for i in range(n + 2):
        state, ms = _timed(fn, state, batch)
        if i >= 2:
            times.append(ms)
    return statistics.median(times), n_params


def retime(result: dict, data_dir: str, rounds: int) -> None:
    """Times every run's step again, round-robin (one step of each configuration per round), so
    that load changes on a shared machine hit all configurations alike; replaces ms_per_step."""
    fns = {}
    for r in result["runs"]:
        config = _config(r["arch"], r["method"], 1, data_dir)
        fn, state, batch, _ = build_step(config)
        holder = [state]

        def call(fn=fn, batch=batch, holder=holder):
            holder[0], metrics = fn(holder[0], batch)
            jax.block_until_ready(metrics["losses"])

        fns[f"{r['arch']}/{r['method']}"] = call
    samples = time_round_robin(fns, rounds, warmup=2)  # the first warm-up call compiles
    for r in result["runs"]:
        times = 1e3 * np.asarray(samples[f"{r['arch']}/{r['method']}"])
        r["ms_per_step"] = float(np.median(times))
        r["ms_per_step_iqr"] = [float(np.percentile(times, 25)), float(np.percentile(times, 75))]
    result["timing"] = (
        f"round-robin over all configurations in a shuffled order, {rounds} rounds, median (IQR in the JSON)"
    )


def run_one(arch: str, method: str, epochs: float, data_dir: str, timing_steps: int) -> dict:
    config = _config(arch, method, epochs, data_dir)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench_{arch}_{method}_"))
    t0 = time.time()
    try:
        summary, state = train_lib.train(config, str(workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    wall = time.time() - t0
    ms, n_params = time_step(config, timing_steps)
    test = summary["final"]["test"]
    row = {
        "arch": arch,
        "method": method,
        "arch_kwargs": config.model.arch_kwargs.to_dict(),
        "epochs": summary["epochs"],
        "steps": summary["steps"],
        "test_accuracy": {t: test[t]["accuracy"] for t in ("left", "right")},
        "test_loss": {t: test[t]["loss"] for t in ("left", "right")},
        "params": n_params,
        "ms_per_step": ms,
        "run_wall_s": wall,
    }
    if arch == "learning_to_branch":
        row["derived_tree"] = architectures.derived_tree(state.params, ["left", "right"])
    if arch == "cross_stitch":
        row["stitch"] = {
            k: np.asarray(v["alpha"], np.float64).round(3).tolist()
            for k, v in state.params["shared"].items()
            if k.startswith("stitch")
        }
    return row


# ----------------------------------------------------------------------------- MTRL demo


def mtrl_demo(out_png: Path, steps: int = 1500, weight: float = 1e-2, seed: int = 0) -> dict:
    """Tasks {0,1} regress one function of x and {2,3} another (plus noise), on a shared MLP with
    linear heads (their last layers read one shared representation, which MTRL assumes). Trained
    on the sum of the losses + weight * tr(Theta Omega^-1 Theta^T); Omega is plotted."""
    k, d, groups = 4, 10, (0, 0, 1, 1)
    tasks = tuple(tasks_lib.Task(f"t{i}", "regression", 1) for i in range(k))
    model = mtl.build(tasks, encoder="mlp", encoder_kwargs=dict(features=(32, 32)), head_kwargs=dict(hidden=None))
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(2, d))
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, d)))["params"]
    opt = optax.adam(3e-3)
    opt_state = opt.init(params)

    def objective(p, x, ys):
        out = model.apply({"params": p}, x)
        losses = jnp.stack([jnp.mean((out[t.name][:, 0] - ys[:, i]) ** 2) for i, t in enumerate(tasks)])
        return jnp.sum(losses) + weight * regularizers.mtrl(p)

    @jax.jit
    def update(p, s, x, ys):
        g = jax.grad(objective)(p, x, ys)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(steps):
        x = rng.normal(size=(64, d)).astype(np.float32)
        f = np.sin(x @ w.T)  # [64, 2]
        ys = np.stack([f[:, g] for g in groups], axis=1) + 0.3 * rng.normal(size=(64, k))
        params, opt_state = update(params, opt_state, x, ys.astype(np.float32))
    omega = np.asarray(regularizers.mtrl_omega(params), np.float64)
    plotting.plot_relation_matrix(
        omega, [f"t{i} (g{g})" for i, g in enumerate(groups)], out_png, title="MTRL task covariance Omega"
    )
    corr = omega / np.sqrt(np.outer(np.diag(omega), np.diag(omega)))
    return {
        "omega": omega.round(4).tolist(),
        "correlation": corr.round(3).tolist(),
        "groups": list(groups),
        "steps": steps,
        "weight": weight,
    }


# ----------------------------------------------------------------------------- report


def write_markdown(result: dict, path: Path) -> None:
    rows = result["runs"]
    lines = [
        "# Architecture zoo on MultiMNIST",
        "",
        f"Generated by `experiments/bench/architectures.py`. {result['epochs']} epoch(s) per run "
        f"({result.get('steps_per_epoch', '?')} steps of batch 256, Adam 1e-3, Multi-LeNet encoders, one seed), "
        "test accuracy at the end of the run. Short runs: they show that every architecture trains "
        "and what it costs, not which is best (differences of a few tenths of a point are noise).",
        "",
        f"Machine: {result['machine']}, shared with other jobs. ms/step: the jitted train step (single CPU "
        "device) on one fixed batch after warm-up, "
        + result.get("timing", f"median of {result['timing_steps']} consecutive steps")
        + "; a relative cost, not a benchmark of this CPU.",
        "",
        "| arch | weighting | left acc | right acc | #params | ms/step | run wall s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        acc = r["test_accuracy"]
        lines.append(
            f"| {r['arch']} | {r['method']} | {acc['left']:.4f} | {acc['right']:.4f} | {r['params']:,} | "
            f"{r['ms_per_step']:.1f} | {r['run_wall_s']:.0f} |"
        )
    missing = [
        f"{a}/{m}"
        for a in result["archs"]
        for m in result["methods"]
        if not any(r["arch"] == a and r["method"] == m for r in rows)
    ]
    if missing:
        lines += ["", "Not measured: " + ", ".join(missing) + "."]
    notes = result.get("notes", [])
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    extra = [r for r in rows if "derived_tree" in r or "stitch" in r]
    if extra:
        lines += ["", "Learnt structure:", ""]
        for r in extra:
            if "derived_tree" in r:
                lines.append(f"- learning_to_branch ({r['method']}): argmax parents {r['derived_tree']}")
            if "stitch" in r:
                lines.append(f"- cross_stitch ({r['method']}): last stitch matrix {r['stitch'].get('stitch_2')}")
    if "mtrl" in result:
        m = result["mtrl"]
        lines += [
            "",
            "## MTRL task covariance",
            "",
            f"4 regression tasks in two groups {m['groups']} (shared MLP, linear heads), {m['steps']} Adam steps on "
            f"sum of MSEs + {m['weight']} * tr(Theta Omega^-1 Theta^T). Omega (closed form, trace 1), as a correlation:",
            "",
            "| | " + " | ".join(f"t{i}" for i in range(4)) + " |",
            "| --- |" + " ---: |" * 4,
        ]
        for i, row in enumerate(m["correlation"]):
            lines.append(f"| t{i} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
        lines += ["", "![Omega](architectures_mtrl_omega.png)"]
    if "provenance" in result:
        lines += provenance_markdown(result["provenance"])
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="/work/shared/data")
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--timing-steps", type=int, default=10)
    p.add_argument("--resume", action="store_true", help="keep the runs already in <out>/architectures.json")
    p.add_argument("--skip-mtrl", action="store_true")
    p.add_argument("--retime-rounds", type=int, default=0, help="re-time all runs round-robin (see retime)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    archs, methods = args.archs.split(","), args.methods.split(",")
    json_path = out / "architectures.json"
    result = {
        "machine": f"{cpu_model()}, {jax.device_count()} CPU device(s), jax {jax.__version__}",
        "epochs": args.epochs,
        "timing_steps": args.timing_steps,
        "archs": archs,
        "methods": methods,
        "runs": [],
        "notes": [],
    }
    if args.resume and json_path.exists():
        old = json.loads(json_path.read_text())
        result["runs"] = [r for r in old.get("runs", [])]
        for key in ("mtrl", "steps_per_epoch"):
            if key in old:
                result[key] = old[key]
        if "provenance" in old:  # the runs kept were made by that earlier process
            result["earlier_provenance"] = [*old.get("earlier_provenance", []), old["provenance"]]
    # The runs go through jmtl.training.loop.train, whose experiment builder hands the penalty and the
    # temperature schedule to the step; check that it still does.
    train_src = inspect.getsource(builders)
    if "regularizers.from_config" not in train_src:
        result["notes"].append(
            "train() passes no penalty to the step: soft_sharing ran WITHOUT its penalty (= independent)"
        )
    if "model_kwargs_fn" not in train_src:
        result["notes"].append(
            "train() passes no model_kwargs: learning_to_branch ran at its fixed initial temperature"
        )
    result["notes"].append(
        "independent / soft_sharing with MGDA: nothing is shared, so the step takes the plain sum of the task "
        "gradients (the same update as equal weighting)"
    )
    result["notes"].append(
        "soft_sharing: L2 penalty between corresponding tower weights, weight 1e-2 (library default)"
    )
    result["notes"].append(f"learning_to_branch: {ARCH_KWARGS['learning_to_branch']}")
    for method in methods:  # every architecture with one method first: a cut-short bench stays comparable
        for arch in archs:
            if any(r["arch"] == arch and r["method"] == method for r in result["runs"]):
                continue
            print(f"=== {arch} / {method}", flush=True)
            try:
                row = run_one(arch, method, args.epochs, args.data_dir, args.timing_steps)
            except Exception as e:  # keep going: report what could not be measured
                print(f"FAILED {arch}/{method}: {type(e).__name__}: {e}", flush=True)
                result["notes"].append(f"{arch}/{method} failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            result["steps_per_epoch"] = int(round(row["steps"] / row["epochs"]))
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
            result["provenance"] = provenance()
            json_path.write_text(json.dumps(result, indent=2))
            write_markdown(result, out / "architectures.md")
    if args.retime_rounds:
        retime(result, args.data_dir, args.retime_rounds)
    if not args.skip_mtrl and "mtrl" not in result:
        result["mtrl"] = mtrl_demo(out / "architectures_mtrl_omega.png")
    result["provenance"] = provenance()
    json_path.write_text(json.dumps(result, indent=2))
    write_markdown(result, out / "architectures.md")
    print((out / "architectures.md").read_text())


if __name__ == "__main__":
    main()
