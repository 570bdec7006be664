"""The gradient path of last-layer schemes (``requires='last_layer'``: BayesAgg-MTL).

BayesAgg-MTL (Achituve et al., ICML 2024) does not combine per-task gradients of the shared
params: it forms a Gaussian posterior over each head's last affine layer from the representation
and the labels, and combines the tasks' gradients w.r.t. the representation per example and per
coordinate by their posterior variances. So the path gives the scheme

* ``representation``: ``h`` (``[B, D]``, flattened), the input of the heads' last affine layer,
  from the objective's ``encode``;
* ``targets``: ``[B, K]`` labels and ``target_mask``: ``[B, K]`` (1 = labelled), from the
  objective's ``targets``; with classification tasks also ``target_kinds`` and each head's current
  ``last_layer`` (the objective's);

and runs the scheme's ``direction`` (the ``B * D`` cotangent of ``h``) back through the encoder.
Every non-shared param (the heads) gets the gradient of the plain sum of the task losses, as the
official code's ``backward_last_layer``. Under a data-parallel axis the scheme sees the global
batch (gathered from every device) and each device runs its own rows of the cotangent back.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jmtl.core import paths
from jmtl.core.jacobian import gather_invariant, pmean, to_varying
from jmtl.weighting.base import LAST_LAYER

PyTree = Any


class LastLayer(paths._Representation, paths.ParamJacobian):
    """The representation and the labels to the scheme; its cotangent of the representation back
    through the encoder."""

    name = "last_layer"

    def task_gradients(self, fwd: paths.Forward, inputs: paths.StepInputs) -> paths.TaskGradients:
        ctx, axis_name = self.ctx, self.ctx.axis_name
        # The heads' gradient: that of sum_k L_k (one backward pass through the heads).
        _, head_grads = fwd.vjp(to_varying(jnp.ones((ctx.k,), fwd.local.dtype), axis_name))
        got = ctx.objective.targets(inputs.batch)
        y, mask = got if isinstance(got, tuple) else (got, None)
        b = fwd.rep.shape[0]
        if y.shape != (b, ctx.k) or (mask is not None and mask.shape != (b, ctx.k)):
            raise ValueError(
                f"targets= must return the [batch, K] = {(b, ctx.k)} labels (or (labels, mask), both that shape); "
                f"got {y.shape}" + ("" if mask is None else f" and mask {mask.shape}")
            )
        rep = fwd.rep.reshape(b, -1)
        mask = jnp.ones_like(y) if mask is None else mask
        if axis_name is not None:
            # The posterior is over the global batch: every device sees all devices' features and labels
            # (the losses are global means), and keeps its own rows of the cotangent (assemble).
            rep, y, mask = (gather_invariant(jax.lax.stop_gradient(a), axis_name) for a in (rep, y, mask))
        scheme_inputs = dict(representation=rep, targets=y, target_mask=mask)
        if ctx.objective.target_kinds is not None:
            scheme_inputs["target_kinds"] = tuple(ctx.objective.target_kinds)
        if ctx.objective.last_layer is not None:  # the replicated params: the same on every device
            scheme_inputs["last_layer"] = tuple(
                tuple(jax.lax.stop_gradient(a) for a in pair) for pair in ctx.objective.last_layer(inputs.params)
            )
        return paths.TaskGradients(scheme_inputs, head_grads=pmean(head_grads, axis_name))

    def assemble(self, fwd: paths.Forward, tg: paths.TaskGradients, out, weights, inputs) -> PyTree:
        if out.direction is None:
            raise ValueError("a last-layer scheme must return the representation's cotangent as its direction")
        axis_name = self.ctx.axis_name
        rep_cot = out.direction
        if axis_name is not None:  # the global batch's cotangent: this device's rows
            rep_cot = rep_cot.reshape(jax.lax.axis_size(axis_name), -1)[jax.lax.axis_index(axis_name)]
        (shared_grad,) = fwd.encoder_vjp(rep_cot.reshape(fwd.rep.shape).astype(fwd.rep.dtype))
        shared_grad = shared_grad if axis_name is None else jax.lax.psum(shared_grad, axis_name)
        return self.ctx.sharing.merge(shared_grad, tg.head_grads)


def choose(ctx: paths.PathContext, jacobian_mode: str, *, nothing_shared: bool, per_example: bool) -> LastLayer:
    """The last-layer path, or a one-line error naming what the configuration lacks."""
    label = ctx.scheme_label
    if per_example or nothing_shared:
        raise ValueError(
            f"{label} combines task gradients w.r.t. a shared representation: it needs shared params and "
            "per-task (not per-example) losses; use another scheme here"
        )
    if not ctx.objective.has_representation:
        raise ValueError(
            f"{label} needs the objective split at the input of the heads' last affine layer: a model with "
            "encode/decode methods (trainer), or encode= and heads= (mtl_value_and_grad)"
        )
    if ctx.objective.targets is None:
        raise ValueError(
            f"{label} needs each task's labels: pass targets=(*args -> [batch, K] regression targets, or "
            "(targets, mask))"
        )
    del jacobian_mode  # the scheme is defined on the representation; no per-task Jacobian is formed
    return LastLayer(ctx)


paths.PATH_OF_REQUIREMENT[LAST_LAYER] = choose
