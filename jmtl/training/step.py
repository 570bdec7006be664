"""The Flax train step: one per-device step with collectives on a named axis.

    loss function from model.apply and the tasks -> the core's combined gradient -> penalties ->
    optimizer update -> non-finite guard -> metrics

The gradient path (:mod:`jmtl.core.paths`) is chosen once, when the step is built, from the scheme's
requirement (losses, Gramian, Jacobian, bilevel), ``StepConfig.jacobian_mode`` and what the model
declares it can do (``encode``/``decode``, separable heads, nothing shared). Everything between the
losses and the combined gradient is the functional core's (:func:`jmtl.core.combined_gradients`),
the same code :func:`jmtl.mtl_value_and_grad` runs; the same step runs under ``shard_map``,
``pmap`` and on one device (``axis_name=None``), which tests compare.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from jmtl import tasks as tasks_lib
from jmtl import weighting as weighting_lib
from jmtl.core import paths
from jmtl.core.jacobian import shared_layout, to_varying
from jmtl.core.sharing import Selector, Sharing, as_sharing
from jmtl.core.value_and_grad import AUTO_CHUNK, combined_gradients, resolve_chunk_size
from jmtl.tasks import Task
from jmtl.training.state import TrainState, init_state
from jmtl.training.task_losses import FlaxObjective

__all__ = [
    "META_PREFIX",
    "NONFINITE_POLICIES",
    "StepConfig",
    "TrainState",
    "init_state",
    "make_gradient_path",
    "make_train_step",
    "mixed_precision_apply",
    "split_meta",
]

Array = jax.Array
PyTree = Any

NONFINITE_POLICIES = ("raise", "skip")
JACOBIAN_MODES = paths.JACOBIAN_MODES
COMPUTE_DTYPES = (None, "float32", "bfloat16", "float16")
GRAMIAN_SOURCES = ("rows", "autogram")

# Batch entries "meta/<name>" hold the second ("meta", validation) batch of bilevel schemes.
META_PREFIX = "meta/"


def split_meta(batch: dict) -> tuple[dict, dict]:
    """``batch -> (train entries, meta entries with the prefix removed)``."""
    train = {k: v for k, v in batch.items() if not k.startswith(META_PREFIX)}
    meta = {k[len(META_PREFIX) :]: v for k, v in batch.items() if k.startswith(META_PREFIX)}
    return train, meta


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the train step.

    Args:
      input_key: the batch entry holding the model input (default ``'x'``, as ``jmtl.fit``'s; the
        built-in image datasets' configs pass ``'image'``).
      jacobian_mode: ``'params'``: per-task gradients of the shared params (exact).
        ``'representation'``: per-task gradients of the shared representation (MGDA-UB, Sener &
        Koltun 2018), then one weighted backward pass through the encoder; far cheaper for big
        encoders; the model needs ``encode``/``decode``. Ignored by loss-level schemes.
      penalties: ``penalty(params) -> scalar`` functions added to the objective; their gradients
        join the update outside the weighting scheme: the task-relation matrix's
        ``alpha |W|_F^2`` (:func:`jmtl.models.mtl.relation_penalty`), soft sharing and MTRL
        (:mod:`jmtl.models.regularizers`), your own.
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
      gramian: how Gramian schemes (MGDA, UPGrad, PCGrad, Nash-MTL, CAGrad, …) get G = J J^T:
        ``'rows'`` (default): from the rows of the K x d Jacobian; ``'autogram'``: from per-layer
        terms without holding J (:mod:`jmtl.training.autogram_flax`; dense layers in closed form,
        others by per-layer rows), then one weighted backward pass. One device only;
        ``results/bench/autogram.md`` says where it pays.
      per_task_inputs: each task has its own data (LibMTL's ``multi_input``): the batch is
        ``{task name: {input_key: x, label_key: y}}`` and task k's loss is taken on its own batch
        through the shared encoder; same Jacobian semantics and device averaging.
      per_example: every example's loss (the sum of its task losses) is one objective, K = B
        (instance-wise risk minimisation, torchjd's IWRM): a Gramian or Jacobian scheme balances the
        B per-example gradients of the shared params (:class:`jmtl.core.paths.PerExampleJacobian`);
        every other param (the heads, read by every example) gets the sum of its per-example
        gradients. The scheme's state is sized for K = B (``init_state(num_tasks=batch size)``, as
        the training loop does), so every batch must have that size. One device, ``jacobian_mode=
        'params'``, ``gramian='rows'``, no label masks, no per-task inputs, no task whose loss pools
        over the batch (tagging, pixel tasks). The logged ``losses`` stay the K task batch means (of
        the same per-example values); the logged ``weights`` are NaN (there are B of them).
    """

    input_key: str = "x"
    jacobian_mode: str = "params"
    penalties: Sequence[Callable[[PyTree], Array]] = ()
    model_kwargs: Optional[Callable[[Array], dict]] = None
    jacobian_chunk_size: int = AUTO_CHUNK
    input_transform: Optional[Callable[[Array], Array]] = None
    compute_dtype: Optional[str] = None
    shared: Selector | Sharing | None = None
    per_task_inputs: bool = False
    gramian: str = "rows"
    per_example: bool = False

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
        return resolve_chunk_size(int(c) if isinstance(c, numbers.Integral) and not isinstance(c, bool) else c)

    def __post_init__(self):
        if callable(self.penalties) or not all(callable(p) for p in self.penalties):
            raise TypeError(
                f"StepConfig.penalties must be a tuple of functions params -> scalar; got {self.penalties!r} "
                "(one penalty: penalties=(fn,))"
            )
        object.__setattr__(self, "penalties", tuple(self.penalties))
        if self.gramian not in GRAMIAN_SOURCES:
            raise ValueError(f"unknown StepConfig.gramian {self.gramian!r}; valid: {', '.join(GRAMIAN_SOURCES)}")


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


