"""The joint train step, written once per device with collectives on a named axis.

One forward pass gives the K task losses and a ``vjp`` closure. Then

* loss-level schemes: weights ``w`` from the (device-averaged) losses, one backward ``vjp(w)``;
* gradient schemes: the per-task gradients as one batched Jacobian ``vmap(vjp)(I_K)`` (never a
  Python loop of backward passes), averaged across devices *before* the scheme combines them, so
  the result equals the 1-device large-batch result. ``StepConfig.jacobian_chunk_size = c`` computes
  the rows instead in an in-graph loop over chunks of c tasks (``lax.scan`` of ``vmap(vjp)``): the
  backward pass then holds c copies of the activation cotangents instead of K, and on CPU chunks of
  1 are also faster (``experiments/bench.py scaling``). Gramian schemes get ``G = J J^T`` alone;
  their weights give the shared update ``w^T J``.

Gradients are taken of the *local* (per-device) losses w.r.t. a device-varying copy of the params
and then averaged with an explicit ``pmean``. This is the same computation under ``shard_map``
(where ``check_vma`` would otherwise insert an implicit ``psum`` for the replicated params and the
explicit mean would over-count by the device count), under ``pmap`` and on one device
(``axis_name=None``). Tests compare the three.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jmtl import weighting as weighting_lib
from jmtl.models.mtl import RELATION, SHARED, MultiTaskModel
from jmtl.tasks import Task

Array = jax.Array
PyTree = Any


class TrainState(NamedTuple):
    step: Array  # int32 scalar
    params: PyTree  # model params {'shared', 'tasks', 'relation'?}
    weighting_params: PyTree  # learnable params of the weighting scheme ({} if none)
    opt_state: PyTree
    weighting_state: PyTree
    rng: Array  # raw uint32[2] PRNG key (checkpoint-friendly)


NONFINITE_POLICIES = ("raise", "skip")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the train step.

    relation_alpha: alpha of the ``alpha * |W|_F^2`` penalty on the task-relation matrix.
    input_key: batch entry holding the model input.
    """

    relation_alpha: float = 0.0
    input_key: str = "image"
    # 'params': per-task gradients of the shared params (exact). 'representation': per-task gradients
    # of the shared representation (MGDA-UB, Sener & Koltun 2018), then one weighted backward pass
    # through the encoder; far cheaper for big encoders. Ignored by loss-level schemes.
    jacobian_mode: str = "params"
    # penalty(params) -> scalar added to the objective; its gradient joins the update outside the
    # weighting scheme, like the relation penalty (soft sharing, MTRL: jmtl.models.regularizers).
    penalty: Optional[Callable[[PyTree], Array]] = None
    # step -> extra keyword arguments of model.apply in training (the Gumbel temperature schedule
    # of learning to branch: jmtl.models.architectures.model_kwargs_fn).
    model_kwargs: Optional[Callable[[Array], dict]] = None
    # Per-task gradients of gradient schemes: 0 = all K rows in one ``vmap(vjp)(I_K)``; c > 0 = an
    # in-graph loop (``lax.scan``) over ceil(K/c) chunks, each a ``vmap`` of the vjp over c one-hot
    # cotangents (the last chunk padded with zero cotangents, its padded rows dropped). The backward
    # pass then holds c copies of the activation cotangents instead of K; c = 1 is a sequential loop
    # of K backward passes inside the compiled step. c >= K is the same as 0. On a hard-sharing
    # MultiTaskModel without the relation matrix the rows run back through the encoder only (one
    # backward pass through the heads gives all K representation cotangents first).
    jacobian_chunk_size: int = 0
    # On-device transform of batch[input_key] before the model, in the train and eval steps (the
    # dataset's ``DatasetSpec.input_transform``: uint8 pixels -> normalised float32).
    input_transform: Optional[Callable[[Array], Array]] = None

    # Mixed precision: None = float32 throughout. 'bfloat16' (or 'float16'): the forward and backward
    # passes run in that dtype on a cast of the float32 params (the master weights, which the optimizer
    # updates); outputs are cast back to float32, so losses, the Jacobian and the weighting scheme
    # stay float32.
    compute_dtype: Optional[str] = None

    def model_input(self, batch: dict) -> Any:
        x = batch[self.input_key]
        return x if self.input_transform is None else self.input_transform(x)


