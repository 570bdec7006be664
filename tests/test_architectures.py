"""The architecture zoo: shapes, the params contract (who receives gradient from whom), known
equivalences, the regularizers, and the train step (jit, and shard_map on 2 devices in a subprocess).

Run as a script (``python tests/test_architectures.py``) it is the subprocess of
:func:`test_shard_map_step_matches_single_device` (2 forced CPU devices).
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmtl import weighting
from jmtl.models import architectures, encoders, mtl, regularizers, stages
from jmtl.models import heads as heads_lib
from jmtl.tasks import Task
from jmtl.training import step as step_lib

# hps first; architectures built for one encoder (mtan_segnet) are tested with it (test_vision_models.py).
ARCHS = tuple(a for a in architectures.NAMES if a not in architectures.ENCODER_SPECIFIC)
NO_SHARED = ("independent", "soft_sharing")
REP_OK = ("hps", "omoe", "mmoe", "dselect_k")  # architectures with a shared representation (MGDA-UB)
D_IN = 5


# These tests compile dozens of tiny programs once each: XLA's optimisation passes cost far more than
# they save here (about half the file's time).
pytestmark = pytest.mark.usefixtures("xla_optimizations_off")


def _tasks(k: int, kind: str = "regression") -> tuple[Task, ...]:
    return tuple(Task(f"t{i}", kind, 1 if kind == "regression" else 10) for i in range(k))


def _tiny(arch: str, k: int = 3, relation: bool = False, **arch_kwargs):
    """A small MLP-encoder model (2 stages of 8 units, 4-unit heads: relation-compatible). Learning
    to branch gets 2 root nodes, so the task leaves have parents to choose from."""
    tasks = _tasks(k)
    if arch == "learning_to_branch":
        arch_kwargs.setdefault("widths", (2, k))
    model = mtl.build(
        tasks,
        encoder="mlp",
        encoder_kwargs=dict(features=(8, 8)),
        head_kwargs=dict(hidden=4),
        relation=relation,
        arch=arch,
        arch_kwargs=arch_kwargs,
    )
    return tasks, model


def _rngs(seed: int = 0) -> dict:
    return {"params": jax.random.PRNGKey(seed), "dropout": jax.random.PRNGKey(seed + 1)}


def _batch(tasks, n: int = 16, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {"x": rng.normal(size=(n, D_IN)).astype(np.float32)}
    for t in tasks:
        out[t.name] = rng.normal(size=(n, 1)).astype(np.float32)
    return out


# ----------------------------------------------------------------------------- build / shapes


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_on_2_and_5_tasks_with_both_encoders(arch):
    for k in (2, 5):
        for enc, kw, x in (
            ("multi_lenet", dict(dropout_rate=0.5), jnp.zeros((3, 28, 28, 1))),
            ("mlp", dict(features=(16, 16)), jnp.zeros((3, 7))),
        ):
            tasks = _tasks(k, "classification")
            model = mtl.build(
                tasks, encoder=enc, encoder_kwargs=kw, head_kwargs=dict(hidden=6), arch=arch, relation=True
            )
            out, variables = jax.eval_shape(lambda: model.init_with_output(_rngs(), x, train=True))
            assert set(out) == {t.name for t in tasks}
            assert all(o.shape == (3, 10) for o in out.values()), (arch, k, enc)
            params = variables["params"]
            assert params["relation"].shape == (k, k)
            assert set(params["tasks"]) == {t.name for t in tasks}
            for key, sub in params.items():  # every non-shared subtree is keyed by task
                if key not in ("shared", "relation"):
                    assert set(sub) == {t.name for t in tasks}, (arch, key)
            assert ("shared" in params) == (arch not in NO_SHARED)


def test_hps_default_is_unchanged():
    tasks = _tasks(2)
    a = mtl.build(tasks, encoder="mlp", head_kwargs=dict(hidden=4))
    b = mtl.build(tasks, encoder="mlp", head_kwargs=dict(hidden=4), arch="hps", arch_kwargs={})
    assert type(a) is type(b) is mtl.MultiTaskModel
    pa = a.init(jax.random.PRNGKey(0), jnp.zeros((1, D_IN)))["params"]
    pb = b.init(jax.random.PRNGKey(0), jnp.zeros((1, D_IN)))["params"]
    assert jax.tree.structure(pa) == jax.tree.structure(pb)
    assert set(pa) == {"shared", "tasks"}


def test_build_errors():
    tasks = _tasks(2)
    with pytest.raises(ValueError, match="unknown arch 'nope'"):
        mtl.build(tasks, encoder="mlp", arch="nope")
    with pytest.raises(ValueError, match="unknown arch_kwargs bogus.*num_experts"):
        mtl.build(tasks, encoder="mlp", arch="mmoe", arch_kwargs=dict(bogus=1))
    with pytest.raises(ValueError, match="takes no arch_kwargs"):
        mtl.build(tasks, encoder="mlp", arch="hps", arch_kwargs=dict(num_experts=2))
    with pytest.raises(ValueError, match="end with the number of tasks"):
        mtl.build(
            tasks,
            encoder="mlp",
            encoder_kwargs=dict(features=(4, 4)),
            arch="learning_to_branch",
            arch_kwargs=dict(widths=(1, 3)),
        )
    # Regularizer keys configure the step's penalty, not the model.
    m = mtl.build(tasks, encoder="mlp", arch="hps", arch_kwargs=dict(mtrl_weight=0.1))
    assert isinstance(m, mtl.MultiTaskModel)


def test_config_defaults_to_hps():
    from experiments.configs import gradnorm_toy, multimnist

    for mod in (gradnorm_toy, multimnist):
        c = mod.get_config()
        assert c.model.arch == "hps" and c.model.arch_kwargs.to_dict() == {}


# ----------------------------------------------------------------------------- the params contract


# Every architecture at its defaults, plus the PLE placements that differ with depth: 3 levels
# (task gates of level 0 feed the shared path) and 3 levels without task experts (no task gate does).
CONTRACT_CASES = [(a, {}) for a in ARCHS] + [
    ("ple", dict(num_levels=3)),
    ("ple", dict(num_levels=3, num_task_experts=0, num_shared_experts=2)),
]


@pytest.mark.parametrize(
    "arch,arch_kwargs", CONTRACT_CASES, ids=[a + "".join(f"-{k}{v}" for k, v in kw.items()) for a, kw in CONTRACT_CASES]
)
def test_shared_subtree_is_exactly_what_several_tasks_reach(arch, arch_kwargs):
    """Per-task gradients (jacrev of the K losses): a leaf under 'shared' gets gradient from >= 2
    tasks; a leaf of a task-keyed subtree only from its own task; row i of W only from task i.
    Also: with W = I the model equals the one without W, and a permutation W changes the outputs."""
    tasks, model = _tiny(arch, k=3, relation=True, **arch_kwargs)
    _, plain = _tiny(arch, k=3, **arch_kwargs)
    params = model.init(_rngs(), jnp.zeros((2, D_IN)), train=False)["params"]
    batch = _batch(tasks)
    names = [t.name for t in tasks]

    @jax.jit
    def run(p):
        def losses(q):
            out = model.apply({"params": q}, batch["x"], train=True, rngs={"dropout": jax.random.PRNGKey(7)})
            return jnp.stack([jnp.mean(t.loss(out[t.name], batch[t.name])) for t in tasks])

        perm = jnp.eye(3)[jnp.array([1, 2, 0])]
        return (
            jax.jacrev(losses)(p),  # leaves [K, ...]
            model.apply({"params": p}, batch["x"]),
            plain.apply({"params": {k: v for k, v in p.items() if k != "relation"}}, batch["x"]),
            model.apply({"params": {**p, "relation": perm}}, batch["x"]),
        )

    jac, with_w, without_w, permuted = run(params)
    for path, g in jax.tree_util.tree_flatten_with_path(jac)[0]:
        keys = [p.key for p in path]
        g = np.asarray(g)
        reached = [i for i in range(len(tasks)) if np.any(g[i] != 0)]
        where = jax.tree_util.keystr(path)
        assert reached, f"{arch}: {where} receives no gradient at all"
        if keys[0] == "shared":
            assert len(reached) >= 2, f"{arch}: {where} is under 'shared' but only task(s) {reached} reach it"
        elif keys[0] == "relation":
            for i in range(len(tasks)):
                assert not np.any(np.delete(g[i], i, axis=0)), f"{arch}: task {i} reaches rows of W other than {i}"
        else:
            owner = names.index(keys[1])
            assert reached == [owner], f"{arch}: {where} belongs to {keys[1]} but task(s) {reached} reach it"
    for n in names:
        np.testing.assert_allclose(with_w[n], without_w[n], rtol=1e-6, atol=1e-6)
    assert not np.allclose(permuted["t0"], with_w["t0"])


# ----------------------------------------------------------------------------- equivalences


@pytest.mark.parametrize(
    "enc,kw,x",
    [
        ("mlp", dict(features=(6, 5, 4)), np.random.default_rng(0).normal(size=(4, 7))),
        ("multi_lenet", dict(dropout_rate=0.5), np.random.default_rng(0).uniform(size=(4, 28, 28, 1))),
    ],
)
def test_stages_compose_to_the_encoder(enc, kw, x):
    encoder = encoders.get(enc, **kw)
    st = stages.stages_of(encoder)
    staged = stages.Staged(stages=st)
    p = encoder.init(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32))["params"]
    sp = stages.split_params(p, st)
    np.testing.assert_allclose(
        staged.apply({"params": sp}, jnp.asarray(x, jnp.float32)),
        encoder.apply({"params": p}, jnp.asarray(x, jnp.float32)),
        rtol=1e-6,
    )
    assert jax.tree.structure(stages.merge_params(sp)) == jax.tree.structure(p)


def _lenet(arch, **arch_kwargs):
    tasks = (Task("left", "classification", 10), Task("right", "classification", 10))
    return tasks, mtl.build(
        tasks, encoder="multi_lenet", head_kwargs=dict(hidden=50), arch=arch, arch_kwargs=arch_kwargs
    )


def test_cross_stitch_at_identity_equals_independent_towers():
    tasks, ind = _lenet("independent")
    _, cs = _lenet("cross_stitch", self_weight=1.0)  # alpha = I exactly
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(4, 28, 28, 1)), jnp.float32)
    p_ind = ind.init(jax.random.PRNGKey(0), x)["params"]
    p_cs = cs.init(jax.random.PRNGKey(1), x)["params"]
    np.testing.assert_array_equal(p_cs["shared"]["stitch_0"]["alpha"], np.eye(2))
    st = stages.stages_of(encoders.MultiLeNet())
    p_cs = {
        "shared": {
            **p_cs["shared"],
            "towers": {n: stages.split_params(p_ind["towers"][n], st) for n in p_ind["towers"]},
        },
        "tasks": p_ind["tasks"],
    }
    a, b = ind.apply({"params": p_ind}, x), cs.apply({"params": p_cs}, x)
    for t in tasks:
        np.testing.assert_allclose(a[t.name], b[t.name], rtol=1e-5, atol=1e-6)
    # The paper's init (0.9 / 0.1) mixes: different outputs from the same towers.
    _, cs09 = _lenet("cross_stitch")
    c = cs09.apply(
        {
            "params": {
                **p_cs,
                "shared": {
                    **p_cs["shared"],
                    **{f"stitch_{i}": {"alpha": jnp.array([[0.9, 0.1], [0.1, 0.9]])} for i in range(3)},
                },
            }
        },
        x,
    )
    assert not np.allclose(a["left"], c["left"])


def test_mmoe_with_one_expert_equals_hps():
    tasks, hps = _lenet("hps")
    _, mmoe = _lenet("mmoe", num_experts=1)
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(4, 28, 28, 1)), jnp.float32)
    p_hps = hps.init(jax.random.PRNGKey(0), x)["params"]
    p_moe = mmoe.init(jax.random.PRNGKey(1), x)["params"]
    p_moe = {**p_moe, "shared": {"level_0": {"shared_experts": {"expert_0": p_hps["shared"]}}}, "tasks": p_hps["tasks"]}
    a, b = hps.apply({"params": p_hps}, x), mmoe.apply({"params": p_moe}, x)
    for t in tasks:
        np.testing.assert_allclose(a[t.name], b[t.name], rtol=1e-5, atol=1e-6)


def test_moe_encode_decode_compose_and_other_archs_refuse():
    for arch in ARCHS:
        tasks, model = _tiny(arch, k=2)
        x = jnp.asarray(_batch(tasks)["x"])
        params = model.init(_rngs(), x)["params"]
        if arch in REP_OK:
            rep = model.apply({"params": params}, x, method=model.encode)
            out = model.apply({"params": params}, rep, method=model.decode)
            ref = model.apply({"params": params}, x)
            for t in tasks:
                np.testing.assert_allclose(out[t.name], ref[t.name], rtol=1e-6)
        else:
            with pytest.raises(ValueError, match="no single shared representation"):
                model.apply({"params": params}, x, method=model.encode)


def test_dselect_gate_is_a_distribution_and_selects_at_most_k():
    from jmtl.models import moe

    for n in (3, 4):
        gate = moe.DSelectGate(num_experts=n, k=2, gamma=1.0)
        x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)), jnp.float32)
        p = gate.init(jax.random.PRNGKey(0), x)["params"]
        w = gate.apply({"params": p}, x)
        assert w.shape == (6, n)
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
        assert np.all(w > 0)  # smooth region at init: every expert is reachable
        # Saturated z (|z| >= gamma/2): each selector is one-hot, so at most k experts are used.
        p = jax.tree.map(lambda a: a, p)
        p["z"]["bias"] = jnp.asarray(
            np.random.default_rng(n).choice([-3.0, 3.0], size=p["z"]["bias"].shape), jnp.float32
        )
        w = gate.apply({"params": p}, x)
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
        assert np.all((w > 1e-6).sum(-1) <= 2)
    np.testing.assert_allclose(
        moe.smooth_step(jnp.array([-1.0, -0.5, 0.0, 0.5, 1.0]), 1.0), [0, 0, 0.5, 1, 1], atol=1e-6
    )


def test_learning_to_branch_temperature_and_derived_tree():
    tasks, model = _tiny("learning_to_branch", k=2, temperature=1.0)
    x = jnp.asarray(_batch(tasks)["x"])
    params = model.init(_rngs(), x)["params"]
    params["towers"]["t1"]["parent_logits"] = jnp.array([0.0, 2.0])
    assert architectures.derived_tree(params, ["t0", "t1"]) == {"t0": 0, "t1": 1}
    rngs = {"dropout": jax.random.PRNGKey(3)}
    hot = model.apply({"params": params}, x, train=True, rngs=rngs, temperature=100.0)
    cold = model.apply({"params": params}, x, train=True, rngs=rngs, temperature=0.01)
    assert not np.allclose(hot["t1"], cold["t1"])
    sched = architectures.temperature_schedule(model)
    assert float(sched(0)) == 1.0 and float(sched(10**6)) == pytest.approx(model.min_temperature)
    fn = architectures.model_kwargs_fn(model)
    assert set(fn(jnp.asarray(3))) == {"temperature"}
    assert architectures.model_kwargs_fn(_tiny("hps")[1]) is None


def _dense(p, x):
    return np.asarray(x, np.float64) @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def _relu(x):
    return np.maximum(x, 0.0)


def _head(p, f):
    """RegressionHead(hidden) in float64: relu(body(f)) -> out."""
    return _dense(p["out"], _relu(_dense(p["body"], f)))


def test_learning_to_branch_evaluates_the_argmax_parents():
    """Evaluation runs the derived tree: every node reads its argmax parent alone. Truth: the tree
    composed by hand in float64 from the node params (3 stages: 2 roots, 2 middle nodes choosing
    among them, one leaf per task choosing among the middle nodes)."""
    tasks = _tasks(2)
    model = mtl.build(
        tasks,
        encoder="mlp",
        encoder_kwargs=dict(features=(6, 5, 4)),
        head_kwargs=dict(hidden=3),
        arch="learning_to_branch",
        arch_kwargs=dict(widths=(2, 2, 2)),
    )
    x = np.asarray(_batch(tasks)["x"])
    params = model.init(_rngs(), jnp.asarray(x))["params"]
    assert "parent_logits" not in params["shared"]["stage_0"]  # the roots have one parent: the input
    params["shared"]["stage_1"]["parent_logits"] = jnp.array([[0.0, 1.0], [3.0, 0.0]])  # node 0 <- 1, node 1 <- 0
    params["towers"]["t0"]["parent_logits"] = jnp.array([0.5, 0.0])  # t0 <- middle node 0
    params["towers"]["t1"]["parent_logits"] = jnp.array([0.0, 0.2])  # t1 <- middle node 1
    tree = architectures.derived_tree(params, ["t0", "t1"])
    assert tree == {"stage_1": [1, 0], "t0": 0, "t1": 1}

    sh = params["shared"]
    roots = [_relu(_dense(sh["stage_0"][f"node_{i}"]["Dense_0"], x)) for i in range(2)]
    middle = [_relu(_dense(sh["stage_1"][f"node_{i}"]["Dense_1"], roots[tree["stage_1"][i]])) for i in range(2)]
    out = model.apply({"params": params}, jnp.asarray(x), train=False)
    for n in ("t0", "t1"):
        leaf = _relu(_dense(params["towers"][n]["node"]["Dense_2"], middle[tree[n]]))
        np.testing.assert_allclose(out[n], _head(params["tasks"][n], leaf), rtol=1e-5, atol=1e-6)
    # The other parents do not matter in evaluation: perturbing the unchosen root changes nothing.
    moved = jax.tree.map(lambda a: a, params)
    moved["shared"]["stage_0"]["node_0"]["Dense_0"]["bias"] = (
        params["shared"]["stage_0"]["node_0"]["Dense_0"]["bias"] + 1.0
    )
    out_moved = model.apply({"params": moved}, jnp.asarray(x), train=False)
    # t0 <- middle 0 <- root 1 (unchanged); t1 <- middle 1 <- root 0 (moved).
    np.testing.assert_array_equal(out_moved["t0"], out["t0"])
    assert not np.allclose(out_moved["t1"], out["t1"])


# ----------------------------------------------------------------------------- user encoders


class _CompactEncoder(nn.Module):
    """A user encoder jmtl knows nothing about: one stage for the stage-wise architectures."""

    width: int = 6

    @nn.compact
    def __call__(self, x, *, train):
        del train
        return jnp.tanh(nn.Dense(self.width, name="proj")(x.reshape(x.shape[0], -1)))


class _SetupEncoder(nn.Module):
    width: int = 6

    def setup(self):
        self.proj = nn.Dense(self.width)

    def __call__(self, x, *, train: bool = False):
        return jnp.tanh(self.proj(x.reshape(x.shape[0], -1)))


def _user_model(arch, encoder, **kw):
    names = ("t0", "t1")
    heads = mtl.TaskHeads(names=names, heads=(heads_lib.RegressionHead(num_outputs=1, hidden=4),) * 2)
    return architectures.build(arch, encoder=encoder, heads=heads, **kw)


def _enc(p, x):
    return np.tanh(_dense(p["proj"], x))


@pytest.mark.parametrize("encoder", [_CompactEncoder(), _SetupEncoder()], ids=["compact", "setup"])
def test_cross_stitch_with_a_user_encoder(encoder):
    """One column per task, each its own copy of the user's encoder (not one shared instance);
    with stitch matrix alpha the output is head_i(sum_j alpha_ij enc_j(x)), composed by hand."""
    model = _user_model("cross_stitch", encoder)
    x = np.asarray(_batch(_tasks(2))["x"])
    params = model.init(_rngs(), jnp.asarray(x))["params"]
    towers = params["shared"]["towers"]
    assert set(towers) == {"t0", "t1"} and set(towers["t0"]) == {"stage_0"}
    assert not np.allclose(
        towers["t0"]["stage_0"]["encoder"]["proj"]["kernel"], towers["t1"]["stage_0"]["encoder"]["proj"]["kernel"]
    )
    alpha = np.array([[0.7, 0.3], [0.2, 0.8]], np.float32)
    params["shared"]["stitch_0"]["alpha"] = jnp.asarray(alpha)
    feats = [_enc(towers[n]["stage_0"]["encoder"], x) for n in ("t0", "t1")]
    out = model.apply({"params": params}, jnp.asarray(x))
    for i, n in enumerate(("t0", "t1")):
        mixed = alpha[i, 0] * feats[0] + alpha[i, 1] * feats[1]
        np.testing.assert_allclose(out[n], _head(params["tasks"][n], mixed), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("encoder", [_CompactEncoder(), _SetupEncoder()], ids=["compact", "setup"])
def test_mtan_and_learning_to_branch_with_a_user_encoder(encoder):
    """MTAN on a one-stage user encoder: a_k = sigmoid(g2(relu(g1(p)))) * p on the trunk's p =
    enc(x); learning to branch on one stage: each task's leaf is its own copy of the encoder.
    Both composed by hand."""
    x = np.asarray(_batch(_tasks(2))["x"])
    mtan = _user_model("mtan", encoder)
    params = mtan.init(_rngs(), jnp.asarray(x))["params"]
    p = _enc(params["shared"]["trunk"]["stage_0"]["encoder"], x)
    out = mtan.apply({"params": params}, jnp.asarray(x))
    for n in ("t0", "t1"):
        g = params["attention"][n]["stage_0"]
        mask = 1.0 / (1.0 + np.exp(-_dense(g["g2"], _relu(_dense(g["g1"], p)))))
        np.testing.assert_allclose(out[n], _head(params["tasks"][n], mask * p), rtol=1e-5, atol=1e-6)

    l2b = _user_model("learning_to_branch", encoder)
    params = l2b.init(_rngs(), jnp.asarray(x))["params"]
    leaves = {n: params["towers"][n]["node"]["encoder"] for n in ("t0", "t1")}
    assert not np.allclose(leaves["t0"]["proj"]["kernel"], leaves["t1"]["proj"]["kernel"])
    out = l2b.apply({"params": params}, jnp.asarray(x), train=False)
    for n in ("t0", "t1"):
        np.testing.assert_allclose(out[n], _head(params["tasks"][n], _enc(leaves[n], x)), rtol=1e-5, atol=1e-6)


def test_encoder_without_train_argument_is_refused_up_front():
    class NoTrain(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(x)

    for arch in ("hps", "cross_stitch", "mtan"):
        with pytest.raises(ValueError, match="NoTrain.__call__ has no `train` argument"):
            _user_model(arch, NoTrain())
    with pytest.raises(ValueError, match="must be a flax.linen Module"):
        _user_model("mtan", lambda x, train=False: x)


# ----------------------------------------------------------------------------- the capability


SEPARABLE = ("hps", "omoe", "mmoe", "dselect_k")  # without the relation matrix


def test_separable_heads_is_declared_and_decode_split_is_separable():
    """``separable_heads`` is readable on the unbound module and true exactly where task k's
    output depends on the representation only through reps[k]: checked on the Jacobian of every
    output w.r.t. every copy (zero off the diagonal, non-zero on it) and decode_split([rep]*K) ==
    decode(rep). Elsewhere decode_split refuses."""
    for arch in ARCHS:
        for relation in (False, True):
            tasks, model = _tiny(arch, k=2, relation=relation)
            assert model.scope is None  # unbound: before init
            assert model.separable_heads is (arch in SEPARABLE and not relation), (arch, relation)
            assert model.no_shared_params is (arch in NO_SHARED), arch
            if arch not in REP_OK:
                continue
            x = jnp.asarray(_batch(tasks, n=4)["x"])
            params = model.init(_rngs(), x)["params"]
            rep = model.apply({"params": params}, x, method=model.encode)
            if not model.separable_heads:
                with pytest.raises(ValueError, match="no separable heads"):
                    model.apply({"params": params}, [rep, rep], method=model.decode_split)
                continue

            @jax.jit
            def run(params, rep):
                def split(rs):
                    return model.apply({"params": params}, list(rs), method=model.decode_split)

                whole = model.apply({"params": params}, rep, method=model.decode)
                return whole, split((rep, rep)), jax.jacrev(split)((rep, rep))

            whole, split, jac = run(params, rep)
            for t in tasks:
                np.testing.assert_allclose(split[t.name], whole[t.name], rtol=1e-6, atol=1e-7)
            for i, t in enumerate(tasks):
                for j in range(2):
                    nonzero = bool(np.any(np.asarray(jac[t.name][j]) != 0))
                    assert nonzero == (i == j), (arch, t.name, j)
            with pytest.raises(ValueError, match="needs 2 representations"):
                model.apply({"params": params}, [rep], method=model.decode_split)


# ----------------------------------------------------------------------------- regularizers


def test_soft_sharing_penalties():
    tasks, model = _tiny("soft_sharing", k=3)
    params = model.init(_rngs(), jnp.zeros((1, D_IN)))["params"]
    towers = [params["towers"][t.name] for t in tasks]
    same = {**params, "towers": {t.name: towers[0] for t in tasks}}

    @jax.jit
    def values(p, same):
        l2, g_l2 = jax.value_and_grad(lambda q: regularizers.soft_sharing(q, "l2"))(p)
        moved = jax.tree.map(lambda q, g: q - 0.01 * g, p, g_l2)
        g_same = jax.grad(lambda q: regularizers.soft_sharing(q, "trace_norm"))(same)
        return (
            l2,
            regularizers.soft_sharing(p, "trace_norm"),
            regularizers.soft_sharing(moved, "l2"),
            regularizers.soft_sharing(same, "l2"),
            g_same,
        )

    l2, tn, l2_moved, l2_same, g_same = values(params, same)
    leaves = [jax.tree.leaves(t) for t in towers]
    expected = sum(
        float(np.sum((np.asarray(a) - np.asarray(b)) ** 2))
        for i in range(3)
        for j in range(i + 1, 3)
        for a, b in zip(leaves[i], leaves[j])
    )
    np.testing.assert_allclose(l2, expected, rtol=1e-5)
    nuclear = sum(
        np.linalg.svd(np.stack([np.ravel(l[i]) for l in leaves]), compute_uv=False).sum() for i in range(len(leaves[0]))
    )
    np.testing.assert_allclose(tn, nuclear, rtol=1e-4)
    assert float(l2_moved) < float(l2)  # the gradient pulls the towers together
    assert abs(float(l2_same)) < 1e-9  # identical towers: no penalty ...
    assert all(np.all(np.isfinite(l)) for l in jax.tree.leaves(g_same))  # ... and a finite trace-norm gradient


def test_mtrl_omega_and_penalty():
    tasks, model = _tiny("hps", k=4)
    params = model.init(_rngs(), jnp.zeros((1, D_IN)))["params"]
    theta = np.asarray(regularizers.mtrl_theta(params))
    assert theta.shape == (4, 4)  # [hidden * outputs, K]
    omega = np.asarray(regularizers.mtrl_omega(params, eps=1e-4))
    np.testing.assert_allclose(np.trace(omega), 1.0, rtol=1e-5)
    np.testing.assert_allclose(omega, omega.T, atol=1e-6)
    assert np.linalg.eigvalsh(omega).min() > 0
    lam, v = np.linalg.eigh(theta.T @ theta + 1e-4 * np.eye(4))
    root = (v * np.sqrt(lam)) @ v.T
    np.testing.assert_allclose(omega, root / np.trace(root), rtol=1e-4, atol=1e-6)
    # At the optimal Omega the penalty is (tr (Theta^T Theta)^(1/2))^2 and its gradient 2 Theta Omega^-1.
    np.testing.assert_allclose(
        regularizers.mtrl(params, 1e-4), np.trace(root) ** 2 - 1e-4 * np.trace(np.linalg.inv(omega)), rtol=1e-3
    )
    g = jax.grad(lambda p: regularizers.mtrl(p, 1e-4))(params)
    g_theta = np.stack([np.ravel(g["tasks"][t.name]["out"]["kernel"]) for t in tasks], axis=1)
    np.testing.assert_allclose(g_theta, 2 * theta @ np.linalg.inv(omega), rtol=1e-3, atol=1e-5)
    assert not np.any(np.asarray(jax.tree.leaves(g["shared"])[0]))


def test_penalty_from_config():
    assert regularizers.from_config("hps", {}) is None
    assert regularizers.from_config("independent", {}) is None
    tasks, soft = _tiny("soft_sharing", k=2)
    params = soft.init(_rngs(), jnp.zeros((1, D_IN)))["params"]
    fn = regularizers.from_config("soft_sharing", {})
    np.testing.assert_allclose(fn(params), 1e-2 * regularizers.soft_sharing(params, "l2"), rtol=1e-6)
    fn = regularizers.from_config("soft_sharing", dict(penalty="trace_norm", penalty_weight=0.5, mtrl_weight=0.1))
    np.testing.assert_allclose(
        fn(params), 0.5 * regularizers.soft_sharing(params, "trace_norm") + 0.1 * regularizers.mtrl(params), rtol=1e-5
    )
    with pytest.raises(ValueError, match="per-task towers"):
        regularizers.from_config("mmoe", dict(penalty="l2", penalty_weight=1.0))


# ----------------------------------------------------------------------------- the train step


def _method(arch: str) -> str:
    # MGDA exercises the per-task Jacobian over params['shared']; with nothing shared, equal weighting.
    return "equal" if arch in NO_SHARED else "mgda"


def _run_steps(arch, method, steps=2, mode="params", k=3, **arch_kwargs):
    tasks, model = _tiny(arch, k=k, **arch_kwargs)
    t, opt = weighting.get(method), optax.adam(1e-2)
    state = step_lib.init_state(model, t, opt, jnp.zeros((1, D_IN)), len(tasks), seed=0)
    cfg = step_lib.StepConfig(input_key="x", jacobian_mode=mode)
    fn = jax.jit(step_lib.make_train_step(model, tasks, t, opt, cfg))
    init = state.params
    for i in range(steps):
        state, metrics = fn(state, _batch(tasks, n=8, seed=i))
    return init, state, metrics


def test_jitted_step_and_shard_map_step_for_every_architecture(script_runner):
    """Every architecture trains under make_train_step + jax.jit (MGDA where something is shared):
    finite, every param moves; and a step under Driver('shard_map') on 2 forced CPU devices (a
    subprocess, run concurrently) give the same params."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        # run_script resolves tests/scripts/<name>; this module is its own script.
        sub = pool.submit(
            script_runner,
            "../test_architectures.py",
            devices=2,
            # 2-3 min on a quiet 2-core machine; it timed out at 300 s in a CI run whose cores were
            # shared with another pytest worker and a load average of ~15.
            timeout=900,
            env={"JAX_DISABLE_MOST_OPTIMIZATIONS": "1"},
        )
        single = {}
        for arch in ARCHS:
            init, state, metrics = _run_steps(arch, _method(arch), steps=1, k=2)
            assert bool(metrics["finite"]), arch
            moved = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), state.params, init)
            assert all(m > 0 for m in jax.tree.leaves(moved)), arch
            single[arch] = state.params
        out = sub.result()
    assert out["device_count"] == 2
    for arch, params in single.items():
        got = out["runs"][arch]
        assert got is not None, arch
        leaves = [np.asarray(l, np.float32) for l in got]
        assert all(np.all(np.isfinite(l)) for l in leaves), arch
        if arch == "learning_to_branch":  # Gumbel noise is drawn per device, like dropout: no exact match
            continue
        for a, b in zip(leaves, jax.tree.leaves(params)):
            np.testing.assert_allclose(a, np.asarray(b), rtol=2e-4, atol=2e-5, err_msg=arch)


