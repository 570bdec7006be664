"""Multi-task gradients for any JAX model, inside your own training step.

What torchjd's ``mtl_backward`` is to PyTorch: give a function from params to the K task losses, and
get the losses, the combined gradient (shared params combined by the weighting scheme, every other
param its own task's gradient) and the scheme's new state. The params may be any pytree: Flax Linen
params, an NNX state after ``nnx.split``, Equinox arrays, a dict of arrays. It is a pure function,
so it goes inside ``jax.jit``, ``shard_map`` (pass ``axis_name``) or ``pmap``; the built-in Flax
train step (:mod:`jmtl.training.step`) runs the same :func:`combined_gradients`.

    vg = jmtl.mtl_value_and_grad(loss_fn, jmtl.weighting.get("pcgrad"), shared="encoder")
    wstate = vg.init(params)
    res = vg(params, wstate, batch, key=key, step=step)   # res.losses [K], res.grads like params
    updates, opt_state = optimizer.update(res.grads, opt_state, params)

With a representation split (``encode=``, ``heads=``) the per-task gradients of the shared params
are taken through the representation (one backward pass through the heads per task, then through
the encoder), and ``jacobian_mode='representation'`` balances the gradients w.r.t. the
representation itself (MGDA-UB, Sener & Koltun 2018).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from jmtl import weighting as weighting_lib
from jmtl.core import paths
from jmtl.core.jacobian import pmean, shared_layout, to_varying
from jmtl.core.sharing import Selector, Sharing, as_sharing

Array = jax.Array
PyTree = Any

AUTO_CHUNK = -1


def auto_chunk_size() -> int:
    """Rows per in-graph Jacobian chunk for this backend: on CPU chunks of one task (a loop of single
    vjps inside the step) beat one vmap over all K cotangents at every K measured (about 1.8x at K=10,
    and 7x less temporary memory: results/bench/bench_scaling.md); accelerators favour the single vmap."""
    return 1 if jax.default_backend() == "cpu" else 0


def resolve_chunk_size(c: Any) -> int:
    """``jacobian_chunk_size`` checked, with -1 (the backend's default) resolved."""
    if isinstance(c, bool) or not isinstance(c, int) or c < AUTO_CHUNK:
        raise ValueError(f"jacobian_chunk_size must be an int >= 0, or -1 for the backend's default; got {c!r}")
    return auto_chunk_size() if c == AUTO_CHUNK else c


class WeightingCarry(NamedTuple):
    """The scheme's part of a step's state: what :func:`combined_gradients` reads."""

    step: Array  # int32 scalar
    weighting_params: PyTree  # the scheme's learnable params ({} if none)
    weighting_state: PyTree


class CombinedGradients(NamedTuple):
    """One step's gradients before the optimizer."""

    losses: Array  # [K] device-averaged task losses
    output: Any  # the scheme's WeightingOutput
    weights: Optional[Array]  # [K] task weights (stop_gradient), or None for direction schemes
    grads: PyTree  # gradient of the params (shared: the scheme's combination; the rest: own task's)
    weighting_state: PyTree  # the scheme's new state
    weighting_grads: PyTree  # gradients of the scheme's own params ({} if none)


def combined_gradients(
    path, weighting: weighting_lib.WeightingTransform, inputs: paths.StepInputs, carry, key: Optional[Array]
) -> CombinedGradients:
    """Forward -> per-task gradients by ``path`` -> weighting -> the combined gradient.

    ``carry`` needs the fields of :class:`WeightingCarry` (a train state has them).
    """
    fwd = path.forward(inputs)
    losses = pmean(fwd.local, path.ctx.axis_name)
    task_grads = path.task_gradients(fwd, inputs)
    out, new_wstate, wgrads = _weigh(weighting, path, losses, carry, task_grads.scheme_inputs, key)
    weights = None if out.weights is None else jax.lax.stop_gradient(out.weights)
    grads = path.assemble(fwd, task_grads, out, weights, inputs)
    return CombinedGradients(losses, out, weights, grads, new_wstate, wgrads)


def _weigh(weighting, path, losses: Array, carry, scheme_inputs: dict, key: Optional[Array]):
    """``(output, new scheme state, gradients of the scheme's own params)``."""
    if not path.consults_weighting:
        out = weighting_lib.base.weights_output(jnp.ones_like(losses))
        return out, carry.weighting_state, jax.tree.map(jnp.zeros_like, carry.weighting_params)

    def run(wparams):
        available = dict(scheme_inputs, params=wparams, key=key, step=carry.step)
        return weighting.update(weighting_lib.inputs_from(weighting.requires, losses, available), carry.weighting_state)

    if weighting.init_params is None:
        out, new_wstate = run(carry.weighting_params)
        return out, new_wstate, {}

    def objective(wparams):
        out, new_ws = run(wparams)
        value = out.extra_loss
        if out.weights is not None:
            value = value + jnp.vdot(out.weights, jax.lax.stop_gradient(losses))
        return value, (out, new_ws)

    wgrads, (out, new_wstate) = jax.grad(objective, has_aux=True)(carry.weighting_params)
    return out, new_wstate, wgrads


class MTLGradients(NamedTuple):
    """What :func:`mtl_value_and_grad` returns."""

    losses: Array  # [K] task losses (device-averaged under an axis)
    grads: PyTree  # like params: the gradient to hand to the optimizer
    weighting_state: PyTree  # the scheme's new state
    weights: Optional[Array]  # [K] task weights, or None when the scheme returns a direction
    weighting_grads: PyTree  # gradients of the scheme's own params (uncertainty weighting), else {}


@dataclasses.dataclass(frozen=True)
class MTLValueAndGrad:
    """``vg(params, weighting_state, *args, key=None, step=0, weighting_params=None, meta_args=None)``.

    Built by :func:`mtl_value_and_grad`; ``vg.init(params)`` gives the scheme's initial state and
    ``vg.init_weighting_params(num_tasks)`` its learnable params (or ``{}``).
    """

    loss_fn: Callable
    weighting: weighting_lib.WeightingTransform
    sharing: Sharing
    chunk_size: int
    axis_name: Optional[str]
    encode: Optional[Callable] = None
    heads: Optional[Callable] = None
    jacobian_mode: str = "params"
    per_example: bool = False
    targets: Optional[Callable] = None
    target_kinds: Optional[tuple[str, ...]] = None
    last_layer: Optional[Callable] = None

    def init(self, params: PyTree, num_tasks: Optional[int] = None, *args) -> PyTree:
        """The scheme's initial state for ``params`` (K from ``num_tasks``, or from ``loss_fn(params, *args)``).

        Last-layer schemes (``bayesagg_mtl``) size their state by the representation: pass a batch's
        ``*args``."""
        if num_tasks is None:
            num_tasks = int(jax.eval_shape(self.loss_fn, params, *args).shape[0])
        layout = shared_layout(self.sharing.split(params)[0])
        if self.weighting.requires == weighting_lib.LAST_LAYER:
            if self.encode is None or not args:
                raise ValueError(
                    "this scheme's state is sized by the representation: build with encode=/heads=/targets= and "
                    "call vg.init(params, None, *batch)"
                )
            layout = (("representation", tuple(jax.eval_shape(self.encode, params, *args).shape)),)
        return weighting_lib.base.init_state(self.weighting, num_tasks, layout)

    def init_weighting_params(self, num_tasks: int) -> PyTree:
        return self.weighting.init_params(num_tasks) if self.weighting.init_params is not None else {}

    def path(self, num_tasks: int):
        """The gradient path this scheme and split take for ``num_tasks`` tasks."""
        objective = paths.Objective(
            num_tasks=num_tasks,
            losses=lambda p, args, rng, extra: self.loss_fn(p, *args),
            encode=None if self.encode is None else (lambda p, args, rng, extra: self.encode(p, *args)),
            heads=None if self.heads is None else (lambda p, rep, args, rng, extra: self.heads(p, rep, *args)),
            targets=None if self.targets is None else (lambda args: self.targets(*args)),
            target_kinds=self.target_kinds,
            last_layer=self.last_layer,
        )
        ctx = paths.PathContext(objective, self.sharing, self.chunk_size, self.weighting.requires, self.axis_name)
        return paths.choose(ctx, self.weighting, self.jacobian_mode, per_example=self.per_example)

    def __call__(
        self, params, weighting_state, *args, key=None, step=0, weighting_params=None, meta_args=None
    ) -> MTLGradients:
        shape = jax.eval_shape(self.loss_fn, params, *args)
        if len(getattr(shape, "shape", ())) != 1:
            raise ValueError(
                f"loss_fn must return the [K] vector of task losses (one scalar per task); it returned shape "
                f"{getattr(shape, 'shape', type(shape).__name__)}"
            )
        # The scheme sees the caller's key, None included: a scheme that draws only in some settings
        # (bayesagg_mtl with classification tasks) refuses None itself. The objective's key is never
        # None (bilevel schemes fold the meta batch's from it); the core's loss_fn takes none.
        scheme_key = key
        if key is None:
            if self.weighting.needs_key:
                # A default key would be the same at every step: RLW would become static weights,
                # alternating would train one task, PCGrad one projection order.
                raise ValueError(
                    "this weighting scheme draws random numbers (needs_key=True) and key=None was given: pass a fresh "
                    "PRNG key every step, e.g. vg(params, state, *args, key=jax.random.fold_in(key, step), step=step)"
                )
            key = jax.random.PRNGKey(0)
        if self.weighting.requires == weighting_lib.BILEVEL and meta_args is None:
            raise ValueError(
                "bilevel schemes need a second (validation) batch every step: pass meta_args=(…) with the same "
                "structure as the training arguments"
            )
        inputs = paths.StepInputs(
            params=params,
            params_local=to_varying(params, self.axis_name),
            batch=args,
            meta_batch=None if meta_args is None else tuple(meta_args),
            rng=key,
            extra={},
            weighting_state=weighting_state,
        )
        carry = WeightingCarry(
            jnp.asarray(step, jnp.int32), {} if weighting_params is None else weighting_params, weighting_state
        )
        g = combined_gradients(self.path(int(shape.shape[0])), self.weighting, inputs, carry, scheme_key)
        return MTLGradients(g.losses, g.grads, g.weighting_state, g.weights, g.weighting_grads)


def mtl_value_and_grad(
    loss_fn: Optional[Callable[..., Array]],
    weighting: weighting_lib.WeightingTransform | str,
    *,
    shared: Selector | Sharing | None = None,
    encode: Optional[Callable[..., Any]] = None,
    heads: Optional[Callable[..., Array]] = None,
    jacobian_mode: str = "params",
    jacobian_chunk_size: int = AUTO_CHUNK,
    axis_name: Optional[str] = None,
    per_example: bool = False,
    targets: Optional[Callable[..., Any]] = None,
    target_kinds: Optional[Sequence[str]] = None,
    last_layer: Optional[Callable[..., Any]] = None,
) -> MTLValueAndGrad:
    """Multi-task losses and the weighting scheme's combined gradient of any params pytree.

    Args:
      loss_fn: ``(params, *args) -> [K]`` task losses (batch means); may be None when ``encode`` and
        ``heads`` are given (it is then ``heads(params, encode(params, *args), *args)``).
      weighting: a transform (``jmtl.weighting.get(...)``) or a scheme name (default hyperparameters).
      shared: which params are shared: a top-level key of a params dict (default ``'shared'``) or a
        predicate on each leaf's ``jax.tree_util.keystr`` path. Gradient schemes balance the
        per-task gradients of these; every other param gets the sum of the task gradients (its own
        task's gradient when only one task reads it).
      encode: ``(params, *args) -> representation``, reading only the shared params (optional).
      heads: ``(params, representation, *args) -> [K]``, reading no shared param. With both, the
        per-task gradients of the shared params run back through the representation: K backward
        passes through the heads, then K through the encoder, instead of K through everything.
      jacobian_mode: ``'params'`` (exact per-task gradients of the shared params) or
        ``'representation'`` (per-task gradients w.r.t. the representation, then one weighted
        backward pass through the encoder: MGDA-UB; needs ``encode`` and ``heads``).
      jacobian_chunk_size: rows per in-graph chunk of the per-task gradients (0: one vmap; -1: the
        backend's default, 1 on CPU).
      axis_name: the data-parallel axis inside ``shard_map``/``pmap`` (losses and gradients are
        averaged over it before the scheme combines them), or None.
      per_example: ``loss_fn`` returns one loss per example and each is its own objective (K = B,
        instance-wise risk minimisation, torchjd's IWRM): gradient schemes balance the per-example
        gradients (one ``vmap`` of ``grad`` over the examples; every leaf of ``*args`` must carry the
        example axis first). One device, ``jacobian_mode='params'``, no representation split.
      targets: ``(*args) -> [B, K]`` task labels, or ``(labels, [B, K] 0/1 mask)``: read by last-layer
        schemes only (``bayesagg_mtl``, which also needs ``encode`` at the input of the heads' last
        affine layer; its state is ``vg.init(params, None, *args)``).
      target_kinds: last-layer schemes: each task's kind, ``'regression'`` (default for all),
        ``'classification'`` (``targets`` holds class indices; softmax cross-entropy) or ``'binary'``
        (0/1; sigmoid cross-entropy of one logit).
      last_layer: last-layer schemes with classification tasks: ``params -> [(kernel [D, C], bias
        [C]) per task]``, each head's last affine layer (``logits_k = h @ kernel + bias``).

    Returns:
      An :class:`MTLValueAndGrad`: call it as ``vg(params, weighting_state, *args, key=, step=)``.
      Schemes that draw random numbers (``weighting.needs_key``: PCGrad's order, GradVac's,
      GradDrop's masks, RLW, random, alternating) need a fresh ``key`` every step; ``key=None`` is
      refused for them rather than silently reusing one key. Bilevel schemes (Auto-Lambda, MOML,
      FORUM) take their second batch as ``meta_args=``.
    """
    if isinstance(weighting, str):
        weighting = weighting_lib.get(weighting)
    if (encode is None) != (heads is None):
        raise ValueError("the representation split needs both encode= and heads= (or neither)")
    if loss_fn is None:
        if encode is None:
            raise ValueError("loss_fn is None: pass loss_fn, or encode= and heads= to compose it from")

        def loss_fn(params, *args):
            return heads(params, encode(params, *args), *args)

    if jacobian_mode not in paths.JACOBIAN_MODES:
        raise ValueError(f"unknown jacobian_mode {jacobian_mode!r}; valid: {', '.join(paths.JACOBIAN_MODES)}")
    if per_example and encode is not None:
        raise ValueError(
            "per_example=True takes the per-example gradients through the whole loss_fn: drop encode/heads"
        )
    return MTLValueAndGrad(
        loss_fn,
        weighting,
        as_sharing(shared),
        resolve_chunk_size(jacobian_chunk_size),
        axis_name,
        encode,
        heads,
        jacobian_mode,
        bool(per_example),
        targets,
        None if target_kinds is None else tuple(target_kinds),
        last_layer,
    )
