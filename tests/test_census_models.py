"""The Census-Income (MMoE paper) models: OMoE's and MMoE's definitions against float64 hand
computations (one gate for all tasks vs one gate per task), OMoE's params placement and its
one-expert limit, and the census grid's per-architecture sizes (synthetic inputs only)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import census_grid
from experiments.configs import census_common, census_income_marital
from jmtl.models import architectures, mtl
from jmtl.tasks import Task

# Tiny programs compiled once each: XLA's optimisation passes cost more than they save.
pytestmark = pytest.mark.usefixtures("xla_optimizations_off")


D_IN, E, H, T = 6, 3, 4, 5  # input size, experts, expert width, tower width
TASKS = (Task("a", "binary", 1), Task("b", "binary", 1))


def _model(arch: str, num_experts: int = E, expert_width: int = H):
    return mtl.build(
        TASKS,
        encoder="mlp",
        encoder_kwargs=dict(features=(expert_width,)),
        head_kwargs=dict(hidden=T, dropout_rate=0.0),
        arch=arch,
        arch_kwargs=dict(num_experts=num_experts),
    )


def _x(n: int = 7, seed: int = 0) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, D_IN)), jnp.float32)


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _relu(a):
    return np.maximum(a, 0.0)


def _softmax(a):
    a = a - a.max(-1, keepdims=True)
    e = np.exp(a)
    return e / e.sum(-1, keepdims=True)


def _expert(p, x):
    d = p["Dense_0"]
    return _relu(x @ d["kernel"] + d["bias"])


def _head(p, y):
    return _relu(y @ p["body"]["kernel"] + p["body"]["bias"]) @ p["out"]["kernel"] + p["out"]["bias"]


def _perturb(params, seed: int = 1):
    """Moves every param off its initial value (Flax zero-inits the biases: a hand computation
    would not notice a missing bias otherwise)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(tree, [l + 0.3 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


def test_omoe_is_one_gate_mixture_shared_by_all_tasks():
    """OMoE: every head reads y = sum_i g(x)_i f_i(x), g = softmax(W x) the SAME for all tasks."""
    model = _model("omoe")
    x = _x()
    params = _perturb(model.init(jax.random.PRNGKey(0), x)["params"])
    out = model.apply({"params": params}, x)
    p, xn = _np(params), np.asarray(x, np.float64)
    assert set(p) == {"shared", "tasks"}  # experts and the gate are shared: no per-task gates
    assert set(p["shared"]) == {"experts", "gate"}
    f = np.stack([_expert(p["shared"]["experts"][f"expert_{i}"], xn) for i in range(E)], axis=1)  # [B, E, H]
    g = _softmax(xn @ p["shared"]["gate"]["logits"]["kernel"])  # [B, E]: one gate
    assert "bias" not in p["shared"]["gate"]["logits"]  # eq. 5: no bias
    y = np.einsum("be,beh->bh", g, f)
    for t in TASKS:
        np.testing.assert_allclose(np.asarray(out[t.name]), _head(p["tasks"][t.name], y), rtol=1e-4, atol=1e-5)
    # The shared representation is y itself (MGDA-UB's Z).
    rep = model.apply({"params": params}, x, method=model.encode)
    np.testing.assert_allclose(np.asarray(rep), y, rtol=1e-4, atol=1e-5)


def test_mmoe_has_one_gate_per_task():
    """MMoE: task k's head reads sum_i g_k(x)_i f_i(x) with its own gate g_k (Ma et al. eq. 7-8)."""
    model = _model("mmoe")
    x = _x()
    params = _perturb(model.init(jax.random.PRNGKey(0), x)["params"])
    out = model.apply({"params": params}, x)
    p, xn = _np(params), np.asarray(x, np.float64)
    experts = p["shared"]["level_0"]["shared_experts"]
    f = np.stack([_expert(experts[f"expert_{i}"], xn) for i in range(E)], axis=1)
    mixtures = []
    for t in TASKS:
        g = _softmax(xn @ p["gates"][t.name]["level_0"]["logits"]["kernel"])
        y = np.einsum("be,beh->bh", g, f)
        mixtures.append(y)
        np.testing.assert_allclose(np.asarray(out[t.name]), _head(p["tasks"][t.name], y), rtol=1e-4, atol=1e-5)
    assert not np.allclose(mixtures[0], mixtures[1])  # two gates, two different mixtures


def test_omoe_equals_mmoe_when_every_task_gate_is_the_omoe_gate():
    """The one structural difference: copy OMoE's experts, gate and heads into MMoE, giving every
    task's gate OMoE's gate, and the outputs agree; change one task's gate and only that task moves."""
    omoe, mmoe = _model("omoe"), _model("mmoe")
    x = _x(9, seed=3)
    po = _perturb(omoe.init(jax.random.PRNGKey(0), x)["params"])
    pm = mmoe.init(jax.random.PRNGKey(0), x)["params"]
    pm = {
        "shared": {"level_0": {"shared_experts": po["shared"]["experts"]}},
        "gates": {t.name: {"level_0": po["shared"]["gate"]} for t in TASKS},
        "tasks": po["tasks"],
    }
    a, b = omoe.apply({"params": po}, x), mmoe.apply({"params": pm}, x)
    for t in TASKS:
        np.testing.assert_allclose(np.asarray(a[t.name]), np.asarray(b[t.name]), rtol=1e-5, atol=1e-6)
    pm["gates"]["b"] = {
        "level_0": {"logits": {"kernel": pm["gates"]["b"]["level_0"]["logits"]["kernel"] + 1.0 * _x(D_IN, 5)[:, :E]}}
    }
    c = mmoe.apply({"params": pm}, x)
    np.testing.assert_allclose(np.asarray(c["a"]), np.asarray(a["a"]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(c["b"]), np.asarray(a["b"]), atol=1e-4)


def test_omoe_with_one_expert_is_hard_sharing():
    omoe, hps = (
        _model("omoe", num_experts=1),
        mtl.build(
            TASKS,
            encoder="mlp",
            encoder_kwargs=dict(features=(H,)),
            head_kwargs=dict(hidden=T, dropout_rate=0.0),
            arch="hps",
        ),
    )
    x = _x()
    po = _perturb(omoe.init(jax.random.PRNGKey(0), x)["params"])
    ph = {"shared": po["shared"]["experts"]["expert_0"], "tasks": po["tasks"]}
    a, b = omoe.apply({"params": po}, x), hps.apply({"params": ph}, x)
    for t in TASKS:
        np.testing.assert_allclose(np.asarray(a[t.name]), np.asarray(b[t.name]), rtol=1e-5, atol=1e-6)


def test_omoe_refuses_no_experts():
    model = _model("omoe", num_experts=0)
    with pytest.raises(ValueError, match="num_experts must be >= 1"):
        model.init(jax.random.PRNGKey(0), _x())


# ----------------------------------------------------------------------------- the census grid's sizes


def _count(arch: str, d_in: int = 500) -> int:
    c = census_common.apply_arch(census_income_marital.get_config(), arch)
    model = mtl.build(
        TASKS,
        encoder=c.model.encoder,
        encoder_kwargs=c.model.encoder_kwargs.to_dict(),
        head_kwargs=c.model.head_kwargs.to_dict(),
        arch=arch,
        arch_kwargs=c.model.arch_kwargs.to_dict(),
    )
    x = jnp.zeros((2, d_in), jnp.float32)
    return architectures.count_params(model.init(jax.random.PRNGKey(0), x)["params"])


def test_census_architectures_build_with_comparable_sizes():
    """Every architecture of the grid builds at its census sizes, and the parameter counts on a
    500-wide one-hot input stay within 25% of MMoE's (the comparison is at about equal size)."""
    counts = {a: _count(a) for a in census_common.ARCH_SETTINGS}
    ref = counts["mmoe"]
    # By hand: 8 experts of 500x16 (+16 bias), 2 gates of 500x8, 2 towers of 16x8+8 and 8x1+1.
    assert ref == 8 * (500 * 16 + 16) + 2 * 500 * 8 + 2 * (16 * 8 + 8 + 8 + 1)
    for arch, n in counts.items():
        assert 0.75 * ref <= n <= 1.25 * ref, (arch, n, ref)


def test_census_grid_cells_carry_each_architectures_sizes():
    config = census_income_marital.get_config()
    cells = dict(
        census_grid.cells_for(config, ["equal", "mgda"], ["hps", "omoe", "cgc"], ["income", "marital"], 3, True)
    )
    assert list(cells) == [
        "single_task__income",
        "single_task__marital",
        "hps__equal",
        "hps__mgda",
        "omoe__equal",
        "omoe__mgda",
        "cgc__equal",
        "cgc__mgda",
    ]
    assert cells["single_task__income"].model.arch == "hps"
    assert tuple(cells["single_task__income"].model.encoder_kwargs.features) == (census_common.BOTTOM_UNITS,)
    assert dict(cells["single_task__income"].model.arch_kwargs) == {}
    assert dict(cells["omoe__mgda"].model.arch_kwargs) == {"num_experts": census_common.NUM_EXPERTS}
    assert cells["omoe__mgda"].weighting.name == "mgda" and cells["omoe__mgda"].num_seeds == 3
    assert dict(cells["cgc__equal"].model.arch_kwargs) == {"num_shared_experts": 2, "num_task_experts": 3}
    assert tuple(cells["cgc__equal"].model.encoder_kwargs.features) == (census_common.EXPERT_UNITS,)
    with pytest.raises(ValueError, match="no census sizes"):
        census_common.apply_arch(config, "mtan")


def test_loop_evaluator_gives_each_seeds_auc():
    """The loop's evaluator with seeds trained together (what the census grid reports): every seed's
    split AUC, from its own slice of the stacked params, equals a brute-force pair count (ties 1/2)."""
    from jmtl.training import loop, parallel
    from jmtl.training.step import StepConfig

    model = _model("omoe")
    x = _x(40, seed=7)
    rng = np.random.default_rng(0)
    labels = {t.name: rng.integers(0, 2, size=40).astype(np.int32) for t in TASKS}
    arrays = {"x": np.asarray(x), **labels}
    seeds = [_perturb(model.init(jax.random.PRNGKey(s), x)["params"], seed=s + 1) for s in range(2)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *seeds)
    ev = loop.InMemoryEvaluator(
        {"validation": arrays, "test": arrays},
        TASKS,
        StepConfig(input_key="x"),
        model,
        16,
        parallel.Driver("single"),
        loop.SeedAxis(0, 2),
    )  # several batches per split
    results = ev(stacked, ("test",))
    for i, p in enumerate(seeds):
        out = model.apply({"params": p}, x)
        for t in TASKS:
            score = np.asarray(out[t.name], np.float64).reshape(-1)
            y = labels[t.name]
            pos, neg = score[y == 1], score[y == 0]
            brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
                len(pos) * len(neg)
            )
            np.testing.assert_allclose(results[i]["test"][t.name]["auc"], brute, rtol=1e-6)
    assert results[0]["test"]["a"]["auc"] != results[1]["test"]["a"]["auc"]  # each seed its own params


def test_census_grid_selects_on_the_main_task_auc():
    """--select_on=income: the best evaluation is the one with the highest income validation AUC,
    whatever the mean accuracy says; a cell without income (single-task marital) uses its own AUC."""
    from experiments.census_grid import SelectOnAUC
    from jmtl.tasks import Task

    class Inner:  # the loop's selection: mean validation accuracy
        def score(self, validation):
            return sum(v["accuracy"] for v in validation.values()) / len(validation)

    evals = [
        {"income": {"auc": 0.90, "accuracy": 0.99}, "marital": {"auc": 0.99, "accuracy": 0.99}},
        {"income": {"auc": 0.95, "accuracy": 0.90}, "marital": {"auc": 0.98, "accuracy": 0.90}},
    ]
    tasks = [Task("income", "binary", 1), Task("marital", "binary", 1)]
    pick = lambda w: max(range(len(evals)), key=lambda i: w.score(evals[i]))
    assert pick(SelectOnAUC(Inner(), tasks, "income")) == 1 and pick(Inner()) == 0
    single = SelectOnAUC(Inner(), tasks[1:], "income")
    assert single.score({"marital": {"auc": 0.97, "accuracy": 0.5}}) == 0.97
