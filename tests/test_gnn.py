"""MPNN on padded graph batches: a hand-computed message-passing step, padding and permutation invariance."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmtl.models import gnn


def random_graph(rng, n: int, f: int = 3, fe: int = 2):
    """A random undirected graph (both directions of each edge) with random features."""
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if rng.random() < 0.5] or [(0, n - 1)]
    s = np.array([a for a, b in pairs] + [b for a, b in pairs], np.int32)
    r = np.array([b for a, b in pairs] + [a for a, b in pairs], np.int32)
    e = rng.normal(size=(len(pairs), fe)).astype(np.float32)
    return rng.normal(size=(n, f)).astype(np.float32), np.concatenate([e, e]), s, r


def test_nnconv_one_step_by_hand():
    # Path 0 - 1 - 2 (both directions); node 1 receives from 0 and 2, nodes 0 and 2 from 1.
    h = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], np.float32)
    e = np.array([[1.0], [2.0], [1.0], [2.0]], np.float32)  # 0->1, 2->1, 1->0, 1->2
    graph = gnn.pad_graphs([(h, e, np.array([0, 2, 1, 1]), np.array([1, 1, 0, 2]))], max_nodes=3, max_edges=4)
    conv = gnn.NNConv(features=2, edge_hidden=1)
    params = conv.init(jax.random.PRNGKey(0), jnp.asarray(h), graph)["params"]
    # Theta(e) = reshape(W2 relu(w1 e + b1) + b2): pick w1 = 1, b1 = 0, so Theta(e) = e * A + B.
    a = np.array([[1.0, 2.0], [0.0, 1.0]], np.float32)
    b = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    root = np.array([[2.0, 0.0], [0.0, 3.0]], np.float32)
    bias = np.array([0.5, -0.5], np.float32)
    params = {
        "edge_hidden": {"kernel": np.ones((1, 1), np.float32), "bias": np.zeros(1, np.float32)},
        "edge_out": {"kernel": a.reshape(1, 4), "bias": b.reshape(4)},
        "root": {"kernel": root},
        "bias": bias,
    }
    out = np.asarray(conv.apply({"params": params}, jnp.asarray(h), graph))
    theta = lambda x: x * a + b  # [d_in, d_out]: message = h_j @ Theta(e)
    want = np.stack(
        [
            h[0] @ root + h[1] @ theta(1.0) + bias,  # from 1 (edge 1->0, e = 1)
            h[1] @ root + (h[0] @ theta(1.0) + h[2] @ theta(2.0)) / 2 + bias,  # mean of two messages
            h[2] @ root + h[1] @ theta(2.0) + bias,
        ]
    )
    np.testing.assert_allclose(out, want, rtol=1e-6)


@pytest.mark.parametrize("readout", ["set2set", "mean"])
def test_padding_and_batching_do_not_change_outputs(readout):
    rng = np.random.default_rng(0)
    graphs = [random_graph(rng, n) for n in (3, 5, 4)]
    model = gnn.MPNN(hidden=8, steps=2, edge_hidden=4, readout=readout)
    tight = gnn.pad_graphs(graphs, max_nodes=12, max_edges=sum(len(g[2]) for g in graphs))
    params = model.init(jax.random.PRNGKey(1), tight)
    out = np.asarray(model.apply(params, tight))
    # Big budgets, with garbage in the padding (features and edges of padding must be ignored).
    padded = gnn.pad_graphs(graphs, max_nodes=30, max_edges=60, max_graphs=5)
    junk = padded._replace(
        nodes=np.where(padded.node_mask[:, None], padded.nodes, 7.0),
        edges=np.where(padded.edge_mask[:, None], padded.edges, -3.0),
        senders=np.where(padded.edge_mask, padded.senders, 11),  # padding edges point at real nodes
        receivers=np.where(padded.edge_mask, padded.receivers, 1),
    )
    out_padded = np.asarray(model.apply(params, junk))
    np.testing.assert_allclose(out_padded[:3], out, rtol=2e-5, atol=1e-6)
    # A graph alone gives its row of the batch (the middle one: its nodes are not at offset 0).
    g = graphs[1]
    alone = np.asarray(model.apply(params, gnn.pad_graphs([g], max_nodes=len(g[0]), max_edges=len(g[2]))))
    np.testing.assert_allclose(alone[0], out[1], rtol=2e-5, atol=1e-6)


def test_node_permutation_invariance():
    rng = np.random.default_rng(2)
    x, e, s, r = random_graph(rng, 7)
    model = gnn.MPNN(hidden=8, steps=3, edge_hidden=4)
    batch = gnn.pad_graphs([(x, e, s, r)], max_nodes=7, max_edges=len(s))
    params = model.init(jax.random.PRNGKey(3), batch)
    perm = rng.permutation(7)  # new node k is old node perm[k]
    inv = np.argsort(perm)
    edge_perm = rng.permutation(len(s))
    permuted = gnn.pad_graphs(
        [(x[perm], e[edge_perm], inv[s][edge_perm], inv[r][edge_perm])], max_nodes=7, max_edges=len(s)
    )
    a, b = np.asarray(model.apply(params, batch)), np.asarray(model.apply(params, permuted))
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    # The output does depend on the graph (an invariance a constant would satisfy is no test).
    other = gnn.pad_graphs([(x, e, s, np.roll(r, 1))], max_nodes=7, max_edges=len(s))
    assert np.abs(np.asarray(model.apply(params, other)) - a).max() > 1e-4


def test_unpack_matches_pad_graphs():
    """The per-example packed layout (one array per molecule) is the same batch as pad_graphs."""
    rng = np.random.default_rng(4)
    graphs = [random_graph(rng, n) for n in (2, 6)]
    max_nodes, max_edges, f, fe = 6, 16, 3, 2
    rows = []
    for x, e, s, r in graphs:
        n, m = len(x), len(s)
        node_mask = np.zeros(max_nodes)
        node_mask[:n] = 1
        nodes = np.zeros((max_nodes, f))
        nodes[:n] = x
        edge_mask = np.zeros(max_edges)
        edge_mask[:m] = 1
        ss, rr = np.zeros(max_edges), np.zeros(max_edges)
        ss[:m], rr[:m] = s, r
        edges = np.zeros((max_edges, fe))
        edges[:m] = e
        rows.append(np.concatenate([node_mask, nodes.ravel(), edge_mask, ss, rr, edges.ravel()]))
    packed = np.stack(rows).astype(np.float32)
    model = gnn.MPNN(
        hidden=8, steps=2, edge_hidden=4, max_nodes=max_nodes, max_edges=max_edges, node_features=f, edge_features=fe
    )
    params = model.init(jax.random.PRNGKey(5), packed)
    out = np.asarray(model.apply(params, packed))
    tight = gnn.pad_graphs(graphs, max_nodes=8, max_edges=sum(len(g[2]) for g in graphs))
    np.testing.assert_allclose(out, np.asarray(model.apply(params, tight)), rtol=2e-5, atol=1e-6)
    with pytest.raises(ValueError, match="max_nodes=6, max_edges=15"):
        gnn.MPNN(max_nodes=6, max_edges=15, node_features=f, edge_features=fe).init(jax.random.PRNGKey(0), packed)


def test_pad_graphs_refuses_small_budgets():
    g = random_graph(np.random.default_rng(6), 4)
    with pytest.raises(ValueError, match="budgets"):
        gnn.pad_graphs([g, g], max_nodes=7, max_edges=100)
    with pytest.raises(ValueError, match="outside"):
        gnn.pad_graphs([(g[0], g[1], g[2] + 4, g[3])], max_nodes=10, max_edges=100)
