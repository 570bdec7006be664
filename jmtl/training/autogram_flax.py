"""The task Gramian of a Flax model without its Jacobian: the taps that feed :mod:`jmtl.core.autogram`.

No change to the model: ``flax.linen.intercept_methods`` wraps every module call made while the
loss function runs. A first trace finds the layers it can tap exactly; the real pass then computes
each tapped layer's output from a separate copy of its params plus a zero perturbation, and records
its input. One ``vmap``-ed vjp over the K one-hot cotangents w.r.t. the perturbations gives every
layer's per-task output cotangents ``delta_k``; :mod:`jmtl.core.autogram` turns (input, delta) into
the layer's Gramian block.

A layer is tapped only when exactness is certain:

* its type is exactly one of ``nn.Dense``, ``nn.DenseGeneral`` (no ``batch_dims``), ``nn.Embed``
  (closed forms; with a custom ``dot_general`` or a compute ``dtype`` other than its params' they
  take the per-layer vjp instead), or ``nn.Conv``, ``nn.ConvTranspose``, ``jmtl.models.layers.Conv``
  (per-layer vjp rows);
* it is called once (any method), at the top level of the trace (not inside ``nn.scan`` /
  ``nn.remat`` / ``nn.RNN`` / a ``jax.vmap``: a recurrent cell's params are reused at every step),
  with array arguments, and holds only ``params`` (no ``batch_stats``);
* its params are leaves of the params passed to the loss function (same objects), all shared, and
  read by nothing else: a trace of the tapped function checks that the model's own copy of them
  no longer reaches the losses.

Everything else (norms, GRU/LSTM cells, GNN layers' own params, reused layers, task-specific
params) gets ordinary Jacobian rows, which are exact too.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import tracers as flax_tracers
from jax.extend import core as jex_core

from jmtl.core import autogram as core
from jmtl.core.jacobian import shared_layout
from jmtl.core.paths import TaskGradients
from jmtl.core.sharing import Selector, Sharing, as_sharing, require_shared
from jmtl.models import layers as jmtl_layers

Array = jax.Array
PyTree = Any

DENSE = "dense"
DENSE_GENERAL = "dense_general"
EMBED = "embed"
VJP = "vjp"  # the layer's own rows


def _generic_types() -> tuple[type, ...]:
    return (nn.Conv, nn.ConvTranspose, jmtl_layers.Conv)


@dataclasses.dataclass(frozen=True)
class Layer:
    """One tapped layer of the plan."""

    name: str  # "/"-joined module path
    path: tuple  # the module's scope path
    kind: str  # dense | dense_general | embed | vjp
    leaf_index: dict  # param name -> index among the params' leaves
    param_tree: Any  # treedef of the layer's params
    out_shape: tuple
    out_dtype: Any
    module: Any  # an unbound clone (static)
    n_params: int


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the engine does with each layer and param (for reports and tests)."""

    layers: tuple[Layer, ...]
    rowed: tuple[str, ...]  # paths of the shared params that get ordinary rows
    untapped: dict  # module path -> why it was not tapped (supported types only)

    def kinds(self) -> dict[str, str]:
        return {layer.name: layer.kind for layer in self.layers}

    @property
    def tapped_params(self) -> int:
        return sum(layer.n_params for layer in self.layers)


class _State:
    def __init__(self, leaves):
        self.index = {id(leaf): i for i, leaf in enumerate(leaves)}
        self.trace = flax_tracers.current_trace()
        self.inside = False
        self.calls: dict[tuple, int] = {}
        self.candidates: dict[tuple, Any] = {}
        self.reasons: dict[tuple, str] = {}
        # tap mode
        self.plan: dict[tuple, Layer] = {}
        self.tap_params: dict = {}
        self.perts: dict = {}
        self.records: dict = {}


def _kind(module) -> Optional[str]:
    """The rule for a module type (before looking at its call), or None: not tapped."""
    t = type(module)
    if t is nn.Dense or t is nn.DenseGeneral:
        if getattr(module, "dot_general", None) is not None or getattr(module, "dot_general_cls", None) is not None:
            return VJP
        if t is nn.DenseGeneral and tuple(np.atleast_1d(module.batch_dims)) != ():
            return VJP
        return DENSE if t is nn.Dense else DENSE_GENERAL
    if t is nn.Embed:
        return EMBED
    if t in _generic_types():
        return VJP
    return None


