"""NTKMTL, PCD, GO4Align and CR-MOGM against float64 / brute-force references of their definitions."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmtl.weighting as W
from jmtl.weighting import gramian as gs
from jmtl.weighting import losses as ls


@pytest.fixture
def x64():
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def _rows(seed, k, d, scales=None):
    rng = np.random.default_rng(seed)
    jac = rng.normal(size=(k, d))
    if scales is not None:
        jac = jac * np.asarray(scales)[:, None]
    return jac


def _run(name, jacs, losses=None, **hp):
    """Directions of scheme ``name`` over successive calls (state carried), float64."""
    t = W.get(name, **hp)
    k = jacs[0].shape[0]
    state = t.init(k)
    out = []
    for i, jac in enumerate(jacs):
        j = jnp.asarray(jac, jnp.float64)
        l = jnp.ones((k,), jnp.float64) if losses is None else jnp.asarray(losses[i], jnp.float64)
        o, state = W.update_from(t, l, state, jacobian=j, gramian=j @ j.T, key=jax.random.key(i), step=jnp.asarray(i))
        out.append(np.asarray(W.combine(o, j)))
    return out


def test_requirements_are_the_least_the_step_must_compute():
    assert W.get("ntkmtl").requires == W.GRAMIAN
    assert W.get("pcd").requires == W.GRAMIAN
    assert W.get("go4align").requires == W.LOSSES
    assert W.get("cr_mogm").requires == W.GRAMIAN  # default base: mgda
    assert W.get("cr_mogm", base="famo").requires == W.LOSSES
    assert W.get("cr_mogm", base="pcgrad").needs_key
    assert not any(W.get(n).needs_key for n in ("ntkmtl", "pcd", "go4align", "cr_mogm"))


# ----------------------------------------------------------------------------- NTKMTL


def test_ntkmtl_matches_the_ntk_ratio_rule(x64):
    jac = _rows(0, 4, 9, scales=[0.1, 1.0, 3.0, 0.5])
    g = jac @ jac.T
    w = 4 * (np.trace(g) / (np.diag(g) + 1e-8)) ** 0.5
    expected = w @ jac
    (d,) = _run("ntkmtl", [jac], max_norm=0.0)
    np.testing.assert_allclose(d, expected, rtol=1e-10)
    (clipped,) = _run("ntkmtl", [jac])  # default max_norm = 1 clips this (|expected| >> 1)
    assert np.linalg.norm(expected) > 1
    np.testing.assert_allclose(clipped, expected / np.linalg.norm(expected), rtol=1e-10)
    (exp75,) = _run("ntkmtl", [jac], max_norm=0.0, ntk_exp=0.75)
    np.testing.assert_allclose(exp75, (4 * (np.trace(g) / (np.diag(g) + 1e-8)) ** 0.75) @ jac, rtol=1e-10)


def test_ntkmtl_equalises_the_tasks_ntk_for_orthogonal_gradients(x64):
    """Orthogonal task gradients: the effective NTK of task k under the update, w_k |g_k|^2, is
    proportional to |g_k| (exponent 1/2), i.e. the ratio between tasks shrinks from |g|^2 to |g|."""
    jac = np.diag([0.1, 1.0, 10.0])
    (d,) = _run("ntkmtl", [jac], max_norm=0.0)
    progress = jac @ d  # w_k |g_k|^2
    np.testing.assert_allclose(progress / progress[0], [1.0, 10.0, 100.0], rtol=1e-6)


# ----------------------------------------------------------------------------- PCD


def _pcd_bruteforce(gn, taus):
    """min 1/2|d - g1|^2 s.t. g_j.d >= tau_j|g_j|^2 on normalised rows ``gn``: every active set, KKT checked."""
    g1, sec = gn[0], gn[1:]
    rhs = taus * np.sum(sec * sec, axis=1)
    best = None
    for r in range(len(sec) + 1):
        for act in itertools.combinations(range(len(sec)), r):
            a = sec[list(act)]
            if r:
                mu_a = np.linalg.lstsq(a @ a.T, rhs[list(act)] - a @ g1, rcond=None)[0]
                if np.any(mu_a < -1e-12):
                    continue
                d = g1 + mu_a @ a
            else:
                d = g1
            if np.all(sec @ d >= rhs - 1e-10):
                val = 0.5 * np.sum((d - g1) ** 2)
                if best is None or val < best[0] - 1e-12:
                    best = (val, d)
    return None if best is None else best[1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pcd_solves_its_qp_and_keeps_the_constraints(x64, seed):
    k = 4
    jac = _rows(seed, k, 6, scales=[1.0, 0.2, 4.0, 1.0])
    jac[1] = -0.9 * jac[0] + 0.3 * jac[1]  # a secondary task conflicting with the primary
    tau = 0.3
    (d,) = _run("pcd", [jac], tau=tau, eps=0.0)
    gn = jac / np.linalg.norm(jac, axis=1, keepdims=True)  # first call: v^ = |g|^2, so s = 1/|g|
    ref = _pcd_bruteforce(gn, np.full(k - 1, tau))
    ref = ref * np.linalg.norm(jac[0]) / np.linalg.norm(ref)
    np.testing.assert_allclose(d, ref, rtol=1e-8, atol=1e-10)
    assert np.all(gn[1:] @ d / np.linalg.norm(d) * np.linalg.norm(jac[0]) >= 0)
    np.testing.assert_allclose(np.linalg.norm(d), np.linalg.norm(jac[0]), rtol=1e-10)


def test_pcd_special_cases(x64):
    # No conflict: the constraints hold at g~_1, the update is g_1.
    jac = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.5, 0.0, 0.5]])
    (d,) = _run("pcd", [jac], tau=0.02)
    np.testing.assert_allclose(d, jac[0], rtol=1e-10)
    # Two opposite secondary gradients with tau > 0: infeasible, the constraints are dropped.
    jac = np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])
    (d,) = _run("pcd", [jac], tau=0.1)
    np.testing.assert_allclose(d, jac[0], rtol=1e-10)
    # Zero primary gradient: zero update.
    jac = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    (d,) = _run("pcd", [jac])
    np.testing.assert_allclose(d, 0.0)
    with pytest.raises(ValueError, match="one per secondary task"):
        _run("pcd", [np.eye(3)], tau=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="tau must be in"):
        W.get("pcd", tau=1.5)


def test_pcd_normalises_by_the_bias_corrected_ema(x64):
    beta, tau = 0.9, 0.5
    j1 = np.array([[1.0, 0.0], [-0.8, 0.6]])
    j2 = np.array([[2.0, 0.5], [-3.0, 0.3]])
    d1, d2 = _run("pcd", [j1, j2], tau=tau, beta=beta, eps=0.0)
    ema = (1 - beta) * np.sum(j1**2, 1)
    ema = beta * ema + (1 - beta) * np.sum(j2**2, 1)
    s = 1 / np.sqrt(ema / (1 - beta**2))
    gn = j2 * s[:, None]
    ref = _pcd_bruteforce(gn, np.array([tau]))
    np.testing.assert_allclose(d2, ref * np.linalg.norm(j2[0]) / np.linalg.norm(ref), rtol=1e-8)


# ----------------------------------------------------------------------------- GO4Align


def _kmeans_bruteforce(x, g):
    best = np.inf
    for labels in itertools.product(range(g), repeat=len(x)):
        labels = np.array(labels)
        if len(set(labels)) != g:
            continue
        sse = sum(np.sum((x[labels == c] - x[labels == c].mean()) ** 2) for c in range(g))
        best = min(best, sse)
    return best


@pytest.mark.parametrize("g", [1, 2, 3])
def test_kmeans_1d_is_the_global_optimum(x64, g):
    x = np.array([0.3, 2.0, 0.35, 1.1, 5.0, 1.0])
    centers, labels = ls.kmeans_1d(jnp.asarray(x), g)
    centers, labels = np.asarray(centers), np.asarray(labels)
    assert len(set(labels.tolist())) == g
    for c in range(g):
        np.testing.assert_allclose(centers[labels == c], x[labels == c].mean())
    np.testing.assert_allclose(np.sum((x - centers) ** 2), _kmeans_bruteforce(x, g), rtol=1e-10, atol=1e-14)


def test_go4align_risk_indicators_and_groups(x64):
    eta, steps = 0.5, [np.array([1.0, 2.0, 0.5, 4.0]), np.array([0.8, 2.5, 0.4, 3.0])]
    jac = np.eye(4)
    dirs = _run("go4align", [jac, jac], losses=steps, num_groups=2, robust_step_size=eta)
    p = np.full(4, 0.25)
    for l, d in zip(steps, dirs):
        p = p * np.exp(-eta * l)
        p = p / p.sum()
        gamma = l.sum() / l * p
        best = None
        for labels in itertools.product(range(2), repeat=4):
            labels = np.array(labels)
            if len(set(labels)) != 2:
                continue
            c = np.array([gamma[labels == labels[i]].mean() for i in range(4)])
            sse = np.sum((gamma - c) ** 2)
            if best is None or sse < best[0]:
                best = (sse, c)
        np.testing.assert_allclose(d, best[1], rtol=1e-10)  # identity J: the direction is the weights
    with pytest.raises(ValueError, match="exceeds the number of tasks"):
        W.aggregate("go4align", jnp.eye(2), num_groups=3)


# ----------------------------------------------------------------------------- CR-MOGM


def test_cr_mogm_is_an_ema_of_the_wrapped_weights(x64):
    jacs = [_rows(s, 3, 5) for s in range(3)]
    alpha = 0.6
    dirs = _run("cr_mogm", jacs, alpha=alpha)
    lam = np.full(3, 1 / 3)
    for jac, d in zip(jacs, dirs):
        w_hat = np.asarray(gs.solvers.min_norm_weights(jnp.asarray(jac @ jac.T)))
        lam = alpha * lam + (1 - alpha) * w_hat
        np.testing.assert_allclose(d, lam @ jac, rtol=1e-8)
    # alpha = 0: the wrapped scheme itself; alpha = 1: frozen at 1/K.
    np.testing.assert_allclose(_run("cr_mogm", jacs[:1], alpha=0.0)[0], _run("mgda", jacs[:1])[0], rtol=1e-12)
    np.testing.assert_allclose(_run("cr_mogm", jacs[:1], alpha=1.0)[0], jacs[0].mean(0), rtol=1e-12)
    # Hyperparameters of the wrapped scheme go through base_hparams.
    a = _run("cr_mogm", jacs[:1], alpha=0.0, base="static", base_hparams={"weights": [1.0, 0.5, 2.0]})[0]
    np.testing.assert_allclose(a, np.array([1.0, 0.5, 2.0]) @ jacs[0], rtol=1e-12)


def test_cr_mogm_refuses_what_it_cannot_smooth():
    with pytest.raises(ValueError, match="returns a direction"):
        W.aggregate("cr_mogm", jnp.eye(3), base="graddrop")
    with pytest.raises(ValueError, match="learnable params"):
        W.get("cr_mogm", base="uncertainty")
    with pytest.raises(ValueError, match="alpha must be in"):
        W.get("cr_mogm", alpha=1.5)
    with pytest.raises(ValueError, match="unknown weighting scheme"):
        W.get("cr_mogm", base="nope")


# ----------------------------------------------------------------------------- NTKMTL-SR


def test_ntkmtl_sr_uses_the_largest_eigenvalue_of_each_tasks_representation_ntk(x64):
    """A shared linear encoder z = x W and linear heads: the per-sample gradients d l_kn / d z are built
    by hand, each task's NTK J_k J_k^T is diagonalised with eigvalsh (the official definition), and
    the weights must match those the scheme reads from the batch-mean loss's representation rows."""
    rng = np.random.default_rng(0)
    n, h, k = 5, 3, 3
    z = rng.normal(size=(n, h))
    heads = rng.normal(size=(k, h)) * np.array([[0.1], [1.0], [4.0]])
    y = rng.normal(size=(k, n))
    resid = z @ heads.T - y.T  # [n, k]; l_kn = resid^2
    per_sample = np.zeros((k, n, n * h))  # J_k: row m = d l_km / d z (all of z, flattened)
    for t in range(k):
        for m in range(n):
            per_sample[t, m, m * h : (m + 1) * h] = 2 * resid[m, t] * heads[t]
    lam = np.array([np.linalg.eigvalsh(per_sample[t] @ per_sample[t].T)[-1] for t in range(k)])
    expected = (lam.sum() / lam) ** 0.5
    rows = per_sample.mean(axis=1)  # d L_k / d z with L_k the batch mean
    t = W.get("ntkmtl_sr")
    out, _ = t.apply(jnp.ones(k), t.init(k), jacobian=jnp.asarray(rows), layout=(("representation", (n, h)),))
    np.testing.assert_allclose(np.asarray(out.weights), expected, rtol=1e-10)
    with pytest.raises(ValueError, match="jacobian_mode='representation'"):
        t.apply(jnp.ones(k), t.init(k), jacobian=jnp.asarray(rows))


def test_ntkmtl_sr_is_refused_in_params_mode():
    import optax

    from jmtl.models import mtl
    from jmtl.tasks import Task
    from jmtl.training import step as step_lib

    tasks = (Task("a", "regression", 1), Task("b", "regression", 1))
    model = mtl.build(tasks, encoder="mlp", encoder_kwargs=dict(features=(4,)), head_kwargs=dict(hidden=2))
    t = W.get("ntkmtl_sr")
    with pytest.raises(ValueError, match="jacobian_mode='representation'"):
        fn = step_lib.make_train_step(model, tasks, t, optax.sgd(0.1), step_lib.StepConfig(input_key="x"))
        state = step_lib.init_state(model, t, optax.sgd(0.1), jnp.zeros((1, 3)), 2, seed=0)
        fn(state, {"x": jnp.ones((4, 3)), "a": jnp.ones((4, 1)), "b": jnp.ones((4, 1))})
