"""The task Gramian ``G = J J^T`` without the Jacobian ``J`` (issue 25 §1; torchjd's *autogram*).

Gramian schemes (UPGrad, MGDA, PCGrad, Nash-MTL, CAGrad, IMTL-G, Aligned-MTL, DualProj, ...) read
only ``G``, a ``[K, K]`` matrix, yet the Jacobian path builds the ``[K, d]`` rows of every shared
param. ``G`` is a sum over param blocks, ``G = sum_layers J_layer J_layer^T``, and for the layers
that hold most of the params each block has a closed form in the layer's *input* ``x`` and the
per-task *output cotangents* ``delta_k`` (Goodfellow 2015, "Efficient per-example gradient
computations"; the same identity as the per-example-gradient-norm trick):

* dense ``y = x W + b`` (leading axes of ``x`` folded into one batch axis of size ``B``): task k's
  kernel gradient is ``sum_b x_b (x) delta_{k,b}``, so::

      G^W_{kl} = sum_{b,b'} (x_b . x_b') (delta_{k,b} . delta_{l,b'})          (Gram form)

  costs ``B^2 d_in + K B^2 d_out + K^2 B d_out`` flops and ``B^2 + K B d_out`` memory, against
  ``K B d_in d_out + K^2 d_in d_out`` flops and ``K d_in d_out`` memory for the explicit rows
  ``R_k = x^T delta_k``; :func:`dense_kernel_gramian` takes whichever is cheaper;
* bias: ``G^b_{kl} = (sum_b delta_{k,b}) . (sum_b delta_{l,b})``;
* embedding lookup ``y_b = E[i_b]``: the dense form with ``x_b . x_b' = [i_b == i_b']``;
* any other layer (convolutions, norms, ...): the layer's own rows, ``R_k = vjp_params(delta_k)``
  of that layer alone at its recorded input, then ``G += R R^T`` and ``R`` is dropped
  (:func:`vjp_gramian`). Peak memory is K x (the largest such layer), never K x d.

The ``delta_k`` of every tapped layer come from one ``vmap`` over the K one-hot cotangents of the
loss vector of a function that adds a zero *perturbation* to each tapped layer's output (the
gradient w.r.t. that perturbation is the output cotangent); the kernels are not differentiated, so
no kernel gradient is ever formed. Params outside any tapped layer get ordinary rows (small).
After the scheme turns ``G`` into weights ``w``, the update ``w^T J`` is one backward pass
``vjp(w)`` (:func:`gramian_from_taps` returns it as ``backward``).

Framework-free: this module imports only jax and :mod:`jmtl.weighting` (a test walks its imports).
The Flax side, which finds the layers and their inputs in an unchanged ``nn.Module``, is
:mod:`jmtl.training.autogram_flax`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any
# A tapped layer's rule: (record, delta [K, *out], the layer's params) -> its [K, K] Gramian block.
Rule = Callable[[Any, Array, PyTree], Array]

GRAM = "gram"
ROWS = "rows"
AUTO = "auto"


def _map_rows(fn: Callable, xs: PyTree, chunk_size: int) -> PyTree:
    """``fn`` over the leading axis of ``xs``: one ``vmap`` (``chunk_size`` 0 or >= the axis size),
    else a ``lax.map`` over chunks of ``chunk_size`` (1: a plain scan), bounding the live memory."""
    n = jax.tree.leaves(xs)[0].shape[0]
    if chunk_size == 0 or chunk_size >= n:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=chunk_size if chunk_size > 1 else None)


def rows_gramian(rows: PyTree) -> Array:
    """``sum_leaf R R^T`` for a pytree of ``[K, ...]`` row blocks (no concatenation into ``[K, d]``)."""
    leaves = [leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree.leaves(rows)]
    if not leaves:
        raise ValueError("rows_gramian: no rows (an empty pytree)")
    return sum(r @ r.T for r in leaves)


def gram_form_cost(batch: int, d_in: int, d_out: int, k: int) -> tuple[int, int]:
    """Flops of the Gram form and of the explicit rows for a dense kernel (see the module docstring)."""
    gram = batch * batch * d_in + k * batch * batch * d_out + k * k * batch * d_out
    rows = k * batch * d_in * d_out + k * k * d_in * d_out
    return gram, rows


def choose_method(batch: int, d_in: int, d_out: int, k: int, method: str = AUTO) -> str:
    """``'gram'`` or ``'rows'``: the cheaper in flops when ``method`` is ``'auto'`` (ties: Gram)."""
    if method not in (AUTO, GRAM, ROWS):
        raise ValueError(f"method must be 'auto', 'gram' or 'rows', got {method!r}")
    if method != AUTO:
        return method
    gram, rows = gram_form_cost(batch, d_in, d_out, k)
    return GRAM if gram <= rows else ROWS


def _paired(m: Array, delta: Array) -> Array:
    """``G_kl = sum_{b,b'} m_{bb'} (delta_{k,b} . delta_{l,b'})`` for ``m [B, B]``, ``delta [K, B, o]``."""
    md = jnp.einsum("bc,lco->lbo", m, delta)
    return jnp.einsum("kbo,lbo->kl", delta, md)


def dense_kernel_gramian(x: Array, delta: Array, method: str = AUTO) -> Array:
    """Gramian block of a dense kernel ``y = x W`` from its input and per-task output cotangents.

    ``G_kl = <sum_b x_b (x) delta_{k,b}, sum_b x_b (x) delta_{l,b}>
    = sum_{b,b'} (x_b . x_b') (delta_{k,b} . delta_{l,b'})``.

    Args:
      x: ``[B, d_in]`` the layer's input (all leading axes folded into B).
      delta: ``[K, B, d_out]`` task k's cotangent of the layer's output.
      method: ``'gram'`` (the form above), ``'rows'`` (``R_k = x^T delta_k``, then ``R R^T``) or
        ``'auto'`` (the cheaper in flops, :func:`choose_method`).

    Returns:
      ``[K, K]``.
    """
    if x.ndim != 2 or delta.ndim != 3 or delta.shape[1] != x.shape[0]:
        raise ValueError(
            f"dense_kernel_gramian: x must be [B, d_in] and delta [K, B, d_out]; got {x.shape}, {delta.shape}"
        )
    x = x.astype(delta.dtype)
    k, b, d_out = delta.shape
    if choose_method(b, x.shape[1], d_out, k, method) == GRAM:
        return _paired(x @ x.T, delta)
    rows = jnp.einsum("bi,kbo->kio", x, delta).reshape(k, -1)
    return rows @ rows.T


def bias_gramian(delta: Array) -> Array:
    """Gramian block of a bias added to every position: ``G_kl = (sum_b delta_{k,b}) . (sum_b delta_{l,b})``.

    Args:
      delta: ``[K, B, d_out]`` (leading axes of the output folded into B).
    """
    s = jnp.sum(delta, axis=1)
    return s @ s.T


def embedding_gramian(ids: Array, delta: Array, num_embeddings: int, method: str = AUTO) -> Array:
    """Gramian block of an embedding table read as ``y_b = E[ids_b]``.

    The gradient of E scatters ``delta_{k,b}`` into row ``ids_b``, so the dense form holds with
    ``x_b . x_b' = [ids_b == ids_b']``. Negative ids count from the end and ids outside
    ``[-V, V)`` read nothing (``jnp.take``'s default, which ``nn.Embed`` uses), so they add nothing.

    Args:
      ids: ``[B]`` integer ids (leading axes folded into B).
      delta: ``[K, B, features]``.
      num_embeddings: V, the number of rows of E.
      method: as in :func:`dense_kernel_gramian` (rows: a ``[K, V, features]`` scatter).
    """
    v = num_embeddings
    ids = ids.reshape(-1)
    valid = (ids >= -v) & (ids < v)
    ids = jnp.where(ids < 0, ids + v, ids)
    k, b, f = delta.shape
    delta = jnp.where(valid[None, :, None], delta, 0)
    gram_cost = b * b + k * b * b * f + k * k * b * f
    rows_cost = k * b * f + k * k * v * f
    chosen = method if method != AUTO else (GRAM if gram_cost <= rows_cost else ROWS)
    if chosen == GRAM:
        same = (ids[:, None] == ids[None, :]).astype(delta.dtype)
        return _paired(same, delta)
    safe = jnp.where(valid, ids, 0)
    rows = jnp.zeros((k, v, f), delta.dtype).at[:, safe].add(delta).reshape(k, -1)
    return rows @ rows.T


def vjp_gramian(layer_fn: Callable, params: PyTree, args: tuple, delta: Array, chunk_size: int = 0) -> Array:
    """Gramian block of any layer from its own rows: ``R_k = d<layer_fn(params, *args), delta_k>/d params``.

    One forward pass of the layer alone at its recorded inputs, then the K vjps (one ``vmap``, or
    chunks of ``chunk_size``), ``G = sum_leaf R R^T``; R lives only inside this function, so the
    peak is K x (this layer's size).

    Args:
      layer_fn: ``(params, *args) -> output``, the layer's own function.
      params: the layer's params.
      args: its recorded inputs.
      delta: ``[K, *output.shape]`` per-task output cotangents.
      chunk_size: 0 for one ``vmap`` over K, else chunks of that many rows.
    """
    out, pullback = jax.vjp(lambda p: layer_fn(p, *args), params)
    if delta.shape[1:] != out.shape:
        raise ValueError(f"vjp_gramian: delta {delta.shape} does not match [K, *output] with output {out.shape}")
    rows = _map_rows(lambda d: pullback(d.astype(out.dtype))[0], delta, chunk_size)
    return rows_gramian(rows)


def _ones_like_rows(k: int, dtype) -> Array:
    return jnp.eye(k, dtype=dtype)


def gramian_from_taps(
    fn: Callable[[PyTree, PyTree, PyTree], tuple[Array, tuple[Mapping[str, Any], Any]]],
    rowed: PyTree,
    tapped: Mapping[str, PyTree],
    perturbations: Mapping[str, Array],
    rules: Mapping[str, Rule],
    *,
    rowed_shared: Optional[PyTree] = None,
    chunk_size: int = 0,
) -> tuple[Array, Array, Callable[[Array], tuple[PyTree, PyTree]], Any]:
    """The task losses, their Gramian over the shared params, and the weighted backward pass.

    Args:
      fn: ``(rowed, tapped, perturbations) -> (losses [K], (records, aux))``: the task losses of a
        model in which every tapped layer ``name`` computes its output from ``tapped[name]`` and
        adds ``perturbations[name]`` (zeros) to it, recording ``records[name]`` (its input) for
        its rule. ``tapped[name]`` must be read by nothing else.
      rowed: the params outside the tapped layers (any pytree).
      tapped: ``{name: layer params}`` (all shared).
      perturbations: ``{name: zeros shaped like the layer's output}``.
      rules: ``{name: (record, delta [K, *out], tapped[name]) -> [K, K]}``, e.g. built on
        :func:`dense_kernel_gramian` / :func:`bias_gramian` / :func:`vjp_gramian`.
      rowed_shared: a pytree of bools like ``rowed``: True where the leaf is shared (default: all).
        Task-specific leaves add nothing to G and get the plain sum of the task gradients in the
        update (Sener & Koltun 2018, Algorithm 2).
      chunk_size: 0: one ``vmap`` over the K one-hot cotangents; c >= 1: chunks of c (less memory
        for the backward passes' intermediates; the output cotangents of the tapped layers are
        still held for all K).

    Returns:
      ``(losses, gramian [K, K], backward, aux)``: ``backward(weights [K]) -> (rowed_grads,
      tapped_grads)``, with ``sum_k w_k grad L_k`` for the shared params (``w^T J``) and
      ``sum_k grad L_k`` for the task-specific ones, from one forward pass (this one) and one
      backward pass (two, batched, when some rowed params are task-specific).
    """
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0, got {chunk_size}")
    missing = sorted(set(tapped) ^ set(rules)) + sorted(set(tapped) ^ set(perturbations))
    if missing:
        raise ValueError(
            f"gramian_from_taps: tapped, perturbations and rules must name the same layers; differ on {missing}"
        )
    if rowed_shared is None:
        rowed_shared = jax.tree.map(lambda _: True, rowed)
    mask_leaves = jax.tree.leaves(rowed_shared)
    losses, vjp_fn, (records, aux) = jax.vjp(fn, rowed, tapped, perturbations, has_aux=True)
    if losses.ndim != 1:
        raise ValueError(f"gramian_from_taps: fn must return the [K] task losses first; got shape {losses.shape}")
    k = losses.shape[0]

    def one(cot):
        g_rowed, _, deltas = vjp_fn(cot)
        shared_rows = [g for g, m in zip(jax.tree.leaves(g_rowed), mask_leaves) if m]
        return shared_rows, deltas

    rows, deltas = _map_rows(one, _ones_like_rows(k, losses.dtype), chunk_size)
    gram = jnp.zeros((k, k), losses.dtype)
    if rows:
        gram = gram + rows_gramian(rows)
    for name, rule in rules.items():
        gram = gram + rule(records[name], deltas[name], tapped[name]).astype(losses.dtype)

    any_specific = not all(mask_leaves)

    def backward(weights: Array) -> tuple[PyTree, PyTree]:
        w = jnp.asarray(weights, losses.dtype)
        if w.shape != (k,):
            raise ValueError(f"backward: weights must have shape ({k},), got {w.shape}")
        if not any_specific:
            g_rowed, g_tapped, _ = vjp_fn(w)
            return g_rowed, g_tapped
        # Shared params: w^T J; task-specific params: the plain sum (cotangent ones). One batched pass.
        both_rowed, both_tapped, _ = jax.vmap(vjp_fn)(jnp.stack([w, jnp.ones_like(w)]))
        leaves, treedef = jax.tree.flatten(both_rowed)
        g_rowed = jax.tree.unflatten(treedef, [g[0] if m else g[1] for g, m in zip(leaves, mask_leaves)])
        return g_rowed, jax.tree.map(lambda g: g[0], both_tapped)

    return losses, gram, backward, aux


def fold_leading(x: Array, trailing: int) -> Array:
    """``[..., *t]`` -> ``[prod(...), prod(t)]`` with ``trailing`` = len(t)."""
    lead = x.shape[: x.ndim - trailing]
    return x.reshape(math.prod(lead), math.prod(x.shape[x.ndim - trailing :]))