JACOBIAN_MODES = ("params", "representation")

# FORUM's inner loop stops when the lower-level loss exceeds this (the authors' code uses 1e5).
INNER_LOSS_LIMIT = 1e5

# Batch entries "meta/<name>" hold the second ("meta", validation) batch of bilevel schemes.
META_PREFIX = "meta/"


def split_meta(batch: dict) -> tuple[dict, dict]:
    """``batch -> (train entries, meta entries with the prefix removed)``."""
    train = {k: v for k, v in batch.items() if not k.startswith(META_PREFIX)}
    meta = {k[len(META_PREFIX):]: v for k, v in batch.items() if k.startswith(META_PREFIX)}
    return train, meta


COMPUTE_DTYPES = (None, "float32", "bfloat16", "float16")


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


# ----------------------------------------------------------------------------- collectives


def _to_varying(tree: PyTree, axis_name: Optional[str]) -> PyTree:
    """Marks replicated values as device-varying so that their gradients stay local."""
    if axis_name is None:
        return tree
    return jax.tree.map(lambda x: jax.lax.pcast(x, axis_name, to="varying"), tree)


def _pmean(tree: PyTree, axis_name: Optional[str]) -> PyTree:
    if axis_name is None:
        return tree
    return jax.lax.pmean(tree, axis_name)


# ----------------------------------------------------------------------------- per-task gradients


def per_task_gradients(
    vjp_fn: Callable,
    k: int,
    dtype,
    split: Callable[[tuple], tuple[PyTree, PyTree]],
    summed_like: PyTree,
    *,
    chunk_size: int = 0,
    axis_name: Optional[str] = None,
) -> tuple[Array, PyTree]:
    """The K per-task gradients of one ``vjp`` closure (local: no collective here).

    ``vjp_fn`` maps a ``[K]`` cotangent of the task losses to its tuple of primal cotangents;
    ``split(cotangents) -> (rowed, summed)`` picks the part kept as Jacobian rows (the shared params,
    or the shared representation) and the part of which only the sum over tasks is needed (heads and
    other task-specific params, where the sum of the rows is each head's own task's gradient).

    Returns ``(rows [K, n], summed)``: ``rows[k]`` is task k's gradient of the rowed part, flattened
    like :func:`flatten_rows`; ``summed`` is ``sum_k`` of the task gradients of the summed part,
    whose primal (same structure, shapes and dtypes) is ``summed_like``.

    ``chunk_size`` 0 (or >= K): one ``vmap`` over the K one-hot cotangents. ``c`` in ``[1, K)``: a
    ``lax.scan`` over ceil(K/c) chunks, each a ``vmap`` over c cotangents (the last chunk padded with
    zero cotangents whose rows are dropped); the summed part is the scan's carry, so only c
    backward passes' intermediates and one copy of the heads' gradient are alive at a time.
    """
    if chunk_size < 0:
        raise ValueError(f"jacobian_chunk_size must be >= 0, got {chunk_size}")
    if chunk_size == 0 or chunk_size >= k:
        rowed, summed = split(jax.vmap(vjp_fn)(_to_varying(jnp.eye(k, dtype=dtype), axis_name)))
        return flatten_rows(rowed), jax.tree.map(lambda g: jnp.sum(g, axis=0), summed)

    c = chunk_size
    n_chunks = -(-k // c)
    padded = n_chunks * c
    cots = jnp.concatenate([jnp.eye(k, dtype=dtype), jnp.zeros((padded - k, k), dtype)]).reshape(n_chunks, c, k)
    cots = _to_varying(cots, axis_name)
    valid = (jnp.arange(padded) < k).reshape(n_chunks, c)

    def chunk(cot):
        if c == 1:
            # A plain call, not a vmap of size 1: XLA:CPU runs the batched form of the convolutions'
            # backward ~25 % slower even at batch 1 (Multi-LeNet, K = 10: 0.71x the step time).
            rowed, summed = split(jax.tree.map(lambda g: g[None], vjp_fn(cot[0])))
        else:
            rowed, summed = split(jax.vmap(vjp_fn)(cot))
        return flatten_rows(rowed), summed

    # The carry is device-varying like the gradients the body adds to it.
    init = _to_varying(jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), summed_like), axis_name)

    def body(acc, xs):
        cot, ok = xs
        rows, summed = chunk(cot)
        if padded != k:
            # A zero cotangent gives exact zeros unless the forward pass holds inf/NaN (0 * NaN): the
            # padded rows are masked, not trusted to be zero.
            summed = jax.tree.map(lambda g: jnp.where(ok.reshape((c,) + (1,) * (g.ndim - 1)), g, 0), summed)
        acc = jax.tree.map(lambda a, g: a + jnp.sum(g, axis=0), acc, summed)
        return acc, rows

    summed, rows = jax.lax.scan(body, init, (cots, valid))
    return rows.reshape(padded, -1)[:k], summed


