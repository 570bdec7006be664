"""Catalogue aggregators: Jacobian-descent, fairness, stochastic-MOO and robust-aggregation schemes.

Each scheme is an optax-style ``init``/``update`` pair (see :mod:`jmtl.weighting.base`):

====================  =============  ==========================================================
name                  requires       scheme
====================  =============  ==========================================================
``mean``              losses         ``w_k = 1/K``
``sum``               losses         ``w_k = 1``
``random``            losses         ``w = softmax(N(0, I))`` drawn from the step key
``trimmed_mean``      jacobian       coordinate-wise trimmed mean of the rows of ``J``
``krum``              gramian        (multi-)Krum (Blanchard et al. 2017)
``upgrad``            gramian        UPGrad (Quinton & Rey 2024)
``dualproj``          gramian        DualProj (Quinton & Rey 2024)
``fairgrad``          gramian        FairGrad (Ban & Ji 2024)
``moco``              jacobian       MoCo (Fernando et al. 2023)
``excess_mtl``        jacobian       ExcessMTL (He et al. 2024)
``sdmgrad``           gramian        SDMGrad (Xiao et al. 2023), single-batch variant
``modo``              gramian        MoDo (Chen et al. 2023), single-batch variant
====================  =============  ==========================================================

Schemes whose state holds a ``[K, d]`` array (MoCo's tracked gradients, ExcessMTL's squared-gradient
sums) size it from ``init(num_tasks, layout=layout)``; with ``init(num_tasks)`` alone they start with a
``[K, 0]`` placeholder that the first ``update`` replaces by zeros of shape ``[K, d]`` (fine eagerly
and for one re-trace under ``jit``, not for a train state built before the first step). States keep
the dtype they were initialised with (JAX's default float unless ``dtype=`` is given).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from jmtl.weighting import qp
from jmtl.weighting.base import (
    GRAMIAN,
    JACOBIAN,
    LOSSES,
    Layout,
    WeightingOutput,
    WeightingTransform,
    require_gramian,
    stateless_init,
    weights_output,
)

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST


# --------------------------------------------------------------------------------------------------
# helpers



def _need_jacobian(name: str, jacobian: Optional[Array]) -> Array:
    if jacobian is None:
        raise ValueError(f"{name} needs the [K, d] Jacobian of the task losses (requires='jacobian')")
    if jacobian.ndim != 2:
        raise ValueError(f"{name}: jacobian must be [K, d], got shape {jacobian.shape}")
    return jacobian


def _direction_output(direction: Array) -> WeightingOutput:
    return WeightingOutput(weights=None, direction=direction, extra_loss=jnp.zeros((), direction.dtype))


def _lazy_rows(buf: Array, jacobian: Array, name: str) -> Array:
    """``buf`` if it already has the Jacobian's shape, zeros of that shape for the ``[K, 0]`` placeholder."""
    if buf.shape == jacobian.shape:
        return buf
    if buf.shape == (jacobian.shape[0], 0):
        return jnp.zeros(jacobian.shape, buf.dtype)
    raise ValueError(
        f"{name}: state was initialised for shape {buf.shape}, got a Jacobian of shape {jacobian.shape}"
    )


def _float_dtype(dtype):
    """``dtype``, or JAX's default float dtype (float64 under ``jax_enable_x64``) for ``None``."""
    return jnp.dtype(jnp.result_type(float)) if dtype is None else jnp.dtype(dtype)


def _rows_init(num_tasks: int, layout: Optional[Layout], dtype) -> Array:
    d = 0 if layout is None else int(sum(math.prod(shape) for _, shape in layout))
    return jnp.zeros((num_tasks, d), _float_dtype(dtype))


def _cast_like(new, old):
    """``new`` (a state pytree) with the dtypes of ``old``, so a state's dtype never changes."""
    return jax.tree_util.tree_map(lambda n, o: n.astype(o.dtype), new, old)


def _check_nonneg(name: str, **values: float) -> None:
    for k, v in values.items():
        if v < 0:
            raise ValueError(f"{name}: {k} must be non-negative, got {v}")


