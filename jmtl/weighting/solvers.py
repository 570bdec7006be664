"""The iterative solvers of the Gramian schemes, run inside the compiled step (no host round-trips).

Every solver stops on a tolerance or an iteration cap (``jax.lax.while_loop``) and has a ``*_solve``
form returning a :class:`SolverResult` with the iterations it used and whether it met its tolerance.
Each solves a problem written for a *rescaled* Gramian whose diagonal is (close to) one -- task
gradients whose norms differ by orders of magnitude are the normal case in multi-task learning, and
solving on the raw ``G`` is what made the fixed-iteration versions of these solvers stop far from the
solution (measured: Nash-MTL's condition off by 270x, FairGrad's by 1.7x, MGDA's point 15% too long,
with row norms spanning 1e-2..1e2). ``results/solver_convergence.md`` (written by
``experiments/solver_convergence.py``) gives the residuals and iterations now.

* :func:`min_norm_solve` -- MGDA's min-norm point of the convex hull (exact, active set);
* :func:`nash_solve` -- Nash-MTL's ``(G alpha)_k alpha_k = 1`` (damped Newton);
* :func:`alpha_fair_solve` -- FairGrad's ``G w = w^(-1/alpha)`` (damped Newton in log coordinates);
* :func:`cagrad_solve` -- CAGrad's inner problem (safeguarded projected Newton).

The non-negative / dual-cone QPs of UPGrad and DualProj are in :mod:`jmtl.weighting.qp`.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from optax.projections import projection_simplex

from jmtl.weighting import qp

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST


class SolverResult(NamedTuple):
    """What an in-graph solver returns.

    x: the solution (always finite and feasible).
    iterations: int32 iterations run.
    converged: whether the stopping tolerance was met (rather than the cap hit or progress stalling
      at round-off level).
    """

    x: Array
    iterations: Array
    converged: Array


def _unit_diagonal(gram: Array) -> tuple[Array, Array, Array]:
    """``(C, n, zero)``: the cosine matrix ``C = D^-1 G D^-1`` (``D = diag(n)``, ``n_k = |g_k|``) and which
    rows are zero. Zero rows get a unit diagonal and no off-diagonal entries in ``C``."""
    gram = 0.5 * (gram + gram.T)
    n = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    zero = n <= jnp.finfo(gram.dtype).tiny ** 0.5
    inv = jnp.where(zero, 0.0, 1.0 / jnp.where(zero, 1.0, n))
    cos = gram * inv[:, None] * inv[None, :]
    cos = jnp.where(jnp.eye(gram.shape[0], dtype=bool), jnp.where(zero, 1.0, jnp.diagonal(cos)), cos)
    return cos, n, zero


# ----------------------------------------------------------------------------- MGDA: min-norm point


def min_norm_two(g11: Array, g12: Array, g22: Array) -> Array:
    """Weight ``gamma`` on the first vector of ``min_{gamma in [0,1]} |gamma v1 + (1-gamma) v2|^2``.

    Closed form (Sener & Koltun 2018, Algorithm 1): ``gamma = clip(((v2 - v1) . v2) / |v1 - v2|^2, 0, 1)``
    written with the Gram entries ``g11 = v1.v1``, ``g12 = v1.v2``, ``g22 = v2.v2``.
    """
    denom = g11 - 2.0 * g12 + g22
    safe = jnp.where(denom > 0, denom, 1.0)
    gamma = jnp.where(denom > 0, (g22 - g12) / safe, 0.5)
    return jnp.clip(gamma, 0.0, 1.0)


def _frank_wolfe(gram: Array, max_iter: int, tol: float) -> tuple[Array, Array]:
    """Sener & Koltun's Frank-Wolfe (Algorithm 2) from the best pair: the fallback of :func:`min_norm_solve`."""
    k = gram.shape[0]
    ii, jj = jnp.triu_indices(k, 1)
    gammas = min_norm_two(gram[ii, ii], gram[ii, jj], gram[jj, jj])
    pair_norms = gammas**2 * gram[ii, ii] + 2 * gammas * (1 - gammas) * gram[ii, jj] + (1 - gammas) ** 2 * gram[jj, jj]
    best = jnp.argmin(pair_norms)
    alpha0 = jnp.zeros((k,), gram.dtype)
    alpha0 = alpha0.at[ii[best]].add(gammas[best]).at[jj[best]].add(1.0 - gammas[best])

    def cond(carry):
        it, _, delta = carry
        return jnp.logical_and(it < max_iter, delta >= tol)

    def body(carry):
        it, alpha, _ = carry
        g_alpha = gram @ alpha
        t = jnp.argmin(g_alpha)
        gamma = min_norm_two(alpha @ g_alpha, g_alpha[t], gram[t, t])
        new_alpha = gamma * alpha + (1.0 - gamma) * jax.nn.one_hot(t, k, dtype=gram.dtype)
        return it + 1, new_alpha, jnp.sum(jnp.abs(new_alpha - alpha))

    it, alpha, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), alpha0, jnp.asarray(jnp.inf, gram.dtype)))
    return alpha, it


