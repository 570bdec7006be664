"""Jacobian schemes: the step computes the full ``[K, d]`` Jacobian ``J`` of the task losses.

Every scheme here has ``requires='jacobian'``: its result is not a function of the Gramian alone,
because it works per coordinate (GradDrop, the trimmed mean), per group of parameters (GradVac), or
keeps per-parameter state (DB-MTL's and MoCo's gradient EMAs, ExcessMTL's squared-gradient sums), or
reads per-sample blocks of the representation rows (NTKMTL-SR, ``jacobian_mode='representation'`` only).

Schemes whose state holds a ``[K, d]`` array size it from ``init(num_tasks, layout=layout)``; with
``layout=None`` they start with a ``[K, 0]`` placeholder that the first ``update`` replaces by zeros
of shape ``[K, d]`` (fine eagerly and for one re-trace under ``jit``, not for a train state built
before the first step). States keep the dtype they were initialised with.
"""

from __future__ import annotations

import functools
import math
import re
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from optax.projections import projection_simplex

from jmtl.weighting.base import (
    EPS,
    JACOBIAN,
    JacobianInputs,
    Layout,
    WeightingOutput,
    WeightingTransform,
    cast_like,
    check_nonneg,
    default_float_dtype,
    direction_output,
    layout_size,
    need_jacobian,
    need_key,
    safe_div,
    stateless_init,
    weights_output,
)
from jmtl.weighting.registry import register

Array = jax.Array

_HIGHEST = jax.lax.Precision.HIGHEST


class DBMTLState(NamedTuple):
    count: Array  # int32: update calls so far
    buffer: Array  # [K, d] EMA of the log-loss gradients ([K, 0] until the first call if d was unknown)


@register("db_mtl")
def db_mtl(beta: float = 0.9, beta_sigma: float = 0.0) -> WeightingTransform:
    """DB-MTL: Dual-Balancing Multi-Task Learning (Lin et al., 2023, arXiv:2308.12029).

    Loss-scale balancing: the gradient of ``log(L_k + 1e-8)``, i.e. ``g_k / (L_k + 1e-8)``.
    Gradient-magnitude balancing (Eq. 5-6): an EMA ``h_k <- beta_t h_k + (1 - beta_t) g_k / L_k`` with
    ``beta_t = beta / t^beta_sigma`` (``h`` starts at 0, no bias correction, as the official code),
    then every ``h_k`` is rescaled to the largest norm: ``d = sum_k (max_j |h_j| / |h_k|) h_k``.
    Defaults ``beta = 0.9``, ``beta_sigma = 0`` (the official ones).

    The state holds the ``[K, d]`` buffer, so ``init`` needs ``d``: pass ``layout=`` (the protocol's
    ``init(num_tasks)`` alone cannot size it). Without it the buffer starts as ``[K, 0]`` and is
    created on the first call, which changes the state's shape once (fine eagerly and for a single
    re-trace under ``jit``, not for a train state built before the first step).
    Defined on the parameter gradients only (``rep_level_ok=False``).

    Args:
      beta: the EMA factor ``beta`` of Eq. 5 (default 0.9, the official).
      beta_sigma: the decay exponent, ``beta_t = beta / t^beta_sigma`` (default 0: constant ``beta``).
    """

    def init(num_tasks: int, *, layout: Optional[Layout] = None) -> DBMTLState:
        d = layout_size(layout) or 0
        return DBMTLState(count=jnp.zeros((), jnp.int32), buffer=jnp.zeros((num_tasks, d), default_float_dtype()))

    def update(inputs: JacobianInputs, state: DBMTLState):
        losses = inputs.losses
        jacobian = inputs.jacobian
        if jacobian is None:
            raise ValueError("db_mtl needs the Jacobian of the task losses")
        k, d = jacobian.shape
        buffer = state.buffer
        if buffer.shape[1] == 0 and d > 0:
            buffer = jnp.zeros((k, d), buffer.dtype)
        elif buffer.shape != (k, d):
            raise ValueError(
                f"db_mtl state is for a [{buffer.shape[0]}, {buffer.shape[1]}] Jacobian, got {jacobian.shape}"
            )
        dtype = jacobian.dtype
        count = state.count + 1
        beta_t = beta / count.astype(dtype) ** beta_sigma
        log_grads = jacobian / (losses.astype(dtype) + EPS)[:, None]
        new_buffer = log_grads + beta_t * (buffer.astype(dtype) - log_grads)
        norms = jnp.linalg.norm(new_buffer, axis=1)
        scale = jnp.max(norms) / (norms + EPS)
        direction = scale @ new_buffer
        new = DBMTLState(count=count, buffer=new_buffer.astype(buffer.dtype))
        return WeightingOutput(weights=None, direction=direction, extra_loss=jnp.zeros((), dtype)), new

    return WeightingTransform(init, update, JACOBIAN, rep_level_ok=False)


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


