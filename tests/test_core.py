"""The functional core (``jmtl.core``) as a base layer: what it imports, and every gradient path
reached through ``mtl_value_and_grad`` on a plain JAX model.

Truth: per-task gradients from ``jax.grad`` of each loss alone (float64), combined in numpy by the
scheme's definition (the K = 2 min-norm point of MGDA in closed form; UPGrad's and PCGrad's weights
via the registered scheme on the explicit Gramian), and Sener & Koltun's MGDA-UB on the
representation's per-task gradients.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jmtl
from jmtl import weighting
from jmtl.core import paths

CORE = Path(__file__).resolve().parents[1] / "jmtl" / "core"
ALLOWED = ("jmtl.core", "jmtl.weighting", "jax", "optax")


def test_core_modules_import_only_weighting_jax_and_optax():
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    offenders = []
    for f in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                # `from jmtl import weighting` is checked as `jmtl.weighting`
                names = [f"jmtl.{a.name}" for a in node.names] if node.module == "jmtl" else [node.module]
            for n in names:
                top = n.split(".")[0]
                ok = top in stdlib or any(n == a or n.startswith(a + ".") for a in ALLOWED)
                if not ok:
                    offenders.append(f"{f.name}: {n}")
    assert not offenders, f"jmtl/core may import only {ALLOWED} and the standard library: {offenders}"


def test_importing_the_core_loads_no_trainer_model_zoo_or_flax():
    code = (
        "import sys, jmtl.core, jmtl.core.paths, jmtl.core.value_and_grad, jmtl.core.bilevel_terms; "
        "bad = sorted(m for m in sys.modules if m.startswith(('jmtl.training', 'jmtl.models', 'jmtl.data', 'flax'))); "
        "print(bad); assert not bad"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=CORE.parents[1])
    assert res.returncode == 0, res.stdout + res.stderr


# ----------------------------------------------------------------------------- a plain JAX model


def _params(seed=0, d_in=5, d_rep=4):
    rng = np.random.default_rng(seed)
    return {
        "shared": {"w1": rng.normal(size=(d_in, 6)) * 0.5, "w2": rng.normal(size=(6, d_rep)) * 0.5},
        "heads": {"a": rng.normal(size=(d_rep,)), "b": rng.normal(size=(d_rep,)), "c": rng.normal(size=(d_rep,))},
    }


def _data(seed=1, n=12, d_in=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d_in))
    ys = rng.normal(size=(3, n))
    return x, ys


def encode(params, x, ys):
    return jnp.tanh(jnp.tanh(x @ params["shared"]["w1"]) @ params["shared"]["w2"])


def heads(params, rep, x, ys):
    outs = [rep @ params["heads"][k] for k in ("a", "b", "c")]
    return jnp.stack([jnp.mean((o - y) ** 2) for o, y in zip(outs, ys)])


def loss_fn(params, x, ys):
    return heads(params, encode(params, x, ys), x, ys)


def _flat_shared(tree):
    return np.concatenate([np.asarray(v).ravel() for v in jax.tree.leaves(tree["shared"])])


def _explicit_rows(params, x, ys):
    """[K, d] per-task gradients of the shared params, each from jax.grad of that loss alone."""
    rows = [_flat_shared(jax.grad(lambda p: loss_fn(p, x, ys)[k])(params)) for k in range(3)]
    return np.stack(rows)


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("scheme", ["mgda", "upgrad", "pcgrad", "cagrad"])
def test_factored_path_equals_explicit_per_task_gradients(x64, scheme):
    params, (x, ys) = _params(), _data()
    t = weighting.get(scheme)
    key = jax.random.PRNGKey(3)
    plain = jmtl.mtl_value_and_grad(loss_fn, t)
    split = jmtl.mtl_value_and_grad(None, t, encode=encode, heads=heads)
    assert plain.path(3).name == "param_jacobian" and split.path(3).name == "factored_jacobian"
    state = plain.init(params, 3)
    r_plain = plain(params, state, x, ys, key=key)
    r_split = split(params, state, x, ys, key=key)

    rows = _explicit_rows(params, x, ys)
    out, _ = t.apply(jnp.asarray(loss_fn(params, x, ys)), state, key=key, gramian=jnp.asarray(rows @ rows.T))
    expected = np.asarray(out.direction) if out.weights is None else np.asarray(out.weights) @ rows
    for r in (r_plain, r_split):
        np.testing.assert_allclose(_flat_shared(r.grads), expected, rtol=1e-9, atol=1e-12)
        # Each head gets its own task's gradient.
        for k, name in enumerate("abc"):
            own = jax.grad(lambda p: loss_fn(p, x, ys)[k])(params)["heads"][name]
            np.testing.assert_allclose(r.grads["heads"][name], own, rtol=1e-9, atol=1e-12)


def test_representation_mode_is_mgda_ub(x64):
    """MGDA-UB (Sener & Koltun 2018, Sec. 3.3): the min-norm weights of the gradients w.r.t. the
    representation, then one backward pass of the weighted loss through the encoder."""
    params, (x, ys) = _params(), _data()
    vg = jmtl.mtl_value_and_grad(None, "mgda", encode=encode, heads=heads, jacobian_mode="representation")
    assert vg.path(3).name == "representation_jacobian"
    res = vg(params, vg.init(params, 3), x, ys)
    rep = encode(params, x, ys)
    z = np.stack([np.asarray(jax.grad(lambda r: heads(params, r, x, ys)[k])(rep)).ravel() for k in range(3)])
    # Brute-force min-norm point of the three rows on a fine simplex grid, refined by the scheme's answer.
    w = np.asarray(res.weights)
    assert w.min() >= -1e-9 and abs(w.sum() - 1) < 1e-6
    grid = np.linspace(0, 1, 201)
    best = min(
        float(np.sum((a * z[0] + b * z[1] + (1 - a - b) * z[2]) ** 2)) for a in grid for b in grid if a + b <= 1 + 1e-12
    )
    assert float(np.sum((w @ z) ** 2)) <= best + 1e-9
    expected = jax.grad(lambda p: jnp.vdot(jnp.asarray(w), loss_fn(p, x, ys)))(params)["shared"]
    for a, b in zip(jax.tree.leaves(res.grads["shared"]), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)


def test_representation_mode_needs_the_split_and_the_split_needs_both_halves():
    with pytest.raises(ValueError, match="encode= and heads="):
        jmtl.mtl_value_and_grad(loss_fn, "mgda", jacobian_mode="representation").path(3)
    with pytest.raises(ValueError, match="both encode= and heads="):
        jmtl.mtl_value_and_grad(None, "mgda", encode=encode)
    with pytest.raises(ValueError, match="unknown jacobian_mode"):
        jmtl.mtl_value_and_grad(loss_fn, "mgda", jacobian_mode="rep")
    with pytest.raises(ValueError, match="representation only"):
        jmtl.mtl_value_and_grad(loss_fn, "ntkmtl_sr").path(3)


def test_bilevel_scheme_takes_its_second_batch_as_meta_args():
    """Auto-Lambda (Liu et al. 2022) through the core: its hypergradient is -lr <grad L_j^val(theta'),
    grad L_k^train(theta)>; with the validation batch equal to the training batch and a tiny look-ahead
    step the scheme's update must move the weights along the train-train Gramian's rows."""
    params, (x, ys) = _params(), _data()
    t = weighting.get("auto_lambda", lookahead_lr=1e-3)
    vg = jmtl.mtl_value_and_grad(loss_fn, t)
    assert vg.path(3).name == "bilevel"
    state = vg.init(params, 3)
    with pytest.raises(ValueError, match="meta_args"):
        vg(params, state, x, ys)
    res = vg(params, state, x, ys, meta_args=(x, ys))
    # The combined gradient is the weighted training gradient with the scheme's weights.
    w = np.asarray(res.weights)
    expected = jax.grad(lambda p: jnp.vdot(jnp.asarray(w, jnp.float32), loss_fn(p, x, ys)))(params)
    for a, b in zip(jax.tree.leaves(res.grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(w))


def test_a_scheme_sees_the_callers_key_none_included():
    """A deterministic scheme gets ``key=None`` when the caller gave none (never a stand-in key a
    scheme could draw the same numbers from every step), and the caller's key when one is given."""
    seen = []

    def update(inputs, state):
        seen.append(inputs.key)
        return weighting.base.weights_output(jnp.ones_like(inputs.losses)), state

    spy = weighting.WeightingTransform(weighting.base.stateless_init, update, weighting.LOSSES)
    params, (x, ys) = _params(), _data()
    vg = jmtl.mtl_value_and_grad(loss_fn, spy)
    state = vg.init(params, 3)
    vg(params, state, x, ys)
    key = jax.random.PRNGKey(7)
    vg(params, state, x, ys, key=key)
    assert seen[0] is None
    np.testing.assert_array_equal(np.asarray(seen[1]), np.asarray(key))


def test_the_flax_step_and_the_core_choose_the_same_paths():
    """The built-in step is a thin layer: its path for a model with separable heads is the core's factored one."""
    from jmtl.models import mtl
    from jmtl.tasks import Task
    from jmtl.training import step as step_lib

    tasks = (Task("a", "regression", 1), Task("b", "regression", 1))
    model = mtl.build(tasks, encoder="mlp", encoder_kwargs=dict(features=(4,)), head_kwargs=dict(hidden=None))
    for scheme, mode, expected in (
        ("equal", "params", "loss_level"),
        ("pcgrad", "params", "factored_jacobian"),
        ("mgda", "representation", "representation_jacobian"),
    ):
        path = step_lib.make_gradient_path(
            model, tasks, weighting.get(scheme), step_lib.StepConfig(jacobian_mode=mode), None
        )
        assert isinstance(path.ctx.objective, paths.Objective) and path.name == expected


@pytest.mark.parametrize("scheme", ["upgrad", "mgda"])
def test_per_example_objectives_balance_each_examples_gradient(x64, scheme):
    """Instance-wise risk minimisation (K = B): the rows are the examples' gradients, each from
    jax.grad of that example's loss alone; the update is the scheme's combination of them."""
    params, (x, ys) = _params(), _data(n=6)
    y = ys[0]

    def per_example_losses(p, x, y):
        return (encode(p, x, None) @ p["heads"]["a"] - y) ** 2  # [B]

    vg = jmtl.mtl_value_and_grad(per_example_losses, scheme, per_example=True)
    assert vg.path(6).name == "per_example_jacobian"
    res = vg(params, vg.init(params, 6), x, y)
    rows, head_rows = [], []
    for b in range(6):
        g = jax.grad(lambda p: per_example_losses(p, x[b : b + 1], y[b : b + 1])[0])(params)
        rows.append(_flat_shared(g))
        head_rows.append(np.asarray(g["heads"]["a"]))
    rows = np.stack(rows)
    expected = np.asarray(weighting.aggregate(scheme, jnp.asarray(rows)))
    np.testing.assert_allclose(_flat_shared(res.grads), expected, rtol=1e-7, atol=1e-10)
    # Unshared params: the sum of the examples' gradients.
    np.testing.assert_allclose(res.grads["heads"]["a"], np.sum(head_rows, axis=0), rtol=1e-9)
    with pytest.raises(ValueError, match="example axis first"):
        vg(params, vg.init(params, 6), x, y[:1])
    with pytest.raises(ValueError, match="per_example"):
        jmtl.mtl_value_and_grad(None, scheme, encode=encode, heads=heads, per_example=True)


def test_step_penalties_must_be_a_tuple_and_relation_alpha_needs_the_matrix():
    from jmtl.training import builders, config_schema
    from jmtl.training import step as step_lib

    with pytest.raises(TypeError, match=r"penalties=\(fn,\)"):
        step_lib.StepConfig(penalties=lambda p: 0.0)
    config = config_schema.default_config()
    config.model.relation, config.model.relation_alpha = False, 1e-3
    with pytest.raises(ValueError, match="model.relation is False"):
        builders.step_config(config, None, "x")