def min_norm_solve(gram: Array, *, max_iter: int = 250, tol: float = 1e-5) -> SolverResult:
    """Convex weights ``alpha`` of the min-norm point of the convex hull of K vectors, from their Gram matrix.

    Solves ``min_{alpha in simplex} alpha^T G alpha`` (Sener & Koltun 2018, Eq. 3). K = 2: their closed
    form (Algorithm 1). K > 2: exactly, through the equivalent non-negative QP
    ``min_{x >= 0} 1/2 x^T G x - 1^T x`` (if ``x*`` solves it, ``alpha* = x* / sum(x*)``: the KKT
    conditions ``G x - 1 >= 0``, complementary, become ``G alpha >= |d|^2`` with equality on the
    support, those of the min-norm point). It is solved for the unit-diagonal ``C = D^-1 G D^-1``
    (``x = D^-1 y``, ``c = -n_max / n``) plus a ridge ``16 K eps`` (a relative perturbation of every
    ``|g_k|^2`` at round-off level that makes ``C`` positive definite when gradients are duplicated or
    ``K > d``) by the exact active-set method :func:`jmtl.weighting.qp.nonneg_qp_solve`, which stops
    when no KKT multiplier is violated by more than ``tol`` relative. A zero gradient makes ``0`` the
    min-norm point (``alpha`` = its one-hot). Should the QP fail (its factorisation breaking down in
    float32), Frank-Wolfe from the best pair (their Algorithm 2, ``max_iter`` steps, stopping when
    ``|alpha_new - alpha|_1 < tol``) is used instead.

    Args:
      gram: ``[K, K]`` Gramian ``G = J J^T``.
      max_iter: iteration cap of the active-set method and of the Frank-Wolfe fallback (default 250).
      tol: relative KKT tolerance of the active-set method / step tolerance of the fallback (1e-5).
    """
    k = gram.shape[0]
    dtype = gram.dtype
    zero_it = jnp.zeros((), jnp.int32)
    if k == 1:
        return SolverResult(jnp.ones((1,), dtype), zero_it, jnp.asarray(True))
    if k == 2:
        gamma = min_norm_two(gram[0, 0], gram[0, 1], gram[1, 1])
        return SolverResult(jnp.stack([gamma, 1.0 - gamma]), zero_it, jnp.asarray(True))

    cos, n, zero = _unit_diagonal(gram)
    ridge = 16.0 * k * float(jnp.finfo(dtype).eps)
    h = cos + ridge * jnp.eye(k, dtype=dtype)
    n_max = jnp.max(n)
    c = -jnp.where(zero, 1.0, n_max / jnp.where(zero, 1.0, n))
    res = qp.nonneg_qp_solve(h, c, max_iter=max_iter, rtol=tol)
    x = jnp.where(zero, 0.0, res.x / jnp.where(zero, 1.0, n))
    total = jnp.sum(x)
    ok = res.converged & (total > 0) & jnp.isfinite(total)
    alpha_qp = x / jnp.where(ok, total, 1.0)

    def fallback(_):
        alpha, it = _frank_wolfe(gram, max_iter, tol)
        return alpha, res.iterations + it

    alpha, iterations = jax.lax.cond(ok, lambda _: (alpha_qp, res.iterations), fallback, None)
    has_zero = jnp.any(zero) & (n_max > 0)
    alpha = jnp.where(has_zero, jax.nn.one_hot(jnp.argmax(zero), k, dtype=dtype), alpha)
    return SolverResult(alpha, iterations, ok | has_zero)


