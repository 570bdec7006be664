"""BayesAgg-MTL (``bayesagg_mtl``, regression) and its last-layer path.

Truth: a float64 numpy Bayesian linear regression (the posterior), Monte-Carlo draws of the
posterior weights (the gradient moments), a K = 2 example worked by hand from the aggregation rule,
and a float64 numpy composition of the whole step for a linear encoder (the shared gradient is
``x^T dL/dh``, the heads' the gradient of the plain sum of the task losses).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_school_tasks import raw_dir  # noqa: F401 (the synthetic School files fixture)

import jmtl
from jmtl import weighting
from jmtl.models import mtl
from jmtl.tasks import Task
from jmtl.training import step as step_lib
from jmtl.weighting import last_layer as ll

GAMMA, NOISE = 0.5, 0.7


def _np_posterior(h, y, mask, gamma, noise):
    """Per task: prior N(0, gamma I) on [w, b], y_i = [h_i, 1] . [w, b] + N(0, noise), labelled rows only."""
    h1 = np.concatenate([h, np.ones((h.shape[0], 1))], 1)
    means, covs = [], []
    for k in range(y.shape[1]):
        rows = mask[:, k] > 0
        hk, yk = h1[rows], y[rows, k]
        cov = np.linalg.inv(np.eye(h1.shape[1]) / gamma + hk.T @ hk / noise)
        means.append(cov @ hk.T @ yk / noise)
        covs.append(cov)
    return np.stack(means), np.stack(covs)


def _problem(seed=0, b=12, d=3, k=2):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(b, d))
    y = rng.normal(size=(b, k)) + h @ rng.normal(size=(d, k))
    mask = (rng.uniform(size=(b, k)) < 0.7).astype(np.float64)
    mask[0] = 1.0
    return h, y, mask


def test_posterior_matches_numpy_bayesian_linear_regression():
    h, y, mask = _problem()
    h1 = np.concatenate([h, np.ones((len(h), 1))], 1)
    gram = np.einsum("bk,bd,be->kde", mask, h1, h1)
    moment = np.einsum("bk,bd->kd", mask * y, h1)
    mean, cov = jax.jit(lambda g, r: ll.posterior(g, r, gamma=GAMMA, obs_noise=NOISE))(
        jnp.asarray(gram, jnp.float32), jnp.asarray(moment, jnp.float32)
    )
    want_mean, want_cov = _np_posterior(h, y, mask, GAMMA, NOISE)
    np.testing.assert_allclose(np.asarray(mean), want_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(cov), want_cov, rtol=1e-4, atol=1e-6)


def test_state_accumulates_the_batches_with_decay():
    """After two updates the posterior is that of (decay * batch 1 + batch 2) plus the third batch."""
    k, d, decay = 2, 3, 0.5
    t = weighting.get("bayesagg_mtl", gamma=GAMMA, obs_noise=NOISE, decay=decay)
    state = t.init(k, layout=(("representation", (5, d)),))
    update = jax.jit(t.apply)
    batches = [_problem(seed) for seed in range(3)]
    for h, y, mask in batches[:2]:
        _, state = update(
            jnp.ones(k),
            state,
            representation=jnp.asarray(h, jnp.float32),
            targets=jnp.asarray(y, jnp.float32),
            target_mask=jnp.asarray(mask, jnp.float32),
        )
    (h1_, y1, m1), (h2_, y2, m2), _ = batches

    def stats(h, y, m):
        hb = np.concatenate([h, np.ones((len(h), 1))], 1)
        return np.einsum("bk,bd,be->kde", m, hb, hb), np.einsum("bk,bd->kd", m * y, hb)

    g1, r1 = stats(h1_, y1, m1)
    g2, r2 = stats(h2_, y2, m2)
    np.testing.assert_allclose(np.asarray(state.gram), decay * g1 + g2, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(state.moment), decay * r1 + r2, rtol=1e-5, atol=1e-4)


def test_gradient_moments_match_monte_carlo():
    """E[g] and Var[g] of g = 2 (w . h~ - y) w for w ~ N(mu, Sigma), against 400k float64 draws."""
    rng = np.random.default_rng(1)
    dp = 3
    a = rng.normal(size=(dp, dp))
    cov = 0.3 * a @ a.T + 0.1 * np.eye(dp)
    mean = rng.normal(size=dp)
    h1 = np.array([0.7, -1.2, 1.0])
    y = 0.4
    w = rng.multivariate_normal(mean, cov, size=400_000)
    g = 2.0 * (w @ h1 - y)[:, None] * w
    e, v = jax.jit(ll.gradient_moments)(
        jnp.asarray(h1[None], jnp.float32),
        jnp.asarray([[y]], jnp.float32),
        jnp.asarray(mean[None], jnp.float32),
        jnp.asarray(cov[None], jnp.float32),
    )
    np.testing.assert_allclose(np.asarray(e)[0, 0], g.mean(0), rtol=0.02, atol=0.02)
    np.testing.assert_allclose(np.asarray(v)[0, 0], g.var(0), rtol=0.03)


def test_aggregation_of_a_hand_worked_k2_example():
    """One example, h = 1 (h~ = [1, 1]).

    Task 1: mu = [1, 0], Sigma = diag(0.5, 0), y = 0: m = 1, s = [0.5, 0], v = 0.5,
      E[g_0] = 2 (1 * 1 + 0.5) = 3, Var[g_0] = 4 (0.5 + 0.5 + 2 * 0.5 ... ) = 4 * 2.5 = 10
      (as 2 w_0^2 with w_0 ~ N(1, 0.5): E = 2 * 1.5, Var = 4 (4 * 0.5 + 2 * 0.25)).
    Task 2: mu = [-1, 0], Sigma = diag(2, 0), y = 1: m = -2, s = [2, 0], v = 2,
      E[g_0] = 2 (2 + 2) = 8, Var[g_0] = 4 (4 * 2 + 1 * 2 + 2 * (-2) * (-1) * 2 + 2 * 2 + 4) = 104.
    Inverse-variance (sqrt_power 1): (3 / 10 + 8 / 104) / (1 / 10 + 1 / 104) = 392 / 114;
    sqrt_power 0: the plain mean 5.5; only task 2 labelled: 8.
    """
    mean = jnp.asarray([[1.0, 0.0], [-1.0, 0.0]])
    cov = jnp.asarray([[[0.5, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]]])
    e, v = jax.jit(ll.gradient_moments)(jnp.asarray([[1.0, 1.0]]), jnp.asarray([[0.0, 1.0]]), mean, cov)
    np.testing.assert_allclose(np.asarray(e)[0, :, 0], [3.0, 8.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(v)[0, :, 0], [10.0, 104.0], rtol=1e-6)
    both = jnp.ones((1, 2))
    agg = jax.jit(ll.aggregate_gradients, static_argnames="sqrt_power")
    e0, v0 = e[..., :1], v[..., :1]
    assert float(agg(e0, v0, both, sqrt_power=1.0)[0, 0]) == pytest.approx(392 / 114, rel=1e-6)
    assert float(agg(e0, v0, both, sqrt_power=0.0)[0, 0]) == pytest.approx(5.5, rel=1e-6)
    only2 = jnp.asarray([[0.0, 1.0]])
    assert float(agg(e0, v0, only2, sqrt_power=1.0)[0, 0]) == pytest.approx(8.0, rel=1e-6)
    # With two examples and no mask the official sum / B halves it (n_k = B = 2).
    e2, v2 = jnp.concatenate([e0, e0]), jnp.concatenate([v0, v0])
    got = agg(e2, v2, jnp.ones((2, 2)), sqrt_power=1.0)
    np.testing.assert_allclose(np.asarray(got)[:, 0], [392 / 228] * 2, rtol=1e-6)


def test_update_is_equivariant_to_the_task_order():
    h, y, mask = _problem(2, k=3)
    t = weighting.get("bayesagg_mtl")
    update = jax.jit(t.apply)
    perm = np.array([2, 0, 1])
    outs = []
    for p in (np.arange(3), perm):
        state = t.init(3, layout=(("representation", h.shape),))
        out, _ = update(
            jnp.ones(3),
            state,
            representation=jnp.asarray(h, jnp.float32),
            targets=jnp.asarray(y[:, p], jnp.float32),
            target_mask=jnp.asarray(mask[:, p], jnp.float32),
        )
        outs.append(np.asarray(out.direction))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-7)


def _np_step(x, y, mask, a, w, c, gamma, noise, power):
    """float64: posterior (fresh state) -> moments -> aggregation -> dL/dA = x^T dL/dh; heads: grad of sum_k L_k."""
    h = x @ a
    mean, cov = _np_posterior(h, y, mask, gamma, noise)
    h1 = np.concatenate([h, np.ones((len(h), 1))], 1)
    b, k, d = len(h), y.shape[1], h.shape[1]
    n = np.maximum(mask.sum(0), 1)
    dh = np.zeros_like(h)
    for i in range(b):
        num, den = np.zeros(d), np.zeros(d)
        for j in range(k):
            if not mask[i, j]:
                continue
            m = mean[j] @ h1[i] - y[i, j]
            s = cov[j] @ h1[i]
            v = h1[i] @ s
            e = 2 * (m * mean[j] + s)
            var = 4 * (m**2 * np.diag(cov[j]) + mean[j] ** 2 * v + 2 * m * mean[j] * s + v * np.diag(cov[j]) + s**2)
            lam = 1 / (np.maximum(var, 1e-8) / n[j] ** 2) ** power
            num += (lam * e / n[j])[:d]
            den += lam[:d]
        dh[i] = np.where(den > 0, num / np.where(den > 0, den, 1), 0)
    resid = (h @ w + c - y) * mask / n  # d(sum_k L_k)/d output
    return x.T @ dh, h.T @ (2 * resid), (2 * resid).sum(0)


def test_value_and_grad_matches_the_numpy_composition():
    rng = np.random.default_rng(5)
    b, f, d, k = 10, 4, 3, 2
    x = rng.normal(size=(b, f))
    y = rng.normal(size=(b, k))
    mask = (rng.uniform(size=(b, k)) < 0.7).astype(np.float64)
    a, w, c = rng.normal(size=(f, d)), rng.normal(size=(d, k)), rng.normal(size=k)
    params = {
        "shared": {"A": jnp.asarray(a, jnp.float32)},
        "heads": {"W": jnp.asarray(w, jnp.float32), "c": jnp.asarray(c, jnp.float32)},
    }

    def encode(p, x, y, m):
        return x @ p["shared"]["A"]

    def heads(p, h, x, y, m):
        sq = (h @ p["heads"]["W"] + p["heads"]["c"] - y) ** 2 * m
        return jnp.sum(sq, 0) / jnp.maximum(jnp.sum(m, 0), 1.0)

    vg = jmtl.mtl_value_and_grad(
        None,
        weighting.get("bayesagg_mtl", gamma=GAMMA, obs_noise=NOISE),
        encode=encode,
        heads=heads,
        targets=lambda x, y, m: (y, m),
    )
    args = tuple(jnp.asarray(v, jnp.float32) for v in (x, y, mask))
    state = vg.init(params, None, *args)
    res = jax.jit(vg)(params, state, *args)
    ga, gw, gc = _np_step(x, y, mask, a, w, c, GAMMA, NOISE, 0.3)
    np.testing.assert_allclose(np.asarray(res.grads["shared"]["A"]), ga, rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(np.asarray(res.grads["heads"]["W"]), gw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(res.grads["heads"]["c"]), gc, rtol=1e-4, atol=1e-5)
    assert res.weights is None
    # The state now holds this batch's statistics.
    assert float(jnp.abs(res.weighting_state.gram).sum()) > 0


def test_refusals_name_the_fix():
    t = weighting.get("bayesagg_mtl")
    with pytest.raises(ValueError, match="needs the shared representation and the task labels"):
        weighting.aggregate("bayesagg_mtl", jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="got int32 targets and no target_kinds.*pass target_kinds="):
        t.apply(
            jnp.ones(2),
            t.init(2, layout=(("representation", (4, 3)),)),
            representation=jnp.ones((4, 3)),
            targets=jnp.ones((4, 2), jnp.int32),
        )
    with pytest.raises(ValueError, match=r"sized for representation width -1 .*vg.init\(params, None"):
        t.apply(jnp.ones(2), t.init(2), representation=jnp.ones((4, 3)), targets=jnp.ones((4, 2)))
    params = {"shared": {"A": jnp.ones((3, 2))}, "heads": {"W": jnp.ones((2, 2))}}
    x, y = jnp.ones((4, 3)), jnp.ones((4, 2))

    def loss_fn(p, x, y):
        return jnp.mean((x @ p["shared"]["A"] @ p["heads"]["W"] - y) ** 2, 0)

    vg = jmtl.mtl_value_and_grad(loss_fn, t, targets=lambda x, y: y)
    with pytest.raises(ValueError, match="encode/decode methods .trainer., or encode= and heads="):
        vg(params, t.init(2, layout=(("representation", (4, 2)),)), x, y)
    vg = jmtl.mtl_value_and_grad(
        None,
        t,
        encode=lambda p, x, y: x @ p["shared"]["A"],
        heads=lambda p, h, x, y: jnp.mean((h @ p["heads"]["W"] - y) ** 2, 0),
    )
    with pytest.raises(ValueError, match=r"needs each task's labels: pass targets="):
        vg(params, vg.init(params, None, x, y), x, y)
    with pytest.raises(ValueError, match=r"sized by the representation: .*vg.init\(params, None, \*batch\)"):
        vg.init(params, 2)
    with pytest.raises(ValueError, match="per-task .not per-example. losses"):
        jmtl.mtl_value_and_grad(loss_fn, t, per_example=True)(params, t.init(2), x, y)


TASKS = tuple(Task(f"t{i}", "regression", 1) for i in range(3))


def _batch(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(32, 6)).astype(np.float32)
    out = {"x": x}
    for i in range(3):
        out[f"t{i}"] = np.tanh(x @ np.random.default_rng(10 + i).normal(size=6)).astype(np.float32) * (1 + i)
        out[f"t{i}_mask"] = (rng.uniform(size=32) < 0.8).astype(np.float32)
    return out


def test_trains_in_the_jitted_step_with_label_masks():
    model = mtl.build(TASKS, encoder="mlp", encoder_kwargs=dict(features=(8,)), head_kwargs=dict(hidden=None))
    t = weighting.get("bayesagg_mtl")
    opt = optax.adam(5e-2)
    state = step_lib.init_state(model, t, opt, jnp.zeros((1, 6)), 3, seed=0)
    assert state.weighting_state.gram.shape == (3, 9, 9)  # sized by the 8-wide representation (+ bias)
    step = step_lib.make_train_step(model, TASKS, t, opt, step_lib.StepConfig(input_key="x"))
    assert step.gradient_path == "last_layer"
    fn = jax.jit(step)
    first = None
    for i in range(30):
        state, m = fn(state, _batch(i % 4))
        assert bool(m["finite"])
        first = m["losses"] if first is None else first
    assert float(jnp.sum(m["losses"])) < 0.5 * float(jnp.sum(first))


def test_trainer_refuses_other_kinds_custom_losses_and_hidden_heads():
    with pytest.raises(ValueError, match="task 'c': jmtl.models.mtl.build has no head for kind 'multilabel'"):
        mtl.build((Task("c", "multilabel", 3),), encoder="mlp", encoder_kwargs=dict(features=(8,)))
    hinge = lambda logits, y: jnp.maximum(0.0, 1.0 - logits[:, 0] * (2.0 * y - 1.0))  # noqa: E731
    tasks = (Task("r", "regression", 1), Task("c", "binary", 1, loss_fn=hinge))
    model = mtl.build(tasks, encoder="mlp", encoder_kwargs=dict(features=(8,)), head_kwargs=dict(hidden=0))
    t = weighting.get("bayesagg_mtl")
    opt = optax.adam(1e-2)
    state = step_lib.init_state(model, t, opt, jnp.zeros((1, 6)), 2, seed=0)
    fn = jax.jit(step_lib.make_train_step(model, tasks, t, opt, step_lib.StepConfig(input_key="x")))
    batch = {"x": np.ones((4, 6), np.float32), "r": np.ones(4, np.float32), "c": np.zeros(4, np.int32)}
    with pytest.raises(
        ValueError,
        match=r"regression, classification and binary tasks with their built-in losses only; task\(s\) \['c \(binary\)'\]",
    ):
        fn(state, batch)
    model = mtl.build(TASKS, encoder="mlp", encoder_kwargs=dict(features=(8,)), head_kwargs=dict(hidden=4))
    state = step_lib.init_state(model, t, opt, jnp.zeros((1, 6)), 3, seed=0)
    fn = jax.jit(step_lib.make_train_step(model, TASKS, t, opt, step_lib.StepConfig(input_key="x")))
    with pytest.raises(
        ValueError, match=r"task\(s\) \['t0', 't1', 't2'\] have a hidden layer: set model.head_kwargs.hidden=None"
    ):
        fn(state, _batch(0))


def test_data_parallel_matches_one_device(script_runner):
    """Two forced CPU devices, the batch split between them: the scheme sees the gathered global batch,
    so the gradients and the posterior statistics equal the one-device step's (with and without masks,
    and with softmax and sigmoid tasks, whose draws come from the replicated key)."""
    out = script_runner("bayesagg_devices.py", devices=2, timeout=300)
    for case in ("no_mask", "mask", "classification"):
        assert out[case]["scale"] > 1e-3, out  # nothing vanished
        assert out[case]["diff"] < 1e-4, out


def test_school_tasks_config_trains_end_to_end(raw_dir, tmp_path):  # noqa: F811 (the imported fixture)
    """``experiments/configs/school_tasks.py:hps_linear,bayesagg_mtl`` (shared linear layer, affine
    heads, label masks) through ``jmtl.train`` on synthetic School files: a tiny budget, finite
    results, and the training loss goes down."""
    from experiments.configs import school_tasks

    config = school_tasks.get_config("hps_linear,bayesagg_mtl")
    config.dataset.data_dir = str(raw_dir)
    config.dataset.kwargs = dict(split_index=0, validation_percent=20, seed=0, standardize=True, verify_checksums=False)
    config.batch_size, config.num_steps, config.eval_every_steps, config.log_every_steps = 24, 24, 24, 1
    config.optimizer.learning_rate = 5e-2
    summary, state = jmtl.train(config, tmp_path / "wd")
    assert state.weighting_state.gram.shape == (4, 17, 17)  # 4 schools, 16-wide representation + bias
    assert int(state.step) == 24
    # Better than the untrained model (all heads 0 at init: each school's MSE is its mean squared score).
    test = school_tasks_test_labels(raw_dir)
    for name, y in test.items():
        mse = summary["final"]["test"][name]["mse"]
        assert np.isfinite(mse) and mse < 0.6 * float(np.mean(y**2)), (name, mse, float(np.mean(y**2)))


def school_tasks_test_labels(raw_dir) -> dict:  # noqa: F811
    from jmtl.data import school

    ds = school.load_school_tasks(data_dir=raw_dir, verify_checksums=False, validation_percent=20)
    test = ds.arrays("test")
    return {n: test[n][test[n + "_mask"] > 0] for n in ds.school_data.task_names}


# --- Classification tasks: Laplace posterior around the current last layer, Monte-Carlo moments ---


def _cls_problem(seed=0, b=9, d=3, c=3):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(b, d))
    theta = rng.normal(size=(c, d + 1)) * 0.7  # rows [w_c, b_c]
    labels = rng.integers(0, c, size=b) if c > 1 else (rng.uniform(size=b) < 0.5).astype(np.int64)
    mask = (rng.uniform(size=b) < 0.75).astype(np.float64)
    mask[0] = 1.0
    return h, theta, labels, mask


def _neg_log_joint(theta, h1, labels, mask, gamma, kind):
    """float64 sum_i m_i l(theta h~_i, y_i) + |theta|^2 / (2 gamma), written from the losses' definitions."""
    z = h1 @ theta.T
    if kind == "classification":
        nll = jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, labels[:, None], axis=-1)[:, 0]
    else:
        nll = jnp.logaddexp(0.0, z[:, 0]) - labels * z[:, 0]
    return jnp.sum(mask * nll) + jnp.sum(theta**2) / (2 * gamma)


