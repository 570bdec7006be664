"""Bilevel schemes: task weights learnt from upper-level (validation) losses after a look-ahead.

Lower level: the model params ``theta`` minimise ``f(w, theta) = sum_k w_k L_k^train(theta)``.
Upper level: the weights are chosen so that the model does well on a second ("meta") batch,
``L_j^val``. Each scheme declares a :class:`~jmtl.weighting.base.Lookahead`; the train step computes
what it asks for (exact one-step hypergradients, or FORUM's value-function quantities) and passes
them to ``update`` (see ``Lookahead`` for the definitions and why no Hessian is needed). The meta
batch comes from the split ``Lookahead.meta_split`` names unless the config's
``weighting.meta_split`` overrides it.

Differences from the reference implementations, all deliberate:

* the hypergradient through the virtual step is exact (a forward-mode product), where Auto-Lambda
  takes a central finite difference of it;
* the virtual step is plain SGD (Auto-Lambda's also adds the model optimizer's momentum and weight
  decay);
* MOML's model update uses the training batch only (the authors' code concatenates the lower- and
  upper-level batches for it). FORUM's update does use both, as its direction combines the lower-level
  gradient with the upper-level ones.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from optax.projections import projection_simplex

from jmtl.weighting.base import (
    BILEVEL,
    BilevelInputs,
    Layout,
    Lookahead,
    WeightingOutput,
    WeightingTransform,
    weights_output,
)
from jmtl.weighting.registry import register
from jmtl.weighting.solvers import min_norm_weights

Array = jax.Array


def _check_positive(value, name: str) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be positive, got {value!r}")


def _softmax_jacobian(p: Array) -> Array:
    """``d softmax(a) / d a = diag(p) - p p^T`` (symmetric) at ``p = softmax(a)``."""
    return jnp.diag(p) - jnp.outer(p, p)


def _require(value: Optional[Array], what: str, name: str) -> Array:
    if value is None:
        raise ValueError(f"{name} needs {what} from the train step (it is a bilevel scheme: requires='bilevel')")
    return value


# ----------------------------------------------------------------------------- Auto-Lambda


class AutoLambdaState(NamedTuple):
    weights: Array  # [K] lambda, unconstrained
    opt_state: Any  # Adam state of lambda


@register("auto_lambda")
def auto_lambda(
    init_weight: float = 0.1, meta_lr: float = 1e-4, lookahead_lr: Optional[float] = None
) -> WeightingTransform:
    """Auto-Lambda (Liu, James, Davison & Johns, TMLR 2022).

    With every task primary (multi-task learning), one step is

        theta'  = theta - alpha * grad_theta sum_k lambda_k L_k^train(theta)     (virtual step)
        lambda <- Adam(lambda, grad_lambda sum_j L_j^val(theta'))                 (meta update)
        theta  <- optimizer(theta, grad_theta sum_k lambda_k L_k^train(theta))    (with the new lambda)

    ``grad_lambda_k sum_j L_j^val(theta') = -alpha <grad sum_j L_j^val(theta'), grad L_k^train(theta)>``
    (exact here, a finite difference in the paper's code). lambda starts at ``init_weight`` for every
    task and is not constrained; Adam with ``meta_lr`` (1e-4: the paper's NYUv2 setting). The
    upper-level batch is a second, independently shuffled *training* batch, as in the authors' code.

    Args:
      init_weight: the initial ``lambda_k`` of every task (default 0.1, the paper's).
      meta_lr: Adam's learning rate on ``lambda`` (default 1e-4, the paper's NYUv2 setting).
      lookahead_lr: ``alpha`` of the virtual step; default ``None`` = the model optimizer's learning
        rate (the authors use the current learning rate of the model's SGD).
    """
    _check_positive(meta_lr, "auto_lambda meta_lr")
    _check_positive(lookahead_lr, "auto_lambda lookahead_lr")
    meta_opt = optax.adam(meta_lr)

    def init(num_tasks: int, *, layout: Optional[Layout] = None) -> AutoLambdaState:
        w = jnp.full((num_tasks,), init_weight, jnp.float32)
        return AutoLambdaState(w, meta_opt.init(w))

    def update(inputs: BilevelInputs, state: AutoLambdaState) -> tuple[WeightingOutput, AutoLambdaState]:
        losses = inputs.losses
        hypergradient = inputs.hypergradient
        h = _require(hypergradient, "the hypergradient", "auto_lambda")
        grad = jnp.sum(h, axis=0).astype(state.weights.dtype)  # of sum_j L_j^val
        updates, opt_state = meta_opt.update(grad, state.opt_state, state.weights)
        w = optax.apply_updates(state.weights, updates)
        return weights_output(w.astype(losses.dtype)), AutoLambdaState(w, opt_state)

    lookahead = Lookahead(weights=lambda s: s.weights, lr=lookahead_lr, per_task=False, meta_split="train")
    return WeightingTransform(init, update, BILEVEL, rep_level_ok=False, lookahead=lookahead)


# ----------------------------------------------------------------------------- MOML


class SoftmaxWeightsState(NamedTuple):
    logits: Array  # [K] alpha; task weights softmax(alpha)
    opt_state: Any  # Adam state of alpha


def _softmax_init(meta_opt):
    def init(num_tasks: int, *, layout: Optional[Layout] = None) -> SoftmaxWeightsState:
        a = jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)
        return SoftmaxWeightsState(a, meta_opt.init(a))

    return init


@register("moml")
def moml(
    meta_lr: float = 1e-3, lookahead_lr: float = 0.1, max_iter: int = 250, tol: float = 1e-5
) -> WeightingTransform:
    """MOML, multi-objective meta learning (Ye, Lin, Yue, Guo, Xiao & Zhang, NeurIPS 2021).

    Task weights ``w = softmax(alpha)``. The upper level is multi-objective (every validation loss):

        theta' = theta - eta * grad_theta sum_k w_k L_k^train(theta)
        h_j    = grad_alpha L_j^val(theta') = J_softmax(alpha)^T d L_j^val(theta') / d w     (j = 1..K)
        s      = argmin_{s in simplex} |sum_j s_j h_j|^2                      (MGDA, exact min-norm solver)
        alpha <- Adam(alpha, sum_j s_j h_j)
        theta <- optimizer(theta, grad_theta sum_k softmax(alpha)_k L_k^train(theta))

    Defaults as in the FORUM authors' LibMTL version: eta = 0.1, Adam 1e-3 on alpha, alpha_k = 1/K
    at the start, no normalisation of the ``h_j``; the upper-level batch comes from the validation
    split (MOML holds out part of the training data for it).

    Args:
      meta_lr: Adam's learning rate on ``alpha`` (default 1e-3).
      lookahead_lr: ``eta`` of the virtual step (default 0.1).
      max_iter: cap on the min-norm solver's iterations (default 250).
      tol: its relative KKT tolerance (default 1e-5).
    """
    _check_positive(meta_lr, "moml meta_lr")
    _check_positive(lookahead_lr, "moml lookahead_lr")
    meta_opt = optax.adam(meta_lr)

    def update(inputs: BilevelInputs, state: SoftmaxWeightsState):
        losses = inputs.losses
        hypergradient = inputs.hypergradient
        h = _require(hypergradient, "the per-task hypergradients", "moml")  # [K_val, K]
        p = jax.nn.softmax(state.logits)
        h_alpha = h.astype(p.dtype) @ _softmax_jacobian(p)  # rows: grad_alpha L_j^val
        s = min_norm_weights(h_alpha @ h_alpha.T, max_iter=max_iter, tol=tol)
        updates, opt_state = meta_opt.update(s @ h_alpha, state.opt_state, state.logits)
        logits = optax.apply_updates(state.logits, updates)
        w = jax.nn.softmax(logits)
        return weights_output(w.astype(losses.dtype)), SoftmaxWeightsState(logits, opt_state)

    lookahead = Lookahead(
        weights=lambda s: jax.nn.softmax(s.logits), lr=lookahead_lr, per_task=True, meta_split="validation"
    )
    return WeightingTransform(_softmax_init(meta_opt), update, BILEVEL, rep_level_ok=False, lookahead=lookahead)


# ----------------------------------------------------------------------------- FORUM


class FORUMState(NamedTuple):
    logits: Array  # [K] alpha; lower-level weights softmax(alpha)
    opt_state: Any  # Adam state of alpha
    lam_avg: Array  # [K] running average of the multipliers (starts at 0)
    count: Array  # int32: update calls so far (epochs = count // steps_per_epoch)


def forum_dual(gram: Array, grad_alpha_q: Array, rho: float, *, num_iter: int = 200, tol: float = 1e-9) -> Array:
    """The multipliers ``lambda`` of FORUM's direction-finding problem.

    ``gram``: ``[K+1, K+1]`` Gram matrix of the unit upper-level gradients ``g_1..g_K`` and
    ``grad_theta q``; ``grad_alpha_q``: ``[K]``. With ``|grad q|^2 = gram[K, K] + |grad_alpha q|^2``,

        min_{lambda in simplex}  |sum_k lambda_k g_k + nu grad q|^2 - nu rho |grad q|^2,
        nu(lambda) = max(sum_k lambda_k pi_k, 0),   pi_k = rho - <g_k, grad q> / |grad q|^2,

    (the constraint ``nu >= pi^T lambda`` always binds: the unconstrained minimiser in ``nu`` is
    ``rho / 2 - ...``). The objective is convex in ``lambda`` (a partial minimisation of a jointly
    convex function over a convex set); solved by projected gradient descent on the simplex with
    step ``1 / L`` (``L``: the gradient's Lipschitz constant along the simplex), until a step moves
    ``lambda`` by at most ``tol`` (max-norm; the projected-gradient optimality measure) or after
    ``num_iter`` steps.

    Args:
      gram: ``[K+1, K+1]`` Gram matrix (see above).
      grad_alpha_q: ``[K]`` gradient of ``q`` w.r.t. the weights' logits.
      rho: FORUM's ``rho``.
      num_iter: iteration cap (default 200).
      tol: stopping tolerance on the step (default 1e-9).
    """
    k = gram.shape[0] - 1
    gg, gq = gram[:k, :k], gram[:k, k]
    qq = gram[k, k] + jnp.sum(grad_alpha_q**2)
    qq_safe = jnp.maximum(qq, 1e-20)
    pi = rho - gq / qq_safe

    def objective(lam):
        nu = jnp.maximum(lam @ pi, 0.0)
        return lam @ gg @ lam + 2 * nu * (lam @ gq) + nu**2 * qq - nu * rho * qq

    grad_fn = jax.grad(objective)
    # The step 1 / L uses the gradient's Lipschitz constant on the simplex: the largest curvature of
    # either quadratic piece (nu = 0: 2 G_gg; nu = pi^T lambda: 2 (G_gg + pi gq^T + gq pi^T + qq pi pi^T))
    # along the simplex's tangent space (directions summing to 0). A bound over all directions
    # (Frobenius norms) counts the curvature along (1, ..., 1), which the projection removes; with
    # aligned unit gradients that bound was ~100x too large and 200 steps left lambda ~1e-4 off, so
    # two compilations of one step (vmapped seeds or not) stopped at different points.
    tangent = jnp.eye(k, dtype=gram.dtype) - 1.0 / k
    piece_nu = 2 * (gg + jnp.outer(pi, gq) + jnp.outer(gq, pi) + qq * jnp.outer(pi, pi))

    # Both pieces in ONE eigvalsh call: two independent batched LAPACK calls (the seeds' vmap batches
    # them) ran concurrently on a 2-core CPU, each blocking one of XLA's two intra-op workers while
    # waiting for its batch's tasks queued on the same pool: a deadlock (School, K = 139, 5 seeds:
    # the step never returned). One call leaves a worker free; the values are the same as two calls'.
    pieces = jnp.stack([tangent @ (2 * gg) @ tangent, tangent @ piece_nu @ tangent])
    curvature = jnp.max(jnp.abs(jnp.linalg.eigvalsh(pieces)))

    bound = 2 * (jnp.linalg.norm(gg) + jnp.sum(pi**2) * qq + 2 * jnp.linalg.norm(pi) * jnp.linalg.norm(gq))
    lip = jnp.maximum(curvature, 1e-6 * bound) + 1e-30

    def cond(carry):
        it, _, change = carry
        return (it < num_iter) & (change > tol)

    def body(carry):
        it, lam, _ = carry
        grad = grad_fn(lam)
        # Only the tangent part moves lambda (the projection absorbs shifts along (1, ..., 1)); dropping
        # the rest keeps lambda - step exact in float32 when the step 1 / L is long.
        new = projection_simplex(lam - (grad - jnp.mean(grad)) / lip)
        # |lam - P(lam - grad / L)| is the projected-gradient optimality measure: 0 at the optimum.
        return it + 1, new, jnp.max(jnp.abs(new - lam))

    init = (jnp.zeros((), jnp.int32), jnp.full((k,), 1.0 / k, gram.dtype), jnp.asarray(jnp.inf, gram.dtype))
    return jax.lax.while_loop(cond, body, init)[1]


@register("forum")
def forum(
    rho: float = 0.1,
    inner_lr: float = 0.1,
    inner_steps: int = 5,
    meta_lr: float = 1e-3,
    steps_per_epoch: int = 1,
    num_iter: int = 200,
) -> WeightingTransform:
    """FORUM (Ye, Lin, Cao, Zhang & Tsang, ECAI 2024): first-order multi-objective bilevel optimisation.

    Variables ``z = (alpha, theta)``; lower level ``f(alpha, theta) = sum_k softmax(alpha)_k L_k^train``;
    upper level the K losses ``F_k = L_k^val``. The bilevel problem becomes the constrained
    multi-objective problem ``min F(z)`` s.t. ``q(z) = f(alpha, theta) - f(alpha, theta_T) <= 0``
    (value-function approach), ``theta_T`` = ``inner_steps`` SGD steps (``inner_lr``) of
    ``f(alpha, .)`` from ``theta``, treated as a constant (first order: no Hessian):

        grad_theta q = grad_theta f(alpha, theta),
        grad_alpha q = J_softmax(alpha)^T (L^train(theta) - L^train(theta_T)),
        g_k = (0, grad_theta F_k / |grad_theta F_k|).

    The multipliers ``lambda`` solve :func:`forum_dual`; their running average
    ``lam_avg <- lam_avg + beta_t (lambda - lam_avg)``, ``beta_t = (t + 1)^(-3/4)`` with ``t`` the
    epoch, gives ``nu = max(pi^T lam_avg, 0)`` and the direction ``d = sum_k lam_avg_k g_k + nu grad q``.
    ``theta`` moves along ``d_theta`` (through the model optimizer: ``weights = nu softmax(alpha)`` on
    the training losses, ``meta_weights = lam_avg_k / |grad F_k|`` on the meta batch's); ``alpha``
    along ``nu grad_alpha q`` with Adam (``meta_lr``). Defaults: the authors' MTL settings (rho 0.1,
    inner lr 0.1, 5 inner steps, Adam 1e-3); their upper-level batch is a second training batch.

    Args:
      rho: ``rho`` of the direction-finding problem (default 0.1).
      inner_lr: step of the inner SGD steps giving ``theta_T`` (default 0.1).
      inner_steps: ``T``, the number of inner SGD steps (default 5).
      meta_lr: Adam's learning rate on ``alpha`` (default 1e-3).
      steps_per_epoch: ``update`` calls per epoch, for ``beta_t``'s epoch count (default 1).
      num_iter: iteration cap of :func:`forum_dual`, which stops earlier once converged (default 200).
    """
    _check_positive(rho, "forum rho")
    _check_positive(inner_lr, "forum inner_lr")
    _check_positive(meta_lr, "forum meta_lr")
    if int(inner_steps) != inner_steps or inner_steps < 1:
        raise ValueError(f"forum inner_steps must be a positive integer, got {inner_steps!r}")
    if int(steps_per_epoch) != steps_per_epoch or steps_per_epoch < 1:
        raise ValueError(f"forum steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
    meta_opt = optax.adam(meta_lr)

    def init(num_tasks: int, *, layout: Optional[Layout] = None) -> FORUMState:
        a = jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)
        return FORUMState(a, meta_opt.init(a), jnp.zeros((num_tasks,), jnp.float32), jnp.zeros((), jnp.int32))

    def update(inputs: BilevelInputs, state: FORUMState):
        losses = inputs.losses
        meta_gram = inputs.meta_gram
        inner_losses = inputs.inner_losses
        gram = _require(meta_gram, "the meta Gramian", "forum").astype(jnp.float32)
        inner = _require(inner_losses, "the inner-loop losses", "forum").astype(jnp.float32)
        k = losses.shape[0]
        p = jax.nn.softmax(state.logits)
        grad_alpha_q = _softmax_jacobian(p) @ (losses.astype(jnp.float32) - inner)
        # Unit upper-level gradients: scale rows/columns 0..K-1 of the Gram matrix.
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gram)[:k], 0.0))
        inv = jnp.where(norms > 0, 1.0 / jnp.maximum(norms, 1e-20), 0.0)
        scale = jnp.concatenate([inv, jnp.ones((1,), gram.dtype)])
        unit_gram = gram * scale[:, None] * scale[None, :]
        # Gram rows K refer to grad_theta f; grad_theta q is the same vector.
        lam = forum_dual(unit_gram, grad_alpha_q, rho, num_iter=num_iter)
        epoch = state.count // steps_per_epoch
        beta = (epoch.astype(jnp.float32) + 1.0) ** -0.75
        lam_avg = state.lam_avg + beta * (lam - state.lam_avg)
        qq = jnp.maximum(unit_gram[k, k] + jnp.sum(grad_alpha_q**2), 1e-20)
        pi = rho - unit_gram[:k, k] / qq
        nu = jnp.maximum(lam_avg @ pi, 0.0)
        updates, opt_state = meta_opt.update(nu * grad_alpha_q, state.opt_state, state.logits)
        logits = optax.apply_updates(state.logits, updates)
        out = WeightingOutput(
            weights=(nu * p).astype(losses.dtype),
            direction=None,
            extra_loss=jnp.zeros((), losses.dtype),
            meta_weights=(lam_avg * inv).astype(losses.dtype),
        )
        return out, FORUMState(logits, opt_state, lam_avg, state.count + 1)

    lookahead = Lookahead(
        weights=lambda s: jax.nn.softmax(s.logits), lr=inner_lr, inner_steps=int(inner_steps), meta_split="train"
    )
    return WeightingTransform(init, update, BILEVEL, rep_level_ok=False, lookahead=lookahead)


__all__ = ["AutoLambdaState", "FORUMState", "SoftmaxWeightsState", "auto_lambda", "forum", "forum_dual", "moml"]