def test_representation_mode_refused_without_a_shared_representation():
    with pytest.raises(ValueError, match="no single shared representation"):
        _run_steps("mtan", "mgda", mode="representation")


@pytest.mark.parametrize("mode", ["representation", "params"])
def test_mmoe_mgda_step_matches_the_update_computed_by_hand(mode):
    """One SGD step of MGDA on MMoE (K = 2) against the update composed by hand: per-task losses
    differentiated with jax.jacrev (w.r.t. the representation, or the shared params), the
    Gramian, MGDA's closed form for two tasks (Sener & Koltun, Alg. 1: gamma = (G22 - G12) /
    (G11 + G22 - 2 G12) clipped to [0, 1]), then the shared params move along w^T J (in
    representation mode a vjp of w^T J_rep through the encoder) and every task-specific param
    along its own task's gradient."""
    lr = 0.1
    tasks, model = _tiny("mmoe", k=2)
    t, opt = weighting.get("mgda"), optax.sgd(lr)
    state = step_lib.init_state(model, t, opt, jnp.zeros((1, D_IN)), 2, seed=0)
    fn = jax.jit(step_lib.make_train_step(model, tasks, t, opt, step_lib.StepConfig(input_key="x", jacobian_mode=mode)))
    batch = _batch(tasks, n=8, seed=4)
    x = jnp.asarray(batch["x"])
    params = state.params
    shared, rest = params["shared"], {k: v for k, v in params.items() if k != "shared"}

    def losses(out):
        return jnp.stack([jnp.mean(tk.loss(out[tk.name], batch[tk.name])) for tk in tasks])

    def encode(sh):
        return model.apply({"params": {**rest, "shared": sh}}, x, method=model.encode)

    def decoded_losses(rep, r):
        return losses(model.apply({"params": {**r, "shared": shared}}, rep, method=model.decode))

    def full_losses(sh, r):
        return losses(model.apply({"params": {**r, "shared": sh}}, x))

    with jax.default_matmul_precision("highest"):
        if mode == "representation":
            rep, encoder_vjp = jax.vjp(encode, shared)
            jac = jax.jacrev(decoded_losses)(rep, rest).reshape(2, -1)  # [K, B * D]
        else:
            rows = jax.jacrev(full_losses)(shared, rest)  # leaves [K, ...]
            jac = jnp.concatenate([l.reshape(2, -1) for l in jax.tree.leaves(rows)], axis=1)  # [K, d]
        g = np.asarray(jac @ jac.T, np.float64)
        gamma = float(np.clip((g[1, 1] - g[0, 1]) / (g[0, 0] + g[1, 1] - 2 * g[0, 1]), 0.0, 1.0))
        assert 0.05 < gamma < 0.95  # both tasks' gradients matter in this case
        w = jnp.array([gamma, 1.0 - gamma], jnp.float32)
        if mode == "representation":
            (g_shared,) = encoder_vjp((w @ jac).reshape(rep.shape))
        else:
            g_shared = jax.tree.map(lambda l: jnp.tensordot(w, l, axes=1), rows)
        g_rest = jax.grad(lambda r: jnp.sum(full_losses(shared, r)))(rest)  # each task-specific param: own task's
    expected = {
        **jax.tree.map(lambda p, gi: p - lr * gi, rest, g_rest),
        "shared": jax.tree.map(lambda p, gi: p - lr * gi, shared, g_shared),
    }

    new, metrics = fn(state, batch)
    assert jax.tree.structure(new.params) == jax.tree.structure(expected)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(new.params)[0], jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    np.testing.assert_allclose(metrics["objective"], float(w @ full_losses(shared, rest)), rtol=1e-5)