def check_per_example(tasks: Sequence[Task], weighting, config: StepConfig, axis_name: Optional[str]) -> None:
    """Refuses the settings ``StepConfig(per_example=True)`` does not support, one line each."""
    name = getattr(weighting, "name", None) or "this scheme"
    problems = {
        axis_name is not None: "runs on one device (the per-example rows are not averaged over devices); "
        "set parallel to a single device",
        config.jacobian_mode != "params": "needs jacobian_mode='params'",
        config.gramian != "rows": "takes the Gramian from the per-example rows: set gramian='rows'",
        config.per_task_inputs: "needs one batch shared by every task, not per_task_inputs",
        weighting.requires not in (weighting_lib.JACOBIAN, weighting_lib.GRAMIAN): f"balances per-example "
        f"gradients, but {name!r} is not a Gramian or Jacobian scheme: use e.g. upgrad, mgda or dualproj",
    }
    for bad, why in problems.items():
        if bad:
            raise ValueError(f"per_example=True {why} (or per_example=False)")
    pooled = [t.name for t in tasks if t.kind in tasks_lib.PIXEL_KINDS + tasks_lib.TOKEN_KINDS and t.loss_fn is None]
    if pooled:
        raise ValueError(
            f"per_example=True needs one loss per example, but task(s) {pooled} pool their loss over the batch's "
            "pixels/tokens: use per_example=False for them"
        )


