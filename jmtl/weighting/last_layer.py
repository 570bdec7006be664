"""Schemes that read the shared representation, the task labels and a Bayesian last layer
(``requires='last_layer'``): BayesAgg-MTL.

Such a scheme is not given the ``[K, d]`` Jacobian. The step (:mod:`jmtl.core.bayesagg`) hands
``update`` the representation ``h`` (``[B, D]``, the input of the heads' last affine layer), the
regression targets ``y`` (``[B, K]``) and their label mask (``[B, K]``, 1 = labelled), and the
scheme returns a ``direction`` of ``B * D`` entries: the cotangent of the representation, which the
step runs back through the encoder. The heads themselves get the gradient of the plain sum of the
task losses (as in the official code, ``backward_last_layer``).

Classification tasks (softmax ``'classification'``, sigmoid ``'binary'``) also need the kinds and
each head's current last layer: their posterior is a Laplace approximation around it and their
gradient moments are Monte-Carlo estimates (:func:`laplace_posterior`, :func:`sampled_gradient_moments`).
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
# Task kinds (the names of jmtl.tasks' kinds, which this layer does not import).
REGRESSION, CLASSIFICATION, BINARY = "regression", "classification", "binary"
KINDS = (REGRESSION, CLASSIFICATION, BINARY)
_FIX = (
    "use jmtl.mtl_value_and_grad(loss_fn, 'bayesagg_mtl', encode=..., heads=..., targets=...) and init its "
    "state with vg.init(params, None, *batch)"
)


class BayesAggState(NamedTuple):
    """The sufficient statistics of the last-layer posterior from the batches seen so far.

    gram: ``[K, D + 1, D + 1]``: ``sum_i m_ik h~_i h~_i^T`` (``h~ = [h, 1]``), decayed by ``decay``
      each step.
    moment: ``[K, D + 1]``: ``sum_i m_ik y_ik h~_i`` (regression tasks; 0 for the others), decayed
      alike.
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


