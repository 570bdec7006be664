"""Gradient-surgery schemes: they combine (and edit) the per-task gradients of the shared parameters.

Every scheme here is an optax-style ``init``/``update`` pair (see :mod:`jmtl.weighting.base`). Where the
result is a linear combination ``sum_k w_k g_k`` of the task gradients, the scheme is written on the
``[K, K]`` Gramian ``G = J J^T`` alone (``requires='gramian'``) and returns the weights: PCGrad's
projections, for instance, only move each ``g_i`` inside the span of the task gradients, so they are
tracked as coefficient vectors (``g_i^PC = sum_m c_im g_m``, ``g_i^PC . g_j = c_i . G[:, j]``). Schemes
whose result is not one linear combination (GradVac per group, GradDrop per coordinate) take the
Jacobian and return a direction.

All solvers run in the compiled step with a fixed iteration count (``lax.fori_loop``); randomness
comes from ``key`` only.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from jmtl.weighting.base import (
    GRAMIAN,
    JACOBIAN,
    Layout,
    WeightingOutput,
    WeightingTransform,
    default_float_dtype,
    require_gramian,
    stateless_init,
    weights_output,
)

Array = jax.Array

EPS = 1e-8




def _need_key(key: Optional[Array], name: str) -> Array:
    if key is None:
        raise ValueError(f"{name} needs the step's PRNG key")
    return key


def _norms(gram: Array) -> Array:
    return jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))


def _safe_div(num: Array, den: Array) -> Array:
    """``num / den`` where ``den > 0``, else 0 (no NaN/inf from degenerate gradients)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _pinv_psd(a: Array, rtol: Optional[float] = None) -> Array:
    """Pseudo-inverse of a symmetric PSD matrix via ``eigh``; eigenvalues below ``rtol * max`` count as 0."""
    k = a.shape[0]
    if rtol is None:
        rtol = 10.0 * k * float(jnp.finfo(a.dtype).eps)
    lam, vec = jnp.linalg.eigh(a)
    keep = lam > rtol * jnp.maximum(jnp.max(lam), 0.0)
    inv = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
    return (vec * inv) @ vec.T


def project_simplex(v: Array) -> Array:
    """Euclidean projection onto the probability simplex (sort-based; Duchi et al. 2008, Fig. 1)."""
    k = v.shape[-1]
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u) - 1.0
    ind = jnp.arange(1, k + 1, dtype=v.dtype)
    rho = jnp.sum(u - css / ind > 0) - 1  # >= 0: the first entry always passes
    theta = css[rho] / (rho + 1).astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)


# ----------------------------------------------------------------------------- PCGrad


def pcgrad() -> WeightingTransform:
    """PCGrad, "Gradient Surgery for Multi-Task Learning" (Yu et al., NeurIPS 2020), Algorithm 1.

    For every task ``i``: ``g_i^PC = g_i``; for each other task ``j`` in a random order, if
    ``g_i^PC . g_j < 0`` then ``g_i^PC <- g_i^PC - (g_i^PC . g_j) / |g_j|^2 g_j`` (projection onto the
    normal plane of the *original* ``g_j``). The update is the sum ``sum_i g_i^PC`` (the paper's;
    some ports average). One random order per ``i``, drawn from ``key``. Computed on the Gramian
    (coefficients in the span of the task gradients), returned as weights.
    """

    def update(losses, state, *, gramian=None, jacobian=None, key=None, **_):
        gram = require_gramian("pcgrad", gramian, jacobian)
        key = _need_key(key, "pcgrad")
        k = gram.shape[0]
        eye = jnp.eye(k, dtype=gram.dtype)
        perms = jax.vmap(lambda kk: jax.random.permutation(kk, k))(jax.random.split(key, k))

        def surgery(i, perm):
            def body(p, c):
                j = perm[p]
                dot = c @ gram[:, j]
                gjj = gram[j, j]
                conflict = (j != i) & (dot < 0) & (gjj > 0)
                return c - jnp.where(conflict, _safe_div(dot, gjj), 0.0) * eye[j]

            return jax.lax.fori_loop(0, k, body, eye[i])

        coeffs = jax.vmap(surgery)(jnp.arange(k), perms)  # [K (i), K (m)]
        return weights_output(jnp.sum(coeffs, axis=0)), state

    return WeightingTransform(stateless_init, update, GRAMIAN, rep_level_ok=False)


