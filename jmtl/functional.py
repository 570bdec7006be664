"""The functional core: multi-task gradients for any JAX model, inside your own training step.

What torchjd's ``mtl_backward`` is to PyTorch: give a function from params to the K task losses, and
get the losses, the combined gradient (shared params combined by the weighting scheme, every other
param its own task's gradient) and the scheme's new state. The params may be any pytree: Flax Linen
params, an NNX state after ``nnx.split``, Equinox arrays, a dict of arrays. It is a pure function,
so it goes inside ``jax.jit``, ``shard_map`` (pass ``axis_name``) or ``pmap``; the built-in train
step runs the same code (:func:`jmtl.training.step.combined_gradients`).

    vg = jmtl.mtl_value_and_grad(loss_fn, jmtl.weighting.get("pcgrad"), shared="encoder")
    wstate = vg.init(params)
    res = vg(params, wstate, batch, key=key, step=step)   # res.losses [K], res.grads like params
    updates, opt_state = optimizer.update(res.grads, opt_state, params)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from jmtl import weighting as weighting_lib
from jmtl.training import gradient_paths
from jmtl.training.jacobian import shared_layout, to_varying
from jmtl.training.sharing import Selector, Sharing, as_sharing
from jmtl.training.step import auto_chunk_size, combined_gradients

Array = jax.Array
PyTree = Any


class MTLGradients(NamedTuple):
    """What :func:`mtl_value_and_grad` returns."""

    losses: Array  # [K] task losses (device-averaged under an axis)
    grads: PyTree  # like params: the gradient to hand to the optimizer
    weighting_state: PyTree  # the scheme's new state
    weights: Optional[Array]  # [K] task weights, or None when the scheme returns a direction
    weighting_grads: PyTree  # gradients of the scheme's own params (uncertainty weighting), else {}


class _Losses(NamedTuple):
    step: Array
    weighting_params: PyTree
    weighting_state: PyTree


@dataclasses.dataclass(frozen=True)
class _FunctionContext(gradient_paths.StepContext):
    """A step context whose "model" is a plain loss function ``(params, *args) -> [K]``."""

    loss_fn: Callable = None
    num_tasks: int = 0

    @property
    def k(self) -> int:
        return self.num_tasks

    def model_losses(self, params, batch, rng, extra):
        losses = self.loss_fn(params, *batch)
        return losses, losses


@dataclasses.dataclass(frozen=True)
class MTLValueAndGrad:
    """``vg(params, weighting_state, *args, key=None, step=0, weighting_params=None) -> MTLGradients``.

    Built by :func:`mtl_value_and_grad`; ``vg.init(params)`` gives the scheme's initial state and
    ``vg.init_weighting_params(num_tasks)`` its learnable params (or ``{}``).
    """

    loss_fn: Callable
    weighting: weighting_lib.WeightingTransform
    sharing: Sharing
    chunk_size: int
    axis_name: Optional[str]

    def init(self, params: PyTree, num_tasks: Optional[int] = None, *args) -> PyTree:
        """The scheme's initial state for ``params`` (K from ``num_tasks``, or from ``loss_fn(params, *args)``)."""
        if num_tasks is None:
            num_tasks = int(jax.eval_shape(self.loss_fn, params, *args).shape[0])
        return weighting_lib.base.init_state(self.weighting, num_tasks, shared_layout(self.sharing.split(params)[0]))

    def init_weighting_params(self, num_tasks: int) -> PyTree:
        return self.weighting.init_params(num_tasks) if self.weighting.init_params is not None else {}

    def __call__(self, params, weighting_state, *args, key=None, step=0, weighting_params=None) -> MTLGradients:
        shape = jax.eval_shape(self.loss_fn, params, *args)
        if len(getattr(shape, "shape", ())) != 1:
            raise ValueError(
                f"loss_fn must return the [K] vector of task losses (one scalar per task); it returned shape "
                f"{getattr(shape, 'shape', type(shape).__name__)}"
            )
        if self.weighting.requires == weighting_lib.BILEVEL:
            raise ValueError("bilevel schemes need a second (meta) batch: use the built-in train step for them")
        ctx = _FunctionContext(
            model=None,
            tasks=(),
            apply=None,
            model_input=None,
            sharing=self.sharing,
            chunk_size=self.chunk_size,
            needs=self.weighting.requires,
            weighting_name="",
            axis_name=self.axis_name,
            loss_fn=self.loss_fn,
            num_tasks=int(shape.shape[0]),
        )
        needs_jacobian = self.weighting.requires in (weighting_lib.JACOBIAN, weighting_lib.GRAMIAN)
        path = gradient_paths.ParamJacobian(ctx) if needs_jacobian else gradient_paths.LossLevel(ctx)
        if key is None:
            if self.weighting.needs_key:
                # A default key would be the same at every step: RLW would become static weights,
                # alternating would train one task, PCGrad one projection order.
                raise ValueError(
                    "this weighting scheme draws random numbers (needs_key=True) and key=None was given: pass a fresh "
                    "PRNG key every step, e.g. vg(params, state, *args, key=jax.random.fold_in(key, step), step=step)"
                )
            key = jax.random.PRNGKey(0)  # never read: the scheme is deterministic and loss_fn takes no rng
        inputs = gradient_paths.StepInputs(
            params=params,
            params_local=to_varying(params, self.axis_name),
            batch=args,
            meta_batch={},
            dropout_rng=key,
            extra={},
            weighting_state=weighting_state,
        )
        state = _Losses(
            jnp.asarray(step, jnp.int32), {} if weighting_params is None else weighting_params, weighting_state
        )
        g = combined_gradients(path, self.weighting, inputs, state, key, self.axis_name)
        return MTLGradients(g.losses, g.grads, g.weighting_state, g.weights, g.weighting_grads)