def min_norm_weights(gram: Array, *, max_iter: int = 250, tol: float = 1e-5) -> Array:
    """The weights of :func:`min_norm_solve` alone."""
    return min_norm_solve(gram, max_iter=max_iter, tol=tol).x


# ----------------------------------------------------------------------------- Nash-MTL

NASH_RIDGE = 1e-6  # added to the unit-diagonal Gramian: bounds the solution where G is singular


def nash_solve(
    gram: Array, beta0: Optional[Array] = None, *, max_iter: int = 100, tol: float = 1e-7, ridge: float = NASH_RIDGE
) -> SolverResult:
    """``alpha > 0`` with ``(G alpha)_k alpha_k = 1`` for every ``k`` (Navon et al. 2022, Eq. 5), by damped Newton.

    The equation is invariant under a diagonal rescaling of the gradients: with ``n_k = |g_k|``,
    ``C = D^-1 G D^-1`` (unit diagonal) and ``alpha_k = beta_k / n_k`` it reads ``(C beta)_k beta_k = 1``,
    the stationarity condition of the strictly convex self-concordant
    ``f(beta) = 1/2 beta^T (C + ridge I) beta - sum_k log beta_k``. Damped Newton (Nesterov): the step
    ``delta`` is scaled by ``1 / (1 + lambda)`` (``lambda``: the Newton decrement), or taken in full once
    ``lambda < 1/4``; both stay in ``beta > 0``, so no line search is needed, and convergence is
    quadratic near the solution. It stops when ``max_k |(C beta)_k beta_k - 1| <= tol``, when a step
    no longer changes ``beta`` (round-off level), or after ``max_iter`` iterations. A zero gradient gets
    ``alpha_k = 0`` (no ``alpha`` satisfies its equation; its row adds nothing to the update).
    ``ridge`` (relative to each ``|g_k|^2``) keeps ``beta`` finite when gradients are duplicated or
    opposite; it perturbs the equation by ``ridge * beta_k^2``.

    Args:
      gram: ``[K, K]`` Gramian ``G = J J^T``.
      beta0: ``[K]`` positive warm start in the rescaled coordinates (default: ones).
      max_iter: iteration cap (default 100; ~5-15 are used).
      tol: tolerance on ``max_k |(C beta)_k beta_k - 1|`` (default 1e-7).
      ridge: ridge on ``C`` (default 1e-6).

    Returns:
      ``SolverResult`` whose ``x`` is the pair ``(alpha, beta)`` stacked as ``[2, K]``.
    """
    k = gram.shape[0]
    dtype = gram.dtype
    cos, n, zero = _unit_diagonal(gram)
    h0 = cos + ridge * jnp.eye(k, dtype=dtype)
    beta0 = jnp.ones((k,), dtype) if beta0 is None else jnp.where(beta0 > 0, beta0.astype(dtype), 1.0)

    def residual(b):
        return jnp.max(jnp.abs(jnp.matmul(h0, b, precision=_HIGHEST) * b - 1.0))

    def cond(carry):
        it, _, res, moved = carry
        return (it < max_iter) & (res > tol) & moved

    def body(carry):
        it, b, _, _ = carry
        grad = jnp.matmul(h0, b, precision=_HIGHEST) - 1.0 / b
        hess = h0 + jnp.diag(1.0 / b**2)
        delta = -jnp.linalg.solve(hess, grad)
        lam = jnp.sqrt(jnp.maximum(-grad @ delta, 0.0))
        new = b + jnp.where(lam < 0.25, 1.0, 1.0 / (1.0 + lam)) * delta
        ok = jnp.all(jnp.isfinite(new)) & jnp.all(new > 0)
        new = jnp.where(ok, new, b)
        return it + 1, new, residual(new), jnp.any(new != b)

    init = (jnp.zeros((), jnp.int32), beta0, residual(beta0), jnp.asarray(True))
    it, beta, res, _ = jax.lax.while_loop(cond, body, init)
    alpha = jnp.where(zero, 0.0, beta / jnp.where(zero, 1.0, n))
    return SolverResult(jnp.stack([alpha, beta]), it, res <= tol)


