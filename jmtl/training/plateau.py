r"""ReduceLROnPlateau for optax: the learning rate shrinks when the monitored validation value stalls.

The rule is PyTorch's ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (mode ``min``, threshold mode
``rel``), the schedule of the published QM9 protocols (Navon et al. 2022, Nash-MTL: factor 0.7,
patience 5, min_lr 1e-5 on validation Δm%; Qin et al. 2025, NTKMTL: patience 10). After each
evaluation with monitored value ``v``:

    better  = v < best * (1 - threshold)            (best starts at +inf)
    if better: best = v; bad = 0   else: bad += 1
    if cooldown_left > 0: cooldown_left -= 1; bad = 0
    if bad > patience:
        if lr - max(lr * factor, min_lr) > 1e-8: lr = max(lr * factor, min_lr)
        cooldown_left = cooldown; bad = 0

With a negative ``best`` (Δm% below the baselines) the relative threshold admits values slightly
above it as "better", as PyTorch's rule does. ``best`` is kept, and values compared, in float32 (the
state is an array pytree): values within float32 round-off of ``best`` count as equal.

The rate lives in the optimizer state as a multiplier (:func:`scale_by_plateau`, the last transform of
the chain, so every update of Adam, AdamW or SGD is scaled as a smaller learning rate would scale it);
the train loop applies :func:`plateau_update` on the host after each evaluation, per seed, and the
state is checkpointed with the optimizer's, so a resumed run continues the same schedule.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# PyTorch's ``eps``: a reduction smaller than this (in learning-rate units) is skipped.
MIN_LR_CHANGE = 1e-8


class PlateauState(NamedTuple):
    """``scale``: the current rate / the base rate; ``best``: the best monitored value so far (+inf
    before the first); ``bad``: evaluations since it last improved; ``cooldown``: evaluations left
    in the cool-down after a reduction. Scalars, or ``[S]`` with several seeds."""

    scale: jax.Array
    best: jax.Array
    bad: jax.Array
    cooldown: jax.Array


def scale_by_plateau() -> optax.GradientTransformation:
    """Multiplies the updates by ``state.scale`` (1 at the start); :func:`plateau_update` changes it."""

    def init(params: Any) -> PlateauState:
        del params
        return PlateauState(
            jnp.ones((), jnp.float32),
            jnp.full((), jnp.inf, jnp.float32),
            jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.int32),
        )

    def update(updates, state: PlateauState, params=None):
        del params
        return jax.tree.map(lambda u: (u * state.scale).astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def plateau_update(
    state: PlateauState,
    value,
    *,
    base_lr: float,
    factor: float,
    patience: int,
    threshold: float,
    min_lr: float,
    cooldown: int,
) -> PlateauState:
    """One evaluation's step of the rule (module docstring), element-wise over seeds.

    Args:
      state: the current :class:`PlateauState` (host arrays; scalars or ``[S]``).
      value: the monitored value(s), lower is better (validation Δm%, or minus the selection score).
      base_lr: the optimizer's learning rate (``scale`` multiplies it).
      factor: the reduction factor, in (0, 1).
      patience: evaluations without improvement tolerated before a reduction.
      threshold: the relative improvement that counts as better.
      min_lr: the floor of the learning rate.
      cooldown: evaluations after a reduction during which stalls are not counted.
    """
    # Compared in float32, the precision ``best`` is stored in (values within float32 round-off of
    # ``best`` count as equal, not better).
    v = np.asarray(value, np.float32)
    best = np.asarray(state.best, np.float32)
    scale = np.asarray(state.scale, np.float64)
    bad, left = np.asarray(state.bad, np.int64), np.asarray(state.cooldown, np.int64)
    better = v < best * np.float32(1.0 - threshold)
    best = np.where(better, v, best)
    bad = np.where(better, 0, bad + 1)
    cooling = left > 0
    left = np.where(cooling, left - 1, left)
    bad = np.where(cooling, 0, bad)
    lr = base_lr * scale
    new_lr = np.maximum(lr * factor, min_lr)
    trigger = bad > patience
    # The rate moves only by more than MIN_LR_CHANGE (at min_lr it stays); the count and the
    # cool-down restart on every trigger, as in PyTorch.
    scale = np.where(trigger & (lr - new_lr > MIN_LR_CHANGE), new_lr / base_lr, scale)
    left = np.where(trigger, cooldown, left)
    bad = np.where(trigger, 0, bad)
    return PlateauState(
        np.asarray(scale, np.float32),
        np.asarray(best, np.float32),
        np.asarray(bad, np.int32),
        np.asarray(left, np.int32),
    )


def find(opt_state) -> PlateauState | None:
    """The :class:`PlateauState` of an optimizer state built by ``builders.optimizer`` (None: no plateau)."""
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PlateauState))
        if isinstance(s, PlateauState)
    ]
    if len(found) > 1:
        raise ValueError(f"the optimizer state holds {len(found)} plateau states; expected at most one")
    return found[0] if found else None


def replace(opt_state, new: PlateauState):
    """``opt_state`` with its :class:`PlateauState` replaced by ``new``."""
    return jax.tree.map(
        lambda s: new if isinstance(s, PlateauState) else s, opt_state, is_leaf=lambda x: isinstance(x, PlateauState)
    )
