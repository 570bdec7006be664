"""Tests of the catalogue aggregators (mean ... MoDo, in jmtl/weighting/{losses,gramian,jacobian}.py) and the QP solvers (qp.py).

Reference values come from independent computations: brute-force enumeration of active sets,
scipy.optimize (test-only), closed forms derived by hand, and numpy re-implementations of the papers'
update equations.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from optax.projections import projection_simplex

import jmtl.weighting as W
from jmtl.weighting import qp

OWN = sorted(
    [
        "mean",
        "sum",
        "random",
        "trimmed_mean",
        "krum",
        "upgrad",
        "dualproj",
        "fairgrad",
        "moco",
        "excess_mtl",
        "sdmgrad",
        "modo",
    ]
)
STATEFUL = ("moco", "excess_mtl", "sdmgrad", "modo")


@pytest.fixture
def x64():
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", prev)


def _update(t, losses, state, jac, key=None, step=0):
    jac = jnp.asarray(jac)
    return W.update_from(
        t,
        jnp.asarray(losses, jac.dtype),
        state,
        jacobian=jac,
        gramian=jnp.matmul(jac, jac.T, precision="highest"),
        params=None,
        key=jax.random.key(0) if key is None else key,
        step=jnp.asarray(step, jnp.int32),
        layout=(("w", (jac.shape[1],)),),
    )


def _direction(out, jac):
    return np.asarray(W.combine(out, jnp.asarray(jac)))


def _conflicting(rng, k, d=None):
    """Random [k, d] rows with at least one conflicting pair (g_0 · g_1 < 0)."""
    d = d or k + 3
    j = rng.normal(size=(k, d))
    j[1] = -0.7 * j[0] + 0.3 * rng.normal(size=d)
    return j


# ---------------------------------------------------------------- independent references


def _nnqp_enum(h, c):
    """min ½xᵀHx + cᵀx, x ≥ 0 by enumerating every active set (exact, small K)."""
    k = len(c)
    best, best_val = None, np.inf
    for mask in itertools.product([False, True], repeat=k):
        p = np.array(mask)
        x = np.zeros(k)
        if p.any():
            x[p] = np.linalg.solve(h[np.ix_(p, p)], -c[p])
        if np.all(x >= -1e-12):
            val = 0.5 * x @ h @ x + c @ x
            if val < best_val:
                best, best_val = np.maximum(x, 0), val
    return best


def _nnqp_scipy(h, c):
    """Same problem as NNLS: H = RᵀR, min ½|Rx + R⁻ᵀc|²."""
    r = np.linalg.cholesky(h).T
    x, _ = scipy.optimize.nnls(r, -np.linalg.solve(r.T, c), maxiter=100 * len(c))
    return x


def _primal_dual_cone_projection(jac, x):
    """argmin_y |y − x|² s.t. J y ≥ 0 by enumeration in the primal (d-dim) space.

    For each set A of rows taken as active, the projection of x onto {y : J_A y = 0} is
    y = x − J_Aᵀ(J_A J_Aᵀ)⁻¹ J_A x; the answer is the nearest of these that satisfies J y ≥ 0.
    """
    k = len(jac)
    best, best_dist = None, np.inf
    for mask in itertools.product([False, True], repeat=k):
        a = jac[np.array(mask)]
        y = x - a.T @ np.linalg.solve(a @ a.T, a @ x) if len(a) else x.copy()
        if np.all(jac @ y >= -1e-12) and np.sum((y - x) ** 2) < best_dist:
            best, best_dist = y, np.sum((y - x) ** 2)
    return best


def _simplex_np(v):
    """Projection onto the simplex by bisection on θ in Σ max(v − θ, 0) = 1."""
    lo, hi = v.min() - 1.0, v.max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.maximum(v - mid, 0).sum() > 1:
            lo = mid
        else:
            hi = mid
    return np.maximum(v - 0.5 * (lo + hi), 0)


# ---------------------------------------------------------------- registry


def test_registry_names_and_defaults():
    assert set(OWN) == {
        "mean",
        "sum",
        "random",
        "trimmed_mean",
        "krum",
        "upgrad",
        "dualproj",
        "fairgrad",
        "moco",
        "excess_mtl",
        "sdmgrad",
        "modo",
    }
    assert set(OWN) <= set(W.names())
    hp = W.hyperparameters
    assert hp("upgrad") == {"norm_eps": 1e-4, "reg_eps": 1e-4, "max_iter": None}
    assert hp("dualproj") == {"norm_eps": 1e-4, "reg_eps": 1e-4, "max_iter": None}
    assert hp("fairgrad")["alpha"] == 1.0
    assert hp("moco") == {
        "beta": 0.5,
        "beta_sigma": 0.5,
        "gamma": 0.1,
        "gamma_sigma": 0.5,
        "rho": 0.0,
        "normalize_grads": True,
    }
    assert hp("excess_mtl")["robust_step_size"] == 1e-2
    assert hp("sdmgrad") == {"lam": 0.3, "niter": 20, "lr": 5.0, "momentum": 0.5}
    assert hp("modo") == {"gamma": 1e-3, "rho": 0.1}
    assert hp("krum") == {"n_byzantine": 1, "n_selected": 1}
    assert hp("trimmed_mean") == {"trim": None}
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        W.get("upgrad", alpha=1.0)


# ---------------------------------------------------------------- QP solvers


@pytest.mark.parametrize("k", [2, 3, 5])
def test_nonneg_qp_matches_enumeration(x64, k):
    rng = np.random.default_rng(k)
    for _ in range(5):
        a = rng.normal(size=(k, k + 2))
        h = a @ a.T
        c = rng.normal(size=k)
        res = qp.nonneg_qp_solve(jnp.asarray(h), jnp.asarray(c))
        assert bool(res.converged)
        np.testing.assert_allclose(np.asarray(res.x), _nnqp_enum(h, c), atol=1e-9)


def test_nonneg_qp_accuracy_and_iterations_up_to_40(x64):
    rng = np.random.default_rng(0)
    solve = jax.jit(qp.nonneg_qp_solve)
    for k in (10, 40):
        for trial in range(3):
            a = rng.normal(size=(k, k + 3))
            h = a @ a.T / k + 1e-4 * np.eye(k)  # UPGrad-like normalisation / regularisation
            c = h @ np.eye(k)[trial] if trial < 2 else rng.normal(size=k)
            res = solve(jnp.asarray(h), jnp.asarray(c))
            assert bool(res.converged)
            assert int(res.iterations) <= 3 * k
            np.testing.assert_allclose(np.asarray(res.x), _nnqp_scipy(h, c), atol=1e-8)


def test_nonneg_qp_float32_accuracy():
    rng = np.random.default_rng(1)
    k = 20
    a = rng.normal(size=(k, k + 3))
    h = a @ a.T / np.trace(a @ a.T) + 1e-4 * np.eye(k)
    c = h[:, 0]
    x = np.asarray(qp.nonneg_qp(jnp.asarray(h, jnp.float32), jnp.asarray(c, jnp.float32)))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, _nnqp_scipy(h, c), atol=2e-3)


# Whether the rank-one-update loop alone met the KKT test (the Cholesky fallback unused); compiled once.
_updates_clean = jax.jit(lambda h, c: qp._inverse_phase(h, c, 0.0, 100)[3])


@pytest.mark.parametrize("k", [3, 5])
def test_nonneg_qp_rank_one_updates_match_enumeration(x64, k):
    """The O(K²)-a-step path (forced at small K) is exact: enumeration, and no Cholesky fallback used."""
    rng = np.random.default_rng(40 + k)
    for _ in range(4):
        a = rng.normal(size=(k, k + 1))
        h, c = a @ a.T + 1e-3 * np.eye(k), rng.normal(size=k)
        res = qp.nonneg_qp_solve(jnp.asarray(h), jnp.asarray(c), method="updates")
        assert bool(res.converged)
        np.testing.assert_allclose(np.asarray(res.x), _nnqp_enum(h, c), atol=1e-9)
        assert bool(_updates_clean(jnp.asarray(h), jnp.asarray(c)))


def test_dual_cone_updates_vs_cholesky_per_example_k(x64):
    """K = 48 UPGrad-like QPs (half the pairs conflicting): the rank-one updates agree with NNLS, in
    float64 to 1e-9 and in float32 to round-off of cond(G') · eps."""
    rng = np.random.default_rng(5)
    k = 48
    jac = rng.normal(size=(k, 2 * k))
    g = jac @ jac.T
    g = g / np.trace(g) + 1e-4 * np.eye(k)
    solve = jax.jit(
        lambda g, u, method: jax.vmap(lambda ui: qp.dual_cone_solve(g, ui, method=method))(u), static_argnames="method"
    )
    u = np.eye(k)[:6]
    want = np.stack([ui + _nnqp_scipy(g, g @ ui) for ui in u])
    res = solve(jnp.asarray(g), jnp.asarray(u), method="updates")  # (the Cholesky loop: tests above)
    assert bool(jnp.all(res.converged))
    np.testing.assert_allclose(np.asarray(res.x), want, atol=1e-9)
    res32 = solve(jnp.asarray(g, jnp.float32), jnp.asarray(u, jnp.float32), method="updates")
    assert res32.x.dtype == jnp.float32 and bool(jnp.all(res32.converged))
    np.testing.assert_allclose(np.asarray(res32.x), want, atol=2e-4 * np.abs(want).max())


def test_nonneg_qp_updates_singular_falls_back(x64):
    """Unregularised rank-deficient H (K = 20 rows in R^4): the rank-one updates meet a zero pivot and the
    Cholesky loop finishes; the result is feasible, finite and as good as the Cholesky loop's."""
    rng = np.random.default_rng(6)
    a = rng.normal(size=(20, 4))
    h = a @ a.T
    c = h @ np.eye(20)[0] + 0.1 * rng.normal(size=20)
    obj = lambda x: 0.5 * x @ h @ x + c @ x
    got = qp.nonneg_qp_solve(jnp.asarray(h), jnp.asarray(c), method="updates")
    ref = qp.nonneg_qp_solve(jnp.asarray(h), jnp.asarray(c), method="cholesky")
    x = np.asarray(got.x)
    assert np.all(np.isfinite(x)) and np.all(x >= 0)
    assert obj(x) <= obj(np.asarray(ref.x)) + 1e-9 * (1 + abs(obj(np.asarray(ref.x))))


def test_nonneg_qp_method_is_checked():
    with pytest.raises(ValueError, match="method must be"):
        qp.nonneg_qp_solve(jnp.eye(2), jnp.ones(2), method="newton")


def test_upgrad_qp_batches_give_the_same_weights(monkeypatch):
    """UPGrad's K QPs in lax.map batches (as at per-example K) give the weights of one vmap."""
    from jmtl.weighting import gramian

    rng = np.random.default_rng(7)
    k = 23  # a K no other test compiles, so the patched batch size is traced
    jac = rng.normal(size=(k, 30)).astype(np.float32)
    gram = jnp.asarray(jac @ jac.T)
    assert gramian._qp_batch_size(k, jnp.float32) == k
    assert gramian._qp_batch_size(256, jnp.float32) == 8
    whole = np.asarray(gramian._upgrad_weights(gram, 1e-4, 1e-4, None))
    monkeypatch.setattr(gramian, "_QP_BATCH_BYTES", 5 * k * k * 4)
    assert gramian._qp_batch_size(k, jnp.float32) == 5
    batched = np.asarray(gramian._upgrad_weights(gram, 1e-4, 1e-4, 100))  # new static arg: retraced
    np.testing.assert_allclose(batched, whole, rtol=1e-6, atol=1e-7)


def test_project_simplex(x64):
    rng = np.random.default_rng(2)
    for k in (1, 2, 3, 7):
        for scale in (0.1, 1.0, 10.0):
            v = rng.normal(size=k) * scale
            got = np.asarray(projection_simplex(jnp.asarray(v)))
            np.testing.assert_allclose(got, _simplex_np(v), atol=1e-10)
            assert abs(got.sum() - 1) < 1e-12 and got.min() >= 0


# ---------------------------------------------------------------- UPGrad / DualProj


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_upgrad_dualproj_in_dual_cone(x64, k):
    rng = np.random.default_rng(10 + k)
    for _ in range(3):
        jac = _conflicting(rng, k)
        gram = jac @ jac.T
        assert gram[0, 1] < 0
        for name in ("upgrad", "dualproj"):
            # Exact dual cone without regularisation (G is non-singular here).
            d = np.asarray(W.aggregate(name, jac, reg_eps=0.0))
            assert np.all(jac @ d >= -1e-10 * np.trace(gram)), name
            # Default regularisation: g_i·d ≥ −reg_eps·tr(G)·v_i, v_i ≤ O(1).
            d = np.asarray(W.aggregate(name, jac))
            assert np.all(jac @ d >= -1e-4 * np.trace(gram) * 10), name
            assert np.linalg.norm(d) > 0


@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_upgrad_is_mean_without_conflict(x64, k):
    rng = np.random.default_rng(k)
    jac = np.abs(rng.normal(size=(k, 6))) + 0.1  # all pairwise inner products > 0
    for name in ("upgrad", "dualproj"):
        np.testing.assert_allclose(np.asarray(W.aggregate(name, jac)), jac.mean(0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_upgrad_projection_matches_primal_bruteforce(x64, k):
    """Each π_J(g_i) from the dual QP equals the primal projection (enumeration in R^d)."""
    rng = np.random.default_rng(20 + k)
    jac = _conflicting(rng, k, d=k + 2)
    gram = jac @ jac.T
    g = gram / np.trace(gram)
    projs = []
    for i in range(k):
        v = np.asarray(qp.dual_cone_weights(jnp.asarray(g), jnp.asarray(np.eye(k)[i])))
        primal = _primal_dual_cone_projection(jac, jac[i])
        np.testing.assert_allclose(jac.T @ v, primal, atol=1e-8)
        # and the dual weights against active-set enumeration (exact)
        np.testing.assert_allclose(v, np.eye(k)[i] + _nnqp_enum(g, g[:, i]), atol=1e-10)
        projs.append(primal)
    up = np.asarray(W.aggregate("upgrad", jac, reg_eps=0.0))
    np.testing.assert_allclose(up, np.mean(projs, axis=0), atol=1e-8)
    dp = np.asarray(W.aggregate("dualproj", jac, reg_eps=0.0))
    np.testing.assert_allclose(dp, _primal_dual_cone_projection(jac, jac.mean(0)), atol=1e-8)


@pytest.mark.parametrize("k", [3, 5])
def test_upgrad_default_weights_match_enumeration(x64, k):
    """Default norm/reg eps: weights equal mean_i [e_i + z_i] for G' = G/tr(G) + 1e-4·I (exact QP)."""
    rng = np.random.default_rng(30 + k)
    jac = _conflicting(rng, k) * 3.0
    gram = jac @ jac.T
    g = gram / np.trace(gram) + 1e-4 * np.eye(k)
    want = np.mean([np.eye(k)[i] + _nnqp_enum(g, g[:, i]) for i in range(k)], axis=0)
    t = W.get("upgrad")
    out, _ = _update(t, np.ones(k), t.init(k), jac)
    np.testing.assert_allclose(np.asarray(out.weights), want, atol=1e-10)
    want_dp = np.full(k, 1 / k) + _nnqp_enum(g, g @ np.full(k, 1 / k))
    t = W.get("dualproj")
    out, _ = _update(t, np.ones(k), t.init(k), jac)
    np.testing.assert_allclose(np.asarray(out.weights), want_dp, atol=1e-10)


def test_upgrad_float32_dual_cone():
    rng = np.random.default_rng(3)
    jac = _conflicting(rng, 5, d=40).astype(np.float32)
    d = np.asarray(W.aggregate("upgrad", jac))
    gram = jac.astype(np.float64) @ jac.T
    assert np.all(jac @ d >= -2e-3 * np.trace(gram))


# ---------------------------------------------------------------- FairGrad


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_fairgrad_solves_fixed_point(x64, alpha):
    rng = np.random.default_rng(int(alpha * 10))
    for k in (3, 40):
        jac = rng.normal(size=(k, 50)) * rng.uniform(0.05, 5.0, size=(k, 1))
        gram = jac @ jac.T
        t = W.get("fairgrad", alpha=alpha, ridge=0.0)
        out, _ = _update(t, np.ones(k), t.init(k), jac)
        w = np.asarray(out.weights)
        assert np.all(w > 0)
        rhs = w ** (-1.0 / alpha)
        resid = np.abs(gram @ w - rhs) / (np.abs(gram) @ w + rhs)
        assert resid.max() < 1e-10, (k, resid.max())
        # the default ridge (1e-8 relative) barely moves it
        out, _ = _update(W.get("fairgrad", alpha=alpha), np.ones(k), None, jac)
        np.testing.assert_allclose(np.asarray(out.weights), w, rtol=1e-4)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_orthogonal_closed_form(x64, alpha):
    # G = diag(n²): n_k² w_k = w_k^{-1/α}  ⇒  w_k = n_k^{-2α/(1+α)}.
    norms = np.array([0.5, 2.0, 7.0])
    jac = np.zeros((3, 5))
    jac[np.arange(3), np.arange(3)] = norms
    t = W.get("fairgrad", alpha=alpha, ridge=0.0)
    out, _ = _update(t, np.ones(3), t.init(3), jac)
    np.testing.assert_allclose(np.asarray(out.weights), norms ** (-2 * alpha / (1 + alpha)), rtol=1e-10)
    if alpha == 1.0:  # proportional fairness: sum of unit gradients
        np.testing.assert_allclose(_direction(out, jac), (jac / norms[:, None]).sum(0), rtol=1e-10)


# ---------------------------------------------------------------- simple aggregators


def test_mean_sum(x64):
    rng = np.random.default_rng(4)
    jac = rng.normal(size=(4, 9))
    np.testing.assert_allclose(np.asarray(W.aggregate("mean", jac)), jac.mean(0), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(W.aggregate("sum", jac)), jac.sum(0), rtol=1e-12)


def test_random_weights():
    t = W.get("random")
    losses = jnp.ones(5)
    w1 = np.asarray(t.apply(losses, t.init(5), key=jax.random.key(3))[0].weights)
    w2 = np.asarray(t.apply(losses, t.init(5), key=jax.random.key(3))[0].weights)
    w3 = np.asarray(t.apply(losses, t.init(5), key=jax.random.key(4))[0].weights)
    assert np.all(w1 > 0) and abs(w1.sum() - 1) < 1e-6
    np.testing.assert_array_equal(w1, w2)
    assert not np.allclose(w1, w3)
    z = np.asarray(jax.random.normal(jax.random.key(3), (5,)))
    np.testing.assert_allclose(w1, np.exp(z) / np.exp(z).sum(), rtol=1e-5)


def test_trimmed_mean(x64):
    rng = np.random.default_rng(5)
    jac = rng.normal(size=(5, 11))
    s = np.sort(jac, axis=0)
    np.testing.assert_allclose(np.asarray(W.aggregate("trimmed_mean", jac)), s[1:4].mean(0), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(W.aggregate("trimmed_mean", jac, trim=2)), s[2], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(W.aggregate("trimmed_mean", jac, trim=0)), jac.mean(0), rtol=1e-12)
    two = jac[:2]
    np.testing.assert_allclose(np.asarray(W.aggregate("trimmed_mean", two)), two.mean(0), rtol=1e-12)
    with pytest.raises(ValueError, match="at least 5 tasks"):
        W.aggregate("trimmed_mean", jac[:4], trim=2)


def _krum_np(jac, f, m):
    k = len(jac)
    scores = []
    for i in range(k):
        dists = sorted(np.sum((jac[i] - jac[j]) ** 2) for j in range(k) if j != i)
        scores.append(sum(dists[: k - f - 2]))
    chosen = np.argsort(scores, kind="stable")[:m]
    return jac[chosen].mean(0)


@pytest.mark.parametrize("f,m", [(1, 1), (2, 1), (1, 3)])
def test_krum_matches_numpy(x64, f, m):
    rng = np.random.default_rng(6 + f + m)
    for _ in range(3):
        jac = rng.normal(size=(8, 6))
        got = np.asarray(W.aggregate("krum", jac, n_byzantine=f, n_selected=m))
        np.testing.assert_allclose(got, _krum_np(jac, f, m), rtol=1e-10)


def test_krum_never_selects_outlier(x64):
    rng = np.random.default_rng(7)
    for trial in range(10):
        jac = rng.normal(size=(7, 5)) * 0.1 + 1.0
        bad = trial % 7
        jac[bad] = rng.normal(size=5) * 50.0
        t = W.get("krum", n_selected=3)
        out, _ = _update(t, np.ones(7), t.init(7), jac)
        w = np.asarray(out.weights)
        assert w[bad] == 0 and abs(w.sum() - 1) < 1e-12


def test_krum_refuses_too_few_rows():
    jac = jnp.ones((4, 3))
    with pytest.raises(ValueError, match=r"at least 2\*1\+3=5"):
        W.aggregate("krum", jac)
    W.aggregate("krum", jac, n_byzantine=0)  # K=4 ≥ 3 is enough without byzantine rows
    with pytest.raises(ValueError, match="n_selected"):
        W.aggregate("krum", jac, n_byzantine=0, n_selected=5)


# ---------------------------------------------------------------- stateful schemes: first step by hand


def test_moco_first_step_by_hand():
    # J rows have norms 5 and 2; normalised and scaled by the losses: h = [[.6, .8], [0, 2]].
    # t=1: β=0.5, γ=0.1 → Y = h/2 = [[.3,.4],[0,1]], YYᵀ = [[.25,.4],[.4,1]], YYᵀλ₀ = [.325,.7];
    # λ₀ − 0.1·that = [.4675, .43] → simplex projection shifts by +0.05125 → λ = [.51875, .48125];
    # d = Yᵀλ = [.155625, .68875].
    jac = np.array([[3.0, 4.0], [0.0, 2.0]])
    t = W.get("moco")
    out, state = _update(t, [1.0, 2.0], t.init(2), jac)
    np.testing.assert_allclose(np.asarray(state.lambd), [0.51875, 0.48125], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out.direction), [0.155625, 0.68875], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state.y), [[0.3, 0.4], [0.0, 1.0]], rtol=1e-6)


def test_excess_mtl_first_steps_by_hand():
    # step 1: S = J², E = Σ g²/sqrt(S) = [9/3 + 16/4, 4/2] = [7, 2] (baseline), weights stay [1, 1].
    # step 2 (J = I): S = [[10,16],[0,5]], E = [1/√10, 1/√5]; log-weights += η·E/baseline;
    # weights = 2·softmax(0.01·[1/(7√10), 1/(2√5)]) = [0.99910784, 1.00089216].
    t = W.get("excess_mtl")
    out, state = _update(t, [1.0, 1.0], t.init(2), np.array([[3.0, 4.0], [0.0, 2.0]]))
    np.testing.assert_allclose(np.asarray(out.weights), [1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state.baseline), [7.0, 2.0], rtol=1e-6)
    out, state = _update(t, [1.0, 1.0], state, np.eye(2))
    np.testing.assert_allclose(np.asarray(out.weights), [0.99910784, 1.00089216], rtol=1e-6)


def test_sdmgrad_first_step_by_hand():
    # J = diag(1, 2): G̃ = G/1.5² = diag(4/9, 16/9), G̃·1/K = [2/9, 8/9], λ = 0.3, lr = 0.5.
    # it 1: grad = [2/9 + 0.3·2/9, 8/9 + 0.3·8/9] = [.288889, 1.155556], w = Π([.355556, −.077778])
    #       = [.716667, .283333];
    # it 2: grad = [.385185, .770370], m = .5·m + grad = [.529630, 1.348148],
    #       w = Π([.451852, −.390741]) = [.921296, .078704];
    # weights = (w + 0.15)/1.3 = [.824074, .175926].
    t = W.get("sdmgrad", niter=2, lr=0.5)
    out, state = _update(t, [1.0, 1.0], t.init(2), np.diag([1.0, 2.0]))
    np.testing.assert_allclose(np.asarray(state.w), [0.9212963, 0.0787037], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out.weights), [0.8240741, 0.1759259], rtol=1e-5)


