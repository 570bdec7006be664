"""QM9 with 3-D geometry from qm9pack's CSVs (inputs='geometry'): the filter, the units, the atom
order, the distances (numpy brute force), the dense complete-graph network, the cache and the
missing-package error.

qm9pack is NOT needed: a tiny package folder in qm9pack's exact on-disk format (data/qm9_part1..3.csv,
its 25-column header, quoted per-atom lists) is written to tmp and passed as ``package_dir``.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from jmtl.data import qm9
from jmtl.data.idx import DataError

pytest.importorskip("rdkit", reason="molecule graphs need rdkit (the 'graphs' extra)")

EV = 27.211386246
# Real QM9 rows (xyz files 1-4): elements, coordinates (Angstrom) and the 15 properties.
CH4 = (
    1,
    "C",
    "InChI=1S/CH4/h1H4",
    ["C", "H", "H", "H", "H"],
    [
        [-0.0126981359, 1.0858041578, 0.0080009958],
        [0.002150416, -0.0060313176, 0.0019761204],
        [1.0117308433, 1.4637511618, 0.0002765748],
        [-0.540815069, 1.4475266138, -0.8766437152],
        [-0.5238136345, 1.4379326443, 0.9063972942],
    ],
    "157.7118,157.70997,157.70699,0.,13.21,-0.3877,0.1171,0.5048,35.3641,0.044749,-40.47893,-40.476062,-40.475117,-40.498597,6.469",
)
NH3 = (
    2,
    "N",
    "InChI=1S/H3N/h1H3",
    ["N", "H", "H", "H"],
    [
        [-0.0404260543, 1.0241077531, 0.0625637998],
        [0.0172574639, 0.0125452063, -0.0273771593],
        [0.9157893661, 1.3587451948, -0.0287577581],
        [-0.5202777357, 1.3435321258, -0.7755426124],
    ],
    "293.60975,293.54111,191.39397,1.6256,9.46,-0.257,0.0829,0.3399,26.1563,0.034358,-56.525887,-56.523026,-56.522082,-56.544961,6.316",
)
H2O = (
    3,
    "O",
    "InChI=1S/H2O/h1H2",
    ["O", "H", "H"],
    [
        [-0.0343604951, 0.9775395708, 0.0076015923],
        [0.0647664923, 0.0205721989, 0.0015346341],
        [0.8717903737, 1.3007924048, 0.0006931336],
    ],
    "799.58812,437.90386,282.94545,1.8511,6.31,-0.2928,0.0687,0.3615,19.0002,0.021375,-76.404702,-76.401867,-76.400922,-76.422349,6.002",
)
C2H2 = (
    4,
    "C#C",
    "InChI=1S/C2H2/c1-2/h1-2H",
    ["C", "C", "H", "H"],
    [[0.5995394918, 0.0, 1.0], [-0.5995394918, 0.0, 1.0], [-1.6616385861, 0.0, 1.0], [1.6616385861, 0.0, 1.0]],
    "0.,35.6100361,35.6100361,0.,16.28,-0.2845,0.0506,0.3351,59.5248,0.026841,-77.308427,-77.305527,-77.304583,-77.327429,8.574",
)
# Formaldehyde (xyz 6's geometry) with its atoms listed H, C, H, O: not rdkit's C, O, H, H order.
H2CO = (
    6,
    "C=O",
    "InChI=1S/CH2O/c1-2/h1H2",
    ["H", "C", "H", "O"],
    [
        [0.9149602868, 1.789511172, 0.0039565555],
        [-0.0139776956, 1.1802114286, 0.0077524981],
        [-0.9591097173, 1.7640179751, 0.0171828436],
        [0.0023139861, -0.0196636557, 0.0021610727],
    ],
    "285.48839,38.1,33.5,2.1089,14.18,-0.267,-0.0406,0.2263,59.9891,0.026603,-114.483613,-114.480746,-114.479802,-114.505268,6.413",
)
# Index 58 is on QM9's uncharacterised list: PyG's QM9 leaves it out, so must the loader.
UNCHARACTERISED = (58, *CH4[1:])


def _row(mol) -> str:
    index, smiles, inchi, elements, xyz, props = mol
    lst = lambda v: "[" + ",".join(map(str, v)) + "]"
    n = len(elements)
    stoich = lst([elements.count(e) for e in qm9.ELEMENTS])
    quoted = [
        f'"dsgdb9nsd_{index:06d}.xyz"',
        str(index),
        f'"{smiles}"',
        f'"{inchi}"',
        str(n),
        f'"{stoich}"',
        '"[' + ",".join(f"'{e}'" for e in elements) + ']"',
        '"[' + ",".join(lst(p) for p in xyz) + ']"',
        '"' + lst([0.1] * n) + '"',
        '"[1000.0,2000.0]"',
    ]
    return ",".join(quoted) + "," + props


def fake_package(root, molecules=(CH4, NH3, UNCHARACTERISED, H2O, C2H2, H2CO)):
    """A qm9pack package folder: data/qm9_part{1,2,3}.csv, the molecules split over the three."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    chunks = np.array_split(np.arange(len(molecules)), 3)
    for name, rows in zip(qm9.QM9PACK_PARTS, chunks):
        lines = [",".join(qm9.QM9PACK_HEADER)] + [_row(molecules[i]) for i in rows]
        (data / name).write_text("\n".join(lines) + "\n", encoding="ascii")
    return root


