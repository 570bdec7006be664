"""Penalties on the params that couple tasks: pure functions ``penalty(params) -> scalar``.

The train step adds ``penalty(params)`` to the objective and its gradient to the update, outside
the weighting scheme (like the ``alpha |W|_F^2`` of the task-relation matrix): these terms couple
task-specific parameters, they are not task losses.

* :func:`soft_sharing` -- soft parameter sharing between per-task towers (``arch='soft_sharing'``):
  the squared L2 distance between corresponding weights (Duong et al., ACL 2015) or the trace norm
  of the stacked weights (Yang & Hospedales, ICLR 2017, here per layer on the ``[K, d]`` matrix).
* :func:`mtrl` -- multi-task relationship learning (Zhang & Yeung, UAI 2010): tr(Theta Omega^-1
  Theta^T) over the heads' last-layer weights Theta = [theta_1 ... theta_K] (``[d, K]``), with the
  task covariance Omega (PSD, trace 1) at its closed-form optimum for the current Theta,

      Omega = (Theta^T Theta)^(1/2) / tr((Theta^T Theta)^(1/2)),

  held fixed (``stop_gradient``) while differentiating. That is one step of the paper's
  alternating minimisation per train step; by the envelope theorem it is also the exact gradient
  of min_Omega tr(Theta Omega^-1 Theta^T) = ||Theta||_*^2. ``eps * I`` is added to Theta^T Theta so
  Omega stays invertible (Zhang & Yeung do the same). The paper's other term, (lambda_1 / 2)
  ||Theta||_F^2, is ordinary weight decay. :func:`mtrl_omega` gives Omega for plotting
  (:func:`jmtl.plotting.plot_relation_matrix`).

Configuration: regularizer keys of ``config.model.arch_kwargs`` (they never reach the model):

    penalty          'l2' | 'trace_norm' (soft sharing; default 'l2' with arch='soft_sharing')
    penalty_weight   its weight (default 1e-2 with arch='soft_sharing', else 0)
    mtrl_weight      weight of the MTRL term (default 0; any architecture)
    mtrl_eps         eps of the MTRL Omega (default 1e-4)

:func:`from_config` turns them into the step's penalty function (``None`` when there is none).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

from jmtl.models.base import TASKS

Array = jax.Array
PyTree = Any

REGULARIZER_KEYS = ("penalty", "penalty_weight", "mtrl_weight", "mtrl_eps")
SOFT_KINDS = ("l2", "trace_norm")
TOWERS = "towers"


def _stacked_leaves(towers: Mapping[str, PyTree]) -> list[Array]:
    """``[K, d_leaf]`` per leaf: corresponding weights of the K towers as rows."""
    trees = [towers[n] for n in towers]
    leaves = [jax.tree.leaves(t) for t in trees]
    if len({len(l) for l in leaves}) != 1:
        raise ValueError("soft sharing needs towers of identical structure")
    return [jnp.stack([l[i].reshape(-1) for l in leaves]) for i in range(len(leaves[0]))]


def trace_norm(m: Array, eps: float = 1e-8) -> Array:
    """Nuclear norm of ``[K, d]`` (K small): sum_i sqrt(lambda_i(M M^T) + eps) - K sqrt(eps).

    Through the K x K Gram matrix rather than an SVD of M (cheap for K << d); ``eps`` keeps the
    gradient finite when towers coincide (rank-deficient M).
    """
    gram = m @ m.T
    lam = jnp.clip(jnp.linalg.eigvalsh(gram), 0.0)
    return jnp.sum(jnp.sqrt(lam + eps)) - m.shape[0] * jnp.sqrt(eps)


def soft_sharing(params: Mapping[str, PyTree], kind: str = "l2", subtree: str = TOWERS) -> Array:
    """Soft-sharing penalty over ``params[subtree]`` (``{task: tower params}``).

    ``'l2'``: sum over layers of sum_{i<j} ||theta_i - theta_j||^2 (= K sum_i ||theta_i - mean||^2).
    ``'trace_norm'``: sum over layers of ||[theta_1; ...; theta_K]||_*.
    """
    if kind not in SOFT_KINDS:
        raise ValueError(f"unknown soft-sharing penalty {kind!r}; valid: {', '.join(SOFT_KINDS)}")
    if subtree not in params:
        raise ValueError(
            f"soft sharing needs per-task towers under params[{subtree!r}]; top-level keys: {list(params)}"
        )
    rows = _stacked_leaves(params[subtree])
    if kind == "l2":
        return sum(m.shape[0] * jnp.sum((m - m.mean(axis=0)) ** 2) for m in rows)
    return sum(trace_norm(m) for m in rows)


def mtrl_theta(params: Mapping[str, PyTree], layer: str = "out") -> Array:
    """Theta ``[d, K]``: column k is task k's last-layer kernel (``params['tasks'][k][layer]``), flattened."""
    heads = params[TASKS]
    cols = [heads[n][layer]["kernel"].reshape(-1) for n in heads]
    if len({c.shape for c in cols}) != 1:
        raise ValueError("MTRL needs last layers of equal shape in every task (same number of outputs and hidden size)")
    return jnp.stack(cols, axis=1)


def _sqrtm_psd(a: Array) -> Array:
    lam, v = jnp.linalg.eigh(a)
    return (v * jnp.sqrt(jnp.clip(lam, 0.0))) @ v.T


def mtrl_omega(params: Mapping[str, PyTree], eps: float = 1e-4, layer: str = "out") -> Array:
    """Zhang & Yeung's closed-form task covariance ``[K, K]`` (PSD, trace 1) for the current heads."""
    theta = mtrl_theta(params, layer)
    k = theta.shape[1]
    root = _sqrtm_psd(theta.T @ theta + eps * jnp.eye(k, dtype=theta.dtype))
    return root / jnp.trace(root)


def mtrl(params: Mapping[str, PyTree], eps: float = 1e-4, layer: str = "out") -> Array:
    """tr(Theta Omega^-1 Theta^T) = tr(Omega^-1 Theta^T Theta) with Omega = stop_gradient(mtrl_omega)."""
    theta = mtrl_theta(params, layer)
    omega = jax.lax.stop_gradient(mtrl_omega(params, eps, layer))
    return jnp.trace(jnp.linalg.solve(omega, theta.T @ theta))


def from_config(arch: str, arch_kwargs: Optional[Mapping[str, Any]] = None) -> Optional[Callable[[PyTree], Array]]:
    """The penalty the train step adds for this configuration, or ``None``."""
    kw = dict(arch_kwargs or {})
    soft = arch == "soft_sharing"
    kind = kw.get("penalty", "l2" if soft else None)
    weight = float(kw.get("penalty_weight", 1e-2 if soft else 0.0))
    mtrl_weight = float(kw.get("mtrl_weight", 0.0))
    mtrl_eps = float(kw.get("mtrl_eps", 1e-4))
    if kind is not None and kind not in SOFT_KINDS:
        raise ValueError(f"unknown penalty {kind!r}; valid: {', '.join(SOFT_KINDS)}")
    use_soft = bool(kind) and weight != 0.0
    if use_soft and arch not in ("soft_sharing", "independent"):
        raise ValueError(f"the soft-sharing penalty needs per-task towers (arch 'soft_sharing'), not {arch!r}")
    if not use_soft and not mtrl_weight:
        return None

    def penalty(params: PyTree) -> Array:
        total = jnp.zeros((), jnp.float32)
        if use_soft:
            total = total + weight * soft_sharing(params, kind)
        if mtrl_weight:
            total = total + mtrl_weight * mtrl(params, mtrl_eps)
        return total

    return penalty
