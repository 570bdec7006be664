"""Census-Income (KDD) builder: parsing and verification, encoding (train vocabularies, OOV, train
standardisation, MMoE labels), the tfds cache and the MTLDataset it feeds.

Small synthetic files in the exact UCI format (42 fields joined by ', ', label last) are written to
tmp dirs; the one test that reads the real files is skipped unless $JMTL_DATA_DIR holds them.
"""

from __future__ import annotations

import bz2
import gzip
import os
import pathlib

import numpy as np
import pytest

from jmtl.data import census
from jmtl.data.idx import DataError

# A few real values per column (census-income.names); everything else gets a generic value.
POOLS = {
    "class_of_worker": ["Not in universe", "Private", "Local government", "Never worked"],
    "detailed_industry_recode": ["0", "4", "33", "40"],
    "education": list(census.ALL_EDUCATION),
    "marital_stat": ["Never married", "Married-civilian spouse present", "Divorced", "Widowed"],
    "race": ["White", "Black", "Other"],
    "sex": ["Female", "Male"],
    "migration_code_change_in_msa": ["?", "Nonmover", "MSA to MSA"],
    "year": ["94", "95"],
    "income": [census.INCOME_NEGATIVE, census.INCOME_POSITIVE],
}


def make_rows(n: int, seed: int, extra_value: str | None = None) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = []
        for name in census.COLUMNS:
            if name in census.CONTINUOUS:
                v = (
                    str(int(rng.integers(0, 90)))
                    if name != "wage_per_hour"
                    else str(int(rng.choice([0, 0, 500, 1200])))
                )
            elif name == "instance_weight":
                v = f"{rng.uniform(100, 3000):.2f}"
            else:
                pool = POOLS.get(name, [f"{name} a", f"{name} b", "Not in universe"])
                v = pool[int(rng.integers(len(pool)))]
            row.append(v)
        rows.append(row)
    if extra_value is not None:  # a value of class_of_worker that train never has
        rows[0][census.COLUMNS.index("class_of_worker")] = extra_value
    return rows


def write(path: pathlib.Path, rows, compress: str = "") -> pathlib.Path:
    text = "".join(census.SEPARATOR.join(r) + "\n" for r in rows).encode("ascii")
    path = path.with_name(path.name + compress)
    opener = {"": open, ".gz": gzip.open, ".bz2": bz2.open}[compress]
    with opener(path, "wb") as f:
        f.write(text)
    return path


@pytest.fixture
def raw_dir(tmp_path):
    folder = tmp_path / "raw" / census.SUBFOLDER
    folder.mkdir(parents=True)
    write(folder / census.TRAIN.name, make_rows(120, 0), ".bz2")
    write(folder / census.TEST.name, make_rows(41, 1, extra_value="Without pay"), ".gz")
    return tmp_path / "raw"


def parsed(folder):
    return [
        census.parse(census.read_text(p), p) for p in (census.find_file(folder, r) for r in (census.TRAIN, census.TEST))
    ]


def test_compression_forms_read_the_same(tmp_path):
    rows = make_rows(30, 5)
    tables = [census.parse(census.read_text(write(tmp_path / f"f{c}", rows, c)), "f") for c in ("", ".gz", ".bz2")]
    for t in tables[1:]:
        assert t.values == tables[0].values
        np.testing.assert_array_equal(t.codes, tables[0].codes)


