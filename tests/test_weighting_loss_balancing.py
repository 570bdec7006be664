"""Loss-balancing schemes (SI, DWA, RLW, GLS, IMTL-L, FAMO, STCH, DB-MTL, GradNorm) against hand-computed weights."""

from __future__ import annotations

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmtl.weighting as W

SCHEMES = sorted(["si", "dwa", "rlw", "gls", "imtl_l", "famo", "stch", "db_mtl", "gradnorm"])
K, D = 3, 12
LAYOUT = (("['enc']['dense']['kernel']", (3, 3)), ("['enc']['dense']['bias']", (3,)))  # d = 12


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


def _call(t, losses, state, jac, key, step=0, params=None, layout=None):
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
        step=jnp.asarray(step, jnp.int32),
        layout=layout,
    )


def _inputs(seed, k=K, d=D):
    kj, kl = jax.random.split(jax.random.key(seed))
    jac = jax.random.normal(kj, (k, d))
    losses = jax.random.uniform(kl, (k,), minval=0.2, maxval=3.0)
    return jac, losses


def _weights(name, losses_seq, **hp):
    """The weights a scheme returns along a sequence of loss vectors (no Jacobian needed)."""
    t = W.get(name, **hp)
    state = t.init(len(losses_seq[0]))
    out = []
    for i, l in enumerate(losses_seq):
        o, state = _call(t, jnp.asarray(l), state, jnp.eye(len(l)), jax.random.key(i), step=i)
        out.append(np.asarray(o.weights))
    return out, state


# ----------------------------------------------------------------------------- registry-wide


def test_registered_with_defaults():
    expected = {
        "si": {},
        "dwa": {"temperature": 2.0, "steps_per_epoch": 100},
        "rlw": {},
        "gls": {},
        "imtl_l": {"init_scale": 0.0},
        "famo": {"w_lr": 0.025, "gamma": 1e-3},
        "stch": {"mu": 1.0, "warmup_epochs": 4, "steps_per_epoch": 100},
        "db_mtl": {"beta": 0.9, "beta_sigma": 0.0},
        "gradnorm": {"alpha": 1.5, "lr": 0.025},
    }
    assert set(expected) <= set(W.names())
    for name, hp in expected.items():
        assert W.hyperparameters(name) == hp
    with pytest.raises(ValueError):
        W.get("dwa", tau=1.0)


@pytest.mark.parametrize("name", SCHEMES)
def test_generic(name):
    """Right shape, finite, jit == eager, no NaN for zero / duplicate gradients, state stable under jit."""
    t = W.get(name)
    jac, losses = _inputs(0)
    key = jax.random.key(3)
    out, state = _call(t, losses, _init(t, K, LAYOUT), jac, key, layout=LAYOUT)
    jitted = jax.jit(lambda l, s, j, k, p: _call(t, l, s, j, k, params=p, layout=LAYOUT))
    params = t.init_params(K) if t.init_params is not None else None
    out_j, state_j = jitted(losses, _init(t, K, LAYOUT), jac, key, params)
    vec = W.combine(out, jac)
    assert vec.shape == (D,) and bool(jnp.all(jnp.isfinite(vec)))
    if out.weights is not None:
        assert out.weights.shape == (K,)
    np.testing.assert_allclose(W.combine(out_j, jac), vec, rtol=1e-5, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), state, state_j)

    # Degenerate Jacobians: a zero row, two identical rows, all zero.
    for bad in (jac.at[1].set(0.0), jac.at[2].set(jac[0]), jnp.zeros_like(jac)):
        o, _ = jitted(losses, _init(t, K, LAYOUT), bad, key, params)
        assert bool(jnp.all(jnp.isfinite(W.combine(o, bad))))
        assert bool(jnp.all(jnp.isfinite(jnp.asarray(o.extra_loss))))

    # Several steps under jit: the state keeps its structure, shapes and dtypes.
    state = _init(t, K, LAYOUT)
    struct = jax.tree.map(lambda x: (x.shape, x.dtype), state)
    for i in range(5):
        j, l = _inputs(10 + i)
        o, state = jitted(l, state, j, jax.random.key(i), params)
        assert jax.tree.map(lambda x: (x.shape, x.dtype), state) == struct
        assert bool(jnp.all(jnp.isfinite(W.combine(o, j))))
    # The one-call form works with a fresh state too.
    assert W.aggregate(name, jac, losses, key=key).shape == (D,)


