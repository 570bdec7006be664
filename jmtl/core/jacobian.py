"""Per-task gradients as Jacobian rows, and the collectives every gradient path shares.

Everything here is local to one device unless it says otherwise: gradients are taken of the local
(per-device) losses w.r.t. a device-varying copy of the params (:func:`to_varying`) and averaged
with an explicit :func:`pmean`. Under ``shard_map`` with ``check_vma=True`` differentiating the
replicated params directly would insert an implicit ``psum``, and the explicit mean would then
over-count by the device count; with the varying copy the same code is right under ``shard_map``,
``pmap`` and on one device (``axis_name=None``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any


def to_varying(tree: PyTree, axis_name: Optional[str]) -> PyTree:
    """Marks replicated values as device-varying so that their gradients stay local."""
    if axis_name is None:
        return tree
    return jax.tree.map(lambda x: jax.lax.pcast(x, axis_name, to="varying"), tree)


def pmean(tree: PyTree, axis_name: Optional[str]) -> PyTree:
    """Mean over the data-parallel axis (identity on one device)."""
    if axis_name is None:
        return tree
    return jax.lax.pmean(tree, axis_name)


def gather_invariant(a: Array, axis_name: str, axis: int = 0) -> Array:
    """Every device's ``a`` concatenated along ``axis``, the same (device-invariant) value on all devices.

    Each device writes its block into zeros and a ``psum`` adds them. ``jax.lax.all_gather`` would be
    shorter, but its result is typed device-*varying* under ``shard_map(check_vma=True)``, so anything
    computed from it (a scheme's weights, its state, the step's metrics) could not leave the step
    replicated (``out_specs=P()``): the step fails to trace.
    """
    n, i = jax.lax.axis_size(axis_name), jax.lax.axis_index(axis_name)
    blocks = jnp.zeros((n,) + a.shape, a.dtype).at[i].set(a)
    blocks = jnp.moveaxis(jax.lax.psum(blocks, axis_name), 0, axis)  # device blocks next to `axis`
    return blocks.reshape(a.shape[:axis] + (n * a.shape[axis],) + a.shape[axis + 1 :])


def shared_layout(shared: PyTree) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``(path, shape)`` of each shared leaf, in the order they are laid out along the Jacobian's d axis."""
    leaves = jax.tree_util.tree_flatten_with_path(shared)[0]
    return tuple((jax.tree_util.keystr(path), tuple(leaf.shape)) for path, leaf in leaves)


def flatten_rows(tree: PyTree) -> Array:
    """``[K, ...]`` leaves -> ``[K, d]`` (the per-task gradients of the shared params as rows)."""
    leaves = jax.tree.leaves(tree)
    k = leaves[0].shape[0]
    return jnp.concatenate([x.reshape(k, -1) for x in leaves], axis=1)


def unflatten_like(vec: Array, like: PyTree) -> PyTree:
    """``[d]`` -> pytree with the structure and shapes of ``like``."""
    leaves, treedef = jax.tree.flatten(like)
    out, offset = [], 0
    for leaf in leaves:
        n = math.prod(leaf.shape)
        out.append(vec[offset : offset + n].reshape(leaf.shape).astype(leaf.dtype))
        offset += n
    return jax.tree.unflatten(treedef, out)


def map_rows(fn: Callable, xs: PyTree, chunk_size: int) -> PyTree:
    """``fn`` over the leading axis of ``xs``: one ``vmap`` (``chunk_size`` 0), or chunks of
    ``chunk_size`` rows in an in-graph loop (faster on CPU, less memory; see :func:`per_task_gradients`)."""
    if chunk_size == 0:
        return jax.vmap(fn)(xs)
    # batch_size=1 would vmap fn over one row; a plain scan is faster (see per_task_gradients).
    return jax.lax.map(fn, xs, batch_size=chunk_size if chunk_size > 1 else None)


def per_task_gradients(
    vjp_fn: Callable,
    k: int,
    dtype,
    split: Callable[[tuple], tuple[PyTree, PyTree]],
    summed_like: PyTree,
    *,
    chunk_size: int = 0,
    axis_name: Optional[str] = None,
) -> tuple[Array, PyTree]:
    """The K per-task gradients of one ``vjp`` closure (local: no collective here).

    Args:
      vjp_fn: maps a ``[K]`` cotangent of the task losses to its tuple of primal cotangents.
      k: the number of tasks K.
      dtype: dtype of the cotangents (the losses' dtype).
      split: ``split(cotangents) -> (rowed, summed)`` picks the part kept as Jacobian rows (the
        shared params, or the shared representation) and the part of which only the sum over tasks
        is needed (heads and other task-specific params, where the sum of the rows is each head's
        own task's gradient).
      summed_like: a pytree with the structure, shapes and dtypes of the summed part.
      chunk_size: 0 (or >= K): one ``vmap`` over the K one-hot cotangents. ``c`` in ``[1, K)``: a
        ``lax.scan`` over ceil(K/c) chunks, each a ``vmap`` over c cotangents (the last chunk padded
        with zero cotangents whose rows are dropped); the summed part is the scan's carry, so only c
        backward passes' intermediates and one copy of the heads' gradient are alive at a time.
      axis_name: the data-parallel axis (the cotangents are made device-varying), or None.

    Returns:
      ``(rows [K, n], summed)``: ``rows[k]`` is task k's gradient of the rowed part, flattened like
      :func:`flatten_rows`; ``summed`` is ``sum_k`` of the task gradients of the summed part.
    """
    if chunk_size < 0:
        raise ValueError(f"jacobian_chunk_size must be >= 0, got {chunk_size}")
    if chunk_size == 0 or chunk_size >= k:
        rowed, summed = split(jax.vmap(vjp_fn)(to_varying(jnp.eye(k, dtype=dtype), axis_name)))
        return flatten_rows(rowed), jax.tree.map(lambda g: jnp.sum(g, axis=0), summed)

    c = chunk_size
    n_chunks = -(-k // c)
    padded = n_chunks * c
    cots = jnp.concatenate([jnp.eye(k, dtype=dtype), jnp.zeros((padded - k, k), dtype)]).reshape(n_chunks, c, k)
    cots = to_varying(cots, axis_name)
    valid = (jnp.arange(padded) < k).reshape(n_chunks, c)

    def chunk(cot):
        if c == 1:
            # A plain call, not a vmap of size 1: XLA:CPU runs the batched form of the convolutions'
            # backward ~25 % slower even at batch 1 (Multi-LeNet, K = 10: 0.71x the step time).
            rowed, summed = split(jax.tree.map(lambda g: g[None], vjp_fn(cot[0])))
        else:
            rowed, summed = split(jax.vmap(vjp_fn)(cot))
        return flatten_rows(rowed), summed

    # The carry is device-varying like the gradients the body adds to it.
    init = to_varying(jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), summed_like), axis_name)

    def body(acc, xs):
        cot, ok = xs
        rows, summed = chunk(cot)
        if padded != k:
            # A zero cotangent gives exact zeros unless the forward pass holds inf/NaN (0 * NaN): the
            # padded rows are masked, not trusted to be zero.
            summed = jax.tree.map(lambda g: jnp.where(ok.reshape((c,) + (1,) * (g.ndim - 1)), g, 0), summed)
        acc = jax.tree.map(lambda a, g: a + jnp.sum(g, axis=0), acc, summed)
        return acc, rows

    summed, rows = jax.lax.scan(body, init, (cots, valid))
    return rows.reshape(padded, -1)[:k], summed