@pytest.fixture
def package(tmp_path):
    return fake_package(tmp_path / "qm9pack")


def test_filter_units_and_atoms(package):
    raw, atoms, parts = qm9.load_qm9pack(package, verify_checksums=False)
    assert [p.name for p in parts] == list(qm9.QM9PACK_PARTS)
    np.testing.assert_array_equal(raw.index, [1, 2, 3, 4, 6])  # 58 (uncharacterised) left out
    assert 58 in qm9.uncharacterized() and len(qm9.uncharacterized()) == 3054
    t = dict(zip(qm9.TASKS, raw.targets[0]))  # CH4, the units of the module table
    assert t["mu"] == 0.0 and t["alpha"] == 13.21 and t["r2"] == 35.3641 and t["cv"] == 6.469
    assert t["homo"] == pytest.approx(-0.3877 * EV, rel=1e-12)
    assert t["zpve"] == pytest.approx(0.044749 * EV, rel=1e-12)
    assert t["U0"] == pytest.approx((-40.47893 - (-37.846772 + 4 * -0.500273)) * EV, rel=1e-12)
    assert raw.targets[1, qm9.TASKS.index("G")] == pytest.approx((-56.544961 - (-54.598897 + 3 * -0.510927)) * EV)
    # The same rows in the scalar file's format give the same targets (one conversion for both).
    scalar = "\n".join(
        [",".join(qm9.HEADER)] + [f"{m[0]},{m[1]},{m[2]},{len(m[3])},{m[5]}" for m in (CH4, NH3, H2O, C2H2, H2CO)]
    )
    np.testing.assert_array_equal(qm9.parse(scalar + "\n", expected_rows=None).targets, raw.targets)
    np.testing.assert_array_equal(np.diff(atoms.offsets), [5, 4, 3, 4, 4])
    np.testing.assert_array_equal(atoms.positions[atoms.offsets[4] : atoms.offsets[5]], H2CO[4])
    with pytest.raises(DataError, match="5 molecules after leaving out the uncharacterised ones, expected 130831"):
        qm9.parse_qm9pack([(p, p.read_text()) for p in parts])
    with pytest.raises(DataError, match=r"not the file of qm9pack==1\.0\.3"):
        qm9.load_qm9pack(package)


def test_parse_errors_name_line_and_fix(package):
    part = package / "data" / qm9.QM9PACK_PARTS[0]
    good = part.read_text()
    part.write_text(good.replace("'H','H','H','H'", "'H','H','H','O'"))
    with pytest.raises(DataError, match=r"qm9_part1.csv: line 2 \(Index 1\).*InChI formula.*pip install 'jmtl\[qm9\]'"):
        qm9.load_qm9pack(package, verify_checksums=False)
    part.write_text(good.replace("-40.47893", "nan"))
    with pytest.raises(DataError, match=r"line 2, column 21 \(InternalEnergy_0K_au\)"):
        qm9.load_qm9pack(package, verify_checksums=False)
    part.write_text(good.replace("XYZ_file", "xyz"))
    with pytest.raises(DataError, match="not qm9pack's header"):
        qm9.load_qm9pack(package, verify_checksums=False)


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.delenv(qm9.ENV_QM9PACK_DIR, raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "qm9pack" else real(name, *a))
    with pytest.raises(DataError, match=r"qm9pack is not installed\. Fix: pip install 'jmtl\[qm9\]'"):
        qm9.load_qm9(inputs="geometry")
    with pytest.raises(DataError, match=r"no data/qm9_part1.csv.*Fix: pip install 'jmtl\[qm9\]'"):
        qm9.find_qm9pack(tmp_path)
    monkeypatch.setenv(qm9.ENV_QM9PACK_DIR, str(fake_package(tmp_path / "env_pack")))
    assert qm9.find_qm9pack()[0] == tmp_path / "env_pack" / "data" / qm9.QM9PACK_PARTS[0]


