"""The joint train step, written once per device with collectives on a named axis.

    forward -> per-task gradients by the chosen path -> weighting -> optimizer update -> metrics

The gradient path (:mod:`jmtl.training.gradient_paths`) is chosen once, when the step is built, from
the scheme's requirement (losses, Gramian, Jacobian, bilevel), ``StepConfig.jacobian_mode`` and what
the model declares it can do. Loss-level schemes get their weights from the (device-averaged) losses
and need one backward pass ``vjp(w)``; gradient schemes get the K x d Jacobian of the shared params
as one batched ``vmap(vjp)(I_K)`` (or an in-graph loop over chunks of rows: on CPU chunks of 1 are
faster, ``experiments/bench``), averaged across devices *before* the scheme combines the rows, so the
result equals the 1-device large-batch result.

Gradients are taken of the *local* (per-device) losses w.r.t. a device-varying copy of the params and
then averaged with an explicit ``pmean`` (:mod:`jmtl.training.jacobian`): the same computation under
``shard_map``, ``pmap`` and on one device (``axis_name=None``). Tests compare the three.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from jmtl import weighting as weighting_lib
from jmtl.models.mtl import RELATION
from jmtl.tasks import Task
from jmtl.training import gradient_paths
from jmtl.training.bilevel_terms import INNER_LOSS_LIMIT, META_PREFIX, split_meta  # noqa: F401 (re-exported)
from jmtl.training.jacobian import flatten_rows, per_task_gradients, pmean, shared_layout, to_varying, unflatten_like  # noqa: F401
from jmtl.training.sharing import Selector, Sharing, as_sharing
from jmtl.training.state import TrainState, init_state  # noqa: F401 (re-exported)

Array = jax.Array
PyTree = Any

NONFINITE_POLICIES = ("raise", "skip")
JACOBIAN_MODES = ("params", "representation")
COMPUTE_DTYPES = (None, "float32", "bfloat16", "float16")
AUTO_CHUNK = -1


def auto_chunk_size() -> int:
    """Rows per in-graph Jacobian chunk for this backend: on CPU chunks of one task (a loop of single
    vjps inside the step) beat one vmap over all K cotangents at every K measured (about 1.8x at K=10,
    and 7x less temporary memory: results/bench/bench_scaling.md); accelerators favour the single vmap."""
    return 1 if jax.default_backend() == "cpu" else 0


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the train step.

    Args:
      relation_alpha: alpha of the ``alpha * |W|_F^2`` penalty on the task-relation matrix
        ``params['relation']`` (0: no penalty).
      input_key: the batch entry holding the model input (default ``'x'``, as ``jmtl.fit``'s; the
        built-in image datasets' configs pass ``'image'``).
      jacobian_mode: ``'params'``: per-task gradients of the shared params (exact).
        ``'representation'``: per-task gradients of the shared representation (MGDA-UB, Sener &
        Koltun 2018), then one weighted backward pass through the encoder; far cheaper for big
        encoders; the model needs ``encode``/``decode``. Ignored by loss-level schemes.
      penalty: ``penalty(params) -> scalar`` added to the objective; its gradient joins the update
        outside the weighting scheme, like the relation penalty (soft sharing, MTRL:
        :mod:`jmtl.models.regularizers`).
      model_kwargs: ``step -> extra keyword arguments of model.apply`` in training (the Gumbel
        temperature schedule of learning to branch: ``jmtl.models.architectures.model_kwargs_fn``).
      jacobian_chunk_size: per-task gradients of gradient schemes. 0: all K rows in one
        ``vmap(vjp)(I_K)``; c > 0: an in-graph loop over ceil(K/c) chunks of c rows (c copies of the
        activation cotangents alive instead of K); -1 (default): 1 on CPU, 0 on accelerators
        (:func:`auto_chunk_size`), as the training loop does.
      input_transform: on-device transform of ``batch[input_key]`` before the model, in the train
        and eval steps (e.g. uint8 pixels -> normalised float32).
      compute_dtype: None / 'float32': float32 throughout. 'bfloat16' (or 'float16'): the forward
        and backward passes run in that dtype on a cast of the float32 params (the master weights,
        which the optimizer updates); outputs are cast back, so losses, the Jacobian and the
        weighting stay float32.
      shared: which params are shared (the ones whose per-task gradients the scheme balances): a
        top-level params key (default ``'shared'``) or a predicate on each leaf's path
        (:mod:`jmtl.training.sharing`).
      per_task_inputs: each task has its own data (LibMTL's ``multi_input``): the batch is
        ``{task name: {input_key: x, label_key: y}}`` and task k's loss is taken on its own batch
        through the shared encoder; same Jacobian semantics and device averaging.
    """

    relation_alpha: float = 0.0
    input_key: str = "x"
    jacobian_mode: str = "params"
    penalty: Optional[Callable[[PyTree], Array]] = None
    model_kwargs: Optional[Callable[[Array], dict]] = None
    jacobian_chunk_size: int = AUTO_CHUNK
    input_transform: Optional[Callable[[Array], Array]] = None
    compute_dtype: Optional[str] = None
    shared: Selector | Sharing | None = None
    per_task_inputs: bool = False

    def model_input(self, batch: dict) -> Any:
        if self.input_key not in batch:
            raise KeyError(
                f"the batch has no entry {self.input_key!r} for the model input (entries: {', '.join(map(str, batch))}). "
                f"Fix: StepConfig(input_key=...) names the entry holding the input."
            )
        x = batch[self.input_key]
        return x if self.input_transform is None else self.input_transform(x)

    @property
    def resolved_chunk_size(self) -> int:
        c = self.jacobian_chunk_size
        if isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < AUTO_CHUNK:
            raise ValueError(f"jacobian_chunk_size must be an int >= 0, or -1 for the backend's default; got {c!r}")
        return auto_chunk_size() if c == AUTO_CHUNK else int(c)