# ----------------------------------------------------------------------------- flattening


def shared_layout(shared: PyTree) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``(path, shape)`` of each shared leaf, in the order they are laid out along the Jacobian's d axis."""
    leaves = jax.tree_util.tree_flatten_with_path(shared)[0]
    return tuple((jax.tree_util.keystr(path), tuple(leaf.shape)) for path, leaf in leaves)


def flatten_rows(tree: PyTree) -> Array:
    """``[K, ...]`` leaves -> ``[K, d]`` (the per-task gradients of the shared params as rows)."""
    leaves = jax.tree.leaves(tree)
    k = leaves[0].shape[0]
    return jnp.concatenate([x.reshape(k, -1) for x in leaves], axis=1)


def unflatten_like(vec: Array, like: PyTree) -> PyTree:
    """``[d]`` -> pytree with the structure and shapes of ``like``."""
    leaves, treedef = jax.tree.flatten(like)
    out, offset = [], 0
    for leaf in leaves:
        n = math.prod(leaf.shape)
        out.append(vec[offset : offset + n].reshape(leaf.shape).astype(leaf.dtype))
        offset += n
    return jax.tree.unflatten(treedef, out)


# ----------------------------------------------------------------------------- init


def init_state(
    model: nn.Module,
    weighting: weighting_lib.WeightingTransform,
    optimizer: optax.GradientTransformation,
    example_input: Array,
    num_tasks: int,
    seed: int,
) -> TrainState:
    """Initial train state (identical on every process for the same seed)."""
    rng = jax.random.PRNGKey(seed)
    init_rng, dropout_rng, rng = jax.random.split(rng, 3)
    params = model.init({"params": init_rng, "dropout": dropout_rng}, example_input, train=False)["params"]
    wparams = weighting.init_params(num_tasks) if weighting.init_params is not None else {}
    opt_state = optimizer.init({"model": params, "weighting": wparams})
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        weighting_params=wparams,
        opt_state=opt_state,
        weighting_state=weighting_lib.base.init_state(weighting, num_tasks, shared_layout(params.get(SHARED, {}))),
        rng=rng,
    )
    # One buffer per leaf: initial states may alias an array in two leaves (optax and scheme states
    # often do), and a donated state must not donate the same buffer twice.
    return jax.tree.map(lambda x: jnp.array(x, copy=True), state)


# ----------------------------------------------------------------------------- the step


