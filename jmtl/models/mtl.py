"""Building a multi-task model from task specs and configuration names: :func:`build`.

The model classes and the params-tree vocabulary live in :mod:`jmtl.models.base` (``SHARED``,
``TASKS``, ``RELATION``, :class:`TaskHeads`, the model interface) and
:mod:`jmtl.models.architectures` (:class:`MultiTaskModel` = hard sharing, and the rest of the zoo);
they are re-exported here. Params layout of the default (``arch='hps'``)::

    {'shared':   encoder params,                 # receives gradients from every task
     'tasks':    {task_name: head params, ...},  # task-specific
     'relation': [K, K] W (only with relation=True)}
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn

from jmtl.models import architectures, encoders, pretrained, regularizers
from jmtl.models import heads as heads_lib
from jmtl.models.architectures import MultiTaskModel
from jmtl.models.base import RELATION, SHARED, TASKS, MultiTaskBase, TaskHeads, relation_penalty
from jmtl.tasks import Task

__all__ = [
    "RELATION",
    "SHARED",
    "TASKS",
    "MultiTaskBase",
    "MultiTaskModel",
    "TaskHeads",
    "build",
    "relation_matrix",
    "relation_penalty",
]


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
    """A model for ``tasks``: one encoder (copied as the architecture needs) and one head per task
    (kind from the task).

    Args:
      tasks: the tasks, in order (head k is task k's).
      encoder: a name of :data:`jmtl.models.encoders.ENCODERS` (``'mlp'``, ``'multi_lenet'``).
      encoder_kwargs: the encoder's options (default none).
      head_kwargs: options of the heads (``hidden``, ``dropout_rate``; each head takes those its
        class has). Default none.
      relation: add the learnable task-relation matrix W (heads need equal representation sizes).
      arch: a name of :data:`jmtl.models.architectures.ARCHITECTURES`; default ``'hps'`` (hard
        sharing, :class:`MultiTaskModel`).
      arch_kwargs: the architecture's options (see :mod:`jmtl.models.architectures`). Regularizer
        keys (soft-sharing and MTRL penalties, :data:`jmtl.models.regularizers.REGULARIZER_KEYS`)
        are not model options and are ignored here.
    """
    pretrained.check_weights_arch(encoder_kwargs, arch)
    enc = encoders.get(encoder, **dict(encoder_kwargs or {}))
    head_kwargs = dict(head_kwargs or {})
    accepted = set().union(*(set(c.__dataclass_fields__) for c in heads_lib.HEADS.values()))
    unknown = set(head_kwargs) - accepted - {"num_outputs"}
    if unknown:
        raise ValueError(f"unknown head argument(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(accepted))}")
    built = []
    for t in tasks:
        if t.kind not in heads_lib.HEADS:
            raise ValueError(
                f"task {t.name!r}: jmtl.models.mtl.build has no head for kind {t.kind!r} (heads: "
                f"{', '.join(heads_lib.HEADS)}). Fix: bring your own Flax model for it (jmtl.fit takes any)"
            )
        cls = heads_lib.HEADS[t.kind]
        kw = {k: v for k, v in head_kwargs.items() if k in cls.__dataclass_fields__}
        built.append(cls(num_outputs=t.num_outputs, **kw))
    if relation and len({h.rep_size for h in built}) != 1:
        raise ValueError("relation=True needs heads with equal representation sizes (set head_kwargs.hidden)")
    heads = TaskHeads(names=tuple(t.name for t in tasks), heads=tuple(built))
    model_kwargs = {k: v for k, v in dict(arch_kwargs or {}).items() if k not in regularizers.REGULARIZER_KEYS}
    return architectures.build(arch, encoder=enc, heads=heads, relation=relation, **model_kwargs)


def relation_matrix(params: Mapping[str, Any]) -> Optional[Any]:
    """The learnable K x K task-relation matrix W of a model built with ``relation=True``, as stored
    in its params (a leading seed or device axis kept), or None when the model has none.

    The trainer logs and plots W through this function, so it does not depend on where the model
    keeps it.
    """
    return params[RELATION] if hasattr(params, "keys") and RELATION in params else None