def mixed_precision_apply(apply_fn: Callable, compute_dtype: Optional[str]) -> Callable:
    """``apply_fn`` with float params and inputs cast to ``compute_dtype`` and float outputs cast back
    to float32. The casts are differentiable: gradients reach the float32 params in float32."""
    if compute_dtype in (None, "float32"):
        return apply_fn
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"unknown compute_dtype {compute_dtype!r}; valid: float32, bfloat16, float16")
    dtype = jnp.dtype(compute_dtype)

    def cast(tree, to):
        return jax.tree.map(lambda x: x.astype(to) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree)

    def apply(variables, *args, **kwargs):
        return cast(apply_fn(cast(variables, dtype), *cast(args, dtype), **kwargs), jnp.float32)

    return apply


def make_gradient_path(model, tasks: Sequence[Task], weighting, config: StepConfig, axis_name: Optional[str]):
    """The gradient path of this model, scheme and config (see :mod:`jmtl.training.gradient_paths`)."""
    if config.jacobian_mode not in JACOBIAN_MODES:
        raise ValueError(f"unknown jacobian_mode {config.jacobian_mode!r}; valid: {', '.join(JACOBIAN_MODES)}")
    ctx = gradient_paths.StepContext(
        model=model,
        tasks=tuple(tasks),
        apply=mixed_precision_apply(model.apply, config.compute_dtype),
        model_input=config.model_input,
        sharing=as_sharing(config.shared),
        chunk_size=config.resolved_chunk_size,
        needs=weighting.requires,
        weighting_name=getattr(weighting, "name", None) or "",
        axis_name=axis_name,
        per_task_inputs=config.per_task_inputs,
    )
    return gradient_paths.choose(ctx, weighting, config.jacobian_mode, config.model_kwargs is not None)


