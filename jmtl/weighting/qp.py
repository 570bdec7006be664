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


@functools.partial(jax.jit, static_argnames=("max_iter",))
def nonneg_qp_solve(h: Array, c: Array, *, max_iter: Optional[int] = None, rtol: float | Array = 0.0) -> QPResult:
    """``min_x ½ xᵀ H x + cᵀ x  subject to  x ≥ 0`` with ``H`` (``[K, K]``) symmetric positive definite.

    Primal active-set method of Lawson & Hanson (*Solving Least Squares Problems*, 1974, ch. 23),
    written for the QP instead of the least-squares form. The passive (free) set ``P`` starts empty and
    ``x = 0``. Each iteration solves the equality-constrained problem on ``P``
    (``s_P = -H_PP⁻¹ c_P``, ``s = 0`` elsewhere) and

    * if ``s_P > 0``: accepts ``x = s``; if some ``j ∉ P`` has ``-(Hx + c)_j > tol`` (a violated KKT
      multiplier) the most violated one joins ``P``, otherwise ``x`` is optimal and the loop stops;
    * otherwise: moves from ``x`` towards ``s`` until the first coordinate of ``P`` hits zero and drops
      the coordinates that reached zero from ``P``.

    Each iteration is one masked ``K×K`` Cholesky solve (the inactive block is replaced by the identity,
    so shapes stay static). If a factorisation fails (``H_PP`` numerically singular: regularise ``H``)
    the loop stops at the current feasible iterate and ``converged`` is ``False``. The method
    terminates in a finite number of steps, typically ``|active set| + a few`` (≤ ~2K; measured ≤ 31
    at K = 40); ``max_iter`` (default :func:`default_max_iter`) is only a safety cap, and the returned
    ``x`` is feasible even when it is hit. When ``P`` is right the solution is exact up to round-off
    (``~ cond(H_PP) · eps``), i.e. ~1e-12 in float64 for well-conditioned problems.
    ``tol = max(rtol, 64·eps)·(max|H|·max|x| + max|c|)``: by default the scale of round-off in the
    gradient; a larger ``rtol`` stops as soon as no multiplier is violated by more than that fraction
    of the gradient's scale.

    Args:
      h: ``[K, K]`` symmetric positive definite matrix (symmetrised here).
      c: ``[K]`` linear term.
      max_iter: iteration cap (static); ``None`` = :func:`default_max_iter`.
      rtol: relative KKT tolerance (default 0: round-off level).
    """
    k = h.shape[0]
    dtype = jnp.result_type(h.dtype, c.dtype)
    h = jnp.asarray(h, dtype)
    c = jnp.asarray(c, dtype)
    h = 0.5 * (h + h.T)
    if max_iter is None:
        max_iter = default_max_iter(k)
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
        broken = jnp.logical_not(jnp.all(jnp.isfinite(s)))
        s = jnp.where(broken, x, s)
        feasible = jnp.all(jnp.where(passive, s > 0, True))

        # --- s feasible: accept it, then add the most violated constraint (or stop).
        neg_grad = -(jnp.matmul(h, s, precision=_HIGHEST) + c)
        tol = jnp.maximum(rtol, 64.0 * eps) * (h_scale * jnp.max(jnp.abs(s)) + c_scale)
        cand = jnp.where(passive, -jnp.inf, neg_grad)
        j = jnp.argmax(cand)
        add = cand[j] > tol
        passive_f = passive | ((idx == j) & add)
        added_f = jnp.where(add, j, -1).astype(jnp.int32)
        done_f = jnp.logical_not(add)

        # --- s infeasible: step towards s until the first passive coordinate hits zero.
        blocking = passive & (s <= 0)
        denom = jnp.where(blocking, x - s, 1.0)
        ratio = jnp.where(blocking, x / denom, jnp.inf)
        b = jnp.argmin(ratio)
        step = jnp.clip(ratio[b], 0.0, 1.0)
        x_i = x + step * (s - x)
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

    init = (
        jnp.zeros((), jnp.int32),
        jnp.zeros((k,), dtype),
        jnp.zeros((k,), bool),
        jnp.asarray(-1, jnp.int32),
        jnp.asarray(False),
        jnp.asarray(False),
    )
    it, x, _, _, done, broken = jax.lax.while_loop(cond, body, init)
    return QPResult(jnp.maximum(x, 0.0), it, done & jnp.logical_not(broken))


def nonneg_qp(h: Array, c: Array, *, max_iter: Optional[int] = None) -> Array:
    """The minimiser of ``½ xᵀHx + cᵀx`` over ``x ≥ 0`` (see :func:`nonneg_qp_solve`)."""
    return nonneg_qp_solve(h, c, max_iter=max_iter).x


@functools.partial(jax.jit, static_argnames=("max_iter",))
def dual_cone_solve(gram: Array, u: Array, *, max_iter: Optional[int] = None) -> QPResult:
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
    """
    gram = 0.5 * (gram + gram.T)
    res = nonneg_qp_solve(gram, jnp.matmul(gram, u, precision=_HIGHEST), max_iter=max_iter)
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
