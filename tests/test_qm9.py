"""QM9 (Nash-MTL's 11 targets): units, atomization energies, composition, split, standardisation.

A small CSV in the exact layout of qm9_qm9pack_scalar.csv.gz is written to tmp; the real file is
read only when $JMTL_DATA_DIR holds it.
"""

from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np
import pytest

from jmtl import metrics
from jmtl.data import qm9
from jmtl.data.idx import DataError

# The first two QM9 molecules (values of the original xyz files) and a zwitterion (/p+1 layer).
ROWS = [
    "1,C,InChI=1S/CH4/h1H4,5,157.7118,157.70997,157.70699,0.,13.21,-0.3877,0.1171,0.5048,35.3641,0.044749,-40.47893,-40.476062,-40.475117,-40.498597,6.469",
    "2,N,InChI=1S/H3N/h1H3,4,293.60975,293.54111,191.39397,1.6256,9.46,-0.257,0.0829,0.3399,26.1563,0.034358,-56.525887,-56.523026,-56.522082,-56.544961,6.316",
    '7699,[NH2+]=C1[CH-]C(=O)C=CN1,"InChI=1S/C5H5N2O/c6-5-3-4(8)1-2-7-5/h1-3H,(H2,6,7)/q-1/p+1",14,5.1,1.9,1.4,6.2,70.1,-0.21,-0.03,0.18,900.5,0.11,-378.6,-378.5,-378.49,-378.54,25.3',
]
HEADER = ",".join(qm9.HEADER)