def test_experiments_train_with_an_architecture(tmp_path):
    from experiments.configs import gradnorm_toy
    from jmtl.training import loop as train_lib

    c = gradnorm_toy.get_config()
    c.model.arch = "cross_stitch"
    c.num_steps, c.eval_every_steps, c.log_every_steps = 2, 2, 1
    c.parallel, c.progress_bar = "single", False
    summary, state = train_lib.train(c, str(tmp_path))
    assert summary["steps"] == 2 and "stitch_0" in state.params["shared"]


def test_step_adds_the_soft_sharing_penalty():
    tasks, model = _tiny("soft_sharing", k=2)
    t, opt = weighting.get("equal"), optax.sgd(0.1)
    state = step_lib.init_state(model, t, opt, jnp.zeros((1, D_IN)), 2, seed=0)
    pen = regularizers.from_config("soft_sharing", dict(penalty_weight=0.3))
    fn = jax.jit(step_lib.make_train_step(model, tasks, t, opt, step_lib.StepConfig(input_key="x", penalties=(pen,))))
    batch = _batch(tasks)

    def objective(p):
        out = model.apply({"params": p}, batch["x"], train=True)
        return sum(jnp.mean(tk.loss(out[tk.name], batch[tk.name])) for tk in tasks) + pen(p)

    g = jax.grad(objective)(state.params)
    new, metrics = fn(state, batch)
    for a, b in zip(
        jax.tree.leaves(new.params), jax.tree.leaves(jax.tree.map(lambda p, gi: p - 0.1 * gi, state.params, g))
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["objective"], objective(state.params), rtol=1e-5)


