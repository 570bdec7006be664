"""How the train step gets the gradients a weighting scheme needs: one *gradient path*, chosen once
when the step is built (:func:`choose`).

=====================  =====================================================================================
path                   what it computes
=====================  =====================================================================================
``LossLevel``          loss-level schemes: weights from the losses, then one backward pass ``vjp(w)``
``ParamJacobian``      per-task gradients of the shared params, through the whole model: ``vmap(vjp)(I_K)``
                       (or an in-graph loop over chunks of rows), averaged over devices before weighting
``FactoredJacobian``   the same rows for models with *separable heads*: one backward pass through the
                       heads gives the K representation cotangents, then each row runs back through the
                       encoder alone (no K^2 head backward passes)
``RepJacobian``        per-task gradients w.r.t. the shared representation (MGDA-UB), then one weighted
                       backward pass through the encoder
``Bilevel``            bilevel schemes: upper-level terms through a look-ahead step
                       (:mod:`jmtl.training.bilevel_terms`)
``NothingShared``      models that declare ``no_shared_params`` (independent towers): every param has one
                       task's gradient, so the plain sum is exact and the scheme is not consulted
=====================  =====================================================================================

Every path provides the same three stages, which the step (:mod:`jmtl.training.step`) calls in order:

* ``forward(inputs) -> Forward``: this device's task losses and main metrics, and the vjp closures;
* ``task_gradients(fwd, inputs) -> TaskGradients``: what the scheme reads (Gramian, Jacobian,
  bilevel terms), averaged over devices;
* ``assemble(fwd, tg, out, weights, inputs) -> grads``: the gradient pytree of the model params
  from the scheme's output.

What a model must provide for the fast paths is a declared capability, not its class:
``encode(x, *, train)`` / ``decode(rep, *, train)`` for the representation path, and additionally
``separable_heads`` (a property, True when task k's output depends on the representation only through
head k) with ``decode_split(reps, *, train)`` for the factored paths.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from jmtl import tasks as tasks_lib
from jmtl import weighting as weighting_lib
from jmtl.tasks import Task
from jmtl.training import bilevel_terms as bilevel_lib
from jmtl.training.jacobian import (
    flatten_rows,
    map_rows,
    per_task_gradients,
    pmean,
    shared_layout,
    to_varying,
    unflatten_like,
)
from jmtl.training.sharing import Sharing, require_shared

Array = jax.Array
PyTree = Any


class StepInputs(NamedTuple):
    """What every path may read in one step."""

    params: PyTree  # the replicated params (for shapes / layout)
    params_local: PyTree  # the same, device-varying (what is differentiated)
    batch: dict
    meta_batch: dict  # bilevel schemes' second batch ({} otherwise)
    dropout_rng: Array
    extra: dict  # step-dependent keyword arguments of model.apply
    weighting_state: PyTree


class Forward(NamedTuple):
    local: Array  # [K] this device's task losses
    main: Array  # [K] this device's main metric of every task
    vjp: Callable  # cotangent of the [K] local losses -> gradients of what the path differentiated
    encoder_vjp: Optional[Callable] = None  # representation paths: rep cotangent -> (shared grads,)
    rep: Optional[Array] = None


class TaskGradients(NamedTuple):
    scheme_inputs: dict  # keywords the weighting scheme reads: gramian / jacobian / layout / bilevel terms
    rows: Optional[Array] = None  # [K, d] rows the shared update is combined from (params or representation)
    head_grads: Optional[PyTree] = None  # sum over tasks of the task-specific params' gradients
    meta_grads: Optional[PyTree] = None  # bilevel value-function schemes: the K upper-level task gradients


@dataclasses.dataclass(frozen=True)
class StepContext:
    """The static pieces every path shares."""

    model: Any
    tasks: tuple[Task, ...]
    apply: Callable  # model.apply, possibly in mixed precision
    model_input: Callable[[dict], Any]
    sharing: Sharing
    chunk_size: int
    needs: str  # the scheme's requirement (weighting_lib.LOSSES / JACOBIAN / GRAMIAN / BILEVEL)
    weighting_name: str
    axis_name: Optional[str]
    per_task_inputs: bool = False  # batch = {task name: that task's own batch} (LibMTL's multi_input)

    @property
    def scheme_label(self) -> str:
        return f"weighting scheme {self.weighting_name!r}" if self.weighting_name else "the weighting scheme"

    @property
    def k(self) -> int:
        return len(self.tasks)

    def task_losses(self, outputs: dict, batch: dict) -> tuple[Array, Array]:
        """Batch-mean loss ``[K]`` and main metric ``[K]`` of every task (over its labelled examples
        where the batch has the task's mask entry, see :class:`jmtl.tasks.Task`)."""
        check_outputs(outputs, self.tasks)
        losses, mains = [], []
        for t in self.tasks:
            mask = batch.get(t.mask_key)
            if mask is None:
                losses.append(jnp.mean(t.loss(outputs[t.name], batch[t.label_key])))
                mains.append(jnp.mean(t.main_metric.fn(outputs[t.name], batch[t.label_key])))
                continue
            labels = t.safe_labels(batch[t.label_key], mask)
            if t.kind in tasks_lib.PIXEL_KINDS and t.loss_fn is None:
                # Unlabelled examples now hold no valid pixel, so the plain batch mean of the pooled
                # per-example values is already the pixel mean over the labelled examples.
                losses.append(jnp.mean(t.loss(outputs[t.name], labels)))
                mains.append(jnp.mean(t.main_metric.fn(outputs[t.name], labels)))
                continue
            count = jnp.sum(mask.astype(jnp.float32))
            scale = 1.0
            if self.axis_name is not None:
                # The device mean of the local losses must be the global masked mean: divide the
                # local sum by the global count and multiply by the device count.
                count = jax.lax.psum(count, self.axis_name)
                scale = jax.lax.axis_size(self.axis_name)
            losses.append(scale * tasks_lib.masked_mean(t.loss(outputs[t.name], labels), mask, count))
            mains.append(scale * tasks_lib.masked_mean(t.main_metric.fn(outputs[t.name], labels), mask, count))
        return jnp.stack(losses), jnp.stack(mains)

    def model_losses(self, params, batch, rng, extra) -> tuple[Array, Array]:
        if self.per_task_inputs:
            return self._per_task_input_losses(params, batch, rng, extra)
        outputs = self.apply({"params": params}, self.model_input(batch), train=True, rngs={"dropout": rng}, **extra)
        return self.task_losses(outputs, batch)

    def _per_task_input_losses(self, params, batch, rng, extra) -> tuple[Array, Array]:
        """Each task's loss on its own batch through the shared encoder: ``batch[task.name]`` holds the
        task's input and labels. The model runs once per task (its other heads' outputs are unused)."""
        missing = [t.name for t in self.tasks if t.name not in batch]
        if missing:
            raise KeyError(
                f"per_task_inputs: the batch has no sub-batch for task(s) {missing} (entries: {list(batch)}); "
                "it must be {task name: {input, labels}} (see jmtl.data.PerTaskBatches)"
            )
        losses, mains = [], []
        for i, t in enumerate(self.tasks):
            sub = batch[t.name]
            outputs = self.apply(
                {"params": params},
                self.model_input(sub),
                train=True,
                rngs={"dropout": jax.random.fold_in(rng, i)},
                **extra,
            )
            loss, main = StepContext.task_losses(dataclasses.replace(self, tasks=(t,)), {t.name: outputs[t.name]}, sub)
            losses.append(loss[0])
            mains.append(main[0])
        return jnp.stack(losses), jnp.stack(mains)


def check_outputs(outputs: Any, tasks: Sequence[Task]) -> None:
    """The model's outputs must be a dict with exactly one entry per declared task (checked at trace time)."""
    if not isinstance(outputs, dict):
        raise TypeError(
            f"the model returned {type(outputs).__name__}; a multi-task model's __call__ must return a dict "
            f"{{task name: output}} with the tasks {[t.name for t in tasks]}"
        )
    names = [t.name for t in tasks]
    missing = [n for n in names if n not in outputs]
    extra = [n for n in outputs if n not in names]
    if missing or extra:
        raise ValueError(
            "the model's outputs do not match the declared tasks: "
            + "; ".join(
                part
                for part in (
                    f"missing output(s) for task(s) {missing}" if missing else "",
                    f"output(s) {extra} belong to no declared task" if extra else "",
                )
                if part
            )
            + f". Declared tasks: {names}; model outputs: {list(outputs)}. Build the model for the same task list."
        )


class LossLevel:
    """Loss-level schemes: weights from the losses, one backward pass ``vjp(w)``."""

    name = "loss_level"
    consults_weighting = True

    def __init__(self, ctx: StepContext):
        self.ctx = ctx

    def forward(self, inputs: StepInputs) -> Forward:
        local, vjp_fn, main = jax.vjp(
            lambda p: self.ctx.model_losses(p, inputs.batch, inputs.dropout_rng, inputs.extra),
            inputs.params_local,
            has_aux=True,
        )
        return Forward(local, main, vjp_fn)

    def task_gradients(self, fwd: Forward, inputs: StepInputs) -> TaskGradients:
        return TaskGradients({})

    def assemble(self, fwd: Forward, tg: TaskGradients, out, weights, inputs: StepInputs) -> PyTree:
        (grads,) = fwd.vjp(to_varying(weights.astype(fwd.local.dtype), self.ctx.axis_name))
        return pmean(grads, self.ctx.axis_name)


class NothingShared(LossLevel):
    """A model that declares ``no_shared_params``: every param has one task's gradient, so the plain
    sum (weights 1) is exact and a gradient scheme has nothing to balance."""

    name = "nothing_shared"
    consults_weighting = False


class ParamJacobian(LossLevel):
    """Rows of the shared params' Jacobian through the whole model."""

    name = "param_jacobian"

    def _check_shared(self, shared: PyTree, params: PyTree) -> None:
        require_shared(shared, params, self.ctx.sharing, self.ctx.scheme_label)

    def _scheme_inputs(self, jac: Array, inputs: StepInputs, shared: PyTree) -> dict:
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
        return TaskGradients(self._scheme_inputs(jac, inputs, ctx.sharing.split(inputs.params)[0]), jac, head_grads)

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


class _Representation:
    """The forward pass split at the shared representation: ``encode`` with its vjp, then the heads."""

    ctx: StepContext
    split_heads: bool

    def forward(self, inputs: StepInputs) -> Forward:
        ctx, model = self.ctx, self.ctx.model
        shared, rest = ctx.sharing.split(inputs.params_local)
        self._check_shared(shared, inputs.params)
        rng = inputs.dropout_rng
        rep, encoder_vjp = jax.vjp(
            lambda s: ctx.apply(
                {"params": ctx.sharing.merge(s, rest)},
                ctx.model_input(inputs.batch),
                train=True,
                rngs={"dropout": rng},
                method=model.encode,
            ),
            shared,
        )
        if self.split_heads:
            # Task k's head reads its own copy of the representation: one backward pass of sum_k L_k
            # gives all K rows of the representation Jacobian (instead of K backward passes through
            # all K heads: K^2 head backward passes, which dominated at K = 40).
            def heads(reps, r):
                outputs = ctx.apply(
                    {"params": ctx.sharing.merge(shared, r)},
                    reps,
                    train=True,
                    rngs={"dropout": rng},
                    method=model.decode_split,
                )
                return ctx.task_losses(outputs, inputs.batch)

            local, vjp_fn, main = jax.vjp(heads, (rep,) * ctx.k, rest, has_aux=True)
        else:

            def heads(r_, r):
                outputs = ctx.apply(
                    {"params": ctx.sharing.merge(shared, r)}, r_, train=True, rngs={"dropout": rng}, method=model.decode
                )
                return ctx.task_losses(outputs, inputs.batch)

            local, vjp_fn, main = jax.vjp(heads, rep, rest, has_aux=True)
        return Forward(local, main, vjp_fn, encoder_vjp, rep)


class FactoredJacobian(_Representation, ParamJacobian):
    """Rows of the shared params' Jacobian for models with separable heads: one backward pass through
    the heads gives the K representation cotangents; each row then runs back through the encoder
    alone. Through the whole model every row also went back through all K heads (K^2 head backward
    passes; the bulk of the step at K = 40 on CPU, results/bench/bench_scaling.md)."""

    name = "factored_jacobian"
    split_heads = True

    def task_gradients(self, fwd: Forward, inputs: StepInputs) -> TaskGradients:
        ctx = self.ctx
        rep_cots, head_grads = fwd.vjp(to_varying(jnp.ones((ctx.k,), fwd.local.dtype), ctx.axis_name))
        jac = map_rows(  # [K, d]: row k = encoder_vjp(task k's gradient w.r.t. the representation)
            lambda g: flatten_rows(jax.tree.map(lambda x: x[None], fwd.encoder_vjp(g)[0]))[0],
            jnp.stack(rep_cots),
            ctx.chunk_size,
        )
        jac, head_grads = pmean((jac, head_grads), ctx.axis_name)
        return TaskGradients(self._scheme_inputs(jac, inputs, ctx.sharing.split(inputs.params)[0]), jac, head_grads)


class RepJacobian(_Representation, ParamJacobian):
    """Per-task gradients w.r.t. the shared representation (MGDA-UB, Sener & Koltun 2018), then one
    weighted backward pass through the encoder."""

    name = "representation_jacobian"

    def __init__(self, ctx: StepContext, split_heads: bool):
        super().__init__(ctx)
        self.split_heads = split_heads

    def task_gradients(self, fwd: Forward, inputs: StepInputs) -> TaskGradients:
        ctx, axis_name = self.ctx, self.ctx.axis_name
        rest = ctx.sharing.split(inputs.params_local)[1]
        # vjp's cotangents: (representation [B_local, ...], rest of the params).
        if self.split_heads:
            rep_cots, head_grads = fwd.vjp(to_varying(jnp.ones((ctx.k,), fwd.local.dtype), axis_name))
            rep_jac = jnp.stack([c.reshape(-1) for c in rep_cots])  # [K, B_local * ...]
        else:
            rep_jac, head_grads = per_task_gradients(
                fwd.vjp, ctx.k, fwd.local.dtype, lambda g: g, rest, chunk_size=ctx.chunk_size, axis_name=axis_name
            )  # [K, B_local * ...]
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
            kwargs["jacobian"] = (
                rep_jac if axis_name is None else jax.lax.all_gather(rep_jac, axis_name, axis=1, tiled=True)
            )
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

    def __init__(self, ctx: StepContext, spec):
        super().__init__(ctx)
        self.spec = spec

    def task_gradients(self, fwd: Forward, inputs: StepInputs) -> TaskGradients:
        ctx = self.ctx
        if not inputs.meta_batch:
            raise ValueError(
                "this bilevel weighting scheme needs a validation ('meta') batch in every step: batch entries "
                f"named '{bilevel_lib.META_PREFIX}<name>' (the training loop adds them)"
            )
        meta_rng = jax.random.fold_in(inputs.dropout_rng, 1)
        kwargs, meta_grads = bilevel_lib.bilevel_terms(
            self.spec,
            inputs.weighting_state,
            inputs.params_local,
            fwd.vjp,
            fwd.local.dtype,
            lambda p: ctx.model_losses(p, inputs.batch, inputs.dropout_rng, inputs.extra)[0],
            lambda p: ctx.model_losses(p, inputs.meta_batch, meta_rng, inputs.extra)[0],
            k=ctx.k,
            chunk_size=ctx.chunk_size,
            axis_name=ctx.axis_name,
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


def choose(ctx: StepContext, weighting, jacobian_mode: str, has_model_kwargs: bool):
    """The gradient path for this model, scheme and mode (decided once, when the step is built)."""
    model = ctx.model
    needs_jacobian = ctx.needs in (weighting_lib.JACOBIAN, weighting_lib.GRAMIAN)
    if ctx.needs == weighting_lib.BILEVEL:
        if weighting.lookahead is None:
            raise ValueError("a bilevel weighting scheme must declare its lookahead (WeightingTransform.lookahead)")
        return Bilevel(ctx, weighting.lookahead)
    if not needs_jacobian:
        return LossLevel(ctx)
    if getattr(weighting, "rep_level_only", False) and jacobian_mode != "representation":
        raise ValueError(
            "this weighting scheme is defined on gradients w.r.t. the shared representation only (e.g. "
            "ntkmtl_sr); set weighting.jacobian_mode='representation' (or pass jacobian_mode='representation')"
        )
    if ctx.per_task_inputs:
        if jacobian_mode == "representation":
            raise ValueError(
                "per_task_inputs: jacobian_mode='representation' would need one representation per task's batch; "
                "use jacobian_mode='params'"
            )
        return NothingShared(ctx) if getattr(model, "no_shared_params", False) else ParamJacobian(ctx)
    if getattr(model, "no_shared_params", False):
        return NothingShared(ctx)
    separable = bool(getattr(model, "separable_heads", False)) and hasattr(model, "decode_split")
    if jacobian_mode == "representation":
        if not weighting.rep_level_ok:
            raise ValueError(
                "this weighting scheme is not meaningful on gradients w.r.t. the shared representation; "
                "use jacobian_mode='params'"
            )
        missing = [m for m in ("encode", "decode") if not hasattr(model, m)]
        if missing:
            raise ValueError(
                f"jacobian_mode='representation' needs the model to split at its shared representation, but "
                f"{type(model).__name__} has no method(s) {', '.join(missing)}. Fix: give it `encode(x, *, train)` "
                "(input -> shared representation, using only the shared params) and `decode(rep, *, train)` "
                "(representation -> {task: output}), or use jacobian_mode='params'."
            )
        return RepJacobian(ctx, split_heads=separable)
    # The factored rows need the encoder to hold exactly the shared params (the default sharing by key)
    # and no step-dependent model arguments (those go through __call__ only).
    if separable and hasattr(model, "encode") and ctx.sharing.by_key and not has_model_kwargs:
        return FactoredJacobian(ctx)
    return ParamJacobian(ctx)