# ----------------------------------------------------------------------------- GradVac

GRADVAC_GRANULARITIES = ("whole_model", "all_layer", "all_matrix")


def _parent(path: str) -> str:
    """The module a leaf belongs to: its path without the last key.

    ``"['enc']['conv']['kernel']"`` -> ``"['enc']['conv']"``; also ``a/b/c`` and ``a.b.c`` paths.
    """
    m = re.match(r"^(.*)(\[[^\[\]]*\]|[./][^./\[\]]*)$", path)
    return m.group(1) if m else ""


def gradvac_groups(layout: Optional[Layout], d: int, granularity: str) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """``(leaf sizes, group id of each leaf, number of groups)`` for GradVac on ``d`` flat parameters.

    ``whole_model``: one group. ``all_layer``: the leaves of one module (same path up to the last key,
    e.g. a layer's kernel and bias) form a group. ``all_matrix``: every leaf (parameter tensor) is a
    group. Without a layout everything is one leaf.
    """
    if granularity not in GRADVAC_GRANULARITIES:
        raise ValueError(f"unknown GradVac granularity {granularity!r}; valid: {', '.join(GRADVAC_GRANULARITIES)}")
    if layout is None:
        return (d,), (0,), 1
    sizes = tuple(int(math.prod(shape)) for _, shape in layout)
    if sum(sizes) != d:
        raise ValueError(f"layout describes {sum(sizes)} parameters, the Jacobian has {d}")
    if granularity == "whole_model":
        return sizes, (0,) * len(sizes), 1
    if granularity == "all_matrix":
        return sizes, tuple(range(len(sizes))), len(sizes)
    ids: dict[str, int] = {}
    groups = tuple(ids.setdefault(_parent(path), len(ids)) for path, _ in layout)
    return sizes, groups, len(ids)


class GradVacState(NamedTuple):
    targets: Array  # [n_groups, K, K] EMA phi_hat_ij of the cosine similarities (row i: the task being edited)