def test_encode_uses_train_statistics_only(raw_dir):
    train_rows, test_rows = make_rows(120, 0), make_rows(41, 1, extra_value="Without pay")
    tables = parsed(raw_dir)
    (train, test), info = census.encode(tables[0], tables[1:])
    # Categorical ids: 1 + index in the sorted TRAIN vocabulary; an unseen test value gets id 0.
    for k, name in enumerate(census.CATEGORICAL):
        j = census.COLUMNS.index(name)
        vocab = sorted({r[j] for r in train_rows})
        assert info.vocabularies[name] == tuple(vocab)
        np.testing.assert_array_equal(train["categorical"][:, k], [vocab.index(r[j]) + 1 for r in train_rows])
        np.testing.assert_array_equal(
            test["categorical"][:, k], [vocab.index(r[j]) + 1 if r[j] in vocab else census.OOV_ID for r in test_rows]
        )
    assert test["categorical"][0, census.CATEGORICAL.index("class_of_worker")] == census.OOV_ID
    # Continuous: standardised with the float64 train mean / population std, for both splits.
    cols = [census.COLUMNS.index(c) for c in census.CONTINUOUS]
    raw_train = np.array([[float(r[j]) for j in cols] for r in train_rows])
    raw_test = np.array([[float(r[j]) for j in cols] for r in test_rows])
    mean, std = raw_train.mean(0), raw_train.std(0)
    np.testing.assert_allclose(info.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(train["continuous"], (raw_train - mean) / std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(test["continuous"], (raw_test - mean) / std, rtol=1e-5, atol=1e-6)
    # Labels, each from its own column.
    for arrays, rows in ((train, train_rows), (test, test_rows)):
        np.testing.assert_array_equal(arrays["income"], [r[-1] == "50000+." for r in rows])
        np.testing.assert_array_equal(arrays["marital"], [r[7] == "Never married" for r in rows])
        np.testing.assert_array_equal(arrays["education"], [r[4] in census.COLLEGE_EDUCATION for r in rows])
    # No label column (nor the instance weight) is an input.
    assert not {"education", "marital_stat", "income", "instance_weight"} & set(census.CATEGORICAL + census.CONTINUOUS)
    assert len(census.CATEGORICAL) == 31 and len(census.CONTINUOUS) == 7


def test_bachelors_split(raw_dir):
    tables = parsed(raw_dir)
    (train,), _ = census.encode(tables[0], [], "bachelors")
    edu = census._column(tables[0], "education")
    np.testing.assert_array_equal(train["education"], [e in census.BACHELORS_OR_HIGHER for e in edu])
    assert train["education"].sum() < census.encode(tables[0], [])[0][0]["education"].sum()


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda rows: rows[2].pop(), r"line 3 has 41 fields"),
        (lambda rows: rows.__setitem__(4, rows[4][:-1] + ["50000."]), r"line 5, column 42 \(income\)"),
        (lambda rows: rows[1].__setitem__(0, "abc"), r"line 2, column 1 \(age\): 'abc'"),
        (lambda rows: rows[3].__setitem__(24, "nan"), r"line 4, column 25 \(instance_weight\)"),
    ],
)
def test_bad_rows_are_named(tmp_path, mutate, match):
    rows = make_rows(8, 2)
    mutate(rows)
    path = write(tmp_path / "census-income.data", rows)
    with pytest.raises(DataError, match=match):
        census.parse(census.read_text(path), path)


def test_published_counts_and_checksum(tmp_path):
    rows = make_rows(10, 3)
    path = write(tmp_path / "census-income.data", rows)
    text = census.read_text(path)
    with pytest.raises(DataError, match="10 rows, the published census-income.data has 199523"):
        census.parse(text, path, census.TRAIN)
    with pytest.raises(DataError, match="SHA-256 of the decompressed text"):
        census.parse(text, path, census.RawFile("census-income.data", 10, "0" * 64))
    import hashlib

    census.parse(text, path, census.RawFile("census-income.data", 10, hashlib.sha256(text).hexdigest()))


def test_corrupt_and_missing_files(tmp_path):
    path = write(tmp_path / "census-income.data", make_rows(50, 4), ".gz")
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="cannot decompress"):
        census.read_text(path)
    with pytest.raises(DataError, match="no Census-Income file census-income.test"):
        census.find_file(tmp_path, census.TEST)


