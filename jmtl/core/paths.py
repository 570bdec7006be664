"""Gradient paths: how one step gets the gradients a weighting scheme needs, for any JAX model.

A path is chosen once (:func:`choose`) from the scheme's requirement, the Jacobian mode and what
the :class:`Objective` offers (a representation split or not).

=====================  =====================================================================================
path                   what it computes
=====================  =====================================================================================
``LossLevel``          loss-level schemes: weights from the losses, then one backward pass ``vjp(w)``
``ParamJacobian``      per-task gradients of the shared params, through the whole objective: ``vmap(vjp)(I_K)``
                       (or an in-graph loop over chunks of rows), averaged over devices before weighting
``FactoredJacobian``   the same rows through a representation split: one backward pass through the heads
                       per task (one in all when the heads are *separable*) gives the K representation
                       cotangents, then each row runs back through the encoder alone
``RepJacobian``        per-task gradients w.r.t. the shared representation (MGDA-UB, Sener & Koltun 2018),
                       then one weighted backward pass through the encoder
``Bilevel``            bilevel schemes: upper-level terms through a look-ahead step (:mod:`.bilevel_terms`)
``NothingShared``      nothing is shared (independent towers): every param has one task's gradient, so the
                       plain sum is exact and the scheme is not consulted
``LastLayer``          last-layer schemes (BayesAgg-MTL, :mod:`.bayesagg`): the representation and the labels to the
                       scheme, its cotangent of the representation back through the encoder
=====================  =====================================================================================

Every path provides three stages, which :func:`jmtl.core.value_and_grad.combined_gradients` calls in order:

* ``forward(inputs) -> Forward``: this device's task losses and the vjp closures;
* ``task_gradients(fwd, inputs) -> TaskGradients``: what the scheme reads (Gramian, Jacobian,
  bilevel terms), averaged over devices;
* ``assemble(fwd, tg, out, weights, inputs) -> grads``: the gradient pytree of the params from the
  scheme's output.

Gradients are taken of the *local* (per-device) losses w.r.t. a device-varying copy of the params
and averaged with an explicit ``pmean`` (:mod:`.jacobian`): the same computation under
``shard_map``, ``pmap`` and on one device (``axis_name=None``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from jmtl import weighting as weighting_lib
from jmtl.core import bilevel_terms as bilevel_lib
from jmtl.core.jacobian import (
    flatten_rows,
    gather_invariant,
    map_rows,
    per_task_gradients,
    pmean,
    shared_layout,
    to_varying,
    unflatten_like,
)
from jmtl.core.sharing import Sharing, require_shared

Array = jax.Array
PyTree = Any


@dataclasses.dataclass(frozen=True)
class Objective:
    """The K task losses, as functions the paths differentiate.

    Every function takes ``(…, batch, rng, extra)``: the step's data, a PRNG key for dropout and
    step-dependent keyword arguments (``{}`` when there are none); what they are is up to the caller.

    Args:
      num_tasks: K.
      losses: ``(params, batch, rng, extra) -> [K]`` this device's task losses (batch means).
      encode: the representation split, optional: ``(params, batch, rng, extra) -> rep``, reading
        only the shared params (the gradients of any other param it reads are lost).
      heads: ``(params, rep, batch, rng, extra) -> [K]``, reading no shared param. With
        ``split_heads``, ``rep`` is a tuple of K copies of the representation and task k's loss
        reads only copy k: one backward pass then gives all K representation gradients.
      split_heads: see ``heads``.
      targets: ``batch -> [B, K]`` task labels, or ``(labels, [B, K] mask)``; read only by last-layer
        schemes (``requires='last_layer'``, :mod:`.bayesagg`).
      target_kinds: the K tasks' kinds for last-layer schemes (``'regression'``, ``'classification'``,
        ``'binary'``); None: all regression.
      last_layer: ``params -> [(kernel [D, C], bias [C]) per task]``, each head's last affine layer;
        read by last-layer schemes for classification tasks.
    """

    num_tasks: int
    losses: Callable[..., Array]
    encode: Optional[Callable[..., Any]] = None
    heads: Optional[Callable[..., Array]] = None
    split_heads: bool = False
    # Last-layer schemes (BayesAgg-MTL, :mod:`.bayesagg`): ``batch -> [B, K]`` labels, or ``(labels, mask)``.
    targets: Optional[Callable[..., Any]] = None
    target_kinds: Optional[tuple[str, ...]] = None
    last_layer: Optional[Callable[..., Any]] = None

    @property
    def has_representation(self) -> bool:
        return self.encode is not None and self.heads is not None


@dataclasses.dataclass(frozen=True)
class PathContext:
    """The static pieces every path shares."""

    objective: Objective
    sharing: Sharing
    chunk_size: int  # rows per in-graph chunk of per-task gradients (0: one vmap)
    needs: str  # the scheme's requirement (weighting_lib.LOSSES / JACOBIAN / GRAMIAN / BILEVEL)
    axis_name: Optional[str] = None
    scheme_label: str = "the weighting scheme"

    @property
    def k(self) -> int:
        return self.objective.num_tasks


class StepInputs(NamedTuple):
    """What every path may read in one step."""

    params: PyTree  # the replicated params (for shapes / layout)
    params_local: PyTree  # the same, device-varying (what is differentiated)
    batch: Any
    meta_batch: Any  # bilevel schemes' second batch (None otherwise)
    rng: Array  # the objective's key (dropout)
    extra: dict  # step-dependent keyword arguments of the objective
    weighting_state: PyTree


class Forward(NamedTuple):
    local: Array  # [K] this device's task losses
    vjp: Callable  # cotangent of the [K] local losses -> gradients of what the path differentiated
    encoder_vjp: Optional[Callable] = None  # representation paths: rep cotangent -> (shared grads,)
    rep: Optional[Array] = None


class TaskGradients(NamedTuple):
    scheme_inputs: dict  # keywords the weighting scheme reads: gramian / jacobian / layout / bilevel terms
    rows: Optional[Array] = None  # [K, d] rows the shared update is combined from (params or representation)
    head_grads: Optional[PyTree] = None  # sum over tasks of the task-specific params' gradients
    meta_grads: Optional[PyTree] = None  # bilevel value-function schemes: the K upper-level task gradients


class LossLevel:
    """Loss-level schemes: weights from the losses, one backward pass ``vjp(w)``."""

    name = "loss_level"
    consults_weighting = True

    def __init__(self, ctx: PathContext):
        self.ctx = ctx

    def forward(self, inputs: StepInputs) -> Forward:
        local, vjp_fn = jax.vjp(
            lambda p: self.ctx.objective.losses(p, inputs.batch, inputs.rng, inputs.extra), inputs.params_local
        )
        return Forward(local, vjp_fn)

    def task_gradients(self, fwd: Forward, inputs: StepInputs) -> TaskGradients:
        return TaskGradients({})

    def assemble(self, fwd: Forward, tg: TaskGradients, out, weights, inputs: StepInputs) -> PyTree:
        (grads,) = fwd.vjp(to_varying(weights.astype(fwd.local.dtype), self.ctx.axis_name))
        return pmean(grads, self.ctx.axis_name)


class NothingShared(LossLevel):
    """Nothing is shared: every param has one task's gradient, so the plain sum (weights 1) is exact
    and a gradient scheme has nothing to balance."""

    name = "nothing_shared"
    consults_weighting = False


class ParamJacobian(LossLevel):
    """Rows of the shared params' Jacobian through the whole objective."""

    name = "param_jacobian"

    def _check_shared(self, shared: PyTree, params: PyTree) -> None:
        require_shared(shared, params, self.ctx.sharing, self.ctx.scheme_label)

    def _scheme_inputs(self, jac: Array, shared: PyTree) -> dict:
        kwargs = dict(gramian=jac @ jac.T, layout=shared_layout(shared))
        # Gramian schemes get G alone (the [K, d] J is not theirs to read); see assemble.
        if self.ctx.needs == weighting_lib.JACOBIAN:
            kwargs["jacobian"] = jac
        return kwargs

    def task_gradients(self, fwd: Forward, inputs: StepInputs) -> TaskGradients:
        ctx = self.ctx
        shared, rest = ctx.sharing.split(inputs.params_local)
        self._check_shared(shared, inputs.params)
        jac, head_grads = per_task_gradients(
            fwd.vjp,
            ctx.k,
            fwd.local.dtype,
            lambda g: ctx.sharing.split(g[0]),
            rest,
            chunk_size=ctx.chunk_size,
            axis_name=ctx.axis_name,
        )  # [K, d]
        jac, head_grads = pmean((jac, head_grads), ctx.axis_name)
        return TaskGradients(self._scheme_inputs(jac, ctx.sharing.split(inputs.params)[0]), jac, head_grads)

    def assemble(self, fwd: Forward, tg: TaskGradients, out, weights, inputs: StepInputs) -> PyTree:
        # Whether the scheme returned weights or a direction is known only here, at trace time, from
        # its output (Gramian schemes return weights). For weights the shared update is w^T J, a [K] x
        # [K, d] product on the J already built for G. The alternative, a second backward pass vjp(w)
        # for the shared params (the heads still take their own task's gradient), would let J die
        # right after G, but J is small next to the backward pass's activations and the extra
        # backward pass is not: MGDA, Multi-LeNet batch 256, chunks of 1, CPU: w^T J 57 / 217 ms per
        # step vs vjp(w) 90 / 233 ms at K = 2 / 10.
        direction = weighting_lib.combine(out, tg.rows)
        # Task-specific params get their own task's gradient (Sener & Koltun 2018); the sum over
        # tasks of a head's rows is exactly that, as other tasks' rows are zero there.
        shared = self.ctx.sharing.split(inputs.params)[0]
        return self.ctx.sharing.merge(unflatten_like(direction, shared), tg.head_grads)