def gradvac(beta: float = 0.5, granularity: str = "whole_model") -> WeightingTransform:
    """Gradient Vaccine (Wang et al., "Gradient Vaccine", ICLR 2021), Algorithm 1.

    Per group of parameters and pair ``(i, j)``: ``phi_ij = cos(g_i', g_j)``; if ``phi_ij < phi_hat_ij``,
    ``g_i' <- g_i' + |g_i'| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) / (|g_j| sqrt(1 - phi_hat^2)) g_j``
    (Eq. 3, which raises the cosine to exactly ``phi_hat``); then always
    ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij`` (``phi_hat`` starts at 0, the state). The
    ``j`` run over the other tasks in a random order from ``key`` (one order per ``i``, shared by the
    groups); the update is ``sum_i g_i'``. ``beta = 0.5`` (the paper tunes it, e.g. 1e-2 for NMT).

    Granularities (the paper's "whole model / all layers / all matrices") on ``layout``:
    ``'whole_model'``: one group; ``'all_layer'``: one group per module, i.e. the leaves sharing their
    path up to the last key (kernel + bias of one layer); ``'all_matrix'``: one group per leaf
    (parameter tensor). Without a layout at ``update`` every granularity is ``'whole_model'``.
    A pair with ``phi_hat = +-1`` (or a zero ``g_j``) is not edited (Eq. 3 would divide by 0).

    The state size depends on the number of groups: pass ``layout=`` to ``init`` for
    ``'all_layer'``/``'all_matrix'`` (without it the state is sized on the first call, one shape change).
    """
    if granularity not in GRADVAC_GRANULARITIES:
        raise ValueError(f"unknown GradVac granularity {granularity!r}; valid: {', '.join(GRADVAC_GRANULARITIES)}")

    def init(num_tasks: int, layout: Optional[Layout] = None) -> GradVacState:
        if granularity == "whole_model":
            n = 1
        elif layout is None:
            n = 0  # sized on the first update
        else:
            d = sum(int(math.prod(s)) for _, s in layout)
            n = gradvac_groups(layout, d, granularity)[2]
        return GradVacState(targets=jnp.zeros((n, num_tasks, num_tasks), default_float_dtype()))

    def update(losses, state: GradVacState, *, jacobian=None, key=None, layout=None, **_):
        if jacobian is None:
            raise ValueError("gradvac needs the Jacobian of the task losses")
        key = _need_key(key, "gradvac")
        k, d = jacobian.shape
        sizes, leaf_group, n = gradvac_groups(layout, d, granularity)
        targets = state.targets
        if targets.shape[0] == 0:
            targets = jnp.zeros((n, k, k), targets.dtype)
        elif targets.shape != (n, k, k):
            raise ValueError(f"gradvac state has {targets.shape[0]} groups for {targets.shape[1]} tasks, "
                             f"the call has {n} groups for {k} tasks")
        dtype = jacobian.dtype
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)

        # Per-group Gramians [n, K, K] from static slices of J.
        grams = [jnp.zeros((k, k), dtype) for _ in range(n)]
        for leaf, g in enumerate(leaf_group):
            block = jacobian[:, offsets[leaf] : offsets[leaf + 1]]
            grams[g] = grams[g] + block @ block.T
        grams = jnp.stack(grams)
        gdiag = jnp.sqrt(jnp.maximum(jnp.diagonal(grams, axis1=1, axis2=2), 0.0))  # [n, K]

        perms = jax.vmap(lambda kk: jax.random.permutation(kk, k))(jax.random.split(key, k))
        eye = jnp.eye(k, dtype=dtype)

        def vaccinate(i, perm, rho_row):  # rho_row [n, K]: phi_hat_{i, .} per group
            def body(p, carry):
                c, rho = carry  # c [n, K] coefficients of g_i' per group
                j = perm[p]
                other = j != i
                gi = jnp.sqrt(jnp.maximum(jnp.einsum("gk,gkl,gl->g", c, grams, c), 0.0))
                gj = gdiag[:, j]
                phi = jnp.clip(_safe_div(jnp.einsum("gk,gk->g", c, grams[:, :, j]), gi * gj), -1.0, 1.0)
                phi_hat = rho[:, j]
                s = jnp.sqrt(jnp.maximum(1.0 - phi**2, 0.0))
                s_hat = jnp.sqrt(jnp.maximum(1.0 - phi_hat**2, 0.0))
                coef = _safe_div(gi * (phi_hat * s - phi * s_hat), gj * s_hat)
                edit = other & (phi < phi_hat)
                c = c + jnp.where(edit, coef, 0.0)[:, None] * eye[j][None, :]
                rho = rho.at[:, j].set(jnp.where(other, (1.0 - beta) * phi_hat + beta * phi, phi_hat))
                return c, rho

            c0 = jnp.broadcast_to(eye[i], (n, k))
            return jax.lax.fori_loop(0, k, body, (c0, rho_row))

        rho_rows = jnp.transpose(targets.astype(dtype), (1, 0, 2))  # [K (i), n, K (j)]
        coeffs, new_rows = jax.vmap(vaccinate)(jnp.arange(k), perms, rho_rows)  # [K, n, K] each
        group_weights = jnp.sum(coeffs, axis=0)  # [n, K]
        pieces = [
            group_weights[g] @ jacobian[:, offsets[leaf] : offsets[leaf + 1]] for leaf, g in enumerate(leaf_group)
        ]
        direction = jnp.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        new_targets = jnp.transpose(new_rows, (1, 0, 2)).astype(targets.dtype)
        out = WeightingOutput(weights=None, direction=direction, extra_loss=jnp.zeros((), dtype))
        return out, GradVacState(targets=new_targets)

    return WeightingTransform(init, update, JACOBIAN, rep_level_ok=False)