def test_modo_first_step_by_hand():
    # G = diag(1, 4), γ = ρ = 0.1: λ − γ(Gλ + ρλ) = [.5 − .055, .5 − .205] = [.445, .295] → +0.13 →
    # λ = [.575, .425]; d = Jᵀλ = [.575, .85].
    t = W.get("modo", gamma=0.1, rho=0.1)
    jac = np.diag([1.0, 2.0])
    out, state = _update(t, [1.0, 1.0], t.init(2), jac)
    np.testing.assert_allclose(np.asarray(out.weights), [0.575, 0.425], rtol=1e-6)
    np.testing.assert_allclose(_direction(out, jac), [0.575, 0.85], rtol=1e-6)


# ---------------------------------------------------------------- stateful schemes: 3 jitted steps vs numpy


def _moco_np(jacs, losses, beta, bs, gamma, gs, rho, normalize):
    k, d = jacs[0].shape
    y, lam, outs = np.zeros((k, d)), np.full(k, 1 / k), []
    for t, (jac, loss) in enumerate(zip(jacs, losses), start=1):
        h = jac / (np.linalg.norm(jac, axis=1, keepdims=True) + 1e-8) * loss[:, None] if normalize else jac
        y = y - beta / t**bs * (y - h)
        lam = _simplex_np(lam - gamma / t**gs * (y @ y.T + rho * np.eye(k)) @ lam)
        outs.append(y.T @ lam)
    return outs, lam