def make_train_step(
    model: nn.Module,
    tasks: Sequence[Task],
    weighting: weighting_lib.WeightingTransform,
    optimizer: optax.GradientTransformation,
    config: StepConfig = StepConfig(),
    *,
    axis_name: Optional[str] = None,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The per-device step ``(state, local_batch) -> (state, metrics)``.

    ``axis_name`` names the data-parallel axis (``None`` on one device). Every output is identical on
    all devices. A step whose losses or update are non-finite leaves the state unchanged and reports
    ``metrics['finite'] == False`` (the loop applies the configured policy).
    """
    tasks = tuple(tasks)
    k = len(tasks)
    needs_jacobian = weighting.requires in (weighting_lib.JACOBIAN, weighting_lib.GRAMIAN)
    if config.jacobian_mode not in JACOBIAN_MODES:
        raise ValueError(f"unknown jacobian_mode {config.jacobian_mode!r}; valid: {', '.join(JACOBIAN_MODES)}")
    chunk_size = config.jacobian_chunk_size
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size < 0:
        raise ValueError(f"jacobian_chunk_size must be an int >= 0, got {config.jacobian_chunk_size!r}")
    bilevel = weighting.requires == weighting_lib.BILEVEL
    if bilevel and weighting.lookahead is None:
        raise ValueError("a bilevel weighting scheme must declare its lookahead (WeightingTransform.lookahead)")
    rep_mode = needs_jacobian and config.jacobian_mode == "representation"
    if rep_mode and not weighting.rep_level_ok:
        raise ValueError(
            "this weighting scheme is not meaningful on gradients w.r.t. the shared representation; "
            "use jacobian_mode='params'"
        )

    apply = mixed_precision_apply(model.apply, config.compute_dtype)

    def task_losses(outputs, batch):
        """Batch-mean loss ``[K]`` and main metric ``[K]`` of every task."""
        losses = jnp.stack([jnp.mean(t.loss(outputs[t.name], batch[t.label_key])) for t in tasks])
        main = jnp.stack([jnp.mean(t.main_metric.fn(outputs[t.name], batch[t.label_key])) for t in tasks])
        return losses, main

    def local_losses(params, batch, dropout_rng, extra):
        outputs = apply(
            {"params": params}, config.model_input(batch), train=True, rngs={"dropout": dropout_rng}, **extra
        )
        return task_losses(outputs, batch)

    # Representation mode on a hard-sharing model without the relation matrix: task k's loss depends on
    # the representation only through head k, so with one copy of it per head a single backward pass
    # of sum_k L_k gives all K rows of the representation Jacobian (instead of K backward passes
    # through all K heads: K^2 head backward passes, which dominated at K = 40).
    separable = isinstance(model, MultiTaskModel) and not model.relation
    split_heads = rep_mode and separable
    # The same split serves the parameter-level Jacobian: one backward pass through the heads gives
    # the K representation cotangents, and each of the K rows then runs back through the encoder
    # alone. Done through the whole model, every row also went back through all K heads (K^2 head
    # backward passes; the bulk of the step at K = 40 on CPU, results/bench_scaling.md).
    factored = needs_jacobian and not rep_mode and not bilevel and separable and config.model_kwargs is None

    def head_losses_split(reps, rest, batch, dropout_rng, shared):
        outputs = apply(
            {"params": {**rest, SHARED: shared}}, reps, train=True, rngs={"dropout": dropout_rng},
            method=model.decode_split,
        )
        return task_losses(outputs, batch)

    def head_losses(rep, rest, batch, dropout_rng, shared):
        outputs = apply(
            {"params": {**rest, SHARED: shared}}, rep, train=True, rngs={"dropout": dropout_rng}, method=model.decode
        )
        return task_losses(outputs, batch)

    def map_rows(fn, xs):
        """``fn`` over the leading axis of ``xs``: one ``vmap``, or chunks of ``jacobian_chunk_size``
        rows in an in-graph loop (as for the per-task gradients; faster on CPU, less memory)."""
        if chunk_size == 0:
            return jax.vmap(fn)(xs)
        # batch_size=1 would vmap fn over one row; a plain scan is faster (see per_task_gradients).
        return jax.lax.map(fn, xs, batch_size=chunk_size if chunk_size > 1 else None)

    def bilevel_terms(weighting_state, params_local, vjp_fn, dtype, batch, meta_batch, dropout_rng, extra):
        """The upper-level quantities of a bilevel scheme (``base.Lookahead``): ``(update kwargs,
        stacked upper-level task gradients or None)``."""
        spec = weighting.lookahead
        if not meta_batch:
            raise ValueError(
                "this bilevel weighting scheme needs a validation ('meta') batch in every step: batch entries "
                f"named '{META_PREFIX}<name>' (experiments/train.py adds them)"
            )
        if spec.lr is None:
            raise ValueError("the bilevel scheme's look-ahead learning rate is unset (lookahead_lr=None)")
        lam = jax.lax.stop_gradient(spec.weights(weighting_state)).astype(dtype)
        (g,) = vjp_fn(_to_varying(lam, axis_name))  # grad_theta f(w, theta), local
        g = _pmean(g, axis_name)
        meta_rng = jax.random.fold_in(dropout_rng, 1)

        def train_losses(p):
            return local_losses(p, batch, dropout_rng, extra)[0]

        def val_losses(p):
            return local_losses(p, meta_batch, meta_rng, extra)[0]

        if spec.inner_steps == 0:
            ahead = jax.tree.map(lambda p, d: p - spec.lr * d, params_local, g)
            val_local, val_vjp = jax.vjp(val_losses, ahead)
            cots = jnp.eye(k, dtype=dtype) if spec.per_task else jnp.ones((1, k), dtype)
            (val_grads,) = map_rows(val_vjp, _to_varying(cots, axis_name))
            val_grads = _to_varying(_pmean(val_grads, axis_name), axis_name)
            # <grad L_j^val(theta'), grad L_k^train(theta)> for every k at once: a jvp along row j.
            inner = map_rows(lambda v: jax.jvp(train_losses, (params_local,), (v,))[1], val_grads)  # [R, K]
            inner = _pmean(inner, axis_name)
            return dict(hypergradient=-spec.lr * inner, val_losses=_pmean(val_local, axis_name)), None

        # Value-function form (FORUM): theta_T from T SGD steps on f(w, .), and upper-level gradients at theta.
        def f_ok(f):
            return jnp.isfinite(f) & (f <= INNER_LOSS_LIMIT)

        def inner_step(_, carry):
            # theta_T is the last iterate whose f is finite and <= INNER_LOSS_LIMIT (the FORUM authors
            # stop their loop there too): a diverging inner loop would make q meaningless.
            prev, p, going = carry
            f, d = jax.value_and_grad(lambda q: jnp.vdot(lam, train_losses(q)))(p)
            f, d = _pmean((f, d), axis_name)
            going = going & f_ok(f)
            keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(going, a, b), new, old)
            stepped = jax.tree.map(lambda a, b: a - spec.lr * b, p, d)
            return keep(p, prev), keep(stepped, prev), going

        prev_t, theta_t, _ = jax.lax.fori_loop(
            0, spec.inner_steps, inner_step, (params_local, params_local, jnp.asarray(True))
        )
        last = _pmean(train_losses(theta_t), axis_name)  # the final iterate is checked too
        # Usually it is fine and its losses are the inner losses; else fall back to the previous iterate.
        inner_losses = jax.lax.cond(
            f_ok(jnp.vdot(lam, last)), lambda: last, lambda: _pmean(train_losses(prev_t), axis_name)
        )
        val_local, val_vjp = jax.vjp(val_losses, params_local)
        (val_grads,) = map_rows(val_vjp, _to_varying(jnp.eye(k, dtype=dtype), axis_name))
        val_grads = _pmean(val_grads, axis_name)  # K trees, leading axis K
        rows = jnp.concatenate(
            [flatten_rows(val_grads), flatten_rows(jax.tree.map(lambda x: x[None], g))], axis=0
        )  # [K + 1, P]
        gram = jnp.matmul(rows, rows.T, precision=jax.lax.Precision.HIGHEST)
        kwargs = dict(val_losses=_pmean(val_local, axis_name), inner_losses=inner_losses, meta_gram=gram)
        return kwargs, val_grads

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        batch, meta_batch = split_meta(batch)
        rng = jax.random.fold_in(state.rng, state.step)
        weighting_rng, dropout_rng = jax.random.split(rng)
        if axis_name is not None:
            dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))

        params_local = _to_varying(state.params, axis_name)
        extra = config.model_kwargs(state.step) if config.model_kwargs is not None else {}
        # Nothing shared (independent towers): every param has one task's gradient and a gradient
        # scheme has nothing to balance, so such models take the plain sum (weights 1).
        no_shared = needs_jacobian and not jax.tree.leaves(state.params.get(SHARED, {}))
        if (rep_mode or factored) and not no_shared:
            rest = {name: sub for name, sub in params_local.items() if name != SHARED}
            rep, encoder_vjp = jax.vjp(
                lambda shared: apply(
                    {"params": {**rest, SHARED: shared}},
                    config.model_input(batch),
                    train=True,
                    rngs={"dropout": dropout_rng},
                    method=model.encode,
                ),
                params_local[SHARED],
            )
            if split_heads or factored:
                local, vjp_fn, local_main = jax.vjp(
                    lambda rs, p: head_losses_split(rs, p, batch, dropout_rng, params_local[SHARED]),
                    (rep,) * k,
                    rest,
                    has_aux=True,
                )
            else:
                local, vjp_fn, local_main = jax.vjp(
                    lambda r, p: head_losses(r, p, batch, dropout_rng, params_local[SHARED]), rep, rest, has_aux=True
                )
        else:
            local, vjp_fn, local_main = jax.vjp(
                lambda p: local_losses(p, batch, dropout_rng, extra), params_local, has_aux=True
            )
        losses = _pmean(local, axis_name)
        train_metric = _pmean(local_main, axis_name)

        jac_kwargs = {}
        head_grads = None  # sum over tasks of the task-specific params' gradients (own task's each)
        chunk = config.jacobian_chunk_size
        meta_grads = None  # bilevel value-function schemes: the K upper-level task gradients
        if bilevel:
            jac_kwargs, meta_grads = bilevel_terms(
                state.weighting_state, params_local, vjp_fn, local.dtype, batch, meta_batch, dropout_rng, extra
            )
        elif no_shared:
            pass
        elif rep_mode:
            # vjp_fn's cotangents: (representation [B_local, ...], rest of the params).
            if split_heads:
                rep_cots, head_grads = vjp_fn(_to_varying(jnp.ones((k,), local.dtype), axis_name))
                rep_jac = jnp.stack([c.reshape(-1) for c in rep_cots])  # [K, B_local * ...]
            else:
                rep_jac, head_grads = per_task_gradients(
                    vjp_fn, k, local.dtype, lambda g: g, rest, chunk_size=chunk, axis_name=axis_name
                )  # [K, B_local * ...]
            head_grads = _pmean(head_grads, axis_name)
            n_dev = 1 if axis_name is None else jax.lax.axis_size(axis_name)
            # The global loss is the mean of the device losses, so the global representation Jacobian
            # is the concatenation over devices of J_local / n.
            rep_jac = rep_jac / n_dev
            gram = rep_jac @ rep_jac.T
            if axis_name is not None:
                gram = jax.lax.psum(gram, axis_name)
            jac_kwargs = dict(gramian=gram)
            if weighting.requires == weighting_lib.JACOBIAN:
                jac_kwargs["jacobian"] = (
                    rep_jac if axis_name is None else jax.lax.all_gather(rep_jac, axis_name, axis=1, tiled=True)
                )
        elif needs_jacobian:
            if factored:
                rep_cots, head_grads = vjp_fn(_to_varying(jnp.ones((k,), local.dtype), axis_name))
                jac = map_rows(  # [K, d]: row k = encoder_vjp(task k's gradient w.r.t. the representation)
                    lambda g: flatten_rows(jax.tree.map(lambda x: x[None], encoder_vjp(g)[0]))[0], jnp.stack(rep_cots)
                )
            else:
                heads_local = {name: sub for name, sub in params_local.items() if name != SHARED}
                jac, head_grads = per_task_gradients(
                    vjp_fn,
                    k,
                    local.dtype,
                    lambda g: (g[0][SHARED], {name: sub for name, sub in g[0].items() if name != SHARED}),
                    heads_local,
                    chunk_size=chunk,
                    axis_name=axis_name,
                )  # [K, d]
            jac, head_grads = _pmean((jac, head_grads), axis_name)
            jac_kwargs = dict(gramian=jac @ jac.T, layout=shared_layout(state.params[SHARED]))
            # Gramian schemes get G alone (the [K, d] J is not theirs to read); see the update below.
            if weighting.requires == weighting_lib.JACOBIAN:
                jac_kwargs["jacobian"] = jac

        def run_weighting(wparams):
            return weighting.update(
                losses,
                state.weighting_state,
                params=wparams,
                key=weighting_rng,
                step=state.step,
                **jac_kwargs,
            )

        if no_shared:
            out, new_wstate = weighting_lib.base.weights_output(jnp.ones_like(losses)), state.weighting_state
            wgrads = jax.tree.map(jnp.zeros_like, state.weighting_params)
        elif weighting.init_params is not None:

            def weighting_objective(wparams):
                out, new_ws = run_weighting(wparams)
                value = out.extra_loss
                if out.weights is not None:
                    value = value + jnp.vdot(out.weights, jax.lax.stop_gradient(losses))
                return value, (out, new_ws)

            wgrads, (out, new_wstate) = jax.grad(weighting_objective, has_aux=True)(state.weighting_params)
        else:
            (out, new_wstate), wgrads = run_weighting(state.weighting_params), {}
        weights = None if out.weights is None else jax.lax.stop_gradient(out.weights)

        if no_shared:
            (grads,) = vjp_fn(_to_varying(weights.astype(local.dtype), axis_name))
            grads = _pmean(grads, axis_name)
        elif rep_mode:
            if out.weights is not None:
                rep_cot = out.weights.astype(rep_jac.dtype) @ rep_jac
            else:  # a direction over the global representation: this device's slice
                rep_cot = out.direction
                if axis_name is not None:
                    rep_cot = rep_cot.reshape(jax.lax.axis_size(axis_name), -1)[jax.lax.axis_index(axis_name)]
            (shared_grad,) = encoder_vjp(rep_cot.reshape(rep.shape).astype(rep.dtype))
            grads = dict(head_grads)
            grads[SHARED] = shared_grad if axis_name is None else jax.lax.psum(shared_grad, axis_name)
        elif needs_jacobian:
            # Whether the scheme returned weights or a direction is known only here, at trace time,
            # from its output (Gramian schemes return weights). For weights the shared update is
            # w^T J, a [K] x [K, d] product on the J already built for G. The alternative, a second
            # backward pass vjp(w) for the shared params (the heads still take their own task's
            # gradient), would let J die right after G, but J is small next to the backward pass's
            # activations and the extra backward pass is not: MGDA, Multi-LeNet batch 256, chunks
            # of 1, CPU: w^T J 57 / 217 ms per step vs vjp(w) 90 / 233 ms at K = 2 / 10.
            direction = weighting_lib.combine(out, jac)
            # Task-specific params get their own task's gradient (Sener & Koltun 2018); the sum over
            # tasks of a head's rows is exactly that, as other tasks' rows are zero there.
            grads = dict(head_grads)
            grads[SHARED] = unflatten_like(direction, state.params[SHARED])
        else:
            (grads,) = vjp_fn(_to_varying(weights.astype(local.dtype), axis_name))
            grads = _pmean(grads, axis_name)
        if out.meta_weights is not None:
            if meta_grads is None:
                raise ValueError("meta_weights are for bilevel schemes with inner_steps > 0 (see base.Lookahead)")
            c = jax.lax.stop_gradient(out.meta_weights)
            grads = jax.tree.map(lambda a, m: a + jnp.tensordot(c.astype(m.dtype), m, axes=1), grads, meta_grads)

        objective = jnp.vdot(weights, losses) if weights is not None else jnp.sum(losses)
        objective = objective + out.extra_loss
        if RELATION in state.params and config.relation_alpha:
            w_rel = state.params[RELATION]
            grads[RELATION] = grads[RELATION] + 2.0 * config.relation_alpha * w_rel
            objective = objective + config.relation_alpha * jnp.sum(w_rel**2)
        if config.penalty is not None:
            penalty, penalty_grads = jax.value_and_grad(config.penalty)(state.params)
            grads = jax.tree.map(jnp.add, grads, penalty_grads)
            objective = objective + penalty

        all_params = {"model": state.params, "weighting": state.weighting_params}
        updates, opt_state = optimizer.update({"model": grads, "weighting": wgrads}, state.opt_state, all_params)
        new_all = optax.apply_updates(all_params, updates)

        finite = jnp.all(jnp.isfinite(losses)) & _tree_finite(updates)
        new_state = TrainState(
            step=state.step + 1,
            params=new_all["model"],
            weighting_params=new_all["weighting"],
            opt_state=opt_state,
            weighting_state=new_wstate,
            rng=state.rng,
        )
        # A non-finite step leaves params, optimizer and weighting state as they were.
        kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        kept = kept._replace(step=state.step + 1)
        metrics = {
            "losses": losses,
            "weights": weights if weights is not None else jnp.full((k,), jnp.nan, losses.dtype),
            "train_metric": train_metric,
            "objective": objective,
            "grad_norm": optax.tree.norm(grads),
            "finite": finite,
            "losses_finite": jnp.isfinite(losses),
        }
        return kept, metrics

    return step


def _tree_finite(tree: PyTree) -> Array:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
