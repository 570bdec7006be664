"""Schemes that read the shared representation, the task labels and a Bayesian last layer
(``requires='last_layer'``): BayesAgg-MTL.

Such a scheme is not given the ``[K, d]`` Jacobian. The step (:mod:`jmtl.core.bayesagg`) hands
``update`` the representation ``h`` (``[B, D]``, the input of the heads' last affine layer), the
regression targets ``y`` (``[B, K]``) and their label mask (``[B, K]``, 1 = labelled), and the
scheme returns a ``direction`` of ``B * D`` entries: the cotangent of the representation, which the
step runs back through the encoder. The heads themselves get the gradient of the plain sum of the
task losses (as in the official code, ``backward_last_layer``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from jmtl.weighting.base import (
    LAST_LAYER,
    LastLayerInputs,
    Layout,
    WeightingOutput,
    WeightingTransform,
    direction_output,
    safe_div,
)
from jmtl.weighting.registry import register

Array = jax.Array

# The official code clamps each task's gradient variance at 1e-8 before the power.
VARIANCE_FLOOR = 1e-8
_FIX = (
    "use jmtl.mtl_value_and_grad(loss_fn, 'bayesagg_mtl', encode=..., heads=..., targets=...) and init its "
    "state with vg.init(params, None, *batch)"
)


class BayesAggState(NamedTuple):
    """The sufficient statistics of the last-layer posterior from the batches seen so far.

    gram: ``[K, D + 1, D + 1]``: ``sum_i m_ik h~_i h~_i^T`` (``h~ = [h, 1]``), decayed by ``decay``
      each step.
    moment: ``[K, D + 1]``: ``sum_i m_ik y_ik h~_i``, decayed alike.
    """

    gram: Array
    moment: Array


def representation_width(layout: Optional[Layout]) -> Optional[int]:
    """``D`` from a ``(('representation', (B, *feature_shape)),)`` layout, else None."""
    if layout and len(layout) == 1 and layout[0][0] == "representation" and len(layout[0][1]) >= 2:
        d = 1
        for s in layout[0][1][1:]:
            d *= int(s)
        return d
    return None


def posterior(gram: Array, moment: Array, *, gamma: float, obs_noise: float) -> tuple[Array, Array]:
    """Bayesian linear regression of each task's targets on ``h~ = [h, 1]``, prior ``N(0, gamma I)``
    and Gaussian noise of variance ``obs_noise``, from the sufficient statistics:

        Lambda_k = I / gamma + G_k / obs_noise,   Sigma_k = Lambda_k^-1,   mu_k = Sigma_k r_k / obs_noise.

    Args:
      gram: ``[K, D', D']`` ``G_k = sum_i m_ik h~_i h~_i^T``.
      moment: ``[K, D']`` ``r_k = sum_i m_ik y_ik h~_i``.
      gamma: the prior variance of every last-layer weight and bias.
      obs_noise: the observation noise variance.

    Returns:
      ``(mu [K, D'], Sigma [K, D', D'])``.
    """
    eye = jnp.eye(gram.shape[-1], dtype=gram.dtype)
    precision = eye / gamma + gram / obs_noise
    chol = jnp.linalg.cholesky(precision)
    cov = jax.vmap(lambda c: jax.scipy.linalg.cho_solve((c, True), eye))(chol)
    cov = 0.5 * (cov + jnp.swapaxes(cov, -1, -2))
    mean = jnp.einsum("kij,kj->ki", cov, moment) / obs_noise
    return mean, cov


def gradient_moments(h1: Array, y: Array, mean: Array, cov: Array) -> tuple[Array, Array]:
    """Mean and per-coordinate variance of ``g = d/dh~ (y - w^T h~)^2 = 2 (w^T h~ - y) w`` for
    ``w ~ N(mu, Sigma)``, in closed form (the paper's regression case).

    With ``m = mu^T h~ - y``, ``s = Sigma h~`` and ``v = h~^T Sigma h~``:

        E[g]     = 2 (m mu + s)
        Var[g_j] = 4 (m^2 Sigma_jj + mu_j^2 v + 2 m mu_j s_j + v Sigma_jj + s_j^2)

    (``a = w^T h~ - y`` and ``w_j`` are jointly Gaussian; the linear and the product part of
    ``a w_j`` are uncorrelated and ``Var[u t] = Var u Var t + Cov(u, t)^2`` for centred Gaussians.)

    Args:
      h1: ``[B, D']`` features with the bias column.
      y: ``[B, K]`` targets.
      mean: ``[K, D']`` posterior means.
      cov: ``[K, D', D']`` posterior covariances.

    Returns:
      ``(E[g] [B, K, D'], Var[g] [B, K, D'])``.
    """
    m = jnp.einsum("kd,bd->bk", mean, h1) - y
    s = jnp.einsum("kde,be->bkd", cov, h1)
    v = jnp.einsum("bkd,bd->bk", s, h1)
    diag = jnp.diagonal(cov, axis1=-2, axis2=-1)[None]  # [1, K, D']
    mu = mean[None]
    m_, v_ = m[..., None], v[..., None]
    expected = 2.0 * (m_ * mu + s)
    variance = 4.0 * (m_**2 * diag + mu**2 * v_ + 2.0 * m_ * mu * s + v_ * diag + s**2)
    return expected, variance


def aggregate_gradients(expected: Array, variance: Array, mask: Array, *, sqrt_power: float) -> Array:
    """The inverse-variance combination of the task gradients per example and coordinate (the
    official code's ``GaussianAgg``):

        dL/dh_bd = sum_k lambda_bkd G_bkd / sum_k lambda_bkd,
        G_bkd = E[g_bkd] / n_k,   lambda_bkd = m_bk / (max(Var[g_bkd], 1e-8) / n_k^2) ** sqrt_power,

    where ``n_k`` is the number of examples labelled for task k (``B`` without a mask): task k's
    loss is the mean over them, so ``G_bk`` is the expected gradient of ``L_k`` w.r.t. ``h_b``.
    Without a mask every ``n_k = B`` and this is the official ``sum / B`` form exactly. An example
    with no labelled task gets 0.

    Args:
      expected: ``[B, K, D]`` ``E[g]`` of each example's squared error.
      variance: ``[B, K, D]`` ``Var[g]``.
      mask: ``[B, K]`` 1 where example b has task k's label.
      sqrt_power: the power on the variance (``sqrt_power`` in the official code).
    """
    inv_n = 1.0 / jnp.maximum(jnp.sum(mask, axis=0), 1.0)[None, :, None]  # [1, K, 1]
    precision = mask[..., None] / (jnp.maximum(variance, VARIANCE_FLOOR) * inv_n**2) ** sqrt_power
    total = jnp.sum(precision, axis=1)
    num = jnp.sum(precision * expected * inv_n, axis=1)
    return safe_div(num, total)


@register("bayesagg_mtl")
def bayesagg_mtl(
    gamma: float = 0.005,
    obs_noise: float = 1.0,
    sqrt_power: float = 0.3,
    decay: float = 0.9,
) -> WeightingTransform:
    """BayesAgg-MTL, "Bayesian Uncertainty for Gradient Aggregation in Multi-Task Learning" (Achituve et al., ICML 2024)

    Regression tasks (closed-form moments).

    Each task's last layer ``w~_k = [w_k, b_k]`` gets a Gaussian posterior (Bayesian linear
    regression of the task's targets on ``h~ = [h, 1]``, :func:`posterior`); the gradient of the
    example's squared error w.r.t. ``h`` is then a random vector whose mean and diagonal variance
    are closed-form (:func:`gradient_moments`), and the representation's cotangent combines the
    tasks per coordinate with inverse-variance weights (:func:`aggregate_gradients`). Features and
    labels are constants (no gradient through the posterior), as in the official code.

    Defaults from the official code (ssi-research/BayesAgg_MTL, ``experiments/utils.py``):
    ``gamma`` 0.005, ``sqrt_power`` 0.3 (regression), ``obs_noise`` 1.

    How the posterior differs from the paper's: the official training loop forms a "full data"
    posterior once per epoch from the features the model produced for the whole training set in the
    previous epoch, and uses it as the prior of each batch's posterior (so the batch's examples count
    twice). Here the state keeps the sufficient statistics of the batches seen so far, each step's
    multiplied by ``decay`` (stale features fade), and the batch's posterior is that of the prior
    ``N(0, gamma I)`` plus the stored statistics plus this batch's: every example seen counts once per
    time it was seen. No pass over the training set, and it works from the first step (the paper
    pre-trains a few epochs with the plain sum first; do that with another scheme and ``init_from``).

    Contract (the built-in trainer checks it; with ``mtl_value_and_grad`` it is the caller's): the
    representation is the input of every head's *last affine layer* (``head_k(h) = w_k . h + b_k``,
    one output per task) and each task's loss is its batch-mean squared error. Classification tasks (the paper's Monte-Carlo moments under a Laplace posterior)
    are not implemented: integer targets are refused.

    Args:
      gamma: prior variance of each last-layer weight and bias (the official ``--gamma``).
      obs_noise: observation noise variance of the regression likelihood.
      sqrt_power: the power applied to each gradient variance before inverting it (0: the plain mean
        over the labelled tasks; 1: exact inverse-variance weights).
      decay: factor on the stored statistics each step (0: only the current batch; 1: never forget).
    """
    if not (gamma > 0 and obs_noise > 0 and sqrt_power >= 0 and 0.0 <= decay <= 1.0):
        raise ValueError(
            f"bayesagg_mtl: need gamma > 0, obs_noise > 0, sqrt_power >= 0 and 0 <= decay <= 1; got gamma={gamma}, "
            f"obs_noise={obs_noise}, sqrt_power={sqrt_power}, decay={decay}"
        )

    def init(num_tasks: int, *, layout: Optional[Layout] = None) -> BayesAggState:
        # Sized by the representation's width; without it (the generic init, aggregate, as_optax) the
        # state is empty and update says how to get a sized one.
        d = representation_width(layout)
        d1 = 0 if d is None else d + 1
        return BayesAggState(jnp.zeros((num_tasks, d1, d1)), jnp.zeros((num_tasks, d1)))

    def update(inputs: LastLayerInputs, state: BayesAggState) -> tuple[WeightingOutput, BayesAggState]:
        losses, representation, targets, target_mask = (
            inputs.losses,
            inputs.representation,
            inputs.targets,
            inputs.target_mask,
        )
        if representation is None or targets is None:
            raise ValueError(
                "bayesagg_mtl needs the shared representation and the task labels (requires='last_layer'), "
                f"not a Jacobian: {_FIX}"
            )
        if jnp.issubdtype(targets.dtype, jnp.integer) or jnp.issubdtype(targets.dtype, jnp.bool_):
            raise ValueError(
                f"bayesagg_mtl implements regression tasks only (closed-form moments); got {targets.dtype} targets. "
                "Classification (the paper's Monte-Carlo moments) is not implemented: use another scheme"
            )
        h = jax.lax.stop_gradient(representation.reshape(representation.shape[0], -1))
        b, d = h.shape
        k = losses.shape[0]
        if targets.shape != (b, k):
            raise ValueError(f"bayesagg_mtl: targets must be [batch, K] = {(b, k)}, got {targets.shape}")
        if state.gram.shape != (k, d + 1, d + 1):
            raise ValueError(
                f"bayesagg_mtl: its state is sized for representation width {state.gram.shape[-1] - 1} "
                f"(K={state.gram.shape[0]}), the representation has width {d} (K={k}): {_FIX}"
            )
        dtype = state.gram.dtype
        h1 = jnp.concatenate([h, jnp.ones((b, 1), h.dtype)], axis=1).astype(dtype)
        y = jax.lax.stop_gradient(targets).astype(dtype)
        mask = jnp.ones((b, k), dtype) if target_mask is None else jax.lax.stop_gradient(target_mask).astype(dtype)
        y = jnp.where(mask > 0, y, 0.0)  # placeholders of missing labels never enter a sum
        batch_gram = jnp.einsum("bk,bd,be->kde", mask, h1, h1)
        batch_moment = jnp.einsum("bk,bd->kd", mask * y, h1)
        mean, cov = posterior(state.gram + batch_gram, state.moment + batch_moment, gamma=gamma, obs_noise=obs_noise)
        expected, variance = gradient_moments(h1, y, mean, cov)
        # The gradient w.r.t. h is the first D coordinates of the one w.r.t. h~ = [h, 1].
        direction = aggregate_gradients(expected[..., :d], variance[..., :d], mask, sqrt_power=sqrt_power)
        new_state = BayesAggState(decay * state.gram + batch_gram, decay * state.moment + batch_moment)
        return direction_output(direction.reshape(-1).astype(representation.dtype)), new_state

    return WeightingTransform(init, update, LAST_LAYER, rep_level_ok=False)
