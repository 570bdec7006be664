"""The weighting protocol: every loss- or gradient-balancing scheme is an optax-style transform.

A scheme is a :class:`WeightingTransform`, a pair of pure functions::

    state = transform.init(num_tasks, layout=layout)
    out, state = transform.update(inputs, state)

``inputs`` is a NamedTuple typed by what the scheme ``requires``: :class:`LossInputs`,
:class:`GramianInputs`, :class:`JacobianInputs` or :class:`BilevelInputs`. Each carries
``losses``, the ``[K]`` vector of (device-averaged) task losses, and what that requirement adds
(the Gramian, the Jacobian and its layout, the bilevel terms). A scheme reads the fields it needs;
it never receives a field its requirement does not provide, and no keyword is silently dropped.
``transform.apply(losses, state, jacobian=J, key=k, ...)`` builds the inputs from keywords and
refuses one the requirement does not have (a typo such as ``jacobain=`` is an error). What the scheme returns
(:class:`WeightingOutput`) is either

* ``weights`` ``[K]``: the update of the shared parameters is ``weights @ J`` (for loss-level
  schemes the train step gets it with one backward pass of ``sum_k weights_k * L_k``), or
* ``direction`` ``[d]``: a combined gradient of the flattened shared parameters, for schemes whose
  result is not a linear combination of the task gradients (PCGrad, GradDrop, ...).

Gradient schemes (``requires='jacobian'``) receive ``J``, the ``[K, d]`` Jacobian of the task losses
w.r.t. the flattened shared parameters, computed by the train step with one ``jax.vjp`` and a
``vmap`` over one-hot cotangents and averaged over data-parallel devices before the scheme sees it.

Schemes with learnable parameters (uncertainty weighting's log-variances) declare
``init_params``; those parameters live in the train state beside the model's and are trained by the
same optax optimizer, through ``sum_k weights_k(p) * L_k + extra_loss(p)``. Every other scheme's
output is treated as a constant (``stop_gradient``) by the step.

The transform is pure: randomness comes from ``key`` (the step's PRNG key, identical on every
device), so runs are reproducible and every device computes the same combination. ``step`` is the
global step (int32 scalar).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Protocol, Union

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any

LOSSES = "losses"  # the scheme sees only the task losses
JACOBIAN = "jacobian"  # the scheme sees the [K, d] Jacobian of the shared parameters
GRAMIAN = "gramian"  # the scheme sees only G = J J^T ([K, K]) and returns weights
# The scheme sees hypergradients of validation losses through a look-ahead step (see ``Lookahead``).
BILEVEL = "bilevel"
# The scheme sees the shared representation, the task labels and their masks (BayesAgg-MTL; see
# ``jmtl.weighting.last_layer``) and returns the representation's cotangent as a ``direction``.
LAST_LAYER = "last_layer"
REQUIREMENTS = (LOSSES, JACOBIAN, GRAMIAN, BILEVEL, LAST_LAYER)

# Static description of the flattened shared parameters: ``(path, shape)`` of each leaf in the order
# its entries appear along the ``d`` axis of the Jacobian (for per-layer / per-matrix schemes).
Layout = tuple[tuple[str, tuple[int, ...]], ...]


class WeightingOutput(NamedTuple):
    """What a scheme returns for one step.

    Exactly one of ``weights`` / ``direction`` is set.
    weights: ``[K]`` task weights (update of shared params = ``weights @ J``).
    direction: ``[d]`` combined gradient of the flattened shared params.
    extra_loss: scalar added to the objective; differentiable w.r.t. the scheme's own params.
    meta_weights: ``[K]`` coefficients of the upper-level (meta-batch) task gradients added to the
      update; bilevel value-function schemes only (see ``Lookahead``).
    """

    weights: Optional[Array] = None
    direction: Optional[Array] = None
    extra_loss: Array | float = 0.0
    meta_weights: Optional[Array] = None


class Lookahead(NamedTuple):
    """What a bilevel scheme (``requires='bilevel'``) asks of the train step.

    Lower level: the model params ``theta`` minimise the weighted training loss
    ``f(w, theta) = sum_k w_k L_k^train(theta)`` with the scheme's current weights
    ``w = weights(state)``. Upper level: the task losses ``L_j^val`` on a second ("meta") batch,
    usually from the validation split. The step gives ``update`` one of two sets of quantities:

    ``inner_steps == 0`` -- one-step hypergradients (Auto-Lambda, MOML). A virtual SGD step
    ``theta' = theta - lr * grad_theta f(w, theta)`` is linear in ``w`` with
    ``d theta' / d w_k = -lr * grad L_k^train(theta)``, so the chain rule is exact without any Hessian:

        d L_j^val(theta') / d w_k = -lr * < grad L_j^val(theta'), grad L_k^train(theta) >;

    the inner products come from one forward-mode pass (``jvp``) of the K training losses along
    ``grad L_j^val(theta')``, not from per-task backward passes. ``update`` receives
    ``hypergradient`` ``[R, K]`` (row j: d L_j^val(theta') / d w; R = K when ``per_task``, else R = 1
    and the row is that of ``sum_j L_j^val``) and ``val_losses`` ``[K]`` at ``theta'``.

    ``inner_steps == T > 0`` -- value-function quantities (FORUM). ``theta_T``: T plain SGD steps of
    ``f(w, .)`` from ``theta`` with step ``lr``. ``update`` receives ``inner_losses`` ``[K]`` =
    ``L_k^train(theta_T)``, ``val_losses`` ``[K]`` = ``L_j^val(theta)`` and ``meta_gram``
    ``[K+1, K+1]``, the Gram matrix of ``(grad L_1^val(theta), ..., grad L_K^val(theta),
    grad_theta f(w, theta))`` over all model params. Such a scheme may return
    ``WeightingOutput.meta_weights`` ``c``: the model update is then
    ``grad_theta sum_k weights_k L_k^train + sum_j c_j grad L_j^val`` (a combination of both batches'
    gradients).

    weights: ``state -> [K]`` weights of the lower-level objective.
    lr: step size of the virtual / inner SGD steps (``None`` = the model optimizer's learning rate,
      filled in by ``jmtl.training.builders.weighting``).
    per_task: hypergradient of every upper-level loss, or of their sum.
    inner_steps: 0 for hypergradients; T > 0 for the value-function quantities.
    meta_split: the split the upper-level batches come from by default ('validation' or 'train').
    """

    weights: Callable[[Any], Array]
    lr: Optional[float]
    per_task: bool = False
    inner_steps: int = 0
    meta_split: str = "validation"


class InitFn(Protocol):
    """``init(num_tasks, *, layout=None)``, the same signature for every scheme. ``layout`` (see
    ``Layout``) sizes states that hold per-parameter quantities (gradient EMAs); other schemes ignore it."""

    def __call__(self, num_tasks: int, *, layout: Optional[Layout] = None) -> Any: ...


class LossInputs(NamedTuple):
    """What a loss-level scheme (``requires='losses'``) receives each step.

    losses: ``[K]`` task losses (device-averaged).
    step: the global step (int32 scalar), ``None`` outside a train step.
    key: the step's PRNG key (identical on every device); ``None`` when the caller has none.
    params: the scheme's own learnable params (``init_params``), else ``None``.
    """

    losses: Array
    step: Optional[Array] = None
    key: Optional[Array] = None
    params: Optional[PyTree] = None


class GramianInputs(NamedTuple):
    """What a Gramian scheme (``requires='gramian'``) receives: the fields of :class:`LossInputs` and

    gramian: ``[K, K]`` Gram matrix ``G = J J^T`` of the task gradients (shared parameters, or the
      shared representation under ``jacobian_mode='representation'``).
    """

    losses: Array
    gramian: Array
    step: Optional[Array] = None
    key: Optional[Array] = None
    params: Optional[PyTree] = None


class JacobianInputs(NamedTuple):
    """What a Jacobian scheme (``requires='jacobian'``) receives: the fields of :class:`LossInputs` and

    jacobian: ``[K, d]`` Jacobian of the task losses w.r.t. the flattened shared parameters (or the
      shared representation).
    layout: ``(path, shape)`` of the leaves along ``d`` (see ``Layout``); ``None`` when unknown.
    gramian: ``J J^T`` when the step has already formed it (saves the scheme a ``[K, d]`` product),
      else ``None``.
    """

    losses: Array
    jacobian: Array
    layout: Optional[Layout] = None
    gramian: Optional[Array] = None
    step: Optional[Array] = None
    key: Optional[Array] = None
    params: Optional[PyTree] = None


class BilevelInputs(NamedTuple):
    """What a bilevel scheme (``requires='bilevel'``) receives (see :class:`Lookahead`): the fields of
    :class:`LossInputs` and

    hypergradient: ``[R, K]`` one-step hypergradients (``inner_steps == 0``), else ``None``.
    val_losses: ``[K]`` upper-level task losses.
    inner_losses: ``[K]`` training losses after the inner steps (``inner_steps > 0``), else ``None``.
    meta_gram: ``[K+1, K+1]`` Gram matrix of the upper-level gradients and the lower-level one
      (``inner_steps > 0``), else ``None``.
    """

    losses: Array
    hypergradient: Optional[Array] = None
    val_losses: Optional[Array] = None
    inner_losses: Optional[Array] = None
    meta_gram: Optional[Array] = None
    step: Optional[Array] = None
    key: Optional[Array] = None
    params: Optional[PyTree] = None


class LastLayerInputs(NamedTuple):
    """What a last-layer scheme (``requires='last_layer'``, BayesAgg-MTL) receives: the fields of
    :class:`LossInputs` and

    representation: ``[B, D]`` the shared representation (the heads' last affine layers' input).
    targets: ``[B, K]`` each task's label: the regression target, the class index
      (``'classification'``) or 0/1 (``'binary'``).
    target_mask: ``[B, K]`` 1 where a task is labelled, else 0 (``None``: all labelled).
    target_kinds: the K tasks' kinds (static strings: ``'regression'``, ``'classification'``,
      ``'binary'``); ``None``: all regression.
    last_layer: per task, the current ``(kernel [D, C], bias [C])`` of its last affine layer (read
      for the classification kinds: their posterior is a Laplace approximation around it).
    """

    losses: Array
    # Optional so that the scheme itself says what is missing and how to get it (the path to use).
    representation: Optional[Array] = None
    targets: Optional[Array] = None
    target_mask: Optional[Array] = None
    step: Optional[Array] = None
    key: Optional[Array] = None
    params: Optional[PyTree] = None
    target_kinds: Optional[tuple] = None
    last_layer: Optional[tuple] = None


SchemeInputs = Union[LossInputs, GramianInputs, JacobianInputs, BilevelInputs, LastLayerInputs]
INPUTS_BY_REQUIREMENT: dict[str, type] = {
    LOSSES: LossInputs,
    GRAMIAN: GramianInputs,
    JACOBIAN: JacobianInputs,
    BILEVEL: BilevelInputs,
    LAST_LAYER: LastLayerInputs,
}


ALL_INPUT_FIELDS = frozenset(f for cls in INPUTS_BY_REQUIREMENT.values() for f in cls._fields)


def inputs_from(requires: str, losses: Array, available: dict) -> SchemeInputs:
    """The typed inputs of a ``requires`` scheme, taking its fields from ``available``.

    ``available`` is what a caller computed for any scheme (a gradient path's Gramian, Jacobian and
    layout; the key and step): the scheme gets the fields of its requirement and nothing else. A key
    that is no scheme input at all (a typo such as ``jacobain``) is refused.
    """
    unknown = sorted(set(available) - ALL_INPUT_FIELDS)
    if unknown:
        raise TypeError(
            f"no weighting scheme takes {', '.join(map(repr, unknown))}; scheme inputs are "
            f"{', '.join(sorted(ALL_INPUT_FIELDS))}"
        )
    cls = INPUTS_BY_REQUIREMENT[requires]
    return cls(losses=losses, **{f: available[f] for f in cls._fields if f != "losses" and f in available})


def update_from(
    transform: "WeightingTransform", losses: Array, state: Any, **available
) -> tuple["WeightingOutput", Any]:
    """``transform.update`` with its inputs chosen from ``available`` (see :func:`inputs_from`): the
    form for code that drives any scheme alike, like the train step."""
    return transform.update(inputs_from(transform.requires, losses, available), state)


def make_inputs(requires: str, losses: Array, **fields) -> SchemeInputs:
    """The typed inputs of a ``requires`` scheme from keywords, refusing any the requirement lacks.

    A Gramian scheme may be given ``jacobian=`` instead of ``gramian=``: ``G = J J^T`` is formed here.
    """
    if requires not in INPUTS_BY_REQUIREMENT:
        raise ValueError(f"unknown requirement {requires!r}; expected one of {REQUIREMENTS}")
    cls = INPUTS_BY_REQUIREMENT[requires]
    if requires == GRAMIAN and "gramian" not in fields and fields.get("jacobian") is not None:
        jac = fields.pop("jacobian")
        fields["gramian"] = jnp.matmul(jac, jac.T, precision=jax.lax.Precision.HIGHEST)
    unknown = sorted(set(fields) - set(cls._fields))
    if unknown:
        raise TypeError(
            f"a requires={requires!r} scheme takes no {', '.join(map(repr, unknown))}; its inputs are "
            f"{cls.__name__}{cls._fields}"
        )
    needed = {GRAMIAN: "gramian", JACOBIAN: "jacobian"}.get(requires)
    if needed is not None and fields.get(needed) is None:
        also = " (or jacobian=)" if requires == GRAMIAN else ""
        raise TypeError(f"a requires={requires!r} scheme needs {needed}={also}")
    return cls(losses=losses, **fields)


class UpdateFn(Protocol):
    """``update(inputs, state) -> (WeightingOutput, new state)``; ``inputs`` typed by the requirement."""

    def __call__(self, inputs: Any, state: Any) -> tuple["WeightingOutput", Any]: ...


class WeightingTransform(NamedTuple):
    """An ``init``/``update`` pair, like ``optax.GradientTransformation``.

    requires: what ``update`` needs from the train step: ``'losses'``, ``'jacobian'``, ``'gramian'``
      or ``'bilevel'``.
    init_params: ``num_tasks -> params`` for schemes with learnable parameters, else ``None``.
    rep_level_ok: whether the scheme is meaningful on gradients w.r.t. the shared representation;
      schemes that are not refuse that mode.
    lookahead: the virtual step of a bilevel scheme (``requires='bilevel'``), else ``None``.
    needs_key: whether ``update`` draws from its ``key`` (random orders, sampled weights or tasks);
      callers must then pass a fresh key every step (:func:`jmtl.mtl_value_and_grad` refuses
      ``key=None`` for such schemes instead of silently reusing one key).
    fixed_weights: whether the weights never depend on the losses or gradients (equal, sum, mean,
      static): a task without labels in a batch cannot distort them.
    rep_level_only: whether the scheme is defined only on gradients w.r.t. the shared representation
      (it reads per-sample blocks of the rows; NTKMTL-SR); the step refuses ``jacobian_mode='params'``.
    """

    init: InitFn
    update: UpdateFn
    requires: str = LOSSES
    init_params: Optional[Callable[[int], PyTree]] = None
    rep_level_ok: bool = True
    lookahead: Optional[Lookahead] = None
    needs_key: bool = False
    fixed_weights: bool = False
    rep_level_only: bool = False

    @property
    def inputs_type(self) -> type:
        """The NamedTuple ``update`` takes (:class:`LossInputs`, :class:`GramianInputs`, ...)."""
        return INPUTS_BY_REQUIREMENT[self.requires]

    def apply(self, losses: Array, state: Any, **fields) -> tuple["WeightingOutput", Any]:
        """``update`` with the inputs built from keywords (``jacobian=``, ``key=``, ``step=``, ...);
        a keyword this scheme's requirement does not provide is refused, naming the valid ones."""
        return self.update(make_inputs(self.requires, losses, **fields), state)


class EmptyState(NamedTuple):
    """State of a stateless scheme."""


def stateless_init(num_tasks: int, *, layout: Optional[Layout] = None) -> EmptyState:
    del num_tasks, layout
    return EmptyState()


def init_state(transform: "WeightingTransform", num_tasks: int, layout: Optional[Layout] = None) -> Any:
    """``transform.init(num_tasks, layout=layout)`` (every scheme's ``init`` takes the keyword)."""
    return transform.init(num_tasks, layout=layout)


def weights_output(weights: Array) -> WeightingOutput:
    return WeightingOutput(weights=weights, direction=None, extra_loss=jnp.zeros((), weights.dtype))


def combine(out: WeightingOutput, jacobian: Array) -> Array:
    """The combined ``[d]`` direction of ``out`` for a ``[K, d]`` Jacobian."""
    if out.direction is not None:
        return out.direction
    return out.weights @ jacobian


def default_float_dtype():
    """float32, or float64 under ``jax_enable_x64``."""
    return jnp.zeros(()).dtype


# ----------------------------------------------------------------------------- helpers shared by schemes

# Added to losses before logs / divisions (the reference implementations use 1e-8 or 1e-20).
EPS = 1e-8


def cast_like(new: PyTree, old: PyTree) -> PyTree:
    """``new`` with the dtypes of ``old`` (keeps a state's dtypes fixed across steps under jit)."""
    return jax.tree.map(lambda n, o: jnp.asarray(n).astype(jnp.asarray(o).dtype), new, old)


def direction_output(direction: Array) -> WeightingOutput:
    """A :class:`WeightingOutput` carrying a ``[d]`` direction (schemes that are not ``weights @ J``)."""
    return WeightingOutput(weights=None, direction=direction, extra_loss=jnp.zeros((), direction.dtype))


def safe_div(num: Array, den: Array) -> Array:
    """``num / den`` where ``den > 0``, else 0 (no NaN/inf from degenerate gradients)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def gram_norms(gram: Array) -> Array:
    """The task-gradient norms ``|g_k| = sqrt(G_kk)`` from the Gramian."""
    return jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))


def need_key(key: Optional[Array], name: str) -> Array:
    """``key``, or a ``ValueError`` saying that scheme ``name`` draws from the step's PRNG key."""
    if key is None:
        raise ValueError(f"{name} needs the step's PRNG key")
    return key


def need_jacobian(name: str, jacobian: Optional[Array]) -> Array:
    """``jacobian`` checked to be ``[K, d]``, or a ``ValueError`` naming the scheme."""
    if jacobian is None:
        raise ValueError(f"{name} needs the [K, d] Jacobian of the task losses (requires='jacobian')")
    if jacobian.ndim != 2:
        raise ValueError(f"{name}: jacobian must be [K, d], got shape {jacobian.shape}")
    return jacobian


def layout_size(layout: Optional[Layout]) -> Optional[int]:
    """``d``, the number of flat shared parameters a layout describes (``None`` without a layout)."""
    if layout is None:
        return None
    return int(sum(math.prod(shape) for _, shape in layout))


def check_positive_int(value: int, name: str) -> None:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_nonneg(name: str, **values: float) -> None:
    for k, v in values.items():
        if v < 0:
            raise ValueError(f"{name}: {k} must be non-negative, got {v}")