# --------------------------------------------------------------------------------------------------
# simple aggregators


def mean() -> WeightingTransform:
    """Mean: ``d = (1/K) Σ_k g_k``, i.e. ``w_k = 1/K`` (torchjd's ``Mean``)."""

    def update(losses, state, **_):
        k = losses.shape[0]
        return weights_output(jnp.full((k,), 1.0 / k, losses.dtype)), state

    return WeightingTransform(stateless_init, update, LOSSES)


def sum_() -> WeightingTransform:
    """Sum: ``d = Σ_k g_k``, i.e. ``w_k = 1`` (torchjd's ``Sum``; same update as ``equal``)."""

    def update(losses, state, **_):
        return weights_output(jnp.ones_like(losses)), state

    return WeightingTransform(stateless_init, update, LOSSES)


def random() -> WeightingTransform:
    """Random positive weights: ``w = softmax(z)``, ``z ~ N(0, I_K)`` drawn from the step key.

    torchjd's ``Random`` aggregator (a random point of the open simplex each step; cf. random loss
    weighting, Lin et al. 2022). The draw comes from ``key`` only, so every device agrees.
    """

    def update(losses, state, *, key=None, **_):
        if key is None:
            raise ValueError("random weighting needs the step's PRNG key")
        z = jax.random.normal(key, losses.shape, losses.dtype)
        return weights_output(jax.nn.softmax(z)), state

    return WeightingTransform(stateless_init, update, LOSSES)