def _excess_np(jacs, eta):
    k = jacs[0].shape[0]
    s, w, base, outs = 0.0, np.ones(k), None, []
    for jac in jacs:
        s = s + jac**2
        e = np.sum(jac**2 / np.sqrt(s + 1e-7), axis=1)
        if base is None:
            base = e
        else:
            w = w * np.exp(eta * e / base)
            w = w / w.sum() * k
        outs.append(w @ jac)
    return outs, w


def _sdmgrad_np(jacs, lam, niter, lr, mom):
    k = jacs[0].shape[0]
    w, outs = np.full(k, 1 / k), []
    for jac in jacs:
        g = jac @ jac.T
        g = g / (np.mean(np.sqrt(np.diag(g))) ** 2 + 1e-8)
        gm = g.mean(1)
        buf = None
        for _ in range(niter):
            grad = g @ w + lam * gm
            buf = grad if buf is None else mom * buf + grad
            w = _simplex_np(w - lr * buf)
        outs.append((w @ jac + lam * jac.mean(0)) / (1 + lam))
    return outs, w


def _modo_np(jacs, gamma, rho):
    k = jacs[0].shape[0]
    lam, outs = np.full(k, 1 / k), []
    for jac in jacs:
        lam = _simplex_np(lam - gamma * (jac @ (jac.T @ lam) + rho * lam))
        outs.append(jac.T @ lam)
    return outs, lam


