"""Loss- and gradient-balancing schemes as optax-style ``init``/``update`` transforms.

    >>> import jmtl
    >>> jmtl.weighting.names()
    [...]
    >>> t = jmtl.weighting.get("mgda", normalization="l2")
    >>> d = jmtl.weighting.aggregate("mgda", jacobian)   # one call, fresh state

See :mod:`jmtl.weighting.base` for the protocol.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jmtl.weighting import aggregators, alternating, bilevel, gradient_level, gradient_surgery, loss_balancing, loss_level
from jmtl.weighting import base
from jmtl.weighting.base import (
    BILEVEL,
    GRAMIAN,
    JACOBIAN,
    LOSSES,
    WeightingOutput,
    WeightingTransform,
    combine,
)

_REGISTRY: dict[str, Callable[..., WeightingTransform]] = {}


def register(name: str, factory: Callable[..., WeightingTransform]) -> None:
    """Add a scheme under ``name`` (a factory taking the scheme's hyperparameters as keywords)."""
    if name in _REGISTRY:
        raise ValueError(f"weighting scheme {name!r} is already registered")
    _REGISTRY[name] = factory


register("equal", loss_level.equal)
register("static", loss_level.static)
register("uncertainty", loss_level.uncertainty)
register("mgda", gradient_level.mgda)
register("alternating", alternating.alternating)
for _module in (loss_balancing, gradient_surgery, aggregators, bilevel):
    for _name, _factory_fn in _module.REGISTRY.items():
        register(_name, _factory_fn)


def names() -> list[str]:
    """All registered scheme names, sorted."""
    return sorted(_REGISTRY)


def hyperparameters(name: str) -> dict[str, object]:
    """The hyperparameters of scheme ``name`` with their defaults."""
    factory = _factory(name)
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in inspect.signature(factory).parameters.values()
    }


def _factory(name: str) -> Callable[..., WeightingTransform]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown weighting method {name!r}; valid methods: {', '.join(names())}")
    return _REGISTRY[name]


def get(name: str, **hparams) -> WeightingTransform:
    """The transform for scheme ``name`` with hyperparameters ``hparams``.

    Unknown names and unknown hyperparameters raise a ``ValueError`` listing the valid ones.
    """
    factory = _factory(name)
    valid = hyperparameters(name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for weighting method {name!r}; "
            f"valid: {', '.join(valid) or '(none)'}"
        )
    return factory(**hparams)


def aggregate(
    name: str,
    jacobian: jax.Array,
    losses: Optional[jax.Array] = None,
    *,
    key: Optional[jax.Array] = None,
    **hparams,
) -> jax.Array:
    """One-call form for analysis and tests: the ``[d]`` direction scheme ``name`` makes of ``jacobian``.

    jacobian: ``[K, d]`` task gradients (rows). losses: ``[K]`` (ones if omitted). Fresh state,
    scheme params at their initial values.
    """
    jacobian = jnp.asarray(jacobian)
    if jacobian.ndim != 2:
        raise ValueError(f"jacobian must be [K, d], got shape {jacobian.shape}")
    k = jacobian.shape[0]
    if losses is None:
        losses = jnp.ones((k,), jacobian.dtype)
    if key is None:
        key = jax.random.key(0)
    t = get(name, **hparams)
    state = base.init_state(t, k)
    params = t.init_params(k) if t.init_params is not None else None
    out, _ = t.update(
        losses,
        state,
        jacobian=jacobian,
        gramian=jacobian @ jacobian.T,
        params=params,
        key=key,
        step=jnp.zeros((), jnp.int32),
    )
    return combine(out, jacobian)


__all__ = [
    "BILEVEL",
    "GRAMIAN",
    "JACOBIAN",
    "LOSSES",
    "WeightingOutput",
    "WeightingTransform",
    "aggregate",
    "combine",
    "get",
    "hyperparameters",
    "names",
    "register",
]
