"""The train state: params, the weighting scheme's params and state, the optimizer state, step and key."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jmtl import weighting as weighting_lib
from jmtl.core.jacobian import shared_layout
from jmtl.core.sharing import Selector, Sharing, as_sharing

Array = jax.Array
PyTree = Any


class TrainState(NamedTuple):
    step: Array  # int32 scalar
    params: PyTree  # model params, e.g. {'shared', 'tasks', 'relation'?}
    weighting_params: PyTree  # learnable params of the weighting scheme ({} if none)
    opt_state: PyTree
    weighting_state: PyTree
    rng: Array  # raw uint32[2] PRNG key (checkpoint-friendly)


def init_state(
    model,
    weighting: weighting_lib.WeightingTransform,
    optimizer: optax.GradientTransformation,
    example_input: Any,
    num_tasks: int,
    seed: int,
    *,
    shared: Optional[Selector | Sharing] = None,
) -> TrainState:
    """Initial train state (identical on every process for the same seed).

    Args:
      model: a Linen module with ``__call__(x, *, train) -> {task: output}``.
      weighting: the weighting transform (``jmtl.weighting.get(...)``).
      optimizer: an optax transformation; it updates ``{'model': params, 'weighting': scheme params}``.
      example_input: an input batch (any batch size) to initialise the params with.
      num_tasks: K.
      seed: the PRNG seed of the params, dropout and the scheme.
      shared: which params are shared (see :mod:`jmtl.core.sharing`; default ``params['shared']``);
        it fixes the layout per-layer schemes see.
    """
    rng = jax.random.PRNGKey(seed)
    init_rng, dropout_rng, rng = jax.random.split(rng, 3)
    try:
        variables = model.init({"params": init_rng, "dropout": dropout_rng}, example_input, train=False)
    except TypeError as e:
        if "train" in str(e):
            raise TypeError(
                f"{type(model).__name__}.__call__ must accept a keyword argument `train` (bool: dropout and other "
                f"training-only behaviour on or off), e.g. `def __call__(self, x, *, train: bool = False)`. "
                f"Flax said: {e}"
            ) from e
        raise
    params = variables["params"]
    # A ResNet encoder naming an ImageNet weights file (encoder_kwargs.weights) starts from it.
    from jmtl.models import pretrained  # noqa: PLC0415 (models import nothing from training)

    params = pretrained.apply_encoder_weights(model, params)
    wparams = weighting.init_params(num_tasks) if weighting.init_params is not None else {}
    opt_state = optimizer.init({"model": params, "weighting": wparams})
    shared_part = as_sharing(shared).split(params)[0] if isinstance(params, dict) or shared is not None else {}
    layout = shared_layout(shared_part)
    if weighting.requires == weighting_lib.LAST_LAYER and hasattr(model, "encode"):
        # Last-layer schemes (bayesagg_mtl) size their state by the representation's width.
        rep = jax.eval_shape(lambda: model.apply({"params": params}, example_input, train=False, method=model.encode))
        layout = (("representation", tuple(rep.shape)),)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        weighting_params=wparams,
        opt_state=opt_state,
        weighting_state=weighting_lib.base.init_state(weighting, num_tasks, layout),
        rng=rng,
    )
    # One buffer per leaf: initial states may alias an array in two leaves (optax and scheme states
    # often do), and a donated state must not donate the same buffer twice.
    return jax.tree.map(lambda x: jnp.array(x, copy=True), state)
