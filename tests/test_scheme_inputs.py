"""Scheme inputs are typed per requirement: ``update(inputs, state)`` with one NamedTuple per
``requires``; no scheme swallows keywords, and a misspelt or misplaced input is an error."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmtl import weighting
from jmtl.weighting import base

JAC = jnp.asarray(np.random.default_rng(0).normal(size=(3, 7)), jnp.float32)
LOSSES = jnp.asarray([1.0, 0.5, 2.0], jnp.float32)


def test_no_registered_scheme_takes_a_keyword_bag():
    """Every scheme's ``update`` is ``(inputs, state)``: no ``**kwargs`` that would hide a typo."""
    for name in weighting.names():
        params = inspect.signature(weighting.get(name).update).parameters
        kinds = [p.kind for p in params.values()]
        assert inspect.Parameter.VAR_KEYWORD not in kinds, name
        assert list(params)[:2] == ["inputs", "state"], (name, list(params))


def test_each_requirement_has_its_own_inputs_type():
    assert base.INPUTS_BY_REQUIREMENT == {
        weighting.LOSSES: weighting.LossInputs,
        weighting.GRAMIAN: weighting.GramianInputs,
        weighting.JACOBIAN: weighting.JacobianInputs,
        weighting.BILEVEL: weighting.BilevelInputs,
        weighting.LAST_LAYER: weighting.LastLayerInputs,
    }
    assert "jacobian" not in weighting.GramianInputs._fields  # a Gramian scheme never sees J
    assert "gramian" not in weighting.LossInputs._fields
    for name in weighting.names():
        t = weighting.get(name)
        assert t.inputs_type is base.INPUTS_BY_REQUIREMENT[t.requires], name


def test_a_scheme_receives_exactly_its_requirements_fields():
    seen = {}

    def spy(requires):
        def update(inputs, state):
            seen[requires] = inputs
            return base.weights_output(jnp.ones_like(inputs.losses)), state

        return weighting.WeightingTransform(base.stateless_init, update, requires)

    available = dict(jacobian=JAC, gramian=JAC @ JAC.T, layout=(("w", (7,)),), key=jax.random.key(0), step=3)
    for req in (weighting.LOSSES, weighting.GRAMIAN, weighting.JACOBIAN):
        weighting.update_from(spy(req), LOSSES, (), **available)
    assert type(seen["losses"]) is weighting.LossInputs and seen["losses"].step == 3
    assert type(seen["gramian"]) is weighting.GramianInputs
    np.testing.assert_array_equal(seen["gramian"].gramian, JAC @ JAC.T)
    assert type(seen["jacobian"]) is weighting.JacobianInputs and seen["jacobian"].layout == (("w", (7,)),)


def test_apply_refuses_an_input_the_requirement_lacks_naming_the_valid_ones():
    mgda = weighting.get("mgda")  # requires='gramian'
    with pytest.raises(TypeError, match=r"takes no 'jacobain'.*GramianInputs"):
        mgda.apply(LOSSES, mgda.init(3), jacobain=JAC)
    with pytest.raises(TypeError, match=r"takes no 'layout'"):
        mgda.apply(LOSSES, mgda.init(3), gramian=JAC @ JAC.T, layout=())
    with pytest.raises(TypeError, match=r"needs gramian= \(or jacobian=\)"):
        mgda.apply(LOSSES, mgda.init(3))
    eq = weighting.get("equal")
    with pytest.raises(TypeError, match=r"requires='losses' scheme takes no 'jacobian'"):
        eq.apply(LOSSES, eq.init(3), jacobian=JAC)
    with pytest.raises(TypeError, match=r"no weighting scheme takes 'jacobain'"):
        weighting.update_from(eq, LOSSES, eq.init(3), jacobain=JAC)


def test_apply_forms_the_gramian_of_a_given_jacobian():
    mgda = weighting.get("mgda")
    from_j, _ = mgda.apply(LOSSES, mgda.init(3), jacobian=JAC)
    from_g, _ = mgda.update(weighting.GramianInputs(LOSSES, jnp.matmul(JAC, JAC.T, precision="highest")), mgda.init(3))
    np.testing.assert_array_equal(from_j.weights, from_g.weights)
    # and the closed form of MGDA at K = 2: alpha_1 = clip((g2 - g1).g2 / |g1 - g2|^2, 0, 1)
    g = np.asarray(JAC[:2], np.float64)
    a = np.clip((g[1] - g[0]) @ g[1] / np.sum((g[0] - g[1]) ** 2), 0.0, 1.0)
    w = mgda.apply(LOSSES[:2], mgda.init(2), jacobian=JAC[:2])[0].weights
    np.testing.assert_allclose(np.asarray(w), [a, 1 - a], rtol=1e-4, atol=1e-5)
