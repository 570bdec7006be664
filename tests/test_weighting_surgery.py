"""Gradient-surgery schemes (PCGrad, GradVac, GradDrop, IMTL, CAGrad, Nash-MTL, Aligned-MTL, ConFIG) against their defining properties."""

from __future__ import annotations

import inspect
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmtl.weighting as W
from jmtl.weighting import gramian as gs
from jmtl.weighting import jacobian as jac_schemes

# Values, not speed: the programs compile without XLA's optimisation passes (conftest's
# xla_optimizations_off; this file's compile-bound tests took ~0.6x the time in one measured run).
pytestmark = pytest.mark.usefixtures("xla_optimizations_off")


SCHEMES = sorted(["pcgrad", "gradvac", "graddrop", "imtl_g", "imtl", "cagrad", "nash_mtl", "aligned_mtl", "con_fig"])
K, D = 3, 12
LAYOUT = (
    ("['enc']['dense_0']['kernel']", (2, 3)),
    ("['enc']['dense_0']['bias']", (3,)),
    ("['enc']['dense_1']['kernel']", (3,)),
)  # d = 12


@pytest.fixture
def x64():
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def _init(t, k, layout=None):
    if layout is not None and "layout" in inspect.signature(t.init).parameters:
        return t.init(k, layout=layout)
    return t.init(k)


def _call(t, losses, state, jac, key, params=None, layout=None):
    if params is None and t.init_params is not None:
        params = t.init_params(losses.shape[0])
    return W.update_from(
        t,
        losses,
        state,
        jacobian=jac,
        gramian=jac @ jac.T,
        params=params,
        key=key,
        step=jnp.zeros((), jnp.int32),
        layout=layout,
    )


def _inputs(seed, k=K, d=D):
    kj, kl = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kj, (k, d)), jax.random.uniform(kl, (k,), minval=0.2, maxval=3.0)


_JITTED: dict = {}


def _agg(name, jac, losses=None, key=0, **hp):
    """``W.aggregate`` under ``jit`` (cached per scheme and hyperparameters; eager calls re-trace the loops)."""
    cache_key = (name, tuple(sorted(hp.items())), jax.config.jax_enable_x64)
    if cache_key not in _JITTED:
        _JITTED[cache_key] = jax.jit(lambda j, l, k: W.aggregate(name, j, l, key=k, **hp))
    jac = jnp.asarray(jac)
    losses = jnp.ones((jac.shape[0],), jac.dtype) if losses is None else jnp.asarray(losses, jac.dtype)
    return np.asarray(_JITTED[cache_key](jac, losses, jax.random.key(key)))


# ----------------------------------------------------------------------------- registry-wide


def test_registered_with_defaults():
    expected = {
        "pcgrad": {},
        "gradvac": {"beta": 0.5, "granularity": "whole_model"},
        "graddrop": {"leak": 0.0},
        "imtl_g": {},
        "imtl": {"init_scale": 0.0},
        "cagrad": {"c": 0.5, "rescale": 1, "num_iters": 100, "tol": 1e-10},
        "nash_mtl": {"max_norm": 1.0, "optim_niter": 100, "update_weights_every": 1, "tol": 1e-7},
        "aligned_mtl": {"scale_mode": "min"},
        "con_fig": {},
    }
    for name, hp in expected.items():
        assert W.hyperparameters(name) == hp
    for name, bad in (
        ("gradvac", {"granularity": "enc_dec"}),
        ("cagrad", {"rescale": 3}),
        ("aligned_mtl", {"scale_mode": "max"}),
        ("graddrop", {"leak": 2.0}),
    ):
        with pytest.raises(ValueError):
            W.get(name, **bad)