def trimmed_mean(trim: Optional[int] = None) -> WeightingTransform:
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018; torchjd's ``TrimmedMean``).

    For every coordinate ``j`` the values ``J[:, j]`` are sorted and the ``trim`` smallest and ``trim``
    largest are dropped: ``d_j = 1/(K - 2·trim) Σ_{i=trim}^{K-trim-1} sort(J[:, j])_i``.
    ``trim=None`` (default) means 1 per side when ``K ≥ 3`` and 0 (the plain mean) for ``K < 3``; an
    explicit ``trim`` needs ``K ≥ 2·trim + 1``. Not a linear combination of the rows, so it returns a
    ``direction``.
    """
    if trim is not None and trim < 0:
        raise ValueError(f"trimmed_mean: trim must be non-negative, got {trim}")

    def update(losses, state, *, jacobian=None, **_):
        jac = _need_jacobian("trimmed_mean", jacobian)
        k = jac.shape[0]
        t = (1 if k >= 3 else 0) if trim is None else trim
        if k < 2 * t + 1:
            raise ValueError(f"trimmed_mean: trim={t} per side needs at least {2 * t + 1} tasks, got {k}")
        kept = jnp.sort(jac, axis=0)[t : k - t]
        return _direction_output(jnp.mean(kept, axis=0)), state

    return WeightingTransform(stateless_init, update, JACOBIAN)


@functools.partial(jax.jit, static_argnames=("f", "m"))
def _krum_weights(gram: Array, f: int, m: int) -> Array:
    k = gram.shape[0]
    diag = jnp.diagonal(gram)
    dist = jnp.maximum(diag[:, None] + diag[None, :] - 2.0 * gram, 0.0)
    dist = jnp.where(jnp.eye(k, dtype=bool), jnp.inf, dist)
    scores = jnp.sum(jnp.sort(dist, axis=1)[:, : k - f - 2], axis=1)
    chosen = jnp.argsort(scores, stable=True)[:m]
    return jnp.zeros((k,), gram.dtype).at[chosen].set(1.0 / m)


def krum(n_byzantine: int = 1, n_selected: int = 1) -> WeightingTransform:
    """(Multi-)Krum (Blanchard, El Mhamdi, Guerraoui & Stainer, NeurIPS 2017).

    With ``f = n_byzantine`` assumed-faulty rows, the score of row ``i`` is
    ``s(i) = Σ_{j ∈ N_i} |g_i − g_j|²`` over the ``K − f − 2`` rows ``j ≠ i`` closest to ``g_i``; Krum
    returns the row of smallest score, multi-Krum (``m = n_selected``) the mean of the ``m`` rows of
    smallest score (ties broken by task index). The distances come from the Gramian,
    ``|g_i − g_j|² = G_ii + G_jj − 2G_ij``, so the result is ``w @ J`` with ``w`` = ``1/m`` on the
    selected rows. Requires ``K ≥ 2f + 3`` (the paper's ``n > 2f + 2``) and ``1 ≤ m ≤ K``.
    """
    if n_byzantine < 0:
        raise ValueError(f"krum: n_byzantine must be non-negative, got {n_byzantine}")
    if n_selected < 1:
        raise ValueError(f"krum: n_selected must be at least 1, got {n_selected}")

    def update(losses, state, *, gramian=None, jacobian=None, **_):
        gram = require_gramian("krum", gramian, jacobian)
        k = gram.shape[0]
        f = n_byzantine
        if k < 2 * f + 3:
            raise ValueError(
                f"krum: n_byzantine={f} needs at least 2*{f}+3={2 * f + 3} tasks (rows), got {k}"
            )
        if n_selected > k:
            raise ValueError(f"krum: n_selected={n_selected} exceeds the number of tasks {k}")
        w = _krum_weights(gram, f, n_selected)
        return weights_output(w), state

    return WeightingTransform(stateless_init, update, GRAMIAN)


# --------------------------------------------------------------------------------------------------
# Jacobian descent: projections onto the dual cone


def _normalised_gramian(gram: Array, norm_eps: float, reg_eps: float) -> Array:
    """``G / tr(G) + reg_eps·I`` (``0 + reg_eps·I`` when ``tr(G) < norm_eps``), as in torchjd.

    ``tr(G) = |J|_F²``, so this is the Gramian of ``J / |J|_F`` made positive definite.
    """
    k = gram.shape[0]
    gram = 0.5 * (gram + gram.T)
    tr = jnp.trace(gram)
    small = tr < norm_eps
    gram = jnp.where(small, 0.0, gram / jnp.where(small, 1.0, tr))
    return gram + reg_eps * jnp.eye(k, dtype=gram.dtype)


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _upgrad_weights(gram: Array, norm_eps: float, reg_eps: float, max_iter: Optional[int]) -> Array:
    k = gram.shape[0]
    g = _normalised_gramian(gram, norm_eps, reg_eps)
    eye = jnp.eye(k, dtype=g.dtype)
    v = jax.vmap(lambda u: qp.dual_cone_weights(g, u, max_iter=max_iter))(eye)
    return jnp.mean(v, axis=0)


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _dualproj_weights(gram: Array, norm_eps: float, reg_eps: float, max_iter: Optional[int]) -> Array:
    k = gram.shape[0]
    g = _normalised_gramian(gram, norm_eps, reg_eps)
    return qp.dual_cone_weights(g, jnp.full((k,), 1.0 / k, g.dtype), max_iter=max_iter)


def upgrad(norm_eps: float = 1e-4, reg_eps: float = 1e-4, max_iter: Optional[int] = None) -> WeightingTransform:
    """UPGrad (Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization").

    ``A(J) = (1/K) Σ_i π_J(g_i)`` where ``π_J(x) = argmin_{y : Jy ≥ 0} |y − x|²`` projects onto the dual
    cone of the rows of ``J``. By their Proposition 1, ``π_J(Jᵀu) = Jᵀv`` with
    ``v = argmin_{v ≥ u} vᵀGv``, so ``w = (1/K) Σ_i v(e_i)`` and the update is ``w @ J``. Each of the
    ``K`` QPs is solved in-graph by the active-set method :func:`jmtl.weighting.qp.nonneg_qp` on
    ``G' = G/tr(G) + reg_eps·I`` (``G' = reg_eps·I`` when ``tr(G) < norm_eps``), the normalisation and
    regularisation of the reference implementation (torchjd; defaults 1e-4 / 1e-4). ``max_iter``
    caps the active-set iterations (default ``10K + 50``; ≤ ~2K are used in practice).

    The result has ``g_i · d ≥ 0`` for every task, up to the regularisation:
    ``g_i · d ≥ −reg_eps · tr(G) · v_i``. Without conflict (``G_ij ≥ 0``) it is the mean.
    """
    _check_nonneg("upgrad", norm_eps=norm_eps, reg_eps=reg_eps)

    def update(losses, state, *, gramian=None, jacobian=None, **_):
        gram = require_gramian("upgrad", gramian, jacobian)
        return weights_output(_upgrad_weights(gram, norm_eps, reg_eps, max_iter)), state

    return WeightingTransform(stateless_init, update, GRAMIAN)


def dualproj(norm_eps: float = 1e-4, reg_eps: float = 1e-4, max_iter: Optional[int] = None) -> WeightingTransform:
    """DualProj (Quinton & Rey 2024): the mean gradient projected onto the dual cone of the rows of ``J``.

    ``d = π_J((1/K) Σ_i g_i) = Jᵀv`` with ``v = argmin_{v ≥ 1/K} vᵀGv`` (Proposition 1), solved like
    :func:`upgrad` (same normalisation ``G/tr(G) + reg_eps·I`` and defaults).
    """
    _check_nonneg("dualproj", norm_eps=norm_eps, reg_eps=reg_eps)

    def update(losses, state, *, gramian=None, jacobian=None, **_):
        gram = require_gramian("dualproj", gramian, jacobian)
        return weights_output(_dualproj_weights(gram, norm_eps, reg_eps, max_iter)), state

    return WeightingTransform(stateless_init, update, GRAMIAN)


# --------------------------------------------------------------------------------------------------
# FairGrad


@functools.partial(jax.jit, static_argnames=("max_iter",))
def alpha_fair_weights(gram: Array, alpha: float | Array, *, ridge: float = 1e-8, max_iter: int = 40) -> Array:
    """The positive solution ``w`` of ``G w = w^{−1/α}`` (elementwise power), FairGrad's weights.

    ``w`` is the unique minimiser over ``w > 0`` of the strictly convex
    ``Φ(w) = ½ wᵀGw − Σ_k h(w_k)`` with ``h'(w) = w^{−1/α}`` (``h = log`` for ``α = 1``), so it is found
    by damped Newton steps: in ``y = log w`` (``w ← w·exp(Δy)``, which keeps ``w > 0`` and moves across
    scales quickly), ``Δy = −(G·diag(w) + (1/α)·diag(w^{−1/α}))⁻¹ (Gw − w^{−1/α})`` — the Newton step
    for ``Φ`` mapped to log coordinates — rescaled so that ``|Δy|_∞ ≤ 4``, with Armijo backtracking on
    ``Φ`` over steps ``{1, ½, …, 2⁻¹⁹}`` (slack for round-off in ``Φ``, so full steps and quadratic
    convergence near the solution). ``max_iter`` steps are run (a ``fori_loop``).

    Scale: the system is solved for ``G̃ = G/s + ridge·I`` with ``s = tr(G)/K`` and mapped back with
    ``w = s^{−α/(1+α)} w̃`` (exact, since ``G → sG`` maps ``w → s^{−α/(1+α)} w``). ``ridge`` keeps the
    solution finite when a task gradient is zero (then ``w_k → ∞`` in the exact equation, here
    ``w̃_k = ridge^{−α/(1+α)}``; it multiplies a zero row so the update is unaffected). ``G = 0`` gives
    ``w = ridge^{−α/(1+α)}`` and a zero update.
    """
    k = gram.shape[0]
    dtype = gram.dtype
    gram = 0.5 * (gram + gram.T)
    s = jnp.trace(gram) / k
    ok = s > jnp.finfo(dtype).tiny
    s_safe = jnp.where(ok, s, 1.0)
    a = jnp.where(ok, gram / s_safe, 0.0) + ridge * jnp.eye(k, dtype=dtype)
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

    def body(_, y):
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
        ok = vals <= phi0 + 1e-4 * steps * slope + slack
        first = jnp.argmax(ok)
        return jnp.where(ok[first], cand[first], y)

    y = jax.lax.fori_loop(0, max_iter, body, jnp.zeros((k,), dtype))
    # Only reachable without ridge for a zero row (w → ∞): keep w finite.
    bound = 0.25 * math.log(jnp.finfo(dtype).max)
    return jnp.exp(jnp.clip(y, -bound, bound)) * s_safe ** (-alpha / (1.0 + alpha))


def fairgrad(alpha: float = 1.0, ridge: float = 1e-8, max_iter: int = 40) -> WeightingTransform:
    """FairGrad (Ban & Ji, ICML 2024, "Fair Resource Allocation in Multi-Task Learning").

    The update ``d`` maximises the α-fair utility ``Σ_i (g_iᵀd)^{1−α}/(1−α)`` (``Σ log g_iᵀd`` for
    α = 1) over a ball; its KKT conditions give ``d = Σ_i w_i g_i`` with ``G w = w^{−1/α}``
    (elementwise), which the reference code solves with ``scipy.optimize.least_squares``. Here the
    positive root is found in-graph by :func:`alpha_fair_weights` (damped Newton, ``max_iter`` steps;
    converged to ~1e-12 relative residual in float64 for K ≤ 40 in well under 40 steps).
    α → 0 is linear scalarisation, α = 1 proportional fairness, α → ∞ max-min fairness. For orthogonal
    gradients ``w_k = |g_k|^{−2α/(1+α)}`` (``d = Σ g_k/|g_k|`` at α = 1). ``ridge`` (relative to the mean
    squared gradient norm) only matters for (near-)zero task gradients, whose weights become large
    (``~ ridge^{−α/(1+α)}``) but multiply a zero row. If no positive solution exists (e.g. two exactly
    opposite gradients ``g_i = −g_j``: no direction improves both) the weights returned are large,
    finite and meaningless, like the reference solver's.
    """
    if alpha <= 0:
        raise ValueError(f"fairgrad: alpha must be positive, got {alpha}")
    _check_nonneg("fairgrad", ridge=ridge)
    alpha = float(alpha)

    def update(losses, state, *, gramian=None, jacobian=None, **_):
        gram = require_gramian("fairgrad", gramian, jacobian)
        return weights_output(alpha_fair_weights(gram, alpha, ridge=ridge, max_iter=max_iter)), state

    return WeightingTransform(stateless_init, update, GRAMIAN, rep_level_ok=False)


# --------------------------------------------------------------------------------------------------
# Stochastic multi-objective methods with state


class MoCoState(NamedTuple):
    """MoCo state: tracked task gradients ``y`` ``[K, d]``, weights ``lambd`` ``[K]``, ``count`` updates."""

    y: Array
    lambd: Array
    count: Array


@functools.partial(jax.jit, static_argnames=("normalize_grads",))
def _moco_step(
    jac: Array,
    losses: Array,
    state: "MoCoState",
    beta: float,
    beta_sigma: float,
    gamma: float,
    gamma_sigma: float,
    rho: float,
    normalize_grads: bool,
) -> tuple[Array, "MoCoState"]:
    k = jac.shape[0]
    dtype = jac.dtype
    count = state.count + 1
    t = count.astype(dtype)
    if normalize_grads:
        norms = jnp.linalg.norm(jac, axis=1, keepdims=True)
        h = jac / (norms + 1e-8) * losses[:, None]
    else:
        h = jac
    y = state.y - beta / t**beta_sigma * (state.y - h)
    yy = jnp.matmul(y, y.T, precision=_HIGHEST) + rho * jnp.eye(k, dtype=dtype)
    grad = jnp.matmul(yy, state.lambd, precision=_HIGHEST)
    lambd = qp.project_simplex(state.lambd - gamma / t**gamma_sigma * grad)
    direction = jnp.matmul(lambd, y, precision=_HIGHEST)
    return direction, MoCoState(y, lambd, count)


def moco(
    beta: float = 0.5,
    beta_sigma: float = 0.5,
    gamma: float = 0.1,
    gamma_sigma: float = 0.5,
    rho: float = 0.0,
    normalize_grads: bool = True,
) -> WeightingTransform:
    """MoCo (Fernando et al., ICLR 2023, "Mitigating Gradient Bias in Multi-objective Learning"), Alg. 1.

    With ``t`` the update count (1, 2, …), ``β_t = β/t^{β_σ}``, ``γ_t = γ/t^{γ_σ}`` and ``h`` the current
    Jacobian::

        Y ← Y − β_t (Y − h)                 (tracking of the task gradients; Y_0 = 0)
        λ ← Π_Δ(λ − γ_t (Y Yᵀ + ρ I) λ)     (projected gradient step on ½|Yᵀλ|² + ρ/2|λ|²; λ_0 = 1/K)
        d = Yᵀ λ                            (returned as ``direction``)

    Defaults (β 0.5, β_σ 0.5, γ 0.1, γ_σ 0.5, ρ 0) follow the reference implementations (LibMTL's,
    from the authors' code, and torchjd's); set ``beta_sigma = gamma_sigma = 0`` for constant step
    sizes. ``normalize_grads`` (default on, as in the authors' code in LibMTL; torchjd does not) uses
    ``h_k = g_k / (|g_k| + 1e-8) · L_k``. Deviation from both implementations: λ is updated with the
    paper's Euclidean projection onto the simplex ``Π_Δ``, not a softmax. The
    paper's projection of ``Y`` onto a bounded set is omitted (as in every reference implementation).
    ``d`` is ``Yᵀλ``, not a combination of the current ``J``, hence a ``direction``.
    """
    _check_nonneg("moco", beta=beta, beta_sigma=beta_sigma, gamma=gamma, gamma_sigma=gamma_sigma, rho=rho)

    def init(num_tasks: int, *, layout: Optional[Layout] = None, dtype=None) -> MoCoState:
        return MoCoState(
            y=_rows_init(num_tasks, layout, dtype),
            lambd=jnp.full((num_tasks,), 1.0 / num_tasks, _float_dtype(dtype)),
            count=jnp.zeros((), jnp.int32),
        )

    def update(losses, state, *, jacobian=None, **_):
        jac = _need_jacobian("moco", jacobian)
        dtype = jac.dtype
        state = state._replace(y=_lazy_rows(state.y, jac, "moco"))
        direction, new_state = _moco_step(
            jac, losses.astype(dtype), _cast_like(state, MoCoState(jac, jac[:, 0], state.count)),
            beta, beta_sigma, gamma, gamma_sigma, rho, normalize_grads,
        )
        return _direction_output(direction), _cast_like(new_state, state)

    return WeightingTransform(init, update, JACOBIAN, rep_level_ok=False)


class ExcessMTLState(NamedTuple):
    """ExcessMTL state.

    sq_sum: ``[K, d]`` accumulated squared task gradients (AdaGrad-style diagonal curvature).
    log_weights: ``[K]`` log task weights (weights = exp, summing to ``K``).
    baseline: ``[K]`` excess-risk estimate at the first update (the normaliser).
    count: number of updates so far.
    """

    sq_sum: Array
    log_weights: Array
    baseline: Array
    count: Array


@jax.jit
def _excess_step(
    jac: Array, state: "ExcessMTLState", robust_step_size: float, eps: float
) -> tuple[Array, "ExcessMTLState"]:
    k = jac.shape[0]
    sq = jac * jac
    sq_sum = state.sq_sum + sq
    excess = jnp.sum(sq / jnp.sqrt(sq_sum + eps), axis=1)
    first = state.count == 0
    baseline = jnp.where(first, excess, state.baseline)
    floor = jnp.maximum(baseline, 1e-7 * jnp.max(baseline))
    ratio = jnp.where(floor > 0, excess / jnp.where(floor > 0, floor, 1.0), 0.0)
    ratio = jnp.minimum(ratio, 1e6)
    log_w = jnp.where(first, state.log_weights, state.log_weights + robust_step_size * ratio)
    log_w = log_w - jax.nn.logsumexp(log_w) + math.log(k)
    return jnp.exp(log_w), ExcessMTLState(sq_sum, log_w, baseline, state.count + 1)


def excess_mtl(robust_step_size: float = 1e-2, eps: float = 1e-7) -> WeightingTransform:
    """ExcessMTL (He et al., ICML 2024, "Robust Multi-Task Learning with Excess Risks").

    Task weights follow exponentiated gradient ascent on the estimated *excess* risks (their Eq. 9),
    ``α_i ← α_i exp(η_α · E_i / E_i^{(0)})``, then renormalised. The excess risk of task ``i`` comes from
    a second-order expansion around its optimum with a diagonal curvature estimate (their Eqs. 6–7): the
    diagonal Fisher is approximated, as in AdaGrad, by ``H_i = sqrt(Σ_{s≤t} g_{i,s}² + eps)``, giving
    ``E_i = g_iᵀ H_i⁻¹ g_i = Σ_j g_ij² / H_ij``. ``E_i^{(0)}`` is the estimate of the first update, which
    leaves the weights at their initial value (as the official code does; the paper's Appendix C.1
    collects it over warm-up epochs instead). Weights start at 1 and are renormalised to sum to ``K``
    (official code / LibMTL; the paper's simplex weights are these divided by ``K``). The update is
    ``w @ J`` with the new weights. η_α = ``robust_step_size``.

    Numerical guards (not in the paper): the weights are kept in log space (normalised with a
    logsumexp), the baseline is floored at ``1e-7 · max_k E_k^{(0)}`` (a task whose gradient was zero at
    the first update is not boosted) and the ratio is capped at 1e6.
    """
    if robust_step_size <= 0:
        raise ValueError(f"excess_mtl: robust_step_size must be positive, got {robust_step_size}")
    _check_nonneg("excess_mtl", eps=eps)

    def init(num_tasks: int, *, layout: Optional[Layout] = None, dtype=None) -> ExcessMTLState:
        return ExcessMTLState(
            sq_sum=_rows_init(num_tasks, layout, dtype),
            log_weights=jnp.zeros((num_tasks,), _float_dtype(dtype)),
            baseline=jnp.zeros((num_tasks,), _float_dtype(dtype)),
            count=jnp.zeros((), jnp.int32),
        )

    def update(losses, state, *, jacobian=None, **_):
        jac = _need_jacobian("excess_mtl", jacobian)
        dtype = jac.dtype
        state = state._replace(sq_sum=_lazy_rows(state.sq_sum, jac, "excess_mtl"))
        as_jac = ExcessMTLState(jac, jac[:, 0], jac[:, 0], state.count)
        weights, new_state = _excess_step(jac, _cast_like(state, as_jac), robust_step_size, eps)
        return weights_output(weights), _cast_like(new_state, state)

    return WeightingTransform(init, update, JACOBIAN, rep_level_ok=False)


class SimplexWeightsState(NamedTuple):
    """State of SDMGrad / MoDo: the simplex weights carried between steps."""

    w: Array


def _simplex_init(num_tasks: int, **_) -> SimplexWeightsState:
    return SimplexWeightsState(jnp.full((num_tasks,), 1.0 / num_tasks, _float_dtype(None)))


@functools.partial(jax.jit, static_argnames=("niter",))
def _sdmgrad_inner(gram: Array, w: Array, lam: float, niter: int, lr: float, momentum: float) -> Array:
    k = gram.shape[0]
    diag = jnp.maximum(jnp.diagonal(gram), 0.0)
    scale = jnp.mean(jnp.sqrt(diag))
    g = gram / (scale**2 + 1e-8)
    g_mean = jnp.mean(g, axis=1)

    def body(i, carry):
        w, buf = carry
        grad = jnp.matmul(g, w, precision=_HIGHEST) + lam * g_mean
        buf = jnp.where(i == 0, grad, momentum * buf + grad)
        return qp.project_simplex(w - lr * buf), buf

    w, _ = jax.lax.fori_loop(0, niter, body, (w, jnp.zeros((k,), gram.dtype)))
    return w


def sdmgrad(lam: float = 0.3, niter: int = 20, lr: float = 5.0, momentum: float = 0.5) -> WeightingTransform:
    """SDMGrad (Xiao, Ban & Ji, NeurIPS 2023, "Direction-oriented Multi-objective Learning"), single batch.

    The direction is ``d = (g_w + λ g_0)/(1 + λ)`` with ``g_0 = (1/K) Σ g_k`` the mean gradient and
    ``w = argmin_{w ∈ Δ} ½ |g_w + λ g_0|²``, ``g_w = Jᵀw`` (the dual of their direction-oriented
    problem: stay within a λ-dependent distance of ``g_0``). ``w`` is carried between steps and
    refined by ``niter`` projected stochastic-gradient steps on that objective,
    ``w ← Π_Δ(w − lr · m)`` with heavy-ball momentum ``m ← momentum·m + (G̃w + λ G̃1/K)``
    (``m`` restarts each step), on the rescaled Gramian ``G̃ = G / ((mean_k |g_k|)² + 1e-8)``.
    Defaults (λ 0.3, 20 iterations, lr 5, momentum 0.5) and the scaling follow the authors' code as
    shipped in LibMTL. The update is ``w' @ J`` with ``w' = (w + λ/K)/(1 + λ)``.

    Single-batch variant: the paper's algorithm uses independent mini-batches ξ, ξ' for the two
    factors of ``G`` in the ``w`` update and a third one for ``d``; the weighting protocol gives one
    batch, so all three use the same ``J`` (the inner problem is then biased, as in MGDA-style
    methods).
    """
    _check_nonneg("sdmgrad", lam=lam, lr=lr, momentum=momentum)
    if niter < 0:
        raise ValueError(f"sdmgrad: niter must be non-negative, got {niter}")

    def update(losses, state, *, gramian=None, jacobian=None, **_):
        gram = require_gramian("sdmgrad", gramian, jacobian)
        k = gram.shape[0]
        w = _sdmgrad_inner(gram, state.w.astype(gram.dtype), lam, niter, lr, momentum)
        weights = (w + lam / k) / (1.0 + lam)
        return weights_output(weights), SimplexWeightsState(w.astype(state.w.dtype))

    return WeightingTransform(_simplex_init, update, GRAMIAN, rep_level_ok=False)


def modo(gamma: float = 1e-3, rho: float = 0.1) -> WeightingTransform:
    """MoDo (Chen et al., NeurIPS 2023, "Three-Way Trade-Off in Multi-Objective Learning"), single batch.

    ``λ ← Π_Δ(λ − γ (J Jᵀ + ρ I) λ)`` then ``d = Jᵀλ`` (``λ_0 = 1/K`` carried between steps). The paper
    (and the authors' code in LibMTL, whose defaults γ 1e-3, ρ 0.1 are used) draws three independent
    mini-batches: ``J_{t,1} J_{t,2}ᵀ`` in the λ update and ``J_{t,3}`` for ``d``. The protocol gives one
    batch, so all three are the same ``J`` (``JJᵀ = G``): the λ step is then a biased estimate of the
    paper's.
    """
    _check_nonneg("modo", gamma=gamma, rho=rho)

    def update(losses, state, *, gramian=None, jacobian=None, **_):
        gram = require_gramian("modo", gramian, jacobian)
        lam = state.w.astype(gram.dtype)
        step = jnp.matmul(gram, lam, precision=_HIGHEST) + rho * lam
        lam = qp.project_simplex(lam - gamma * step)
        return weights_output(lam), SimplexWeightsState(lam.astype(state.w.dtype))

    return WeightingTransform(_simplex_init, update, GRAMIAN, rep_level_ok=False)


# name -> factory(**hparams) -> WeightingTransform. Read by jmtl/weighting/__init__.py.
REGISTRY: dict = {
    "mean": mean,
    "sum": sum_,
    "random": random,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "upgrad": upgrad,
    "dualproj": dualproj,
    "fairgrad": fairgrad,
    "moco": moco,
    "excess_mtl": excess_mtl,
    "sdmgrad": sdmgrad,
    "modo": modo,
}

__all__ = [
    "REGISTRY",
    "ExcessMTLState",
    "MoCoState",
    "SimplexWeightsState",
    "alpha_fair_weights",
    "dualproj",
    "excess_mtl",
    "fairgrad",
    "krum",
    "mean",
    "moco",
    "modo",
    "random",
    "sdmgrad",
    "sum_",
    "trimmed_mean",
    "upgrad",
]
