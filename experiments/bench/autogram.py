r"""The task Gramian without the Jacobian (``jmtl.training.autogram_flax``) against today's rows
(``jmtl.core.jacobian.per_task_gradients`` in chunks of 1 and in one vmap), in one run.

    python -m experiments.bench.autogram --repeats 3 --segnet-ks 2,10   # what results/bench/autogram.md ran (~17 min, 2 busy cores)
    python -m experiments.bench.autogram                 # the full grid (SegNet at K = 40, 139 too: much longer on CPU)
    python -m experiments.bench.autogram --quick --out-dir /tmp/x   # CI smoke: seconds

For each model and K, three jitted functions ``params -> G [K, K]`` (the Gramian of the shared
params, what a Gramian scheme reads) are compiled: ``autogram`` (per-layer closed forms / per-layer
rows), ``rows_c1`` (``per_task_gradients`` chunk 1, then ``J J^T``), ``rows_c0`` (one vmap over
the K cotangents). Each is timed round-robin with every other function of the same model
(``common.time_round_robin``) and its peak memory is XLA's memory analysis of the compiled
function (arguments + outputs + temporaries). A function whose predicted peak exceeds
``--max-peak-gib`` is compiled but not run (recorded as such). The engine's G is checked against the
rows' G in the same run (``max_rel_diff``).

Models (all: per-task Dense heads on the shared encoder's output, squared error on generated data):
``mlp_small`` (Dense 32-64-64, batch 64, d = 6.8e3), ``mlp_wide`` (Dense 1024-1024-1024, batch 16,
d ~ 3.1e6: where the Gram form wins) and ``segnet`` (MTAN's SegNet encoder-decoder,
``jmtl.models.vision.SEGNET_FILTERS`` widths, 2.5e7 shared params, 32x32 images, batch 2, a 1x1 conv
head per task: conv layers take the per-layer rows).

Note what G alone does not show: with G, the engine still needs one weighted backward pass for the
update (``backward(w)``), where the rows paths reuse J (``w^T J``).
"""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench import common

OUT_DIR = common.ROOT / "results" / "bench"
METHODS = ("autogram", "rows_c1", "rows_c0")
MODELS = ("mlp_small", "mlp_wide", "segnet")
GIB = 2**30


class _Heads(nn.Module):
    """Shared ``encoder`` (params['encoder']) and one head per task (params['head{k}'])."""

    encoder: nn.Module
    k: int
    pixel: bool = False

    @nn.compact
    def __call__(self, x):
        rep = self.encoder(x)
        if self.pixel:  # 1x1 conv per task: a scalar map per image
            return [nn.Dense(1, name=f"head{i}")(rep)[..., 0] for i in range(self.k)]
        return [nn.Dense(1, name=f"head{i}")(rep)[:, 0] for i in range(self.k)]


class _MLP(nn.Module):
    widths: tuple

    @nn.compact
    def __call__(self, x):
        for w in self.widths:
            x = nn.relu(nn.Dense(w)(x))
        return x


class _SegNet(nn.Module):
    filters: tuple

    @nn.compact
    def __call__(self, x):
        from jmtl.models import vision

        return vision.SegNet(filters=self.filters, name="segnet")(x)


def problem(name: str, k: int, quick: bool = False):
    """``(loss_fn, params, d_shared)`` for one model and K."""
    rng = np.random.default_rng(0)
    if name == "segnet":
        from jmtl.models import vision

        filters = (8, 8, 8, 8, 8) if quick else tuple(vision.SEGNET_FILTERS)
        model = _Heads(_SegNet(filters), k, pixel=True)
        x = jnp.asarray(rng.random((2, 32, 32, 3), dtype=np.float32))
        y = jnp.asarray(rng.normal(size=(k, 2, 32, 32)).astype(np.float32))
    else:
        widths, d_in, batch = {"mlp_small": ((32, 64, 64), 16, 64), "mlp_wide": ((1024, 1024, 1024), 1024, 16)}[name]
        if quick:
            widths, d_in, batch = (8, 8), 4, 4
        model = _Heads(_MLP(widths), k)
        x = jnp.asarray(rng.normal(size=(batch, d_in)).astype(np.float32))
        y = jnp.asarray(rng.normal(size=(k, batch)).astype(np.float32))
    # Initialised under jit: eagerly every init op compiles on its own.
    params = jax.jit(lambda: model.init(jax.random.key(0), x)["params"])()

    def loss_fn(p):
        out = model.apply({"params": p}, x)
        # Indexed with Python ints: iterating a >100-row array under jit goes through traced chunks.
        return jnp.stack([jnp.mean((out[i] - y[i]) ** 2) for i in range(k)])

    d = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params["encoder"]))
    return loss_fn, params, d


def gramian_fn(method: str, loss_fn, k: int):
    from jmtl.core.jacobian import per_task_gradients
    from jmtl.core.sharing import Sharing
    from jmtl.training import autogram_flax

    sharing = Sharing("encoder")
    if method == "autogram":
        engine = autogram_flax.Autogram(loss_fn, shared=sharing)
        return lambda p: engine.losses_and_gramian(p)[1]
    chunk = {"rows_c1": 1, "rows_c0": 0}[method]

    def rows(p):
        losses, vjp = jax.vjp(loss_fn, p)
        jac, _ = per_task_gradients(
            vjp, k, losses.dtype, lambda g: sharing.split(g[0]), sharing.split(p)[1], chunk_size=chunk
        )
        return jac @ jac.T

    return rows


