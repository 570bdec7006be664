"""A scheme applied per group of parameters: :func:`per_group`.

Gradient conflicts differ between layers: the first convolution of a shared encoder may agree across
tasks while its last block does not. GradVac (Wang et al. 2021, "all layers / all matrices") and
torchjd's per-parameter-group aggregation run the scheme on each group's columns of the Jacobian
separately. For a group ``g`` holding columns ``C_g`` of the shared ``[K, d]`` Jacobian ``J``:

    d[C_g] = A(J[:, C_g])        (A: the scheme's aggregation; G_g = J[:, C_g] J[:, C_g]^T)

so the combined update is the concatenation of the groups' combined gradients. Each group keeps its
own scheme state (a Nash-MTL or FAMO-style history per group).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jmtl.weighting.base import (
    GRAMIAN,
    JACOBIAN,
    GramianInputs,
    JacobianInputs,
    Layout,
    WeightingOutput,
    WeightingTransform,
    combine,
)
from jmtl.weighting.jacobian import _parent

Array = jax.Array
GroupBy = Union[str, Callable[[str], Any]]
GROUPINGS = ("layer", "leaf", "all")


class PerGroupState(NamedTuple):
    states: tuple  # the scheme's state of each group, in the groups' order


def parameter_groups(layout: Layout, group_by: GroupBy) -> list[tuple[Any, tuple[int, ...]]]:
    """``[(group name, indices of its leaves in layout order)]``, groups in order of first appearance.

    Args:
      layout: ``((path, shape), ...)`` of the shared leaves, in the Jacobian's column order.
      group_by: ``'layer'`` (the leaves of one module: same path up to the last key, e.g. a layer's
        kernel and bias), ``'leaf'`` (every parameter tensor), ``'all'`` (one group: the scheme
        itself), or a function from a leaf's path (``jax.tree_util.keystr``) to its group's name.
    """
    if callable(group_by):
        name_of = group_by
    elif group_by == "layer":
        name_of = _parent
    elif group_by == "leaf":
        name_of = lambda path: path  # noqa: E731
    elif group_by == "all":
        name_of = lambda path: ""  # noqa: E731
    else:
        raise ValueError(f"unknown group_by {group_by!r}; valid: {', '.join(GROUPINGS)}, or a function path -> name")
    groups: dict[Any, list[int]] = {}
    for i, (path, _) in enumerate(layout):
        groups.setdefault(name_of(path), []).append(i)
    return [(name, tuple(leaves)) for name, leaves in groups.items()]


def _columns(layout: Layout, leaves: tuple[int, ...]) -> np.ndarray:
    """The Jacobian's column indices of these leaves (static)."""
    sizes = [int(np.prod(shape)) for _, shape in layout]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return np.concatenate([np.arange(starts[i], starts[i + 1]) for i in leaves]).astype(np.int32)


def per_group(inner: WeightingTransform, group_by: GroupBy = "layer") -> WeightingTransform:
    """``inner`` run on each parameter group's columns of the Jacobian, the results concatenated.

    Args:
      inner: a gradient scheme (``requires`` 'gramian' or 'jacobian'), e.g. ``jmtl.weighting.get("upgrad")``.
      group_by: how shared leaves form groups (see :func:`parameter_groups`).

    Returns:
      A Jacobian-level transform (it reads the rows to slice them). Its output is a direction; its
      state holds one ``inner`` state per group. ``init`` needs the layout (the step and
      ``mtl_value_and_grad`` pass it).
    """
    if inner.requires not in (GRAMIAN, JACOBIAN):
        raise ValueError(
            f"per_group needs a gradient scheme (requires 'gramian' or 'jacobian'); this one requires "
            f"{inner.requires!r}: its weights do not depend on the parameters, so groups would change nothing"
        )
    if inner.init_params is not None:
        raise ValueError("per_group does not support schemes with learnable params (their params are per run)")
    if not (callable(group_by) or group_by in GROUPINGS):
        raise ValueError(f"unknown group_by {group_by!r}; valid: {', '.join(GROUPINGS)}, or a function path -> name")

    def _need_layout(layout: Optional[Layout], where: str) -> Layout:
        if layout is None:
            raise ValueError(
                f"per_group's {where} needs the shared params' layout (layout=...): the built-in step and "
                "jmtl.mtl_value_and_grad pass it; with as_optax or aggregate, pass layout= yourself"
            )
        return layout

    def init(num_tasks: int, *, layout: Optional[Layout] = None) -> PerGroupState:
        layout = _need_layout(layout, "init")
        return PerGroupState(
            tuple(
                inner.init(num_tasks, layout=tuple(layout[i] for i in leaves))
                for _, leaves in parameter_groups(layout, group_by)
            )
        )

    def update(inputs: JacobianInputs, state: PerGroupState):
        layout = _need_layout(inputs.layout, "update")
        jacobian, key = inputs.jacobian, inputs.key
        if jacobian is None:
            raise ValueError("per_group needs the Jacobian (its rows are sliced per group)")
        groups = parameter_groups(layout, group_by)
        if len(groups) != len(state.states):
            raise ValueError(
                f"per_group: the layout has {len(groups)} groups but the state was initialised for "
                f"{len(state.states)}; initialise the state with the same layout"
            )
        direction = jnp.zeros(jacobian.shape[1], jacobian.dtype)
        extra = jnp.zeros((), jacobian.dtype)
        new_states = []
        for g, ((_, leaves), s) in enumerate(zip(groups, state.states)):
            cols = _columns(layout, leaves)
            rows = jacobian[:, cols]
            group_key = None if key is None else jax.random.fold_in(key, g)
            if inner.requires == GRAMIAN:
                group_inputs = GramianInputs(inputs.losses, rows @ rows.T, inputs.step, group_key, inputs.params)
            else:
                group_inputs = inputs._replace(
                    jacobian=rows, gramian=rows @ rows.T, layout=tuple(layout[i] for i in leaves), key=group_key
                )
            out, s = inner.update(group_inputs, s)
            direction = direction.at[cols].set(combine(out, rows).astype(jacobian.dtype))
            extra = extra + out.extra_loss
            new_states.append(s)
        return WeightingOutput(weights=None, direction=direction, extra_loss=extra), PerGroupState(tuple(new_states))

    return WeightingTransform(
        init=init,
        update=update,
        requires=JACOBIAN,
        rep_level_ok=False,
        needs_key=inner.needs_key,
        fixed_weights=inner.fixed_weights,
    )