# ----------------------------------------------------------------------------- GradDrop


def graddrop(leak: float = 0.0) -> WeightingTransform:
    """GradDrop, "Just Pick a Sign" (Chen et al., NeurIPS 2020), Algorithm 1 with ``f`` = identity.

    Per coordinate: the sign purity ``P = (1 + sum_k g_k / sum_k |g_k|) / 2`` (Eq. 1), one
    ``U ~ Uniform(0, 1)`` from ``key`` shared by the tasks, the masks
    ``M_k = [P > U] [g_k > 0] + [P < U] [g_k < 0]`` and the update
    ``sum_k (leak + (1 - leak) M_k) g_k``. The paper applies it to the gradients of the shared
    activations (summed over the batch); here it runs on whatever Jacobian the step supplies: the
    shared parameters, or the representation in rep-level mode. Coordinates where every ``g_k`` is 0
    get ``P = 1/2``.
    """
    if not 0.0 <= leak <= 1.0:
        raise ValueError(f"leak must be in [0, 1], got {leak}")

    def update(losses, state, *, jacobian=None, key=None, **_):
        if jacobian is None:
            raise ValueError("graddrop needs the Jacobian of the task losses")
        key = _need_key(key, "graddrop")
        total = jnp.sum(jacobian, axis=0)
        purity = 0.5 * (1.0 + _safe_div(total, jnp.sum(jnp.abs(jacobian), axis=0)))
        u = jax.random.uniform(key, total.shape, jacobian.dtype)
        keep = ((purity > u)[None, :] & (jacobian > 0)) | ((purity < u)[None, :] & (jacobian < 0))
        direction = jnp.sum((leak + (1.0 - leak) * keep.astype(jacobian.dtype)) * jacobian, axis=0)
        return WeightingOutput(weights=None, direction=direction, extra_loss=jnp.zeros((), jacobian.dtype)), state

    return WeightingTransform(stateless_init, update, JACOBIAN, rep_level_ok=True)


# ----------------------------------------------------------------------------- IMTL


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
    n = _norms(g)
    valid = n > 10.0 * jnp.finfo(g.dtype).eps * jnp.max(n)
    proj_rows = jnp.concatenate([_safe_div(g, n[None, :]).T, -jnp.ones((k, 1), g.dtype)], axis=1)  # (G a)_k / n_k - t
    zero_rows = jnp.concatenate([jnp.eye(k, dtype=g.dtype), jnp.zeros((k, 1), g.dtype)], axis=1)  # a_k
    rows = jnp.where(valid[:, None], proj_rows, zero_rows)
    system = jnp.concatenate([rows, jnp.concatenate([jnp.ones((1, k), g.dtype), jnp.zeros((1, 1), g.dtype)], axis=1)])
    rhs = jnp.zeros((k + 1,), g.dtype).at[k].set(1.0)
    sol = jnp.linalg.pinv(system) @ rhs
    return sol[:k]


def imtl_g() -> WeightingTransform:
    """IMTL-G, the gradient-balance half of IMTL (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021).

    The closed form of Eq. 5 (see :func:`imtl_g_weights`): the combined gradient ``g = sum_k alpha_k g_k``
    with ``sum_k alpha_k = 1`` has the same projection ``g . u_k`` on every unit task gradient. The paper
    computes it on the gradients of the shared representation (``rep_level_ok=True``); on the
    parameter Jacobian it is the same formula.
    """

    def update(losses, state, *, gramian=None, jacobian=None, **_):
        gram = require_gramian("imtl_g", gramian, jacobian)
        return weights_output(imtl_g_weights(gram)), state

    return WeightingTransform(stateless_init, update, GRAMIAN, rep_level_ok=True)


