"""The gradient path of last-layer schemes (``requires='last_layer'``: BayesAgg-MTL).

BayesAgg-MTL (Achituve et al., ICML 2024) does not combine per-task gradients of the shared
params: it forms a Gaussian posterior over each head's last affine layer from the representation
and the labels, and combines the tasks' gradients w.r.t. the representation per example and per
coordinate by their posterior variances. So the path gives the scheme

* ``representation``: ``h`` (``[B, D]``, flattened), the input of the heads' last affine layer,
  from the objective's ``encode``;
* ``targets``: ``[B, K]`` regression targets and ``target_mask``: ``[B, K]`` (1 = labelled), from
  the objective's ``targets``;

and runs the scheme's ``direction`` (the ``B * D`` cotangent of ``h``) back through the encoder.
Every non-shared param (the heads) gets the gradient of the plain sum of the task losses, as the
official code's ``backward_last_layer``. One device only (the posterior's statistics are per
batch; a data-parallel version would ``psum`` them).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jmtl.core import paths
from jmtl.core.jacobian import to_varying

PyTree = Any


class LastLayer(paths._Representation, paths.ParamJacobian):
    """The representation and the labels to the scheme; its cotangent of the representation back
    through the encoder."""

    name = "last_layer"

    def task_gradients(self, fwd: paths.Forward, inputs: paths.StepInputs) -> paths.TaskGradients:
        ctx = self.ctx
        # The heads' gradient: that of sum_k L_k (one backward pass through the heads).
        _, head_grads = fwd.vjp(to_varying(jnp.ones((ctx.k,), fwd.local.dtype), ctx.axis_name))
        got = ctx.objective.targets(inputs.batch)
        y, mask = got if isinstance(got, tuple) else (got, None)
        b = fwd.rep.shape[0]
        if y.shape != (b, ctx.k) or (mask is not None and mask.shape != (b, ctx.k)):
            raise ValueError(
                f"targets= must return the [batch, K] = {(b, ctx.k)} labels (or (labels, mask), both that shape); "
                f"got {y.shape}" + ("" if mask is None else f" and mask {mask.shape}")
            )
        scheme_inputs = dict(representation=fwd.rep.reshape(b, -1), targets=y, target_mask=mask)
        return paths.TaskGradients(scheme_inputs, head_grads=head_grads)

    def assemble(self, fwd: paths.Forward, tg: paths.TaskGradients, out, weights, inputs) -> PyTree:
        if out.direction is None:
            raise ValueError("a last-layer scheme must return the representation's cotangent as its direction")
        (shared_grad,) = fwd.encoder_vjp(out.direction.reshape(fwd.rep.shape).astype(fwd.rep.dtype))
        return self.ctx.sharing.merge(shared_grad, tg.head_grads)


def choose(ctx: paths.PathContext, jacobian_mode: str, *, nothing_shared: bool, per_example: bool) -> LastLayer:
    """The last-layer path, or a one-line error naming what the configuration lacks."""
    label = ctx.scheme_label
    if per_example or nothing_shared:
        raise ValueError(
            f"{label} combines task gradients w.r.t. a shared representation: it needs shared params and "
            "per-task (not per-example) losses; use another scheme here"
        )
    if ctx.axis_name is not None:
        raise ValueError(f"{label} runs on one device (axis_name=None): its posterior statistics are per batch")
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
