"""Gradient-level schemes: they combine the per-task gradients of the shared parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jmtl.weighting import solvers
from jmtl.weighting.base import (
    GRAMIAN,
    JACOBIAN,
    WeightingTransform,
    require_gramian,
    stateless_init,
    weights_output,
)

MGDA_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def _gradient_norm_factors(gram, losses, normalization: str, eps: float = 1e-8):
    """Per-task factors n_k that MGDA divides g_k by (Sener & Koltun 2018, code's `gradient_normalizers`)."""
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    if normalization == "none":
        return jnp.ones_like(losses)
    if normalization == "l2":
        return norms + eps
    if normalization == "loss":
        return losses + eps
    if normalization == "loss+":
        return losses * norms + eps
    raise ValueError(f"unknown MGDA normalization {normalization!r}; valid: {', '.join(MGDA_NORMALIZATIONS)}")


def mgda(normalization: str = "none", max_iter: int = 250, tol: float = 1e-5) -> WeightingTransform:
    """MGDA (Sener & Koltun, NeurIPS 2018): the min-norm element of the convex hull of task gradients.

    ``alpha* = argmin_{alpha in simplex} |sum_k alpha_k g_k / n_k|^2`` (their Eq. 3 after normalising each
    gradient by ``n_k``), and the shared parameters move along ``d = sum_k alpha*_k g_k / n_k``: a common
    descent direction for every task unless the point is Pareto-stationary (then ``d = 0``). Solved
    from the Gramian ``G = J J^T`` alone: closed form for K=2, Frank-Wolfe otherwise. With
    ``normalization='none'`` the weights are the convex ``alpha*``.
    """
    if normalization not in MGDA_NORMALIZATIONS:
        raise ValueError(f"unknown MGDA normalization {normalization!r}; valid: {', '.join(MGDA_NORMALIZATIONS)}")

    def update(losses, state, *, gramian=None, jacobian=None, **_):
        gramian = require_gramian("mgda", gramian, jacobian)
        n = jax.lax.stop_gradient(_gradient_norm_factors(gramian, losses, normalization))
        scaled = gramian / (n[:, None] * n[None, :])
        alpha = solvers.min_norm_weights(scaled, max_iter=max_iter, tol=tol)
        return weights_output(alpha / n), state

    return WeightingTransform(stateless_init, update, GRAMIAN)


__all__ = ["mgda", "MGDA_NORMALIZATIONS", "JACOBIAN"]