def imtl(init_scale: float = 0.0) -> WeightingTransform:
    """IMTL, the hybrid of IMTL-L and IMTL-G (Liu et al., ICLR 2021, Algorithm 1).

    Learnable scales ``s_k`` (``init_params``, start ``init_scale = 0``) turn the losses into
    ``e^{s_k} L_k - s_k`` (IMTL-L); IMTL-G then combines the scaled gradients ``e^{s_k} g_k``:
    ``alpha = IMTL-G(diag(e^s) G diag(e^s))`` and the shared update is ``sum_k alpha_k e^{s_k} g_k``, so the
    weights are ``alpha_k e^{s_k}``. ``s`` itself follows the IMTL-L loss: ``extra_loss`` is built so
    that ``d/ds_k [sum_j w_j L_j + extra_loss] = e^{s_k} L_k - 1`` (``alpha`` held constant); the value
    of ``extra_loss`` is ``-sum_k s_k``.
    """

    def init_params(num_tasks: int):
        return {"s": jnp.full((num_tasks,), init_scale, default_float_dtype())}

    def update(losses, state, *, gramian=None, jacobian=None, params=None, **_):
        if params is None:
            raise ValueError("imtl needs its params (init_params) in the train state")
        gram = require_gramian("imtl", gramian, jacobian)
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


# ----------------------------------------------------------------------------- CAGrad


def _cagrad_inner(gram: Array, c: float, num_iters: int, num_steps: int = 20) -> Array:
    """``argmin_{w in simplex} w^T G b + c |g_0| sqrt(w^T G w)``, ``b = 1/K``, for a normalised ``G``.

    A safeguarded projected Newton method from ``w = b``: each of the ``num_iters`` iterations
    evaluates ``2 * num_steps`` candidate points at once, ``P(w - 2^-j s grad)`` (projected gradient,
    ``s = 1 / max|grad|``) and ``P(w + 2^-j delta)`` (``delta``: the Newton step within the simplex's
    affine hull on the current support, from the KKT system with a tiny ridge; ``P``: projection on
    the simplex), ``j < num_steps``, and moves to the best one if it lowers the objective. So the
    objective never increases, the gradient candidates guarantee progress and the Newton ones give
    fast local convergence once the support is found.
    """
    k = gram.shape[0]
    dtype = gram.dtype
    b = jnp.full((k,), 1.0 / k, dtype)
    a = gram @ b
    coef = c * jnp.sqrt(jnp.maximum(jnp.mean(gram), 0.0))
    steps = 2.0 ** -jnp.arange(num_steps, dtype=dtype)
    eye = jnp.eye(k, dtype=dtype)
    ridge = 1e3 * jnp.finfo(dtype).eps
    smooth = 1e-20  # keeps sqrt differentiable at g_w = 0 (the official code adds 1e-8 to the raw w^T G w)

    def objective(w):
        return w @ a + coef * jnp.sqrt(jnp.maximum(w @ gram @ w, 0.0) + smooth)

    def body(_, w):
        gw = gram @ w
        q = jnp.maximum(w @ gw, 0.0) + smooth
        root = jnp.sqrt(q)
        grad = a + coef * gw / root
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
        cands = jax.vmap(lambda m: project_simplex(w + m))(moves)
        vals = jax.vmap(objective)(cands)
        best = jnp.argmin(vals)
        return jnp.where(vals[best] < objective(w), cands[best], w)

    return jax.lax.fori_loop(0, num_iters, body, b)


CAGRAD_RESCALES = (0, 1, 2)


