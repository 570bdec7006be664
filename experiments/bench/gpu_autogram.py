"""One GPU, under 8 minutes: the Gramian without the Jacobian against the rows at large d and K, and
per-example UPGrad at B = 256, in float32 and bfloat16 (issue 25 §5).

    python -m experiments.bench.gpu_autogram                          # -> results/gpu/gpu_autogram.{json,md}
    python -m experiments.bench.gpu_autogram --tiny --out /tmp/x      # CPU smoke (seconds), what CI runs

Part 1, per (model, K, dtype): three jitted functions ``params -> G [K, K]`` from
``experiments.bench.autogram`` (the engine, rows in chunks of 1, rows in one vmap), compiled, timed
round-robin, peak memory from XLA's analysis of each compiled function; the engine's G is checked
against the rows' in the same run. Models: the wide MLP (d ~ 3.1e6) and MTAN's SegNet (2.5e7 shared
params; 32x32 images, batch 2, as in that benchmark) at K = 2, 10, 40, 139. bfloat16: params and inputs in bfloat16
(no casts inside the loss, so every layer can be tapped).

Part 2: per-example objectives (instance-wise risk minimisation, K = B = 256) on Multi-LeNet with
UPGrad through ``jmtl.mtl_value_and_grad(per_example=True)``, beside the mean-loss step, per dtype
(bfloat16 as the trainer's mixed precision: float32 params cast inside the loss, solver in float32).

A ``--budget_s`` guard skips the cells that would start after the budget (listed as skipped).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import autogram as ag_bench
from experiments.bench import common

KS = (2, 10, 40, 139)
DTYPES = ("float32", "bfloat16")


def _cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def gramian_cells(models, ks, dtypes, repeats: int, tiny: bool, deadline: float) -> list[dict]:
    cells = []
    for name in models:
        for k in ks:
            for dtype in dtypes:
                cell = {"model": name, "k": k, "dtype": dtype, "methods": {}}
                if time.perf_counter() > deadline:
                    cell["status"] = "skipped: over --budget_s"
                    cells.append(cell)
                    continue
                loss32, params, d = ag_bench.problem(name, k, quick=tiny)
                cell["d_shared"] = d
                params = _cast(params, dtype)

                def loss_fn(p, f=loss32):
                    return f(p)

                fns, grams = {}, {}
                for method in ag_bench.METHODS:
                    t0 = time.perf_counter()
                    rec = {}
                    try:
                        compiled = jax.jit(ag_bench.gramian_fn(method, loss_fn, k)).lower(params).compile()
                        rec["compile_s"] = time.perf_counter() - t0
                        rec["memory"] = common.memory_mib(compiled)
                        grams[method] = np.asarray(compiled(params), np.float64)
                        fns[method] = lambda c=compiled: jax.block_until_ready(c(params))
                        rec["status"] = "ran"
                    except Exception as e:  # noqa: BLE001  (an out-of-memory cell is a finding)
                        rec.update(status="failed", error=f"{type(e).__name__}: {str(e)[:200]}")
                    cell["methods"][method] = rec
                if fns:
                    for method, seconds in common.time_round_robin(fns, repeats=repeats, warmup=1).items():
                        cell["methods"][method].update(common.spread(seconds))
                ref = grams.get("rows_c0", grams.get("rows_c1"))
                if ref is not None and "autogram" in grams:
                    cell["max_rel_diff"] = float(np.max(np.abs(grams["autogram"] - ref)) / np.max(np.abs(ref)))
                cell["status"] = "ran"
                cells.append(cell)
                print(f"{name} K={k} {dtype}: done", flush=True)
    return cells


def per_example_cells(batch: int, dtypes, repeats: int, tiny: bool, deadline: float) -> list[dict]:
    import jmtl
    from jmtl.models import encoders

    cells = []
    for dtype in dtypes:
        if time.perf_counter() > deadline:
            cells.append({"dtype": dtype, "status": "skipped: over --budget_s"})
            continue
        rng = np.random.default_rng(0)
        side = 28
        x = jnp.asarray(rng.normal(size=(batch, side, side, 1)), jnp.float32)
        y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
        import flax.linen as nn

        class Net(nn.Module):
            @nn.compact
            def __call__(self, x):
                return nn.Dense(10, name="head")(encoders.MultiLeNet(name="shared")(x, train=False))

        net = Net()
        params = jax.jit(lambda: net.init(jax.random.key(0), x[:1])["params"])()

        def per_example_losses(p, x, y):
            # Mixed precision as the trainer's compute_dtype: float32 master params, the forward and
            # backward passes in `dtype`, the losses, rows and UPGrad's solver in float32.
            logits = net.apply({"params": _cast(p, dtype)}, x.astype(dtype)).astype(jnp.float32)
            return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]

        vg = jmtl.mtl_value_and_grad(per_example_losses, "upgrad", per_example=True, jacobian_chunk_size=0)
        wstate = vg.init(params, batch)
        upgrad = jax.jit(lambda p: vg(p, wstate, x, y).grads)
        mean = jax.jit(jax.grad(lambda p: jnp.mean(per_example_losses(p, x, y))))
        cell = {"dtype": dtype, "batch": batch, "methods": {}}
        fns = {}
        for label, fn in (("per-example UPGrad", upgrad), ("mean loss (one backward)", mean)):
            t0 = time.perf_counter()
            compiled = fn.lower(params).compile()
            cell["methods"][label] = {"compile_s": time.perf_counter() - t0, "memory": common.memory_mib(compiled)}
            fns[label] = lambda c=compiled: jax.block_until_ready(c(params))
        for label, seconds in common.time_round_robin(fns, repeats=repeats, warmup=1).items():
            cell["methods"][label].update(common.spread(seconds))
        cell["status"] = "ran"
        cells.append(cell)
        print(f"per-example {dtype}: done", flush=True)
    return cells


def report(result: dict) -> list[str]:
    f = common.fmt
    lines = [
        "# The Gramian without the Jacobian and per-example UPGrad on one device",
        "",
        f"Device: {result['device']}. Times are medians of round-robin repeats (ms); memory is XLA's analysis of "
        "each compiled function (peak MiB). `autogram`: the engine; `rows_c1` / `rows_c0`: the Jacobian's rows in "
        "chunks of one task / one vmap, then J Jᵀ.",
        "",
        "| model | d shared | K | dtype | autogram ms | rows_c1 ms | rows_c0 ms | autogram MiB | rows_c1 MiB | rows_c0 MiB | max rel diff |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in result["gramian"]:
        if c["status"] != "ran":
            lines.append(f"| {c['model']} | — | {c['k']} | {c['dtype']} | {c['status']} | | | | | | |")
            continue
        m = c["methods"]

        def ms(name, m=m):
            r = m.get(name, {})
            return f(r.get("median_ms"), ".1f") if r.get("status") == "ran" else r.get("status", "—")

        def mib(name, m=m):
            return f((m.get(name, {}).get("memory") or {}).get("peak_mib"), ".0f")

        lines.append(
            f"| {c['model']} | {c['d_shared']:,} | {c['k']} | {c['dtype']} | {ms('autogram')} | {ms('rows_c1')} | "
            f"{ms('rows_c0')} | {mib('autogram')} | {mib('rows_c1')} | {mib('rows_c0')} | {f(c.get('max_rel_diff'), '.1e')} |"
        )
    lines += [
        "",
        "Per-example objectives (K = B), Multi-LeNet, UPGrad through `mtl_value_and_grad(per_example=True)`:",
        "",
        "| dtype | B | step | median ms | peak MiB |",
        "|---|---:|---|---:|---:|",
    ]
    for c in result["per_example"]:
        if c["status"] != "ran":
            lines.append(f"| {c['dtype']} | — | {c['status']} | | |")
            continue
        for label, r in c["methods"].items():
            lines.append(
                f"| {c['dtype']} | {c['batch']} | {label} | {f(r.get('median_ms'), '.1f')} | "
                f"{f((r.get('memory') or {}).get('peak_mib'), '.0f')} |"
            )
    return lines


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="CPU smoke: a small MLP at K = 2 and per-example at B = 4, both dtypes"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget_s", type=float, default=420.0, help="skip cells that would start after this")
    parser.add_argument("--out", default=None, help="output path without suffix (default: the committed results file)")
    args = parser.parse_args(argv)
    args.out = common.output_path(parser, args, common.ROOT / "results" / "gpu" / "gpu_autogram")
    started = common.started_now()
    deadline = time.perf_counter() + args.budget_s
    models = ("mlp_wide",) if args.tiny else ("mlp_wide", "segnet")
    ks = (2,) if args.tiny else KS
    batch = 4 if args.tiny else 256
    result = {
        "config": vars(args),
        "device": str(jax.devices()[0]),
        "gramian": gramian_cells(models, ks, DTYPES, 2 if args.tiny else args.repeats, args.tiny, deadline),
        "per_example": per_example_cells(batch, DTYPES, 2 if args.tiny else args.repeats, args.tiny, deadline),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    common.write_outputs(args.out, result, report(result), common.provenance(started=started))
    return result


if __name__ == "__main__":
    main()