class PerExampleJacobian(ParamJacobian):
    """Every example's loss is one objective (instance-wise risk minimisation, K = B): the rows are the
    per-example gradients of the shared params, all in one ``vmap`` of ``grad`` over the examples
    (every leaf of the batch carries the example axis first)."""

    name = "per_example_jacobian"

    def task_gradients(self, fwd: Forward, inputs: StepInputs) -> TaskGradients:
        ctx, obj = self.ctx, self.ctx.objective
        shared = ctx.sharing.split(inputs.params_local)[0]
        self._check_shared(shared, inputs.params)
        n = fwd.local.shape[0]
        bad = [x.shape for x in jax.tree.leaves(inputs.batch) if not x.shape or x.shape[0] != n]
        if bad:
            raise ValueError(
                f"per_example: the loss function returned {n} per-example losses, so every batch argument needs "
                f"the example axis first with {n} entries; got leaves of shapes {bad}"
            )

        def one(p, example):
            single = jax.tree.map(lambda x: x[None], example)
            return obj.losses(p, single, inputs.rng, inputs.extra)[0]

        grads = jax.vmap(jax.grad(one), in_axes=(None, 0))(inputs.params_local, inputs.batch)
        rowed, summed = ctx.sharing.split(grads)
        jac = flatten_rows(rowed)
        head_grads = jax.tree.map(lambda g: jnp.sum(g, axis=0), summed)
        return TaskGradients(self._scheme_inputs(jac, ctx.sharing.split(inputs.params)[0]), jac, head_grads)