def cagrad(c: float = 0.5, rescale: int = 1, num_iters: int = 30) -> WeightingTransform:
    """CAGrad, "Conflict-Averse Gradient Descent" (Liu et al., NeurIPS 2021), Eq. 7 / Algorithm 1.

    With the *mean* gradient ``g_0 = (1/K) sum_k g_k`` (as the paper and its code), solve
    ``min_{w in simplex} g_w . g_0 + sqrt(phi) |g_w|``, ``phi = c^2 |g_0|^2``, ``g_w = sum_k w_k g_k``, and move
    along ``d = g_0 + sqrt(phi) / |g_w| g_w``; ``rescale`` 0: ``d``, 1: ``d / (1 + c^2)``, 2: ``d / (1 + c)``.
    ``c = 0`` gives the mean gradient. The inner problem (the official code uses SciPy's SLSQP) is
    solved in-graph on ``G`` divided by its largest diagonal entry (same minimiser) by a safeguarded
    projected Newton method, ``num_iters = 30`` iterations from ``w = 1/K``, each trying 20 projected
    gradient and 20 projected Newton step sizes (:func:`_cagrad_inner`; it matches SLSQP's optimum
    to ~1e-9 relative within 20 iterations on random and ill-conditioned float64 tests).
    """
    if rescale not in CAGRAD_RESCALES:
        raise ValueError(f"rescale must be one of {CAGRAD_RESCALES}, got {rescale!r}")
    if c < 0:
        raise ValueError(f"c must be >= 0, got {c}")

    def update(losses, state, *, gramian=None, jacobian=None, **_):
        gram = require_gramian("cagrad", gramian, jacobian)
        k = gram.shape[0]
        scale = jnp.max(jnp.diagonal(gram))
        normed = gram / jnp.where(scale > 0, scale, 1.0)
        w = _cagrad_inner(normed, c, num_iters)
        g0_norm = jnp.sqrt(jnp.maximum(jnp.mean(gram), 0.0))
        gw_norm = jnp.sqrt(jnp.maximum(w @ gram @ w, 0.0))
        lam = _safe_div(c * g0_norm, gw_norm)
        weights = jnp.full((k,), 1.0 / k, gram.dtype) + lam * w
        if rescale == 1:
            weights = weights / (1.0 + c**2)
        elif rescale == 2:
            weights = weights / (1.0 + c)
        return weights_output(weights), state

    return WeightingTransform(stateless_init, update, GRAMIAN, rep_level_ok=False)


# ----------------------------------------------------------------------------- Nash-MTL


class NashState(NamedTuple):
    alpha: Array  # [K] last solution of G alpha = 1 / alpha (the weights before clipping)
    alpha_normalized: Array  # [K] the same for G / |G|_F (warm start of the solver)
    count: Array  # int32: update calls so far


NASH_RIDGE = 1e-6  # added to the normalised Gramian's diagonal: bounds alpha where G is singular


def nash_solve(gram_normalized: Array, alpha0: Array, num_iters: int) -> Array:
    """``alpha > 0`` with ``(G + ridge I) alpha = 1 / alpha`` by damped Newton on a self-concordant function.

    The equation is the stationarity condition of the strictly convex
    ``f(alpha) = 1/2 alpha^T G alpha - sum_k log alpha_k`` (Hessian ``G + diag(1/alpha^2)``). Each of the
    ``num_iters`` iterations takes the Newton step ``delta`` scaled by ``1 / (1 + lambda)`` (``lambda``: the
    Newton decrement), or the full step once ``lambda < 1/4``; both stay in ``alpha > 0`` (Nesterov's
    damped Newton method), so no line search is needed.
    """
    k = gram_normalized.shape[0]
    h0 = gram_normalized + NASH_RIDGE * jnp.eye(k, dtype=gram_normalized.dtype)

    def body(_, a):
        grad = h0 @ a - 1.0 / a
        hess = h0 + jnp.diag(1.0 / a**2)
        delta = -jnp.linalg.solve(hess, grad)
        lam = jnp.sqrt(jnp.maximum(-grad @ delta, 0.0))
        new = a + jnp.where(lam < 0.25, 1.0, 1.0 / (1.0 + lam)) * delta
        ok = jnp.all(jnp.isfinite(new)) & jnp.all(new > 0)
        return jnp.where(ok, new, a)

    return jax.lax.fori_loop(0, num_iters, body, alpha0)