def _closed_form_ok(kind: str, module, x, param_leaves) -> bool:
    """The closed forms hold when nothing is cast on the way (promote_dtype, a compute ``dtype``);
    otherwise the layer's own vjp is exact whatever the casts."""
    dtypes = {jnp.dtype(leaf.dtype) for leaf in param_leaves}
    if len(dtypes) != 1:
        return False
    (pdt,) = dtypes
    if module.dtype is not None and jnp.dtype(module.dtype) != pdt:
        return False
    if kind == EMBED:
        return jnp.issubdtype(x.dtype, jnp.integer)
    return jnp.dtype(x.dtype) == pdt


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, jax.core.Tracer))


def _discover(state: _State, module, method: str, args, kwargs, out) -> None:
    path = tuple(module.scope.path)
    kind = _kind(module)
    if kind is None:
        return
    why = None
    if method != "__call__":
        why = f"method {method}"
    elif flax_tracers.current_trace() != state.trace:
        why = "called inside a transform (nn.scan / nn.remat / vmap): its params may be reused"
    elif kwargs or not all(_is_array(a) for a in args) or not _is_array(out):
        why = "non-array arguments or output"
    elif set(module.variables) != {"params"}:
        why = f"holds collections {sorted(module.variables)}"
    else:
        params = module.variables["params"]
        flat, treedef = jax.tree.flatten(params)
        idx = [state.index.get(id(leaf)) for leaf in flat]
        if any(i is None for i in idx):
            why = "its params are not leaves of the params passed in (transformed on the way)"
    if why is not None:
        state.reasons.setdefault(path, why)
        return
    if kind != VJP and (len(args) != 1 or not _closed_form_ok(kind, module, args[0], flat)):
        kind = VJP
    names = jax.tree_util.tree_flatten_with_path(params)[0]
    leaf_index = {jax.tree_util.keystr(p): i for (p, _), i in zip(names, idx)}
    state.candidates[path] = Layer(
        name="/".join(path),
        path=path,
        kind=kind,
        leaf_index=leaf_index,
        param_tree=treedef,
        out_shape=tuple(out.shape),
        out_dtype=out.dtype,
        module=module.clone(parent=None),
        n_params=int(sum(np.prod(leaf.shape) for leaf in flat)),
    )


def _interceptor(state: _State, discover: bool):
    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if state.inside or context.method_name == "setup" or module.scope is None:
            return next_fun(*args, **kwargs)
        path = tuple(module.scope.path)
        if discover:
            state.calls[path] = state.calls.get(path, 0) + 1
            out = next_fun(*args, **kwargs)
            _discover(state, module, context.method_name, args, kwargs, out)
            return out
        layer = state.plan.get(path)
        if layer is None:
            return next_fun(*args, **kwargs)
        state.inside = True  # the clone's own call is not intercepted again
        try:
            out = layer.module.apply({"params": state.tap_params[layer.name]}, *args)
        finally:
            state.inside = False
        state.records[layer.name] = tuple(args)
        return out + state.perts[layer.name]

    return intercept


def _layer_fn(layer: Layer) -> Callable:
    return lambda p, *args: layer.module.apply({"params": p}, *args)


def _rule(layer: Layer, method: str, chunk_size: int) -> core.Rule:
    if layer.kind == DENSE:

        def dense(record, delta, p):
            x = record[0]
            k = delta.shape[0]
            x2 = x.reshape(-1, x.shape[-1])
            d2 = delta.reshape(k, x2.shape[0], -1)
            g = core.dense_kernel_gramian(x2, d2, method)
            return g + core.bias_gramian(d2) if "bias" in p else g

        return dense
    if layer.kind == DENSE_GENERAL:
        module = layer.module

        def dense_general(record, delta, p):
            x = record[0]
            axes = tuple(a % x.ndim for a in np.atleast_1d(module.axis))
            rest = [a for a in range(x.ndim) if a not in axes]
            xt = jnp.transpose(x, rest + list(axes))
            b = int(np.prod([x.shape[a] for a in rest]))
            x2 = xt.reshape(b, -1)
            d2 = delta.reshape(delta.shape[0], b, -1)
            g = core.dense_kernel_gramian(x2, d2, method)
            return g + core.bias_gramian(d2) if "bias" in p else g

        return dense_general
    if layer.kind == EMBED:
        v = layer.module.num_embeddings

        def embed(record, delta, p):
            ids = record[0].reshape(-1)
            return core.embedding_gramian(ids, delta.reshape(delta.shape[0], ids.shape[0], -1), v, method)

        return embed
    fn = _layer_fn(layer)
    return lambda record, delta, p: core.vjp_gramian(fn, p, record, delta, chunk_size)