@pytest.mark.parametrize(
    "name,hp",
    [
        ("moco", {}),
        ("moco", {"rho": 0.1, "normalize_grads": False, "beta_sigma": 0.0, "gamma": 0.3}),
        ("excess_mtl", {"robust_step_size": 0.5}),
        ("sdmgrad", {}),
        ("modo", {"gamma": 0.05}),
    ],
)
def test_stateful_three_jitted_steps_match_numpy(x64, name, hp):
    rng = np.random.default_rng(8)
    k, d = 3, 6
    jacs = [rng.normal(size=(k, d)) for _ in range(3)]
    losses = [rng.uniform(0.5, 2.0, size=k) for _ in range(3)]
    t = W.get(name, **hp)
    full = {**W.hyperparameters(name), **hp}
    if name == "moco":
        want, final = _moco_np(
            jacs,
            losses,
            full["beta"],
            full["beta_sigma"],
            full["gamma"],
            full["gamma_sigma"],
            full["rho"],
            full["normalize_grads"],
        )
    elif name == "excess_mtl":
        want, final = _excess_np(jacs, full["robust_step_size"])
    elif name == "sdmgrad":
        want, final = _sdmgrad_np(jacs, full["lam"], full["niter"], full["lr"], full["momentum"])
    else:
        want, final = _modo_np(jacs, full["gamma"], full["rho"])

    step = jax.jit(lambda losses, state, jac, i: _update(t, losses, state, jac, step=i))
    state = W.base.init_state(t, k, (("w", (d,)),))
    for i in range(3):
        out, state = step(jnp.asarray(losses[i]), state, jnp.asarray(jacs[i]), i)
        np.testing.assert_allclose(_direction(out, jacs[i]), want[i], rtol=1e-9, atol=1e-12)
    carried = {"moco": "lambd", "excess_mtl": None, "sdmgrad": "w", "modo": "w"}[name]
    if carried:
        np.testing.assert_allclose(np.asarray(getattr(state, carried)), final, rtol=1e-9, atol=1e-12)
    else:
        np.testing.assert_allclose(np.exp(np.asarray(state.log_weights)), final, rtol=1e-9)
    if "count" in state._fields:
        assert int(state.count) == 3


