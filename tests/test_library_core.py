"""The library's model contract and functional core: a user's own model, named as they like.

Truth: PCGrad's and MGDA's textbook formulas on rows from ``jax.jacrev``, written out in numpy.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jmtl
from jmtl import weighting
from jmtl.tasks import Task
from jmtl.training import contract
from jmtl.training import step as step_lib

TASKS = (Task("a", "regression", 1), Task("b", "regression", 1))


class Encoder(nn.Module):
    @nn.compact
    def __call__(self, x, *, train: bool = False):
        return nn.Dense(4, use_bias=False, name="proj")(x)


class UserModel(nn.Module):
    """A user's model: its shared part is called `encoder`, not `shared`."""

    def setup(self):
        self.encoder = Encoder()
        self.head_a = nn.Dense(1, use_bias=False)
        self.head_b = nn.Dense(1, use_bias=False)

    def __call__(self, x, *, train: bool = False):
        h = self.encoder(x, train=train)
        return {"a": self.head_a(h)[:, 0], "b": self.head_b(h)[:, 0]}


def _batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    # Two conflicting targets: b is minus a, so their encoder gradients point against each other.
    y = x @ np.array([1.0, -2.0, 0.5], np.float32)
    return {"x": x, "a": y, "b": -y + 0.1}


def _losses(params, batch):
    h = batch["x"] @ params["encoder"]["proj"]["kernel"]
    out_a = (h @ params["head_a"]["kernel"])[:, 0]
    out_b = (h @ params["head_b"]["kernel"])[:, 0]
    return jnp.stack([jnp.mean((out_a - batch["a"]) ** 2), jnp.mean((out_b - batch["b"]) ** 2)])


def _pcgrad_two(g1, g2):
    """PCGrad (Yu et al. 2020, Alg. 1) for two tasks: project each gradient off the other if they conflict."""
    p1 = g1 - min(g1 @ g2, 0.0) / (g2 @ g2) * g2
    p2 = g2 - min(g2 @ g1, 0.0) / (g1 @ g1) * g1
    return p1 + p2


def _one_step(model, method, config, batch):
    state = step_lib.init_state(model, weighting.get(method), optax.sgd(1.0), batch["x"], 2, 0, shared=config.shared)
    step = jax.jit(step_lib.make_train_step(model, TASKS, weighting.get(method), optax.sgd(1.0), config))
    new, metrics = step(state, batch)
    return state, new, metrics


def test_shared_part_named_otherwise_is_refused_not_summed():
    """The silent wrong answer of issue 16: a gradient method on a model without params['shared']."""
    batch = _batch()
    with pytest.raises(ValueError, match=r"shared.*(StepConfig\(shared=|no_shared_params)"):
        _one_step(UserModel(), "pcgrad", step_lib.StepConfig(), batch)


@pytest.mark.parametrize("selector", ["encoder", lambda path: path.startswith("['encoder']")])
def test_pcgrad_on_a_user_encoder_is_the_textbook_projection(selector):
    batch = _batch()
    state, new, _ = _one_step(UserModel(), "pcgrad", step_lib.StepConfig(shared=selector), batch)
    p = state.params
    jac = jax.jacrev(_losses)(p, batch)
    rows = np.stack([np.asarray(jac["encoder"]["proj"]["kernel"][k]).ravel() for k in range(2)])
    assert rows[0] @ rows[1] < 0, "the problem must have conflicting gradients"
    want = _pcgrad_two(rows[0].astype(np.float64), rows[1].astype(np.float64))
    got = -(np.asarray(new.params["encoder"]["proj"]["kernel"]) - np.asarray(p["encoder"]["proj"]["kernel"])).ravel()
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)
    assert not np.allclose(got, rows.sum(0), rtol=1e-3), "must not be the plain sum"
    # heads: their own task's gradient
    for head, k in (("head_a", 0), ("head_b", 1)):
        own = np.asarray(jac[head]["kernel"][k])
        np.testing.assert_allclose(
            -(np.asarray(new.params[head]["kernel"]) - np.asarray(p[head]["kernel"])), own, rtol=2e-4, atol=1e-6
        )


