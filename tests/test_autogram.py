"""The Gramian without the Jacobian (jmtl.core.autogram, jmtl.training.autogram_flax): G equals J J^T
of the explicit per-task gradients (float64) on every layer type of the model zoo, and the weighted
backward pass equals w^T J. Each case also checks *which* rule each layer took, so a silent fall
back to rows everywhere (exact but no engine) fails."""

from __future__ import annotations

import ast
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmtl.core import autogram as core
from jmtl.core.jacobian import flatten_rows, per_task_gradients
from jmtl.core.sharing import Sharing
from jmtl.models import encoders, gnn, sequence, vision
from jmtl.training import autogram_flax as ag

# Values, not speed: the programs compile without XLA's optimisation passes (conftest's
# xla_optimizations_off; this file's compile-bound tests took ~0.6x the time in one measured run).
pytestmark = pytest.mark.usefixtures("xla_optimizations_off")


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def test_core_imports_only_jax_optax_and_weighting():
    allowed = {"jax", "jax.numpy", "optax", "jmtl.weighting", "__future__", "math", "typing", "dataclasses"}
    tree = ast.parse((ROOT / "jmtl/core/autogram.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module)
    assert names <= allowed, f"jmtl/core/autogram.py imports {sorted(names - allowed)}"


def test_closed_forms_match_numpy_brute_force():
    rng = np.random.default_rng(0)
    k, b, d_in, d_out, v = 3, 5, 4, 6, 7
    x = rng.normal(size=(b, d_in))
    delta = rng.normal(size=(k, b, d_out))
    rows = np.einsum("bi,kbo->kio", x, delta).reshape(k, -1)  # task k's kernel gradient
    want = rows @ rows.T
    for method in ("gram", "rows", "auto"):
        np.testing.assert_allclose(
            core.dense_kernel_gramian(jnp.asarray(x), jnp.asarray(delta), method), want, rtol=1e-12
        )
    s = delta.sum(axis=1)
    np.testing.assert_allclose(core.bias_gramian(jnp.asarray(delta)), s @ s.T, rtol=1e-12)
    # Embedding: repeated ids, a negative id (counts from the end), an out-of-range id (reads nothing).
    ids = np.array([1, 3, 1, -1, 9])
    table = np.zeros((k, v, d_out))
    for i, idx in enumerate(ids):
        if -v <= idx < v:
            table[:, idx % v] += delta[:, i]
    table = table.reshape(k, -1)
    for method in ("gram", "rows"):
        np.testing.assert_allclose(
            core.embedding_gramian(jnp.asarray(ids), jnp.asarray(delta), v, method), table @ table.T, rtol=1e-12
        )


def test_choose_method_takes_the_cheaper_form():
    assert core.choose_method(batch=8, d_in=512, d_out=512, k=10) == "gram"  # big layer, small batch
    assert core.choose_method(batch=4096, d_in=4, d_out=4, k=10) == "rows"  # tiny layer, big batch
    with pytest.raises(ValueError, match="'auto', 'gram' or 'rows'"):
        core.choose_method(1, 1, 1, 1, "fast")


class Heads(nn.Module):
    """``encoder`` then one Dense head per task: params {'encoder': ..., 'head0': ...}."""

    encoder: nn.Module
    k: int
    call: str = "plain"  # how the encoder is called

    @nn.compact
    def __call__(self, *xs):
        rep = self.encoder(*xs) if self.call == "plain" else self.encoder(*xs, train=True)
        rep = rep.reshape(rep.shape[0], -1)
        return [nn.Dense(1, name=f"head{i}")(rep)[:, 0] for i in range(self.k)]


def _losses(model, xs, y, mutable=False):
    def loss_fn(params):
        out = (
            model.apply({"params": params}, *xs, mutable=["batch_stats"])
            if mutable
            else model.apply({"params": params}, *xs)
        )
        if mutable:
            out = out[0]
        return jnp.stack([jnp.mean((o - t) ** 2) for o, t in zip(out, y)])

    return loss_fn


def _reference(loss_fn, params, sharing, k):
    """J (shared rows) and the heads' summed gradient from explicit per-task gradients."""
    _, vjp = jax.vjp(loss_fn, params)
    return per_task_gradients(
        vjp, k, jnp.float64, lambda g: sharing.split(g[0]), sharing.split(params)[1], chunk_size=0
    )


def _check(model, xs, k, expect_kinds, *, mutable=False, chunk_size=0, method="auto", seed=0, rtol=1e-10, batch=None):
    batch = xs[0].shape[0] if batch is None else batch
    y = jax.random.normal(jax.random.key(seed + 1), (k, batch), jnp.float64)
    params = model.init(jax.random.key(seed), *xs)["params"]
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    loss_fn = _losses(model, xs, y, mutable)
    sharing = Sharing("encoder")
    eng = ag.Autogram(loss_fn, shared=sharing, chunk_size=chunk_size, method=method)
    plan = eng.plan(params)
    assert plan.kinds() == {f"encoder/{n}": kind for n, kind in expect_kinds.items()}, plan.untapped
    w = jnp.linspace(0.3, 1.7, k)

    @jax.jit
    def run(p):
        losses, gram, backward, _ = eng.losses_and_gramian(p)
        return losses, gram, backward(w), _reference(loss_fn, p, sharing, k)

    # Eagerly every op would compile on its own (seconds each on this CPU): one jit for all.
    losses, gram, grads, (jac, heads) = run(params)
    np.testing.assert_allclose(losses, loss_fn(params), rtol=min(rtol, 1e-7))
    scale = float(jnp.max(jnp.abs(jac @ jac.T)))
    assert scale > 0
    np.testing.assert_allclose(gram, jac @ jac.T, rtol=rtol, atol=rtol * scale)
    shared_g, rest_g = sharing.split(grads)
    got = flatten_rows(jax.tree.map(lambda a: a[None], shared_g))[0]
    np.testing.assert_allclose(got, w @ jac, rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(w @ jac))))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12), rest_g, heads)
    return plan