@pytest.mark.parametrize("name", SCHEMES)
def test_generic(name):
    """Right shape, finite, jit == eager, no NaN for zero / duplicate gradients, state stable under jit."""
    t = W.get(name)
    jac, losses = _inputs(0)
    key = jax.random.key(3)
    params = t.init_params(K) if t.init_params is not None else None
    eager = W.aggregate(name, jac, losses, key=key)  # un-jitted, fresh state, no layout
    assert eager.shape == (D,) and bool(jnp.all(jnp.isfinite(eager)))
    # (the layout only matters for GradVac's non-default granularities)
    jitted = jax.jit(lambda l, s, j, k, p: _call(t, l, s, j, k, p, LAYOUT))
    out0, _ = jitted(losses, _init(t, K, LAYOUT), jac, key, params)
    if out0.weights is not None:
        assert out0.weights.shape == (K,)
    np.testing.assert_allclose(W.combine(out0, jac), eager, rtol=2e-4, atol=2e-5)

    for bad in (jac.at[1].set(0.0), jac.at[2].set(jac[0]), jnp.zeros_like(jac)):
        o, s = jitted(losses, _init(t, K, LAYOUT), bad, key, params)
        assert bool(jnp.all(jnp.isfinite(W.combine(o, bad))))
        assert bool(jnp.all(jnp.isfinite(jnp.asarray(o.extra_loss))))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(s) if jnp.issubdtype(x.dtype, jnp.floating))

    state = _init(t, K, LAYOUT)
    struct = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    for i in range(5):
        j, l = _inputs(10 + i)
        o, state = jitted(l, state, j, jax.random.key(i), params)
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == struct
        assert bool(jnp.all(jnp.isfinite(W.combine(o, j))))


# ----------------------------------------------------------------------------- PCGrad


def test_pcgrad_no_conflict_is_sum():
    jac = np.array([[1.0, 0.5, 0.0], [0.2, 1.0, 0.3], [0.0, 0.1, 2.0]])  # all dot products >= 0
    np.testing.assert_allclose(_agg("pcgrad", jac), jac.sum(axis=0), rtol=1e-6)


def test_pcgrad_two_tasks_textbook():
    g1, g2 = np.array([1.0, 0.0]), np.array([-1.0, 1.0])  # g1 . g2 = -1
    g1_pc = g1 - (-1.0) / 2.0 * g2  # [0.5, 0.5]
    g2_pc = g2 - (-1.0) / 1.0 * g1  # [0, 1]
    for seed in range(3):
        np.testing.assert_allclose(_agg("pcgrad", np.stack([g1, g2]), key=seed), g1_pc + g2_pc, rtol=1e-6)
        np.testing.assert_allclose(g1_pc + g2_pc, [0.5, 1.5])


def _pcgrad_reference(jac, orders):
    out = []
    for i, order in enumerate(orders):
        g = jac[i].copy()
        for j in order:
            dot = g @ jac[j]
            if dot < 0:
                g = g - dot / (jac[j] @ jac[j]) * jac[j]
        out.append(g)
    return np.sum(out, axis=0)


def test_pcgrad_random_orders_match_a_reference(x64):
    rng = np.random.default_rng(0)
    jac = rng.normal(size=(3, 5))
    jac[1] = -0.8 * jac[0] + 0.3 * rng.normal(size=5)
    jac[2] = -0.5 * jac[0] - 0.5 * jac[1] + 0.2 * rng.normal(size=5)
    others = [[j for j in range(3) if j != i] for i in range(3)]
    candidates = [
        _pcgrad_reference(jac, orders)
        for orders in itertools.product(*[list(itertools.permutations(o)) for o in others])
    ]
    seen = set()
    for seed in range(12):
        d = _agg("pcgrad", jac, key=seed)
        np.testing.assert_allclose(d, _agg("pcgrad", jac, key=seed))  # reproducible by key
        match = [n for n, c in enumerate(candidates) if np.allclose(d, c, rtol=1e-9, atol=1e-12)]
        assert match, "not the result of any order of projections"
        seen.add(match[0])
    assert len({tuple(np.round(c, 9)) for c in candidates}) > 1
    assert len(seen) > 1  # the order really is random


# ----------------------------------------------------------------------------- GradVac


def test_gradvac_groups_mapping():
    d = 12
    assert jac_schemes.gradvac_groups(LAYOUT, d, "whole_model") == ((6, 3, 3), (0, 0, 0), 1)
    assert jac_schemes.gradvac_groups(LAYOUT, d, "all_layer") == ((6, 3, 3), (0, 0, 1), 2)
    assert jac_schemes.gradvac_groups(LAYOUT, d, "all_matrix") == ((6, 3, 3), (0, 1, 2), 3)
    assert jac_schemes.gradvac_groups(None, d, "all_layer") == ((12,), (0,), 1)
    with pytest.raises(ValueError):
        jac_schemes.gradvac_groups(LAYOUT, 13, "all_layer")


