"""Do the in-graph solvers meet their optimality conditions on badly scaled gradients?

For random Jacobians whose row norms span 1e-2..1e2 (``K = 2..10``, float64) every solver of
:mod:`jmtl.weighting.solvers` / :mod:`jmtl.weighting.qp` is run and its optimality condition is
checked independently in numpy (MGDA also against the exact min-norm point, found by enumerating
the active sets). Writes ``results/solver_convergence.md``::

    python -m experiments.solver_convergence            # -> results/solver_convergence.md

``tests/test_solvers_convergence.py`` asserts the same residuals stay below 1e-4.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KS = tuple(range(2, 11))
FAIR_ALPHAS = (0.5, 1.0, 2.0)


def random_jacobian(k: int, seed: int, *, d: int | None = None) -> np.ndarray:
    """``[K, d]`` Gaussian directions with row norms log-uniform in 1e-2..1e2 (both ends present)."""
    rng = np.random.default_rng(1000 * k + seed)
    d = 2 * k + 3 if d is None else d
    rows = rng.normal(size=(k, d))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    norms = 10.0 ** rng.uniform(-2, 2, size=k)
    norms[:2] = (1e-2, 1e2)
    return rows * rng.permutation(norms)[:, None]


# ----------------------------------------------------------------------------- independent checks (numpy)


def exact_min_norm(gram: np.ndarray) -> np.ndarray:
    """The min-norm convex weights by enumerating supports: on support S, ``alpha_S ∝ G_SS^-1 1``."""
    k = gram.shape[0]
    best, best_val = None, np.inf
    for r in range(1, k + 1):
        for s in itertools.combinations(range(k), r):
            s = list(s)
            sol, *_ = np.linalg.lstsq(gram[np.ix_(s, s)], np.ones(r), rcond=None)
            if sol.sum() <= 0 or np.any(sol < -1e-12 * np.abs(sol).max()):
                continue
            alpha = np.zeros(k)
            alpha[s] = np.maximum(sol, 0) / sol.sum()
            val = alpha @ gram @ alpha
            if val < best_val:
                best, best_val = alpha, val
    return best


def mgda_residual(gram: np.ndarray, alpha: np.ndarray) -> float:
    """Relative KKT residual of ``min_{alpha in simplex} alpha^T G alpha`` and excess over the exact norm."""
    t = alpha @ gram @ alpha
    ga = gram @ alpha
    kkt = (
        max(
            np.max(np.maximum(t - ga, 0.0)),
            np.max(alpha * np.abs(ga - t)),
            abs(alpha.sum() - 1) * t,
            np.max(np.maximum(-alpha, 0)) * t,
        )
        / t
    )
    exact = exact_min_norm(gram)
    excess = abs(t - exact @ gram @ exact) / (exact @ gram @ exact)
    return float(max(kkt, excess))


def nash_residual(gram: np.ndarray, alpha: np.ndarray) -> float:
    """``max_k |(G alpha)_k alpha_k - 1|`` (Navon et al. 2022, Eq. 5)."""
    return float(np.max(np.abs((gram @ alpha) * alpha - 1.0)))


def fair_residual(gram: np.ndarray, w: np.ndarray, alpha: float) -> float:
    """``max_k |(G w)_k w_k^(1/alpha) - 1|`` (Ban & Ji 2024: ``G w = w^(-1/alpha)``)."""
    return float(np.max(np.abs((gram @ w) * w ** (1.0 / alpha) - 1.0)))


def cagrad_residual(gram: np.ndarray, w: np.ndarray, c: float) -> float:
    """Relative Frank-Wolfe gap of CAGrad's inner problem ``min_w w.(G b) + c |g_0| |g_w|`` at ``w``."""
    k = gram.shape[0]
    a = gram @ np.full(k, 1.0 / k)
    coef = c * np.sqrt(max(np.mean(gram), 0.0))
    root = np.sqrt(w @ gram @ w)
    grad = a + coef * (gram @ w) / root
    feas = max(abs(w.sum() - 1), np.max(np.maximum(-w, 0)))
    return float(max((grad @ w - grad.min()) / (abs(a @ w) + coef * root), feas))