def mtl_value_and_grad(
    loss_fn: Callable[..., Array],
    weighting: weighting_lib.WeightingTransform | str,
    *,
    shared: Selector | Sharing | None = None,
    jacobian_chunk_size: int = -1,
    axis_name: Optional[str] = None,
) -> MTLValueAndGrad:
    """Multi-task losses and the weighting scheme's combined gradient of any params pytree.

    Args:
      loss_fn: ``(params, *args) -> [K]`` task losses (batch means).
      weighting: a transform (``jmtl.weighting.get(...)``) or a scheme name (default hyperparameters).
      shared: which params are shared: a top-level key of a params dict (default ``'shared'``) or a
        predicate on each leaf's ``jax.tree_util.keystr`` path. Gradient schemes balance the
        per-task gradients of these; every other param gets the sum of the task gradients (its own
        task's gradient when only one task reads it).
      jacobian_chunk_size: rows per in-graph chunk of the per-task gradients (0: one vmap; -1: the
        backend's default, 1 on CPU).
      axis_name: the data-parallel axis inside ``shard_map``/``pmap`` (losses and gradients are
        averaged over it before the scheme combines them), or None.

    Returns:
      An :class:`MTLValueAndGrad`: call it as ``vg(params, weighting_state, *args, key=, step=)``.
      Schemes that draw random numbers (``weighting.needs_key``: PCGrad's order, GradVac's,
      GradDrop's masks, RLW, random, alternating) need a fresh ``key`` every step; ``key=None`` is
      refused for them rather than silently reusing one key.
    """
    if isinstance(weighting, str):
        weighting = weighting_lib.get(weighting)
    c = jacobian_chunk_size
    if isinstance(c, bool) or not isinstance(c, int) or c < -1:
        raise ValueError(f"jacobian_chunk_size must be an int >= 0, or -1 for the backend's default; got {c!r}")
    return MTLValueAndGrad(loss_fn, weighting, as_sharing(shared), auto_chunk_size() if c == -1 else c, axis_name)
