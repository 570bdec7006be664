"""Linear-chain CRF output layer for taggers (Lafferty et al. 2001; as used for chunking and NER by
Huang, Xu & Yu 2015 and Lample et al. 2016).

A tag sequence ``y`` of a sentence with emissions ``E [T, C]`` scores

    s(y) = start[y_1] + sum_t E[t, y_t] + sum_{t>1} A[y_{t-1}, y_t] + end[y_T]

and ``log p(y | x) = s(y) - log sum_y' exp s(y')``; the normaliser comes from the forward algorithm
(``T`` steps of a ``[C, C]`` log-sum-exp), the best sequence from Viterbi. Padding (label -1, at
the end of each row) is skipped by carrying the previous step's values through masked positions.
Everything is batched over ``B`` and jit-able; gradients are autodiff's.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import linen as nn

Array = jax.Array


class CRFOutput(NamedTuple):
    """What a CRF head returns: per-token scores plus the (task-specific) transition scores."""

    emissions: Array  # [B, T, C]
    transitions: Array  # [C, C]: transitions[i, j] scores tag i followed by tag j
    start: Array  # [C]
    end: Array  # [C]


class CRFTransitions(nn.Module):
    """The transition, start and end scores of one task's CRF (initialised at zero)."""

    num_classes: int

    @nn.compact
    def __call__(self, emissions: Array) -> CRFOutput:
        c = self.num_classes
        zeros = nn.initializers.zeros
        return CRFOutput(
            emissions,
            self.param("transitions", zeros, (c, c), jnp.float32),
            self.param("start", zeros, (c,), jnp.float32),
            self.param("end", zeros, (c,), jnp.float32),
        )


def _check(out: CRFOutput, mask: Array) -> tuple[Array, Array, Array, Array]:
    e = out.emissions.astype(jnp.float32)
    b, t, c = e.shape
    chex.assert_shape(out.transitions, (c, c))
    chex.assert_shape((out.start, out.end), (c,))
    chex.assert_shape(mask, (b, t))
    return e, out.transitions.astype(jnp.float32), out.start.astype(jnp.float32), out.end.astype(jnp.float32)


def sequence_score(out: CRFOutput, tags: Array, mask: Array) -> Array:
    """``s(y)`` ``[B]`` of ``tags [B, T]`` over the real positions ``mask [B, T]`` (a prefix of each row)."""
    e, trans, start, end = _check(out, mask)
    mask = mask.astype(jnp.float32)
    tags = jnp.where(mask > 0, tags, 0)
    emit = jnp.sum(jnp.take_along_axis(e, tags[..., None], axis=-1)[..., 0] * mask, axis=-1)
    pair = jnp.sum(trans[tags[:, :-1], tags[:, 1:]] * mask[:, 1:], axis=-1)
    last = jnp.maximum(jnp.sum(mask, axis=-1).astype(jnp.int32) - 1, 0)
    last_tag = jnp.take_along_axis(tags, last[:, None], axis=-1)[:, 0]
    any_real = mask[:, 0]
    return emit + pair + (start[tags[:, 0]] + end[last_tag]) * any_real


def log_partition(out: CRFOutput, mask: Array) -> Array:
    """``log sum_y exp s(y)`` ``[B]`` by the forward algorithm (0 for an empty row)."""
    e, trans, start, end = _check(out, mask)
    alpha0 = start[None] + e[:, 0]  # [B, C]

    def step(alpha, xs):
        emit, m = xs  # [B, C], [B]
        nxt = jax.nn.logsumexp(alpha[:, :, None] + trans[None], axis=1) + emit
        return jnp.where(m[:, None] > 0, nxt, alpha), None

    alpha, _ = jax.lax.scan(step, alpha0, (jnp.swapaxes(e[:, 1:], 0, 1), jnp.swapaxes(mask[:, 1:], 0, 1)))
    return jax.nn.logsumexp(alpha + end[None], axis=-1) * mask[:, 0].astype(jnp.float32)


def log_likelihood(out: CRFOutput, tags: Array, mask: Array) -> Array:
    """``log p(tags | x)`` ``[B]``."""
    return sequence_score(out, tags, mask) - log_partition(out, mask)


def viterbi(out: CRFOutput, mask: Array) -> Array:
    """The highest-scoring tag sequence ``[B, T]`` (int32; 0 at padding)."""
    e, trans, start, end = _check(out, mask)
    b, t, c = e.shape
    score0 = start[None] + e[:, 0]

    def forward(score, xs):
        emit, m = xs
        cand = score[:, :, None] + trans[None]  # [B, from, to]
        back = jnp.argmax(cand, axis=1).astype(jnp.int32)  # [B, to]
        nxt = jnp.max(cand, axis=1) + emit
        keep = m[:, None] > 0
        # At padding the score is carried and the back-pointer is the identity.
        return jnp.where(keep, nxt, score), jnp.where(keep, back, jnp.arange(c, dtype=jnp.int32)[None])

    score, backs = jax.lax.scan(forward, score0, (jnp.swapaxes(e[:, 1:], 0, 1), jnp.swapaxes(mask[:, 1:], 0, 1)))
    best_last = jnp.argmax(score + end[None], axis=-1).astype(jnp.int32)  # [B]

    def backward(tag, back):  # back: [B, C] pointers from position t+1 to t
        prev = jnp.take_along_axis(back, tag[:, None], axis=-1)[:, 0]
        return prev, tag

    first, rest = jax.lax.scan(backward, best_last, backs, reverse=True)
    path = jnp.concatenate([first[:, None], jnp.swapaxes(rest, 0, 1)], axis=1)
    return jnp.where(mask > 0, path, 0)
