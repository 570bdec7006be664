"""The joint train step against independent computations of the same update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmtl import weighting
from jmtl.core import jacobian as jacobian_lib
from jmtl.models import mtl
from jmtl.tasks import Task
from jmtl.training import step as step_lib

# Values, not speed: the programs compile without XLA's optimisation passes (conftest's
# xla_optimizations_off; this file's compile-bound tests took ~0.6x the time in one measured run).
pytestmark = pytest.mark.usefixtures("xla_optimizations_off")


TASKS = (Task("a", "regression", 3), Task("b", "regression", 3), Task("c", "classification", 4))


def _setup(method="equal", relation=False, alpha=0.0, **hp):
    model = mtl.build(
        TASKS,
        encoder="mlp",
        encoder_kwargs=dict(features=(8, 8)),
        head_kwargs=dict(hidden=6, dropout_rate=0.0),
        relation=relation,
    )
    t = weighting.get(method, **hp)
    opt = optax.sgd(0.1)
    state = step_lib.init_state(model, t, opt, jnp.zeros((1, 5)), len(TASKS), seed=0)
    rng = np.random.default_rng(0)
    batch = dict(
        x=jnp.asarray(rng.normal(size=(16, 5)), jnp.float32),
        a=jnp.asarray(rng.normal(size=(16, 3)), jnp.float32),
        b=jnp.asarray(rng.normal(size=(16, 3)), jnp.float32),
        c=jnp.asarray(rng.integers(0, 4, 16), jnp.int32),
    )
    cfg = step_lib.StepConfig(penalties=(mtl.relation_penalty(alpha),) if alpha else (), input_key="x")
    fn = jax.jit(step_lib.make_train_step(model, TASKS, t, opt, cfg))
    return model, state, batch, fn


def _losses(model, params, batch):
    out = model.apply({"params": params}, batch["x"], train=True)
    return jnp.stack([jnp.mean(t.loss(out[t.name], batch[t.label_key])) for t in TASKS])


def test_equal_weighting_is_sgd_on_the_sum_plus_relation_penalty():
    model, state, batch, fn = _setup("equal", relation=True, alpha=0.01)
    new, metrics = fn(state, batch)

    def total(p):
        return jnp.sum(_losses(model, p, batch)) + 0.01 * jnp.sum(p["relation"] ** 2)

    g = jax.grad(total)(state.params)
    expected = jax.tree.map(lambda p, gi: p - 0.1 * gi, state.params, g)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["losses"], _losses(model, state.params, batch), rtol=1e-6)
    assert bool(metrics["finite"])
    assert int(new.step) == 1


def test_gradient_method_uses_the_batched_jacobian():
    """MGDA: shared params move along the min-norm combination of per-task jacrev gradients; heads
    along their own task's gradient."""
    model, state, batch, fn = _setup("mgda")
    new, metrics = fn(state, batch)
    jac_tree = jax.jacrev(lambda p: _losses(model, p, batch))(state.params)  # leaves [K, ...]
    jac = jacobian_lib.flatten_rows(jac_tree["shared"])
    d = weighting.aggregate("mgda", jac)
    expected_shared = jax.tree.map(
        lambda p, g: p - 0.1 * g, state.params["shared"], jacobian_lib.unflatten_like(d, state.params["shared"])
    )
    for a, b in zip(jax.tree.leaves(new.params["shared"]), jax.tree.leaves(expected_shared)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for t in TASKS:
        own = jax.tree.map(lambda g: g.sum(0), jac_tree["tasks"][t.name])
        exp = jax.tree.map(lambda p, g: p - 0.1 * g, state.params["tasks"][t.name], own)
        for a, b in zip(jax.tree.leaves(new.params["tasks"][t.name]), jax.tree.leaves(exp)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    alpha = np.asarray(metrics["weights"])
    assert abs(alpha.sum() - 1) < 1e-5 and np.all(alpha >= 0)


def test_uncertainty_params_are_trained_by_the_main_optimizer():
    model, state, batch, fn = _setup("uncertainty")
    new, metrics = fn(state, batch)
    losses = np.asarray(metrics["losses"])
    s = np.asarray(state.weighting_params["log_var"])
    expected = s - 0.1 * (1.0 - np.exp(-s) * losses)
    np.testing.assert_allclose(new.weighting_params["log_var"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["weights"], np.exp(-s), rtol=1e-6)


@pytest.mark.parametrize("method", ["equal", "mgda"])
def test_nonfinite_loss_leaves_state_unchanged(method):
    model, state, batch, fn = _setup(method)
    bad = dict(batch)
    bad["b"] = batch["b"].at[3, 1].set(jnp.nan)
    new, metrics = fn(state, bad)
    assert not bool(metrics["finite"])
    np.testing.assert_array_equal(np.asarray(metrics["losses_finite"]), [True, False, True])
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, b)
    assert int(new.step) == 1  # the step counter still advances (the batch was consumed)


def test_representation_mode_with_equal_weights_is_the_plain_gradient():
    """Rep-level mode with unit weights backpropagates sum_k dL_k/dz through the encoder: the gradient
    of the sum of losses (checked with 'static' weights routed through the Gramian path)."""
    model, state, batch, _ = _setup("equal")
    t, opt = weighting.get("mgda"), optax.sgd(0.1)
    ones = weighting.WeightingTransform(
        init=t.init,
        update=lambda inp, st: (weighting.WeightingOutput(weights=jnp.ones_like(inp.losses), extra_loss=0.0), st),
        requires=weighting.GRAMIAN,
    )
    cfg = step_lib.StepConfig(input_key="x", jacobian_mode="representation")
    new, _ = jax.jit(step_lib.make_train_step(model, TASKS, ones, opt, cfg))(state, batch)
    g = jax.grad(lambda p: jnp.sum(_losses(model, p, batch)))(state.params)
    expected = jax.tree.map(lambda p, gi: p - 0.1 * gi, state.params, g)
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_representation_mode_mgda_weights_are_min_norm_of_representation_gradients():
    model, state, batch, _ = _setup("equal")
    t, opt = weighting.get("mgda"), optax.sgd(0.1)
    cfg = step_lib.StepConfig(input_key="x", jacobian_mode="representation")
    _, metrics = jax.jit(step_lib.make_train_step(model, TASKS, t, opt, cfg))(state, batch)
    rep = model.apply({"params": state.params}, batch["x"], method=model.encode)

    def losses_of_rep(z):
        out = model.apply({"params": state.params}, z, train=True, method=model.decode)
        return jnp.stack([jnp.mean(tk.loss(out[tk.name], batch[tk.label_key])) for tk in TASKS])

    jz = jax.jacrev(losses_of_rep)(rep).reshape(len(TASKS), -1)
    expected = weighting.solvers.min_norm_weights(jz @ jz.T)
    np.testing.assert_allclose(metrics["weights"], expected, rtol=1e-4, atol=1e-6)


def test_representation_mode_refused_by_schemes_that_say_so():
    model, state, batch, _ = _setup("equal")
    t = weighting.get("mgda")._replace(rep_level_ok=False)
    with pytest.raises(ValueError, match="not meaningful on gradients w.r.t. the shared representation"):
        step_lib.make_train_step(model, TASKS, t, optax.sgd(0.1), step_lib.StepConfig(jacobian_mode="representation"))


def test_bfloat16_compute_keeps_float32_master_weights_and_losses():
    """Mixed precision: the same step in bfloat16 stays close to float32, params and losses stay float32."""
    model, state, batch, fn32 = _setup("mgda")
    t, opt = weighting.get("mgda"), optax.sgd(0.1)
    cfg = step_lib.StepConfig(input_key="x", compute_dtype="bfloat16")
    fn16 = jax.jit(step_lib.make_train_step(model, TASKS, t, opt, cfg))
    new32, m32 = fn32(state, batch)
    new16, m16 = fn16(state, batch)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new16.params))
    assert m16["losses"].dtype == jnp.float32
    np.testing.assert_allclose(m16["losses"], m32["losses"], rtol=2e-2)  # bf16 has an 8-bit mantissa
    d32 = jax.tree.map(lambda a, b: a - b, new32.params, state.params)
    d16 = jax.tree.map(lambda a, b: a - b, new16.params, state.params)
    cos = sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(d32), jax.tree.leaves(d16))) / (
        float(optax.tree.norm(d32)) * float(optax.tree.norm(d16))
    )
    assert cos > 0.99  # the update points the same way
    # The forward pass really ran in bfloat16: the losses differ from float32's.
    assert not np.array_equal(np.asarray(m16["losses"]), np.asarray(m32["losses"]))
    with pytest.raises(ValueError, match="compute_dtype"):
        step_lib.make_train_step(model, TASKS, t, opt, step_lib.StepConfig(input_key="x", compute_dtype="int8"))