def test_functional_core_on_a_plain_function_matches_the_step():
    """mtl_value_and_grad on a dict of arrays and a plain loss function = the built-in step on the Linen model."""
    batch = _batch(seed=3)
    config = step_lib.StepConfig(shared="encoder")
    for method in ("mgda", "pcgrad", "equal", "uncertainty"):
        state, new, metrics = _one_step(UserModel(), method, config, batch)
        vg = jmtl.mtl_value_and_grad(_losses, weighting.get(method), shared="encoder")
        wstate = vg.init(state.params, 2)
        wparams = vg.init_weighting_params(2)
        res = jax.jit(lambda p, s, w, b: vg(p, s, b, key=jax.random.PRNGKey(7), step=0, weighting_params=w))(
            state.params, wstate, wparams, batch
        )
        np.testing.assert_allclose(np.asarray(res.losses), np.asarray(metrics["losses"]), rtol=1e-6)
        want = jax.tree.map(lambda a, b: a - b, state.params, new.params)  # SGD(1): the step's gradient
        for g, w in zip(jax.tree.leaves(res.grads), jax.tree.leaves(want)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6, err_msg=method)


def test_functional_core_mgda_is_the_min_norm_point():
    """MGDA's combination of the two rows is their min-norm convex combination (closed form for K=2)."""
    batch = _batch(seed=5)
    params = UserModel().init(jax.random.PRNGKey(0), batch["x"])["params"]
    vg = jmtl.mtl_value_and_grad(_losses, "mgda", shared="encoder")
    res = vg(params, vg.init(params, 2), batch)
    jac = jax.jacrev(_losses)(params, batch)
    g1, g2 = (np.asarray(jac["encoder"]["proj"]["kernel"][k], np.float64).ravel() for k in range(2))
    gamma = np.clip((g2 - g1) @ g2 / ((g1 - g2) @ (g1 - g2)), 0, 1)
    np.testing.assert_allclose(
        np.asarray(res.grads["encoder"]["proj"]["kernel"]).ravel(), gamma * g1 + (1 - gamma) * g2, rtol=1e-4, atol=1e-7
    )


# ----------------------------------------------------------------------------- the contract, one mistake each


class NoTrainArg(nn.Module):
    @nn.compact
    def __call__(self, x):
        return {"a": nn.Dense(1)(x)[:, 0], "b": nn.Dense(1)(x)[:, 0]}


def test_missing_train_argument_is_named():
    with pytest.raises(TypeError, match="keyword argument `train`"):
        contract.check(NoTrainArg(), TASKS, _batch())
    with pytest.raises(TypeError, match="keyword argument `train`"):
        step_lib.init_state(NoTrainArg(), weighting.get("equal"), optax.sgd(1.0), _batch()["x"], 2, 0)


def test_representation_mode_without_encode_decode_is_named():
    with pytest.raises(ValueError, match="encode.*decode"):
        step_lib.make_train_step(
            UserModel(),
            TASKS,
            weighting.get("mgda"),
            optax.sgd(1.0),
            step_lib.StepConfig(jacobian_mode="representation", shared="encoder"),
        )
    with pytest.raises(contract.ContractError, match="encode"):
        contract.check(
            UserModel(),
            TASKS,
            _batch(),
            weighting=weighting.get("mgda"),
            config=step_lib.StepConfig(jacobian_mode="representation", shared="encoder"),
        )


def test_missing_batch_entries_are_named():
    batch = _batch()
    with pytest.raises(contract.ContractError, match="input entry 'image'.*input_key"):
        contract.check(UserModel(), TASKS, batch, config=step_lib.StepConfig(input_key="image"))
    del batch["b"]
    with pytest.raises(contract.ContractError, match="no labels 'b' for task 'b'"):
        contract.check(UserModel(), TASKS, batch)


