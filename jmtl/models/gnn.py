"""Message passing on padded graph batches: the MPNN of Gilmer et al. (ICML 2017) as a shared encoder.

A batch of graphs is one :class:`GraphBatch`: all nodes of all graphs stacked ([N, F]), all
directed edges stacked ([E, Fe], with ``senders`` / ``receivers`` node numbers), each node's graph
id, and masks. Padding to fixed budgets (N, E and the number of graphs G) keeps every step the
same shape, so it compiles once; padding nodes and edges are masked out of every sum, mean and
softmax, so they do not change any real graph's output (tests/test_gnn.py checks it).

Two ways to get a batch:

* :func:`pad_graphs` packs a list of graphs tightly into given budgets (jraph-style: the budgets
  bound the batch's total nodes / edges);
* :func:`unpack` reads the per-molecule padded layout of ``jmtl.data.qm9.pack`` (each example a
  flat float32 vector, so QM9 stays an ordinary ``from_arrays`` dataset): a batch of B examples
  becomes B * max_nodes nodes and B * max_edges edges. :class:`MPNN` calls it when its input is
  an array.
* :func:`unpack_complete` reads ``jmtl.data.qm9.pack_geometry`` 's layout (3-D geometry): each
  molecule a complete graph whose edge features are the bond one-hot and the interatomic distance
  (Nash-MTL's ``Complete()`` + ``T.Distance(norm=False)``), kept dense ([B, n, n, 5]); the
  convolution is then :class:`DenseNNConv`, the same NNConv computed without materialising the
  per-edge [d, d] matrices. :class:`MPNN` with ``geometry=True`` takes it.

:class:`MPNN` is the network of PyG's ``examples/qm9_nn_conv.py``, which Nash-MTL (Navon et al.
2022) and LibMTL use for QM9 (hidden 64): ``h0 = relu(W0 x)``; three rounds of the
edge-conditioned convolution (NNConv, Gilmer et al. eq. for the "edge network" message)

    m_i = relu( W_root h_i + mean_{(j -> i)} Theta(e_ji) h_j + b ),  Theta(e) = reshape(MLP(e), [d, d]),

each followed by a GRU update ``h_i <- GRU(m_i, h_i)`` (one convolution and one GRU, shared over
the rounds); a Set2Set readout (Vinyals et al. 2016, 3 processing steps) -> [G, 2d]; and
``relu(W1 .)`` -> [G, d], the shared representation. Nash-MTL's task heads are one linear layer
per target on it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class GraphBatch(NamedTuple):
    """G padded graphs as one graph.

    Attributes:
      nodes: float [N, F] node features.
      edges: float [E, Fe] edge features of the directed edges ``senders[k] -> receivers[k]``.
      senders, receivers: int32 [E] node numbers in ``[0, N)`` (padding edges: any valid number).
      node_graph: int32 [N] the graph of each node, in ``[0, G)``.
      node_mask: bool [N] real nodes.
      edge_mask: bool [E] real edges.
      graph_mask: bool [G] real graphs (G fixes the output's first dimension).
    """

    nodes: jax.Array
    edges: jax.Array
    senders: jax.Array
    receivers: jax.Array
    node_graph: jax.Array
    node_mask: jax.Array
    edge_mask: jax.Array
    graph_mask: jax.Array

    @property
    def num_graphs(self) -> int:
        return self.graph_mask.shape[0]


def pad_graphs(graphs, max_nodes: int, max_edges: int, max_graphs: int | None = None) -> GraphBatch:
    """Packs graphs into one :class:`GraphBatch` padded to fixed budgets.

    Args:
      graphs: sequence of ``(nodes [n, F], edges [e, Fe], senders [e], receivers [e])`` with node
        numbers local to the graph.
      max_nodes: N, the node budget (at least the graphs' total nodes).
      max_edges: E, the edge budget (at least their total edges).
      max_graphs: G, the graph budget; None = ``len(graphs)``.

    Raises:
      ValueError: a budget is too small, or an edge names a node outside its graph.
    """
    graphs = list(graphs)
    max_graphs = len(graphs) if max_graphs is None else max_graphs
    if len(graphs) > max_graphs:
        raise ValueError(f"{len(graphs)} graphs exceed max_graphs={max_graphs}")
    n_tot = sum(len(g[0]) for g in graphs)
    e_tot = sum(len(g[2]) for g in graphs)
    if n_tot > max_nodes or e_tot > max_edges:
        raise ValueError(
            f"the graphs have {n_tot} nodes / {e_tot} edges; budgets are max_nodes={max_nodes}, "
            f"max_edges={max_edges}. Fix: raise the budgets or batch fewer graphs"
        )
    if not graphs:
        raise ValueError("no graphs to pad (feature sizes unknown)")
    f, fe = np.shape(graphs[0][0])[1], np.shape(graphs[0][1])[1]
    nodes = np.zeros((max_nodes, f), np.float32)
    edges = np.zeros((max_edges, fe), np.float32)
    senders = np.zeros(max_edges, np.int32)
    receivers = np.zeros(max_edges, np.int32)
    # Padding nodes belong to graph 0 but are masked everywhere; padding edges join node 0 to itself.
    node_graph = np.zeros(max_nodes, np.int32)
    node_mask = np.zeros(max_nodes, bool)
    edge_mask = np.zeros(max_edges, bool)
    graph_mask = np.zeros(max_graphs, bool)
    n0 = e0 = 0
    for g, (x, e, s, r) in enumerate(graphs):
        n, m = len(x), len(s)
        s, r = np.asarray(s), np.asarray(r)
        if m and (min(s.min(), r.min()) < 0 or max(s.max(), r.max()) >= n):
            raise ValueError(f"graph {g}: an edge names a node outside [0, {n})")
        nodes[n0 : n0 + n] = x
        edges[e0 : e0 + m] = e
        senders[e0 : e0 + m] = s + n0
        receivers[e0 : e0 + m] = r + n0
        node_graph[n0 : n0 + n] = g
        node_mask[n0 : n0 + n] = True
        edge_mask[e0 : e0 + m] = True
        graph_mask[g] = True
        n0, e0 = n0 + n, e0 + m
    return GraphBatch(nodes, edges, senders, receivers, node_graph, node_mask, edge_mask, graph_mask)


def unpack(x: jax.Array, max_nodes: int, max_edges: int, node_features: int, edge_features: int) -> GraphBatch:
    """The :class:`GraphBatch` of B examples in ``jmtl.data.qm9.pack`` 's per-example layout.

    Args:
      x: float [B, P] with P = max_nodes * (1 + node_features) + max_edges * (3 + edge_features):
        node mask, node features, edge mask, senders, receivers (local numbers), edge features.
      max_nodes, max_edges: the per-example budgets of the layout.
      node_features, edge_features: F and Fe.
    """
    b, p = x.shape
    want = max_nodes * (1 + node_features) + max_edges * (3 + edge_features)
    if p != want:
        raise ValueError(
            f"packed graph input has {p} values per example; max_nodes={max_nodes}, max_edges={max_edges}, "
            f"node_features={node_features}, edge_features={edge_features} give {want}. Fix: set the encoder's "
            "layout to the one the data was packed with (jmtl.data.qm9.MAX_NODES, MAX_EDGES, ...)"
        )
    sizes = [max_nodes, max_nodes * node_features, max_edges, max_edges, max_edges, max_edges * edge_features]
    node_mask, nodes, edge_mask, senders, receivers, edges = jnp.split(x, np.cumsum(sizes)[:-1], axis=1)
    offset = (jnp.arange(b, dtype=jnp.int32) * max_nodes)[:, None]
    return GraphBatch(
        nodes=nodes.reshape(b * max_nodes, node_features),
        edges=edges.reshape(b * max_edges, edge_features),
        senders=(jnp.round(senders).astype(jnp.int32) + offset).reshape(-1),
        receivers=(jnp.round(receivers).astype(jnp.int32) + offset).reshape(-1),
        node_graph=jnp.repeat(jnp.arange(b, dtype=jnp.int32), max_nodes),
        node_mask=node_mask.reshape(-1) > 0.5,
        edge_mask=edge_mask.reshape(-1) > 0.5,
        graph_mask=jnp.ones((b,), bool),
    )


class CompleteBatch(NamedTuple):
    """B molecules as dense complete graphs (``unpack_complete``).

    Attributes:
      nodes: float [B, n, F].
      edges: float [B, n, n, Fe]: ``edges[b, i, j]`` are the features of the pair (i, j): the bond
        one-hot (zeros when not bonded) and the distance |pos_i - pos_j| (symmetric in i, j).
      node_mask: bool [B, n] real atoms.
      edge_mask: bool [B, n, n] real pairs of distinct atoms.
    """

    nodes: jax.Array
    edges: jax.Array
    node_mask: jax.Array
    edge_mask: jax.Array


def unpack_complete(x: jax.Array, max_nodes: int, node_features: int, bond_types: int) -> CompleteBatch:
    """The :class:`CompleteBatch` of B examples in ``jmtl.data.qm9.pack_geometry`` 's layout.

    Args:
      x: float [B, P], P = max_nodes * (1 + node_features + 3) + max_nodes**2: node mask, node
        features, positions, bond matrix (0 = none, 1 + bond type index).
      max_nodes: n; node_features: F; bond_types: the one-hot size (edge features = bond_types + 1).
    """
    b, p = x.shape
    want = max_nodes * (1 + node_features + 3) + max_nodes * max_nodes
    if p != want:
        raise ValueError(
            f"packed geometry input has {p} values per example; max_nodes={max_nodes}, node_features={node_features} "
            f"give {want}. Fix: set the encoder's layout to the one the data was packed with "
            "(jmtl.data.qm9.MAX_NODES, NODE_FEATURES; geometry=True only for inputs='geometry')"
        )
    n = max_nodes
    sizes = [n, n * node_features, n * 3]
    node_mask, nodes, pos, bond = jnp.split(x, np.cumsum(sizes), axis=1)
    node_mask = node_mask > 0.5
    pos = pos.reshape(b, n, 3)
    diff = pos[:, :, None, :] - pos[:, None, :, :]
    sq = jnp.sum(diff * diff, axis=-1)
    # sqrt(0) on the diagonal and on padding has an infinite derivative; those pairs are masked and
    # positions are data, but keep any gradient finite.
    dist = jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)
    bond = jnp.round(bond.reshape(b, n, n)).astype(jnp.int32)
    one_hot = jax.nn.one_hot(bond - 1, bond_types, dtype=x.dtype)  # bond 0 (none) -> all zeros
    edge_mask = node_mask[:, :, None] & node_mask[:, None, :] & ~jnp.eye(n, dtype=bool)[None]
    return CompleteBatch(
        nodes=nodes.reshape(b, n, node_features),
        edges=jnp.concatenate([one_hot, dist[..., None]], axis=-1),
        node_mask=node_mask,
        edge_mask=edge_mask,
    )


def segment_softmax(logits: jax.Array, segment_ids: jax.Array, num_segments: int, mask: jax.Array) -> jax.Array:
    """Softmax of ``logits`` [N] within each segment, over the entries where ``mask``; 0 elsewhere."""
    masked = jnp.where(mask, logits, -jnp.inf)
    top = jax.ops.segment_max(masked, segment_ids, num_segments)
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # empty segments
    # stop_gradient: the shift cancels in the softmax; it only keeps exp() in range.
    w = jnp.where(mask, jnp.exp(masked - jax.lax.stop_gradient(top)[segment_ids]), 0.0)
    total = jax.ops.segment_sum(w, segment_ids, num_segments)
    return w / jnp.maximum(total, jnp.finfo(w.dtype).tiny)[segment_ids]


class NNConv(nn.Module):
    """Edge-conditioned convolution (Gilmer et al. 2017's edge network; PyG ``NNConv``, aggr 'mean').

    ``out_i = W_root h_i + mean_{edges j -> i} Theta(e_ji) h_j + b``, Theta(e) = reshape(MLP(e)) with
    MLP = Dense(edge_hidden), relu, Dense(features * d_in). Nodes without incoming edges get only the
    root term.

    Attributes:
      features: output size.
      edge_hidden: hidden size of the edge network (PyG's example: 128).
    """

    features: int
    edge_hidden: int = 128

    @nn.compact
    def __call__(self, h: jax.Array, graph: GraphBatch) -> jax.Array:
        n, d_in = h.shape
        theta = nn.Dense(self.edge_hidden, name="edge_hidden")(graph.edges)
        theta = nn.Dense(d_in * self.features, name="edge_out")(nn.relu(theta))
        theta = theta.reshape(-1, d_in, self.features)
        messages = jnp.einsum("ed,edf->ef", h[graph.senders], theta)
        messages = messages * graph.edge_mask[:, None]
        total = jax.ops.segment_sum(messages, graph.receivers, n)
        count = jax.ops.segment_sum(graph.edge_mask.astype(h.dtype), graph.receivers, n)
        mean = total / jnp.maximum(count, 1.0)[:, None]
        return (
            nn.Dense(self.features, use_bias=False, name="root")(h)
            + mean
            + self.param("bias", nn.initializers.zeros, (self.features,))
        )


class _DenseParams(nn.Module):
    """A ``nn.Dense`` 's kernel and bias without applying it (same names and initialisers)."""

    features: int

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (in_features, self.features))
        return kernel, self.param("bias", nn.initializers.zeros, (self.features,))


class DenseNNConv(nn.Module):
    """:class:`NNConv` on dense complete graphs (:class:`CompleteBatch`), with NNConv's parameters.

    With Theta(e) = reshape(W2^T z(e) + b2, [d_in, f]) and z(e) = relu(W1^T e + b1) (k = edge_hidden
    entries), the message h_j^T Theta(e_ij) = sum_k z_k(e_ij) (h_j^T W2_k) + h_j^T B2, where W2_k is
    row k of W2 as [d_in, f]. Computing h_j^T W2_k once per atom ([B, n, k, f]) and contracting with
    z over j costs O(B n^2 k f) instead of O(B n^2 k d_in f) for the per-edge matrices (PyG's way,
    which ``NNConv`` follows); the result is the same (tests/test_qm9_geometry.py checks it).

    ``out_i = W_root h_i + mean_{j != i, real} h_j^T Theta(e_ij) + b`` (PyG ``NNConv``, aggr 'mean').
    """

    features: int
    edge_hidden: int = 128

    @nn.compact
    def __call__(self, h: jax.Array, graph: CompleteBatch) -> jax.Array:
        b, n, d_in = h.shape
        z = nn.relu(nn.Dense(self.edge_hidden, name="edge_hidden")(graph.edges))  # [B, n, n, k]
        w2, b2 = _DenseParams(d_in * self.features, name="edge_out")(self.edge_hidden)
        w2 = w2.reshape(self.edge_hidden, d_in, self.features)
        mask = graph.edge_mask.astype(h.dtype)
        per_atom = jnp.einsum("bjd,kdf->bjkf", h, w2)
        total = jnp.einsum("bijk,bjkf->bif", z * mask[..., None], per_atom)
        total = total + jnp.einsum("bij,bjd,df->bif", mask, h, b2.reshape(d_in, self.features))
        count = jnp.sum(mask, axis=2)
        mean = total / jnp.maximum(count, 1.0)[..., None]
        return (
            nn.Dense(self.features, use_bias=False, name="root")(h)
            + mean
            + self.param("bias", nn.initializers.zeros, (self.features,))
        )


class Set2Set(nn.Module):
    """Set2Set readout (Vinyals et al. 2016), as PyG's: q* = 0; ``steps`` times: q = LSTM(q*),
    a_i = softmax_{i in graph}(h_i . q_g), r_g = sum_i a_i h_i, q* = [q, r]. Output [G, 2d].

    Attributes:
      steps: processing steps (PyG's example: 3).
    """

    steps: int = 3

    @nn.compact
    def __call__(self, h: jax.Array, graph: GraphBatch) -> jax.Array:
        g, d = graph.num_graphs, h.shape[1]
        lstm = nn.OptimizedLSTMCell(d, name="lstm")
        carry = (jnp.zeros((g, d), h.dtype), jnp.zeros((g, d), h.dtype))
        q_star = jnp.zeros((g, 2 * d), h.dtype)
        for _ in range(self.steps):
            carry, q = lstm(carry, q_star)
            logits = jnp.sum(h * q[graph.node_graph], axis=-1)
            a = segment_softmax(logits, graph.node_graph, g, graph.node_mask)
            r = jax.ops.segment_sum(a[:, None] * h, graph.node_graph, g)
            q_star = jnp.concatenate([q, r], axis=-1)
        return q_star


class MPNN(nn.Module):
    """Gilmer et al.'s MPNN as PyG's QM9 NNConv example (Nash-MTL's shared network): [G, hidden].

    Input: a :class:`GraphBatch`, or float [B, P] examples in ``jmtl.data.qm9.pack`` 's layout
    (unpacked with the ``max_nodes`` ... ``edge_features`` attributes; then G = B).

    Attributes:
      hidden: d, the node state and representation size (Nash-MTL: 64).
      steps: message-passing rounds (Nash-MTL: 3), sharing one NNConv and one GRU.
      edge_hidden: hidden size of the edge network (128).
      readout: 'set2set' (Nash-MTL's; 3 processing steps) or 'mean' (masked mean of node states,
        cheaper).
      max_nodes, max_edges, node_features, edge_features: the packed layout (defaults: QM9's).
      geometry: the input is ``jmtl.data.qm9.pack_geometry`` 's layout (complete graphs with the
        interatomic distance as an edge feature, Nash-MTL's input; ``edge_features`` is then the
        bond one-hot size, 4, and the edge network reads 5 features); the convolution is
        :class:`DenseNNConv`, with the same parameters as :class:`NNConv`.
    """

    hidden: int = 64
    steps: int = 3
    edge_hidden: int = 128
    readout: str = "set2set"
    max_nodes: int = 29
    max_edges: int = 56
    node_features: int = 11
    edge_features: int = 4
    geometry: bool = False

    @nn.compact
    def __call__(self, x: Any, *, train: bool = False) -> jax.Array:
        del train
        if self.geometry:
            return self._complete(x)
        graph = (
            x
            if isinstance(x, GraphBatch)
            else unpack(x, self.max_nodes, self.max_edges, self.node_features, self.edge_features)
        )
        h = nn.relu(nn.Dense(self.hidden, name="embed")(graph.nodes))
        conv = NNConv(self.hidden, self.edge_hidden, name="conv")
        gru = nn.GRUCell(self.hidden, name="gru")
        for _ in range(self.steps):
            m = nn.relu(conv(h, graph))
            h, _ = gru(h, m)
        return self._readout(h, graph)

    def _complete(self, x: Any) -> jax.Array:
        """The same network on dense complete graphs (``geometry=True``)."""
        dense = (
            x
            if isinstance(x, CompleteBatch)
            else unpack_complete(x, self.max_nodes, self.node_features, self.edge_features)
        )
        b, n, _ = dense.nodes.shape
        h = nn.relu(nn.Dense(self.hidden, name="embed")(dense.nodes))
        conv = DenseNNConv(self.hidden, self.edge_hidden, name="conv")
        gru = nn.GRUCell(self.hidden, name="gru")
        for _ in range(self.steps):
            m = nn.relu(conv(h, dense))
            h, _ = gru(h.reshape(b * n, -1), m.reshape(b * n, -1))
            h = h.reshape(b, n, -1)
        # The readout reads only nodes, their graph and mask.
        graph = GraphBatch(
            nodes=None,
            edges=None,
            senders=None,
            receivers=None,
            node_graph=jnp.repeat(jnp.arange(b, dtype=jnp.int32), n),
            node_mask=dense.node_mask.reshape(-1),
            edge_mask=None,
            graph_mask=jnp.ones((b,), bool),
        )
        return self._readout(h.reshape(b * n, -1), graph)

    def _readout(self, h: jax.Array, graph: GraphBatch) -> jax.Array:
        if self.readout == "set2set":
            out = Set2Set(3, name="set2set")(h, graph)
        elif self.readout == "mean":
            w = graph.node_mask.astype(h.dtype)
            total = jax.ops.segment_sum(h * w[:, None], graph.node_graph, graph.num_graphs)
            count = jax.ops.segment_sum(w, graph.node_graph, graph.num_graphs)
            out = total / jnp.maximum(count, 1.0)[:, None]
        else:
            raise ValueError(f"MPNN readout={self.readout!r}; valid: 'set2set', 'mean'")
        return nn.relu(nn.Dense(self.hidden, name="out")(out))
