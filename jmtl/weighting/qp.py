"""Small constrained quadratic programs solved inside the compiled step (no host round-trips).

* :func:`nonneg_qp` — ``min_x ½ xᵀHx + cᵀx  s.t.  x ≥ 0`` for a symmetric positive-definite ``K×K``
  ``H``, by a primal active-set method (exact up to round-off once the active set is found).
* :func:`dual_cone_weights` — the weights of the projection of ``Jᵀu`` onto the dual cone of the
  rows of ``J``, from the Gramian alone (UPGrad / DualProj).

Everything is a pure ``jax.numpy`` function with static shapes that traces under ``jax.jit`` and
``jax.vmap``; the entry points are themselves ``jax.jit``-wrapped (inlined inside a jitted step,
compiled once per shape when called eagerly, e.g. from :func:`jmtl.weighting.aggregate`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST
_REFINE_STEPS = 1
# Below this K a masked K×K Cholesky solve costs no more than the rank-one updates' matrix-vector
# products (measured at K = 2..10 on CPU: results/bench/upgrad_solver.md), so "auto" solves with it.
_UPDATES_MIN_K = 16


class QPResult(NamedTuple):
    """Solution of a small QP.

    x: the (always feasible) iterate at exit.
    iterations: int32 number of active-set iterations run.
    converged: whether the KKT conditions held (to round-off) at exit rather than the cap being hit.
    """

    x: Array
    iterations: Array
    converged: Array


def default_max_iter(k: int) -> int:
    """Iteration cap of :func:`nonneg_qp` for ``K`` variables (never reached in practice)."""
    return 10 * k + 50


def _tolerance(rtol, eps, h_scale, c_scale, s):
    """The KKT tolerance ``max(rtol, 64·eps)·(max|H|·max|s| + max|c|)`` (round-off of ``Hs + c``)."""
    return jnp.maximum(rtol, 64.0 * eps) * (h_scale * jnp.max(jnp.abs(s)) + c_scale)


def _ratio_step(x, s, passive):
    """Lawson-Hanson's step from feasible ``x`` towards ``s``: ``(x + t(s - x), b)`` with ``t`` the largest
    step keeping the passive coordinates non-negative and ``b`` the coordinate that blocks it."""
    blocking = passive & (s <= 0)
    denom = jnp.where(blocking, x - s, 1.0)
    ratio = jnp.where(blocking, x / denom, jnp.inf)
    b = jnp.argmin(ratio)
    step = jnp.clip(ratio[b], 0.0, 1.0)
    return x + step * (s - x), b, blocking


def _check_and_choose(h, c, x, s, passive, rtol, eps, h_scale, c_scale):
    """One Lawson-Hanson step's checks on the subspace solution ``s`` (both solvers share them).

    Returns ``(s, broken, feasible, j, add)``: ``s`` with a non-finite solve replaced by the current
    ``x`` (``broken``), whether ``s`` is positive on the passive set, the most violated KKT
    constraint ``j`` outside it and whether its violation exceeds the tolerance.
    """
    broken = jnp.logical_not(jnp.all(jnp.isfinite(s)))
    s = jnp.where(broken, x, s)
    feasible = jnp.all(jnp.where(passive, s > 0, True))
    neg_grad = -(jnp.matmul(h, s, precision=_HIGHEST) + c)
    tol = _tolerance(rtol, eps, h_scale, c_scale, s)
    cand = jnp.where(passive, -jnp.inf, neg_grad)
    j = jnp.argmax(cand)
    return s, broken, feasible, j, cand[j] > tol


def _inverse_phase(h, c, rtol, max_iter):
    """Lawson-Hanson on an explicitly maintained ``H_PP⁻¹`` (O(K²) a step; see :func:`nonneg_qp_solve`).

    Returns ``(it, x, passive, clean)``; ``clean`` says the loop met the KKT test (or stalled at
    round-off, as the exact loop would) with a passive-set residual at round-off level, i.e. ``x`` is
    what the exact loop returns. Otherwise the caller finishes with :func:`_exact_phase` from ``x``.
    """
    k = h.shape[0]
    dtype = h.dtype
    eps = jnp.finfo(dtype).eps
    h_scale = jnp.max(jnp.abs(h))
    c_scale = jnp.max(jnp.abs(c))
    idx = jnp.arange(k)
    # σ, the Schur complement of a joining coordinate, is a pivot of the Cholesky factor of H_{P+j}:
    # at round-off level H_{P+j} is numerically singular and the exact loop decides what to do.
    tiny = k * eps * h_scale

    def solve(minv, passive, s):
        # s = -H_PP⁻¹ c_P, carried along the rank-one updates (O(K)), then iterative refinement with
        # the exact H: the explicit inverse drifts (~cond(H_PP)·eps per update); a refinement step
        # brings the residual back to round-off level.
        for _ in range(_REFINE_STEPS):
            r = jnp.where(passive, jnp.matmul(h, s, precision=_HIGHEST) + c, 0.0)
            s = jnp.where(passive, s - jnp.matmul(minv, r, precision=_HIGHEST), 0.0)
        return s

    def body(carry):
        it, x, passive, just_added, _, _, minv, s_next = carry
        s = solve(minv, passive, s_next)
        s, broken, feasible, j, add = _check_and_choose(h, c, x, s, passive, rtol, eps, h_scale, c_scale)
        # --- s feasible: accept it, add the most violated constraint j (or stop).
        # H_{P+j}⁻¹ by bordering: w = H_PP⁻¹ h_Pj, σ = h_jj - h_Pjᵀ w, and with e = w - e_j the new
        # inverse is H_PP⁻¹ + e eᵀ / σ (zero outside P + j).
        hj = jnp.where(passive, h[:, j], 0.0)
        w = jnp.matmul(minv, hj, precision=_HIGHEST)
        sigma = h[j, j] - jnp.dot(hj, w, precision=_HIGHEST)
        e_add = w - (idx == j).astype(dtype)
        singular = add & (sigma <= tiny)

        # --- s infeasible: step towards s until the first passive coordinate hits zero; drop that
        # one coordinate (others at zero drop at the next steps, with a zero step).
        x_i, b, blocking = _ratio_step(x, s, passive)
        # Round-off stagnation: the coordinate just added is immediately infeasible, i.e. its KKT
        # violation was at round-off level. Undo the addition and stop.
        stalled = (just_added >= 0) & jnp.any(blocking & (idx == just_added))
        d = jnp.where(stalled, just_added, b)
        x_i = jnp.where(stalled, x, x_i)
        passive_i = passive & (idx != d)
        x_i = jnp.where(passive_i, jnp.maximum(x_i, 0.0), 0.0)
        # H_{P-d}⁻¹ = H_PP⁻¹ - m mᵀ / m_d with m = H_PP⁻¹ e_d (zero outside P - d).
        e_drop = minv[:, d]
        alpha_drop = -1.0 / minv[d, d]

        grow = feasible & add
        broken = broken | (feasible & singular)
        e = jnp.where(grow, e_add, e_drop)
        alpha = jnp.where(broken | (feasible & ~add), 0.0, jnp.where(grow, 1.0 / sigma, alpha_drop))
        # The row and column of a dropped coordinate are zeroed exactly (the formula leaves round-off).
        gone = jnp.logical_not(grow | broken | (feasible & ~add)) & (idx == d)
        minv = jnp.where(gone[:, None] | gone[None, :], 0.0, minv + alpha * e[:, None] * e[None, :])
        # -(H_PP⁻¹ + α e eᵀ) c = s - α (eᵀc) e: the next subspace solution before its refinement.
        s_next = s - (alpha * jnp.dot(e, c, precision=_HIGHEST)) * e

        x_new = jnp.where(broken, x, jnp.where(feasible, s, x_i))
        passive_new = jnp.where(broken, passive, jnp.where(feasible, passive | ((idx == j) & add), passive_i))
        added_new = jnp.where(grow, j, -1).astype(jnp.int32)
        done_new = broken | jnp.where(feasible, ~add, stalled)
        s_next = jnp.where(passive_new, s_next, 0.0)
        return it + 1, x_new, passive_new, added_new, done_new, broken, minv, s_next

    def cond(carry):
        it, _, _, _, done, _, _, _ = carry
        return jnp.logical_and(it < max_iter, jnp.logical_not(done))

    init = (
        jnp.zeros((), jnp.int32),
        jnp.zeros((k,), dtype),
        jnp.zeros((k,), bool),
        jnp.asarray(-1, jnp.int32),
        jnp.asarray(False),
        jnp.asarray(False),
        jnp.zeros((k, k), dtype),
        jnp.zeros((k,), dtype),
    )
    it, x, passive, _, done, broken, _, _ = jax.lax.while_loop(cond, body, init)
    residual = jnp.max(jnp.where(passive, jnp.abs(jnp.matmul(h, x, precision=_HIGHEST) + c), 0.0))
    clean = done & ~broken & (residual <= _tolerance(rtol, eps, h_scale, c_scale, x))
    return it, x, passive, clean


def _exact_phase(h, c, rtol, max_iter, it0, x0, passive0, done0):
    """Lawson-Hanson with one masked ``K×K`` Cholesky solve a step, from the feasible ``(x0, passive0)``.

    Runs no step when ``done0`` (under ``vmap``, as long as the slowest unfinished problem needs).
    """
    k = h.shape[0]
    dtype = h.dtype
    eps = jnp.finfo(dtype).eps
    h_scale = jnp.max(jnp.abs(h))
    c_scale = jnp.max(jnp.abs(c))
    eye = jnp.eye(k, dtype=dtype)
    idx = jnp.arange(k)

    def solve_on(passive):
        block = passive[:, None] & passive[None, :]
        mat = jnp.where(block, h, eye)
        rhs = jnp.where(passive, -c, 0.0)
        s = jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(mat), rhs)
        return jnp.where(passive, s, 0.0)

    def body(carry):
        it, x, passive, just_added, _, _ = carry
        s = solve_on(passive)
        # A failed factorisation (H_PP numerically singular: only possible without regularisation)
        # ends the loop at the current feasible x.
        s, broken, feasible, j, add = _check_and_choose(h, c, x, s, passive, rtol, eps, h_scale, c_scale)
        # --- s feasible: accept it, then add the most violated constraint j (or stop).
        passive_f = passive | ((idx == j) & add)
        added_f = jnp.where(add, j, -1).astype(jnp.int32)
        done_f = jnp.logical_not(add)

        # --- s infeasible: step towards s until the first passive coordinate hits zero.
        x_i, b, blocking = _ratio_step(x, s, passive)
        passive_i = passive & (x_i > 0) & (idx != b)
        x_i = jnp.where(passive_i, x_i, 0.0)
        # Round-off stagnation: the coordinate just added is immediately infeasible, i.e. its KKT
        # violation was at round-off level. Undo the addition and stop.
        stalled = (just_added >= 0) & jnp.any(blocking & (idx == just_added))
        passive_i = jnp.where(stalled, passive & (idx != just_added), passive_i)
        x_i = jnp.where(stalled, x, x_i)

        x_new = jnp.where(broken, x, jnp.where(feasible, s, x_i))
        passive_new = jnp.where(broken, passive, jnp.where(feasible, passive_f, passive_i))
        added_new = jnp.where(feasible, added_f, -1).astype(jnp.int32)
        done_new = broken | jnp.where(feasible, done_f, stalled)
        return it + 1, x_new, passive_new, added_new, done_new, broken

    def cond(carry):
        it, _, _, _, done, _ = carry
        return jnp.logical_and(it < max_iter, jnp.logical_not(done))

    init = (it0, x0, passive0, jnp.asarray(-1, jnp.int32), done0, jnp.asarray(False))
    it, x, _, _, done, broken = jax.lax.while_loop(cond, body, init)
    return it, x, done & jnp.logical_not(broken)


@functools.partial(jax.jit, static_argnames=("max_iter", "method"))
def nonneg_qp_solve(
    h: Array, c: Array, *, max_iter: Optional[int] = None, rtol: float | Array = 0.0, method: str = "auto"
) -> QPResult:
    """``min_x ½ xᵀ H x + cᵀ x  subject to  x ≥ 0`` with ``H`` (``[K, K]``) symmetric positive definite.

    Primal active-set method of Lawson & Hanson (*Solving Least Squares Problems*, 1974, ch. 23),
    written for the QP instead of the least-squares form. The passive (free) set ``P`` starts empty and
    ``x = 0``. Each iteration solves the equality-constrained problem on ``P``
    (``s_P = -H_PP⁻¹ c_P``, ``s = 0`` elsewhere) and

    * if ``s_P > 0``: accepts ``x = s``; if some ``j ∉ P`` has ``-(Hx + c)_j > tol`` (a violated KKT
      multiplier) the most violated one joins ``P``, otherwise ``x`` is optimal and the loop stops;
    * otherwise: moves from ``x`` towards ``s`` until the first coordinate of ``P`` hits zero and drops
      it from ``P``.

    ``P`` changes by one coordinate a step, so ``H_PP⁻¹`` is kept explicitly (zero outside ``P``) and
    updated by one rank-one term a step (bordering when ``j`` joins, the Schur complement formula when
    one leaves): a step costs a few ``K×K`` matrix-vector products, O(K²), instead of a fresh
    factorisation, O(K³) (UPGrad runs K such problems, so K·iterations·K³ = O(K⁵) became O(K⁴)).
    Each ``s`` gets one step of iterative refinement with the exact ``H``. At exit the KKT conditions
    and the residual on ``P`` are checked with the exact ``H``; should they fail (a near-singular
    ``H_PP`` or a drifted inverse), the method goes on from there with one masked ``K×K`` Cholesky
    solve a step (the inactive block replaced by the identity, so shapes stay static), which stops
    at the current feasible iterate with ``converged = False`` if a factorisation fails (``H_PP``
    numerically singular: regularise ``H``). The method terminates in a finite number of steps,
    typically ``|P*| + a few`` (measured ≤ 31 at K = 40, ≤ 62 at K = 128); ``max_iter`` (default
    :func:`default_max_iter`) is only a safety cap, and the returned ``x`` is feasible even when it is
    hit. When ``P`` is right the solution is exact up to round-off (``~ cond(H_PP) · eps``), i.e.
    ~1e-12 in float64 for well-conditioned problems.
    ``tol = max(rtol, 64·eps)·(max|H|·max|x| + max|c|)``: by default the scale of round-off in the
    gradient; a larger ``rtol`` stops as soon as no multiplier is violated by more than that fraction
    of the gradient's scale.

    Args:
      h: ``[K, K]`` symmetric positive definite matrix (symmetrised here).
      c: ``[K]`` linear term.
      max_iter: iteration cap (static); ``None`` = :func:`default_max_iter`.
      rtol: relative KKT tolerance (default 0: round-off level).
      method: ``"updates"`` (rank-one updates of ``H_PP⁻¹``, the Cholesky loop as fallback),
        ``"cholesky"`` (the Cholesky loop alone) or ``"auto"`` (default: ``"updates"`` from
        ``K = 16``, where it is faster).
    """
    if method not in ("auto", "updates", "cholesky"):
        raise ValueError(f"method must be 'auto', 'updates' or 'cholesky', got {method!r}: pick one of those")
    k = h.shape[0]
    dtype = jnp.result_type(h.dtype, c.dtype)
    h = jnp.asarray(h, dtype)
    c = jnp.asarray(c, dtype)
    h = 0.5 * (h + h.T)
    if max_iter is None:
        max_iter = default_max_iter(k)
    if method == "cholesky" or (method == "auto" and k < _UPDATES_MIN_K):
        zero = jnp.zeros((k,), dtype)
        it, x, passive, clean = jnp.zeros((), jnp.int32), zero, zero > 0, jnp.asarray(False)
    else:
        it, x, passive, clean = _inverse_phase(h, c, rtol, max_iter)
    it, x, converged = _exact_phase(h, c, rtol, max_iter, it, x, passive, clean)
    return QPResult(jnp.maximum(x, 0.0), it, converged)


def nonneg_qp(h: Array, c: Array, *, max_iter: Optional[int] = None) -> Array:
    """The minimiser of ``½ xᵀHx + cᵀx`` over ``x ≥ 0`` (see :func:`nonneg_qp_solve`)."""
    return nonneg_qp_solve(h, c, max_iter=max_iter).x


@functools.partial(jax.jit, static_argnames=("max_iter", "method"))
def dual_cone_solve(gram: Array, u: Array, *, max_iter: Optional[int] = None, method: str = "auto") -> QPResult:
    """Weights ``v`` with ``π_J(Jᵀu) = Jᵀv``: the projection of ``Jᵀu`` onto ``{x : Jx ≥ 0}``.

    Quinton & Rey 2024, Proposition 1: ``v = argmin_{v ≥ u} vᵀ G v`` with ``G = JJᵀ`` (``[K, K]``,
    positive definite: regularise it first). With ``v = u + z`` this is the non-negative QP
    ``min_{z ≥ 0} ½ zᵀGz + zᵀ(Gu)``, solved by :func:`nonneg_qp_solve`. At the optimum ``Gv ≥ 0``
    and ``(v - u)·Gv = 0`` (complementary slackness), i.e. ``Jᵀv`` lies in the dual cone of the rows
    of ``J``. Returns the :class:`QPResult` with ``x = v`` (and the active-set iterations used).

    Args:
      gram: ``[K, K]`` positive definite Gramian.
      u: ``[K]`` weights of the vector to project.
      max_iter: iteration cap of the active-set method (static); ``None`` = :func:`default_max_iter`.
      method: the :func:`nonneg_qp_solve` method (default ``"auto"``).
    """
    gram = 0.5 * (gram + gram.T)
    res = nonneg_qp_solve(gram, jnp.matmul(gram, u, precision=_HIGHEST), max_iter=max_iter, method=method)
    return res._replace(x=u + res.x)


def dual_cone_weights(gram: Array, u: Array, *, max_iter: Optional[int] = None) -> Array:
    """The weights ``v`` of :func:`dual_cone_solve` alone."""
    return dual_cone_solve(gram, u, max_iter=max_iter).x


__all__ = [
    "QPResult",
    "default_max_iter",
    "dual_cone_solve",
    "dual_cone_weights",
    "nonneg_qp",
    "nonneg_qp_solve",
]
