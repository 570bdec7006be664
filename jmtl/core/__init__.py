"""The functional core: per-task gradients and weighting schemes for any JAX pytree.

The base layer of jmtl. Modules here import only :mod:`jmtl.weighting`, jax and optax (a test
walks their imports); the Flax train step (:mod:`jmtl.training.step`) and the trainer are built on
top of it.

* :func:`mtl_value_and_grad` — the public entry: a loss function (and optionally a representation
  split) in, the scheme's combined gradient out (:mod:`.value_and_grad`);
* :mod:`.paths` — the gradient paths (loss level, parameter Jacobian, factored through a
  representation, representation Jacobian, bilevel, nothing shared) over an :class:`Objective`;
* :mod:`.jacobian` — per-task gradients as rows, chunked in-graph, and the device collectives;
* :mod:`.sharing` — which params are shared;
* :mod:`.bilevel_terms` — the upper-level terms of bilevel schemes;
* :mod:`.bayesagg` — the last-layer path (BayesAgg-MTL: representation and labels to the scheme).
"""

from jmtl.core import bayesagg  # noqa: F401  (registers the last-layer path with paths.choose)
from jmtl.core.paths import Objective, PathContext, choose
from jmtl.core.sharing import Selector, Sharing, as_sharing
from jmtl.core.value_and_grad import (
    MTLGradients,
    MTLValueAndGrad,
    auto_chunk_size,
    combined_gradients,
    mtl_value_and_grad,
)

__all__ = [
    "MTLGradients",
    "MTLValueAndGrad",
    "Objective",
    "PathContext",
    "Selector",
    "Sharing",
    "as_sharing",
    "auto_chunk_size",
    "choose",
    "combined_gradients",
    "mtl_value_and_grad",
]
