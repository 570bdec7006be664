"""Hierarchical tagger: shapes, params layout, which task's gradient reaches which params, label
embeddings, padding, the tagging task kind, the alternating scheme, and a few jitted train steps.

Compiling recurrent models is the slow part on a small CPU, so one model (POS at layer 1, chunk at
2, NER at 3, label embeddings passed up) is built and jitted once and shared; layout-only checks
use ``jax.eval_shape`` (traced, never compiled).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jmtl import weighting
from jmtl.models import sequence
from jmtl.tasks import Task
from jmtl.training import step as step_lib

# Values, not speed: the programs compile without XLA's optimisation passes (conftest's
# xla_optimizations_off; this file's compile-bound tests took ~0.6x the time in one measured run).
pytestmark = pytest.mark.usefixtures("xla_optimizations_off")


B, T, W = 3, 6, 5
LENGTHS = (6, 4, 1)
SMALL = dict(num_words=30, num_chars=12, hidden=8, word_dim=8, char_dim=4, char_features=6, dropout_rate=0.0)
CLASSES = {"pos": 5, "chunk": 4, "ner": 3}


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    words = rng.integers(2, SMALL["num_words"], (B, T)).astype(np.int32)
    chars = rng.integers(1, SMALL["num_chars"], (B, T, W)).astype(np.int32)
    for i, n in enumerate(LENGTHS):
        words[i, n:] = 0
        chars[i, n:] = 0
    return {"words": jnp.asarray(words), "chars": jnp.asarray(chars)}


def _labels(classes, seed):
    y = np.random.default_rng(seed).integers(0, classes, (B, T)).astype(np.int32)
    for i, n in enumerate(LENGTHS):
        y[i, n:] = -1
    return jnp.asarray(y)


def _model(depths, **kw):
    names = tuple(depths)
    return sequence.HierarchicalTagger(
        names=names, num_classes=tuple(CLASSES[n] for n in names), depths=tuple(depths.values()), **{**SMALL, **kw}
    )


def _shapes(model, x):
    """Params shapes without compiling anything."""
    return jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x))["params"]


@pytest.fixture(scope="module")
def three():
    """POS@1, chunk@2, NER@3 with shortcut and label embeddings: (model, params, jitted apply, x)."""
    m = _model(dict(pos=1, chunk=2, ner=3), label_dim=4, shortcut=True, head_hidden=7, word_dropout=0.3)
    x = _inputs()
    params = jax.jit(m.init)({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)["params"]
    return m, params, jax.jit(m.apply), x


def test_heads_at_layers_1_2_3_shapes_and_layout(three):
    m, params, apply, x = three
    assert set(params) == {"shared", "tasks"}
    assert set(params["tasks"]) == {"pos", "chunk", "ner"}
    assert set(params["shared"]) == {"words", "lstm_1", "lstm_2", "lstm_3", "labels_pos", "labels_chunk"}
    out = apply({"params": params}, x)
    assert {k: v.shape for k, v in out.items()} == {"pos": (B, T, 5), "chunk": (B, T, 4), "ner": (B, T, 3)}
    # Layers above the highest head are not built; label tables only for tasks below the top.
    s = _shapes(_model(dict(pos=1, chunk=2), num_layers=3, label_dim=4), x)
    assert set(s["shared"]) == {"words", "lstm_1", "lstm_2", "labels_pos"}
    with pytest.raises(ValueError, match="depths must be in 1..3"):
        _shapes(_model(dict(pos=1, chunk=4)), x)
    # Layer 2's input: layer 1 output, + word representation (shortcut), + POS label embedding.
    plain = _shapes(_model(dict(pos=1, chunk=2)), x)["shared"]["lstm_2"]["fwd"]["ii"]["kernel"]
    jmt = _shapes(_model(dict(pos=1, chunk=2), label_dim=4, shortcut=True), x)["shared"]["lstm_2"]["fwd"]["ii"][
        "kernel"
    ]
    assert plain.shape[0] == 2 * SMALL["hidden"]
    assert jmt.shape[0] == plain.shape[0] + (SMALL["word_dim"] + SMALL["char_features"]) + 4


def _norm(tree, k):
    return float(sum(jnp.sum(jnp.abs(leaf[k])) for leaf in jax.tree.leaves(tree)))


def test_which_params_get_which_task_gradient(three):
    """A layer above a task's head gets none of its gradient; heads get only their own task's."""
    m, params, _, x = three
    tasks = [Task(n, "tagging", c) for n, c in CLASSES.items()]
    labels = {n: _labels(c, seed=i) for i, (n, c) in enumerate(CLASSES.items())}

    def losses(p):
        out = m.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(2)})
        return jnp.stack([jnp.mean(t.loss(out[t.name], labels[t.name])) for t in tasks])

    g = jax.jit(jax.jacrev(losses))(params)  # leaves [K, ...]
    pos, chunk, ner = 0, 1, 2
    sh = g["shared"]
    assert _norm(sh["lstm_2"], pos) == 0.0 and _norm(sh["lstm_3"], pos) == 0.0
    assert _norm(sh["lstm_3"], chunk) == 0.0
    assert _norm(sh["lstm_1"], pos) > 0 and _norm(sh["words"], pos) > 0
    for name in ("words", "lstm_1", "lstm_2"):
        assert _norm(sh[name], chunk) > 0
    for name in ("words", "lstm_1", "lstm_2", "lstm_3"):
        assert _norm(sh[name], ner) > 0
    # Label tables: trained by the tasks above, never by their own task.
    assert (
        _norm(sh["labels_pos"], pos) == 0.0 and _norm(sh["labels_pos"], chunk) > 0 and _norm(sh["labels_pos"], ner) > 0
    )
    assert _norm(sh["labels_chunk"], chunk) == 0.0 and _norm(sh["labels_chunk"], ner) > 0
    # The softmax passed up is stop_gradient-ed: each head is trained by its own task only.
    for i, name in enumerate(CLASSES):
        for j in range(3):
            assert (_norm(g["tasks"][name], j) > 0) == (i == j)


def test_label_embeddings_feed_the_upper_layer(three):
    """Changing the POS head changes chunking's output through the POS label embeddings only."""
    m, params, apply, x = three

    def moved(p):
        # A random change: a shift common to all classes would leave the softmax as it is.
        out = dict(p, tasks=dict(p["tasks"]))
        out["tasks"]["pos"] = jax.tree.map(
            lambda a: a + jax.random.normal(jax.random.key(5), a.shape), p["tasks"]["pos"]
        )
        return out

    a, b = apply({"params": params}, x)["chunk"], apply({"params": moved(params)}, x)["chunk"]
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4
    silent = dict(params, shared=dict(params["shared"]))
    silent["shared"]["labels_pos"] = jax.tree.map(jnp.zeros_like, params["shared"]["labels_pos"])
    a, b = apply({"params": silent}, x)["chunk"], apply({"params": moved(silent)}, x)["chunk"]
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_padding_does_not_change_real_positions(three):
    """Whatever sits in the padding (here random characters), real positions give the same outputs:
    the backward LSTM reverses each sentence within its length."""
    m, params, apply, x = three
    noisy = dict(x)
    pad = (np.arange(T)[None, :] >= np.asarray(LENGTHS)[:, None])[..., None]
    junk = np.random.default_rng(9).integers(1, SMALL["num_chars"], (B, T, W))
    noisy["chars"] = jnp.asarray(np.where(pad, junk, np.asarray(x["chars"])).astype(np.int32))
    a, b = apply({"params": params}, x), apply({"params": params}, noisy)
    for k in a:
        for i, n in enumerate(LENGTHS):
            np.testing.assert_allclose(a[k][i, :n], b[k][i, :n], rtol=1e-5, atol=1e-6)
        assert float(jnp.max(jnp.abs(a[k][1, 4:] - b[k][1, 4:]))) > 0  # the padding itself did change


