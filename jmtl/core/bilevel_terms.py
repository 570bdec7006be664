"""The upper-level quantities a bilevel weighting scheme (``requires='bilevel'``) asks of the step.

See :class:`jmtl.weighting.base.Lookahead` for the two forms: one-step hypergradients through a
virtual SGD step (Auto-Lambda, MOML: ``inner_steps == 0``), and the value-function form of FORUM
(``inner_steps > 0``), whose upper-level task gradients the step adds to the update with the
scheme's ``meta_weights``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from jmtl.core.jacobian import flatten_rows, map_rows, pmean, to_varying

Array = jax.Array
PyTree = Any

# FORUM's inner loop stops when the lower-level loss exceeds this (the authors' code uses 1e5).
INNER_LOSS_LIMIT = 1e5


def bilevel_terms(
    spec,
    weighting_state: PyTree,
    params_local: PyTree,
    vjp_fn: Callable,
    dtype,
    train_losses: Callable[[PyTree], Array],
    val_losses: Callable[[PyTree], Array],
    *,
    k: int,
    chunk_size: int,
    axis_name: Optional[str],
) -> tuple[dict, Optional[PyTree]]:
    """``(update kwargs, stacked upper-level task gradients or None)`` of a bilevel scheme.

    Args:
      spec: the scheme's :class:`jmtl.weighting.base.Lookahead`.
      weighting_state: the scheme's state (its current lower-level weights come from it).
      params_local: the device-varying params theta.
      vjp_fn: vjp of the local training losses at theta (``[K]`` cotangent -> ``(grad,)``).
      dtype: the losses' dtype.
      train_losses: ``params -> [K]`` local training losses (same dropout as the forward pass).
      val_losses: ``params -> [K]`` local losses on the meta batch.
      k: number of tasks.
      chunk_size: rows per in-graph chunk (0: one vmap), as for the per-task gradients.
      axis_name: the data-parallel axis, or None.
    """
    if spec.lr is None:
        raise ValueError("the bilevel scheme's look-ahead learning rate is unset (lookahead_lr=None)")
    lam = jax.lax.stop_gradient(spec.weights(weighting_state)).astype(dtype)
    (g,) = vjp_fn(to_varying(lam, axis_name))  # grad_theta f(w, theta), local
    g = pmean(g, axis_name)

    if spec.inner_steps == 0:
        ahead = jax.tree.map(lambda p, d: p - spec.lr * d, params_local, g)
        val_local, val_vjp = jax.vjp(val_losses, ahead)
        cots = jnp.eye(k, dtype=dtype) if spec.per_task else jnp.ones((1, k), dtype)
        (val_grads,) = map_rows(val_vjp, to_varying(cots, axis_name), chunk_size)
        val_grads = to_varying(pmean(val_grads, axis_name), axis_name)
        # <grad L_j^val(theta'), grad L_k^train(theta)> for every k at once: a jvp along row j.
        inner = map_rows(lambda v: jax.jvp(train_losses, (params_local,), (v,))[1], val_grads, chunk_size)  # [R, K]
        inner = pmean(inner, axis_name)
        return dict(hypergradient=-spec.lr * inner, val_losses=pmean(val_local, axis_name)), None

    # Value-function form (FORUM): theta_T from T SGD steps on f(w, .), and upper-level gradients at theta.
    def f_ok(f):
        return jnp.isfinite(f) & (f <= INNER_LOSS_LIMIT)

    def inner_step(_, carry):
        # theta_T is the last iterate whose f is finite and <= INNER_LOSS_LIMIT (the FORUM authors
        # stop their loop there too): a diverging inner loop would make q meaningless.
        prev, p, going = carry
        f, d = jax.value_and_grad(lambda q: jnp.vdot(lam, train_losses(q)))(p)
        f, d = pmean((f, d), axis_name)
        going = going & f_ok(f)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(going, a, b), new, old)
        stepped = jax.tree.map(lambda a, b: a - spec.lr * b, p, d)
        return keep(p, prev), keep(stepped, prev), going

    prev_t, theta_t, _ = jax.lax.fori_loop(
        0, spec.inner_steps, inner_step, (params_local, params_local, jnp.asarray(True))
    )
    last = pmean(train_losses(theta_t), axis_name)  # the final iterate is checked too
    # Usually it is fine and its losses are the inner losses; else fall back to the previous iterate.
    inner_losses = jax.lax.cond(f_ok(jnp.vdot(lam, last)), lambda: last, lambda: pmean(train_losses(prev_t), axis_name))
    val_local, val_vjp = jax.vjp(val_losses, params_local)
    (val_grads,) = map_rows(val_vjp, to_varying(jnp.eye(k, dtype=dtype), axis_name), chunk_size)
    val_grads = pmean(val_grads, axis_name)  # K trees, leading axis K
    rows = jnp.concatenate(
        [flatten_rows(val_grads), flatten_rows(jax.tree.map(lambda x: x[None], g))], axis=0
    )  # [K + 1, P]
    gram = jnp.matmul(rows, rows.T, precision=jax.lax.Precision.HIGHEST)
    kwargs = dict(val_losses=pmean(val_local, axis_name), inner_losses=inner_losses, meta_gram=gram)
    return kwargs, val_grads