class DenseStack(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(7, name="d0")(x.reshape(x.shape[0], 3, -1)))  # leading axes fold into B
        h = nn.LayerNorm(name="ln")(h)  # norm params: rows
        return nn.Dense(5, use_bias=False, name="d1")(h)


@pytest.mark.parametrize("method", ["gram", "rows"])
def test_dense_layers_both_forms(method):
    x = jax.random.normal(jax.random.key(3), (4, 12), jnp.float64)
    plan = _check(Heads(DenseStack(), 3), (x,), 3, {"d0": "dense", "d1": "dense"}, method=method)
    assert plan.rowed == ("['encoder']['ln']['bias']", "['encoder']['ln']['scale']")


def test_mlp_encoder_k5_chunked():
    x = jax.random.normal(jax.random.key(3), (6, 4), jnp.float64)
    _check(Heads(encoders.MLP((8, 6)), 5), (x,), 5, {"Dense_0": "dense", "Dense_1": "dense"}, chunk_size=2)


def test_multi_lenet_conv_and_dense():
    x = jax.random.normal(jax.random.key(3), (2, 28, 28, 1), jnp.float64)
    _check(Heads(encoders.MultiLeNet(), 2), (x,), 2, {"conv1": "vjp", "conv2": "vjp", "fc": "dense"})


class ConvBlock(nn.Module):
    """A small SegNet-like block: ConvNormReLU (jmtl's batch norm) twice, pool, flax BatchNorm."""

    @nn.compact
    def __call__(self, x):
        x = vision.ConvNormReLU(4, name="b0")(x)
        x = vision.ConvNormReLU(3, name="b1")(x)
        x = nn.max_pool(x, (2, 2), (2, 2))
        return nn.BatchNorm(use_running_average=False, name="bn")(x)


def test_segnet_like_conv_block_with_norms():
    x = jax.random.normal(jax.random.key(3), (2, 6, 6, 2), jnp.float64)
    # vision.Norm computes its statistics in float32 (by design), hence the float32-level tolerance.
    _check(Heads(ConvBlock(), 3), (x,), 3, {"b0/conv": "vjp", "b1/conv": "vjp"}, mutable=True, rtol=1e-5)


class Attention(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4, name="mha")(x)
        return nn.Dense(3, name="proj")(h).mean(axis=1)


def test_attention_dense_general():
    x = jax.random.normal(jax.random.key(3), (2, 5, 6), jnp.float64)
    kinds = {f"mha/{n}": "dense_general" for n in ("query", "key", "value", "out")} | {"proj": "dense"}
    _check(Heads(Attention(), 4), (x,), 4, kinds)