def _np_mean_output_curvature(h1, theta, mask, kind):
    """float64 mean over labelled examples of d^2 loss / d logits^2."""
    z = h1 @ theta.T
    if kind == "classification":
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        per = np.stack([np.diag(q) - np.outer(q, q) for q in p])
    else:
        q = 1 / (1 + np.exp(-z[:, 0]))
        per = (q * (1 - q))[:, None, None]
    return np.einsum("b,bcx->cx", mask, per) / mask.sum()


@pytest.mark.parametrize("kind,c", [("classification", 3), ("binary", 1)])
@pytest.mark.parametrize("with_past", [False, True])
def test_laplace_posterior_is_a_newton_step_on_the_float64_hessian(kind, c, with_past):
    """For a linear last layer the Gauss-Newton curvature is the exact Hessian: the posterior
    precision equals jax.hessian of the float64 negative log joint (plus, with earlier batches'
    feature Gram A, the Kronecker term mean-curvature (x) A), and the mean is one Newton step."""
    h, theta, labels, mask = _cls_problem(c=c)
    h1 = np.concatenate([h, np.ones((len(h), 1))], 1)
    gamma = 0.5
    with jax.enable_x64(True):
        args = (jnp.asarray(h1), jnp.asarray(labels), jnp.asarray(mask), gamma, kind)
        flat = lambda v: _neg_log_joint(v.reshape(theta.shape), *args)  # noqa: E731
        hess = np.asarray(jax.hessian(flat)(jnp.asarray(theta.reshape(-1))))
        grad = np.asarray(jax.grad(flat)(jnp.asarray(theta.reshape(-1))))
    past = None
    if with_past:
        old = np.random.default_rng(8).normal(size=(20, h1.shape[1]))
        past = old.T @ old
        hess = hess + np.kron(_np_mean_output_curvature(h1, theta, mask, kind), past)
    want_mean = theta.reshape(-1) - np.linalg.solve(hess, grad)
    mean, chol = jax.jit(lambda *a: ll.laplace_posterior(*a[:4], kind=kind, gamma=gamma, past_gram=a[4]))(
        jnp.asarray(h1, jnp.float32),
        jnp.asarray(labels, jnp.int32 if kind == "classification" else jnp.float32),
        jnp.asarray(mask, jnp.float32),
        jnp.asarray(theta, jnp.float32),
        None if past is None else jnp.asarray(past, jnp.float32),
    )
    chol = np.asarray(chol, np.float64)
    np.testing.assert_allclose(chol @ chol.T, hess, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(mean).reshape(-1), want_mean, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("kind,c", [("classification", 3), ("binary", 1)])
def test_sampled_gradient_moments_match_float64_draws(kind, c):
    """E and Var over [W | b] ~ N(mean, Lambda^-1) of each example's d loss / d h: the scheme's 40k
    draws against 400k numpy float64 draws, whose per-draw gradient is jax.grad of the loss."""
    h, theta, labels, _ = _cls_problem(seed=3, b=4, c=c)
    h1 = np.concatenate([h, np.ones((len(h), 1))], 1)
    rng = np.random.default_rng(4)
    n = theta.size
    a = rng.normal(size=(n, n))
    precision = a @ a.T / n + np.eye(n) * 2.0
    draws = rng.multivariate_normal(theta.reshape(-1), np.linalg.inv(precision), size=400_000).reshape(-1, *theta.shape)

    def loss(x, t, y):  # one example's loss as a function of its representation x
        z = t[:, :-1] @ x + t[:, -1]
        if kind == "classification":
            return jax.nn.logsumexp(z) - z[y]
        return jnp.logaddexp(0.0, z[0]) - y * z[0]

    with jax.enable_x64(True):
        per_draw = jax.jit(jax.vmap(jax.vmap(jax.grad(loss), (None, 0, None)), (0, None, 0)))
        g = np.asarray(per_draw(jnp.asarray(h), jnp.asarray(draws), jnp.asarray(labels)))  # [B, S, D]
    chol = np.linalg.cholesky(precision)
    e, v = jax.jit(lambda *a: ll.sampled_gradient_moments(*a, kind=kind, num_samples=40_000))(
        jnp.asarray(h1, jnp.float32),
        jnp.asarray(labels, jnp.int32 if kind == "classification" else jnp.float32),
        jnp.asarray(theta, jnp.float32),
        jnp.asarray(chol, jnp.float32),
        jax.random.PRNGKey(0),
    )
    scale_e = np.abs(g.mean(1)).max()
    np.testing.assert_allclose(np.asarray(e), g.mean(1), atol=0.03 * scale_e + 1e-3)
    np.testing.assert_allclose(np.asarray(v), g.var(1), rtol=0.06, atol=1e-4)


def test_one_classification_task_gets_its_expected_gradient():
    """K = 1: the inverse-variance weights cancel, so the cotangent of h is E[g] / n (0 where the
    example is unlabelled), with the draws of fold_in(key, 0)."""
    h, theta, labels, mask = _cls_problem(seed=5)
    kernel, bias = theta[:, :-1].T, theta[:, -1]
    t = weighting.get("bayesagg_mtl", num_mc_samples=64)
    key = jax.random.PRNGKey(7)
    out, _ = t.apply(
        jnp.ones(1),
        t.init(1, layout=(("representation", h.shape),)),
        representation=jnp.asarray(h, jnp.float32),
        targets=jnp.asarray(labels[:, None], jnp.float32),
        target_mask=jnp.asarray(mask[:, None], jnp.float32),
        target_kinds=("classification",),
        last_layer=((jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32)),),
        key=key,
    )
    h1 = jnp.asarray(np.concatenate([h, np.ones((len(h), 1))], 1), jnp.float32)
    y = jnp.asarray(labels, jnp.int32)
    m = jnp.asarray(mask, jnp.float32)
    mean, chol = ll.laplace_posterior(h1, y, m, jnp.asarray(theta, jnp.float32), kind="classification", gamma=0.005)
    e, _ = ll.sampled_gradient_moments(
        h1, y, mean, chol, jax.random.fold_in(key, 0), kind="classification", num_samples=64
    )
    want = np.asarray(e) * mask[:, None] / mask.sum()
    np.testing.assert_allclose(np.asarray(out.direction).reshape(h.shape), want, rtol=1e-4, atol=1e-7)


