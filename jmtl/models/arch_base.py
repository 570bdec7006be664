"""Pieces every architecture of the zoo shares: named containers, the heads with the optional
task-relation matrix, and the error for architectures without one shared representation.

The params contract (see ``jmtl/training/step.py``): ``params['shared']`` holds exactly the
parameters that receive gradients from several tasks' losses; every other top-level subtree is
``{task_name: ...}`` (task-specific: its gradient comes from that task's loss only) except
``params['relation']``, the K x K matrix W whose row i only reaches task i.

One exception, inherited from hard sharing's relation matrix: h_j (a head's ``represent`` layers)
feeds z_i = sum_j W_ij h_j of every task i with W_ij != 0, so once W leaves the identity those
layers of ``params['tasks'][j]`` receive other tasks' gradients too (the step sums them). At W = I
(the initialisation) the contract holds exactly.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmtl.models.mtl import RELATION, TaskHeads


class Bag(nn.Module):
    """Named submodules: their params nest as ``{name: params}`` under the bag's own name.

    ``bag[name]`` is the bound member, so a parent can run members of nested bags in any order
    (architectures interleave shared and task-specific pieces while the params tree groups them by
    who receives gradients).
    """

    entries: tuple[tuple[str, nn.Module], ...] = ()

    def setup(self):
        for name, module in self.entries:
            # setattr in setup registers the clone under ``name``: params[...][name].
            setattr(self, name, module.clone())

    def __getitem__(self, name: str) -> nn.Module:
        return getattr(self, name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.entries)


def bag(tree: Mapping[str, Any]) -> Bag:
    """Nested dict of modules -> nested :class:`Bag` (dicts become bags, modules stay)."""
    return Bag(entries=tuple((k, bag(v) if isinstance(v, Mapping) else v) for k, v in tree.items()))


def relation_param(module: nn.Module, num_tasks: int) -> jax.Array:
    """The K x K task-relation matrix W (identity at init), stored as ``params['relation']``."""
    return module.param(RELATION, nn.initializers.constant(jnp.eye(num_tasks)), (num_tasks, num_tasks))


def heads_forward(
    heads: TaskHeads, features: Sequence[jax.Array], relation: jax.Array | None, *, train: bool
) -> dict[str, jax.Array]:
    """Task k's head on ``features[k]``: h_k = represent_k(f_k), z_i = sum_j W_ij h_j, out_i(z_i).

    Same mixing as :class:`jmtl.models.mtl.MultiTaskModel` (there every head reads the one shared
    representation; here each head reads its own task's features).
    """
    names = heads.names
    hs = [getattr(heads, n).represent(f, train=train) for n, f in zip(names, features)]
    if relation is not None:
        sizes = {h.shape for h in hs}
        if len(sizes) != 1:
            raise ValueError(f"the task-relation matrix needs equal task representation shapes, got {sizes}")
        stacked = jnp.stack(hs)  # [K, B, H]
        hs = list(jnp.einsum("ij,jbh->ibh", relation.astype(stacked.dtype), stacked))
    return {n: getattr(heads, n).output(h) for n, h in zip(names, hs)}


def no_shared_representation(arch: str, why: str) -> ValueError:
    return ValueError(
        f"architecture {arch!r} has no single shared representation ({why}), so "
        "jacobian_mode='representation' (MGDA-UB) does not apply to it; use jacobian_mode='params'"
    )


def per_task(names: Sequence[str], make) -> dict[str, Any]:
    """``{name: make(name)}`` in task order."""
    return {n: make(n) for n in names}
