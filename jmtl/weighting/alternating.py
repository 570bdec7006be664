"""Alternating training as a loss-level scheme: each step trains on one task drawn at random.

Søgaard & Goldberg (2016) train their multi-task tagger by picking a task at random and then a
training example for it. With batches that carry every task's labels, the same thing is a step
whose loss is the drawn task's loss alone: weights ``one_hot(k)``, ``k ~ Categorical(p)``. The draw
comes from the step's PRNG key (identical on every device, reproducible run to run).

``scale=False`` (default) returns the plain one-hot, so a step is exactly a single-task step on the
drawn task. ``scale=True`` returns ``K * one_hot`` (with uniform ``p`` its expectation is all ones,
i.e. the equal-weighting objective ``sum_k L_k`` in expectation, at the cost of a K times larger
step for the drawn task).
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from jmtl.weighting.base import LOSSES, WeightingTransform, stateless_init, weights_output


def alternating(probabilities: Optional[Sequence[float]] = None, scale: bool = False) -> WeightingTransform:
    """One task per step.

    probabilities: ``[K]`` task probabilities (normalised here); ``None`` = uniform.
    scale: multiply the one-hot by ``K`` (see the module docstring).
    """
    if probabilities is not None:
        if any(p < 0 for p in probabilities) or not sum(probabilities) > 0:
            raise ValueError(f"alternating: probabilities must be non-negative with a positive sum, got {probabilities}")

    def update(losses, state, *, key=None, **_):
        if key is None:
            raise ValueError("alternating weighting needs the step's PRNG key")
        k = losses.shape[0]
        if probabilities is None:
            logits = jnp.zeros((k,), jnp.float32)
        else:
            if len(probabilities) != k:
                raise ValueError(f"alternating got {len(probabilities)} probabilities for {k} tasks")
            p = jnp.asarray(probabilities, jnp.float32)
            logits = jnp.log(p / jnp.sum(p))  # log 0 = -inf: that task is never drawn
        task = jax.random.categorical(key, logits)
        w = jax.nn.one_hot(task, k, dtype=losses.dtype)
        if scale:
            w = w * k
        return weights_output(w), state

    return WeightingTransform(stateless_init, update, LOSSES)


__all__ = ["alternating"]