MIXED = (Task("r", "regression", 1), Task("c", "classification", 3), Task("z", "binary", 1))


def _mixed_batch(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(48, 6)).astype(np.float32)
    proj = np.random.default_rng(99).normal(size=(6, 3))
    return {
        "x": x,
        "r": np.tanh(x @ proj[:, 0]).astype(np.float32),
        "c": np.digitize(x @ proj[:, 1], [-1.0, 1.0]).astype(np.int32),
        "z": (x @ proj[:, 2] > 0).astype(np.int32),
        "c_mask": (rng.uniform(size=48) < 0.8).astype(np.float32),
    }


def _train(tasks, steps, **kwargs):
    model = mtl.build(tasks, encoder="mlp", encoder_kwargs=dict(features=(8,)), head_kwargs=dict(hidden=0))
    t = weighting.get("bayesagg_mtl", num_mc_samples=128, **kwargs)
    opt = optax.adam(3e-2)
    state = step_lib.init_state(model, t, opt, jnp.zeros((1, 6)), len(tasks), seed=0)
    step = step_lib.make_train_step(model, tasks, t, opt, step_lib.StepConfig(input_key="x"))
    assert step.gradient_path == "last_layer"
    fn = jax.jit(step)
    names = {t.name for t in tasks}
    losses = []
    for i in range(steps):
        batch = {k: v for k, v in _mixed_batch(i % 4).items() if k == "x" or k.split("_")[0] in names}
        state, m = fn(state, batch)
        assert bool(m["finite"])
        losses.append(np.asarray(m["losses"]))
    return losses