def _geometry(package):
    raw, atoms, _ = qm9.load_qm9pack(package, verify_checksums=False)
    return raw, atoms, qm9.featurise_geometry(raw.smiles, raw.counts, atoms)


def test_atoms_in_xyz_order_and_distances_against_brute_force(package):
    raw, atoms, g = _geometry(package)
    mols = (CH4, NH3, H2O, C2H2, H2CO)
    for i, mol in enumerate(mols):
        nodes, edges, s, r = g.complete_graph(i)
        n = len(mol[3])
        # Elements in the xyz order (one-hot H C N O F).
        assert [qm9.ELEMENTS[k] for k in nodes[:, :5].argmax(1)] == mol[3]
        assert len(s) == n * (n - 1) and edges.shape == (n * (n - 1), 5)
        for k in range(len(s)):  # float64 brute force from the CSV's coordinates
            assert edges[k, 4] == pytest.approx(math.dist(mol[4][s[k]], mol[4][r[k]]), rel=1e-6)
    # Formaldehyde listed H, C, H, O: the double bond joins xyz atoms 1 and 3, each H bonds to C.
    nodes, edges, s, r = g.complete_graph(4)
    bonds = {(int(a), int(b)): tuple(e[:4]) for a, b, e in zip(s, r, edges)}
    assert bonds[(1, 3)] == (0, 1, 0, 0) and bonds[(3, 1)] == (0, 1, 0, 0)
    assert bonds[(0, 1)] == (1, 0, 0, 0) and bonds[(2, 1)] == (1, 0, 0, 0)
    assert bonds[(0, 3)] == (0, 0, 0, 0) and bonds[(0, 2)] == (0, 0, 0, 0)  # non-bonded pairs: zeros
    assert nodes[1, 10] == 2 and tuple(nodes[1, 7:10]) == (0, 1, 0)  # C: 2 H neighbours, sp2
    # A geometry that does not fit the SMILES (acetylene's H moved onto the other carbon) is refused.
    bad = atoms.take(np.arange(5))
    p = bad.positions.copy()
    p[bad.offsets[3] + 2] = [2.6, 0.0, 1.0]  # H 2 now 1.0 A from neither carbon
    with pytest.raises(DataError, match="does not match the covalent contacts"):
        qm9.featurise_geometry(raw.smiles, raw.counts, qm9.Atoms(bad.offsets, bad.elements, p))


def test_packed_complete_graph_through_the_network(package):
    """The dense layout's edges equal ``complete_graph``; MPNN(geometry=True) on it equals the sparse
    NNConv network on the same complete graphs with the same parameters."""
    import jax

    from jmtl.models import gnn

    _, _, g = _geometry(package)
    packed = qm9.pack_geometry(g)
    assert packed.shape == (5, qm9.geometry_packed_size())
    model = gnn.MPNN(hidden=8, steps=1, edge_hidden=4, geometry=True, edge_features=len(qm9.BOND_TYPES))
    sparse = gnn.MPNN(hidden=8, steps=1, edge_hidden=4, edge_features=5)
    batch = gnn.pad_graphs([g.complete_graph(i) for i in range(5)], max_nodes=40, max_edges=200)
    params = jax.jit(sparse.init)(jax.random.PRNGKey(0), batch)  # the same parameter tree

    @jax.jit  # one compile for all of it (op-by-op dispatch is slow on a loaded CPU)
    def run(params, packed, batch):
        dense = gnn.unpack_complete(packed, qm9.MAX_NODES, len(qm9.NODE_FEATURES), len(qm9.BOND_TYPES))
        return dense.edges, dense.edge_mask, model.apply(params, packed), sparse.apply(params, batch)

    edges_dense, edge_mask, out_dense, out_sparse = map(np.asarray, run(params, packed, batch))
    for i in range(5):
        _, edges, s, r = g.complete_graph(i)
        np.testing.assert_allclose(edges_dense[i][s, r], edges, rtol=1e-5, atol=1e-6)
        n = len(np.unique(s))
        assert int(edge_mask[i].sum()) == n * (n - 1)
    np.testing.assert_allclose(out_dense, out_sparse, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="geometry=True only for inputs='geometry'"):
        model.apply(params, packed[:, :-1])