@pytest.mark.parametrize("name", ["moco", "excess_mtl"])
def test_lazy_state_shape(name):
    t = W.get(name)
    jac = jnp.ones((3, 5))
    lazy = t.init(3)
    sized = W.base.init_state(t, 3, (("a", (2,)), ("b", (3, 1))))
    out_a, st_a = _update(t, jnp.ones(3), lazy, jac)
    out_b, st_b = _update(t, jnp.ones(3), sized, jac)
    for a, b in zip(jax.tree_util.tree_leaves(st_a), jax.tree_util.tree_leaves(st_b)):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="state was initialised"):
        _update(t, jnp.ones(3), t.init(3, layout=(("a", (4,)),)), jac)


# ---------------------------------------------------------------- every scheme


def _check_output(out, k, d):
    assert (out.weights is None) != (out.direction is None)
    if out.weights is not None:
        assert out.weights.shape == (k,)
        assert np.all(np.isfinite(np.asarray(out.weights)))
    else:
        assert out.direction.shape == (d,)
        assert np.all(np.isfinite(np.asarray(out.direction)))
    assert np.ndim(out.extra_loss) == 0


@functools.lru_cache(maxsize=None)
def _jitted_step(name):
    t = W.get(name)
    return jax.jit(lambda losses, state, jac, key: _update(t, losses, state, jac, key=key))


