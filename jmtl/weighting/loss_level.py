"""Loss-level schemes: the task weights depend on the losses (and the scheme's own state) only."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from jmtl.weighting.base import (
    LOSSES,
    EmptyState,
    WeightingOutput,
    WeightingTransform,
    stateless_init,
    weights_output,
)


def equal() -> WeightingTransform:
    """Equal weighting (EW / linear scalarisation): ``L = sum_k L_k``, i.e. ``lambda_k = 1``."""

    def update(losses, state, **_):
        return weights_output(jnp.ones_like(losses)), state

    return WeightingTransform(stateless_init, update, LOSSES)


def static(weights: Sequence[float] | None = None) -> WeightingTransform:
    """Static weights: ``L = sum_k lambda_k L_k`` with fixed ``lambda`` (default: all ones).

    The weights usually come from each ``Task.weight`` in the config.
    """

    def update(losses, state, **_):
        if weights is None:
            w = jnp.ones_like(losses)
        else:
            if len(weights) != losses.shape[0]:
                raise ValueError(
                    f"static weighting got {len(weights)} weights for {losses.shape[0]} tasks"
                )
            w = jnp.asarray(weights, losses.dtype)
        return weights_output(w), state

    return WeightingTransform(stateless_init, update, LOSSES)


def uncertainty(init_log_var: float = -0.5) -> WeightingTransform:
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    With learnable ``s_k = log sigma_k^2`` (Eq. 7 in the form used by most implementations)::

        L = sum_k exp(-s_k) * L_k + s_k

    ``s`` is a learnable parameter trained by the main optimizer; ``init_log_var`` follows LibMTL's
    default of -0.5.
    """

    def init_params(num_tasks: int):
        return {"log_var": jnp.full((num_tasks,), init_log_var, jnp.float32)}

    def update(losses, state, *, params=None, **_):
        if params is None:
            raise ValueError("uncertainty weighting needs its params (init_params) in the train state")
        s = params["log_var"]
        return WeightingOutput(weights=jnp.exp(-s), direction=None, extra_loss=jnp.sum(s)), state

    return WeightingTransform(stateless_init, update, LOSSES, init_params=init_params)


__all__ = ["equal", "static", "uncertainty", "EmptyState"]