def test_gradient_scheme_on_a_model_with_nothing_shared_is_the_plain_sum():
    _, a, _ = _run_steps("independent", "mgda", steps=1, k=2)
    _, b, _ = _run_steps("independent", "equal", steps=1, k=2)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_step_passes_the_branching_temperature():
    tasks, model = _tiny("learning_to_branch", k=2, temperature=3.0, temperature_decay=0.5, temperature_decay_steps=1)
    t, opt = weighting.get("equal"), optax.sgd(0.1)
    state = step_lib.init_state(model, t, opt, jnp.zeros((1, D_IN)), 2, seed=0)
    cfg = step_lib.StepConfig(input_key="x", model_kwargs=architectures.model_kwargs_fn(model))
    fn = jax.jit(step_lib.make_train_step(model, tasks, t, opt, cfg))
    state = state._replace(step=jnp.asarray(2, jnp.int32))  # tau = 3 * 0.5^2
    batch = _batch(tasks)
    _, dropout_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))  # as the step draws it

    def objective(p):
        out = model.apply({"params": p}, batch["x"], train=True, rngs={"dropout": dropout_rng}, temperature=0.75)
        return sum(jnp.mean(tk.loss(out[tk.name], batch[tk.name])) for tk in tasks)

    g = jax.jit(jax.grad(objective))(state.params)
    new, _ = fn(state, batch)
    for a, b in zip(
        jax.tree.leaves(new.params), jax.tree.leaves(jax.tree.map(lambda p, gi: p - 0.1 * gi, state.params, g))
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- subprocess (2 devices)


def _driver_main() -> None:
    """One step of every architecture under Driver('shard_map'); prints the params as JSON."""
    from jmtl.training import parallel

    runs = {}
    for arch in ARCHS:
        tasks, model = _tiny(arch, k=2)
        t, opt = weighting.get(_method(arch)), optax.adam(1e-2)
        driver = parallel.Driver("shard_map")
        state = driver.replicate(step_lib.init_state(model, t, opt, jnp.zeros((1, D_IN)), 2, seed=0))
        cfg = step_lib.StepConfig(input_key="x")
        fn = driver.compile_step(lambda ax: step_lib.make_train_step(model, tasks, t, opt, cfg, axis_name=ax))
        state, _ = fn(state, driver.shard_batch(_batch(tasks, n=8, seed=0)))
        runs[arch] = [np.asarray(l).tolist() for l in jax.tree.leaves(driver.unreplicate(state.params))]
    print("RESULT " + json.dumps({"device_count": jax.device_count(), "runs": runs}))


if __name__ == "__main__":
    _driver_main()
