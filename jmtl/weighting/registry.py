"""The one registry of weighting schemes: ``name -> factory(**hyperparameters) -> WeightingTransform``.

Every scheme module registers its factories with the :func:`register` decorator::

    @register("pcgrad")
    def pcgrad() -> WeightingTransform: ...

and :mod:`jmtl.weighting` imports those modules, so the registry is complete once the package is
imported. :func:`names`, :func:`factory`, :func:`hyperparameters` and :func:`get` read it.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional

from jmtl.registry import Registry
from jmtl.weighting.base import WeightingTransform

Factory = Callable[..., WeightingTransform]

# A scheme's name is never reused: no overwrite (a config names one algorithm for good).
_REGISTRY: Registry[Factory] = Registry("weighting scheme", valid_label="valid schemes", allow_overwrite=False)

# Former names -> current names; asking for a former name says where the scheme went.
RENAMED: dict[str, str] = {
    # ``config`` means an ml_collections config everywhere else in jmtl.
    "config": "con_fig",
}


def register(name: str, factory: Optional[Factory] = None):
    """Add a scheme under ``name``.

    Use as a decorator, ``@register("name")`` above the factory, or as a call,
    ``register("name", factory)``. The factory takes the scheme's hyperparameters as keywords (with
    defaults) and returns a :class:`~jmtl.weighting.base.WeightingTransform`.

    Args:
      name: the scheme's name (``weighting.name`` in configs); must be new.
      factory: the factory; ``None`` (default) returns a decorator.
    """
    if name in RENAMED:
        raise ValueError(f"weighting scheme name {name!r} is reserved (the scheme was renamed to {RENAMED[name]!r})")

    def add(fn: Factory) -> Factory:
        return _REGISTRY.register(name, fn)

    return add if factory is None else add(factory)


def names() -> list[str]:
    """All registered scheme names, sorted."""
    return _REGISTRY.names()


def factory(name: str) -> Factory:
    """The factory registered under ``name``; a ``ValueError`` listing the valid names otherwise."""
    if name in RENAMED:
        raise ValueError(f"weighting scheme {name!r} was renamed to {RENAMED[name]!r}; use {RENAMED[name]!r}")
    return _REGISTRY.lookup(name)


def hyperparameters(name: str) -> dict[str, object]:
    """The hyperparameters of scheme ``name`` with their defaults (``None`` where there is none)."""
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in inspect.signature(factory(name)).parameters.values()
    }


def get(name: str, **hparams) -> WeightingTransform:
    """The transform for scheme ``name`` with hyperparameters ``hparams``.

    Unknown names and unknown hyperparameters raise a ``ValueError`` listing the valid ones.
    """
    fn = factory(name)
    valid = hyperparameters(name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for weighting scheme {name!r}; "
            f"valid: {', '.join(valid) or '(none)'}"
        )
    return fn(**hparams)


__all__ = ["RENAMED", "factory", "get", "hyperparameters", "names", "register"]