def test_cache_tied_to_the_package_files(package, tmp_path, capsys):
    raw, atoms, parts = qm9.load_qm9pack(package, verify_checksums=False)
    cache = tmp_path / "cache"
    first = qm9.cached_geometry(raw, atoms, parts, cache)
    again = qm9.cached_geometry(raw, atoms, parts, cache)
    np.testing.assert_array_equal(again.positions, first.positions)
    assert len(list((cache / qm9.GEOMETRY_CACHE_FOLDER).iterdir())) == 1
    # A changed source file (one coordinate) -> another key: the old cache is not read.
    part = parts[-1]
    part.write_text(part.read_text().replace("-0.0139776956", "-0.0139776957"))
    raw2, atoms2, _ = qm9.load_qm9pack(package, verify_checksums=False)
    changed = qm9.cached_geometry(raw2, atoms2, parts, cache)
    assert len(list((cache / qm9.GEOMETRY_CACHE_FOLDER).iterdir())) == 2
    assert changed.positions[first.node_offsets[4] + 1, 0] == np.float32(-0.0139776957)
    # A damaged cache file is moved aside and rebuilt.
    for folder in (cache / qm9.GEOMETRY_CACHE_FOLDER).iterdir():
        npz = folder / qm9.GRAPH_CACHE_FILE
        npz.write_bytes(npz.read_bytes()[:-10] + b"0123456789")
    rebuilt = qm9.cached_geometry(raw2, atoms2, parts, cache)
    np.testing.assert_array_equal(rebuilt.positions, changed.positions)
    assert "moved to" in capsys.readouterr().out


def test_geometry_dataset_keeps_the_split_and_standardisation(package):
    raw, atoms, g = _geometry(package)
    ds = qm9.dataset_from_raw(raw, seed=1, test_size=1, validation_size=1, inputs="geometry", atoms=atoms)
    comp = qm9.dataset_from_raw(raw, seed=1, test_size=1, validation_size=1)
    assert ds.spec.input_shape == (qm9.geometry_packed_size(),)
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(ds.qm9.index[split], comp.qm9.index[split])  # same molecules
        for t in qm9.TASKS:
            np.testing.assert_array_equal(ds.arrays(split)[t], comp.arrays(split)[t])
    rows = np.searchsorted(raw.index, ds.qm9.index["train"])
    np.testing.assert_array_equal(ds.arrays("train")["x"], qm9.pack_geometry(g.take(rows)))
    with pytest.raises(DataError, match="needs the molecules' atoms"):
        qm9.dataset_from_raw(raw, test_size=1, validation_size=1, inputs="geometry")


def test_metric_scale_is_the_train_std_in_the_papers_units(package):
    """``dataset.metric_scale`` turns the stored (standardised) targets' errors into the papers'
    units: the train std of each target times its meV factor (what a Delta-m% reference is read in)."""
    raw, atoms, _ = _geometry(package)
    ds = qm9.dataset_from_raw(raw, seed=1, test_size=1, validation_size=1, inputs="geometry", atoms=atoms)
    train_rows = np.searchsorted(raw.index, ds.qm9.index["train"])
    std = raw.targets[train_rows].std(axis=0)
    for k, t in enumerate(qm9.TASKS):
        np.testing.assert_allclose(ds.metric_scale[t], std[k] * qm9.REPORT_SCALE[k], rtol=1e-6)


@pytest.mark.parametrize("protocol, batch, patience", [("nash_mtl", 120, 5), ("ntkmtl", 60, 10)])
def test_protocol_configs_select_and_schedule_on_validation_delta_m(protocol, batch, patience):
    from experiments.configs import qm9_geometry
    from jmtl.training import config_schema

    c = qm9_geometry.get_config(f"famo,{protocol}")
    config_schema.validate_config(c)
    assert (c.batch_size, c.optimizer.plateau_patience) == (batch, patience)
    assert (c.optimizer.plateau_factor, c.optimizer.plateau_min_lr) == (0.7, 1e-5)
    assert set(c.selection_reference) == set(qm9.TASKS) and min(c.selection_reference.values()) > 0
    # BASE lists the targets in PyG order, which qm9.TASKS follows (mu first, cv last).
    assert (
        c.selection_reference["mu"] < 0.1 and c.selection_reference["homo"] > 50 and c.selection_reference["cv"] < 0.1
    )
    assert all(c.tasks[t]["metric"] == "mae" for t in qm9.TASKS)