class Recurrent(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(4, name="inp")(x)
        h = nn.RNN(nn.GRUCell(3, param_dtype=jnp.float64), name="gru")(h)
        return nn.RNN(nn.OptimizedLSTMCell(3, param_dtype=jnp.float64), name="lstm")(h)[:, -1]


def test_recurrent_cells_fall_back_to_rows():
    x = jax.random.normal(jax.random.key(3), (2, 4, 3), jnp.float64)
    plan = _check(Heads(Recurrent(), 2), (x,), 2, {"inp": "dense"})
    assert any(p.startswith("['encoder']['GRUCell_0']") for p in plan.rowed)
    assert any(name.startswith("encoder/GRUCell_0") for name in plan.untapped), plan.untapped


def _graph():
    nodes = jax.random.normal(jax.random.key(4), (5, 3), jnp.float64)
    edges = jax.random.normal(jax.random.key(5), (6, 2), jnp.float64)
    return gnn.GraphBatch(
        nodes=nodes,
        edges=edges,
        senders=jnp.array([0, 1, 2, 3, 4, 0]),
        receivers=jnp.array([1, 2, 0, 4, 3, 0]),
        node_graph=jnp.array([0, 0, 0, 1, 1]),
        node_mask=jnp.ones(5, bool),
        edge_mask=jnp.array([True] * 5 + [False]),
        graph_mask=jnp.ones(2, bool),
    )


class GraphNet(nn.Module):
    @nn.compact
    def __call__(self, graph):
        return gnn.MPNN(hidden=4, steps=2, edge_hidden=4, readout="mean", name="mpnn")(graph)


def test_gnn_mpnn():
    # NNConv and the GRU are applied at every step (reused params): rows; the embed and out Denses
    # (called once) are tapped.
    plan = _check(Heads(GraphNet(), 3), (_graph(),), 3, {"mpnn/embed": "dense", "mpnn/out": "dense"}, batch=2, seed=2)
    assert "encoder/mpnn/conv/edge_out" in plan.untapped


@pytest.mark.parametrize("freeze", [False, True])
def test_embeddings(freeze):
    words = jnp.array([[1, 2, 3, 2], [4, 1, 0, 0]])
    chars = jnp.array(np.random.default_rng(0).integers(0, 7, size=(2, 4, 3)))

    class Words(nn.Module):
        @nn.compact
        def __call__(self, w, c):
            rep = sequence.WordRepresentation(11, 7, 4, 3, 4, 2, freeze=freeze, name="words")
            return rep(w, c, train=False).mean(axis=1)

    # The frozen table is read through `embed.embedding`, never by a call: not tapped, zero rows.
    kinds = {"words/chars/embed": "embed", "words/chars/conv": "vjp"} | ({} if freeze else {"words/embed": "embed"})
    _check(Heads(Words(), 2), (words, chars), 2, kinds)


class Tied(nn.Module):
    """A Dense whose kernel is also read outside its call (tied weights), and one called twice."""

    @nn.compact
    def __call__(self, x):
        d = nn.Dense(5, name="tied")
        h = d(x)
        h = h @ d.variables["params"]["kernel"].T  # the stray read
        twice = nn.Dense(3, name="twice")
        return nn.Dense(4, name="once")(twice(twice(h)))


def test_stray_reads_and_reuse_fall_back_to_rows():
    x = jax.random.normal(jax.random.key(3), (3, 3), jnp.float64)
    plan = _check(Heads(Tied(), 3), (x,), 3, {"once": "dense"})
    assert plan.untapped["encoder/tied"] == "its params are read outside its call"
    assert plan.untapped["encoder/twice"].startswith("called 2 times")


def test_jit_and_scheme_round_trip():
    """Under jit, with a Gramian scheme's weights: the update equals the scheme on J J^T applied to J."""
    from jmtl import weighting

    x = jax.random.normal(jax.random.key(3), (4, 5), jnp.float64)
    k = 3
    model = Heads(encoders.MLP((6,)), k)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), model.init(jax.random.key(0), x)["params"])
    y = jax.random.normal(jax.random.key(1), (k, 4), jnp.float64)
    loss_fn = _losses(model, (x,), y)
    scheme = weighting.get("mgda")
    state = scheme.init(k)

    @jax.jit
    def step(p):
        losses, gram, backward, _ = ag.losses_and_gramian(loss_fn, p, shared="encoder")
        out, _ = scheme.apply(losses, state, gramian=gram)
        return gram, out.weights, backward(out.weights)

    gram, w, grads = step(params)
    jac, _ = _reference(loss_fn, params, Sharing("encoder"), k)
    np.testing.assert_allclose(gram, jac @ jac.T, rtol=1e-10)
    got = flatten_rows(jax.tree.map(lambda a: a[None], grads["encoder"]))[0]
    np.testing.assert_allclose(got, w @ jac, rtol=1e-9, atol=1e-12)