def _vaccine(gi, gj, phi_hat):
    """Eq. 3 of Wang et al. 2021 applied to g_i against g_j if cos < phi_hat."""
    phi = gi @ gj / np.linalg.norm(gi) / np.linalg.norm(gj)
    if phi >= phi_hat:
        return gi, phi
    coef = np.linalg.norm(gi) * (phi_hat * np.sqrt(1 - phi**2) - phi * np.sqrt(1 - phi_hat**2))
    coef /= np.linalg.norm(gj) * np.sqrt(1 - phi_hat**2)
    return gi + coef * gj, phi


def test_gradvac_two_tasks_by_hand(x64):
    beta = 0.5
    t = W.get("gradvac", beta=beta)
    update = jax.jit(lambda s, j, k: t.apply(jnp.ones(2), s, jacobian=j, key=k))
    state = t.init(2)
    # Step 1: cos = 0.6 >= phi_hat = 0, nothing to edit; phi_hat <- beta * 0.6.
    j1 = np.array([[1.0, 0.0], [0.6, 0.8]])
    out, state = update(state, jnp.asarray(j1), jax.random.key(0))
    np.testing.assert_allclose(out.direction, j1.sum(axis=0), rtol=1e-10)
    np.testing.assert_allclose(state.targets[0], [[0.0, 0.3], [0.3, 0.0]], rtol=1e-10)
    # Step 2: cos = 0.1 < 0.3: both gradients are vaccinated to cos = 0.3 with the other one.
    j2 = np.array([[2.0, 0.0], [0.1, np.sqrt(1 - 0.01)]])
    out, state = update(state, jnp.asarray(j2), jax.random.key(1))
    g1, phi12 = _vaccine(j2[0], j2[1], 0.3)
    g2, phi21 = _vaccine(j2[1], j2[0], 0.3)
    np.testing.assert_allclose(g1 @ j2[1] / np.linalg.norm(g1) / np.linalg.norm(j2[1]), 0.3, rtol=1e-10)
    np.testing.assert_allclose(out.direction, g1 + g2, rtol=1e-8)
    np.testing.assert_allclose(
        state.targets[0], [[0.0, 0.5 * 0.3 + 0.5 * phi12], [0.5 * 0.3 + 0.5 * phi21, 0.0]], rtol=1e-8
    )


def test_gradvac_first_step_equals_pcgrad_per_group(x64):
    # phi_hat = 0 at the start: Eq. 3 with phi_hat = 0 is PCGrad's projection.
    rng = np.random.default_rng(3)
    jac = rng.normal(size=(2, 12))
    jac[1, :9] = -jac[0, :9] + 0.1 * rng.normal(size=9)  # dense_0 conflicts
    jac[1, 9:] = jac[0, 9:]  # dense_1 agrees
    t = W.get("gradvac", granularity="all_layer")
    state = t.init(2, layout=LAYOUT)
    assert state.targets.shape == (2, 2, 2)
    update = jax.jit(lambda s, j, k: t.apply(jnp.ones(2), s, jacobian=j, key=k, layout=LAYOUT))
    out, state = update(state, jnp.asarray(jac), jax.random.key(0))
    np.testing.assert_allclose(out.direction[:9], _agg("pcgrad", jac[:, :9]), rtol=1e-8)
    np.testing.assert_allclose(out.direction[9:], jac[:, 9:].sum(axis=0), rtol=1e-8)
    np.testing.assert_allclose(state.targets[1, 0, 1], 1.0 * 0.5, rtol=1e-8)  # cos = 1 in dense_1


# ----------------------------------------------------------------------------- GradDrop


