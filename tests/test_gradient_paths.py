"""The step's gradient path is chosen from what the model declares, not from its class."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from jmtl import weighting
from jmtl.models import mtl
from jmtl.tasks import Task
from jmtl.training import step as step_lib

TASKS = (Task("a", "regression", 1), Task("b", "regression", 1), Task("c", "regression", 1))


class Declared(nn.Module):
    """A user's own model that declares the capabilities of the fast paths."""

    separable: bool = True

    def setup(self):
        self.shared = nn.Dense(5)
        self.heads = [nn.Dense(1, name=f"head_{t.name}") for t in TASKS]

    @property
    def separable_heads(self) -> bool:
        return self.separable

    def encode(self, x, *, train=False):
        return nn.tanh(self.shared(x))

    def decode(self, rep, *, train=False):
        return {t.name: h(rep)[:, 0] for t, h in zip(TASKS, self.heads)}

    def decode_split(self, reps, *, train=False):
        return {t.name: h(r)[:, 0] for t, h, r in zip(TASKS, self.heads, reps)}

    def __call__(self, x, *, train=False):
        return self.decode(self.encode(x, train=train), train=train)


def _batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 4)).astype(np.float32)
    return {"image": x, **{t.name: rng.normal(size=16).astype(np.float32) for t in TASKS}}


def _path(model, method="mgda", **cfg):
    return step_lib.make_train_step(
        model, TASKS, weighting.get(method), optax.sgd(1.0), step_lib.StepConfig(**{"input_key": "image", **cfg})
    ).gradient_path


def test_paths_follow_the_declared_capabilities():
    hps = mtl.build(TASKS, encoder="mlp", encoder_kwargs={"features": (8,)})
    assert _path(hps) == "factored_jacobian"
    assert (
        _path(
            mtl.build(TASKS, encoder="mlp", encoder_kwargs={"features": (8,)}, relation=True, head_kwargs={"hidden": 4})
        )
        == "param_jacobian"
    )
    assert _path(hps, jacobian_mode="representation") == "representation_jacobian"
    assert _path(hps, "equal") == "loss_level"
    assert _path(mtl.build(TASKS, encoder="mlp", arch="independent")) == "nothing_shared"
    assert _path(Declared()) == "factored_jacobian"
    assert _path(Declared(separable=False)) == "param_jacobian"
    assert _path(hps, "auto_lambda") == "bilevel"


@pytest.mark.parametrize("method", ["mgda", "pcgrad"])
def test_factored_path_on_a_declared_model_equals_the_whole_model_path(method):
    batch = _batch()
    results = []
    for separable in (True, False):
        model = Declared(separable=separable)
        w = weighting.get(method)
        state = step_lib.init_state(model, w, optax.sgd(1.0), batch["image"], 3, 0)
        new, _ = jax.jit(
            step_lib.make_train_step(model, TASKS, w, optax.sgd(1.0), step_lib.StepConfig(input_key="image"))
        )(state, batch)
        results.append(new.params)
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