# ----------------------------------------------------------------------------- FairGrad


@functools.partial(jax.jit, static_argnames=("max_iter",))
def alpha_fair_solve(
    gram: Array, alpha: float | Array, *, ridge: float = 1e-8, max_iter: int = 100, tol: float = 1e-9
) -> SolverResult:
    """The positive solution ``w`` of ``G w = w^{−1/α}`` (elementwise power), FairGrad's weights.

    ``w`` is the unique minimiser over ``w > 0`` of the strictly convex
    ``Φ(w) = ½ wᵀGw − Σ_k h(w_k)`` with ``h'(w) = w^{−1/α}`` (``h = log`` for ``α = 1``), so it is found
    by damped Newton steps: in ``y = log w`` (``w ← w·exp(Δy)``, which keeps ``w > 0``; Newton's method
    in ``y`` is invariant to a rescaling of any ``w_k``, so badly scaled gradients do not slow it),
    ``Δy = −(G·diag(w) + (1/α)·diag(w^{−1/α}))⁻¹ (Gw − w^{−1/α})`` — the Newton step for ``Φ`` mapped to
    log coordinates — rescaled so that ``|Δy|_∞ ≤ 4``, with Armijo backtracking on ``Φ`` over steps
    ``{1, ½, …, 2⁻¹⁹}`` (slack for round-off in ``Φ``, so full steps and quadratic convergence near the
    solution). It starts from the solution for orthogonal gradients, ``w_k = G_kk^{−α/(1+α)}``, and
    stops when the relative residual ``max_k |(Gw)_k w_k^{1/α} − 1| <= tol``, when no step lowers
    ``Φ`` (round-off level), or after ``max_iter`` steps.

    Scale: the system is solved for ``G̃ = G/s + ridge·diag(max(G_kk/s, ridge))`` with ``s = tr(G)/K``
    and mapped back with ``w = s^{−α/(1+α)} w̃`` (exact, since ``G → sG`` maps ``w → s^{−α/(1+α)} w``).
    The ridge is relative to each task's own ``|g_k|^2`` (a ridge relative to the mean would swamp
    the small gradients) and keeps the solution finite when a task gradient is zero (then
    ``w_k → ∞`` in the exact equation, here ``w̃_k = ridge^{−2α/(1+α)}``; it multiplies a zero row so the
    update is unaffected). ``G = 0`` gives large weights and a zero update.

    Args:
      gram: ``[K, K]`` Gramian ``G = J J^T``.
      alpha: FairGrad's ``α > 0``.
      ridge: relative ridge (default 1e-8).
      max_iter: iteration cap (static; default 100, ~5-20 are used).
      tol: tolerance on the relative residual (default 1e-9; float32 stops at round-off level).
    """
    k = gram.shape[0]
    dtype = gram.dtype
    gram = 0.5 * (gram + gram.T)
    s = jnp.trace(gram) / k
    ok = s > jnp.finfo(dtype).tiny
    s_safe = jnp.where(ok, s, 1.0)
    a = jnp.where(ok, gram / s_safe, 0.0)
    diag = jnp.diagonal(a)
    a = a + jnp.diag(ridge * jnp.maximum(diag, ridge))
    alpha = jnp.asarray(alpha, dtype)
    p = 1.0 / alpha

    def phi(w):
        """``Φ(w)`` and the magnitude of its terms (the scale of its round-off)."""
        quad = 0.5 * jnp.dot(w, jnp.matmul(a, w, precision=_HIGHEST), precision=_HIGHEST)
        # h(w) = (w^{1−p} − 1)/(1 − p) (→ log w as p → 1), via expm1 for accuracy near p = 1.
        logw = jnp.log(w)
        one_minus_p = jnp.where(p == 1.0, 1.0, 1.0 - p)
        barrier = jnp.sum(jnp.where(p == 1.0, logw, jnp.expm1((1.0 - p) * logw) / one_minus_p))
        val = quad - barrier
        return jnp.where(jnp.isfinite(val), val, jnp.inf), jnp.abs(quad) + jnp.abs(barrier)

    steps = 2.0 ** -jnp.arange(20, dtype=dtype)
    eps = jnp.finfo(dtype).eps

    def residual(y):
        w = jnp.exp(y)
        return jnp.max(jnp.abs(jnp.matmul(a, w, precision=_HIGHEST) * jnp.exp(p * y) - 1.0))

    def cond(carry):
        it, _, res, moved = carry
        return (it < max_iter) & (res > tol) & moved

    def body(carry):
        it, y, _, _ = carry
        w = jnp.exp(y)
        wp = jnp.exp(-p * y)
        f = jnp.matmul(a, w, precision=_HIGHEST) - wp  # = ∇Φ(w)
        jac = a * w[None, :] + jnp.diag(p * wp)  # ∂f/∂y
        dy = -jnp.linalg.solve(jac, f)
        dy = jnp.where(jnp.all(jnp.isfinite(dy)), dy, 0.0)
        dy = dy * jnp.minimum(1.0, 4.0 / jnp.maximum(jnp.max(jnp.abs(dy)), 1e-30))
        slope = jnp.dot(f, w * dy)  # dΦ/dt at t = 0 (< 0)
        phi0, mag0 = phi(w)
        cand = y[None, :] + steps[:, None] * dy[None, :]
        vals, _ = jax.vmap(lambda yy: phi(jnp.exp(yy)))(cand)
        # Armijo, with slack for round-off in Φ so that full steps are taken near the solution.
        slack = 16.0 * eps * (mag0 + jnp.sum(jnp.abs(w * f)))
        accept = vals <= phi0 + 1e-4 * steps * slope + slack
        first = jnp.argmax(accept)
        new = jnp.where(accept[first], cand[first], y)
        return it + 1, new, residual(new), jnp.any(new != y)

    y0 = -(alpha / (1.0 + alpha)) * jnp.log(jnp.diagonal(a))
    init = (jnp.zeros((), jnp.int32), y0, residual(y0), jnp.asarray(True))
    it, y, res, _ = jax.lax.while_loop(cond, body, init)
    # Only reachable for a zero row without ridge (w → ∞): keep w finite.
    bound = 0.25 * math.log(jnp.finfo(dtype).max)
    w = jnp.exp(jnp.clip(y, -bound, bound)) * s_safe ** (-alpha / (1.0 + alpha))
    return SolverResult(w, it, res <= tol)