def synthetic_rows(n: int, seed: int = 0) -> list[str]:
    """n molecules C_aH_b O_c with random property values (for split / standardisation tests)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a, b, c = int(rng.integers(1, 5)), int(rng.integers(2, 9)), int(rng.integers(0, 2))
        formula = f"C{a}H{b}" + (f"O{c}" if c else "")
        props = ",".join(f"{v:.6f}" for v in rng.normal(size=15))
        out.append(f"{i + 1},C,InChI=1S/{formula}/x,{a + b + c},{props}")
    return out


def test_units_and_atomization():
    raw = qm9.parse("\n".join([HEADER] + ROWS) + "\n", expected_rows=3)
    np.testing.assert_array_equal(raw.counts, [[4, 1, 0, 0, 0], [3, 0, 1, 0, 0], [6, 5, 2, 1, 0]])
    t = dict(zip(qm9.TASKS, raw.targets[0]))
    ev = 27.211386246
    assert t["mu"] == 0.0 and t["alpha"] == 13.21 and t["r2"] == 35.3641 and t["cv"] == 6.469
    assert t["homo"] == pytest.approx(-0.3877 * ev, rel=1e-12)
    assert t["lumo"] == pytest.approx(0.1171 * ev, rel=1e-12)
    assert t["zpve"] == pytest.approx(0.044749 * ev, rel=1e-12)
    # CH4: molecule energy minus C + 4 H reference energies (QM9 atomref), in eV.
    assert t["U0"] == pytest.approx((-40.47893 - (-37.846772 + 4 * -0.500273)) * ev, rel=1e-12)
    assert t["G"] == pytest.approx((-40.498597 - (-37.861317 + 4 * -0.510927)) * ev, rel=1e-12)
    # NH3 and the zwitterion (6 H: 5 in the formula layer + 1 mobile proton).
    assert raw.targets[1, qm9.TASKS.index("H")] == pytest.approx(
        (-56.522082 - (-54.581501 + 3 * -0.497912)) * ev, rel=1e-12
    )
    zw = -378.6 - (5 * -37.846772 + 6 * -0.500273 + 2 * -54.583861 - 75.064579)
    assert raw.targets[2, qm9.TASKS.index("U0")] == pytest.approx(zw * ev, rel=1e-12)
    assert qm9.composition(ROWS[2].split('"')[1]) == {"C": 5, "H": 6, "N": 2, "O": 1}


def test_split_and_standardisation():
    raw = qm9.parse("\n".join([HEADER] + synthetic_rows(60)) + "\n", expected_rows=None)
    ds = qm9.dataset_from_raw(raw, seed=4, test_size=10, validation_size=8)
    assert ds.spec.split_sizes == {"train": 42, "validation": 8, "test": 10}
    assert list(ds.spec.labels) == list(qm9.TASKS) and all(l.kind == "regression" for l in ds.spec.labels.values())
    info = ds.qm9
    ids = {s: np.searchsorted(raw.index, info.index[s]) for s in ("train", "validation", "test")}
    assert sorted(np.concatenate(list(ids.values()))) == list(range(60))  # a partition
    np.testing.assert_array_equal(ids["test"], np.random.default_rng(4).permutation(60)[:10])  # test first
    train = raw.targets[ids["train"]]
    np.testing.assert_allclose(info.mean, train.mean(0), rtol=1e-12)
    np.testing.assert_allclose(info.std, train.std(0), rtol=1e-12)
    for split in ("train", "test"):
        arrays = ds.arrays(split)
        z = np.stack([arrays[t] for t in qm9.TASKS], axis=1)
        np.testing.assert_allclose(z, (raw.targets[ids[split]] - info.mean) / info.std, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(arrays["x"], raw.counts[ids[split]])
        # MAE in original units from the standardised arrays equals the direct one.
        pred = z + 0.1
        mae = metrics.mae_original_units(pred, z, info.mean, info.std)
        np.testing.assert_allclose(mae, 0.1 * info.std, rtol=1e-5)
    assert np.all(info.smiles["test"] == raw.smiles[ids["test"]])


@pytest.mark.parametrize(
    "row, match",
    [
        (
            "9,C,InChI=1S/CH4/h1H4,6," + ",".join(["1"] * 15),
            r"the InChI formula gives .* \(5 atoms\), but N_atoms is 6",
        ),
        (
            "9,C,InChI=1S/CH4/h1H4,5," + ",".join(["1"] * 14) + ",x",
            r"line 3, column 19 \(Heatcapacity_Cv_cal_mol_K\): 'x'",
        ),
        ("9,C,InChI=1S/CH4/h1H4,5," + ",".join(["1"] * 14), "line 3 has 18 fields"),
        ("9,[Si],InChI=1S/SiH4/h1H4,5," + ",".join(["1"] * 15), r"elements \['Si'\]"),
        ("1,C,InChI=1S/CH4/h1H4,5," + ",".join(["1"] * 15), "Index 1 does not increase"),
    ],
)
def test_bad_rows(row, match):
    with pytest.raises(DataError, match=match):
        qm9.parse("\n".join([HEADER, ROWS[0], row]) + "\n", expected_rows=None)


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="no qm9_qm9pack_scalar.csv.gz"):
        qm9.load_qm9(data_dir=tmp_path)
    path = tmp_path / qm9.FILE
    with gzip.open(path, "wt") as f:
        f.write("\n".join([HEADER] + ROWS) + "\n")
    with pytest.raises(DataError, match="QM9 checksum mismatch"):
        qm9.load_qm9(data_dir=tmp_path)
    with pytest.raises(DataError, match="must be below 3 molecules"):
        qm9.load_qm9(data_dir=tmp_path, verify_checksums=False)
    with pytest.raises(DataError, match="3 molecules, the published file has 130831"):
        qm9.parse("\n".join([HEADER] + ROWS) + "\n", path)
    with pytest.raises(DataError, match="line 1 is not the expected header"):
        qm9.parse("\n".join(ROWS), path)


def test_real_file():
    d = os.environ.get("JMTL_DATA_DIR")
    if not d or not (pathlib.Path(d) / qm9.SUBFOLDER / qm9.FILE).is_file():
        pytest.skip("real QM9 file not available ($JMTL_DATA_DIR)")
    ds = qm9.load_qm9(data_dir=d)
    assert ds.spec.split_sizes == {"train": 110_831, "validation": 10_000, "test": 10_000}
    info = ds.qm9
    all_index = np.concatenate(list(info.index.values()))
    assert len(np.unique(all_index)) == 130_831 and all_index.min() == 1 and all_index.max() == 133_885
    # Standardised train targets have mean 0 and s.d. 1.
    z = np.stack([ds.arrays("train")[t] for t in qm9.TASKS], axis=1).astype(np.float64)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-4)


# ---------------------------------------------------------------------------- molecule graphs

rdkit = pytest.importorskip("rdkit", reason="molecule graphs need rdkit (the 'graphs' extra)")


def test_featurise_by_hand():
    """Methane, ammonia and formaldehyde / benzene features checked against chemistry by hand."""
    g = qm9.featurise(
        ["C", "N", "C=O", "c1ccccc1"],
        counts=np.array([[4, 1, 0, 0, 0], [3, 0, 1, 0, 0], [2, 1, 0, 1, 0], [6, 6, 0, 0, 0]]),
    )
    nodes, edges, s, r = g.graph(0)  # CH4: C then 4 H (rdkit AddHs appends H), 4 bonds both ways
    np.testing.assert_array_equal(nodes[:, :5].sum(0), [4, 1, 0, 0, 0])
    c = nodes[nodes[:, 1] == 1][0]
    assert c[5] == 6 and c[6] == 0 and tuple(c[7:10]) == (0, 0, 1) and c[10] == 4  # sp3, 4 H neighbours
    h = nodes[nodes[:, 0] == 1]
    assert np.all(h[:, 5] == 1) and np.all(h[:, 7:11] == 0)  # H: no hybridisation, no H neighbour
    assert len(s) == 8 and np.all(edges[:, 0] == 1)  # single bonds
    pairs = set(zip(s.tolist(), r.tolist()))
    assert all((b, a) in pairs for a, b in pairs)  # both directions
    assert list(zip(s, r)) == sorted(zip(s, r))  # PyG's edge order
    nodes, _, _, _ = g.graph(1)
    assert nodes[nodes[:, 2] == 1][0][10] == 3 and nodes[nodes[:, 2] == 1][0][5] == 7
    nodes, edges, s, r = g.graph(2)  # C=O: one double bond, carbon sp2 with 2 H
    c, o = nodes[nodes[:, 1] == 1][0], nodes[nodes[:, 3] == 1][0]
    assert tuple(c[7:10]) == (0, 1, 0) and c[10] == 2 and o[10] == 0
    co = (s == np.flatnonzero(nodes[:, 1] == 1)[0]) & (r == np.flatnonzero(nodes[:, 3] == 1)[0])
    np.testing.assert_array_equal(edges[co][0], [0, 1, 0, 0])
    nodes, edges, s, r = g.graph(3)  # benzene: 6 aromatic sp2 C, 6 aromatic + 6 C-H bonds
    ring = nodes[:, 1] == 1
    assert np.all(nodes[ring, 6] == 1) and np.all(nodes[ring, 8] == 1) and np.all(nodes[ring, 10] == 1)
    assert edges.sum(0).tolist() == [12, 0, 0, 12]


def test_featurise_errors():
    with pytest.raises(DataError, match="cannot parse"):
        qm9.featurise(["C1CC"])
    with pytest.raises(DataError, match="element Cl"):
        qm9.featurise(["CCl"])
    with pytest.raises(DataError, match="InChI"):
        qm9.featurise(["CO"], counts=np.array([[4, 1, 0, 0, 0]]))


def test_pack_take_and_subset():
    smiles = ["C", "CC#N", "O=CC=O", "c1ccoc1"]
    g = qm9.featurise(smiles)
    packed = qm9.pack(g)
    assert packed.shape == (4, qm9.packed_size()) and packed.dtype == np.float32
    sub = g.take(np.array([3, 1]))
    for k, i in enumerate([3, 1]):
        for a, b in zip(sub.graph(k), g.graph(i)):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(qm9.pack(sub), packed[[3, 1]])
    with pytest.raises(DataError, match="budget"):
        qm9.pack(g, max_nodes=5)


def test_graph_input_from_packed_rows_matches_graphs():
    """A packed batch through MPNN equals the same molecules padded with pad_graphs."""
    import jax

    from jmtl.models import gnn

    g = qm9.featurise(["CC(=O)N", "C1CC1", "OCC#C"])
    packed = qm9.pack(g)
    model = gnn.MPNN(hidden=8, steps=2, edge_hidden=4)
    params = model.init(jax.random.PRNGKey(0), packed)
    tight = gnn.pad_graphs([g.graph(i) for i in range(3)], max_nodes=40, max_edges=80)
    apply = jax.jit(model.apply)  # compiled: op by op the message-passing loop took ~70 s on a loaded CPU
    np.testing.assert_allclose(
        np.asarray(apply(params, packed)), np.asarray(apply(params, tight)), rtol=2e-5, atol=1e-6
    )


def _graph_file(tmp_path, rows, folder="raw"):
    raw_dir = tmp_path / folder
    raw_dir.mkdir(exist_ok=True)
    path = raw_dir / qm9.FILE
    with gzip.open(path, "wt", newline="") as f:
        f.write("\n".join([HEADER] + rows) + "\n")
    return path


def test_graph_cache_is_tied_to_source_bytes(tmp_path, capsys):
    rows = [ROWS[0], ROWS[1], ROWS[2]]
    path = _graph_file(tmp_path, rows)
    raw = qm9.parse(gzip.open(path, "rt").read(), expected_rows=None)
    cache = tmp_path / "cache"
    first = qm9.cached_graphs(raw, path, cache)
    folders = sorted((cache / qm9.GRAPH_CACHE_FOLDER).iterdir())
    assert len(folders) == 1
    again = qm9.cached_graphs(raw, path, cache)  # read back: same arrays
    np.testing.assert_array_equal(again.nodes, first.nodes)
    # Other source bytes (a changed property value, same molecules) -> another key, a new folder.
    path2 = _graph_file(tmp_path, [ROWS[0].replace("6.469", "6.470"), ROWS[1], ROWS[2]], folder="raw2")
    qm9.cached_graphs(raw, path2, cache)
    assert len(sorted((cache / qm9.GRAPH_CACHE_FOLDER).iterdir())) == 2
    # A damaged cache file is never read: moved aside, rebuilt.
    npz = folders[0] / qm9.GRAPH_CACHE_FILE
    npz.write_bytes(npz.read_bytes()[:-10] + b"0123456789")
    rebuilt = qm9.cached_graphs(raw, path, cache)
    np.testing.assert_array_equal(rebuilt.nodes, first.nodes)
    assert "moved to" in capsys.readouterr().out
    assert any((cache / "_damaged").rglob(qm9.GRAPH_CACHE_FILE))


def test_graph_dataset_subset(tmp_path):
    # ROWS plus copies of methane / ammonia with other property values (so train is not constant).
    extra = []
    for k in range(4):
        fields = ROWS[k % 2].split(",")
        fields[0] = str(8000 + k)
        fields[4:] = [f"{float(v) * (1 + 0.01 * (k + 1)):.6f}" for v in fields[4:]]
        extra.append(",".join(fields))
    raw = qm9.parse("\n".join([HEADER] + ROWS + extra) + "\n", expected_rows=None)
    ds = qm9.dataset_from_raw(raw, seed=0, test_size=2, validation_size=1, inputs="graph", train_size=2, eval_size=1)
    assert ds.spec.input_shape == (qm9.packed_size(),)
    assert ds.spec.split_sizes == {"train": 2, "validation": 1, "test": 1}
    full = qm9.dataset_from_raw(raw, seed=0, test_size=2, validation_size=1)
    np.testing.assert_allclose(ds.qm9.std, full.qm9.std)  # the whole train split's statistics
    np.testing.assert_array_equal(ds.qm9.index["train"], full.qm9.index["train"][:2])  # a prefix
    x = ds.arrays("train")["x"]
    node_mask = x[:, : qm9.MAX_NODES]
    np.testing.assert_array_equal(
        node_mask.sum(1), [raw.counts[np.searchsorted(raw.index, i)].sum() for i in ds.qm9.index["train"]]
    )
    with pytest.raises(DataError, match="inputs"):
        qm9.dataset_from_raw(raw, seed=0, test_size=1, validation_size=1, inputs="xyz")


def test_missing_rdkit_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_rdkit(name, *args, **kwargs):
        if name == "rdkit" or name.startswith("rdkit."):
            raise ImportError("No module named 'rdkit'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rdkit)
    with pytest.raises(ImportError, match=r"pip install 'rdkit>=.*jmtl\[graphs\]"):
        qm9.featurise(["C"])