def aggregate_gradients(expected: Array, variance: Array, mask: Array, *, sqrt_power) -> Array:
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
      sqrt_power: the power on the variance (``sqrt_power`` in the official code): a number, or
        ``[K]`` one per task (the official code's regression and classification powers differ).
    """
    inv_n = 1.0 / jnp.maximum(jnp.sum(mask, axis=0), 1.0)[None, :, None]  # [1, K, 1]
    power = jnp.asarray(sqrt_power, variance.dtype)
    power = power[None, :, None] if power.ndim == 1 else power
    precision = mask[..., None] / (jnp.maximum(variance, VARIANCE_FLOOR) * inv_n**2) ** power
    total = jnp.sum(precision, axis=1)
    num = jnp.sum(precision * expected * inv_n, axis=1)
    return safe_div(num, total)


def laplace_posterior(
    h1: Array,
    labels: Array,
    mask: Array,
    theta: Array,
    *,
    kind: str,
    gamma: float,
    past_gram: Optional[Array] = None,
) -> tuple[Array, Array]:
    """Laplace approximation of a classification head's last-layer posterior around its current
    parameters (the paper's classification case; the official code's ``LastLayerPosteriorTaylorApprox``).

    With ``theta = [W | b]`` (``[C, D']``, row c the weights and bias of logit c), the negative log
    joint ``sum_i m_i l(theta h~_i, y_i) + |theta|^2 / (2 gamma)`` is expanded to second order at
    ``theta`` with the generalised Gauss-Newton curvature:

        Lambda = I / gamma + sum_i m_i H_i (x) h~_i h~_i^T,   H_i = diag(p_i) - p_i p_i^T (softmax)
                                                                    or p_i (1 - p_i)      (sigmoid),
        mean   = theta - Lambda^-1 (sum_i m_i (p_i - e_{y_i}) (x) h~_i + theta / gamma),

    one Newton step; the posterior is ``N(mean, Lambda^-1)``.

    ``past_gram`` (``A = sum_j h~_j h~_j^T`` of earlier batches, decayed) adds their curvature in
    Kronecker-factored form, ``H_bar (x) A`` with ``H_bar`` this batch's mean ``H_i``: the earlier
    examples' likelihood, expanded at the current ``theta`` with zero gradient (the streaming stand-in
    for the official code's full-data prior, whose precision is their exact curvature).

    Args:
      h1: ``[B, D']`` features with the bias column.
      labels: ``[B]`` class indices (``'classification'``) or 0/1 (``'binary'``).
      mask: ``[B]`` 1 where the example is labelled for this task.
      theta: ``[C, D']`` the head's current last layer (``C = 1`` for ``'binary'``).
      kind: ``'classification'`` (softmax) or ``'binary'`` (sigmoid, one logit).
      gamma: the prior variance of every weight and bias.
      past_gram: ``[D', D']`` earlier batches' feature Gram, or None.

    Returns:
      ``(mean [C, D'], chol [C D', C D'])``: the posterior mean and the lower Cholesky factor of its
      precision ``Lambda`` (index ``c * D' + j``).
    """
    c, dp = theta.shape
    logits = h1 @ theta.T  # [B, C]
    if kind == CLASSIFICATION:
        p = jax.nn.softmax(logits, axis=-1)
        resid = p - jax.nn.one_hot(labels, c, dtype=p.dtype)
        curvature = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]
    else:
        p = jax.nn.sigmoid(logits)
        resid = p - labels[:, None]
        curvature = (p * (1.0 - p))[:, :, None]
    resid = resid * mask[:, None]
    gradient = resid.T @ h1 + theta / gamma  # [C, D']
    ggn = jnp.einsum("b,bcx,bd,be->cdxe", mask, curvature, h1, h1).reshape(c * dp, c * dp)
    precision = ggn + jnp.eye(c * dp, dtype=ggn.dtype) / gamma
    if past_gram is not None:
        mean_curvature = jnp.einsum("b,bcx->cx", mask, curvature) / jnp.maximum(jnp.sum(mask), 1.0)
        precision = precision + jnp.kron(mean_curvature, past_gram)
    chol = jnp.linalg.cholesky(precision)
    step = jax.scipy.linalg.cho_solve((chol, True), gradient.reshape(-1))
    return theta - step.reshape(c, dp), chol


def sampled_gradient_moments(
    h1: Array, labels: Array, mean: Array, chol: Array, key: Array, *, kind: str, num_samples: int
) -> tuple[Array, Array]:
    """Monte-Carlo mean and per-coordinate variance of each example's ``g = d l(W h + b, y) / d h``
    for ``[W | b] ~ N(mean, Lambda^-1)`` (the official code's ``ApproxMomentsMultiClass`` /
    ``ApproxMomentsBinaryTasks``): ``g = W^T (softmax(W h + b) - e_y)`` or ``(sigmoid(w . h + b) - y) w``.

    Draws ``theta_s = mean + L^-T eps_s`` (``Lambda = L L^T``, so ``Cov = Lambda^-1``), ``eps_s``
    standard normal; the variance is the draws' (``ddof = 0``, as the official code).

    Args:
      h1: ``[B, D']`` features with the bias column.
      labels: ``[B]`` class indices or 0/1.
      mean: ``[C, D']`` posterior mean.
      chol: ``[C D', C D']`` lower Cholesky factor of the posterior precision.
      key: PRNG key of the draws.
      kind: ``'classification'`` or ``'binary'``.
      num_samples: draws.

    Returns:
      ``(E[g] [B, D], Var[g] [B, D])``.
    """
    c, dp = mean.shape
    eps = jax.random.normal(key, (c * dp, num_samples), mean.dtype)
    draws = jax.scipy.linalg.solve_triangular(chol, eps, lower=True, trans="T")  # L^T x = eps
    theta = mean[None] + draws.T.reshape(num_samples, c, dp)
    w, b = theta[..., :-1], theta[..., -1]
    logits = jnp.einsum("bd,scd->sbc", h1[:, :-1], w) + b[:, None, :]
    if kind == CLASSIFICATION:
        resid = jax.nn.softmax(logits, axis=-1) - jax.nn.one_hot(labels, c, dtype=logits.dtype)[None]
    else:
        resid = jax.nn.sigmoid(logits) - labels[None, :, None]
    g = jnp.einsum("sbc,scd->sbd", resid, w)
    expected = jnp.mean(g, axis=0)
    return expected, jnp.mean(jnp.square(g - expected[None]), axis=0)


@register("bayesagg_mtl")
def bayesagg_mtl(
    gamma: float = 0.005,
    obs_noise: float = 1.0,
    sqrt_power: float = 0.3,
    decay: float = 0.9,
    sqrt_power_cls: float = 0.1,
    num_mc_samples: int = 1024,
) -> WeightingTransform:
    """BayesAgg-MTL, "Bayesian Uncertainty for Gradient Aggregation in Multi-Task Learning" (Achituve et al., ICML 2024)

    Each task's last layer ``w~_k = [w_k, b_k]`` gets a Gaussian posterior; the gradient of the
    example's loss w.r.t. the shared representation ``h`` is then a random vector, and the
    representation's cotangent combines the tasks per example and coordinate with inverse-variance
    weights (:func:`aggregate_gradients`). Features and labels are constants (no gradient through
    the posterior), as in the official code.

    * Regression tasks (squared error): Bayesian linear regression of the targets on ``h~ = [h, 1]``
      (:func:`posterior`) and closed-form moments (:func:`gradient_moments`).
    * Classification tasks (``target_kinds`` ``'classification'``, softmax cross-entropy, or
      ``'binary'``, sigmoid): a Laplace approximation around the head's current last layer
      (:func:`laplace_posterior`) and Monte-Carlo moments from ``num_mc_samples`` draws
      (:func:`sampled_gradient_moments`), the paper's classification case.

    Defaults from the official code (ssi-research/BayesAgg_MTL, ``experiments/utils.py``):
    ``gamma`` 0.005, ``sqrt_power`` 0.3 (regression), ``sqrt_power_cls`` 0.1 (classification),
    1024 Monte-Carlo samples, ``obs_noise`` 1.

    How the posterior differs from the paper's: the official training loop forms a "full data"
    posterior once per epoch from the features the model produced for the whole training set in the
    previous epoch, and uses it as the prior of each batch's posterior (so the batch's examples count
    twice). Here, for regression tasks, the state keeps the sufficient statistics of the batches seen
    so far, each step's multiplied by ``decay`` (stale features fade), and the batch's posterior is
    that of the prior ``N(0, gamma I)`` plus the stored statistics plus this batch's: every example
    seen counts once per time it was seen. A classification task's posterior is the Laplace
    approximation around its current last layer of this batch's likelihood, the prior
    ``N(0, gamma I)`` and the stored batches' likelihood (their feature Gram, decayed alike, times
    this batch's mean output curvature: :func:`laplace_posterior`). No pass over the training set,
    and it works from the first step (the paper pre-trains a few epochs with
    the plain sum first; do that with another scheme and ``init_from``).

    Contract (the built-in trainer checks it; with ``mtl_value_and_grad`` it is the caller's): the
    representation is the input of every head's *last affine layer* (``head_k(h) = W_k h + b_k``);
    a regression task has one output and its loss is its batch-mean squared error; a classification
    task's loss is its batch-mean cross-entropy (softmax over ``C`` logits, or sigmoid of one).

    Args:
      gamma: prior variance of each last-layer weight and bias (the official ``--gamma``).
      obs_noise: observation noise variance of the regression likelihood.
      sqrt_power: the power applied to each regression task's gradient variance before inverting
        it (0: the plain mean over the labelled tasks; 1: exact inverse-variance weights).
      decay: factor on the stored regression statistics each step (0: only the current batch; 1:
        never forget).
      sqrt_power_cls: the same power for classification tasks (the official ``--sqrt-power-cls``).
      num_mc_samples: posterior draws per classification task and step (the official
        ``--num-mc-samples``); the step's key seeds them.
    """
    if not (gamma > 0 and obs_noise > 0 and sqrt_power >= 0 and sqrt_power_cls >= 0 and 0.0 <= decay <= 1.0):
        raise ValueError(
            f"bayesagg_mtl: need gamma > 0, obs_noise > 0, sqrt_power >= 0, sqrt_power_cls >= 0 and 0 <= decay <= 1; "
            f"got gamma={gamma}, obs_noise={obs_noise}, sqrt_power={sqrt_power}, sqrt_power_cls={sqrt_power_cls}, "
            f"decay={decay}"
        )
    if int(num_mc_samples) != num_mc_samples or num_mc_samples < 2:
        raise ValueError(f"bayesagg_mtl: num_mc_samples must be an integer >= 2, got {num_mc_samples!r}")

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
        h = jax.lax.stop_gradient(representation.reshape(representation.shape[0], -1))
        b, d = h.shape
        k = losses.shape[0]
        kinds = _check_kinds(inputs.target_kinds, targets, k)
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
        # Regression tasks: the closed form over all K at once (their moments for classification
        # columns are replaced below). The feature Gram is every task's (a classification task's
        # posterior reads it as earlier batches' curvature); the label moment only regression's.
        is_regression = jnp.asarray([kind == REGRESSION for kind in kinds], dtype)
        batch_gram = jnp.einsum("bk,bd,be->kde", mask, h1, h1)
        batch_moment = jnp.einsum("bk,bd->kd", mask * is_regression[None] * y, h1)
        new_state = BayesAggState(decay * state.gram + batch_gram, decay * state.moment + batch_moment)
        expected = variance = None
        if REGRESSION in kinds:
            mean, cov = posterior(
                state.gram + batch_gram, state.moment + batch_moment, gamma=gamma, obs_noise=obs_noise
            )
            expected, variance = gradient_moments(h1, y, mean, cov)
            # The gradient w.r.t. h is the first D coordinates of the one w.r.t. h~ = [h, 1].
            expected, variance = expected[..., :d], variance[..., :d]
        if any(kind != REGRESSION for kind in kinds):
            expected, variance = _classification_moments(inputs, kinds, h1, y, mask, state.gram, expected, variance)
        powers = jnp.asarray([sqrt_power if kind == REGRESSION else sqrt_power_cls for kind in kinds], dtype)
        direction = aggregate_gradients(expected, variance, mask, sqrt_power=powers)
        return direction_output(direction.reshape(-1).astype(representation.dtype)), new_state

    def _classification_moments(inputs, kinds, h1, y, mask, past_gram, expected, variance):
        if inputs.key is None:
            raise ValueError(
                "bayesagg_mtl draws Monte-Carlo samples for classification tasks and key=None was given: pass a "
                "fresh key every step, e.g. vg(params, state, *args, key=jax.random.fold_in(key, step))"
            )
        layers = inputs.last_layer
        if layers is None or len(layers) != len(kinds):
            raise ValueError(
                "bayesagg_mtl needs each classification head's current last layer: pass last_layer=(params -> "
                "[(kernel [D, C], bias [C]) per task]) to jmtl.mtl_value_and_grad (the trainer passes it itself)"
            )
        d = h1.shape[1] - 1
        means, variances = [], []
        for t, kind in enumerate(kinds):
            if kind == REGRESSION:
                means.append(expected[:, t])
                variances.append(variance[:, t])
                continue
            kernel, bias = (jax.lax.stop_gradient(jnp.asarray(a)) for a in layers[t])
            c = 1 if kind == BINARY else 2
            if kernel.ndim != 2 or kernel.shape[0] != d or bias.shape != kernel.shape[1:] or kernel.shape[1] < c:
                raise ValueError(
                    f"bayesagg_mtl: task {t} ({kind}) needs its last layer as (kernel [D={d}, C], bias [C]) with "
                    f"C {'= 1' if kind == BINARY else '>= 2'}; got kernel {kernel.shape} and bias {bias.shape}"
                )
            if kind == BINARY and kernel.shape[1] != 1:
                raise ValueError(f"bayesagg_mtl: task {t} is binary (one logit); its last layer has {kernel.shape[1]}")
            theta = jnp.concatenate([kernel, bias[None]], axis=0).T.astype(h1.dtype)  # [C, D']
            labels = y[:, t]
            if kind == CLASSIFICATION:
                labels = jnp.clip(jnp.round(labels), 0, theta.shape[0] - 1).astype(jnp.int32)
            mean, chol = laplace_posterior(
                h1, labels, mask[:, t], theta, kind=kind, gamma=gamma, past_gram=past_gram[t]
            )
            e, v = sampled_gradient_moments(
                h1, labels, mean, chol, jax.random.fold_in(inputs.key, t), kind=kind, num_samples=int(num_mc_samples)
            )
            means.append(e)
            variances.append(v)
        return jnp.stack(means, axis=1), jnp.stack(variances, axis=1)

    return WeightingTransform(init, update, LAST_LAYER, rep_level_ok=False)


def _check_kinds(kinds, targets: Array, k: int) -> tuple[str, ...]:
    """The K task kinds (``None``: all regression, with float targets), or a one-line error."""
    if kinds is None:
        if jnp.issubdtype(targets.dtype, jnp.integer) or jnp.issubdtype(targets.dtype, jnp.bool_):
            raise ValueError(
                f"bayesagg_mtl: got {targets.dtype} targets and no target_kinds, so every task counts as regression. "
                "For classification tasks pass target_kinds=('classification' | 'binary' | 'regression', ...) and "
                "last_layer= to jmtl.mtl_value_and_grad"
            )
        return (REGRESSION,) * k
    kinds = tuple(kinds)
    wrong = [x for x in kinds if x not in KINDS]
    if len(kinds) != k or wrong:
        raise ValueError(
            f"bayesagg_mtl: target_kinds must name each of the {k} tasks' kind, one of {', '.join(KINDS)}; got {kinds}"
        )
    return kinds
