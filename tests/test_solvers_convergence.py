"""The in-graph solvers meet their optimality conditions on badly scaled gradients (float64).

Jacobians with row norms spanning 1e-2..1e2: every solver's condition is checked in numpy
(experiments/solver_convergence.py holds the checks; MGDA also against the exact min-norm point from
enumerated active sets). ``python -m experiments.solver_convergence`` writes the full K = 2..10 table.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import solver_convergence as sc
from jmtl import weighting
from jmtl.weighting import solvers

# Values, not speed: the programs compile without XLA's optimisation passes (conftest's
# xla_optimizations_off; this file's compile-bound tests took ~0.6x the time in one measured run).
pytestmark = pytest.mark.usefixtures("xla_optimizations_off")


TOL = 1e-4


@pytest.fixture
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.mark.parametrize("k", [2, 3, 5, 10])
@pytest.mark.parametrize(
    "method", ["mgda", "nash_mtl", "fairgrad=0.5", "fairgrad=1.0", "fairgrad=2.0", "cagrad", "upgrad", "dualproj"]
)
def test_solver_meets_its_optimality_condition(x64, method, k, record_property):
    grams = np.stack([(lambda j: j @ j.T)(sc.random_jacobian(k, s)) for s in range(3)])
    xs, iterations = sc.solve(method, grams)
    worst = max(sc.residual(method, g, x) for g, x in zip(grams, xs))
    record_property("iterations", int(iterations.max()))
    record_property("residual", worst)
    print(f"{method} K={k}: worst residual {worst:.1e}, iterations {iterations.tolist()}")
    assert worst <= TOL, (method, k, worst)


def test_exact_min_norm_reference_is_right():
    """The enumeration used as MGDA's truth: orthogonal rows give alpha ∝ 1/|g_k|^2."""
    norms = np.array([0.01, 1.0, 3.0, 100.0])
    alpha = sc.exact_min_norm(np.diag(norms**2))
    np.testing.assert_allclose(alpha, (1 / norms**2) / np.sum(1 / norms**2), rtol=1e-12)


def test_mgda_beats_the_old_frank_wolfe_gap(x64):
    """At K = 5 the fixed Frank-Wolfe of the past stopped 15% above the min norm; the active set is exact."""
    for seed in range(5):
        jac = sc.random_jacobian(5, seed)
        gram = jac @ jac.T
        d = np.asarray(weighting.aggregate("mgda", jnp.asarray(jac)))
        exact = sc.exact_min_norm(gram) @ jac
        np.testing.assert_allclose(d @ d, exact @ exact, rtol=TOL)


def test_mgda_float32_close_to_exact():
    """In float32 (the train step's dtype) the rescaled active set still lands within 1e-3."""
    for seed in range(3):
        jac = sc.random_jacobian(6, seed)
        res = solvers.min_norm_solve(jnp.asarray(jac @ jac.T, jnp.float32))
        alpha = np.asarray(res.x, np.float64)
        exact = sc.exact_min_norm(jac @ jac.T)
        t, t_exact = alpha @ jac @ jac.T @ alpha, exact @ jac @ jac.T @ exact
        assert bool(res.converged)
        assert abs(alpha.sum() - 1) < 1e-5 and alpha.min() >= 0
        assert abs(t - t_exact) <= 1e-3 * t_exact


@pytest.mark.parametrize("k", [3, 6])
def test_solvers_handle_zero_and_duplicated_rows(x64, k):
    """Degenerate inputs stay finite: MGDA picks the zero gradient (min norm 0), Nash gives it no weight."""
    jac = sc.random_jacobian(k, 0)
    jac[1] = 0.0
    jac[2] = jac[0]
    gram = jnp.asarray(jac @ jac.T)
    alpha = np.asarray(solvers.min_norm_solve(gram).x)
    np.testing.assert_allclose(alpha, np.eye(k)[1])
    nash = solvers.nash_solve(gram)
    assert np.all(np.isfinite(np.asarray(nash.x))) and float(nash.x[0, 1]) == 0.0
    for a in (0.5, 1.0, 2.0):
        assert np.all(np.isfinite(np.asarray(solvers.alpha_fair_solve(gram, a).x)))
    assert np.all(np.isfinite(np.asarray(solvers.cagrad_solve(gram, 0.5).x)))


def test_nash_state_reports_iterations(x64):
    t = weighting.get("nash_mtl")
    jac = jnp.asarray(sc.random_jacobian(4, 1))
    out, state = weighting.update_from(t, jnp.ones(4), t.init(4), jacobian=jac, gramian=jac @ jac.T)
    assert 0 < int(state.iterations) < 100
    # Warm-started from the solution, the next solve needs (almost) no iterations.
    _, state2 = weighting.update_from(t, jnp.ones(4), state, jacobian=jac, gramian=jac @ jac.T)
    assert int(state2.iterations) <= 1