def test_trains_classification_tasks_in_the_jitted_step():
    """Softmax (with a label mask) and sigmoid tasks: both losses fall below half their first value
    (plain summed gradients reach about the same in as many steps)."""
    losses = _train(MIXED[1:], 40)
    assert np.all(losses[-1] < 0.5 * losses[0]), (losses[0], losses[-1])


def test_trains_mixed_regression_and_classification_tasks():
    """One regression, one softmax, one sigmoid task together: every loss falls. (The regression
    task's closed-form gradient is the most certain, so it gets most of the representation's weight.)"""
    losses = _train(MIXED, 40)
    assert np.all(losses[-1] < 0.9 * losses[0]), (losses[0], losses[-1])


def test_classification_refusals_name_the_fix():
    h, theta, labels, _ = _cls_problem()
    t = weighting.get("bayesagg_mtl")
    state = t.init(1, layout=(("representation", h.shape),))
    base = dict(
        representation=jnp.asarray(h, jnp.float32),
        targets=jnp.asarray(labels[:, None], jnp.float32),
        target_kinds=("classification",),
    )
    layer = ((jnp.asarray(theta[:, :-1].T), jnp.asarray(theta[:, -1])),)
    with pytest.raises(ValueError, match="Monte-Carlo samples .*pass a fresh key"):
        t.apply(jnp.ones(1), state, **base, last_layer=layer)
    with pytest.raises(ValueError, match="needs each classification head's current last layer: pass last_layer="):
        t.apply(jnp.ones(1), state, **base, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"task 0 is binary \(one logit\); its last layer has 3"):
        t.apply(
            jnp.ones(1), state, **{**base, "target_kinds": ("binary",)}, last_layer=layer, key=jax.random.PRNGKey(0)
        )
    with pytest.raises(ValueError, match="target_kinds must name each of the 1 tasks' kind, one of regression"):
        t.apply(jnp.ones(1), state, **{**base, "target_kinds": ("clasification",)}, key=jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="num_mc_samples must be an integer >= 2"):
        weighting.get("bayesagg_mtl", num_mc_samples=1)
    params = {"shared": {"A": jnp.ones((3, 2))}, "heads": {"W": jnp.ones((2, 3))}}
    vg = jmtl.mtl_value_and_grad(
        None,
        t,
        encode=lambda p, x, y: x @ p["shared"]["A"],
        heads=lambda p, h, x, y: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(h @ p["heads"]["W"], y))[
            None
        ],
        targets=lambda x, y: y[:, None].astype(jnp.float32),
        target_kinds=("classification",),
        last_layer=lambda p: ((p["heads"]["W"], jnp.zeros(3)),),
    )
    x, y = jnp.ones((4, 3)), jnp.zeros(4, jnp.int32)
    with pytest.raises(ValueError, match="Monte-Carlo samples for classification tasks and key=None"):
        vg(params, vg.init(params, None, x, y), x, y)
    res = jax.jit(vg)(params, vg.init(params, None, x, y), x, y, key=jax.random.PRNGKey(1))
    assert np.all(np.isfinite(np.asarray(res.grads["shared"]["A"])))


