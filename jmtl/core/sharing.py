"""Which params are shared: the part of the params tree whose per-task gradients a weighting scheme
balances. Everything else is task-specific and takes the sum of the task gradients, which for a
param read by one task only is that task's own gradient (Sener & Koltun 2018, Algorithm 2).

Two ways to say it:

* a top-level key (default ``'shared'``, the vocabulary of :mod:`jmtl.models`): ``params[key]``;
* a predicate on each leaf's path (``jax.tree_util.keystr``, e.g. ``"['encoder']['Dense_0']['kernel']"``),
  for models whose shared part is spread over the tree or named otherwise.

A model with nothing shared (independent towers) declares it with a class attribute
``no_shared_params = True``; any other model whose selector selects nothing is refused by the train
step when the weighting scheme needs per-task gradients (it would silently train the plain sum).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Union

import jax

PyTree = Any
DEFAULT_SHARED_KEY = "shared"
Selector = Union[str, Callable[[str], bool]]


@dataclasses.dataclass(frozen=True)
class Sharing:
    """Splits a params tree into its shared and task-specific parts and joins them again.

    Args:
      select: a top-level key of the params dict (default ``'shared'``), or a predicate
        ``path -> bool`` on each leaf's ``jax.tree_util.keystr`` path.
    """

    select: Selector = DEFAULT_SHARED_KEY

    def __post_init__(self):
        if not (isinstance(self.select, str) or callable(self.select)):
            raise TypeError(
                f"shared must be a top-level params key (str) or a predicate on the leaf path, got {self.select!r}"
            )

    @property
    def by_key(self) -> bool:
        return isinstance(self.select, str)

    def split(self, params: PyTree) -> tuple[PyTree, PyTree]:
        """``params -> (shared, rest)``. With a predicate both are the params tree with the other
        part's leaves replaced by ``None`` (an empty subtree to JAX), so :meth:`merge` can join them."""
        if self.by_key:
            if not isinstance(params, dict):
                raise TypeError(
                    f"the params must be a dict to select the shared part by key {self.select!r}; got "
                    f"{type(params).__name__}. Pass a predicate on the param path as `shared` instead."
                )
            return params.get(self.select, {}), {k: v for k, v in params.items() if k != self.select}
        mask = self.mask(params)
        shared = jax.tree.map(lambda x, m: x if m else None, params, mask)
        rest = jax.tree.map(lambda x, m: None if m else x, params, mask)
        return shared, rest

    def merge(self, shared: PyTree, rest: PyTree) -> PyTree:
        """The inverse of :meth:`split`."""
        if self.by_key:
            return {**rest, self.select: shared}
        return jax.tree.map(lambda a, b: b if a is None else a, shared, rest, is_leaf=lambda x: x is None)

    def mask(self, params: PyTree) -> PyTree:
        """A pytree of bools like ``params``: True where the leaf is shared."""
        if self.by_key:
            return {k: jax.tree.map(lambda _: k == self.select, v) for k, v in params.items()}
        paths = jax.tree_util.tree_flatten_with_path(params)
        flags = [bool(self.select(jax.tree_util.keystr(p))) for p, _ in paths[0]]
        return jax.tree.unflatten(paths[1], flags)

    def describe(self) -> str:
        return f"params[{self.select!r}]" if self.by_key else "the leaves the `shared` predicate selects"


def require_shared(shared: PyTree, params: PyTree, sharing: Sharing, scheme: str = "the weighting scheme") -> None:
    """Raises a ``ValueError`` naming the fix when a gradient scheme finds no shared params (it would
    otherwise train the plain sum of the task gradients without a word)."""
    if jax.tree.leaves(shared):
        return
    keys = list(params) if isinstance(params, dict) else type(params).__name__
    raise ValueError(
        f"{scheme} needs per-task gradients of the shared params, but {sharing.describe()} holds no params "
        f"(top-level params keys: {keys}). Fix: name the shared module `shared` (e.g. `self.shared = MyEncoder()`), "
        "or tell the step which params are shared (StepConfig(shared='encoder') or a predicate on the param path), "
        "or, for a model with nothing shared, declare `no_shared_params = True` on its class."
    )


def as_sharing(shared: Union[Selector, Sharing, None]) -> Sharing:
    """``None`` / a key / a predicate / a :class:`Sharing` -> a :class:`Sharing`."""
    if shared is None:
        return Sharing()
    if isinstance(shared, Sharing):
        return shared
    return Sharing(shared)