def test_graddrop_sign_purity():
    agree = np.array([[1.0, -2.0, 0.0], [3.0, -1.0, 0.0]])  # same signs per coordinate: P in {0, 1}
    np.testing.assert_allclose(_agg("graddrop", agree), agree.sum(axis=0))
    mixed = np.tile(np.array([[3.0], [-1.0]]), (1, 20000))  # P = (1 + 2/4) / 2 = 0.75
    d1 = _agg("graddrop", mixed, key=1)
    np.testing.assert_array_equal(d1, _agg("graddrop", mixed, key=1))  # reproducible by key
    assert set(np.unique(d1)) == {-1.0, 3.0}  # exactly one sign survives per coordinate
    assert abs(np.mean(d1 == 3.0) - 0.75) < 0.015
    np.testing.assert_allclose(_agg("graddrop", mixed, leak=1.0), mixed.sum(axis=0))  # full leak: plain sum
    d_half = _agg("graddrop", mixed, key=1, leak=0.5)
    np.testing.assert_allclose(d_half, np.where(d1 == 3.0, 3.0 - 0.5, 0.5 * 3.0 - 1.0))


# ----------------------------------------------------------------------------- IMTL


def test_imtl_g_equal_projections(x64):
    rng = np.random.default_rng(0)
    solve = jax.jit(gs.imtl_g_weights)
    for k in (2, 3, 5):
        jac = rng.normal(size=(k, 8)) * rng.uniform(0.1, 10.0, size=(k, 1))
        alpha = np.asarray(solve(jnp.asarray(jac @ jac.T)))
        d = alpha @ jac
        units = jac / np.linalg.norm(jac, axis=1, keepdims=True)
        proj = units @ d
        np.testing.assert_allclose(proj, proj[0], rtol=1e-8)
        assert proj[0] > 0
        np.testing.assert_allclose(alpha.sum(), 1.0, rtol=1e-10)
    # The paper's closed form (Eq. 5) for K = 2.
    g1, g2 = jac[0], jac[1]
    u1, u2 = g1 / np.linalg.norm(g1), g2 / np.linalg.norm(g2)
    a2 = g1 @ (u1 - u2) / ((g1 - g2) @ (u1 - u2))
    np.testing.assert_allclose(_agg("imtl_g", jac[:2]), (1 - a2) * g1 + a2 * g2, rtol=1e-8)


def test_imtl_hybrid(x64):
    rng = np.random.default_rng(1)
    jac = jnp.asarray(rng.normal(size=(3, 6)))
    gram = jac @ jac.T
    losses = jnp.array([0.5, 2.0, 1.5])
    t = W.get("imtl")
    s0 = t.init_params(3)
    np.testing.assert_allclose(_agg("imtl", jac), _agg("imtl_g", jac), rtol=1e-10)  # s = 0: IMTL-G
    s = {"s": jnp.array([0.3, -0.5, 0.2])}
    out, _ = t.apply(losses, t.init(3), gramian=gram, params=s)
    e = np.exp(np.asarray(s["s"]))
    scaled = np.asarray(jac) * e[:, None]
    d = np.asarray(out.weights @ jac)
    np.testing.assert_allclose(d, _agg("imtl_g", scaled), rtol=1e-8)  # IMTL-G on e^s g
    units = scaled / np.linalg.norm(scaled, axis=1, keepdims=True)
    np.testing.assert_allclose(units @ d, (units @ d)[0], rtol=1e-8)

    def objective(p):  # what the train step differentiates for the scheme's params
        o, _ = t.apply(losses, t.init(3), gramian=gram, params=p)
        return jnp.vdot(o.weights, losses) + o.extra_loss

    np.testing.assert_allclose(jax.grad(objective)(s)["s"], e * np.asarray(losses) - 1.0, rtol=1e-10)
    np.testing.assert_allclose(objective(s), float(out.weights @ losses) - float(jnp.sum(s["s"])), rtol=1e-10)
    assert s0["s"].shape == (3,)


# ----------------------------------------------------------------------------- CAGrad


def test_cagrad_c0_is_mean(x64):
    # The paper's g_0 is the mean gradient; with c = 0 the direction is g_0 (any rescale divides by 1).
    jac, _ = _inputs(5, k=4, d=9)
    np.testing.assert_allclose(_agg("cagrad", jac, c=0.0), np.asarray(jac).mean(axis=0), rtol=1e-10)