class _Representation:
    """The forward pass split at the shared representation: ``encode`` with its vjp, then the heads."""

    ctx: PathContext

    def forward(self, inputs: StepInputs) -> Forward:
        ctx, obj = self.ctx, self.ctx.objective
        shared, rest = ctx.sharing.split(inputs.params_local)
        self._check_shared(shared, inputs.params)
        batch, rng, extra = inputs.batch, inputs.rng, inputs.extra
        rep, encoder_vjp = jax.vjp(lambda s: obj.encode(ctx.sharing.merge(s, rest), batch, rng, extra), shared)
        # With split heads, task k's head reads its own copy of the representation: one backward
        # pass of sum_k L_k gives all K rows of the representation Jacobian (instead of K backward
        # passes through all K heads: K^2 head backward passes, which dominated at K = 40).
        reps = (rep,) * ctx.k if obj.split_heads else rep
        local, vjp_fn = jax.vjp(
            lambda r_, r: obj.heads(ctx.sharing.merge(shared, r), r_, batch, rng, extra), reps, rest
        )
        return Forward(local, vjp_fn, encoder_vjp, rep)

    def _representation_rows(self, fwd: Forward, rest: PyTree) -> tuple[Array, PyTree]:
        """``([K, B_local * ...] representation gradients, summed heads' gradients)``, local."""
        ctx = self.ctx
        # vjp's cotangents: (representation [B_local, ...] or K copies of it, rest of the params).
        if ctx.objective.split_heads:
            rep_cots, head_grads = fwd.vjp(to_varying(jnp.ones((ctx.k,), fwd.local.dtype), ctx.axis_name))
            return jnp.stack([c.reshape(-1) for c in rep_cots]), head_grads
        return per_task_gradients(
            fwd.vjp, ctx.k, fwd.local.dtype, lambda g: g, rest, chunk_size=ctx.chunk_size, axis_name=ctx.axis_name
        )