# ----------------------------------------------------------------------------- SI / GLS / IMTL-L / RLW


def test_si(x64):
    losses = np.array([0.5, 2.0, 4.0])
    (w,), _ = _weights("si", [losses])
    np.testing.assert_allclose(w, 1.0 / losses, rtol=1e-6)


def test_gls(x64):
    losses = np.array([0.5, 2.0, 4.0])
    (w,), _ = _weights("gls", [losses])
    geo = (0.5 * 2.0 * 4.0) ** (1 / 3)
    np.testing.assert_allclose(w, geo / (3 * losses), rtol=1e-6)
    # The chain rule of the geometric mean, by autodiff.
    np.testing.assert_allclose(w, jax.grad(lambda l: jnp.prod(l) ** (1 / 3))(jnp.asarray(losses)), rtol=1e-6)


def test_imtl_l(x64):
    t = W.get("imtl_l")
    assert t.init_params(3)["s"].shape == (3,)
    losses = jnp.array([0.5, 2.0, 4.0])
    s = jnp.array([0.1, -0.3, 0.7])
    out, _ = t.apply(losses, t.init(3), params={"s": s})
    np.testing.assert_allclose(out.weights, np.exp(s), rtol=1e-12)
    np.testing.assert_allclose(out.extra_loss, -np.sum(s), rtol=1e-12)

    def objective(p):  # what the train step differentiates
        o, _ = t.apply(losses, t.init(3), params=p)
        return jnp.vdot(o.weights, losses) + o.extra_loss

    np.testing.assert_allclose(jax.grad(objective)({"s": s})["s"], np.exp(s) * losses - 1.0, rtol=1e-12)


def test_rlw_distribution():
    t = W.get("rlw")
    losses = jnp.ones((4,))
    draw = jax.jit(lambda k: t.apply(losses, t.init(4), key=k)[0].weights)
    w1, w2 = draw(jax.random.key(1)), draw(jax.random.key(1))
    np.testing.assert_array_equal(w1, w2)  # reproducible by key
    assert not np.allclose(w1, draw(jax.random.key(2)))
    ws = jax.vmap(draw)(jax.random.split(jax.random.key(0), 4000))
    assert bool(jnp.all(ws > 0))
    np.testing.assert_allclose(ws.sum(axis=1), 4.0, rtol=1e-5)
    np.testing.assert_allclose(ws.mean(axis=0), 1.0, atol=0.06)  # exchangeable: E[w_k] = 1
    # softmax of standard normals: log-ratios of the weights are N(0, 2)
    logr = np.log(ws[:, 0] / ws[:, 1])
    assert abs(np.std(logr) - math.sqrt(2.0)) < 0.08


# ----------------------------------------------------------------------------- DWA


def test_dwa_epoch_averages(x64):
    spe, temp = 2, 2.0
    seq = [
        [1.0, 2.0, 3.0],
        [1.2, 1.8, 2.6],  # epoch 0
        [0.9, 1.9, 2.0],
        [0.7, 1.5, 2.2],  # epoch 1
        [0.6, 1.0, 1.9],
        [0.5, 1.1, 1.7],  # epoch 2
        [0.4, 0.9, 1.5],
        [0.3, 0.8, 1.5],  # epoch 3
    ]
    ws, _ = _weights("dwa", seq, temperature=temp, steps_per_epoch=spe)
    avg = np.array(seq).reshape(4, spe, 3).mean(axis=1)
    for step in range(4):  # first two epochs: equal weights
        np.testing.assert_allclose(ws[step], np.ones(3))
    for epoch in (2, 3):
        r = avg[epoch - 1] / avg[epoch - 2]
        expected = 3 * np.exp(r / temp) / np.exp(r / temp).sum()
        for step in range(epoch * spe, (epoch + 1) * spe):
            np.testing.assert_allclose(ws[step], expected, rtol=1e-10)


# ----------------------------------------------------------------------------- FAMO