def dual_cone_residual(gram: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
    """KKT of ``min_{v >= u} v^T G v``: ``v >= u``, ``G v >= 0``, ``(v - u) . G v = 0``, relative to ``|G| |v|``."""
    gv = gram @ v
    scale = np.abs(gram).max() * np.abs(v).max()
    return float(
        max(
            np.max(np.maximum(u - v, 0)) / np.abs(v).max(),
            np.max(np.maximum(-gv, 0)) / scale,
            np.max(np.abs((v - u) * gv)) / (scale * np.abs(v).max()),
        )
    )


# ----------------------------------------------------------------------------- measurement


def solve(method: str, grams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(solutions, iterations)`` of ``method``'s in-graph solver for a stack of Gramians ``[S, K, K]``.

    One compiled, ``vmap``-ped call per shape. MGDA / CAGrad / FairGrad: the weights; Nash-MTL: alpha;
    UPGrad: ``[S, K (u = e_i), K]`` dual-cone weights; DualProj: ``[S, K]`` for ``u = 1/K``.
    Call with float64 enabled (``jax.config.update('jax_enable_x64', True)``).
    """
    import jax.numpy as jnp

    from jmtl.weighting import qp, solvers
    from jmtl.weighting.gramian import _normalised_gramian

    k = grams.shape[-1]
    if method == "mgda":
        fn = lambda g: solvers.min_norm_solve(g)
    elif method == "nash_mtl":
        fn = lambda g: (lambda r: r._replace(x=r.x[0]))(solvers.nash_solve(g))
    elif method.startswith("fairgrad="):
        alpha = float(method.split("=")[1])
        fn = lambda g: solvers.alpha_fair_solve(g, alpha)
    elif method == "cagrad":
        fn = lambda g: solvers.cagrad_solve(g, 0.5)
    elif method == "upgrad":
        fn = lambda g: jax.vmap(lambda u: qp.dual_cone_solve(_normalised_gramian(g, 1e-4, 1e-4), u))(
            jnp.eye(k, dtype=g.dtype)
        )
    elif method == "dualproj":
        fn = lambda g: qp.dual_cone_solve(_normalised_gramian(g, 1e-4, 1e-4), jnp.full((k,), 1.0 / k, g.dtype))
    else:
        raise ValueError(f"unknown method {method!r}")
    res = jax.jit(jax.vmap(fn))(jnp.asarray(grams, jnp.float64))
    return np.asarray(res.x), np.asarray(res.iterations)


def residual(method: str, gram: np.ndarray, x: np.ndarray) -> float:
    """The relative optimality residual of ``method``'s solution ``x`` for ``gram`` (numpy, float64)."""
    k = gram.shape[0]
    if method == "mgda":
        return mgda_residual(gram, x)
    if method == "nash_mtl":
        return nash_residual(gram, x)
    if method.startswith("fairgrad="):
        return fair_residual(gram, x, float(method.split("=")[1]))
    if method == "cagrad":
        return cagrad_residual(gram, x, 0.5)
    g = gram.copy()
    g = g / np.trace(g) + 1e-4 * np.eye(k)  # UPGrad / DualProj's regularised Gramian
    if method == "upgrad":
        return max(dual_cone_residual(g, u, v) for u, v in zip(np.eye(k), x))
    return dual_cone_residual(g, np.full(k, 1.0 / k), x)


def measure(method: str, k: int, seeds: int = 3) -> tuple[float, int]:
    """``(worst residual, most iterations)`` of ``method``'s solver over ``seeds`` random Jacobians."""
    grams = np.stack([(lambda j: j @ j.T)(random_jacobian(k, s)) for s in range(seeds)])
    xs, its = solve(method, grams)
    return max(residual(method, g, x) for g, x in zip(grams, xs)), int(np.max(its))


METHODS = ("mgda", "nash_mtl", *(f"fairgrad(alpha={a})" for a in FAIR_ALPHAS), "cagrad", "upgrad", "dualproj")


def _method_key(m: str) -> str:
    return m.replace("fairgrad(alpha=", "fairgrad=").rstrip(")")


def table(seeds: int = 3) -> str:
    lines = [
        "# In-graph solver convergence",
        "",
        "Random Jacobians with row norms spanning 1e-2..1e2 (Gaussian directions, d = 2K + 3), float64,",
        f"{seeds} seeds per K. Residual: the solver's optimality condition checked in numpy, relative (MGDA:",
        "KKT of the min-norm problem and excess over the exact min-norm point from enumerated active sets;",
        "Nash-MTL: max |(G a)_k a_k - 1|; FairGrad: max |(G w)_k w_k^(1/alpha) - 1|; CAGrad: relative",
        "Frank-Wolfe gap of the inner problem; UPGrad / DualProj: KKT of the dual-cone QP on their",
        "regularised Gramian). Iterations: the most any seed used (MGDA K = 2: closed form, 0).",
        "Written by `python -m experiments.solver_convergence`.",
        "",
        "| method | K | worst residual | iterations |",
        "|---|---|---|---|",
    ]
    for m in METHODS:
        for k in KS:
            r, it = measure(_method_key(m), k, seeds)
            lines.append(f"| {m} | {k} | {r:.1e} | {it} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "results" / "solver_convergence.md"))
    args = parser.parse_args()
    from experiments import script_checks
    from jmtl.training import cli

    with cli.one_line_errors():
        script_checks.at_least("--seeds", args.seeds, 1)
        script_checks.output_path("--out", str(Path(args.out).with_suffix("")), (Path(args.out).suffix,))
    jax.config.update("jax_enable_x64", True)
    from experiments.results_io import provenance, provenance_markdown

    text = table(args.seeds) + "\n".join(provenance_markdown(provenance())) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