def alpha_fair_weights(
    gram: Array, alpha: float | Array, *, ridge: float = 1e-8, max_iter: int = 100, tol: float = 1e-9
) -> Array:
    """The weights of :func:`alpha_fair_solve` alone."""
    return alpha_fair_solve(gram, alpha, ridge=ridge, max_iter=max_iter, tol=tol).x


# ----------------------------------------------------------------------------- CAGrad


def cagrad_solve(
    gram: Array, c: float, *, max_iter: int = 100, tol: float = 1e-10, num_steps: int = 20
) -> SolverResult:
    """``argmin_{w in simplex} w^T G b + c |g_0| sqrt(w^T G w)``, ``b = 1/K`` (CAGrad's inner problem, Eq. 7's dual).

    ``G`` is first divided by its largest diagonal entry (same minimiser). A safeguarded projected
    Newton method from ``w = b``: each iteration evaluates ``2 * num_steps`` candidate points at once,
    ``P(w - 2^-j s grad)`` (projected gradient, ``s = 1 / max|grad|``) and ``P(w + 2^-j delta)``
    (``delta``: the Newton step within the simplex's affine hull on the current support, from the KKT
    system with a tiny ridge; ``P``: Euclidean projection on the simplex), ``j < num_steps``, and moves to
    the best one if it lowers the objective. So the objective never increases, the gradient candidates
    guarantee progress and the Newton ones give fast local convergence once the support is found.
    It stops when the Frank-Wolfe gap ``grad . w - min_k grad_k`` (an upper bound on the distance to
    the optimal value) is at most ``tol`` times the objective's scale ``|a . w| + coef sqrt(w^T G w)``,
    when no candidate lowers the objective (round-off level), or after ``max_iter`` iterations.

    Args:
      gram: ``[K, K]`` Gramian ``G = J J^T``.
      c: CAGrad's ``c >= 0``.
      max_iter: iteration cap (default 100; ~5-30 are used).
      tol: relative tolerance on the Frank-Wolfe gap (default 1e-10).
      num_steps: step sizes tried per direction (default 20).
    """
    k = gram.shape[0]
    dtype = gram.dtype
    scale = jnp.max(jnp.diagonal(gram))
    gram = gram / jnp.where(scale > 0, scale, 1.0)
    b = jnp.full((k,), 1.0 / k, dtype)
    a = gram @ b
    coef = c * jnp.sqrt(jnp.maximum(jnp.mean(gram), 0.0))
    steps = 2.0 ** -jnp.arange(num_steps, dtype=dtype)
    eye = jnp.eye(k, dtype=dtype)
    ridge = 1e3 * jnp.finfo(dtype).eps
    smooth = 1e-20  # keeps sqrt differentiable at g_w = 0 (the official code adds 1e-8 to the raw w^T G w)

    def objective(w):
        return w @ a + coef * jnp.sqrt(jnp.maximum(w @ gram @ w, 0.0) + smooth)

    def derivatives(w):
        gw = gram @ w
        q = jnp.maximum(w @ gw, 0.0) + smooth
        root = jnp.sqrt(q)
        grad = a + coef * gw / root
        gap = grad @ w - jnp.min(grad)
        return gw, q, root, grad, gap / (jnp.abs(w @ a) + coef * root + 1e-30)

    def cond(carry):
        it, _, gap, moved = carry
        return (it < max_iter) & (gap > tol) & moved

    def body(carry):
        it, w, _, _ = carry
        gw, q, root, grad, _ = derivatives(w)
        hess = coef / root * (gram - jnp.outer(gw, gw) / q)
        # Newton step on the support {w_k > 0} within sum(delta) = 0 (KKT system).
        free = w > 0
        h = jnp.where(free[:, None] & free[None, :], hess + ridge * (1.0 + jnp.trace(hess)) * eye, eye)
        rhs = jnp.where(free, -grad, 0.0)
        edge = jnp.where(free, 1.0, 0.0)
        kkt = jnp.block([[h, edge[:, None]], [edge[None, :], jnp.zeros((1, 1), dtype)]])
        delta = jnp.linalg.solve(kkt, jnp.concatenate([rhs, jnp.zeros((1,), dtype)]))[:k]
        delta = jnp.where(jnp.all(jnp.isfinite(delta)), delta, 0.0)
        base = 1.0 / (jnp.max(jnp.abs(grad)) + 1e-12)
        moves = jnp.concatenate([-(steps * base)[:, None] * grad[None, :], steps[:, None] * delta[None, :]])
        cands = jax.vmap(lambda m: projection_simplex(w + m))(moves)
        vals = jax.vmap(objective)(cands)
        best = jnp.argmin(vals)
        new = jnp.where(vals[best] < objective(w), cands[best], w)
        return it + 1, new, derivatives(new)[-1], jnp.any(new != w)

    init = (jnp.zeros((), jnp.int32), b, derivatives(b)[-1], jnp.asarray(True))
    it, w, gap, _ = jax.lax.while_loop(cond, body, init)
    return SolverResult(w, it, gap <= tol)


__all__ = [
    "NASH_RIDGE",
    "SolverResult",
    "alpha_fair_solve",
    "alpha_fair_weights",
    "cagrad_solve",
    "min_norm_solve",
    "min_norm_two",
    "min_norm_weights",
    "nash_solve",
]
