"""Hard-parameter-sharing multi-task model with an optional learnable task-relation matrix.

Params layout (the shared / task-specific split is visible in the tree)::

    {'shared':   encoder params,                 # receives gradients from every task
     'tasks':    {task_name: head params, ...},  # task-specific
     'relation': [K, K] W (only with relation=True)}
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jmtl.models import encoders, heads as heads_lib
from jmtl.tasks import Task

SHARED = "shared"
TASKS = "tasks"
RELATION = "relation"


class TaskHeads(nn.Module):
    """One head per task, each registered under its task's name."""

    names: tuple[str, ...]
    heads: tuple[nn.Module, ...]

    def setup(self):
        for name, head in zip(self.names, self.heads):
            # setattr registers the submodule under the task's name: params['tasks'][name].
            setattr(self, name, head.clone())

    def represent(self, x: jax.Array, *, train: bool) -> list[jax.Array]:
        return [getattr(self, n).represent(x, train=train) for n in self.names]

    def output(self, zs: Sequence[jax.Array]) -> dict[str, jax.Array]:
        return {n: getattr(self, n).output(z) for n, z in zip(self.names, zs)}

    def __call__(self, x, *, train: bool = False):
        return self.output(self.represent(x, train=train))


class MultiTaskModel(nn.Module):
    """Shared encoder -> per-task representations h_k -> (relation mixing) -> per-task outputs.

    With ``relation=True`` a learnable K x K matrix W (initialised to the identity) mixes the task
    representations before each output layer: ``z_i = sum_j W_ij h_j``. Its Frobenius penalty
    ``alpha |W|_F^2`` is added to the objective by the train step.
    """

    shared: nn.Module
    tasks: TaskHeads
    relation: bool = False

    def setup(self):
        if self.relation:
            k = len(self.tasks.names)
            self.relation_matrix = self.param(RELATION, nn.initializers.constant(jnp.eye(k)), (k, k))

    def encode(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """The shared representation (input of every head)."""
        return self.shared(x, train=train)

    def decode(self, rep: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Task outputs from the shared representation."""
        hs = self.tasks.represent(rep, train=train)
        if self.relation:
            sizes = {h.shape for h in hs}
            if len(sizes) != 1:
                raise ValueError(f"the task-relation matrix needs equal task representation shapes, got {sizes}")
            stacked = jnp.stack(hs)  # [K, B, H]
            mixed = jnp.einsum("ij,jbh->ibh", self.relation_matrix.astype(stacked.dtype), stacked)
            hs = list(mixed)
        return self.tasks.output(hs)

    def decode_split(self, reps: Sequence[jax.Array], *, train: bool = False) -> dict[str, jax.Array]:
        """Like :meth:`decode`, with task k's head reading its own copy ``reps[k]`` of the shared
        representation. Without the relation matrix task k's output depends on ``reps[k]`` alone, so
        one backward pass of ``sum_k L_k`` gives every task's gradient w.r.t. the representation
        (the train step's representation-level Jacobian) instead of K backward passes."""
        if self.relation:
            raise ValueError("decode_split: with the relation matrix every output depends on every copy")
        if len(reps) != len(self.tasks.names):
            raise ValueError(f"decode_split needs {len(self.tasks.names)} representations, got {len(reps)}")
        heads = [getattr(self.tasks, n) for n in self.tasks.names]
        return {n: h.output(h.represent(r, train=train)) for n, h, r in zip(self.tasks.names, heads, reps)}

    def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        return self.decode(self.encode(x, train=train), train=train)


def build(
    tasks: Sequence[Task],
    *,
    encoder: str,
    encoder_kwargs: Mapping[str, Any] | None = None,
    head_kwargs: Mapping[str, Any] | None = None,
    relation: bool = False,
    arch: str = "hps",
    arch_kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """A model for ``tasks``: by default (``arch='hps'``) hard sharing, one encoder and one head per
    task (kind from the task). Other ``arch`` values and their ``arch_kwargs``:
    :mod:`jmtl.models.architectures`. Regularizer keys of ``arch_kwargs`` (soft-sharing and MTRL
    penalties) are not model options and are ignored here: see :mod:`jmtl.models.regularizers`."""
    enc = encoders.get(encoder, **dict(encoder_kwargs or {}))
    head_kwargs = dict(head_kwargs or {})
    accepted = set().union(*(set(c.__dataclass_fields__) for c in heads_lib.HEADS.values()))
    unknown = set(head_kwargs) - accepted - {"num_outputs"}
    if unknown:
        raise ValueError(f"unknown head argument(s) {', '.join(sorted(unknown))}")
    built = []
    for t in tasks:
        cls = heads_lib.HEADS[t.kind]
        kw = {k: v for k, v in head_kwargs.items() if k in cls.__dataclass_fields__}
        built.append(cls(num_outputs=t.num_outputs, **kw))
    if relation and len({h.rep_size for h in built}) != 1:
        raise ValueError("relation=True needs heads with equal representation sizes (set head_kwargs.hidden)")
    heads = TaskHeads(names=tuple(t.name for t in tasks), heads=tuple(built))
    arch_kwargs = dict(arch_kwargs or {})
    if arch == "hps" and not arch_kwargs:
        return MultiTaskModel(shared=enc, tasks=heads, relation=relation)
    from jmtl.models import architectures, regularizers  # they import this module

    model_kwargs = {k: v for k, v in arch_kwargs.items() if k not in regularizers.REGULARIZER_KEYS}
    return architectures.build(arch, encoder=enc, heads=heads, relation=relation, **model_kwargs)