def test_cagrad_matches_slsqp(x64):
    from scipy.optimize import minimize

    rng = np.random.default_rng(2)
    k, c = 4, 0.5
    for trial in range(4):
        jac = rng.normal(size=(k, 9)) * rng.uniform(0.2, 5.0, size=(k, 1))
        jac[1] = -0.9 * jac[0] + 0.2 * rng.normal(size=9)
        gram = jac @ jac.T
        g0 = jac.mean(axis=0)
        phi_sqrt = c * np.linalg.norm(g0)
        b = np.full(k, 1 / k)

        def f(w):
            return w @ gram @ b + phi_sqrt * np.sqrt(w @ gram @ w)

        res = minimize(
            f,
            b,
            bounds=[(0, 1)] * k,
            constraints=({"type": "eq", "fun": lambda w: 1 - w.sum()},),
            tol=1e-14,
            options={"maxiter": 1000},
        )
        gw = res.x @ jac
        expected = g0 + phi_sqrt / np.linalg.norm(gw) * gw
        # |g_w| can be small, making d sensitive to w: 1e-6 relative is that conditioning, not the solver
        for rescale, factor in ((0, 1.0), (1, 1 + c**2), (2, 1 + c))[: 3 if trial == 3 else 1]:
            np.testing.assert_allclose(
                _agg("cagrad", jac, c=c, rescale=rescale),
                expected / factor,
                rtol=1e-6,
                atol=1e-6 * np.linalg.norm(expected),
            )
        # CAGrad's guarantee: min_i g_i . d >= that of the mean gradient
        d = _agg("cagrad", jac, c=c, rescale=0)
        assert np.min(jac @ d) >= np.min(jac @ g0) - 1e-9


# ----------------------------------------------------------------------------- Nash-MTL


def test_nash_mtl_bargaining_solution(x64):
    rng = np.random.default_rng(4)
    raw, clip = W.get("nash_mtl", max_norm=0.0), W.get("nash_mtl")

    @jax.jit
    def solve(gram):
        k = gram.shape[0]
        out, state = raw.apply(jnp.ones(k), raw.init(k), gramian=gram)
        return out.weights, state.alpha, clip.apply(jnp.ones(k), clip.init(k), gramian=gram)[0].weights

    for k in (2, 4):
        q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
        jac = (rng.uniform(0.5, 2.0, size=k)[:, None] * q[:k]) + 0.3 * rng.normal(size=(k, 10))  # well conditioned
        gram = jac @ jac.T
        weights, alpha, clipped = (np.asarray(x) for x in solve(jnp.asarray(gram)))
        assert np.all(alpha > 0)
        # G alpha = 1 / alpha, up to the 1e-6 ridge on G / |G|_F
        np.testing.assert_allclose(gram @ alpha, 1 / alpha, rtol=1e-4)
        np.testing.assert_allclose(weights, alpha)
        d = alpha @ jac
        np.testing.assert_allclose(jac @ d, 1 / alpha, rtol=1e-4)  # g_k . d = 1 / alpha_k
        # default max_norm = 1 rescales the update (|d|^2 = K > 1)
        np.testing.assert_allclose(np.linalg.norm(clipped @ jac), 1.0, rtol=1e-8)
        np.testing.assert_allclose(clipped @ jac, d / np.linalg.norm(d), rtol=1e-4)


def test_nash_mtl_update_every_and_warm_start(x64):
    rng = np.random.default_rng(5)
    j1, j2 = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    t = W.get("nash_mtl", max_norm=0.0, update_weights_every=2)
    update = jax.jit(lambda s, j: t.apply(jnp.ones(3), s, jacobian=j))
    state = t.init(3)
    o1, state = update(state, jnp.asarray(j1))
    o2, state = update(state, jnp.asarray(j2))
    np.testing.assert_allclose(o2.weights, o1.weights)  # reused in between updates
    o3, state = update(state, jnp.asarray(j2))
    np.testing.assert_allclose((j2 @ j2.T) @ o3.weights, 1 / o3.weights, rtol=1e-4)
    assert int(o3.weights.shape[0]) == 3 and int(state.iterations) > 0
    _, state = update(state, jnp.asarray(j1))
    assert int(state.iterations) == 0  # a reuse step ran no Newton iteration