@register("gradvac")
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

    Args:
      beta: the EMA rate of ``phi_hat`` (default 0.5; the paper tunes it, e.g. 1e-2 for NMT).
      granularity: ``'whole_model'`` (default), ``'all_layer'`` or ``'all_matrix'`` (see above).
    """
    if granularity not in GRADVAC_GRANULARITIES:
        raise ValueError(f"unknown GradVac granularity {granularity!r}; valid: {', '.join(GRADVAC_GRANULARITIES)}")

    def init(num_tasks: int, *, layout: Optional[Layout] = None) -> GradVacState:
        if granularity == "whole_model":
            n = 1
        elif layout is None:
            n = 0  # sized on the first update
        else:
            d = sum(int(math.prod(s)) for _, s in layout)
            n = gradvac_groups(layout, d, granularity)[2]
        return GradVacState(targets=jnp.zeros((n, num_tasks, num_tasks), default_float_dtype()))

    def update(inputs: JacobianInputs, state: GradVacState):
        jacobian = inputs.jacobian
        key = inputs.key
        layout = inputs.layout
        if jacobian is None:
            raise ValueError("gradvac needs the Jacobian of the task losses")
        key = need_key(key, "gradvac")
        k, d = jacobian.shape
        sizes, leaf_group, n = gradvac_groups(layout, d, granularity)
        targets = state.targets
        if targets.shape[0] == 0:
            targets = jnp.zeros((n, k, k), targets.dtype)
        elif targets.shape != (n, k, k):
            raise ValueError(
                f"gradvac state has {targets.shape[0]} groups for {targets.shape[1]} tasks, "
                f"the call has {n} groups for {k} tasks"
            )
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
                phi = jnp.clip(safe_div(jnp.einsum("gk,gk->g", c, grams[:, :, j]), gi * gj), -1.0, 1.0)
                phi_hat = rho[:, j]
                s = jnp.sqrt(jnp.maximum(1.0 - phi**2, 0.0))
                s_hat = jnp.sqrt(jnp.maximum(1.0 - phi_hat**2, 0.0))
                coef = safe_div(gi * (phi_hat * s - phi * s_hat), gj * s_hat)
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

    return WeightingTransform(init, update, JACOBIAN, rep_level_ok=False, needs_key=True)


@register("graddrop")
def graddrop(leak: float = 0.0) -> WeightingTransform:
    """GradDrop, "Just Pick a Sign" (Chen et al., NeurIPS 2020), Algorithm 1 with ``f`` = identity.

    Per coordinate: the sign purity ``P = (1 + sum_k g_k / sum_k |g_k|) / 2`` (Eq. 1), one
    ``U ~ Uniform(0, 1)`` from ``key`` shared by the tasks, the masks
    ``M_k = [P > U] [g_k > 0] + [P < U] [g_k < 0]`` and the update
    ``sum_k (leak + (1 - leak) M_k) g_k``. The paper applies it to the gradients of the shared
    activations (summed over the batch); here it runs on whatever Jacobian the step supplies: the
    shared parameters, or the representation in rep-level mode. Coordinates where every ``g_k`` is 0
    get ``P = 1/2``.

    Args:
      leak: the fraction ``leak`` of every gradient kept whatever the mask, ``sum_k (leak + (1 - leak)
        M_k) g_k`` (default 0, the paper's).
    """
    if not 0.0 <= leak <= 1.0:
        raise ValueError(f"leak must be in [0, 1], got {leak}")

    def update(inputs: JacobianInputs, state):
        jacobian = inputs.jacobian
        key = inputs.key
        if jacobian is None:
            raise ValueError("graddrop needs the Jacobian of the task losses")
        key = need_key(key, "graddrop")
        total = jnp.sum(jacobian, axis=0)
        purity = 0.5 * (1.0 + safe_div(total, jnp.sum(jnp.abs(jacobian), axis=0)))
        u = jax.random.uniform(key, total.shape, jacobian.dtype)
        keep = ((purity > u)[None, :] & (jacobian > 0)) | ((purity < u)[None, :] & (jacobian < 0))
        direction = jnp.sum((leak + (1.0 - leak) * keep.astype(jacobian.dtype)) * jacobian, axis=0)
        return WeightingOutput(weights=None, direction=direction, extra_loss=jnp.zeros((), jacobian.dtype)), state

    return WeightingTransform(stateless_init, update, JACOBIAN, rep_level_ok=True, needs_key=True)


@register("trimmed_mean")
def trimmed_mean(trim: Optional[int] = None) -> WeightingTransform:
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018; torchjd's ``TrimmedMean``).

    For every coordinate ``j`` the values ``J[:, j]`` are sorted and the ``trim`` smallest and ``trim``
    largest are dropped: ``d_j = 1/(K - 2·trim) Σ_{i=trim}^{K-trim-1} sort(J[:, j])_i``.
    ``trim=None`` (default) means 1 per side when ``K ≥ 3`` and 0 (the plain mean) for ``K < 3``; an
    explicit ``trim`` needs ``K ≥ 2·trim + 1``. Not a linear combination of the rows, so it returns a
    ``direction``.

    Args:
      trim: values dropped at each end per coordinate (default ``None``: 1 when ``K >= 3``, else 0).
    """
    if trim is not None and trim < 0:
        raise ValueError(f"trimmed_mean: trim must be non-negative, got {trim}")

    def update(inputs: JacobianInputs, state):
        jacobian = inputs.jacobian
        jac = need_jacobian("trimmed_mean", jacobian)
        k = jac.shape[0]
        t = (1 if k >= 3 else 0) if trim is None else trim
        if k < 2 * t + 1:
            raise ValueError(f"trimmed_mean: trim={t} per side needs at least {2 * t + 1} tasks, got {k}")
        kept = jnp.sort(jac, axis=0)[t : k - t]
        return direction_output(jnp.mean(kept, axis=0)), state

    return WeightingTransform(stateless_init, update, JACOBIAN)


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
    lambd = projection_simplex(state.lambd - gamma / t**gamma_sigma * grad)
    direction = jnp.matmul(lambd, y, precision=_HIGHEST)
    return direction, MoCoState(y, lambd, count)


@register("moco")
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

    Args:
      beta: ``beta`` of the gradient tracking (default 0.5).
      beta_sigma: ``beta_t = beta / t^beta_sigma`` (default 0.5).
      gamma: ``gamma`` of the ``lambda`` step (default 0.1).
      gamma_sigma: ``gamma_t = gamma / t^gamma_sigma`` (default 0.5).
      rho: the ridge ``rho`` on ``Y Y^T`` (default 0).
      normalize_grads: track ``h_k = g_k / (|g_k| + 1e-8) L_k`` instead of ``g_k`` (default ``True``,
        the authors').
    """
    check_nonneg("moco", beta=beta, beta_sigma=beta_sigma, gamma=gamma, gamma_sigma=gamma_sigma, rho=rho)

    def init(num_tasks: int, *, layout: Optional[Layout] = None) -> MoCoState:
        return MoCoState(
            y=_rows_init(num_tasks, layout),
            lambd=jnp.full((num_tasks,), 1.0 / num_tasks, default_float_dtype()),
            count=jnp.zeros((), jnp.int32),
        )

    def update(inputs: JacobianInputs, state):
        losses = inputs.losses
        jacobian = inputs.jacobian
        jac = need_jacobian("moco", jacobian)
        dtype = jac.dtype
        state = state._replace(y=_lazy_rows(state.y, jac, "moco"))
        direction, new_state = _moco_step(
            jac,
            losses.astype(dtype),
            cast_like(state, MoCoState(jac, jac[:, 0], state.count)),
            beta,
            beta_sigma,
            gamma,
            gamma_sigma,
            rho,
            normalize_grads,
        )
        return direction_output(direction), cast_like(new_state, state)

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


@register("excess_mtl")
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

    Args:
      robust_step_size: ``eta_alpha`` of Eq. 9 (default 1e-2, the official).
      eps: added inside AdaGrad's square root, ``sqrt(sum g^2 + eps)`` (default 1e-7).
    """
    if robust_step_size <= 0:
        raise ValueError(f"excess_mtl: robust_step_size must be positive, got {robust_step_size}")
    check_nonneg("excess_mtl", eps=eps)

    def init(num_tasks: int, *, layout: Optional[Layout] = None) -> ExcessMTLState:
        return ExcessMTLState(
            sq_sum=_rows_init(num_tasks, layout),
            log_weights=jnp.zeros((num_tasks,), default_float_dtype()),
            baseline=jnp.zeros((num_tasks,), default_float_dtype()),
            count=jnp.zeros((), jnp.int32),
        )

    def update(inputs: JacobianInputs, state):
        jacobian = inputs.jacobian
        jac = need_jacobian("excess_mtl", jacobian)
        state = state._replace(sq_sum=_lazy_rows(state.sq_sum, jac, "excess_mtl"))
        as_jac = ExcessMTLState(jac, jac[:, 0], jac[:, 0], state.count)
        weights, new_state = _excess_step(jac, cast_like(state, as_jac), robust_step_size, eps)
        return weights_output(weights), cast_like(new_state, state)

    return WeightingTransform(init, update, JACOBIAN, rep_level_ok=False)


def _lazy_rows(buf: Array, jacobian: Array, name: str) -> Array:
    """``buf`` if it already has the Jacobian's shape, zeros of that shape for the ``[K, 0]`` placeholder."""
    if buf.shape == jacobian.shape:
        return buf
    if buf.shape == (jacobian.shape[0], 0):
        return jnp.zeros(jacobian.shape, buf.dtype)
    raise ValueError(f"{name}: state was initialised for shape {buf.shape}, got a Jacobian of shape {jacobian.shape}")


def _rows_init(num_tasks: int, layout: Optional[Layout]) -> Array:
    """A ``[K, d]`` zero buffer for a ``[K, d]`` state array; ``[K, 0]`` (sized on first use) without a layout."""
    return jnp.zeros((num_tasks, layout_size(layout) or 0), default_float_dtype())


@register("ntkmtl_sr")
def ntkmtl_sr(ntk_exp: float = 0.5) -> WeightingTransform:
    """NTKMTL-SR, the shared-representation variant of NTKMTL (Qin et al., NeurIPS 2025; arXiv:2510.18258).

    Task ``k``'s NTK is approximated on the shared representation ``z``: with ``J_k`` the ``[n, dim z]``
    matrix of per-sample gradients ``d l_kn / d z`` (``n`` = the batch), ``lambda_k`` is the largest
    eigenvalue of ``J_k J_k^T``, and the objective is ``sum_k (sum_j lambda_j / lambda_k)^ntk_exp L_k``
    (the official code's commented NTKMTL-SR branch: ``eigvalsh(J J^T)[-1]``, no factor K). Sample
    ``n``'s loss reads only ``z_n``, so ``J_k J_k^T`` is diagonal and ``lambda_k = max_n |d l_kn / d z_n|^2``.
    Those per-sample gradients are the blocks of the representation Jacobian's row ``k`` (the step's row
    is ``d L_k / d z`` with ``L_k`` the batch mean, i.e. ``1/n`` times them; the common ``1/n^2`` cancels in
    the ratio), so it needs ``requires='jacobian'`` with ``jacobian_mode='representation'`` only
    (``rep_level_only``: the step refuses ``'params'``) and reads the batch size from the layout the
    step passes (``('representation', (n, ...))``).

    The returned weights multiply the representation rows (the shared update); the task heads get
    their own unweighted gradients (jmtl's convention for every gradient scheme), where the official
    code also scales head ``k`` by ``lambda'_k``. The official base class clips the shared gradient
    before ``loss.backward()`` (a no-op), so no clip here. The README's default for the SR variant is
    ``n = 4`` in the paper's notation; the code computes over the whole batch, as here. Tasks whose
    loss is normalised by a per-task count (missing labels) scale ``lambda_k`` by that count's inverse
    square.

    Args:
      ntk_exp: exponent on the NTK ratio (default 0.5, the paper's square root).
    """
    if ntk_exp < 0:
        raise ValueError(f"ntkmtl_sr: ntk_exp must be non-negative, got {ntk_exp}")

    def update(inputs: JacobianInputs, state):
        jacobian = inputs.jacobian
        layout = inputs.layout
        jacobian = need_jacobian("ntkmtl_sr", jacobian)
        if layout is None or len(layout) != 1 or layout[0][0] != "representation":
            raise ValueError(
                "ntkmtl_sr needs the per-sample gradients of the shared representation: run it with "
                "jacobian_mode='representation' (the step then passes layout=(('representation', (batch, ...)),))"
            )
        k, d = jacobian.shape
        n = int(layout[0][1][0])
        if n < 1 or d % n:
            raise ValueError(
                f"ntkmtl_sr: representation layout {layout[0][1]} does not divide the {d} Jacobian columns"
            )
        blocks = jacobian.reshape(k, n, d // n)
        lam = jnp.max(jnp.sum(blocks * blocks, axis=2), axis=1)  # [K] largest eigenvalue of the diagonal NTK
        lam = jnp.maximum(lam, jnp.finfo(jacobian.dtype).tiny)
        return weights_output((jnp.sum(lam) / lam) ** ntk_exp), state

    return WeightingTransform(stateless_init, update, JACOBIAN, rep_level_only=True)


__all__ = [
    "DBMTLState",
    "ExcessMTLState",
    "GRADVAC_GRANULARITIES",
    "GradVacState",
    "MoCoState",
    "db_mtl",
    "excess_mtl",
    "graddrop",
    "gradvac",
    "gradvac_groups",
    "moco",
    "ntkmtl_sr",
    "trimmed_mean",
]
