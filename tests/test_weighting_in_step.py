"""Every registered scheme runs inside the real jitted train step and trains a small model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmtl import weighting
from jmtl.models import mtl
from jmtl.tasks import Task
from jmtl.training import builders
from jmtl.training import step as step_lib

K = 5  # Krum needs K >= 2f + 3
TASKS = tuple(Task(f"t{i}", "regression", 2) for i in range(K))


def _data(seed=0, n=32):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    batch = {"x": jnp.asarray(x)}
    for i in range(K):
        w = np.random.default_rng(100 + i).normal(size=(6, 2))
        batch[f"t{i}"] = jnp.asarray(np.tanh(x @ w) * (1 + i), jnp.float32)
    return batch


@pytest.mark.parametrize("name", weighting.names())
def test_scheme_trains_in_the_jitted_step(name):
    model = mtl.build(TASKS, encoder="mlp", encoder_kwargs=dict(features=(16, 16)), head_kwargs=dict(hidden=8))
    transform = builders.weighting(name, {}, TASKS, steps_per_epoch=3, learning_rate=1e-2)
    opt = optax.adam(1e-2)
    state = step_lib.init_state(model, transform, opt, jnp.zeros((1, 6)), K, seed=0)
    modes = ["params"] + (["representation"] if transform.requires != "losses" and transform.rep_level_ok else [])
    for mode in modes:
        fn = jax.jit(step_lib.make_train_step(model, TASKS, transform, opt, step_lib.StepConfig(input_key="x", jacobian_mode=mode)))
        s = state
        first = None
        for i in range(12):
            batch = _data(i % 3)
            if transform.requires == weighting.BILEVEL:  # the upper level's batch, from other data
                batch.update({step_lib.META_PREFIX + key: v for key, v in _data(10 + i % 3).items()})
            s, m = fn(s, batch)
            assert bool(m["finite"]), (name, mode, i, m["losses"])
            first = m["losses"] if first is None else first
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(s.params))
        assert float(jnp.sum(m["losses"])) < float(jnp.sum(first)), (name, mode)