@pytest.mark.parametrize("name", OWN)
def test_every_scheme_shape_finite_and_jit(name):
    k, d = 5, 8
    rng = np.random.default_rng(9)
    jac = jnp.asarray(rng.normal(size=(k, d)), jnp.float32)
    losses = jnp.asarray(rng.uniform(0.5, 2.0, size=k), jnp.float32)
    t = W.get(name)
    assert t.requires in (W.LOSSES, W.JACOBIAN, W.GRAMIAN)
    key = jax.random.key(11)
    state0 = W.base.init_state(t, k, (("w", (d,)),))
    eager_out, eager_state = _update(t, losses, state0, jac, key=key)
    _check_output(eager_out, k, d)
    jit_out, jit_state = _jitted_step(name)(losses, state0, jac, key)
    _check_output(jit_out, k, d)
    np.testing.assert_allclose(_direction(jit_out, jac), _direction(eager_out, jac), rtol=1e-4, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(jit_state), jax.tree_util.tree_leaves(eager_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(W.aggregate(name, jac, losses, key=key)), _direction(eager_out, jac), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("name", OWN)
def test_every_scheme_degenerate_rows_no_nan(name):
    k, d = 5, 8
    rng = np.random.default_rng(12)
    jac = rng.normal(size=(k, d)).astype(np.float32)
    jac[1] = 0.0  # an all-zero task gradient
    jac[3] = jac[2]  # two identical task gradients
    step = _jitted_step(name)
    state = W.base.init_state(W.get(name), k, (("w", (d,)),))
    spec = jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), state)
    for j in (jac, jac, np.zeros_like(jac)):  # two steps of degenerate rows, then an all-zero Jacobian
        out, state = step(jnp.ones(k, jnp.float32), state, jnp.asarray(j), jax.random.key(1))
        _check_output(out, k, d)
        assert np.all(np.isfinite(_direction(out, j)))
        assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(state))
        # a train state built from init keeps its shapes and dtypes
        assert jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), state) == spec
