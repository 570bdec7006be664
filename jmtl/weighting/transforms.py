"""Running a scheme outside jmtl's train step: :func:`aggregate` (one call) and :func:`as_optax`.

:func:`as_optax` makes any scheme an ``optax.GradientTransformationExtraArgs`` that maps the stacked
per-task gradients to one combined gradient, so it chains with any optax optimizer::

    tx = optax.chain(jmtl.weighting.as_optax("pcgrad"), optax.adam(1e-3))
    state = tx.init(params)
    per_task = jax.jacrev(task_losses)(params)           # every leaf: [K, *leaf.shape]
    updates, state = tx.update(per_task, state, params, losses=task_losses(params))
    params = optax.apply_updates(params, updates)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from jmtl.weighting.base import BILEVEL, LOSSES, Layout, WeightingTransform, combine, init_state, inputs_from
from jmtl.weighting.registry import get

Array = jax.Array


def _resolve(name_or_transform: Union[str, WeightingTransform], hparams: dict) -> WeightingTransform:
    if isinstance(name_or_transform, str):
        return get(name_or_transform, **hparams)
    if hparams:
        raise ValueError("hyperparameters go with a scheme name; a WeightingTransform already has its own")
    return name_or_transform


def _run(
    transform: WeightingTransform,
    losses: Array,
    state: Any,
    jacobian: Array,
    *,
    params: Any,
    key: Array,
    step: Array,
    layout: Optional[Layout],
) -> tuple[Array, Any]:
    """The ``[d]`` direction of ``transform`` for ``jacobian`` (and its new state)."""
    available = dict(jacobian=jacobian, gramian=jacobian @ jacobian.T, params=params, key=key, step=step, layout=layout)
    out, state = transform.update(inputs_from(transform.requires, losses, available), state)
    return combine(out, jacobian), state


def aggregate(
    name: Union[str, WeightingTransform],
    jacobian: Array,
    losses: Optional[Array] = None,
    *,
    key: Optional[Array] = None,
    **hparams,
) -> Array:
    """One-call form for analysis and tests: the ``[d]`` direction scheme ``name`` makes of ``jacobian``.

    Fresh state, scheme params at their initial values.

    Args:
      name: a registered scheme name (or a transform, then without ``hparams``).
      jacobian: ``[K, d]`` task gradients (rows).
      losses: ``[K]`` task losses (default: ones).
      key: PRNG key of stochastic schemes (default ``jax.random.key(0)``).
      **hparams: the scheme's hyperparameters.
    """
    jacobian = jnp.asarray(jacobian)
    if jacobian.ndim != 2:
        raise ValueError(f"jacobian must be [K, d], got shape {jacobian.shape}")
    k = jacobian.shape[0]
    if losses is None:
        losses = jnp.ones((k,), jacobian.dtype)
    if key is None:
        key = jax.random.key(0)
    t = _resolve(name, hparams)
    state = init_state(t, k)
    params = t.init_params(k) if t.init_params is not None else None
    direction, _ = _run(t, losses, state, jacobian, params=params, key=key, step=jnp.zeros((), jnp.int32), layout=None)
    return direction


class WeightingOptaxState(NamedTuple):
    """State of :func:`as_optax`.

    weighting_state: the scheme's state (``None`` until the first update when ``K`` was not known at
      ``init`` and the state's shape depends on it).
    count: int32 number of updates so far (the scheme's ``step``).
    """

    weighting_state: Any
    count: Array


def _layout(tree: Any, *, leading_axis: bool) -> Layout:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return tuple(
        (jax.tree_util.keystr(path), tuple(leaf.shape[1:] if leading_axis else leaf.shape)) for path, leaf in leaves
    )


Selector = Union[str, Callable[[str], bool]]
DEFAULT_SHARED_KEY = "shared"  # as jmtl.mtl_value_and_grad and the train step


def _shared_flags(tree: Any, shared: Selector) -> list[bool]:
    """One bool per leaf of ``tree`` (``jax.tree`` order): is it a shared param?"""
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    if isinstance(shared, str):
        return [bool(p) and getattr(p[0], "key", None) == shared for p in paths]
    if callable(shared):
        return [bool(shared(jax.tree_util.keystr(p))) for p in paths]
    raise TypeError(f"shared must be a top-level params key (str) or a predicate on the leaf path, got {shared!r}")


def as_optax(
    name_or_transform: Union[str, WeightingTransform],
    *,
    num_tasks: Optional[int] = None,
    shared: Selector = DEFAULT_SHARED_KEY,
    **hparams,
) -> optax.GradientTransformationExtraArgs:
    """The scheme as an optax transformation of stacked per-task gradients.

    ``update(updates, state, params=None, *, losses, key=None, **extra)``: ``updates`` is a pytree
    whose leaves each have a leading ``K`` axis (row ``k``: task ``k``'s gradient, e.g. from
    ``jax.jacrev`` of the ``[K]`` task losses); they are flattened to the Jacobian ``J`` (``[K, d]``,
    leaves in ``jax.tree`` order), the scheme runs on it (on ``J``, ``G = J J^T`` or, for loss-level
    schemes, the losses, giving weights ``w`` and ``w @ J``), and the combined gradient comes back as
    a pytree shaped like one task's gradient (no ``K`` axis). ``losses`` (``[K]``) is required.
    ``key`` feeds stochastic schemes; by default it is ``fold_in(key(0), count)``, a fresh draw each
    step. The state holds the scheme's state and a step counter.

    Which params the scheme balances is the same rule as :func:`jmtl.mtl_value_and_grad`'s and the
    train step's: ``shared`` selects the shared leaves; a gradient scheme (Jacobian / Gramian) runs on
    their rows only, and every other leaf gets the sum of its rows (a task head: its own task's
    gradient, Sener & Koltun 2018). A loss-level scheme's weights apply to every leaf, as the
    gradient of ``sum_k w_k L_k``. A gradient scheme with no shared leaf is refused (it would train the
    plain sum); to balance the whole vector, say so: ``shared=lambda path: True``.

    Schemes with learnable parameters (``uncertainty``, ``imtl_l``, ``imtl``) and bilevel schemes need
    jmtl's train step (their parameters / look-ahead are part of the objective) and are refused.

    Args:
      name_or_transform: a registered scheme name, or a ``WeightingTransform``.
      num_tasks: ``K``. Needed at ``init`` only by schemes whose state's shape depends on ``K`` (DWA,
        Nash-MTL, ...); without it such a state is created at the first ``update`` (one re-trace
        under ``jit``; pass it when the loop carries the state through ``lax.scan``).
      shared: the shared params: a top-level key of a dict pytree (default ``'shared'``) or a
        predicate on each leaf's ``jax.tree_util.keystr`` path.
      **hparams: the scheme's hyperparameters (with a name only).
    """
    transform = _resolve(name_or_transform, hparams)
    _shared_flags({}, shared)  # type check now, not at the first update
    label = name_or_transform if isinstance(name_or_transform, str) else "this scheme"
    if transform.init_params is not None:
        raise ValueError(
            f"{label} has learnable parameters trained through jmtl's train step; as_optax cannot train them. "
            "Use jmtl.training.step.make_train_step, or a scheme without init_params."
        )
    if transform.requires == BILEVEL:
        raise ValueError(f"{label} is bilevel (needs a look-ahead on a meta batch); use jmtl's train step")

    def _k_independent(layout: Layout) -> bool:
        shapes = [jax.eval_shape(lambda k=k: init_state(transform, k, layout)) for k in (1, 2)]
        return jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1]) and all(
            a.shape == b.shape for a, b in zip(jax.tree.leaves(shapes[0]), jax.tree.leaves(shapes[1]))
        )

    balances_rows = transform.requires != LOSSES

    def _split(tree: Any) -> tuple[list[bool], Any]:
        flags = _shared_flags(tree, shared) if balances_rows else [True] * len(jax.tree.leaves(tree))
        if not any(flags):
            keys = list(tree) if isinstance(tree, dict) else type(tree).__name__
            raise ValueError(
                f"{label} balances the per-task gradients of the shared params, but shared={shared!r} selects no "
                f"leaf (top-level keys: {keys}). Fix: as_optax(..., shared='<key>') or a predicate on the leaf path; "
                "shared=lambda path: True balances every leaf"
            )
        return flags, [leaf for leaf, f in zip(jax.tree.leaves(tree), flags) if f]

    def init_fn(params: Any) -> WeightingOptaxState:
        flags = _split(params)[0]
        layout = tuple(e for e, f in zip(_layout(params, leading_axis=False), flags) if f)
        if num_tasks is not None:
            wstate = init_state(transform, num_tasks, layout)
        elif _k_independent(layout):
            wstate = init_state(transform, 1, layout)
        else:
            wstate = None
        return WeightingOptaxState(wstate, jnp.zeros((), jnp.int32))

    def update_fn(updates, state: WeightingOptaxState, params=None, *, losses=None, key=None, **extra):
        del params, extra
        if losses is None:
            raise ValueError("as_optax update needs the [K] task losses: tx.update(grads, state, params, losses=...)")
        leaves, treedef = jax.tree.flatten(updates)
        if not leaves:
            raise ValueError("as_optax got an empty gradient pytree")
        losses = jnp.asarray(losses)
        k = losses.shape[0]
        for leaf in leaves:
            if leaf.ndim < 1 or leaf.shape[0] != k:
                raise ValueError(
                    f"as_optax: every gradient leaf needs a leading axis of the K={k} tasks (one row per task "
                    f"loss), got a leaf of shape {leaf.shape}; stack per-task gradients, e.g. with jax.jacrev"
                )
        flags, shared_leaves = _split(updates)
        jacobian = jnp.concatenate([leaf.reshape(k, -1) for leaf in shared_leaves], axis=1)
        layout = tuple(e for e, f in zip(_layout(updates, leading_axis=True), flags) if f)
        wstate = state.weighting_state
        if wstate is None:
            wstate = init_state(transform, k, layout)
        if key is None:
            key = jax.random.fold_in(jax.random.key(0), state.count)
        direction, wstate = _run(
            transform,
            losses.astype(jacobian.dtype),
            wstate,
            jacobian,
            params=None,
            key=key,
            step=state.count,
            layout=layout,
        )
        pieces, start = [], 0
        for leaf, is_shared in zip(leaves, flags):
            if is_shared:
                size = leaf[0].size
                pieces.append(direction[start : start + size].reshape(leaf.shape[1:]).astype(leaf.dtype))
                start += size
            else:  # not balanced: the sum of the task rows (a head: its own task's gradient)
                pieces.append(jnp.sum(leaf, axis=0))
        return jax.tree.unflatten(treedef, pieces), WeightingOptaxState(wstate, state.count + 1)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


__all__ = ["WeightingOptaxState", "aggregate", "as_optax"]