class _OwnModel(nn.Module):
    """A user's model: encode / decode methods and its own param names; ``last_layers`` exposes the
    heads' last affine layers to bayesagg_mtl."""

    def setup(self):
        self.trunk, self.c_logits, self.z_logit = nn.Dense(8), nn.Dense(3), nn.Dense(1)

    def __call__(self, x, *, train: bool = False):
        return self.decode(self.encode(x, train=train), train=train)

    def encode(self, x, *, train: bool = False):
        return nn.relu(self.trunk(x))

    def decode(self, h, *, train: bool = False):
        return {"c": self.c_logits(h), "z": self.z_logit(h)[:, 0]}


class _OwnModelWithLastLayers(_OwnModel):
    @staticmethod
    def last_layers(params):
        return tuple((params[n]["kernel"], params[n]["bias"]) for n in ("c_logits", "z_logit"))


def test_a_users_model_exposes_its_last_layers():
    tasks = MIXED[1:]
    t = weighting.get("bayesagg_mtl", num_mc_samples=32)
    opt = optax.adam(3e-2)
    batch = {k: v for k, v in _mixed_batch(0).items() if k in ("x", "c", "z", "c_mask")}
    for model, ok in ((_OwnModel(), False), (_OwnModelWithLastLayers(), True)):
        state = step_lib.init_state(model, t, opt, jnp.zeros((1, 6)), 2, seed=0)
        step = step_lib.make_train_step(model, tasks, t, opt, step_lib.StepConfig(input_key="x", shared="trunk"))
        assert step.gradient_path == "last_layer"
        if not ok:
            with pytest.raises(ValueError, match=r"Fix: give the model a method last_layers\(params\)"):
                jax.jit(step)(state, batch)
            continue
        first = None
        for i in range(30):
            state, m = jax.jit(step)(state, {k: v for k, v in _mixed_batch(i % 4).items() if k in batch})
            assert bool(m["finite"])
            first = np.asarray(m["losses"]) if first is None else first
        assert np.all(np.asarray(m["losses"]) < 0.7 * first), (first, m["losses"])