def _depends(jaxpr, invar_positions) -> bool:
    """Whether any output of ``jaxpr`` depends on the invars at ``invar_positions`` (conservative:
    an equation's outputs depend on all its inputs)."""
    live = {jaxpr.invars[i] for i in invar_positions}
    for eqn in jaxpr.eqns:
        if any(not isinstance(v, jex_core.Literal) and v in live for v in eqn.invars):
            live.update(eqn.outvars)
    return any(not isinstance(v, jex_core.Literal) and v in live for v in jaxpr.outvars)


@dataclasses.dataclass(frozen=True)
class Autogram:
    """The engine for one loss function: ``loss_fn(params) -> losses [K]`` (or ``(losses, aux)``
    with ``has_aux``), the Flax models it applies intercepted.

    Args:
      loss_fn: the task losses as a function of the params pytree (it calls ``model.apply``).
      shared: which params are shared (a :class:`jmtl.core.sharing.Sharing`, a top-level key,
        a predicate on the leaf path, or None: every param). G is over the shared params only.
      has_aux: ``loss_fn`` returns ``(losses, aux)``.
      chunk_size: 0: one ``vmap`` over the K cotangents (and over K in each per-layer vjp); c >= 1:
        chunks of c (less memory, as ``jacobian_chunk_size``).
      method: ``'auto'`` (the cheaper of the Gram form and the explicit rows per dense layer),
        ``'gram'`` or ``'rows'``.
    """

    loss_fn: Callable
    shared: Union[Selector, Sharing, None] = None
    has_aux: bool = False
    chunk_size: int = 0
    method: str = core.AUTO

    def _call(self, params):
        out = self.loss_fn(params)
        return out if self.has_aux else (out, None)

    def _mask(self, params) -> list[bool]:
        if self.shared is None:
            return [True] * len(jax.tree.leaves(params))
        return jax.tree.leaves(as_sharing(self.shared).mask(params))

    def plan(self, params: PyTree) -> Plan:
        """Which layers are tapped (at trace time; no computation)."""
        leaves, treedef = jax.tree.flatten(params)
        mask = self._mask(params)
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        found: dict = {}

        def discover(*ls):
            state = _State(ls)
            with nn.intercept_methods(_interceptor(state, discover=True)):
                self._call(jax.tree.unflatten(treedef, list(ls)))
            found["state"] = state

        jax.make_jaxpr(discover)(*leaves)
        state: _State = found["state"]
        untapped = dict(state.reasons)
        layers, claimed = [], set()
        for path, layer in state.candidates.items():
            idx = set(layer.leaf_index.values())
            if state.calls.get(path, 0) != 1:
                untapped[path] = f"called {state.calls[path]} times (reused params)"
            elif not all(mask[i] for i in idx):
                untapped[path] = "not (all) shared"
            elif idx & claimed:
                untapped[path] = "its params are also another layer's"
            else:
                claimed |= idx
                layers.append(layer)
        # The model's own copy of a tapped layer's params must no longer reach the losses.
        for _ in range(len(layers) + 1):
            used = self._stray_uses(params, layers)
            if not used:
                break
            for layer in used:
                untapped[layer.path] = "its params are read outside its call"
            layers = [layer for layer in layers if layer not in used]
        tapped_idx = {i for layer in layers for i in layer.leaf_index.values()}
        rowed = tuple(p for i, p in enumerate(paths) if mask[i] and i not in tapped_idx)
        return Plan(tuple(layers), rowed, {"/".join(k): v for k, v in untapped.items()})

    def _tapped_fn(self, params, layers):
        """``(rowed leaves, tapped {name: params}, perts, model_copy leaves) -> (losses, (records, aux))``."""
        leaves, treedef = jax.tree.flatten(params)
        tapped_idx = sorted(i for layer in layers for i in layer.leaf_index.values())
        rowed_idx = [i for i in range(len(leaves)) if i not in set(tapped_idx)]

        def fn(rowed, tapped, perts, model_copy):
            full = list(leaves)
            for i, leaf in zip(rowed_idx, rowed):
                full[i] = leaf
            for i, leaf in zip(tapped_idx, model_copy):
                full[i] = leaf
            state = _State([])
            state.plan = {layer.path: layer for layer in layers}
            state.tap_params = tapped
            state.perts = perts
            with nn.intercept_methods(_interceptor(state, discover=False)):
                losses, aux = self._call(jax.tree.unflatten(treedef, full))
            missing = [layer.name for layer in layers if layer.name not in state.records]
            if missing:
                raise RuntimeError(f"autogram: tapped layers {missing} were not called in the tapped pass")
            return losses, (state.records, aux)

        tapped = {
            layer.name: jax.tree.unflatten(layer.param_tree, [leaves[i] for i in layer.leaf_index.values()])
            for layer in layers
        }
        perts = {layer.name: jnp.zeros(layer.out_shape, layer.out_dtype) for layer in layers}
        return fn, [leaves[i] for i in rowed_idx], tapped, perts, [leaves[i] for i in tapped_idx], rowed_idx

    def _stray_uses(self, params, layers) -> list[Layer]:
        if not layers:
            return []
        fn, rowed, tapped, perts, copy, _ = self._tapped_fn(params, layers)
        closed = jax.make_jaxpr(lambda c: fn(rowed, tapped, perts, c)[0])(copy)
        # The jaxpr's invars are the model's copies, in the order of the sorted tapped leaf indices.
        tapped_idx = sorted(i for layer in layers for i in layer.leaf_index.values())
        position = {i: n for n, i in enumerate(tapped_idx)}
        return [layer for layer in layers if _depends(closed.jaxpr, [position[i] for i in layer.leaf_index.values()])]

    def losses_and_gramian(self, params: PyTree) -> tuple[Array, Array, Callable[[Array], PyTree], Any]:
        """``(losses [K], G [K, K], backward, aux)`` with G over the shared params and
        ``backward(weights [K]) -> grads`` (a pytree like ``params``: ``w^T J`` on the shared params,
        the plain sum of the task gradients on the task-specific ones) from the same forward pass."""
        plan = self.plan(params)
        layers = list(plan.layers)
        fn, rowed, tapped, perts, copy, rowed_idx = self._tapped_fn(params, layers)
        mask = self._mask(params)
        leaves, treedef = jax.tree.flatten(params)
        rules = {layer.name: _rule(layer, self.method, self.chunk_size) for layer in layers}
        losses, gram, backward_parts, aux = core.gramian_from_taps(
            lambda r, t, p: fn(r, t, p, copy),
            rowed,
            tapped,
            perts,
            rules,
            rowed_shared=[mask[i] for i in rowed_idx],
            chunk_size=self.chunk_size,
        )

        def backward(weights: Array) -> PyTree:
            g_rowed, g_tapped = backward_parts(weights)
            full = [None] * len(leaves)
            for i, g in zip(rowed_idx, g_rowed):
                full[i] = g
            for layer in layers:
                for (_, i), g in zip(layer.leaf_index.items(), jax.tree.leaves(g_tapped[layer.name])):
                    full[i] = g
            return jax.tree.unflatten(treedef, full)

        return losses, gram, backward, aux