def test_label_dtype_shape_and_range_are_named():
    cls = (Task("a", "classification", 3), Task("b", "regression", 1))

    class M(nn.Module):
        @nn.compact
        def __call__(self, x, *, train=False):
            h = nn.Dense(4, name="shared")(x)
            return {"a": nn.Dense(3)(h), "b": nn.Dense(1)(h)[:, 0]}

    good = {"x": np.zeros((4, 3), np.float32), "a": np.array([0, 1, 2, 0]), "b": np.zeros(4, np.float32)}
    contract.check(M(), cls, good)
    with pytest.raises(contract.ContractError, match="integer class ids"):
        contract.check(M(), cls, {**good, "a": good["a"].astype(np.float32)})
    with pytest.raises(contract.ContractError, match=r"span \[0, 3\].*3 classes"):
        contract.check(M(), cls, {**good, "a": np.array([0, 1, 3, 0])})
    with pytest.raises(contract.ContractError, match="num_outputs=1"):
        contract.check(M(), cls, {**good, "b": np.zeros((4, 2), np.float32)})
    with pytest.raises(contract.ContractError, match="must be floats"):
        contract.check(M(), cls, {**good, "b": np.zeros(4, np.int32)})


def test_outputs_that_do_not_match_the_tasks_are_named():
    three = (*TASKS, Task("c", "regression", 1))
    with pytest.raises(ValueError, match=r"missing output\(s\) for task\(s\) \['c'\]"):
        contract.check(UserModel(), three, {**_batch(), "c": np.zeros(16, np.float32)})
    with pytest.raises(ValueError, match=r"output\(s\) \['b'\] belong to no declared task"):
        contract.check(UserModel(), TASKS[:1], _batch())
    # ... and the step refuses the same at trace time (a model with 3 outputs trained with 2 tasks)
    state = step_lib.init_state(UserModel(), weighting.get("equal"), optax.sgd(1.0), _batch()["x"], 1, 0)
    step = step_lib.make_train_step(UserModel(), TASKS[:1], weighting.get("equal"), optax.sgd(1.0))
    with pytest.raises(ValueError, match="belong to no declared task"):
        step(state, _batch())


# ----------------------------------------------------------------------------- task kinds


def test_multilabel_and_custom_tasks_follow_their_definitions():
    from jmtl.tasks import Metric

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    labels = rng.integers(0, 2, size=(6, 4)).astype(np.int32)
    ml = Task("tags", "multilabel", 4)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    want = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean(axis=1)
    np.testing.assert_allclose(np.asarray(ml.loss(jnp.asarray(logits), jnp.asarray(labels))), want, rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(ml.main_metric.fn(jnp.asarray(logits), jnp.asarray(labels))),
        ((logits > 0) == (labels == 1)).mean(axis=1),
        rtol=1e-6,
    )

    huber = lambda out, y: optax.huber_loss(out.reshape(y.shape), y)  # noqa: E731
    custom = Task(
        "depth",
        "custom",
        1,
        loss_fn=huber,
        custom_metrics=(Metric("abs_err", lambda o, y: jnp.abs(o.reshape(y.shape) - y), False),),
    )
    out, y = jnp.array([[0.0], [3.0]]), jnp.array([0.5, 0.0])
    np.testing.assert_allclose(np.asarray(custom.loss(out, y)), [0.125, 2.5])
    assert custom.main_metric.name == "abs_err" and not custom.main_metric.higher_is_better
    with pytest.raises(ValueError, match="custom.*loss_fn"):
        Task("bad", "custom", 1)


def test_custom_loss_is_what_the_step_minimises():
    from jmtl.tasks import Metric

    scale = lambda out, y: 3.0 * (out - y) ** 2  # noqa: E731
    tasks = (
        Task("a", "custom", 1, loss_fn=scale, custom_metrics=(Metric("mse", lambda o, y: (o - y) ** 2, False),)),
        Task("b", "regression", 1),
    )
    batch = _batch()
    w = weighting.get("equal")
    config = step_lib.StepConfig(shared="encoder")
    state = step_lib.init_state(UserModel(), w, optax.sgd(1.0), batch["x"], 2, 0, shared="encoder")
    _, metrics = step_lib.make_train_step(UserModel(), tasks, w, optax.sgd(1.0), config)(state, batch)
    out = UserModel().apply({"params": state.params}, batch["x"])
    np.testing.assert_allclose(
        float(metrics["losses"][0]), float(jnp.mean(3.0 * (out["a"] - batch["a"]) ** 2)), rtol=1e-5
    )