def test_famo_steps_by_hand(x64):
    lr, gamma, b1, b2, eps = 0.025, 1e-3, 0.9, 0.999, 1e-8
    l1 = np.array([1.0, 2.0, 0.5])
    l2 = np.array([0.8, 1.9, 0.25])
    l3 = np.array([0.7, 1.5, 0.2])
    (w1, w2, w3), state = _weights("famo", [l1, l2, l3], w_lr=lr, gamma=gamma)
    d1, d2, d3 = l1 + 1e-8, l2 + 1e-8, l3 + 1e-8

    def weights(z, d):  # gradient of sum z log L / c, c = sum z / L
        return (z / d) / np.sum(z / d)

    def softmax(x):
        return np.exp(x) / np.exp(x).sum()

    # Step 1: no previous losses, xi = 0.
    np.testing.assert_allclose(w1, weights(np.full(3, 1 / 3), d1), rtol=1e-10)
    # Step 2: delta = log L(1) - log L(2); grad = J_softmax(0)^T delta + gamma * 0 = (delta - mean delta) / K;
    # the first Adam step is -lr * g / (|g| + eps).
    delta = np.log(d1) - np.log(d2)
    g1 = (delta - delta.mean()) / 3
    xi1 = -lr * g1 / (np.abs(g1) + eps)
    assert xi1[2] < 0 < xi1[1]  # task 2's log-loss fell most: it loses weight; task 1 gains
    np.testing.assert_allclose(w2, weights(softmax(xi1), d2), rtol=1e-8)
    # Step 3: the second Adam step (torch-style coupled weight decay: grad + gamma * xi).
    delta = np.log(d2) - np.log(d3)
    z1 = softmax(xi1)
    g2 = z1 * (delta - z1 @ delta) + gamma * xi1
    m = b1 * (1 - b1) * g1 + (1 - b1) * g2
    v = b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2
    xi2 = xi1 - lr * (m / (1 - b1**2)) / (np.sqrt(v / (1 - b2**2)) + eps)
    np.testing.assert_allclose(state.logits, xi2, rtol=1e-8)
    np.testing.assert_allclose(w3, weights(softmax(xi2), d3), rtol=1e-8)
    np.testing.assert_allclose(state.prev_losses, l3)


# ----------------------------------------------------------------------------- STCH


def test_stch_warmup_nadir_and_weights(x64):
    mu, spe = 0.5, 2
    seq = [
        [1.0, 2.0, 3.0],
        [0.9, 1.8, 2.5],  # warm-up epoch 0: sum of logs
        [0.8, 1.6, 2.0],
        [0.6, 1.4, 2.2],  # epoch 1: sum of logs, nadir = mean of these
        [0.5, 1.5, 1.0],
        [0.4, 0.7, 1.9],  # STCH
    ]
    ws, _ = _weights("stch", seq, mu=mu, warmup_epochs=1, steps_per_epoch=spe)
    for i in range(4):
        np.testing.assert_allclose(ws[i], 1.0 / (np.array(seq[i]) + 1e-8), rtol=1e-10)
    nadir = (np.array(seq[2]) + np.array(seq[3])) / 2
    for i in (4, 5):
        l = np.array(seq[i])
        p = np.exp(np.log(l / nadir) / mu)
        p /= p.sum()
        np.testing.assert_allclose(ws[i], 3 * p / l, rtol=1e-6)

        # Autodiff of the paper code's objective K mu log sum exp(log(L/n)/mu) w.r.t. the losses.
        def stch_obj(x, n=jnp.asarray(nadir)):
            return 3 * mu * jax.scipy.special.logsumexp(jnp.log(x / n) / mu)

        np.testing.assert_allclose(ws[i], jax.grad(stch_obj)(jnp.asarray(l)), rtol=1e-6)


def test_stch_default_warmup_is_four_epochs():
    ws, state = _weights("stch", [[1.0, 2.0]] * 6, steps_per_epoch=1)
    assert int(state.count) == 5  # saturates after the nadir epoch
    np.testing.assert_allclose(ws[4], [1.0, 0.5], rtol=1e-6)  # nadir epoch (4) still uses log-losses
    np.testing.assert_allclose(ws[5], 2 * np.array([0.5, 0.5]) / np.array([1.0, 2.0]), rtol=1e-6)


# ----------------------------------------------------------------------------- DB-MTL


