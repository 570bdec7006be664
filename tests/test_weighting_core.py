"""The weighting protocol, registry, and the foundation's schemes (equal, static, uncertainty, MGDA)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmtl import weighting
from jmtl.weighting import solvers


def test_registry_lists_and_rejects_unknown():
    names = weighting.names()
    for n in ("equal", "static", "uncertainty", "mgda"):
        assert n in names
    with pytest.raises(ValueError, match="unknown weighting scheme 'nope'.*valid schemes:.*mgda"):
        weighting.get("nope")
    with pytest.raises(ValueError, match="unknown hyperparameter.*bogus.*valid: normalization"):
        weighting.get("mgda", bogus=1)
    with pytest.raises(ValueError, match="unknown MGDA normalization"):
        weighting.get("mgda", normalization="l3")


def test_equal_and_static():
    jac = jnp.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    np.testing.assert_allclose(weighting.aggregate("equal", jac), jac.sum(0), rtol=1e-6)
    np.testing.assert_allclose(
        weighting.aggregate("static", jac, weights=[1.0, 0.5, 2.0]), jac[0] + 0.5 * jac[1] + 2.0 * jac[2], rtol=1e-6
    )
    with pytest.raises(ValueError, match="2 weights for 3 tasks"):
        weighting.aggregate("static", jac, weights=[1.0, 1.0])


def test_uncertainty_objective_and_gradient():
    """Kendall et al.: L = sum exp(-s) L_k + s_k; dL/ds_k = 1 - exp(-s_k) L_k (zero at s_k = log L_k)."""
    t = weighting.get("uncertainty")
    params = t.init_params(2)
    np.testing.assert_allclose(params["log_var"], [-0.5, -0.5])
    losses = jnp.array([2.0, 0.25])

    def objective(p):
        out, _ = t.apply(losses, t.init(2), params=p)
        return jnp.vdot(out.weights, losses) + out.extra_loss

    g = jax.grad(objective)(params)["log_var"]
    np.testing.assert_allclose(g, 1.0 - np.exp(0.5) * np.array([2.0, 0.25]), rtol=1e-6)
    g_opt = jax.grad(objective)({"log_var": jnp.log(losses)})["log_var"]
    np.testing.assert_allclose(g_opt, 0.0, atol=1e-6)


def _brute_force_min_norm(jac: np.ndarray, grid: int = 400) -> float:
    """Min |alpha @ J|^2 over the simplex by dense sampling + local refinement (K <= 3), float64."""
    k = jac.shape[0]
    g = jac @ jac.T
    best = np.inf
    if k == 2:
        a = np.linspace(0, 1, 20001)
        w = np.stack([a, 1 - a], 1)
        return float(np.min(np.einsum("ni,ij,nj->n", w, g, w)))
    for i, j in itertools.product(range(grid + 1), repeat=2):
        if i + j > grid:
            continue
        w = np.array([i, j, grid - i - j], float) / grid
        best = min(best, w @ g @ w)
    return float(best)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [2, 3])
def test_mgda_is_min_norm_point(seed, k):
    rng = np.random.default_rng(seed)
    jac = rng.normal(size=(k, 5))
    jac[1] = -0.7 * jac[0] + 0.3 * rng.normal(size=5)  # conflicting pair
    alpha = np.asarray(solvers.min_norm_weights(jnp.asarray(jac @ jac.T, jnp.float32)), np.float64)
    assert np.all(alpha >= -1e-6) and abs(alpha.sum() - 1) < 1e-5
    found = alpha @ (jac @ jac.T) @ alpha
    assert found <= _brute_force_min_norm(jac) + 1e-3
    d = np.asarray(weighting.aggregate("mgda", jnp.asarray(jac, jnp.float32)))
    np.testing.assert_allclose(d, alpha @ jac, rtol=1e-4, atol=1e-5)


def test_mgda_two_task_closed_form_and_descent():
    g1, g2 = np.array([1.0, 0.0]), np.array([-0.5, 1.0])
    gamma = np.clip(np.dot(g2 - g1, g2) / np.dot(g1 - g2, g1 - g2), 0, 1)
    d = np.asarray(weighting.aggregate("mgda", jnp.array([g1, g2])))
    np.testing.assert_allclose(d, gamma * g1 + (1 - gamma) * g2, rtol=1e-6)
    # The min-norm point is a descent direction for both tasks (equal inner products when interior).
    np.testing.assert_allclose(d @ g1, d @ g2, rtol=1e-5)
    assert d @ g1 > 0


def test_mgda_frank_wolfe_orthogonal_closed_form():
    """Orthogonal gradients: alpha_k is proportional to 1/|g_k|^2."""
    norms = np.array([1.0, 2.0, 3.0, 0.5])
    jac = np.diag(norms)
    d = np.asarray(weighting.aggregate("mgda", jnp.asarray(jac, jnp.float32)))
    alpha = (1 / norms**2) / np.sum(1 / norms**2)
    np.testing.assert_allclose(d, alpha * norms, rtol=1e-3)


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_mgda_normalizations_finite_and_jittable(normalization):
    rng = np.random.default_rng(0)
    jac = jnp.asarray(rng.normal(size=(4, 7)), jnp.float32)
    losses = jnp.array([0.5, 1.0, 2.0, 3.0])
    t = weighting.get("mgda", normalization=normalization)
    f = lambda j, l: weighting.update_from(t, l, t.init(4), jacobian=j, gramian=j @ j.T)[0].weights
    w_jit, w = jax.jit(f)(jac, losses), f(jac, losses)
    np.testing.assert_allclose(w_jit, w, rtol=1e-5)
    assert np.all(np.isfinite(w))
    # Zero and duplicated gradients do not produce NaN.
    jac2 = jac.at[1].set(0.0).at[3].set(jac[2])
    assert np.all(np.isfinite(f(jac2, losses)))


def _exact_min_norm(gram: np.ndarray) -> np.ndarray:
    """Min-norm convex weights by enumerating supports (on support S: alpha_S ∝ G_SS^-1 1), float64."""
    k = gram.shape[0]
    best, best_val = None, np.inf
    for r in range(1, k + 1):
        for s in itertools.combinations(range(k), r):
            s = list(s)
            sol = np.linalg.solve(gram[np.ix_(s, s)], np.ones(r))
            if sol.sum() <= 0 or np.any(sol < 0):
                continue
            alpha = np.zeros(k)
            alpha[s] = sol / sol.sum()
            if alpha @ gram @ alpha < best_val:
                best, best_val = alpha, alpha @ gram @ alpha
    return best


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
@pytest.mark.parametrize("k", [2, 4])
def test_mgda_normalizations_match_their_definition(normalization, k):
    """Sener & Koltun's code: g_k / n_k with n = 1, |g_k|, L_k or L_k |g_k| (+1e-8); alpha = the min-norm
    weights of the normalised rows (exact, numpy); the returned weights are alpha / n."""
    rng = np.random.default_rng(3)
    jac = rng.normal(size=(k, 6)) * np.array([0.1, 3.0, 1.0, 10.0])[:k, None]
    losses = np.array([0.5, 2.0, 1.0, 4.0])[:k]
    norms = np.linalg.norm(jac, axis=1)
    n = {"none": np.ones(k), "l2": norms + 1e-8, "loss": losses + 1e-8, "loss+": losses * norms + 1e-8}[normalization]
    scaled = jac / n[:, None]
    expected = _exact_min_norm(scaled @ scaled.T) / n
    t = weighting.get("mgda", normalization=normalization)
    j32 = jnp.asarray(jac, jnp.float32)
    w = weighting.update_from(t, jnp.asarray(losses, jnp.float32), t.init(k), jacobian=j32, gramian=j32 @ j32.T)[
        0
    ].weights
    np.testing.assert_allclose(np.asarray(w), expected, rtol=2e-3, atol=1e-6 * np.abs(expected).max())
    # The normalisations are different maps: each is checked against its own n, and they disagree.
    if normalization != "none":
        plain = _exact_min_norm(jac @ jac.T)
        assert not np.allclose(expected * n / np.sum(expected * n), plain, atol=1e-3)


def test_one_registry_uniform_init_and_modules_by_requirement():
    """Every scheme is registered once, takes init(num_tasks, *, layout=None), and lives in the
    module named after what the step must compute for it (its ``requires``)."""
    import inspect

    for name in weighting.names():
        t = weighting.get(name)
        params = inspect.signature(t.init).parameters
        assert list(params) == ["num_tasks", "layout"], (name, list(params))
        assert params["layout"].kind is inspect.Parameter.KEYWORD_ONLY and params["layout"].default is None, name
        assert weighting.factory(name).__module__ == weighting.MODULE_OF_REQUIREMENT[t.requires].__name__, name
        assert weighting.base.init_state(t, 3, None) is not None
    assert not hasattr(weighting, "_factory")  # the former private alias is gone (issue 22 §4)
    with pytest.raises(ValueError, match="already registered"):
        weighting.register("equal", lambda: None)


def test_renamed_scheme_says_where_it_went():
    with pytest.raises(ValueError, match="'config' was renamed to 'con_fig'"):
        weighting.get("config")
    assert "con_fig" in weighting.names() and "config" not in weighting.names()


def test_every_factory_documents_its_hyperparameters():
    """``Args:`` lists every hyperparameter with its default."""
    for name in weighting.names():
        hp = weighting.hyperparameters(name)
        if not hp:
            continue
        doc = weighting.factory(name).__doc__ or ""
        assert "Args:" in doc, name
        args = doc.split("Args:")[1]
        for p in hp:
            assert f"{p}:" in args, (name, p)


def test_aggregate_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"jacobian must be \[K, d\]"):
        weighting.aggregate("mean" if "mean" in weighting.names() else "equal", jnp.ones((3,)))
