"""Small solvers that run inside the compiled step (no host round-trips)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def min_norm_two(g11: Array, g12: Array, g22: Array) -> Array:
    """Weight ``gamma`` on the first vector of ``min_{gamma in [0,1]} |gamma v1 + (1-gamma) v2|^2``.

    Closed form (Sener & Koltun 2018, Algorithm 1): ``gamma = clip(((v2 - v1) . v2) / |v1 - v2|^2, 0, 1)``
    written with the Gram entries ``g11 = v1.v1``, ``g12 = v1.v2``, ``g22 = v2.v2``.
    """
    denom = g11 - 2.0 * g12 + g22
    safe = jnp.where(denom > 0, denom, 1.0)
    gamma = jnp.where(denom > 0, (g22 - g12) / safe, 0.5)
    return jnp.clip(gamma, 0.0, 1.0)


def min_norm_weights(gram: Array, *, max_iter: int = 250, tol: float = 1e-5) -> Array:
    """Convex weights ``alpha`` of the min-norm point of the convex hull of K vectors, from their Gram matrix.

    Solves ``min_{alpha in simplex} alpha^T G alpha``. K=2 uses the closed form; otherwise Frank-Wolfe
    with exact line search (Sener & Koltun 2018, Algorithm 2), starting from the best pair's solution
    (as in the paper's implementation) and stopping when ``|alpha_new - alpha|_1 < tol`` or after
    ``max_iter`` iterations.
    """
    k = gram.shape[0]
    if k == 1:
        return jnp.ones((1,), gram.dtype)
    if k == 2:
        gamma = min_norm_two(gram[0, 0], gram[0, 1], gram[1, 1])
        return jnp.stack([gamma, 1.0 - gamma])

    # Initialise from the best pairwise solution.
    ii, jj = jnp.triu_indices(k, 1)
    gammas = min_norm_two(gram[ii, ii], gram[ii, jj], gram[jj, jj])
    pair_norms = (
        gammas**2 * gram[ii, ii] + 2 * gammas * (1 - gammas) * gram[ii, jj] + (1 - gammas) ** 2 * gram[jj, jj]
    )
    best = jnp.argmin(pair_norms)
    alpha0 = jnp.zeros((k,), gram.dtype)
    alpha0 = alpha0.at[ii[best]].add(gammas[best]).at[jj[best]].add(1.0 - gammas[best])

    def cond(carry):
        it, _, delta = carry
        return jnp.logical_and(it < max_iter, delta >= tol)

    def body(carry):
        it, alpha, _ = carry
        g_alpha = gram @ alpha
        t = jnp.argmin(g_alpha)
        vv = alpha @ g_alpha  # |v|^2 for v = sum alpha_k g_k
        vt = g_alpha[t]  # v . g_t
        tt = gram[t, t]  # |g_t|^2
        # Line search between v and g_t: gamma weights v.
        gamma = min_norm_two(vv, vt, tt)
        new_alpha = gamma * alpha + (1.0 - gamma) * jax.nn.one_hot(t, k, dtype=gram.dtype)
        return it + 1, new_alpha, jnp.sum(jnp.abs(new_alpha - alpha))

    _, alpha, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), alpha0, jnp.asarray(jnp.inf, gram.dtype)))
    return alpha
