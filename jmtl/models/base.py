"""What every multi-task model of jmtl shares: the params-tree vocabulary, the task heads with the
optional task-relation matrix, and the model interface the train step reads.

This module imports nothing else from :mod:`jmtl`; every architecture builds on it
(:mod:`jmtl.models.architectures`, :mod:`jmtl.models.moe`), the regularizers read its vocabulary
and :mod:`jmtl.models.mtl` re-exports it, so the models package has no import cycle.

Params tree
-----------
``params[SHARED]`` (``'shared'``) holds exactly the parameters that receive gradients from several
tasks' losses (the gradient weighting schemes take per-task Jacobians over it). Every other
top-level subtree is ``{task_name: ...}``: task-specific, its gradient comes from that task's loss
only (``params[TASKS]`` (``'tasks'``) holds the heads; some architectures add towers, gates or
experts keyed the same way), except ``params[RELATION]`` (``'relation'``), the K x K task-relation
matrix W whose row i only reaches task i.

One exception, inherited from hard sharing's relation matrix: h_j (a head's ``represent`` layers)
feeds z_i = sum_j W_ij h_j of every task i with W_ij != 0, so once W leaves the identity those
layers of ``params['tasks'][j]`` receive other tasks' gradients too (the step sums them). At W = I
(the initialisation) the contract holds exactly.

The model interface
-------------------
Every model is a Linen module with ``__call__(x, *, train) -> {task_name: output}``. Models
derived from :class:`MultiTaskBase` (all of :mod:`jmtl.models.architectures`) also have:

* ``encode(x, *, train) -> rep``: the shared representation, computed from ``params['shared']``
  alone; every task output depends on ``params['shared']`` only through ``rep``. Architectures
  without one raise the ``ValueError`` of :func:`no_shared_representation`
  (``jacobian_mode='representation'`` then does not apply).
* ``decode(rep, *, train) -> {task_name: output}``: the rest of the model, reading every top-level
  subtree but ``'shared'``, with ``decode(encode(x)) == __call__(x)``.
* ``separable_heads`` (a plain Python ``bool`` property, readable on an unbound module, i.e.
  before ``init``): True when task k's output depends on ``rep`` only through task k's own
  task-specific path (head k, gate k, ...). Then
* ``decode_split(reps, *, train) -> {task_name: output}`` takes K arrays, one copy of ``rep`` per
  task in task order; task k's output reads ``reps[k]`` alone and
  ``decode_split([rep] * K) == decode(rep)``. One backward pass of ``sum_k L_k`` through it gives
  all K per-task cotangents of the representation (``dL_k / d reps[k]``), where :meth:`decode`
  needs K backward passes. Models with ``separable_heads == False`` raise ``ValueError`` here.

* ``no_shared_params`` (a ``bool`` property, readable before ``init``): True when the model has
  no ``params['shared']`` at all (independent towers): every param then has one task's gradient
  and a gradient weighting scheme has nothing to balance.

The train step reads these with defaults (``getattr(model, 'separable_heads', False)``,
``getattr(model, 'no_shared_params', False)``, ``hasattr(model, 'encode')``), so any Linen module
with ``__call__(x, *, train)`` can be trained, and a user's model opts in to the cheaper paths by
implementing this interface.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

SHARED = "shared"
TASKS = "tasks"
RELATION = "relation"


# ----------------------------------------------------------------------------- containers


class TaskHeads(nn.Module):
    """One head per task, each registered under its task's name (``params['tasks'][name]``).

    A head has ``represent(x, *, train) -> h`` (the task-specific representation) and
    ``output(z) -> prediction`` (the last layer); see :mod:`jmtl.models.heads`.
    """

    names: tuple[str, ...]
    heads: tuple[nn.Module, ...]

    def setup(self):
        for name, head in zip(self.names, self.heads):
            # setattr registers the submodule under the task's name: params['tasks'][name].
            setattr(self, name, head.clone())

    def represent(self, x: Array, *, train: bool) -> list[Array]:
        return [getattr(self, n).represent(x, train=train) for n in self.names]

    def output(self, zs: Sequence[Array]) -> dict[str, Array]:
        return {n: getattr(self, n).output(z) for n, z in zip(self.names, zs)}

    def __call__(self, x, *, train: bool = False):
        return self.output(self.represent(x, train=train))


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


def per_task(names: Sequence[str], make) -> dict[str, Any]:
    """``{name: make(name)}`` in task order."""
    return {n: make(n) for n in names}


# ----------------------------------------------------------------------------- task mixing


def relation_param(module: nn.Module, num_tasks: int) -> Array:
    """The K x K task-relation matrix W (identity at init), stored as ``params['relation']``."""
    return module.param(RELATION, nn.initializers.constant(jnp.eye(num_tasks)), (num_tasks, num_tasks))


def relation_penalty(alpha: float):
    """``params -> alpha * |W|_F^2`` on the task-relation matrix ``params['relation']`` (a penalty for
    :class:`jmtl.training.step.StepConfig`'s ``penalties``; its gradient ``2 alpha W`` joins the update
    outside the weighting scheme)."""

    def penalty(params) -> Array:
        if not isinstance(params, dict) or RELATION not in params:
            raise ValueError(
                f"the relation penalty needs the task-relation matrix params[{RELATION!r}]; the model has none "
                "(build it with relation=True, or set relation_alpha=0)"
            )
        return alpha * jnp.sum(params[RELATION] ** 2)

    return penalty


def mix_tasks(weights: Array, xs: Sequence[Array]) -> list[Array]:
    """``y_i = sum_j weights_ij x_j`` over the K tasks' arrays (all of one shape).

    The task-relation matrix (z_i = sum_j W_ij h_j) and the cross-stitch unit (Misra et al. 2016,
    eq. 1: x~_i = sum_j alpha_ij x_j) are both this product. ``weights`` is cast to the arrays'
    dtype (mixed precision).

    Args:
      weights: ``[K, K]`` mixing matrix, row i = the weights of task i's output.
      xs: K arrays of one shape (``[B, ...]``).
    """
    shapes = {x.shape for x in xs}
    if len(shapes) != 1:
        raise ValueError(f"mixing task representations needs equal shapes, got {sorted(shapes)}")
    if weights.shape != (len(xs), len(xs)):
        raise ValueError(f"mixing {len(xs)} task arrays needs a [{len(xs)}, {len(xs)}] matrix, got {weights.shape}")
    stacked = jnp.stack(xs)  # [K, B, ...]
    mixed = jnp.einsum("ij,j...->i...", weights.astype(stacked.dtype), stacked)
    # jnp.unstack, not list(mixed): list() indexes mixed[i] K times, whose backward pads each
    # [B, ...] cotangent to a full [K, B, ...] zero array and sums the K of them, O(K^2 B H) work and
    # K temporaries (at K = 139, batch 512: 350 ms of a step whose model takes 20 ms without W; the
    # full batch of 10,321 grew to 8 GB). unstack's backward is one concatenation.
    # results/school/relation_step_time.md.
    return list(jnp.unstack(mixed))


def heads_forward(
    heads: TaskHeads, features: Sequence[Array], relation: Optional[Array], *, train: bool
) -> dict[str, Array]:
    """Task k's head on ``features[k]``: h_k = represent_k(f_k), z_i = sum_j W_ij h_j, out_i(z_i).

    Args:
      heads: the task heads.
      features: K inputs, one per head in task order (hard sharing passes the shared
        representation K times).
      relation: the ``[K, K]`` task-relation matrix W, or ``None`` (no mixing: z_k = h_k).
      train: training mode (dropout in the heads).
    """
    names = heads.names
    hs = [getattr(heads, n).represent(f, train=train) for n, f in zip(names, features)]
    if relation is not None:
        if len({h.shape for h in hs}) != 1:
            raise ValueError(
                f"the task-relation matrix needs equal task representation shapes, got {sorted({h.shape for h in hs})}"
            )
        hs = mix_tasks(relation, hs)
    return {n: getattr(heads, n).output(h) for n, h in zip(names, hs)}


def no_shared_representation(arch: str, why: str) -> ValueError:
    return ValueError(
        f"architecture {arch!r} has no single shared representation ({why}), so "
        "jacobian_mode='representation' (MGDA-UB) does not apply to it; use jacobian_mode='params'"
    )


# ----------------------------------------------------------------------------- the base class


class MultiTaskBase(nn.Module):
    """The model interface of the module docstring, with the parts every architecture repeats.

    A subclass declares the dataclass fields ``tasks: TaskHeads`` and ``relation: bool = False``
    and an ``arch`` name (a field or a class attribute). It inherits:

    * ``setup``: creates W (``params['relation']``, identity at init) when ``relation`` is set
      (call ``super().setup()`` when overriding);
    * :meth:`task_outputs`: the heads on per-task features, mixed by W when present;
    * ``encode`` / ``decode`` / ``decode_split`` that refuse (override them where the
      architecture has a shared representation), with ``no_representation_reason`` in the
      message, and ``separable_heads = False``.
    """

    # Why the architecture has no single shared representation (the error of encode / decode).
    no_representation_reason: ClassVar[str] = "the tasks do not read one common representation"

    def setup(self):
        if self.relation:
            self.relation_matrix = relation_param(self, len(self.tasks.names))

    @property
    def separable_heads(self) -> bool:
        """Whether task k's output depends on the shared representation only through task k's own
        path, so :meth:`decode_split` exists (see the module docstring). Readable before ``init``."""
        return False

    @property
    def no_shared_params(self) -> bool:
        """Whether the model has no ``params['shared']`` (nothing for a gradient scheme to balance)."""
        return False

    def task_outputs(self, features: Sequence[Array], *, train: bool) -> dict[str, Array]:
        """Head k on ``features[k]``, mixed by W when ``relation`` is set (:func:`heads_forward`)."""
        return heads_forward(self.tasks, features, self.relation_matrix if self.relation else None, train=train)

    def encode(self, x: Array, *, train: bool = False) -> Array:
        raise no_shared_representation(self.arch, self.no_representation_reason)

    def decode(self, rep: Array, *, train: bool = False) -> dict[str, Array]:
        raise no_shared_representation(self.arch, self.no_representation_reason)

    def decode_split(self, reps: Sequence[Array], *, train: bool = False) -> dict[str, Array]:
        raise self._not_separable()

    def _not_separable(self) -> ValueError:
        with_w = " with the relation matrix" if self.relation else ""
        return ValueError(
            f"decode_split: architecture {self.arch!r}{with_w} has no separable heads (separable_heads is "
            "False: some task output depends on more than its own copy of the representation); use decode"
        )

    def _check_split(self, reps: Sequence[Array]) -> None:
        """The common checks of a ``decode_split`` implementation."""
        if not self.separable_heads:
            raise self._not_separable()
        if len(reps) != len(self.tasks.names):
            raise ValueError(
                f"decode_split needs {len(self.tasks.names)} representations (one per task), got {len(reps)}"
            )
