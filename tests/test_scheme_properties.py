"""Properties every registered scheme claims, checked on random Jacobians (torchjd's aggregator tests
are the anchor): non-conflicting directions, permutation equivariance, and behaviour under scaling.

The claims come from the papers (cited in each scheme's docstring):
- non-conflicting, ``g_k . d >= 0`` for every task: MGDA (the min-norm point of the convex hull has
  ``g_k . d >= |d|^2``), UPGrad and DualProj (projections onto the dual cone; the 1e-4 ridge makes it
  hold to ~1e-4), Nash-MTL (``g_k . d = 1 / alpha_k``), FairGrad (``g_k . d = w_k^(-1/alpha)``), ConFIG
  (equal positive cosines by construction).
- permutation equivariant: every deterministic scheme whose rule treats the tasks symmetrically.
- linear under scaling, ``d(cJ) = c d(J)`` for ``c > 0``: loss-level schemes (their weights do not
  read ``J``) and the Gramian / Jacobian schemes whose weights are scale-free.
- scale invariant, ``d(cJ) = d(J)``: Nash-MTL and FairGrad (``alpha_k`` scales as ``1/c``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmtl import weighting
from jmtl.weighting.transforms import aggregate

NON_CONFLICTING = {"mgda", "upgrad", "dualproj", "nash_mtl", "fairgrad", "con_fig"}
# DualProj's default 1e-4 ridge on the normalised Gramian lets g_k . d dip below 0 by about that much
# relative (seen: -0.0015 at |d| = 0.25 on two opposed rows); the claim is exact without it.
CLAIM_HPARAMS = {"dualproj": {"reg_eps": 0.0}}
# Not permutation equivariant by design: random orders or draws, or an order-dependent rule.
# PCD: the first task is the primary objective (priority order by design).
ORDER_DEPENDENT = {"pcgrad", "gradvac", "alternating", "rlw", "random", "sdmgrad", "pcd"}
LINEAR_GRADIENT_SCHEMES = {
    "mgda",
    "upgrad",
    "dualproj",
    "pcgrad",
    "cagrad",
    "con_fig",
    "aligned_mtl",
    "imtl_g",
    "krum",
    "trimmed_mean",
    "graddrop",
    "gradvac",
    "imtl",
    "gradnorm",
    "db_mtl",
    "excess_mtl",
    # PCD: rows normalised by their (first-call) norms, output rescaled to |g_1|;
    # CR-MOGM (default base MGDA): 1/K mixed with MGDA's scale-free convex weights.
    "pcd",
    "cr_mogm",
}
SCALE_INVARIANT = {"nash_mtl", "fairgrad"}
# Not functions of a [K, d] Jacobian: BayesAgg-MTL combines the tasks' gradients w.r.t. the
# representation from a posterior over the heads' last layer, built from the representation and the
# labels. None of the classes above applies (scaling J has no meaning; scaling the targets changes the
# posterior, not only the scale); tests/test_bayesagg.py checks its task-order equivariance.
LAST_LAYER_SCHEMES = {"bayesagg_mtl"}
K, D = 5, 16


def _schemes():
    # Rep-level-only schemes (NTKMTL-SR) need the representation's per-sample layout, which a bare
    # [K, d] Jacobian does not have; tests/test_weighting_recent.py checks them. Last-layer schemes
    # (LAST_LAYER_SCHEMES) are not functions of a Jacobian at all.
    return [
        n
        for n in weighting.names()
        if weighting.get(n).requires not in (weighting.BILEVEL, weighting.LAST_LAYER)
        and not weighting.get(n).rep_level_only
    ]


@functools.lru_cache(maxsize=None)
def _compiled(name):
    """``aggregate(name, jac, losses, key=key)`` compiled once per scheme and shared by the tests
    below (op by op, every call re-traced and re-compiled the schemes' solver loops)."""
    return jax.jit(lambda jac, losses, key: aggregate(name, jac, losses, key=key))


@pytest.fixture(scope="module")
def problems():
    rng = np.random.default_rng(0)
    out = []
    for scales in (np.ones(K), np.array([0.1, 1.0, 5.0, 2.0, 0.5])):
        jac = rng.normal(size=(K, D)) * scales[:, None]
        losses = rng.uniform(0.5, 2.0, size=K)
        out.append((jnp.asarray(jac, jnp.float32), jnp.asarray(losses, jnp.float32)))
    return out


def test_every_scheme_has_its_scaling_behaviour_declared_here():
    """A new scheme must be classified (linear / scale-invariant / neither, with the reason)."""
    last_layer = {n for n in weighting.names() if weighting.get(n).requires == weighting.LAST_LAYER}
    assert last_layer == LAST_LAYER_SCHEMES, last_layer ^ LAST_LAYER_SCHEMES
    neither = {"moco", "modo", "sdmgrad"}  # stateful first steps that normalise or step a QP: neither form
    # NTKMTL: scale-free weights times K, then clipped to max_norm: linear below the clip, scale
    # invariant above it.
    neither |= {"ntkmtl"}
    loss_level = {n for n in _schemes() if weighting.get(n).requires == weighting.LOSSES}
    classified = loss_level | LINEAR_GRADIENT_SCHEMES | SCALE_INVARIANT | neither
    assert set(_schemes()) == classified, sorted(set(_schemes()) ^ classified)


@pytest.mark.parametrize("name", sorted(NON_CONFLICTING))
def test_non_conflicting_schemes_never_conflict(name, problems):
    for jac, losses in problems:
        d = np.asarray(aggregate(name, jac, losses, **CLAIM_HPARAMS.get(name, {})))
        cos = np.asarray(jac) @ d / (np.linalg.norm(jac, axis=1) * np.linalg.norm(d))
        assert np.all(cos >= -1e-3), (name, cos)


def test_the_claim_is_informative():
    """Two strongly opposed gradients of different sizes: the sum conflicts with the small one, the
    non-conflicting schemes do not."""
    jac = jnp.asarray([[1.0, 0.0, 0.0], [-3.0, 0.5, 0.0]])
    assert float(jac[0] @ aggregate("equal", jac)) < 0
    for name in sorted(NON_CONFLICTING):
        d = np.asarray(aggregate(name, jac, **CLAIM_HPARAMS.get(name, {})))
        assert np.all(np.asarray(jac) @ d >= -1e-3 * np.linalg.norm(d)), name


def test_permutation_equivariance(problems):
    broken = []
    perm = np.array([3, 0, 4, 1, 2])
    for name in _schemes():
        if name in ORDER_DEPENDENT:
            continue
        for jac, losses in problems[1:]:  # the unequal scales: the harder case, one is enough for CI time
            key = jax.random.key(0)
            a = np.asarray(_compiled(name)(jac, losses, key))
            b = np.asarray(_compiled(name)(jac[perm], losses[perm], key))
            if not np.allclose(a, b, rtol=2e-3, atol=1e-5 * np.abs(a).max()):
                broken.append(name)
                break
    assert not broken, f"not permutation equivariant: {broken}"


def test_scaling_behaviour(problems):
    wrong = []
    for name in _schemes():
        t = weighting.get(name)
        expect = 1.0 if name in SCALE_INVARIANT else 3.0
        if name not in SCALE_INVARIANT and t.requires != weighting.LOSSES and name not in LINEAR_GRADIENT_SCHEMES:
            continue
        for jac, losses in problems[1:]:
            key = jax.random.key(0)
            a = np.asarray(_compiled(name)(jac, losses, key))
            b = np.asarray(_compiled(name)(3.0 * jac, losses, key))
            if not np.allclose(b, expect * a, rtol=2e-3, atol=1e-5 * np.abs(a).max()):
                wrong.append(name)
                break
    assert not wrong, f"scaling behaviour differs from the claim: {wrong}"