class FactoredJacobian(_Representation, ParamJacobian):
    """Rows of the shared params' Jacobian through the representation split: the K representation
    gradients from the heads, then each row back through the encoder alone. Through the whole model
    every row also went back through all K heads (K^2 head backward passes; the bulk of the step at
    K = 40 on CPU, results/bench/bench_scaling.md)."""

    name = "factored_jacobian"

    def task_gradients(self, fwd: Forward, inputs: StepInputs) -> TaskGradients:
        ctx = self.ctx
        rep_rows, head_grads = self._representation_rows(fwd, ctx.sharing.split(inputs.params_local)[1])
        jac = map_rows(  # [K, d]: row k = encoder_vjp(task k's gradient w.r.t. the representation)
            lambda g: flatten_rows(
                jax.tree.map(lambda x: x[None], fwd.encoder_vjp(g.reshape(fwd.rep.shape).astype(fwd.rep.dtype))[0])
            )[0],
            rep_rows,
            ctx.chunk_size,
        )
        jac, head_grads = pmean((jac, head_grads), ctx.axis_name)
        return TaskGradients(self._scheme_inputs(jac, ctx.sharing.split(inputs.params)[0]), jac, head_grads)


class RepJacobian(_Representation, ParamJacobian):
    """Per-task gradients w.r.t. the shared representation (MGDA-UB, Sener & Koltun 2018), then one
    weighted backward pass through the encoder."""

    name = "representation_jacobian"

    def task_gradients(self, fwd: Forward, inputs: StepInputs) -> TaskGradients:
        ctx, axis_name = self.ctx, self.ctx.axis_name
        rep_jac, head_grads = self._representation_rows(fwd, ctx.sharing.split(inputs.params_local)[1])
        head_grads = pmean(head_grads, axis_name)
        n_dev = 1 if axis_name is None else jax.lax.axis_size(axis_name)
        # The global loss is the mean of the device losses, so the global representation Jacobian is
        # the concatenation over devices of J_local / n.
        rep_jac = rep_jac / n_dev
        gram = rep_jac @ rep_jac.T
        if axis_name is not None:
            gram = jax.lax.psum(gram, axis_name)
        # The representation's global shape ([global batch, ...]): schemes that read per-sample blocks of
        # the rows (NTKMTL-SR) find them here; the name tells them the rows are representation gradients.
        rep_shape = (fwd.rep.shape[0] * int(n_dev),) + tuple(fwd.rep.shape[1:])
        kwargs = dict(gramian=gram, layout=(("representation", rep_shape),))
        if ctx.needs == weighting_lib.JACOBIAN:
            kwargs["jacobian"] = rep_jac if axis_name is None else gather_invariant(rep_jac, axis_name, axis=1)
        return TaskGradients(kwargs, rep_jac, head_grads)

    def assemble(self, fwd: Forward, tg: TaskGradients, out, weights, inputs: StepInputs) -> PyTree:
        axis_name = self.ctx.axis_name
        if out.weights is not None:
            rep_cot = out.weights.astype(tg.rows.dtype) @ tg.rows
        else:  # a direction over the global representation: this device's slice
            rep_cot = out.direction
            if axis_name is not None:
                rep_cot = rep_cot.reshape(jax.lax.axis_size(axis_name), -1)[jax.lax.axis_index(axis_name)]
        (shared_grad,) = fwd.encoder_vjp(rep_cot.reshape(fwd.rep.shape).astype(fwd.rep.dtype))
        shared_grad = shared_grad if axis_name is None else jax.lax.psum(shared_grad, axis_name)
        return self.ctx.sharing.merge(shared_grad, tg.head_grads)


class Bilevel(LossLevel):
    """Bilevel schemes: the upper-level terms through a look-ahead step; the update is the weighted
    training gradient plus, for value-function schemes, the scheme's ``meta_weights`` times the
    upper-level task gradients."""

    name = "bilevel"

    def __init__(self, ctx: PathContext, spec):
        super().__init__(ctx)
        self.spec = spec

    def task_gradients(self, fwd: Forward, inputs: StepInputs) -> TaskGradients:
        obj = self.ctx.objective
        if inputs.meta_batch is None:
            raise ValueError(
                "this bilevel weighting scheme needs a validation ('meta') batch in every step (the built-in "
                "step takes it from batch entries 'meta/<name>', which the training loop adds; "
                "mtl_value_and_grad takes meta_args=)"
            )
        meta_rng = jax.random.fold_in(inputs.rng, 1)
        kwargs, meta_grads = bilevel_lib.bilevel_terms(
            self.spec,
            inputs.weighting_state,
            inputs.params_local,
            fwd.vjp,
            fwd.local.dtype,
            lambda p: obj.losses(p, inputs.batch, inputs.rng, inputs.extra),
            lambda p: obj.losses(p, inputs.meta_batch, meta_rng, inputs.extra),
            k=self.ctx.k,
            chunk_size=self.ctx.chunk_size,
            axis_name=self.ctx.axis_name,
        )
        return TaskGradients(kwargs, meta_grads=meta_grads)

    def assemble(self, fwd: Forward, tg: TaskGradients, out, weights, inputs: StepInputs) -> PyTree:
        grads = super().assemble(fwd, tg, out, weights, inputs)
        if out.meta_weights is not None:
            if tg.meta_grads is None:
                raise ValueError("meta_weights are for bilevel schemes with inner_steps > 0 (see base.Lookahead)")
            c = jax.lax.stop_gradient(out.meta_weights)
            grads = jax.tree.map(lambda a, m: a + jnp.tensordot(c.astype(m.dtype), m, axes=1), grads, tg.meta_grads)
        return grads