def test_tagging_task_means_over_real_tokens():
    t = Task("pos", "tagging", 3)
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 3)), jnp.float32)
    labels = jnp.asarray([[0, 1, 2, -1], [2, -1, -1, -1]])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    real = np.asarray(labels) >= 0
    np.testing.assert_allclose(jnp.mean(t.loss(logits, labels)), np.asarray(ce)[real].mean(), rtol=1e-6)
    right = (np.asarray(jnp.argmax(logits, -1)) == np.asarray(labels))[real]
    acc = [m for m in t.metrics if m.name == "accuracy"][0]
    np.testing.assert_allclose(jnp.mean(acc.fn(logits, labels)), right.mean(), rtol=1e-6)
    assert t.loss(logits, labels).shape == (2,)


def _draw(transform, keys, k=3):
    return np.asarray(jax.jit(jax.vmap(lambda key: transform.apply(jnp.ones((k,)), (), key=key)[0].weights))(keys))


def test_alternating_weights_are_one_hot_and_reproducible():
    keys = jax.random.split(jax.random.key(0), 300)
    w = _draw(weighting.get("alternating"), keys)
    assert np.all(np.sort(w, axis=1) == [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(w, _draw(weighting.get("alternating"), keys))  # same keys, same draws
    assert not np.array_equal(w, _draw(weighting.get("alternating"), jax.random.split(jax.random.key(1), 300)))
    assert np.bincount(w.argmax(1), minlength=3).min() > 60  # uniform: ~100 each
    assert np.all(np.sort(_draw(weighting.get("alternating", scale=True), keys[:5]), axis=1) == [0.0, 0.0, 3.0])
    skewed = _draw(weighting.get("alternating", probabilities=[0.0, 1.0, 3.0]), keys)
    assert set(skewed.argmax(1).tolist()) == {1, 2} and (skewed.argmax(1) == 2).mean() > 0.6
    with pytest.raises(ValueError, match="non-negative"):
        weighting.get("alternating", probabilities=[-1.0, 1.0])


@pytest.mark.parametrize("method", ["alternating", "mgda"])
def test_jitted_train_steps_lower_the_loss(method):
    m = _model(dict(pos=1, chunk=2), num_layers=2, label_dim=4, shortcut=True)
    tasks = (Task("pos", "tagging", 5), Task("chunk", "tagging", 4))
    x = _inputs()
    batch = {"inputs": x, "pos": _labels(5, seed=1), "chunk": _labels(4, seed=2)}
    t = weighting.get(method)
    opt = optax.adam(0.03)
    state = step_lib.init_state(m, t, opt, x, len(tasks), seed=0)
    fn = jax.jit(step_lib.make_train_step(m, tasks, t, opt, step_lib.StepConfig(input_key="inputs")))
    first = None
    for _ in range(30):
        state, metrics = fn(state, batch)
        assert bool(metrics["finite"])
        first = np.asarray(metrics["losses"]) if first is None else first
    last = np.asarray(metrics["losses"])
    assert last.sum() < 0.7 * first.sum(), (first, last)