def nash_mtl(max_norm: float = 1.0, optim_niter: int = 20, update_weights_every: int = 1) -> WeightingTransform:
    """Nash-MTL, "Multi-Task Learning as a Bargaining Game" (Navon et al., ICML 2022).

    The Nash bargaining solution ``d = sum_k alpha_k g_k`` with ``G alpha = 1 / alpha`` elementwise
    (``G = J J^T``, the paper's ``G^T G``; Eq. 4-5: ``g_k . d = 1 / alpha_k``). As in the official code
    the equation is solved for the Gramian normalised by its Frobenius norm and mapped back
    (``alpha = alpha' / sqrt(|G|_F)``, so ``alpha`` solves the raw equation and ``|d|^2 = K``), warm-started
    from the previous solution. The official code runs up to ``optim_niter = 20`` CCP iterations of
    a cvxpy/ECOS problem; here ``optim_niter`` damped-Newton iterations (:func:`nash_solve`), which
    converge quadratically, with a ``1e-6`` ridge on the normalised Gramian so that a zero or
    duplicated gradient keeps ``alpha`` finite. ``alpha`` is recomputed every ``update_weights_every``
    calls (reused in between) and kept in the state. ``max_norm = 1``: the shared update is scaled to
    norm ``<= max_norm`` (the official ``clip_grad_norm_`` of the shared parameters; 0 disables).
    """
    if int(optim_niter) != optim_niter or optim_niter < 1:
        raise ValueError(f"optim_niter must be a positive integer, got {optim_niter!r}")
    if int(update_weights_every) != update_weights_every or update_weights_every < 1:
        raise ValueError(f"update_weights_every must be a positive integer, got {update_weights_every!r}")

    def init(num_tasks: int) -> NashState:
        ones = jnp.ones((num_tasks,), default_float_dtype())
        return NashState(alpha=ones, alpha_normalized=ones, count=jnp.zeros((), jnp.int32))

    def update(losses, state: NashState, *, gramian=None, jacobian=None, **_):
        gram = require_gramian("nash_mtl", gramian, jacobian)
        dtype = gram.dtype
        fro = jnp.sqrt(jnp.sum(gram**2))
        fro = jnp.where(fro > 0, fro, 1.0)
        alpha_n = nash_solve(gram / fro, state.alpha_normalized.astype(dtype), optim_niter)
        alpha = alpha_n / jnp.sqrt(fro)
        refresh = (state.count % update_weights_every) == 0
        alpha = jnp.where(refresh, alpha, state.alpha.astype(dtype))
        alpha_n = jnp.where(refresh, alpha_n, state.alpha_normalized.astype(dtype))
        weights = alpha
        if max_norm > 0:
            norm = jnp.sqrt(jnp.maximum(alpha @ gram @ alpha, 0.0))
            weights = alpha * jnp.where(norm > max_norm, max_norm / jnp.where(norm > 0, norm, 1.0), 1.0)
        new = NashState(
            alpha=alpha.astype(state.alpha.dtype),
            alpha_normalized=alpha_n.astype(state.alpha_normalized.dtype),
            count=(state.count + 1) % update_weights_every,
        )
        return weights_output(weights), new

    return WeightingTransform(init, update, GRAMIAN, rep_level_ok=False)


# ----------------------------------------------------------------------------- Aligned-MTL

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
    factor = jnp.where(keep, jnp.sqrt(_safe_div(jnp.where(keep, sigma, 0.0), jnp.where(keep, lam, 1.0))), 0.0)
    return (vec * factor) @ vec.T


