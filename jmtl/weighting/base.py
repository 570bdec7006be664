"""The weighting protocol: every loss- or gradient-balancing scheme is an optax-style transform.

A scheme is a :class:`WeightingTransform`, a pair of pure functions::

    state = transform.init(num_tasks, layout=layout)
    out, state = transform.update(losses, state, jacobian=J, params=p, key=k, step=s)

``losses`` is the ``[K]`` vector of (device-averaged) task losses. What the scheme returns
(:class:`WeightingOutput`) is either

* ``weights`` ``[K]``: the update of the shared parameters is ``weights @ J`` (for loss-level
  schemes the train step gets it with one backward pass of ``sum_k weights_k * L_k``), or
* ``direction`` ``[d]``: a combined gradient of the flattened shared parameters, for schemes whose
  result is not a linear combination of the task gradients (PCGrad, GradDrop, ...).

Gradient schemes (``requires='jacobian'``) receive ``J``, the ``[K, d]`` Jacobian of the task losses
w.r.t. the flattened shared parameters, computed by the train step with one ``jax.vjp`` and a
``vmap`` over one-hot cotangents and averaged over data-parallel devices before the scheme sees it.

Schemes with learnable parameters (uncertainty weighting's log-variances) declare
``init_params``; those parameters live in the train state beside the model's and are trained by the
same optax optimizer, through ``sum_k weights_k(p) * L_k + extra_loss(p)``. Every other scheme's
output is treated as a constant (``stop_gradient``) by the step.

The transform is pure: randomness comes from ``key`` (the step's PRNG key, identical on every
device), so runs are reproducible and every device computes the same combination. ``step`` is the
global step (int32 scalar). The train step passes every keyword it has; a scheme ignores those it
does not use (``**_``).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any

LOSSES = "losses"  # the scheme sees only the task losses
JACOBIAN = "jacobian"  # the scheme sees the [K, d] Jacobian of the shared parameters
GRAMIAN = "gramian"  # the scheme sees only G = J J^T ([K, K]) and returns weights
REQUIREMENTS = (LOSSES, JACOBIAN, GRAMIAN)

# Static description of the flattened shared parameters: ``(path, shape)`` of each leaf in the order
# its entries appear along the ``d`` axis of the Jacobian (for per-layer / per-matrix schemes).
Layout = tuple[tuple[str, tuple[int, ...]], ...]


class WeightingOutput(NamedTuple):
    """What a scheme returns for one step.

    Exactly one of ``weights`` / ``direction`` is set.
    weights: ``[K]`` task weights (update of shared params = ``weights @ J``).
    direction: ``[d]`` combined gradient of the flattened shared params.
    extra_loss: scalar added to the objective; differentiable w.r.t. the scheme's own params.
    """

    weights: Optional[Array] = None
    direction: Optional[Array] = None
    extra_loss: Array | float = 0.0


class InitFn(Protocol):
    """``init(num_tasks, *, layout=None)``; ``layout`` (see ``Layout``) sizes states that hold
    per-parameter quantities (gradient EMAs). Schemes that need no layout may omit the keyword."""

    def __call__(self, num_tasks: int, *, layout: Optional[Layout] = None) -> Any: ...


class UpdateFn(Protocol):
    def __call__(
        self,
        losses: Array,
        state: Any,
        *,
        jacobian: Optional[Array] = None,
        gramian: Optional[Array] = None,
        params: Optional[PyTree] = None,
        key: Optional[Array] = None,
        step: Optional[Array] = None,
        layout: Optional[Layout] = None,
    ) -> tuple[WeightingOutput, Any]: ...


class WeightingTransform(NamedTuple):
    """An ``init``/``update`` pair, like ``optax.GradientTransformation``.

    requires: what ``update`` needs from the train step: ``'losses'``, ``'jacobian'`` or ``'gramian'``.
    init_params: ``num_tasks -> params`` for schemes with learnable parameters, else ``None``.
    rep_level_ok: whether the scheme is meaningful on gradients w.r.t. the shared representation
      (MGDA-UB style); schemes that are not refuse that mode.
    """

    init: InitFn
    update: UpdateFn
    requires: str = LOSSES
    init_params: Optional[Callable[[int], PyTree]] = None
    rep_level_ok: bool = True


class EmptyState(NamedTuple):
    """State of a stateless scheme."""


def stateless_init(num_tasks: int, **_) -> EmptyState:
    del num_tasks
    return EmptyState()


def init_state(transform: "WeightingTransform", num_tasks: int, layout: Optional[Layout] = None) -> Any:
    """``transform.init`` with the layout passed when the scheme's ``init`` accepts it."""
    import inspect

    params = inspect.signature(transform.init).parameters
    takes_layout = "layout" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return transform.init(num_tasks, layout=layout) if takes_layout else transform.init(num_tasks)


def weights_output(weights: Array) -> WeightingOutput:
    return WeightingOutput(weights=weights, direction=None, extra_loss=jnp.zeros((), weights.dtype))


def combine(out: WeightingOutput, jacobian: Array) -> Array:
    """The combined ``[d]`` direction of ``out`` for a ``[K, d]`` Jacobian."""
    if out.direction is not None:
        return out.direction
    return out.weights @ jacobian


def require_gramian(name: str, gramian: Optional[Array], jacobian: Optional[Array]) -> Array:
    """The ``[K, K]`` Gramian passed by the step, else ``J J^T`` of the Jacobian; error if neither."""
    if gramian is not None:
        return gramian
    if jacobian is None:
        raise ValueError(f"{name} needs the Gramian or the Jacobian of the task losses")
    return jnp.matmul(jacobian, jacobian.T, precision=jax.lax.Precision.HIGHEST)


def default_float_dtype():
    """float32, or float64 under ``jax_enable_x64``."""
    return jnp.zeros(()).dtype

