"""The task-relation product's backward pass is linear in K (it was quadratic), and the model with W
computes exactly what it computed before the change.

``base.mix_tasks`` once returned ``list(mixed)``: indexing ``mixed[i]`` K times, whose backward pads
every task's cotangent to a full ``[K, B, H]`` zero array and sums the K of them (O(K^2 B H) work and
K temporaries of the stacked size; 350 ms of a 370 ms step at K = 139, results/school/relation_step_time.md).
It now unstacks, whose backward is one concatenation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmtl.models import base, mtl
from jmtl.tasks import Task


def _indexed_mix(weights, xs):
    """The former formulation (the reference the fix must agree with): K index ops on the product."""
    stacked = jnp.stack(xs)
    return list(jnp.einsum("ij,j...->i...", weights.astype(stacked.dtype), stacked))


def _contracted_loss(mix):
    """sum_i <v_i, z_i> with z = mix(W, xs): its gradient has a closed form (below)."""

    def loss(w, xs, vs):
        return sum(jnp.sum(z * v) for z, v in zip(mix(w, xs), vs))

    return loss


def test_mix_tasks_gradient_against_the_closed_form_in_float64():
    """For L = sum_i <v_i, z_i>, z_i = sum_j W_ij x_j: dL/dW_ij = <v_i, x_j>, dL/dx_j = sum_i W_ij v_i."""
    k, b, h = 24, 5, 3
    rng = np.random.default_rng(0)
    w = rng.normal(size=(k, k))
    xs, vs = rng.normal(size=(k, b, h)), rng.normal(size=(k, b, h))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    gw, gx = jax.jit(jax.grad(_contracted_loss(base.mix_tasks), argnums=(0, 1)))(f32(w), list(f32(xs)), list(f32(vs)))
    np.testing.assert_allclose(gw, np.einsum("ibh,jbh->ij", vs, xs), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.stack(gx), np.einsum("ij,ibh->jbh", w, vs), rtol=1e-4, atol=1e-4)


def test_mix_tasks_backward_memory_does_not_grow_with_k_squared():
    """XLA's temporary buffer of the compiled gradient, in units of one stacked [K, B, H] array: a
    constant for the unstacking product (3 measured), K + 3 for the former indexing one (35 at
    K = 32), which this bound of 8 would catch."""
    k, b, h = 32, 32, 4
    xs = [jnp.ones((b, h))] * k
    for mix, bounded in ((base.mix_tasks, True), (_indexed_mix, False)):
        compiled = jax.jit(jax.grad(_contracted_loss(mix), argnums=(0, 1))).lower(jnp.eye(k), xs, xs).compile()
        analysis = compiled.memory_analysis()
        if analysis is None:
            pytest.skip("this backend reports no memory analysis")
        stacked_units = analysis.temp_size_in_bytes / (k * b * h * 4)
        # The reference must exceed the bound, else the bound tests nothing on this XLA version.
        assert (stacked_units <= 8) == bounded, (mix.__name__, stacked_units)


def test_relation_model_outputs_and_gradients_equal_the_former_formulation(monkeypatch):
    """Hard sharing with W (K = 20, W perturbed off the identity): outputs, loss and every gradient
    with base.mix_tasks equal those with the former indexing product (float32, same ops but the
    unstacking: equal to rounding)."""
    k = 20
    tasks = tuple(Task(f"t{i}", "regression", 1) for i in range(k))
    model = mtl.build(
        tasks, encoder="mlp", encoder_kwargs=dict(features=(6,)), head_kwargs=dict(hidden=4), relation=True
    )
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(9, 5)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(9, k)), jnp.float32)
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    params = {**params, "relation": params["relation"] + 0.1 * jnp.asarray(rng.normal(size=(k, k)), jnp.float32)}

    def loss(p):
        out = model.apply({"params": p}, x)
        return sum(jnp.mean((out[t.name][:, 0] - y[:, i]) ** 2) for i, t in enumerate(tasks)), out

    new_value, new_grads = jax.value_and_grad(loss, has_aux=True)(params)
    monkeypatch.setattr(base, "mix_tasks", _indexed_mix)
    old_value, old_grads = jax.value_and_grad(loss, has_aux=True)(params)
    np.testing.assert_allclose(new_value[0], old_value[0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_value[1], old_value[1])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new_grads, old_grads)
    # The gradient reaches W off the diagonal (the comparison is not between two zero arrays).
    off = np.asarray(new_grads["relation"])[~np.eye(k, dtype=bool)]
    assert np.abs(off).max() > 1e-3
