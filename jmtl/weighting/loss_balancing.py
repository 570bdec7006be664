"""Loss-balancing schemes: task weights from the losses (DB-MTL and GradNorm also from gradients).

Every scheme here is an optax-style ``init``/``update`` pair (see :mod:`jmtl.weighting.base`). The
weights returned are those of the *shared-parameter* update ``sum_k w_k g_k``; a scheme that in its
paper optimises a transformed objective (``sum_k log L_k``, a geometric mean, a log-sum-exp) returns
the chain-rule weights of that objective at the current losses, e.g. ``d/dtheta log L_k = g_k / L_k``
gives ``w_k = 1 / L_k``. All weights are constants for the train step (it stops their gradient).

Schemes that in their papers work per *epoch* (DWA, STCH) count ``update`` calls in their state and
take the epoch length as ``steps_per_epoch``: the protocol has no epoch boundaries.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jmtl.weighting.base import (
    GRAMIAN,
    JACOBIAN,
    LOSSES,
    Layout,
    WeightingOutput,
    WeightingTransform,
    default_float_dtype,
    require_gramian,
    stateless_init,
    weights_output,
)

Array = jax.Array

# Added to losses before logs / divisions (the reference implementations use 1e-8 or 1e-20).
EPS = 1e-8



def _cast_like(new: Any, old: Any) -> Any:
    """``new`` with the dtypes of ``old`` (keeps a state's dtypes fixed across steps under jit)."""
    return jax.tree.map(lambda n, o: jnp.asarray(n).astype(jnp.asarray(o).dtype), new, old)



def _check_positive_int(value: int, name: str) -> None:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


# ----------------------------------------------------------------------------- SI


def si() -> WeightingTransform:
    """Scale-invariant loss: ``L = sum_k log L_k`` (e.g. Navon et al. 2022, their "SI" baseline).

    ``dL/dtheta = sum_k g_k / L_k``, so ``w_k = 1 / (L_k + eps)`` with ``eps = 1e-8``. Invariant to
    rescaling any task's loss by a constant.
    """

    def update(losses, state, **_):
        return weights_output(1.0 / (losses + EPS)), state

    return WeightingTransform(stateless_init, update, LOSSES)


# ----------------------------------------------------------------------------- DWA


class DWAState(NamedTuple):
    count: Array  # int32: update calls so far in the current epoch
    epochs: Array  # int32: completed epochs
    epoch_sum: Array  # [K] sum of the losses of the current epoch
    last: Array  # [K] average loss of the last completed epoch, L(t-1)
    before_last: Array  # [K] average loss of the epoch before, L(t-2)


def dwa(temperature: float = 2.0, steps_per_epoch: int = 100) -> WeightingTransform:
    """Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019).

    Eq. (7): ``w_k(t) = K exp(r_k(t-1) / T) / sum_j exp(r_j(t-1) / T)`` with the relative descent rate
    ``r_k(t-1) = L_k(t-1) / L_k(t-2)`` of the *epoch-average* training losses, and ``w_k = 1`` for the
    first two epochs (``t = 0, 1``). ``T = temperature = 2``.

    The protocol has no epochs: an epoch is ``steps_per_epoch`` consecutive ``update`` calls (set it to
    the number of batches per epoch; the default 100 is only a placeholder). The weights of epoch
    ``t`` use the averages of epochs ``t-1`` and ``t-2``; the current losses enter the running sum
    after the weights are computed.
    """
    _check_positive_int(steps_per_epoch, "steps_per_epoch")

    def init(num_tasks: int) -> DWAState:
        z = jnp.zeros((num_tasks,), default_float_dtype())
        i0 = jnp.zeros((), jnp.int32)
        return DWAState(count=i0, epochs=i0, epoch_sum=z, last=z, before_last=z)

    def update(losses, state: DWAState, **_):
        dtype = losses.dtype
        k = losses.shape[0]
        last = state.last.astype(dtype)
        before = state.before_last.astype(dtype)
        ratio = last / jnp.maximum(before, EPS)
        dynamic = k * jax.nn.softmax(ratio / temperature)
        w = jnp.where(state.epochs >= 2, dynamic, jnp.ones_like(losses))

        epoch_sum = state.epoch_sum.astype(dtype) + losses
        count = state.count + 1
        done = count >= steps_per_epoch
        average = epoch_sum / steps_per_epoch
        new = DWAState(
            count=jnp.where(done, 0, count),
            epochs=state.epochs + done.astype(jnp.int32),
            epoch_sum=jnp.where(done, jnp.zeros_like(epoch_sum), epoch_sum),
            last=jnp.where(done, average, last),
            before_last=jnp.where(done, last, before),
        )
        return weights_output(w), _cast_like(new, state)

    return WeightingTransform(init, update, LOSSES)


# ----------------------------------------------------------------------------- RLW


def rlw() -> WeightingTransform:
    """Random Loss Weighting (Lin et al., "Reasonable Effectiveness of Random Weighting", TMLR 2022).

    Each step draws ``lambda~ ~ N(0, I_K)`` from ``key`` and uses ``w = K softmax(lambda~)``. The paper's
    weights are ``softmax(lambda~)`` (summing to 1); here they are multiplied by ``K`` so that, like
    equal weighting's, they sum to ``K`` (the same update up to the learning rate).
    """

    def update(losses, state, *, key=None, **_):
        if key is None:
            raise ValueError("rlw needs the step's PRNG key")
        z = jax.random.normal(key, losses.shape, losses.dtype)
        return weights_output(losses.shape[0] * jax.nn.softmax(z)), state

    return WeightingTransform(stateless_init, update, LOSSES)


# ----------------------------------------------------------------------------- GLS


def gls() -> WeightingTransform:
    """Geometric Loss Strategy (Chennupati et al., "MultiNet++", CVPR-W 2019).

    ``L = (prod_k L_k)^(1/K)``; ``dL/dtheta = sum_k L / (K L_k) g_k``, so ``w_k = L_gls / (K L_k)``
    (computed in log space, with ``eps = 1e-8`` added to each loss).
    """

    def update(losses, state, **_):
        shifted = losses + EPS
        geo = jnp.exp(jnp.mean(jnp.log(shifted)))
        return weights_output(geo / (losses.shape[0] * shifted)), state

    return WeightingTransform(stateless_init, update, LOSSES)


# ----------------------------------------------------------------------------- IMTL-L


def imtl_l(init_scale: float = 0.0) -> WeightingTransform:
    """IMTL-L, the loss-balance half of IMTL (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021).

    Learnable scales ``s_k`` (Eq. 2): ``L = sum_k e^{s_k} L_k - s_k``; both the network and ``s`` are
    trained on it by the main optimizer (``s`` is in ``init_params``, start ``init_scale = 0``). At
    the optimum over ``s`` every scaled loss ``e^{s_k} L_k`` equals 1.
    """

    def init_params(num_tasks: int):
        return {"s": jnp.full((num_tasks,), init_scale, default_float_dtype())}

    def update(losses, state, *, params=None, **_):
        if params is None:
            raise ValueError("imtl_l needs its params (init_params) in the train state")
        s = params["s"].astype(losses.dtype)
        return WeightingOutput(weights=jnp.exp(s), direction=None, extra_loss=-jnp.sum(s)), state

    return WeightingTransform(stateless_init, update, LOSSES, init_params=init_params)


# ----------------------------------------------------------------------------- FAMO


class FAMOState(NamedTuple):
    logits: Array  # [K] xi
    opt_state: Any  # optax state of the logits' optimizer
    prev_losses: Array  # [K] losses of the previous update call
    has_prev: Array  # bool: prev_losses is set


def famo(w_lr: float = 0.025, gamma: float = 1e-3) -> WeightingTransform:
    """FAMO: Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023).

    Task logits ``xi`` (start 0), ``z = softmax(xi)``. The shared update is the gradient of
    ``sum_k z_k log L_k`` normalised by ``c = sum_k z_k / L_k`` (Alg. 1), i.e. weights
    ``w_k = z_k / (c L_k)`` (they sum to 1). After the step the logits move so that tasks whose
    log-loss fell least gain weight (Eq. 11): with ``delta_k = log L_k(t) - log L_k(t+1)``,
    ``xi <- xi - w_lr * Adam(J_z(xi)^T delta + gamma xi)``: Adam with coupled weight decay ``gamma``,
    as the official code's ``torch.optim.Adam(lr=w_lr, weight_decay=gamma)``. Losses are shifted by
    ``1e-8`` (the official ``min_losses`` are 0).

    Protocol difference: the official code re-evaluates the *same* batch after the model step to get
    ``L(t+1)``. Here no extra forward pass is made: the state keeps ``L(t)`` and the logit update is
    done when the next call's losses arrive (a different batch), before its weights are computed.
    The official trainer's gradient clipping (``max_norm``) belongs to the optimizer, not to FAMO.
    """
    tx = optax.chain(optax.add_decayed_weights(gamma), optax.adam(w_lr))

    def init(num_tasks: int) -> FAMOState:
        logits = jnp.zeros((num_tasks,), default_float_dtype())
        return FAMOState(
            logits=logits,
            opt_state=tx.init(logits),
            prev_losses=jnp.zeros_like(logits),
            has_prev=jnp.zeros((), bool),
        )

    def update(losses, state: FAMOState, **_):
        dtype = losses.dtype
        logits = state.logits
        d_now = losses + EPS
        d_prev = state.prev_losses.astype(dtype) + EPS
        delta = (jnp.log(d_prev) - jnp.log(d_now)).astype(logits.dtype)
        _, softmax_vjp = jax.vjp(jax.nn.softmax, logits)
        (grad,) = softmax_vjp(delta)
        updates, stepped_opt = tx.update(grad, state.opt_state, logits)
        stepped_logits = optax.apply_updates(logits, updates)
        logits = jnp.where(state.has_prev, stepped_logits, logits)
        opt_state = jax.tree.map(lambda a, b: jnp.where(state.has_prev, a, b), stepped_opt, state.opt_state)

        z = jax.nn.softmax(logits).astype(dtype)
        c = jnp.sum(z / d_now)
        w = z / (c * d_now)
        new = FAMOState(logits=logits, opt_state=opt_state, prev_losses=losses, has_prev=jnp.ones((), bool))
        return weights_output(w), _cast_like(new, state)

    return WeightingTransform(init, update, LOSSES)


# ----------------------------------------------------------------------------- STCH


class STCHState(NamedTuple):
    count: Array  # int32: update calls so far
    loss_sum: Array  # [K] sum of the losses of the nadir-estimation epoch


def stch(mu: float = 1.0, warmup_epochs: int = 4, steps_per_epoch: int = 100) -> WeightingTransform:
    """Smooth Tchebycheff scalarisation (Lin et al., ICML 2024), as its official MTL code runs it.

    Paper (Eq. 9): ``g_mu(x) = mu log sum_k exp(lambda_k (f_k(x) - z_k*) / mu)``. The official MTL code
    (``STCH_mu = 1``, ``STCH_warmup_epoch = 4``, preference ``lambda_k = 1``) uses log-losses
    normalised by a nadir point estimated during warm-up:

    * epochs ``0 .. warmup_epochs - 1``: ``L = sum_k log L_k`` (weights ``1 / L_k``);
    * epoch ``warmup_epochs``: the same, and the losses are averaged into the nadir point ``n``;
    * afterwards: ``L = K mu log sum_k exp(log(L_k / n_k) / mu)``, i.e. the ideal point is ``L_k = 0``
      in log space, and ``w_k = K p_k / L_k`` with ``p = softmax(log(L / n) / mu)``.

    An epoch is ``steps_per_epoch`` consecutive ``update`` calls (the default 100 is a placeholder;
    set it to the number of batches per epoch). ``eps = 1e-8`` is added to the losses (the code adds
    ``1e-20`` inside the log).
    """
    _check_positive_int(steps_per_epoch, "steps_per_epoch")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    if mu <= 0:
        raise ValueError(f"mu must be > 0, got {mu}")
    start = warmup_epochs * steps_per_epoch  # first step of the nadir epoch
    stop = start + steps_per_epoch  # first STCH step

    def init(num_tasks: int) -> STCHState:
        return STCHState(count=jnp.zeros((), jnp.int32), loss_sum=jnp.zeros((num_tasks,), default_float_dtype()))

    def update(losses, state: STCHState, **_):
        k = losses.shape[0]
        loss_sum = state.loss_sum.astype(losses.dtype)
        log_weights = 1.0 / (losses + EPS)
        nadir = jnp.maximum(loss_sum / steps_per_epoch, EPS)
        p = jax.nn.softmax(jnp.log(losses / nadir + EPS) / mu)
        stch_weights = k * p / (losses + EPS * nadir)
        w = jnp.where(state.count >= stop, stch_weights, log_weights)

        collecting = (state.count >= start) & (state.count < stop)
        new = STCHState(
            count=jnp.minimum(state.count + 1, stop),  # saturates: no int32 overflow on long runs
            loss_sum=jnp.where(collecting, loss_sum + losses, loss_sum),
        )
        return weights_output(w), _cast_like(new, state)

    return WeightingTransform(init, update, LOSSES)


# ----------------------------------------------------------------------------- DB-MTL


class DBMTLState(NamedTuple):
    count: Array  # int32: update calls so far
    buffer: Array  # [K, d] EMA of the log-loss gradients ([K, 0] until the first call if d was unknown)


def _layout_size(layout: Optional[Layout]) -> Optional[int]:
    if layout is None:
        return None
    return int(sum(math.prod(shape) for _, shape in layout))


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
    """

    def init(num_tasks: int, layout: Optional[Layout] = None) -> DBMTLState:
        d = _layout_size(layout) or 0
        return DBMTLState(count=jnp.zeros((), jnp.int32), buffer=jnp.zeros((num_tasks, d), default_float_dtype()))

    def update(losses, state: DBMTLState, *, jacobian=None, **_):
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


# ----------------------------------------------------------------------------- GradNorm


class GradNormState(NamedTuple):
    weights: Array  # [K] current task weights w(t), summing to K
    initial_losses: Array  # [K] L(0)
    started: Array  # bool: initial_losses is set
    opt_state: Any  # Adam state of the weights


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
    """

    tx = optax.adam(lr)

    def init(num_tasks: int) -> GradNormState:
        w = jnp.ones((num_tasks,), default_float_dtype())
        return GradNormState(
            weights=w, initial_losses=jnp.ones_like(w), started=jnp.zeros((), bool), opt_state=tx.init(w)
        )

    def update(losses, state: GradNormState, *, gramian=None, jacobian=None, **_):
        gram = require_gramian("gradnorm", gramian, jacobian)
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
        return weights_output(w), _cast_like(new, state)

    return WeightingTransform(init, update, GRAMIAN, rep_level_ok=False)


REGISTRY: dict = {
    "si": si,
    "dwa": dwa,
    "rlw": rlw,
    "gls": gls,
    "imtl_l": imtl_l,
    "famo": famo,
    "stch": stch,
    "db_mtl": db_mtl,
    "gradnorm": gradnorm,
}

__all__ = [
    "REGISTRY",
    "DBMTLState",
    "DWAState",
    "FAMOState",
    "GradNormState",
    "STCHState",
    "db_mtl",
    "dwa",
    "famo",
    "gls",
    "gradnorm",
    "imtl_l",
    "rlw",
    "si",
    "stch",
]