def run_model(name: str, ks, repeats: int, quick: bool, max_peak_gib: float) -> dict:
    out = {}
    for k in ks:
        loss_fn, params, d = problem(name, k, quick)
        cell = {"k": k, "d_shared": d, "methods": {}}
        fns, grams = {}, {}
        for method in METHODS:
            rec = {}
            t0 = time.perf_counter()
            try:
                compiled = jax.jit(gramian_fn(method, loss_fn, k)).lower(params).compile()
                rec["compile_s"] = time.perf_counter() - t0
                rec["memory"] = common.memory_mib(compiled)
                peak = (rec["memory"] or {}).get("peak_mib", 0) / 1024
                if peak > max_peak_gib:
                    rec["status"] = f"not run: XLA's predicted peak {peak:.1f} GiB > --max-peak-gib {max_peak_gib}"
                else:
                    grams[method] = np.asarray(compiled(params))
                    fns[method] = lambda c=compiled: jax.block_until_ready(c(params))
                    rec["status"] = "ran"
            except Exception as e:  # noqa: BLE001  (a failure is a finding, recorded)
                rec.update(status="failed", error=f"{type(e).__name__}: {str(e)[:300]}")
                rec["where"] = traceback.format_exc().strip().splitlines()[-3:]
            cell["methods"][method] = rec
            print(f"{name} K={k} {method}: {rec['status']} ({time.perf_counter() - t0:.1f} s)", flush=True)
        if fns:
            times = common.time_round_robin(fns, repeats=repeats, warmup=1)
            for method, seconds in times.items():
                cell["methods"][method].update(common.spread(seconds), seconds=seconds)
        ref = grams.get("rows_c1", grams.get("rows_c0"))
        if ref is not None and "autogram" in grams:
            cell["max_rel_diff"] = float(np.max(np.abs(grams["autogram"] - ref)) / np.max(np.abs(ref)))
        out[str(k)] = cell
    return out


def report(results: dict, args) -> list[str]:
    lines = [
        "# The Gramian without the Jacobian: time and memory per Gramian",
        "",
        "Each row: one jitted `params -> G` function, timed round-robin with the other functions of the same "
        f"model and K ({args.repeats} rounds; median ms and 10th-90th percentile), and XLA's memory analysis of "
        "the compiled function (peak = arguments + outputs - aliased + temporaries). `autogram`: "
        "`jmtl.training.autogram_flax` (dense layers by the cheaper of the Gram form and per-layer rows, "
        "conv layers by per-layer rows, the rest by ordinary rows); `rows_c1` / `rows_c0`: today's "
        "`per_task_gradients` with chunks of 1 / one vmap, then `J J^T`. Ratios are the rows' median over "
        "the engine's (> 1: the engine is faster) and the rows' peak over the engine's. The engine's "
        "update needs one more backward pass (`backward(w)`), not timed here; the rows paths reuse J.",
        "",
        "| model | d (shared) | K | method | ms (median) | p10-p90 | peak MiB | temp MiB | compile s | "
        "time ratio | memory ratio | status |",
        "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for model, by_k in results.items():
        for k, cell in by_k.items():
            auto = cell["methods"].get("autogram", {})
            for method, rec in cell["methods"].items():
                mem = rec.get("memory") or {}
                t_ratio = m_ratio = None
                if method != "autogram" and auto.get("median_ms") and rec.get("median_ms"):
                    t_ratio = rec["median_ms"] / auto["median_ms"]
                if method != "autogram" and (auto.get("memory") or {}).get("peak_mib") and mem.get("peak_mib"):
                    m_ratio = mem["peak_mib"] / auto["memory"]["peak_mib"]
                status = rec.get("status", "")
                if method == "autogram" and "max_rel_diff" in cell:
                    status += f" (max rel diff vs rows {cell['max_rel_diff']:.1e})"
                lines.append(
                    f"| {model} | {cell['d_shared']:,} | {k} | `{method}` | {common.fmt(rec.get('median_ms'), '.1f')} | "
                    f"{common.fmt(rec.get('p10_ms'), '.1f')}-{common.fmt(rec.get('p90_ms'), '.1f')} | "
                    f"{common.fmt(mem.get('peak_mib'), '.4g')} | {common.fmt(mem.get('temp_mib'), '.4g')} | "
                    f"{common.fmt(rec.get('compile_s'), '.1f')} | {common.fmt(t_ratio)} | {common.fmt(m_ratio)} | "
                    f"{status} |"
                )
    return lines


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp_small,mlp_wide,segnet")
    parser.add_argument("--ks", default="2,10,40,139")
    parser.add_argument("--segnet-ks", default="", help="Ks for segnet (default: --ks)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-peak-gib", type=float, default=4.0)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, K = 2, 3, 1 repeat (CI smoke)")
    parser.add_argument("--out-dir", default=str(OUT_DIR))
    args = parser.parse_args(argv)
    models = common.parse_settings(parser, args.models, MODELS, flag="--models")
    prov_start = common.started_now()
    ks = [int(k) for k in args.ks.split(",")]
    if args.quick:
        ks, args.repeats, args.models, models = [2, 3], 1, "mlp_small", ["mlp_small"]
    config = {**vars(args), "ks": ks}
    results = {}
    for model in models:
        model_ks = [int(k) for k in args.segnet_ks.split(",")] if model == "segnet" and args.segnet_ks else ks
        results[model] = run_model(model, model_ks, args.repeats, args.quick, args.max_peak_gib)
    lines = report(results, args)
    common.write_outputs(
        Path(args.out_dir) / "autogram",
        {"config": config, "results": results},
        lines,
        common.provenance(started=prov_start),
    )
    return results


if __name__ == "__main__":
    main()