def test_records_from_before_the_classification_hyperparameters_still_match():
    """Board cells and runs of bayesagg_mtl recorded before sqrt_power_cls / num_mc_samples existed
    (regression only, where they change nothing): the protocol key leaves them out at their defaults
    and a resume fills them in; set to another value they count."""
    from experiments.configs import school_tasks
    from jmtl.drivers import leaderboard
    from jmtl.training import config_schema, loop

    config = school_tasks.get_config("hps_linear,bayesagg_mtl")
    assert config.weighting.hparams.num_mc_samples == 1024 and config.weighting.hparams.sqrt_power_cls == 0.1
    hparams = leaderboard.protocol_key(config)["weighting"]["hparams"]
    assert "num_mc_samples" not in hparams and "sqrt_power_cls" not in hparams and hparams["gamma"] == 0.005
    old = config_schema.as_dict(config)
    for name in ("num_mc_samples", "sqrt_power_cls"):
        del old["weighting"]["hparams"][name]
    filled = loop._with_new_defaults(old, config)
    assert config_schema.differences(filled, config_schema.as_dict(config)) == []
    config.weighting.hparams.num_mc_samples = 64
    assert leaderboard.protocol_key(config)["weighting"]["hparams"]["num_mc_samples"] == 64
    assert config_schema.differences(loop._with_new_defaults(old, config), config_schema.as_dict(config)) == [
        "weighting.hparams.num_mc_samples: '<absent>' -> 64"
    ]
