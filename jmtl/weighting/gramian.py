"""Gramian schemes: the step computes ``G = J J^T`` (``[K, K]``), and the update is ``w @ J``.

Every scheme here has ``requires='gramian'``: its weights are a function of the Gramian of the task
gradients (and of the losses, key and state), so it never needs the ``[K, d]`` Jacobian itself and
returns ``weights``. Where a method edits gradients (PCGrad's projections, IMTL's, ConFIG's), the edits
stay in the span of the task gradients and are tracked as coefficient vectors
(``g_i^PC = sum_m c_im g_m``, ``g_i^PC . g_j = c_i . G[:, j]``). The iterative problems (MGDA's min-norm
point, Nash-MTL's and FairGrad's equations, CAGrad's inner problem, the dual-cone QPs) are solved in
the compiled step by :mod:`jmtl.weighting.solvers` and :mod:`jmtl.weighting.qp`, to a tolerance with an
iteration cap.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax
from optax.projections import projection_simplex

from jmtl.weighting import qp, solvers
from jmtl.weighting.base import (
    BILEVEL,
    EPS,
    GRAMIAN,
    GramianInputs,
    Layout,
    WeightingOutput,
    WeightingTransform,
    cast_like,
    check_nonneg,
    default_float_dtype,
    gram_norms,
    need_key,
    safe_div,
    stateless_init,
    weights_output,
)
from jmtl.weighting.registry import get, register

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST


MGDA_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def _gradient_norm_factors(gram, losses, normalization: str, eps: float = 1e-8):
    """Per-task factors n_k that MGDA divides g_k by (Sener & Koltun 2018, code's `gradient_normalizers`)."""
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    if normalization == "none":
        return jnp.ones_like(losses)
    if normalization == "l2":
        return norms + eps
    if normalization == "loss":
        return losses + eps
    if normalization == "loss+":
        return losses * norms + eps
    raise ValueError(f"unknown MGDA normalization {normalization!r}; valid: {', '.join(MGDA_NORMALIZATIONS)}")


@register("mgda")
def mgda(normalization: str = "none", max_iter: int = 250, tol: float = 1e-5) -> WeightingTransform:
    """MGDA (Sener & Koltun, NeurIPS 2018): the min-norm element of the convex hull of task gradients.

    ``alpha* = argmin_{alpha in simplex} |sum_k alpha_k g_k / n_k|^2`` (their Eq. 3 after normalising each
    gradient by ``n_k``), and the shared parameters move along ``d = sum_k alpha*_k g_k / n_k``: a common
    descent direction for every task unless the point is Pareto-stationary (then ``d = 0``). Solved
    from the Gramian ``G = J J^T`` alone: closed form for K=2, an exact active-set QP otherwise
    (:func:`jmtl.weighting.solvers.min_norm_solve`). With
    ``normalization='none'`` the weights are the convex ``alpha*``.

    Args:
      normalization: ``n_k`` of each gradient: ``'none'`` (default, 1), ``'l2'`` (``|g_k|``), ``'loss'``
        (``L_k``) or ``'loss+'`` (``L_k |g_k|``), each ``+ 1e-8`` (their code's
        ``gradient_normalizers``).
      max_iter: cap on the active-set iterations (K > 2) and on the Frank-Wolfe fallback (default 250).
      tol: relative KKT tolerance of the solver (default 1e-5; see
        :func:`jmtl.weighting.solvers.min_norm_solve`).
    """
    if normalization not in MGDA_NORMALIZATIONS:
        raise ValueError(f"unknown MGDA normalization {normalization!r}; valid: {', '.join(MGDA_NORMALIZATIONS)}")

    def update(inputs: GramianInputs, state):
        losses = inputs.losses
        gramian = inputs.gramian
        n = jax.lax.stop_gradient(_gradient_norm_factors(gramian, losses, normalization))
        scaled = gramian / (n[:, None] * n[None, :])
        alpha = solvers.min_norm_weights(scaled, max_iter=max_iter, tol=tol)
        return weights_output(alpha / n), state

    return WeightingTransform(stateless_init, update, GRAMIAN)


@register("pcgrad")
def pcgrad() -> WeightingTransform:
    """PCGrad, "Gradient Surgery for Multi-Task Learning" (Yu et al., NeurIPS 2020), Algorithm 1.

    For every task ``i``: ``g_i^PC = g_i``; for each other task ``j`` in a random order, if
    ``g_i^PC . g_j < 0`` then ``g_i^PC <- g_i^PC - (g_i^PC . g_j) / |g_j|^2 g_j`` (projection onto the
    normal plane of the *original* ``g_j``). The update is the sum ``sum_i g_i^PC`` (the paper's;
    some ports average). One random order per ``i``, drawn from ``key``. Computed on the Gramian
    (coefficients in the span of the task gradients), returned as weights.
    """

    def update(inputs: GramianInputs, state):
        key = inputs.key
        gram = inputs.gramian
        key = need_key(key, "pcgrad")
        k = gram.shape[0]
        eye = jnp.eye(k, dtype=gram.dtype)
        perms = jax.vmap(lambda kk: jax.random.permutation(kk, k))(jax.random.split(key, k))

        def surgery(i, perm):
            def body(p, c):
                j = perm[p]
                dot = c @ gram[:, j]
                gjj = gram[j, j]
                conflict = (j != i) & (dot < 0) & (gjj > 0)
                return c - jnp.where(conflict, safe_div(dot, gjj), 0.0) * eye[j]

            return jax.lax.fori_loop(0, k, body, eye[i])

        coeffs = jax.vmap(surgery)(jnp.arange(k), perms)  # [K (i), K (m)]
        return weights_output(jnp.sum(coeffs, axis=0)), state

    return WeightingTransform(stateless_init, update, GRAMIAN, rep_level_ok=False, needs_key=True)


def imtl_g_weights(gram: Array) -> Array:
    """IMTL-G's ``alpha`` (sum 1) from the Gramian: ``g = sum_k alpha_k g_k`` has equal projections on all ``u_k``.

    Liu et al. 2021, Eq. 5: ``alpha_{2:K} = g_1 U^T (D U^T)^{-1}``, ``alpha_1 = 1 - sum alpha_{2:K}`` with
    ``D = [g_1 - g_k]``, ``U = [u_1 - u_k]``, ``u_k = g_k / |g_k|``. Written as the equivalent linear
    system ``(G alpha)_k / |g_k| = t`` for all ``k``, ``sum_k alpha_k = 1`` (unknowns ``alpha``, ``t``) and
    solved with a pseudo-inverse, which also covers degenerate inputs: a task with a zero gradient
    gets ``alpha_k = 0`` and drops out; identical gradients share their weight (min-norm solution).
    """
    k = gram.shape[0]
    if k == 1:
        return jnp.ones((1,), gram.dtype)
    scale = jnp.max(jnp.diagonal(gram))
    g = gram / jnp.where(scale > 0, scale, 1.0)  # alpha is invariant to a common scale
    n = gram_norms(g)
    valid = n > 10.0 * jnp.finfo(g.dtype).eps * jnp.max(n)
    proj_rows = jnp.concatenate([safe_div(g, n[None, :]).T, -jnp.ones((k, 1), g.dtype)], axis=1)  # (G a)_k / n_k - t
    zero_rows = jnp.concatenate([jnp.eye(k, dtype=g.dtype), jnp.zeros((k, 1), g.dtype)], axis=1)  # a_k
    rows = jnp.where(valid[:, None], proj_rows, zero_rows)
    system = jnp.concatenate([rows, jnp.concatenate([jnp.ones((1, k), g.dtype), jnp.zeros((1, 1), g.dtype)], axis=1)])
    rhs = jnp.zeros((k + 1,), g.dtype).at[k].set(1.0)
    sol = jnp.linalg.pinv(system) @ rhs
    return sol[:k]


@register("imtl_g")
def imtl_g() -> WeightingTransform:
    """IMTL-G, the gradient-balance half of IMTL (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021).

    The closed form of Eq. 5 (see :func:`imtl_g_weights`): the combined gradient ``g = sum_k alpha_k g_k``
    with ``sum_k alpha_k = 1`` has the same projection ``g . u_k`` on every unit task gradient. The paper
    computes it on the gradients of the shared representation (``rep_level_ok=True``); on the
    parameter Jacobian it is the same formula.
    """

    def update(inputs: GramianInputs, state):
        gram = inputs.gramian
        return weights_output(imtl_g_weights(gram)), state

    return WeightingTransform(stateless_init, update, GRAMIAN, rep_level_ok=True)


@register("imtl")
def imtl(init_scale: float = 0.0) -> WeightingTransform:
    """IMTL, the hybrid of IMTL-L and IMTL-G (Liu et al., ICLR 2021, Algorithm 1).

    Learnable scales ``s_k`` (``init_params``, start ``init_scale = 0``) turn the losses into
    ``e^{s_k} L_k - s_k`` (IMTL-L); IMTL-G then combines the scaled gradients ``e^{s_k} g_k``:
    ``alpha = IMTL-G(diag(e^s) G diag(e^s))`` and the shared update is ``sum_k alpha_k e^{s_k} g_k``, so the
    weights are ``alpha_k e^{s_k}``. ``s`` itself follows the IMTL-L loss: ``extra_loss`` is built so
    that ``d/ds_k [sum_j w_j L_j + extra_loss] = e^{s_k} L_k - 1`` (``alpha`` held constant); the value
    of ``extra_loss`` is ``-sum_k s_k``.

    Args:
      init_scale: the initial ``s_k`` (default 0: unit scales).
    """

    def init_params(num_tasks: int):
        return {"s": jnp.full((num_tasks,), init_scale, default_float_dtype())}

    def update(inputs: GramianInputs, state):
        losses = inputs.losses
        params = inputs.params
        if params is None:
            raise ValueError("imtl needs its params (init_params) in the train state")
        gram = inputs.gramian
        s = params["s"].astype(gram.dtype)
        scale = jnp.exp(s)
        fixed = jax.lax.stop_gradient(scale)
        alpha = jax.lax.stop_gradient(imtl_g_weights(gram * fixed[:, None] * fixed[None, :]))
        losses = jax.lax.stop_gradient(losses.astype(gram.dtype))
        weights = alpha * scale
        # Zero-valued; its gradient tops sum_k w_k L_k's (alpha_k e^{s_k} L_k) up to e^{s_k} L_k - 1.
        extra = jnp.sum((1.0 - alpha) * losses * (scale - fixed)) - jnp.sum(s)
        return WeightingOutput(weights=weights, direction=None, extra_loss=extra), state

    return WeightingTransform(stateless_init, update, GRAMIAN, init_params=init_params, rep_level_ok=True)


CAGRAD_RESCALES = (0, 1, 2)


@register("cagrad")
def cagrad(c: float = 0.5, rescale: int = 1, num_iters: int = 100, tol: float = 1e-10) -> WeightingTransform:
    """CAGrad, "Conflict-Averse Gradient Descent" (Liu et al., NeurIPS 2021), Eq. 7 / Algorithm 1.

    With the *mean* gradient ``g_0 = (1/K) sum_k g_k`` (as the paper and its code), solve
    ``min_{w in simplex} g_w . g_0 + sqrt(phi) |g_w|``, ``phi = c^2 |g_0|^2``, ``g_w = sum_k w_k g_k``, and move
    along ``d = g_0 + sqrt(phi) / |g_w| g_w``. The inner problem (the official code uses SciPy's SLSQP)
    is solved in-graph by a safeguarded projected Newton method from ``w = 1/K``
    (:func:`jmtl.weighting.solvers.cagrad_solve`) until its Frank-Wolfe gap is below ``tol`` relative.

    Args:
      c: the radius factor ``c >= 0`` of the ball around ``g_0`` (default 0.5, the paper's);
        ``c = 0`` gives the mean gradient.
      rescale: 0: ``d``; 1: ``d / (1 + c^2)`` (default, the official code's); 2: ``d / (1 + c)``.
      num_iters: cap on the inner solver's iterations (default 100; ~5-30 are used).
      tol: relative Frank-Wolfe-gap tolerance of the inner solver (default 1e-10).
    """
    if rescale not in CAGRAD_RESCALES:
        raise ValueError(f"rescale must be one of {CAGRAD_RESCALES}, got {rescale!r}")
    if c < 0:
        raise ValueError(f"c must be >= 0, got {c}")

    def update(inputs: GramianInputs, state):
        gram = inputs.gramian
        k = gram.shape[0]
        w = solvers.cagrad_solve(gram, c, max_iter=int(num_iters), tol=tol).x
        g0_norm = jnp.sqrt(jnp.maximum(jnp.mean(gram), 0.0))
        gw_norm = jnp.sqrt(jnp.maximum(w @ gram @ w, 0.0))
        lam = safe_div(c * g0_norm, gw_norm)
        weights = jnp.full((k,), 1.0 / k, gram.dtype) + lam * w
        if rescale == 1:
            weights = weights / (1.0 + c**2)
        elif rescale == 2:
            weights = weights / (1.0 + c)
        return weights_output(weights), state

    return WeightingTransform(stateless_init, update, GRAMIAN, rep_level_ok=False)


class NashState(NamedTuple):
    alpha: Array  # [K] last solution of (G alpha)_k alpha_k = 1 (the weights before clipping)
    beta: Array  # [K] the same in the unit-diagonal coordinates, beta_k = alpha_k |g_k| (warm start)
    count: Array  # int32: update calls so far (modulo update_weights_every)
    iterations: Array  # int32: Newton iterations of the last solve


@register("nash_mtl")
def nash_mtl(
    max_norm: float = 1.0, optim_niter: int = 100, update_weights_every: int = 1, tol: float = 1e-7
) -> WeightingTransform:
    """Nash-MTL, "Multi-Task Learning as a Bargaining Game" (Navon et al., ICML 2022).

    The Nash bargaining solution ``d = sum_k alpha_k g_k`` with ``(G alpha)_k = 1 / alpha_k``
    (``G = J J^T``, the paper's ``G^T G``; Eq. 4-5: ``g_k . d = 1 / alpha_k``), so ``|d|^2 = K``. The
    official code runs up to 20 CCP iterations of a cvxpy/ECOS problem on ``G / |G|_F``; here the
    equation is solved in-graph by damped Newton (:func:`jmtl.weighting.solvers.nash_solve`) in the
    coordinates ``beta_k = alpha_k |g_k|``, where it reads ``(C beta)_k beta_k = 1`` for the cosine matrix
    ``C`` -- the same equation whatever the gradients' scales -- warm-started from the previous
    solution, to ``max_k |(G alpha)_k alpha_k - 1| <= tol``. A ``1e-6`` ridge on ``C`` keeps ``alpha``
    finite for duplicated or opposite gradients; a zero gradient gets ``alpha_k = 0``. ``alpha`` is
    recomputed every ``update_weights_every`` calls (reused in between) and kept in the state, with the
    iterations of the last solve.

    Args:
      max_norm: the shared update is scaled to norm ``<= max_norm`` (the official
        ``clip_grad_norm_`` of the shared parameters); 0 disables. Default 1.
      optim_niter: cap on the Newton iterations (default 100; ~5-15 are used).
      update_weights_every: recompute ``alpha`` every this many calls (default 1).
      tol: tolerance on ``max_k |(G alpha)_k alpha_k - 1|`` (default 1e-7; float32 stops at round-off).
    """
    if int(optim_niter) != optim_niter or optim_niter < 1:
        raise ValueError(f"optim_niter must be a positive integer, got {optim_niter!r}")
    if int(update_weights_every) != update_weights_every or update_weights_every < 1:
        raise ValueError(f"update_weights_every must be a positive integer, got {update_weights_every!r}")

    def init(num_tasks: int, *, layout: Optional[Layout] = None) -> NashState:
        ones = jnp.ones((num_tasks,), default_float_dtype())
        zero = jnp.zeros((), jnp.int32)
        return NashState(alpha=ones, beta=ones, count=zero, iterations=zero)

    def update(inputs: GramianInputs, state: NashState):
        gram = inputs.gramian
        dtype = gram.dtype

        def solve(_):
            res = solvers.nash_solve(gram, state.beta.astype(dtype), max_iter=int(optim_niter), tol=tol)
            return res.x[0], res.x[1], res.iterations.astype(jnp.int32)

        refresh = (state.count % update_weights_every) == 0
        if update_weights_every == 1:
            alpha, beta, iterations = solve(None)
        else:
            # Solve only on refresh steps: the in-between steps reuse alpha, and a solve whose result is
            # thrown away would cost the full Newton loop every step (under vmap the cond becomes a select
            # and both branches run; the result is the same).
            def reuse(_):
                return state.alpha.astype(dtype), state.beta.astype(dtype), jnp.zeros((), jnp.int32)

            alpha, beta, iterations = jax.lax.cond(refresh, solve, reuse, None)
        weights = alpha
        if max_norm > 0:
            norm = jnp.sqrt(jnp.maximum(alpha @ gram @ alpha, 0.0))
            weights = alpha * jnp.where(norm > max_norm, max_norm / jnp.where(norm > 0, norm, 1.0), 1.0)
        new = NashState(
            alpha=alpha.astype(state.alpha.dtype),
            beta=beta.astype(state.beta.dtype),
            count=(state.count + 1) % update_weights_every,
            iterations=iterations,
        )
        return weights_output(weights), new

    return WeightingTransform(init, update, GRAMIAN, rep_level_ok=False)


ALIGNED_SCALE_MODES = ("min", "median", "rmse")


def aligned_balance(gram: Array, scale_mode: str = "min") -> Array:
    """Aligned-MTL's ``[K, K]`` balance matrix ``B = sqrt(sigma) V Lambda^{-1/2} V^T`` (Senushkin et al. 2023).

    ``G = V Lambda V^T`` (``eigh``); eigenvalues ``<= max * K * eps`` count as 0 (the official rank cut)
    and are left out of ``B``. The aligned task gradients ``B J`` have the Gramian
    ``B G B = sigma V_r V_r^T``: all their singular values equal ``sqrt(sigma)`` (condition number 1).
    ``sigma``: the smallest non-zero eigenvalue (``'min'``, the paper's), the lower median (``'median'``)
    or the mean (``'rmse'``). Written as ``sqrt(sigma / lambda_i)`` so near-singular ``G`` cannot overflow.
    """
    if scale_mode not in ALIGNED_SCALE_MODES:
        raise ValueError(f"unknown Aligned-MTL scale_mode {scale_mode!r}; valid: {', '.join(ALIGNED_SCALE_MODES)}")
    k = gram.shape[0]
    lam, vec = jnp.linalg.eigh(gram)  # ascending
    tol = jnp.max(lam) * k * jnp.finfo(gram.dtype).eps
    keep = lam > tol
    rank = jnp.sum(keep)
    if scale_mode == "min":
        sigma = jnp.min(jnp.where(keep, lam, jnp.inf))
    elif scale_mode == "median":
        ordered = jnp.sort(jnp.where(keep, lam, jnp.inf))
        sigma = ordered[jnp.maximum(rank - 1, 0) // 2]
    else:
        sigma = jnp.sum(jnp.where(keep, lam, 0.0)) / jnp.maximum(rank, 1)
    factor = jnp.where(keep, jnp.sqrt(safe_div(jnp.where(keep, sigma, 0.0), jnp.where(keep, lam, 1.0))), 0.0)
    return (vec * factor) @ vec.T


@register("aligned_mtl")
def aligned_mtl(scale_mode: str = "min") -> WeightingTransform:
    """Aligned-MTL, "Independent Component Alignment for Multi-Task Learning" (Senushkin et al., CVPR 2023).

    The task-gradient matrix is replaced by the closest (Procrustes) matrix with orthogonal,
    equal-norm rows: ``J_hat = B J`` with ``B = sqrt(sigma_min) V Lambda^{-1/2} V^T`` from
    ``G = J J^T = V Lambda V^T`` (Eq. 8-10; :func:`aligned_balance`), whose condition number is 1, scaled
    by the smallest singular value (``scale_mode='min'``). The update sums the aligned gradients with
    unit task weights, ``d = 1^T B J``, so the weights are ``B 1`` (the official code's
    ``weights.sum(-1)``). The paper's Aligned-MTL-UB runs it on the shared representation
    (``rep_level_ok=True``).

    Args:
      scale_mode: the common singular value ``sigma`` (default ``'min'``, the paper's: the smallest non-
        zero eigenvalue of ``G``; ``'median'``: the lower median; ``'rmse'``: the mean).
    """
    if scale_mode not in ALIGNED_SCALE_MODES:
        raise ValueError(f"unknown Aligned-MTL scale_mode {scale_mode!r}; valid: {', '.join(ALIGNED_SCALE_MODES)}")

    def update(inputs: GramianInputs, state):
        gram = inputs.gramian
        return weights_output(jnp.sum(aligned_balance(gram, scale_mode), axis=1)), state

    return WeightingTransform(stateless_init, update, GRAMIAN, rep_level_ok=True)


def _pinv_psd(a: Array, rtol: Optional[float] = None) -> Array:
    """Pseudo-inverse of a symmetric PSD matrix via ``eigh``; eigenvalues below ``rtol * max`` count as 0."""
    k = a.shape[0]
    if rtol is None:
        rtol = 10.0 * k * float(jnp.finfo(a.dtype).eps)
    lam, vec = jnp.linalg.eigh(a)
    keep = lam > rtol * jnp.maximum(jnp.max(lam), 0.0)
    inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    return (vec * inv) @ vec.T


@register("con_fig")
def con_fig() -> WeightingTransform:
    """ConFIG, "Conflict-Free Inverse Gradients" (Liu, Chu & Thuerey, ICLR 2025; arXiv 2024), Eq. 5.

    ``g_u = U([U(g_1), ..., U(g_K)]^{+T} 1_K)`` (``U``: normalisation to unit length), the direction with
    equal positive projections on every unit task gradient (the minimum-norm solution of
    ``u_k . v = 1``, found from the cosine matrix ``C = D^-1 G D^-1``: ``v = sum_k beta_k u_k``,
    ``beta = C^+ 1``, an ``eigh`` pseudo-inverse), and the update ``d = (sum_k g_k . g_u) g_u``
    (the length model "sum of projections"). A zero task gradient drops out; identical ones count once.
    """

    def update(inputs: GramianInputs, state):
        gram = inputs.gramian
        k = gram.shape[0]
        n = gram_norms(gram)
        inv = safe_div(jnp.ones_like(n), n)
        cos = gram * inv[:, None] * inv[None, :]
        beta = _pinv_psd(cos) @ jnp.ones((k,), gram.dtype)
        coeff = beta * inv  # v = sum_k coeff_k g_k
        v2 = coeff @ gram @ coeff
        projections = jnp.sum(gram @ coeff)  # sum_k g_k . v
        return weights_output(coeff * safe_div(projections, v2)), state

    return WeightingTransform(stateless_init, update, GRAMIAN, rep_level_ok=False)


class GradNormState(NamedTuple):
    weights: Array  # [K] current task weights w(t), summing to K
    initial_losses: Array  # [K] L(0)
    started: Array  # bool: initial_losses is set
    opt_state: Any  # Adam state of the weights


@register("gradnorm")
def gradnorm(alpha: float = 1.5, lr: float = 0.025) -> WeightingTransform:
    """GradNorm (Chen et al., ICML 2018).

    ``G_k = w_k |g_k|`` with ``|g_k| = sqrt(G_kk)`` from the Gramian of *all* shared parameters (the
    paper uses the last shared layer ``W`` only, to save compute), ``G_bar = mean_k G_k``, the inverse
    training rates ``r_k = L~_k / mean_j L~_j`` with ``L~_k = L_k(t) / L_k(0)`` (``L(0)``: the losses of
    the first call, kept in the state), and (Eq. 2)
    ``L_grad = sum_k |G_k - G_bar r_k^alpha|`` with the target ``G_bar r_k^alpha`` held constant, so
    ``dL_grad/dw_k = |g_k| sign(G_k - target_k)``. Step ``t`` uses ``w(t)``; then ``w`` takes one Adam
    step (learning rate ``lr = 0.025``, scheme-private: the paper does not fix the weights' optimizer,
    and Adam makes the step independent of the gradient scale), is clipped to ``>= 1e-8`` and is
    renormalised to ``sum_k w_k = K``. ``alpha = 1.5`` (the paper's NYUv2 value).

    Args:
      alpha: the asymmetry ``alpha`` of Eq. 2 (default 1.5, the paper's NYUv2 value).
      lr: Adam's learning rate on the task weights (default 0.025).
    """

    tx = optax.adam(lr)

    def init(num_tasks: int, *, layout: Optional[Layout] = None) -> GradNormState:
        w = jnp.ones((num_tasks,), default_float_dtype())
        return GradNormState(
            weights=w, initial_losses=jnp.ones_like(w), started=jnp.zeros((), bool), opt_state=tx.init(w)
        )

    def update(inputs: GramianInputs, state: GradNormState):
        losses = inputs.losses
        gram = inputs.gramian
        dtype = gram.dtype
        k = losses.shape[0]
        losses = losses.astype(dtype)
        w = state.weights.astype(dtype)
        initial = jnp.where(state.started, state.initial_losses.astype(dtype), losses)

        norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
        g = w * norms
        ratio = losses / jnp.maximum(initial, EPS)
        r = ratio / jnp.maximum(jnp.mean(ratio), EPS)
        target = jnp.mean(g) * r**alpha
        grad = norms * jnp.sign(g - target)

        updates, opt_state = tx.update(grad.astype(state.weights.dtype), state.opt_state, state.weights)
        new_w = jnp.maximum(optax.apply_updates(state.weights, updates), 1e-8)
        new_w = k * new_w / jnp.sum(new_w)
        new = GradNormState(weights=new_w, initial_losses=initial, started=jnp.ones((), bool), opt_state=opt_state)
        return weights_output(w), cast_like(new, state)

    return WeightingTransform(init, update, GRAMIAN, rep_level_ok=False)


@functools.partial(jax.jit, static_argnames=("f", "m"))
def _krum_weights(gram: Array, f: int, m: int) -> Array:
    k = gram.shape[0]
    diag = jnp.diagonal(gram)
    dist = jnp.maximum(diag[:, None] + diag[None, :] - 2.0 * gram, 0.0)
    dist = jnp.where(jnp.eye(k, dtype=bool), jnp.inf, dist)
    scores = jnp.sum(jnp.sort(dist, axis=1)[:, : k - f - 2], axis=1)
    chosen = jnp.argsort(scores, stable=True)[:m]
    return jnp.zeros((k,), gram.dtype).at[chosen].set(1.0 / m)


@register("krum")
def krum(n_byzantine: int = 1, n_selected: int = 1) -> WeightingTransform:
    """(Multi-)Krum (Blanchard, El Mhamdi, Guerraoui & Stainer, NeurIPS 2017).

    With ``f = n_byzantine`` assumed-faulty rows, the score of row ``i`` is
    ``s(i) = Σ_{j ∈ N_i} |g_i − g_j|²`` over the ``K − f − 2`` rows ``j ≠ i`` closest to ``g_i``; Krum
    returns the row of smallest score, multi-Krum (``m = n_selected``) the mean of the ``m`` rows of
    smallest score (ties broken by task index). The distances come from the Gramian,
    ``|g_i − g_j|² = G_ii + G_jj − 2G_ij``, so the result is ``w @ J`` with ``w`` = ``1/m`` on the
    selected rows. Requires ``K ≥ 2f + 3`` (the paper's ``n > 2f + 2``) and ``1 ≤ m ≤ K``.

    Args:
      n_byzantine: ``f``, the number of rows assumed faulty (default 1).
      n_selected: ``m``, the rows averaged (default 1: Krum; ``m > 1``: multi-Krum).
    """
    if n_byzantine < 0:
        raise ValueError(f"krum: n_byzantine must be non-negative, got {n_byzantine}")
    if n_selected < 1:
        raise ValueError(f"krum: n_selected must be at least 1, got {n_selected}")

    def update(inputs: GramianInputs, state):
        gram = inputs.gramian
        k = gram.shape[0]
        f = n_byzantine
        if k < 2 * f + 3:
            raise ValueError(f"krum: n_byzantine={f} needs at least 2*{f}+3={2 * f + 3} tasks (rows), got {k}")
        if n_selected > k:
            raise ValueError(f"krum: n_selected={n_selected} exceeds the number of tasks {k}")
        w = _krum_weights(gram, f, n_selected)
        return weights_output(w), state

    return WeightingTransform(stateless_init, update, GRAMIAN)


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


# Working set of the K dual-cone QPs solved together: each carries a K×K inverse (see
# qp.nonneg_qp_solve), and a step streams all of them; kept within a core's L2 cache, a step costs
# ~10x less at K = 256 than one batch of all K (measured: results/bench/upgrad_solver.md).
_QP_BATCH_BYTES = 2 * 1024 * 1024


def _qp_batch_size(k: int, dtype) -> int:
    """How many of UPGrad's K QPs to solve at once (``lax.map`` batch): as many ``K×K`` inverses as fit
    in :data:`_QP_BATCH_BYTES`, at least 1, at most K."""
    return int(min(k, max(1, _QP_BATCH_BYTES // (k * k * jnp.dtype(dtype).itemsize))))


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _upgrad_weights(gram: Array, norm_eps: float, reg_eps: float, max_iter: Optional[int]) -> Array:
    k = gram.shape[0]
    g = _normalised_gramian(gram, norm_eps, reg_eps)
    eye = jnp.eye(k, dtype=g.dtype)
    solve = lambda u: qp.dual_cone_weights(g, u, max_iter=max_iter)
    batch = _qp_batch_size(k, g.dtype)
    v = jax.vmap(solve)(eye) if batch >= k else jax.lax.map(solve, eye, batch_size=batch)
    return jnp.mean(v, axis=0)


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _dualproj_weights(gram: Array, norm_eps: float, reg_eps: float, max_iter: Optional[int]) -> Array:
    k = gram.shape[0]
    g = _normalised_gramian(gram, norm_eps, reg_eps)
    return qp.dual_cone_weights(g, jnp.full((k,), 1.0 / k, g.dtype), max_iter=max_iter)


@register("upgrad")
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

    Args:
      norm_eps: ``G`` is divided by ``tr(G)`` unless ``tr(G) < norm_eps`` (default 1e-4, torchjd's).
      reg_eps: ridge added to the normalised Gramian (default 1e-4, torchjd's).
      max_iter: cap on the active-set iterations of each of the K QPs; default ``None`` = ``10K + 50``.
    """
    check_nonneg("upgrad", norm_eps=norm_eps, reg_eps=reg_eps)

    def update(inputs: GramianInputs, state):
        gram = inputs.gramian
        return weights_output(_upgrad_weights(gram, norm_eps, reg_eps, max_iter)), state

    return WeightingTransform(stateless_init, update, GRAMIAN)


@register("dualproj")
def dualproj(norm_eps: float = 1e-4, reg_eps: float = 1e-4, max_iter: Optional[int] = None) -> WeightingTransform:
    """DualProj (Quinton & Rey 2024): the mean gradient projected onto the dual cone of the rows of ``J``.

    ``d = π_J((1/K) Σ_i g_i) = Jᵀv`` with ``v = argmin_{v ≥ 1/K} vᵀGv`` (Proposition 1), solved like
    :func:`upgrad` (same normalisation ``G/tr(G) + reg_eps·I`` and defaults).

    Args:
      norm_eps: ``G`` is divided by ``tr(G)`` unless ``tr(G) < norm_eps`` (default 1e-4, torchjd's).
      reg_eps: ridge added to the normalised Gramian (default 1e-4, torchjd's).
      max_iter: cap on the active-set iterations; default ``None`` = ``10K + 50``.
    """
    check_nonneg("dualproj", norm_eps=norm_eps, reg_eps=reg_eps)

    def update(inputs: GramianInputs, state):
        gram = inputs.gramian
        return weights_output(_dualproj_weights(gram, norm_eps, reg_eps, max_iter)), state

    return WeightingTransform(stateless_init, update, GRAMIAN)


@register("fairgrad")
def fairgrad(alpha: float = 1.0, ridge: float = 1e-8, max_iter: int = 100, tol: float = 1e-9) -> WeightingTransform:
    """FairGrad (Ban & Ji, ICML 2024, "Fair Resource Allocation in Multi-Task Learning").

    The update ``d`` maximises the α-fair utility ``Σ_i (g_iᵀd)^{1−α}/(1−α)`` (``Σ log g_iᵀd`` for
    α = 1) over a ball; its KKT conditions give ``d = Σ_i w_i g_i`` with ``G w = w^{−1/α}``
    (elementwise), which the reference code solves with ``scipy.optimize.least_squares``. Here the
    positive root is found in-graph by :func:`jmtl.weighting.solvers.alpha_fair_solve` (damped Newton
    in log coordinates from the orthogonal-gradient solution, to a relative residual ``tol``).
    α → 0 is linear scalarisation, α = 1 proportional fairness, α → ∞ max-min fairness. For orthogonal
    gradients ``w_k = |g_k|^{−2α/(1+α)}`` (``d = Σ g_k/|g_k|`` at α = 1). If no positive solution exists
    (e.g. two exactly opposite gradients ``g_i = −g_j``: no direction improves both) the weights
    returned are large, finite and meaningless, like the reference solver's.

    Args:
      alpha: the fairness parameter ``α > 0`` (default 1, proportional fairness).
      ridge: added to each ``|g_k|^2`` relative to itself (default 1e-8); only matters for
        (near-)zero task gradients, whose weights become large but multiply a zero row.
      max_iter: cap on the Newton iterations (default 100; ~5-20 are used).
      tol: tolerance on ``max_k |(G w)_k w_k^{1/α} - 1|`` (default 1e-9; float32 stops at round-off).
    """
    if alpha <= 0:
        raise ValueError(f"fairgrad: alpha must be positive, got {alpha}")
    check_nonneg("fairgrad", ridge=ridge)
    alpha = float(alpha)

    def update(inputs: GramianInputs, state):
        gram = inputs.gramian
        return weights_output(solvers.alpha_fair_weights(gram, alpha, ridge=ridge, max_iter=max_iter, tol=tol)), state

    return WeightingTransform(stateless_init, update, GRAMIAN, rep_level_ok=False)


class SimplexWeightsState(NamedTuple):
    """State of SDMGrad / MoDo: the simplex weights carried between steps."""

    w: Array


def _simplex_init(num_tasks: int, *, layout: Optional[Layout] = None) -> SimplexWeightsState:
    return SimplexWeightsState(jnp.full((num_tasks,), 1.0 / num_tasks, default_float_dtype()))


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
        return projection_simplex(w - lr * buf), buf

    w, _ = jax.lax.fori_loop(0, niter, body, (w, jnp.zeros((k,), gram.dtype)))
    return w


@register("sdmgrad")
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

    Args:
      lam: ``lambda``, the pull towards the mean gradient (default 0.3).
      niter: projected-gradient steps on ``w`` per call (default 20; the algorithm's own fixed count,
        not a solve to convergence).
      lr: their step size (default 5).
      momentum: heavy-ball momentum (default 0.5).
    """
    check_nonneg("sdmgrad", lam=lam, lr=lr, momentum=momentum)
    if niter < 0:
        raise ValueError(f"sdmgrad: niter must be non-negative, got {niter}")

    def update(inputs: GramianInputs, state):
        gram = inputs.gramian
        k = gram.shape[0]
        w = _sdmgrad_inner(gram, state.w.astype(gram.dtype), lam, niter, lr, momentum)
        weights = (w + lam / k) / (1.0 + lam)
        return weights_output(weights), SimplexWeightsState(w.astype(state.w.dtype))

    return WeightingTransform(_simplex_init, update, GRAMIAN, rep_level_ok=False)


@register("modo")
def modo(gamma: float = 1e-3, rho: float = 0.1) -> WeightingTransform:
    """MoDo (Chen et al., NeurIPS 2023, "Three-Way Trade-Off in Multi-Objective Learning"), single batch.

    ``λ ← Π_Δ(λ − γ (J Jᵀ + ρ I) λ)`` then ``d = Jᵀλ`` (``λ_0 = 1/K`` carried between steps). The paper
    (and the authors' code in LibMTL, whose defaults γ 1e-3, ρ 0.1 are used) draws three independent
    mini-batches: ``J_{t,1} J_{t,2}ᵀ`` in the λ update and ``J_{t,3}`` for ``d``. The protocol gives one
    batch, so all three are the same ``J`` (``JJᵀ = G``): the λ step is then a biased estimate of the
    paper's.

    Args:
      gamma: step ``gamma`` of the ``lambda`` update (default 1e-3, LibMTL's).
      rho: ridge ``rho`` (default 0.1, LibMTL's).
    """
    check_nonneg("modo", gamma=gamma, rho=rho)

    def update(inputs: GramianInputs, state):
        gram = inputs.gramian
        lam = state.w.astype(gram.dtype)
        step = jnp.matmul(gram, lam, precision=_HIGHEST) + rho * lam
        lam = projection_simplex(lam - gamma * step)
        return weights_output(lam), SimplexWeightsState(lam.astype(state.w.dtype))

    return WeightingTransform(_simplex_init, update, GRAMIAN, rep_level_ok=False)


# ----------------------------------------------------------------------------- NTKMTL


def ntk_weights(gram: Array, ntk_exp: float = 0.5, eps: float = 1e-8) -> Array:
    """NTKMTL's (n = 1) task weights ``(tr(G) / (G_kk + eps))^ntk_exp`` (before the factor K and the clip).

    With one sample per task the task's NTK is the scalar ``|g_k|^2 = G_kk`` (its largest eigenvalue
    ``lambda_k``), and the weight ``(sum_j lambda_j / lambda_k)^(1/2)`` equalises the tasks' convergence
    rates (Qin et al. 2025, the NTK-ratio weighting; ``ntk_exp = 1/2`` in the paper).
    """
    diag = jnp.maximum(jnp.diagonal(gram), 0.0)
    return (jnp.sum(diag) / (diag + eps)) ** ntk_exp


def _clip_weights(weights: Array, gram: Array, max_norm: float) -> Array:
    """``weights`` scaled so that ``|weights @ J| <= max_norm`` (``clip_grad_norm_`` on the shared update)."""
    if max_norm <= 0:
        return weights
    norm = jnp.sqrt(jnp.maximum(weights @ jnp.matmul(gram, weights, precision=_HIGHEST), 0.0))
    return weights * jnp.where(norm > max_norm, max_norm / jnp.where(norm > 0, norm, 1.0), 1.0)


@register("ntkmtl")
def ntkmtl(ntk_exp: float = 0.5, max_norm: float = 1.0) -> WeightingTransform:
    """NTKMTL (Qin, Wang, Liao & Yan, NeurIPS 2025; arXiv:2510.18258).

    "NTKMTL: Mitigating Task Imbalance in Multi-Task Learning from Neural Tangent Kernel Perspective".

    Task ``k``'s convergence speed under gradient flow is governed by the eigenvalues of its neural
    tangent kernel; NTKMTL reweights each task by the NTK ratio ``(sum_j lambda_j / lambda_k)^(1/2)``
    so that all tasks converge at similar rates. With ``n = 1`` sample per task (the variant the
    authors use for a fair comparison with other gradient methods, README) the NTK of task ``k`` is the
    scalar ``lambda_k = |g_k|^2 = G_kk``, so the update is
    ``d = K sum_k (tr(G) / (G_kk + 1e-8))^ntk_exp g_k`` (their code's ``ntkgrad``, times ``K`` "to match
    the sum loss"), then clipped to norm ``max_norm`` like the official ``clip_grad_norm_``.
    Reads only the Gramian's diagonal and ``G`` for the clip.

    Equation numbers of the paper could not be read from the stored sources (only the official
    repository's code and README were); the rule above is the official code's.

    Args:
      ntk_exp: exponent on the NTK ratio (default 0.5, the paper's square root; the README suggests
        trying ~0.75).
      max_norm: the shared update is scaled to norm ``<= max_norm`` (official default 1); 0 disables.
    """
    if ntk_exp < 0:
        raise ValueError(f"ntkmtl: ntk_exp must be non-negative, got {ntk_exp}")

    def update(inputs: GramianInputs, state):
        gram = inputs.gramian
        k = gram.shape[0]
        weights = k * ntk_weights(gram, ntk_exp)
        return weights_output(_clip_weights(weights, gram, max_norm)), state

    return WeightingTransform(stateless_init, update, GRAMIAN, rep_level_ok=False)


# ----------------------------------------------------------------------------- PCD


class PCDState(NamedTuple):
    sq_norm_ema: Array  # [K] EMA of |g_k|^2 (no bias correction stored)
    count: Array  # int32: update calls so far


def pcd_qp(gram: Array, taus: Array) -> tuple[Array, Array]:
    """PCD's QP on a Gramian whose row / column 0 is the primary task: ``(w, feasible)``.

    ``min_d 1/2 |d - g_1|^2`` s.t. ``g_j . d >= tau_j |g_j|^2`` (j >= 2). Its dual is the non-negative QP
    ``min_{mu >= 0} 1/2 mu^T G_s mu - b^T mu`` with ``G_s`` the secondary block and
    ``b_j = tau_j G_jj - G_j1``; the primal solution is ``d = g_1 + sum_j mu_j g_j``, so ``w = [1, mu]``.
    Solved by :func:`jmtl.weighting.qp.nonneg_qp_solve` on ``G_s + ridge I`` (``ridge`` = 16 K eps of the
    largest diagonal entry: it bounds ``mu`` when gradients are dependent). If the constraints are
    infeasible the ridge-bounded ``mu`` leaves a constraint violated; that is detected (violation above
    1e-3 of the largest ``G_jj``) and ``w = [1, 0, ..., 0]`` is returned, as torchjd does.
    """
    k = gram.shape[0]
    dtype = gram.dtype
    e1 = jnp.zeros((k,), dtype).at[0].set(1.0)
    if k == 1:
        return e1, jnp.asarray(True)
    gs = gram[1:, 1:]
    b = taus * jnp.diagonal(gs) - gram[1:, 0]
    scale = jnp.maximum(jnp.max(jnp.diagonal(gram)), jnp.finfo(dtype).tiny)
    ridge = 16.0 * k * float(jnp.finfo(dtype).eps) * scale
    res = qp.nonneg_qp_solve(gs + ridge * jnp.eye(k - 1, dtype=dtype), -b)
    mu = res.x
    slack = jnp.matmul(gs, mu, precision=_HIGHEST) - b
    feasible = jnp.all(slack >= -1e-3 * scale) & jnp.all(jnp.isfinite(mu))
    w = jnp.concatenate([jnp.ones((1,), dtype), mu])
    return jnp.where(feasible, w, e1), feasible


@register("pcd")
def pcd(tau: float | Sequence[float] = 0.02, beta: float = 0.999, eps: float = 1e-8) -> WeightingTransform:
    """PCD, priority-constrained descent (TMLR 2026; arXiv:2606.29521), as torchjd's ``PCD``.

    "Not All Objectives Are Born Equal: Priority-Constrained Descent for Hierarchical Multi-Objective
    Optimization" (the title and arXiv number as torchjd cites them).

    Task 0 (the first task) is the primary objective; the others are secondary. With normalised
    gradients ``g~_i = s_i g_i``, ``s_i = 1 / sqrt(v^_i + eps)`` (``v^_i``: bias-corrected EMA of ``|g_i|^2``
    with decay ``beta``), the direction follows the primary gradient as closely as possible while each
    secondary task keeps a fraction ``tau`` of the first-order progress of its own normalised step:

        ``d~ = argmin_d 1/2 |d - g~_1|^2   s.t.   g~_j . d >= tau_j |g~_j|^2  (j = 2..K)``,

    and the update is ``d~`` rescaled to ``|g_1|``. The QP is solved exactly in-graph through its dual
    (:func:`pcd_qp`; ``d~ = g~_1 + sum_j mu_j g~_j``), so ``d`` is ``w @ J`` with
    ``w = [1, mu] * s * |g_1| / |d~|``, all from the Gramian. Special cases as torchjd's ``PCD``
    (SimplexLab/TorchJD source, which this follows; the paper's reference code enumerates working sets instead): ``g_1 = 0`` or
    ``d~ = 0`` (up to round-off) gives a zero update; infeasible constraints (needs K >= 3, e.g. two
    opposite secondary gradients) are dropped and the update is ``g_1``. Not symmetric in the tasks:
    the order of the tasks is the priority.

    The paper's equation numbers could not be read (only torchjd's implementation and docstring were
    stored); the formulation above is torchjd's statement of the paper's problem.

    Args:
      tau: the guaranteed fraction ``tau in [0, 1]`` of normalised progress for each secondary task:
        one float for all, or a sequence of K - 1 values (default 0.02, torchjd's).
      beta: EMA decay ``beta in [0, 1)`` of the squared gradient norms (default 0.999, torchjd's).
      eps: added to ``v^_i`` before the inverse square root (default 1e-8).
    """
    tau_arr = tuple(float(t) for t in tau) if isinstance(tau, (list, tuple)) else (float(tau),)
    if any(not 0.0 <= t <= 1.0 for t in tau_arr):
        raise ValueError(f"pcd: tau must be in [0, 1], got {tau!r}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"pcd: beta must be in [0, 1), got {beta}")
    if eps < 0:
        raise ValueError(f"pcd: eps must be non-negative, got {eps}")
    per_task = isinstance(tau, (list, tuple))

    def init(num_tasks: int, *, layout: Optional[Layout] = None) -> PCDState:
        return PCDState(jnp.zeros((num_tasks,), default_float_dtype()), jnp.zeros((), jnp.int32))

    def update(inputs: GramianInputs, state: PCDState):
        gram = inputs.gramian
        gram = 0.5 * (gram + gram.T)
        k = gram.shape[0]
        dtype = gram.dtype
        if per_task and len(tau_arr) != k - 1:
            raise ValueError(
                f"pcd: tau has {len(tau_arr)} values, need one per secondary task ({k - 1}); "
                "pass one float or a sequence of K - 1 values"
            )
        taus = jnp.asarray(tau_arr if per_task else tau_arr * (k - 1), dtype)
        sq = jnp.maximum(jnp.diagonal(gram), 0.0)
        count = state.count + 1
        ema = beta * state.sq_norm_ema.astype(dtype) + (1.0 - beta) * sq
        debiased = ema / (1.0 - beta ** count.astype(dtype))
        den = jnp.sqrt(debiased + eps)
        s = jnp.where(den > 0, 1.0 / jnp.where(den > 0, den, 1.0), 0.0)
        normalized = gram * s[:, None] * s[None, :]
        w, _ = pcd_qp(normalized, taus)
        d_sq = w @ jnp.matmul(normalized, w, precision=_HIGHEST)
        magnitude = (jnp.abs(w) @ jnp.sqrt(jnp.maximum(jnp.diagonal(normalized), 0.0))) ** 2
        precision = 10.0 * float(jnp.finfo(dtype).eps)
        nonzero = (sq[0] > 0) & (d_sq > precision * magnitude)
        weights = jnp.where(nonzero, w * s * jnp.sqrt(sq[0] / jnp.where(nonzero, d_sq, 1.0)), 0.0)
        new = PCDState(ema.astype(state.sq_norm_ema.dtype), count)
        return weights_output(weights), new

    return WeightingTransform(init, update, GRAMIAN, rep_level_ok=False)


# ----------------------------------------------------------------------------- CR-MOGM


class CRMOGMState(NamedTuple):
    lam: Array  # [K] the smoothed weights lambda_{t-1} (starts at 1/K)
    base: Any  # the wrapped scheme's state


@register("cr_mogm")
def cr_mogm(base: str = "mgda", alpha: float = 0.1, base_hparams: Optional[dict] = None) -> WeightingTransform:
    """CR-MOGM weight smoothing (NeurIPS 2022), torchjd's ``CRMOGMWeighting`` wrapper.

    The paper as torchjd cites it: NeurIPS 2022 proceedings, hash 4e91f0648fb6e09f0156a7eaf6c4dfdb
    (torchjd's link text: "Conflict-Reduction Multi-Objective Gradient Methods"; the paper itself was not
    among the stored sources). Lives with the Gramian schemes because its default base (MGDA) is one;
    its ``requires`` is the base's.

    Wraps another weighting scheme and returns an exponential moving average of its weights:
    ``lambda_t = alpha lambda_{t-1} + (1 - alpha) lambda^_t`` with ``lambda_0 = 1/K`` (``lambda^_t``: the
    wrapped scheme's weights this step). The smoothing is what makes the stochastic manipulated
    gradient's bias vanish in the paper's analysis (its Corollary 1 schedules ``alpha_t`` towards 1 as
    the learning rate decays; here, as in torchjd, ``alpha`` is fixed). Needs what the wrapped scheme
    needs; the wrapped scheme must return weights (not a direction) and have no learnable params.
    ``lambda_0 = 1/K`` suits schemes whose weights sum to 1 (MGDA, the default); for others the first
    steps mix scales.

    Uncertain: torchjd's stored source has ``alpha = 0.1`` in the signature but its docstring calls
    0.9 the default; the signature's value (what torchjd actually uses) is taken.

    Args:
      base: the registered name of the wrapped scheme (default ``'mgda'``).
      alpha: EMA coefficient on the previous weights, in ``[0, 1]`` (default 0.1; 0 = no smoothing,
        1 = weights frozen at 1/K).
      base_hparams: hyperparameters of the wrapped scheme (default none).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"cr_mogm: alpha must be in [0, 1], got {alpha}")
    if base == "cr_mogm":
        raise ValueError("cr_mogm: base must be another scheme, not cr_mogm itself")
    inner = get(base, **dict(base_hparams or {}))
    if inner.requires == BILEVEL:
        raise ValueError(f"cr_mogm: base={base!r} is a bilevel scheme; wrap a losses/gramian/jacobian scheme")
    if inner.init_params is not None:
        raise ValueError(
            f"cr_mogm: base={base!r} has learnable params; the EMA of its weights would cut their "
            "gradient. Wrap a scheme without init_params"
        )

    def init(num_tasks: int, *, layout: Optional[Layout] = None) -> CRMOGMState:
        lam = jnp.full((num_tasks,), 1.0 / num_tasks, default_float_dtype())
        return CRMOGMState(lam, inner.init(num_tasks, layout=layout))

    def update(inputs, state: CRMOGMState):  # the inner scheme's inputs type: this wraps its requirement
        out, base_state = inner.update(inputs, state.base)
        if out.weights is None:
            raise ValueError(f"cr_mogm: base={base!r} returns a direction, not weights; wrap a weighted scheme")
        w = jax.lax.stop_gradient(out.weights)
        lam = alpha * state.lam.astype(w.dtype) + (1.0 - alpha) * w
        return weights_output(lam), CRMOGMState(lam.astype(state.lam.dtype), base_state)

    return WeightingTransform(
        init,
        update,
        inner.requires,
        rep_level_ok=inner.rep_level_ok,
        needs_key=inner.needs_key,
        fixed_weights=inner.fixed_weights,
    )


__all__ = [
    "ALIGNED_SCALE_MODES",
    "CAGRAD_RESCALES",
    "CRMOGMState",
    "GradNormState",
    "MGDA_NORMALIZATIONS",
    "NashState",
    "PCDState",
    "SimplexWeightsState",
    "aligned_balance",
    "aligned_mtl",
    "cagrad",
    "con_fig",
    "cr_mogm",
    "dualproj",
    "fairgrad",
    "gradnorm",
    "imtl",
    "imtl_g",
    "imtl_g_weights",
    "krum",
    "mgda",
    "modo",
    "nash_mtl",
    "ntk_weights",
    "ntkmtl",
    "pcd",
    "pcd_qp",
    "pcgrad",
    "sdmgrad",
    "upgrad",
]