@pytest.mark.parametrize("method,chunk", [("mgda", 0), ("upgrad", 1)])
def test_factored_jacobian_equals_the_backward_through_the_whole_model(method, chunk):
    """On a hard-sharing model the step takes the K rows back through the encoder alone, after one
    backward pass through the heads; with dropout on, the update must equal the one whose rows each
    run back through the whole model (forced here by a model_kwargs hook, which disables the split)."""
    model = mtl.build(
        TASKS,
        encoder="multi_lenet",
        encoder_kwargs=dict(dropout_rate=0.5),
        head_kwargs=dict(hidden=6, dropout_rate=0.3),
    )
    t = weighting.get(method)
    opt = optax.sgd(0.1)
    state = step_lib.init_state(model, t, opt, jnp.zeros((1, 28, 28, 1)), len(TASKS), seed=0)
    _, _, batch, _ = _setup()
    batch = dict(batch, x=jnp.asarray(np.random.default_rng(1).normal(size=(16, 28, 28, 1)), jnp.float32))
    outs = []
    for hook in (None, lambda step: {}):
        cfg = step_lib.StepConfig(input_key="x", jacobian_chunk_size=chunk, model_kwargs=hook)
        new, m = jax.jit(step_lib.make_train_step(model, TASKS, t, opt, cfg))(state, batch)
        outs.append((new.params, m))
    (p_split, m_split), (p_full, m_full) = outs
    np.testing.assert_allclose(m_split["losses"], m_full["losses"], rtol=1e-6)
    np.testing.assert_allclose(m_split["weights"], m_full["weights"], rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(p_split), jax.tree.leaves(p_full)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # and dropout really is on: another step's rng gives other losses
    other = jax.jit(step_lib.make_train_step(model, TASKS, t, opt, step_lib.StepConfig(input_key="x")))(
        state._replace(step=state.step + 1), batch
    )[1]["losses"]
    assert not np.allclose(other, m_split["losses"])