def test_bad_weights_and_chunk_size_are_refused():
    x = jnp.ones((2, 3), jnp.float64)
    model = Heads(DenseStack(), 2)
    params = model.init(jax.random.key(0), x)["params"]
    loss_fn = _losses(model, (x,), jnp.zeros((2, 2)))

    def bad(p):
        _, _, backward, _ = ag.losses_and_gramian(loss_fn, p, shared="encoder")
        return backward(jnp.ones(3))

    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        jax.eval_shape(bad, params)
    with pytest.raises(ValueError, match="chunk_size must be >= 0"):
        jax.eval_shape(lambda p: ag.losses_and_gramian(loss_fn, p, shared="encoder", chunk_size=-1)[1], params)


def test_benchmark_quick_smoke(tmp_path):
    """experiments/bench/autogram.py --quick end to end (timings are not checked; G is)."""
    import json

    from experiments.bench import autogram as bench

    bench.main(["--quick", "--out-dir", str(tmp_path)])
    record = json.loads((tmp_path / "autogram.json").read_text())
    assert record["provenance"]["recorded"]
    for cell in record["results"]["mlp_small"].values():
        assert {m: r["status"] for m, r in cell["methods"].items()} == dict.fromkeys(bench.METHODS, "ran")
        assert cell["max_rel_diff"] < 1e-5
    assert "| mlp_small |" in (tmp_path / "autogram.md").read_text()
    # A typo in --models is the parser's one-line error (exit 2) naming the valid models; nothing written.
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--models", "segnt", "--out-dir", str(tmp_path / "typo")])
    assert exit_info.value.code == 2 and not (tmp_path / "typo").exists()


def test_the_flax_step_with_gramian_autogram_equals_rows():
    """StepConfig(gramian='autogram'): the engine's G, the scheme's weights, one weighted backward pass;
    the trained params equal the rows path's (MGDA and UPGrad, a few steps, a hard-sharing MLP)."""
    import optax

    from jmtl import weighting
    from jmtl.models import mtl
    from jmtl.tasks import Task
    from jmtl.training import step as step_lib

    tasks = (Task("a", "regression", 2), Task("b", "regression", 2), Task("c", "classification", 3))
    model = mtl.build(
        tasks, encoder="mlp", encoder_kwargs=dict(features=(8, 8)), head_kwargs=dict(hidden=4, dropout_rate=0.0)
    )
    rng = np.random.default_rng(0)
    batch = {
        "x": rng.normal(size=(16, 5)).astype(np.float32),
        "a": rng.normal(size=(16, 2)).astype(np.float32),
        "b": rng.normal(size=(16, 2)).astype(np.float32),
        "c": rng.integers(0, 3, 16).astype(np.int32),
    }
    for name in ("mgda", "upgrad"):
        t, opt = weighting.get(name), optax.sgd(0.1)
        params = {}
        for source in ("rows", "autogram"):
            cfg = step_lib.StepConfig(gramian=source, jacobian_chunk_size=0)
            step = step_lib.make_train_step(model, tasks, t, opt, cfg)
            assert step.gradient_path == ("autogram" if source == "autogram" else "factored_jacobian")
            state = step_lib.init_state(model, t, opt, batch["x"][:1], 3, seed=0)
            fn = jax.jit(step)
            for _ in range(3):
                state, metrics = fn(state, batch)
            params[source] = state.params
        for a, b in zip(jax.tree.leaves(params["rows"]), jax.tree.leaves(params["autogram"])):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=name)
    with pytest.raises(ValueError, match="gramian"):
        step_lib.StepConfig(gramian="autogramm")


def test_gpu_script_smokes_on_cpu(tmp_path):
    """experiments/bench/gpu_autogram.py --tiny: every cell runs and the engine's G equals the rows'."""
    from experiments.bench import gpu_autogram

    with jax.enable_x64(False):
        result = gpu_autogram.main(["--tiny", "--out", str(tmp_path / "gpu_autogram")])
    assert {c["status"] for c in result["gramian"] + result["per_example"]} == {"ran"}
    assert max(c["max_rel_diff"] for c in result["gramian"] if c["dtype"] == "float32") < 1e-5
    assert (tmp_path / "gpu_autogram.md").exists()
