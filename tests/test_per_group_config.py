"""``config.weighting.per_group``: the trainer runs the scheme on each parameter group's columns
(jmtl.weighting.per_group, itself tested against hand-sliced groups in tests/test_per_group.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import toy_config

from jmtl import weighting
from jmtl.drivers import ablation
from jmtl.training import builders
from jmtl.training.loop import train


def _config(tmp_path, per_group: str, name: str = "upgrad"):
    return toy_config(
        tmp_path,
        num_steps=6,
        eval_every_steps=6,
        log_every_steps=3,
        parallel="single",
        **{"weighting.name": name, "weighting.per_group": per_group},
    )


def test_per_group_builds_the_grouped_scheme(tmp_path):
    tasks = [None, None]  # upgrad reads no task field
    layout = (("['enc']['kernel']", (3, 4)), ("['enc']['bias']", (4,)), ("['out']['kernel']", (4, 2)))
    d = 12 + 4 + 8
    jac = jax.random.normal(jax.random.PRNGKey(0), (2, d))
    built = builders.weighting_from_config(_config(tmp_path, "layer"), tasks, 10)
    by_hand = weighting.per_group(weighting.get("upgrad"), "layer")
    assert built.requires == weighting.JACOBIAN
    inputs = weighting.JacobianInputs(losses=jnp.ones(2), jacobian=jac, layout=layout)
    got, _ = built.update(inputs, built.init(2, layout=layout))
    want, _ = by_hand.update(inputs, by_hand.init(2, layout=layout))
    np.testing.assert_allclose(np.asarray(got.direction), np.asarray(want.direction), rtol=1e-6, atol=1e-7)


def test_training_per_layer_differs_and_one_group_is_the_scheme_itself(tmp_path):
    params = {}
    for mode in ("", "all", "layer"):
        _, state = train(_config(tmp_path / f"d{mode}", mode), str(tmp_path / f"run{mode or 'none'}"))
        params[mode] = jax.tree_util.tree_leaves(jax.device_get(state.params))
    # 'all' = one group = upgrad on the whole Jacobian: the same training, to float tolerance.
    for a, b in zip(params[""], params["all"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # 'layer' changes the update (the toy's encoder has several layers): the config reached the step.
    assert any(not np.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(params[""], params["layer"]))


def test_per_group_refusals_and_inert_default(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'layer'"):
        builders.weighting_from_config(_config(tmp_path, "layr"), [None, None], 10)
    with pytest.raises(ValueError, match="'equal' is a losses-level scheme"):
        builders.weighting_from_config(_config(tmp_path, "layer", name="equal"), [None, None], 10)
    # A config recorded before the field existed keeps its grid / protocol key: '' is inert.
    c = _config(tmp_path, "")
    old = _config(tmp_path, "")
    del old.weighting["per_group"]
    assert ablation.grid_key(c, 1, None) == ablation.grid_key(old, 1, None)
    assert ablation.grid_key(_config(tmp_path, "layer"), 1, None) != ablation.grid_key(c, 1, None)