def test_load_census_dataset(raw_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    ds = census.load_census(data_dir=raw_dir, cache_dir=cache, group=1, seed=3, verify_checksums=False)
    spec = ds.spec
    assert list(spec.labels) == ["income", "marital"] and all(l.kind == "binary" for l in spec.labels.values())
    assert spec.split_sizes == {"train": 120, "validation": 20, "test": 21}
    # The validation and test halves are exactly the test file's rows, in the seeded order.
    (train_ref, test_ref), info = census.encode(parsed(raw_dir)[0], parsed(raw_dir)[1:])
    val_ids, test_ids = census.validation_test_split(41, 3)
    assert len(np.intersect1d(val_ids, test_ids)) == 0 and len(np.union1d(val_ids, test_ids)) == 41
    for split, ids in (("validation", val_ids), ("test", test_ids)):
        arr = ds.arrays(split)
        np.testing.assert_array_equal(arr["x"][:, :31], test_ref["categorical"][ids])
        np.testing.assert_allclose(arr["x"][:, 31:], test_ref["continuous"][ids])
        np.testing.assert_array_equal(arr["income"], test_ref["income"][ids])
        assert set(arr) == {"x", "income", "marital"}
    # The on-device transform: one 1 per categorical column, at offset + id, then the continuous values.
    x = ds.arrays("train")["x"][:5]
    dense = np.asarray(spec.input_transform(x))
    assert dense.shape == (5, info.one_hot_dim) == (5, spec.input_shape[0])
    offsets = np.concatenate([[0], np.cumsum(info.vocab_sizes)[:-1]])
    hot = np.zeros((5, sum(info.vocab_sizes)))
    hot[np.arange(5)[:, None], offsets + x[:, :31].astype(int)] = 1
    np.testing.assert_array_equal(dense[:, : sum(info.vocab_sizes)], hot)
    np.testing.assert_allclose(dense[:, sum(info.vocab_sizes) :], x[:, 31:])
    batch = next(ds.train_iterator(16, seed=0))
    assert batch["x"].shape == (16, 38) and batch["marital"].dtype == np.int32
    # Group 2 reuses the cache: with no data dir at all, the one build of this seed is used.
    monkeypatch.delenv("JMTL_DATA_DIR", raising=False)
    ds2 = census.load_census(cache_dir=cache, group="education_marital", seed=3)
    assert list(ds2.spec.labels) == ["education", "marital"]
    np.testing.assert_array_equal(ds2.arrays("test")["education"], test_ref["education"][test_ids])
    assert ds2.census_info == ds.census_info
    with pytest.raises(DataError, match="group must be"):
        census.load_census(data_dir=raw_dir, cache_dir=cache, group=3)


def test_load_census_verifies_by_default(raw_dir, tmp_path):
    # Files named like the published ones are checked against the published sha256s on every load.
    with pytest.raises(DataError, match=r"Census-Income \(KDD\) checksum mismatch"):
        census.load_census(data_dir=raw_dir, cache_dir=tmp_path / "cache")
    # Other names (plain text here) have no file checksum: the build checks the content instead.
    plain = tmp_path / "plain"
    plain.mkdir()
    write(plain / census.TRAIN.name, make_rows(12, 0))
    write(plain / census.TEST.name, make_rows(6, 1))
    with pytest.raises(DataError, match="12 rows, the published census-income.data has 199523"):
        census.load_census(data_dir=plain, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / census.CensusIncome.name).exists() or not any(
        (tmp_path / "cache" / census.CensusIncome.name).rglob("*.array_record*")
    )


def _real_dir():
    d = os.environ.get("JMTL_DATA_DIR")
    if not d or not (pathlib.Path(d) / census.SUBFOLDER).is_dir():
        pytest.skip("real Census-Income files not available ($JMTL_DATA_DIR)")
    return d


def test_real_files():
    d = _real_dir()
    tables = [
        census.parse(census.read_text(p), p, raw)
        for raw in (census.TRAIN, census.TEST)
        for p in [census.find_file(d, raw)]
    ]
    assert [len(t.codes) for t in tables] == [199_523, 99_762]
    # Distinct values per attribute in train, as census-income.names lists them (columns 0..39
    # without the instance weight).
    published = [
        91,
        9,
        52,
        47,
        17,
        1240,
        3,
        7,
        24,
        15,
        5,
        10,
        2,
        3,
        6,
        8,
        132,
        113,
        1478,
        6,
        6,
        51,
        38,
        8,
        10,
        9,
        10,
        3,
        4,
        7,
        5,
        43,
        43,
        43,
        5,
        3,
        3,
        3,
        53,
        2,
    ]
    attributes = [j for j in range(40 + 1) if census.COLUMNS[j] != "instance_weight"]
    assert [len(tables[0].values[j]) for j in attributes] == published
    (train, test), info = census.encode(tables[0], tables[1:])
    assert int(train["income"].sum()) == 12_382 and int(test["income"].sum()) == 6_186
    # The task correlations the MMoE paper reports (0.1768 and 0.2373 on 10,000 samples).
    corr = lambda a, b: abs(np.corrcoef(a, b)[0, 1])
    assert corr(train["income"], train["marital"]) == pytest.approx(0.1768, abs=0.01)
    assert corr(train["education"], train["marital"]) == pytest.approx(0.2373, abs=0.01)
    assert info.one_hot_dim == sum(info.vocab_sizes) + 7