def make_train_step(
    model,
    tasks: Sequence[Task],
    weighting: weighting_lib.WeightingTransform,
    optimizer: optax.GradientTransformation,
    config: StepConfig = StepConfig(),
    *,
    axis_name: Optional[str] = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The per-device step ``(state, local_batch) -> (state, metrics)``.

    Args:
      model: a Linen module, ``__call__(x, *, train) -> {task: output}`` (see :mod:`jmtl.training.contract`).
      tasks: the declared tasks, in the order of the loss vector.
      weighting: the weighting transform.
      optimizer: an optax transformation over ``{'model': params, 'weighting': scheme params}``.
      config: the static settings (:class:`StepConfig`).
      axis_name: the data-parallel axis (``None`` on one device).

    Every output is identical on all devices. A step whose losses or update are non-finite leaves the
    state unchanged and reports ``metrics['finite'] == False`` (the loop applies the configured policy).
    """
    tasks = tuple(tasks)
    k = len(tasks)
    path = make_gradient_path(model, tasks, weighting, config, axis_name)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        batch, meta_batch = split_meta(batch)
        weighting_rng, dropout_rng = _step_rngs(state, axis_name)
        inputs = gradient_paths.StepInputs(
            params=state.params,
            params_local=to_varying(state.params, axis_name),
            batch=batch,
            meta_batch=meta_batch,
            dropout_rng=dropout_rng,
            extra=config.model_kwargs(state.step) if config.model_kwargs is not None else {},
            weighting_state=state.weighting_state,
        )
        # 1-4. forward, per-task gradients by the chosen path, weighting, the update's gradients
        g = combined_gradients(path, weighting, inputs, state, weighting_rng, axis_name)
        losses, weights, grads, out = g.losses, g.weights, g.grads, g.output
        objective = (jnp.vdot(weights, losses) if weights is not None else jnp.sum(losses)) + out.extra_loss
        grads, objective = _add_penalties(grads, objective, state.params, config)
        # 5. optimizer update; a non-finite step keeps the old state
        all_params = {"model": state.params, "weighting": state.weighting_params}
        updates, opt_state = optimizer.update(
            {"model": grads, "weighting": g.weighting_grads}, state.opt_state, all_params
        )
        new_all = optax.apply_updates(all_params, updates)
        finite = jnp.all(jnp.isfinite(losses)) & _tree_finite(updates)
        new_state = TrainState(
            state.step + 1, new_all["model"], new_all["weighting"], opt_state, g.weighting_state, state.rng
        )
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)._replace(
            step=state.step + 1
        )
        # 6. metrics
        metrics = {
            "losses": losses,
            "weights": weights if weights is not None else jnp.full((k,), jnp.nan, losses.dtype),
            "train_metric": g.train_metric,
            "objective": objective,
            "grad_norm": optax.tree.norm(grads),
            "finite": finite,
            "losses_finite": jnp.isfinite(losses),
        }
        return kept, metrics

    step.gradient_path = path.name  # for logs and tests: which path the step took
    return step


class CombinedGradients(NamedTuple):
    """One step's gradients before the optimizer (what :func:`combined_gradients` returns)."""

    losses: Array  # [K] device-averaged task losses
    train_metric: Array  # [K] device-averaged main metric of every task
    output: Any  # the scheme's WeightingOutput
    weights: Optional[Array]  # [K] task weights (stop_gradient), or None for direction schemes
    grads: PyTree  # gradient of the model params (shared: the scheme's combination; the rest: own task's)
    weighting_state: PyTree  # the scheme's new state
    weighting_grads: PyTree  # gradients of the scheme's own params ({} if none)


def combined_gradients(
    path, weighting, inputs: gradient_paths.StepInputs, state, key: Array, axis_name
) -> CombinedGradients:
    """Forward -> per-task gradients by ``path`` -> weighting -> the combined gradient.

    The core of the train step, also behind :func:`jmtl.mtl_value_and_grad`. ``state`` needs the
    fields ``step``, ``weighting_params`` and ``weighting_state``.
    """
    fwd = path.forward(inputs)
    losses = pmean(fwd.local, axis_name)
    train_metric = pmean(fwd.main, axis_name)
    task_grads = path.task_gradients(fwd, inputs)
    out, new_wstate, wgrads = _weigh(weighting, path, losses, state, task_grads.scheme_inputs, key)
    weights = None if out.weights is None else jax.lax.stop_gradient(out.weights)
    grads = path.assemble(fwd, task_grads, out, weights, inputs)
    return CombinedGradients(losses, train_metric, out, weights, grads, new_wstate, wgrads)


def _step_rngs(state: TrainState, axis_name: Optional[str]) -> tuple[Array, Array]:
    """The scheme's key (identical on every device) and this device's dropout key."""
    rng = jax.random.fold_in(state.rng, state.step)
    weighting_rng, dropout_rng = jax.random.split(rng)
    if axis_name is not None:
        dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))
    return weighting_rng, dropout_rng


def _weigh(weighting, path, losses: Array, state: TrainState, scheme_inputs: dict, key: Array):
    """``(output, new scheme state, gradients of the scheme's own params)``."""
    if not path.consults_weighting:
        out = weighting_lib.base.weights_output(jnp.ones_like(losses))
        return out, state.weighting_state, jax.tree.map(jnp.zeros_like, state.weighting_params)

    def run(wparams):
        return weighting.update(
            losses, state.weighting_state, params=wparams, key=key, step=state.step, **scheme_inputs
        )

    if weighting.init_params is None:
        out, new_wstate = run(state.weighting_params)
        return out, new_wstate, {}

    def objective(wparams):
        out, new_ws = run(wparams)
        value = out.extra_loss
        if out.weights is not None:
            value = value + jnp.vdot(out.weights, jax.lax.stop_gradient(losses))
        return value, (out, new_ws)

    wgrads, (out, new_wstate) = jax.grad(objective, has_aux=True)(state.weighting_params)
    return out, new_wstate, wgrads


def _add_penalties(grads: PyTree, objective: Array, params: PyTree, config: StepConfig) -> tuple[PyTree, Array]:
    """The relation matrix's ``alpha |W|_F^2`` and the config's penalty, outside the weighting scheme."""
    if isinstance(params, dict) and RELATION in params and config.relation_alpha:
        w_rel = params[RELATION]
        grads = dict(grads)
        grads[RELATION] = grads[RELATION] + 2.0 * config.relation_alpha * w_rel
        objective = objective + config.relation_alpha * jnp.sum(w_rel**2)
    if config.penalty is not None:
        penalty, penalty_grads = jax.value_and_grad(config.penalty)(params)
        grads = jax.tree.map(jnp.add, grads, penalty_grads)
        objective = objective + penalty
    return grads, objective


def _tree_finite(tree: PyTree) -> Array:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