def make_gradient_path(model, tasks: Sequence[Task], weighting, config: StepConfig, axis_name: Optional[str]):
    """The gradient path of this model, scheme and config (see :mod:`jmtl.core.paths`)."""
    if config.jacobian_mode not in JACOBIAN_MODES:
        raise ValueError(f"unknown jacobian_mode {config.jacobian_mode!r}; valid: {', '.join(JACOBIAN_MODES)}")
    if config.per_example:
        check_per_example(tasks, weighting, config, axis_name)
    flax_objective = FlaxObjective(
        model=model,
        tasks=tuple(tasks),
        apply=mixed_precision_apply(model.apply, config.compute_dtype),
        model_input=config.model_input,
        axis_name=axis_name,
        per_task_inputs=config.per_task_inputs,
        per_example=config.per_example,
    )
    name = getattr(weighting, "name", None) or ""
    sharing = as_sharing(config.shared)
    ctx = paths.PathContext(
        objective=flax_objective.objective(),
        sharing=sharing,
        chunk_size=config.resolved_chunk_size,
        needs=weighting.requires,
        axis_name=axis_name,
        scheme_label=f"weighting scheme {name!r}" if name else "the weighting scheme",
    )
    if config.per_example:
        path = paths.choose(ctx, weighting, "params", per_example=True)
        path.example_losses = flax_objective.example_losses  # the step logs task means from these
        return path
    if (
        weighting.requires in (weighting_lib.JACOBIAN, weighting_lib.GRAMIAN)
        and config.jacobian_mode == "representation"
    ):
        if config.per_task_inputs:
            raise ValueError(
                "per_task_inputs: jacobian_mode='representation' would need one representation per task's batch; "
                "use jacobian_mode='params'"
            )
        missing = [m for m in ("encode", "decode") if not hasattr(model, m)]
        if missing and weighting.rep_level_ok and not getattr(model, "no_shared_params", False):
            raise ValueError(
                f"jacobian_mode='representation' needs the model to split at its shared representation, but "
                f"{type(model).__name__} has no method(s) {', '.join(missing)}. Fix: give it `encode(x, *, train)` "
                "(input -> shared representation, using only the shared params) and `decode(rep, *, train)` "
                "(representation -> {task: output}), or use jacobian_mode='params'."
            )
    if config.gramian == "autogram" and weighting.requires == weighting_lib.GRAMIAN:
        if axis_name is not None or config.jacobian_mode != "params" or getattr(model, "no_shared_params", False):
            raise ValueError(
                "gramian='autogram' runs on one device with jacobian_mode='params' and shared params (the Gramian "
                "of the device-mean Jacobian is not the sum of per-device Gramians); use gramian='rows' here"
            )
        from jmtl.training.autogram_flax import AutogramPath  # noqa: PLC0415 (Flax taps: only when asked for)

        return AutogramPath(ctx)
    # The factored rows need the encoder to hold exactly the shared params (the default sharing by
    # key) and no step-dependent model arguments (those go through __call__ only).
    factored = (
        flax_objective.has_representation
        and flax_objective.split_heads
        and sharing.by_key
        and config.model_kwargs is None
    )
    return paths.choose(
        ctx,
        weighting,
        config.jacobian_mode,
        nothing_shared=bool(getattr(model, "no_shared_params", False)),
        factored=factored,
    )


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
    k = len(tasks)
    path = make_gradient_path(model, tasks, weighting, config, axis_name)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        batch, meta_batch = split_meta(batch)
        if config.per_example:
            _check_per_example_state(weighting, config, state, batch)
        weighting_rng, dropout_rng = _step_rngs(state, axis_name)
        inputs = paths.StepInputs(
            params=state.params,
            params_local=to_varying(state.params, axis_name),
            batch=batch,
            meta_batch=meta_batch or None,
            rng=dropout_rng,
            extra=config.model_kwargs(state.step) if config.model_kwargs is not None else {},
            weighting_state=state.weighting_state,
        )
        # 1-4. forward, per-task gradients by the chosen path, weighting, the combined gradient
        g = combined_gradients(path, weighting, inputs, state, weighting_rng)
        losses, weights, grads = g.losses, g.weights, g.grads
        objective = (jnp.vdot(weights, losses) if weights is not None else jnp.sum(losses)) + g.output.extra_loss
        for penalty in config.penalties:  # outside the scheme: their gradients are not balanced
            value, penalty_grads = jax.value_and_grad(penalty)(state.params)
            grads = jax.tree.map(jnp.add, grads, penalty_grads)
            objective = objective + value
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
        if config.per_example:
            # The scheme saw B per-example objectives; the log keeps the K task batch means (the same
            # forward as the core's: XLA computes it once) and NaN weights (B of them, not K).
            losses = jnp.mean(
                jax.lax.stop_gradient(path.example_losses(state.params, batch, dropout_rng, inputs.extra)), 1
            )
            weights = None
        # 6. metrics
        metrics = {
            "losses": losses,
            "weights": weights if weights is not None else jnp.full((k,), jnp.nan, losses.dtype),
            "objective": objective,
            "grad_norm": optax.tree.norm(grads),
            "finite": finite,
            "losses_finite": jnp.isfinite(losses),
        }
        return kept, metrics

    step.gradient_path = path.name  # for logs and tests: which path the step took
    return step


def _check_per_example_state(weighting, config: StepConfig, state: TrainState, batch: dict) -> None:
    """At trace time: the scheme's state must be sized for this batch's B objectives."""
    sizes = {x.shape[0] for x in jax.tree.leaves(batch) if x.ndim}
    if len(sizes) != 1:
        raise ValueError(f"per_example=True: every batch entry needs the example axis first; got sizes {sorted(sizes)}")
    (b,) = sizes
    shared = as_sharing(config.shared).split(state.params)[0]
    want = jax.eval_shape(lambda: weighting_lib.base.init_state(weighting, b, shared_layout(shared)))
    have = jax.eval_shape(lambda: state.weighting_state)
    if jax.tree.structure(want) != jax.tree.structure(have) or any(
        a.shape != h.shape for a, h in zip(jax.tree.leaves(want), jax.tree.leaves(have))
    ):
        raise ValueError(
            f"per_example=True: the weighting scheme's state was not initialised for this batch's {b} objectives "
            f"(one per example): init_state(..., num_tasks={b}) and batches of a fixed size {b}"
        )


def _step_rngs(state: TrainState, axis_name: Optional[str]) -> tuple[Array, Array]:
    """The scheme's key (identical on every device) and this device's dropout key."""
    rng = jax.random.fold_in(state.rng, state.step)
    weighting_rng, dropout_rng = jax.random.split(rng)
    if axis_name is not None:
        dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))
    return weighting_rng, dropout_rng


def _tree_finite(tree: PyTree) -> Array:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