def losses_and_gramian(
    loss_fn: Callable,
    params: PyTree,
    *,
    shared: Union[Selector, Sharing, None] = None,
    has_aux: bool = False,
    chunk_size: int = 0,
    method: str = core.AUTO,
) -> tuple[Array, Array, Callable[[Array], PyTree], Any]:
    """``Autogram(loss_fn, shared, has_aux, chunk_size, method).losses_and_gramian(params)``."""
    return Autogram(loss_fn, shared, has_aux, chunk_size, method).losses_and_gramian(params)


class AutogramForward(NamedTuple):
    local: Array  # [K] this device's task losses
    vjp: Callable  # weights [K] -> the combined gradient (one weighted backward pass)
    gramian: Array  # [K, K] over the shared params


class AutogramPath:
    """A gradient path of the Flax step for Gramian schemes: G from the engine (no K x d Jacobian
    held), then the scheme's weights, then one weighted backward pass ``backward(w) = w^T J``
    (``StepConfig(gramian='autogram')``; one device)."""

    name = "autogram"
    consults_weighting = True

    def __init__(self, ctx, method: str = core.AUTO):
        self.ctx, self.method = ctx, method

    def forward(self, inputs) -> AutogramForward:
        ctx = self.ctx
        engine = Autogram(
            lambda p: ctx.objective.losses(p, inputs.batch, inputs.rng, inputs.extra),
            shared=ctx.sharing,
            chunk_size=ctx.chunk_size,
            method=self.method,
        )
        losses, gram, backward, _ = engine.losses_and_gramian(inputs.params_local)
        return AutogramForward(losses, backward, gram)

    def task_gradients(self, fwd: AutogramForward, inputs):
        shared = self.ctx.sharing.split(inputs.params)[0]
        require_shared(shared, inputs.params, self.ctx.sharing, self.ctx.scheme_label)
        return TaskGradients(dict(gramian=fwd.gramian, layout=shared_layout(shared)))

    def assemble(self, fwd: AutogramForward, tg, out, weights, inputs) -> PyTree:
        if weights is None:
            raise ValueError(
                f"gramian='autogram' forms the update as one weighted backward pass, but {self.ctx.scheme_label} "
                "returned a direction, not task weights: use gramian='rows' for it"
            )
        return fwd.vjp(weights)
