"""Loss- and gradient-balancing schemes as optax-style ``init``/``update`` transforms.

    >>> import jmtl
    >>> jmtl.weighting.names()
    [...]
    >>> t = jmtl.weighting.get("mgda", normalization="l2")
    >>> d = jmtl.weighting.aggregate("mgda", jacobian)   # one call, fresh state
    >>> tx = optax.chain(jmtl.weighting.as_optax("pcgrad"), optax.adam(1e-3))

The modules are split by one principle: **what the train step must compute for the scheme** (its
``requires``). :mod:`~jmtl.weighting.losses`: only the ``K`` task losses;
:mod:`~jmtl.weighting.gramian`: the ``[K, K]`` Gramian ``G = J J^T``;
:mod:`~jmtl.weighting.jacobian`: the full ``[K, d]`` Jacobian; :mod:`~jmtl.weighting.bilevel`: a
look-ahead on a second (meta) batch; :mod:`~jmtl.weighting.last_layer`: the shared representation and
the task labels (BayesAgg-MTL). Beside them: :mod:`~jmtl.weighting.base` (the protocol and
shared helpers), :mod:`~jmtl.weighting.registry` (the one registry), the in-graph solvers
(:mod:`~jmtl.weighting.solvers`, :mod:`~jmtl.weighting.qp`) and :mod:`~jmtl.weighting.transforms`
(:func:`aggregate`, :func:`as_optax`).
"""

from __future__ import annotations

# Importing the scheme modules registers their schemes.
from jmtl.weighting import (  # noqa: F401
    base,
    bilevel,
    gramian,
    grouping,
    jacobian,
    last_layer,
    losses,
    qp,
    registry,
    solvers,
    transforms,
)
from jmtl.weighting.base import (
    BILEVEL,
    GRAMIAN,
    JACOBIAN,
    LAST_LAYER,
    LOSSES,
    BilevelInputs,
    GramianInputs,
    JacobianInputs,
    LastLayerInputs,
    LossInputs,
    WeightingOutput,
    WeightingTransform,
    combine,
    inputs_from,
    make_inputs,
    update_from,
)
from jmtl.weighting.grouping import per_group
from jmtl.weighting.registry import factory, get, hyperparameters, names, register  # noqa: F401
from jmtl.weighting.transforms import WeightingOptaxState, aggregate, as_optax

# Which module holds the schemes of each ``requires`` (the package's organising principle).
MODULE_OF_REQUIREMENT = {
    LOSSES: losses,
    GRAMIAN: gramian,
    JACOBIAN: jacobian,
    BILEVEL: bilevel,
    LAST_LAYER: last_layer,
}

__all__ = [
    "BILEVEL",
    "BilevelInputs",
    "GRAMIAN",
    "GramianInputs",
    "JACOBIAN",
    "JacobianInputs",
    "LAST_LAYER",
    "LastLayerInputs",
    "LOSSES",
    "LossInputs",
    "MODULE_OF_REQUIREMENT",
    "WeightingOptaxState",
    "WeightingOutput",
    "WeightingTransform",
    "aggregate",
    "as_optax",
    "combine",
    "factory",
    "get",
    "hyperparameters",
    "inputs_from",
    "make_inputs",
    "update_from",
    "names",
    "per_group",
    "register",
]
