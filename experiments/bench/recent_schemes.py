"""Cost of the recent schemes' own computation (NTKMTL, PCD, GO4Align, CR-MOGM, NTKMTL-SR) beside
existing Gramian schemes (MGDA, Nash-MTL, UPGrad), K = 2..40.

Each row times one jitted ``update`` (state carried, on a fixed random ``[K, d]`` Jacobian, d = 4096,
rows of norms spanning 1e-2..1e2), not the train step: the Jacobian / Gramian the step computes is
the same for every Gramian scheme, so the scheme's own cost is what differs. All rows of one K are
timed round-robin in a shuffled order (ratios are within-run).

    python -m experiments.bench.recent_schemes [--ks 2,5,10,20,40] [--repeats 30]   # results/bench/bench_recent_schemes.{json,md}
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from experiments.bench.common import RESULTS, provenance, spread, started_now, time_round_robin, write_outputs
from jmtl import weighting

SCHEMES = ("mgda", "nash_mtl", "upgrad", "ntkmtl", "pcd", "cr_mogm", "go4align", "ntkmtl_sr")
D = 4096


def _step_fn(name: str, k: int):
    t = weighting.get(name)
    rng = np.random.default_rng(k)
    jac = jnp.asarray(rng.normal(size=(k, D)) * np.logspace(-2, 2, k)[:, None], jnp.float32)
    losses = jnp.asarray(rng.uniform(0.5, 2.0, size=k), jnp.float32)
    gram = jac @ jac.T
    layout = (("representation", (64, D // 64)),)  # only NTKMTL-SR reads it

    @jax.jit
    def run(state):
        out, state = weighting.update_from(
            t,
            losses,
            state,
            jacobian=jac,
            gramian=gram,
            key=jax.random.key(0),
            step=jnp.zeros((), jnp.int32),
            layout=layout,
        )
        return out.weights, state

    box = {"state": t.init(k)}

    def call():
        w, box["state"] = run(box["state"])
        return jax.block_until_ready(w)

    return call


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="2,5,10,20,40")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default=str(RESULTS / "bench_recent_schemes"))
    args = parser.parse_args(argv)
    started = started_now()
    rows = {}
    for k in [int(x) for x in args.ks.split(",")]:
        fns = {name: _step_fn(name, k) for name in SCHEMES}
        times = time_round_robin(fns, args.repeats)
        rows[k] = {name: spread(times[name]) for name in SCHEMES}
    lines = [
        "# Recent schemes: cost of the scheme's own update",
        "",
        "Median ms per jitted `update` on a fixed [K, 4096] Jacobian (its Gramian given), round-robin "
        "within each K; in brackets the ratio to MGDA's median in the same run.",
        "",
        "| K | " + " | ".join(SCHEMES) + " |",
        "|---|" + "---|" * len(SCHEMES),
    ]
    for k, r in rows.items():
        base = r["mgda"]["median_ms"]
        cells = [f"{r[n]['median_ms']:.3f} ({r[n]['median_ms'] / base:.1f}x)" for n in SCHEMES]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    write_outputs(
        args.out,
        {"d": D, "repeats": args.repeats, "rows": {str(k): v for k, v in rows.items()}},
        lines,
        provenance(started=started),
    )


if __name__ == "__main__":
    main()
