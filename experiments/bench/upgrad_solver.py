r"""UPGrad's K dual-cone QPs: the solver before and after O(K²) steps, from K = 2 to per-example K.

    python -m experiments.bench.upgrad_solver                  # what results/bench/upgrad_solver.md ran
    python -m experiments.bench.upgrad_solver --ks 2,3 --repeats 2 --out /tmp/x   # smoke

Times UPGrad's weights from a Gramian alone (``jmtl.weighting.gramian._upgrad_weights``: normalise,
solve the K QPs ``min_{v ≥ e_i} vᵀG'v``, average), float32, jitted, round robin:

* ``before``: the previous solver, one masked ``K×K`` Cholesky solve per Lawson-Hanson step for all
  K problems in one ``vmap`` (kept in :mod:`jmtl.weighting.qp` as the exact fallback loop,
  ``_exact_phase``, run here from the empty passive set: the same iterations as before);
* ``after``: :func:`jmtl.weighting.qp.nonneg_qp_solve` as now (rank-one updates of ``H_PP⁻¹``, O(K²)
  a step, the exact loop only when the final check fails) in batches of
  ``gramian._qp_batch_size(K)`` problems.

The Gramians are those of K random Gaussian rows in R^(2K+8) (about half the pairs conflict, as
the per-example Gramians of ``experiments.bench.per_example``). ``max |Δw|`` is the largest
difference of the two weight vectors; ``iters`` the most Lawson-Hanson steps any of the K
problems took (after).
"""

from __future__ import annotations

import argparse

import numpy as np

from experiments import script_checks
from experiments.bench import common

KS = (2, 3, 5, 10, 32, 64, 128, 256)
BEFORE_MAX_K = 128  # the previous solver takes minutes a call above this (2 cores)


def _functions(k: int):
    import jax
    import jax.numpy as jnp

    from jmtl.weighting import gramian, qp

    def before(gram):
        g = gramian._normalised_gramian(gram, 1e-4, 1e-4)
        h = 0.5 * (g + g.T)

        def one(u):
            c = jnp.matmul(h, u, precision=jax.lax.Precision.HIGHEST)
            zero = jnp.zeros((k,), h.dtype)
            _, x, _ = qp._exact_phase(
                h, c, 0.0, qp.default_max_iter(k), jnp.zeros((), jnp.int32), zero, zero > 0, jnp.asarray(False)
            )
            return u + jnp.maximum(x, 0.0)

        return jnp.mean(jax.vmap(one)(jnp.eye(k, dtype=h.dtype)), axis=0)

    def after(gram):
        return gramian._upgrad_weights(gram, 1e-4, 1e-4, None)

    def iterations(gram):
        g = gramian._normalised_gramian(gram, 1e-4, 1e-4)
        res = jax.vmap(lambda u: qp.dual_cone_solve(g, u))(jnp.eye(k, dtype=g.dtype))
        return jnp.max(res.iterations), jnp.all(res.converged)

    return jax.jit(before), jax.jit(after), jax.jit(iterations)


def run(ks, repeats: int, before_max_k: int) -> dict:
    import jax
    import jax.numpy as jnp

    from jmtl.weighting import gramian

    out = {}
    for k in ks:
        rng = np.random.default_rng(k)
        jac = rng.normal(size=(k, 2 * k + 8))
        gram = jnp.asarray(jac @ jac.T, jnp.float32)
        before, after, iterations = _functions(k)
        fns = {"after": lambda: jax.block_until_ready(after(gram))}
        if k <= before_max_k:
            fns["before"] = lambda: jax.block_until_ready(before(gram))
        w_after = np.asarray(after(gram))
        iters, conv = iterations(gram)
        cell = {
            "iterations_max": int(iters),
            "converged": bool(conv),
            "qp_batch": gramian._qp_batch_size(k, jnp.float32),
            "conflicting_pairs": float(np.mean((jac @ jac.T)[np.triu_indices(k, 1)] < 0)) if k > 1 else 0.0,
        }
        times = common.time_round_robin(fns, repeats, warmup=1)
        for name, ts in times.items():
            cell[name] = common.spread_of([1e3 * t for t in ts], "_ms")
        if "before" in fns:
            cell["max_abs_diff"] = float(np.max(np.abs(np.asarray(before(gram)) - w_after)))
            cell["speedup"] = float(np.median(np.asarray(times["before"]) / np.asarray(times["after"])))
        out[str(k)] = cell
        print(k, cell, flush=True)
    return out


def markdown(results: dict, meta: dict) -> list[str]:
    lines = [
        "# UPGrad's dual-cone QPs: the solver before and after (float32, CPU)",
        "",
        f"Written by `experiments/bench/upgrad_solver.py` (its docstring says what each row does). "
        f"UPGrad's weights from a K x K Gramian alone, median of {meta['repeats']} round-robin calls; "
        "`speedup` = median of the per-round ratios before / after.",
        "",
        "| K | before ms (p10-p90) | after ms (p10-p90) | speedup | max abs diff w | iters (max of K) | QPs per batch |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]

    def cell(c, name):
        if name not in c:
            return "not run (minutes a call)"
        r = c[name]
        return f"{r['median_ms']:.3g} ({r['p10_ms']:.3g}-{r['p90_ms']:.3g})"

    for k, c in results.items():
        speed = f"{c['speedup']:.2f}" if "speedup" in c else ""
        diff = f"{c['max_abs_diff']:.1e}" if "max_abs_diff" in c else ""
        lines.append(
            f"| {k} | {cell(c, 'before')} | {cell(c, 'after')} | {speed} | {diff} | {c['iterations_max']} | {c['qp_batch']} |"
        )
    return lines


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ks", default=",".join(map(str, KS)))
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--before-max-k", type=int, default=BEFORE_MAX_K)
    parser.add_argument("--out", default=None, help="path without suffix (default results/bench/upgrad_solver)")
    parser.add_argument(
        script_checks.ALLOW_FEWER_FLAG,
        action="store_true",
        help="let --out replace a file with K values this run lacks",
    )
    args = parser.parse_args(argv)
    try:  # every option checked before any work: one line naming the fix, exit 2
        ks = script_checks.int_list("--ks", args.ks, low=2, example="2,3,128")
    except ValueError as e:
        parser.error(str(e))
    out = args.out or str(common.RESULTS / "upgrad_solver")
    # A run over fewer K values never replaces the committed table (refused here, before any work).
    cells_of = lambda record: record["results"].keys()  # noqa: E731
    try:
        script_checks.check_cells(out + ".json", {str(k) for k in ks}, cells_of, args.allow_fewer_cells)
    except (script_checks.FewerCellsError, ValueError) as e:
        parser.error(str(e))
    prov_start = common.started_now()
    meta = {"repeats": args.repeats, "ks": ks, "before_max_k": args.before_max_k}
    results = run(ks, args.repeats, args.before_max_k)
    script_checks.write_results(
        out,
        {"meta": meta, "results": results},
        markdown(results, meta),
        cells_of,
        args.allow_fewer_cells,
        common.provenance(started=prov_start),
    )
    return results


if __name__ == "__main__":
    main()
