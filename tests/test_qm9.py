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
    assert raw.targets[1, qm9.TASKS.index("H")] == pytest.approx((-56.522082 - (-54.581501 + 3 * -0.497912)) * ev, rel=1e-12)
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
        ("9,C,InChI=1S/CH4/h1H4,6," + ",".join(["1"] * 15), r"the InChI formula gives .* \(5 atoms\), but N_atoms is 6"),
        ("9,C,InChI=1S/CH4/h1H4,5," + ",".join(["1"] * 14) + ",x", r"line 3, column 19 \(Heatcapacity_Cv_cal_mol_K\): 'x'"),
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