def test_db_mtl_two_steps_by_hand(x64):
    beta = 0.9
    rng = np.random.default_rng(0)
    j1, j2 = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    j1[2] *= 10.0
    l1, l2 = np.array([0.5, 2.0, 1.0]), np.array([0.4, 1.5, 1.1])
    t = W.get("db_mtl")
    state = t.init(3, layout=(("w", (7,)),))
    out1, state = t.apply(jnp.asarray(l1), state, jacobian=jnp.asarray(j1))
    out2, state = t.apply(jnp.asarray(l2), state, jacobian=jnp.asarray(j2))
    h1 = (1 - beta) * j1 / (l1 + 1e-8)[:, None]
    h2 = beta * h1 + (1 - beta) * j2 / (l2 + 1e-8)[:, None]
    for h, out in ((h1, out1), (h2, out2)):
        norms = np.linalg.norm(h, axis=1)
        scaled = (norms.max() / (norms + 1e-8))[:, None] * h
        np.testing.assert_allclose(np.linalg.norm(scaled, axis=1), norms.max(), rtol=1e-6)  # all at the largest norm
        np.testing.assert_allclose(out.direction, scaled.sum(axis=0), rtol=1e-8)
    np.testing.assert_allclose(state.buffer, h2, rtol=1e-10)


def test_db_mtl_beta_sigma_and_lazy_state(x64):
    t = W.get("db_mtl", beta=0.5, beta_sigma=1.0)
    j = jnp.ones((2, 3))
    state = t.init(2)  # no layout: [K, 0] until the first call
    assert state.buffer.shape == (2, 0)
    _, state = t.apply(jnp.ones(2), state, jacobian=j)
    _, state = t.apply(jnp.ones(2), state, jacobian=2 * j)
    # beta_1 = 0.5 / 1, beta_2 = 0.5 / 2: h1 = 0.5 * 1, h2 = 0.25 h1 + 0.75 * 2
    np.testing.assert_allclose(state.buffer, np.full((2, 3), 0.25 * 0.5 + 0.75 * 2.0), rtol=1e-6)
    with pytest.raises(ValueError):
        t.apply(jnp.ones(2), state, jacobian=jnp.ones((2, 4)))


# ----------------------------------------------------------------------------- GradNorm


def test_gradnorm_weight_updates_by_hand(x64):
    alpha, lr, b1, b2, eps = 1.5, 0.025, 0.9, 0.999, 1e-8
    rng = np.random.default_rng(1)
    jac = rng.normal(size=(3, 6)) * np.array([[1.0], [3.0], [0.5]])
    gram = jac @ jac.T
    n = np.sqrt(np.diag(gram))
    l0 = np.array([1.0, 2.0, 3.0])
    l1 = np.array([1.0, 2.0, 0.3])  # chosen so that r^alpha (not r) decides task 1's sign below
    t = W.get("gradnorm", alpha=alpha, lr=lr)
    state = t.init(3)
    out0, state = t.apply(jnp.asarray(l0), state, gramian=jnp.asarray(gram))
    np.testing.assert_allclose(out0.weights, np.ones(3))  # w(0) = 1
    np.testing.assert_allclose(state.initial_losses, l0)

    # Update 1: r = 1, target = mean(w |g|), dL_grad/dw = |g| sign(w|g| - target); Adam step 1 = -lr sign.
    g1 = n * np.sign(n - n.mean())
    w = 1.0 - lr * g1 / (np.abs(g1) + eps)
    w1 = 3 * w / w.sum()
    np.testing.assert_allclose(state.weights, w1, rtol=1e-10)

    out1, state = t.apply(jnp.asarray(l1), state, gramian=jnp.asarray(gram))
    np.testing.assert_allclose(out1.weights, w1, rtol=1e-10)
    # Update 2 by hand: inverse training rates and the second Adam step.
    ratio = l1 / l0
    r = ratio / ratio.mean()
    gw = w1 * n
    g2 = n * np.sign(gw - gw.mean() * r**alpha)
    assert not np.array_equal(g2, n * np.sign(gw - gw.mean() * r))  # the asymmetry alpha matters here
    m = b1 * (1 - b1) * g1 + (1 - b1) * g2
    v = b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2
    w = w1 - lr * (m / (1 - b1**2)) / (np.sqrt(v / (1 - b2**2)) + eps)
    np.testing.assert_allclose(state.weights, 3 * w / w.sum(), rtol=1e-8)
    np.testing.assert_allclose(np.sum(state.weights), 3.0, rtol=1e-12)