def aligned_mtl(scale_mode: str = "min") -> WeightingTransform:
    """Aligned-MTL, "Independent Component Alignment for Multi-Task Learning" (Senushkin et al., CVPR 2023).

    The task-gradient matrix is replaced by the closest (Procrustes) matrix with orthogonal,
    equal-norm rows: ``J_hat = B J`` with ``B = sqrt(sigma_min) V Lambda^{-1/2} V^T`` from
    ``G = J J^T = V Lambda V^T`` (Eq. 8-10; :func:`aligned_balance`), whose condition number is 1, scaled
    by the smallest singular value (``scale_mode='min'``). The update sums the aligned gradients with
    unit task weights, ``d = 1^T B J``, so the weights are ``B 1`` (the official code's
    ``weights.sum(-1)``). The paper's Aligned-MTL-UB runs it on the shared representation
    (``rep_level_ok=True``).
    """
    if scale_mode not in ALIGNED_SCALE_MODES:
        raise ValueError(f"unknown Aligned-MTL scale_mode {scale_mode!r}; valid: {', '.join(ALIGNED_SCALE_MODES)}")

    def update(losses, state, *, gramian=None, jacobian=None, **_):
        gram = require_gramian("aligned_mtl", gramian, jacobian)
        return weights_output(jnp.sum(aligned_balance(gram, scale_mode), axis=1)), state

    return WeightingTransform(stateless_init, update, GRAMIAN, rep_level_ok=True)


# ----------------------------------------------------------------------------- ConFIG


def config() -> WeightingTransform:
    """ConFIG, "Conflict-Free Inverse Gradients" (Liu, Chu & Thuerey, ICLR 2025; arXiv 2024), Eq. 5.

    ``g_u = U([U(g_1), ..., U(g_K)]^{+T} 1_K)`` (``U``: normalisation to unit length), the direction with
    equal positive projections on every unit task gradient (the minimum-norm solution of
    ``u_k . v = 1``, found from the cosine matrix ``C = D^-1 G D^-1``: ``v = sum_k beta_k u_k``,
    ``beta = C^+ 1``, an ``eigh`` pseudo-inverse), and the update ``d = (sum_k g_k . g_u) g_u``
    (the length model "sum of projections"). A zero task gradient drops out; identical ones count once.
    """

    def update(losses, state, *, gramian=None, jacobian=None, **_):
        gram = require_gramian("config", gramian, jacobian)
        k = gram.shape[0]
        n = _norms(gram)
        inv = _safe_div(jnp.ones_like(n), n)
        cos = gram * inv[:, None] * inv[None, :]
        beta = _pinv_psd(cos) @ jnp.ones((k,), gram.dtype)
        coeff = beta * inv  # v = sum_k coeff_k g_k
        v2 = coeff @ gram @ coeff
        projections = jnp.sum(gram @ coeff)  # sum_k g_k . v
        return weights_output(coeff * _safe_div(projections, v2)), state

    return WeightingTransform(stateless_init, update, GRAMIAN, rep_level_ok=False)


REGISTRY: dict = {
    "pcgrad": pcgrad,
    "gradvac": gradvac,
    "graddrop": graddrop,
    "imtl_g": imtl_g,
    "imtl": imtl,
    "cagrad": cagrad,
    "nash_mtl": nash_mtl,
    "aligned_mtl": aligned_mtl,
    "config": config,
}

__all__ = [
    "ALIGNED_SCALE_MODES",
    "CAGRAD_RESCALES",
    "GRADVAC_GRANULARITIES",
    "GradVacState",
    "NashState",
    "REGISTRY",
    "aligned_balance",
    "aligned_mtl",
    "cagrad",
    "config",
    "gradvac",
    "gradvac_groups",
    "graddrop",
    "imtl",
    "imtl_g",
    "imtl_g_weights",
    "nash_mtl",
    "nash_solve",
    "pcgrad",
    "project_simplex",
]