def test_nash_mtl_solves_only_on_refresh_steps():
    """With update_weights_every > 1 the Newton solve sits inside a cond taken on refresh steps only
    (it used to run every step and its result was thrown away in between)."""

    def primitives(jaxpr, top=True):
        out = []
        for eqn in jaxpr.eqns:
            out.append((eqn.primitive.name, top))
            for v in eqn.params.values():
                for b in v if isinstance(v, (list, tuple)) else [v]:
                    inner = getattr(b, "jaxpr", None)
                    if inner is not None and hasattr(inner, "eqns"):
                        out += primitives(inner, False)
        return out

    gram = jnp.eye(3)
    for every, solve_at_top in ((1, True), (4, False)):
        t = W.get("nash_mtl", update_weights_every=every)
        jaxpr = jax.make_jaxpr(lambda s: t.apply(jnp.ones(3), s, gramian=gram))(t.init(3))
        found = primitives(jaxpr.jaxpr)
        assert ("while", True) in found if solve_at_top else ("while", True) not in found, every
        assert any(name == "while" for name, _ in found)


# ----------------------------------------------------------------------------- Aligned-MTL


def test_aligned_mtl_condition_number_one(x64):
    rng = np.random.default_rng(6)
    jac = rng.normal(size=(4, 10)) * np.array([[0.1], [1.0], [5.0], [2.0]])
    gram = jac @ jac.T
    b = np.asarray(gs.aligned_balance(jnp.asarray(gram), "min"))
    sv = np.linalg.svd(b @ jac, compute_uv=False)
    np.testing.assert_allclose(sv.max() / sv.min(), 1.0, rtol=1e-8)  # condition number 1
    np.testing.assert_allclose(sv, np.sqrt(np.linalg.eigvalsh(gram).min()), rtol=1e-8)  # scaled by sigma_min
    np.testing.assert_allclose(_agg("aligned_mtl", jac), (b @ jac).sum(axis=0), rtol=1e-10)
    for mode in ("median", "rmse"):
        bm = np.asarray(gs.aligned_balance(jnp.asarray(gram), mode))
        svm = np.linalg.svd(bm @ jac, compute_uv=False)
        np.testing.assert_allclose(svm.max() / svm.min(), 1.0, rtol=1e-8)
    np.testing.assert_allclose(
        np.linalg.svd(np.asarray(gs.aligned_balance(jnp.asarray(gram), "rmse")) @ jac, compute_uv=False),
        np.sqrt(np.linalg.eigvalsh(gram).mean()),
        rtol=1e-8,
    )
    # Rank-deficient (two identical gradients): condition number 1 on the range.
    jac[3] = jac[2]
    b = np.asarray(gs.aligned_balance(jnp.asarray(jac @ jac.T), "min"))
    sv = np.linalg.svd(b @ jac, compute_uv=False)
    np.testing.assert_allclose(sv[:3] / sv[2], 1.0, rtol=1e-6)
    assert sv[3] < 1e-6 * sv[0]


# ----------------------------------------------------------------------------- ConFIG


def test_config_conflict_free(x64):
    jac = np.array([[1.0, 0.2, 0.0], [-0.8, 1.0, 0.1], [0.1, -0.9, 1.0]])
    assert (jac @ jac.T)[0, 1] < 0 and (jac @ jac.T)[1, 2] < 0  # conflicting
    d = _agg("con_fig", jac)
    proj = jac @ d
    assert np.all(proj > 0)
    units = jac / np.linalg.norm(jac, axis=1, keepdims=True)
    np.testing.assert_allclose(units @ d, (units @ d)[0], rtol=1e-8)  # equal angles with every task
    np.testing.assert_allclose(np.linalg.norm(d), np.sum(proj) / np.linalg.norm(d), rtol=1e-8)  # length model
    # matches pinv(U^T) 1 computed directly on the unit gradients
    v = np.linalg.pinv(units) @ np.ones(3)
    gu = v / np.linalg.norm(v)
    np.testing.assert_allclose(d, np.sum(jac @ gu) * gu, rtol=1e-8)
    # Rank-deficient K > d: least squares, still finite
    assert np.all(np.isfinite(_agg("con_fig", np.vstack([jac, jac[0] + jac[1]]))))