JACOBIAN_MODES = ("params", "representation")


# Requirements whose path lives in a module that builds on this one's classes (so this module cannot
# import it without a cycle): that module registers its ``choose`` here when it loads (``jmtl.core``
# loads it). ``requires -> choose(ctx, jacobian_mode, *, nothing_shared, per_example)``.
PATH_OF_REQUIREMENT: dict[str, Callable] = {}


def choose(
    ctx: PathContext,
    weighting: weighting_lib.WeightingTransform,
    jacobian_mode: str = "params",
    *,
    nothing_shared: bool = False,
    factored: Optional[bool] = None,
    per_example: bool = False,
):
    """The gradient path for this objective, scheme and mode (decided once, before tracing).

    Args:
      ctx: the static context (its objective tells whether a representation split exists).
      weighting: the scheme.
      jacobian_mode: ``'params'`` (exact per-task gradients of the shared params) or
        ``'representation'`` (per-task gradients of the representation: MGDA-UB).
      nothing_shared: the caller knows no param is shared (independent towers).
      factored: in ``'params'`` mode, take the rows through the representation split; default:
        whenever the objective has one.
      per_example: the objective's losses are per-example losses, each its own objective (K = B);
        gradient schemes get the per-example gradients (:class:`PerExampleJacobian`).
    """
    if jacobian_mode not in JACOBIAN_MODES:
        raise ValueError(f"unknown jacobian_mode {jacobian_mode!r}; valid: {', '.join(JACOBIAN_MODES)}")
    needs_jacobian = ctx.needs in (weighting_lib.JACOBIAN, weighting_lib.GRAMIAN)
    if ctx.needs == weighting_lib.BILEVEL:
        if weighting.lookahead is None:
            raise ValueError("a bilevel weighting scheme must declare its lookahead (WeightingTransform.lookahead)")
        return Bilevel(ctx, weighting.lookahead)
    if ctx.needs in PATH_OF_REQUIREMENT:  # paths defined in modules built on this one (last_layer)
        return PATH_OF_REQUIREMENT[ctx.needs](
            ctx, jacobian_mode, nothing_shared=nothing_shared, per_example=per_example
        )
    if ctx.needs == weighting_lib.LAST_LAYER:
        raise ValueError(f"{ctx.scheme_label}: its path (jmtl.core.bayesagg) is not loaded; import jmtl.core first")
    if not needs_jacobian:
        return LossLevel(ctx)
    if weighting.rep_level_only and jacobian_mode != "representation":
        raise ValueError(
            "this weighting scheme is defined on gradients w.r.t. the shared representation only (e.g. "
            "ntkmtl_sr); set weighting.jacobian_mode='representation' (or pass jacobian_mode='representation')"
        )
    if nothing_shared:
        return NothingShared(ctx)
    if per_example:
        if jacobian_mode != "params" or ctx.axis_name is not None:
            raise ValueError(
                "per_example objectives support jacobian_mode='params' on one device (axis_name=None) for now; "
                "use per_example=False for the other modes"
            )
        return PerExampleJacobian(ctx)
    if jacobian_mode == "representation":
        if not weighting.rep_level_ok:
            raise ValueError(
                "this weighting scheme is not meaningful on gradients w.r.t. the shared representation; "
                "use jacobian_mode='params'"
            )
        if not ctx.objective.has_representation:
            raise ValueError(
                "jacobian_mode='representation' needs the objective split at its shared representation: "
                "pass encode= and heads= (encode reads the shared params, heads the rest)"
            )
        return RepJacobian(ctx)
    if ctx.objective.has_representation if factored is None else factored:
        return FactoredJacobian(ctx)
    return ParamJacobian(ctx)
