"""Tests for jmtl.data: IDX verification, Multi-* construction, tfds builders,
the grain pipeline (sharding, resume) and the GradNorm toy dataset.

Everything runs on small fake IDX files written to tmp dirs (loaded with
verify_checksums=False: they cannot match the published checksums); the two
tests touching the real MNIST files are skipped when they are absent.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import os
import pathlib
import shutil
import struct

import numpy as np
import pytest

from jmtl import data
from jmtl.data import fingerprint, gradnorm_toy, idx, multi_mnist, pipeline

N_TRAIN, N_TEST = 200, 50
# Fake IDX files cannot match the published MNIST checksums.
FAKE = dict(verify_checksums=False)


# ----------------------------------------------------------------------------
# Fake IDX files.


def write_idx(path: pathlib.Path, arr: np.ndarray, *, magic: int | None = None, count: int | None = None) -> None:
    """Writes `arr` as a gzipped IDX file (header fields overridable)."""
    magic = magic or (idx.IMAGES_MAGIC if arr.ndim == 3 else idx.LABELS_MAGIC)
    dims = (arr.shape[0] if count is None else count,) + arr.shape[1:]
    header = struct.pack(f">{1 + len(dims)}I", magic, *dims)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Sparse "strokes", so overlaps exercise the max and every image is unique.
    images = rng.integers(0, 256, (n, 28, 28)) * (rng.random((n, 28, 28)) < 0.3)
    return images.astype(np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def write_fake_mnist(folder: pathlib.Path) -> dict[str, tuple]:
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": fake_split(N_TRAIN, 1), "test": fake_split(N_TEST, 2)}
    for split, (imgs, labels) in splits.items():
        prefix = "train" if split == "train" else "t10k"
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", imgs)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return splits


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    # Tests must not depend on (or write to) the caller's data/cache dirs.
    monkeypatch.delenv(idx.ENV_DATA_DIR, raising=False)
    monkeypatch.delenv(pipeline.ENV_CACHE_DIR, raising=False)


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    splits = write_fake_mnist(root / "mnist")
    return root, splits


@pytest.fixture(scope="module")
def fake_ds(fake_root, tmp_path_factory):
    root, splits = fake_root
    cache = tmp_path_factory.mktemp("cache")
    return data.load("multi_mnist", **FAKE, data_dir=root, cache_dir=cache), splits


@pytest.fixture(scope="module")
def toy_ds(tmp_path_factory):
    cache = tmp_path_factory.mktemp("toycache")
    return data.load("gradnorm_toy", cache_dir=cache, n_train=96, n_validation=24, n_test=16)


# ----------------------------------------------------------------------------
# Multi-* construction against a straightforward loop implementation.


def reference_multi_image(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    canvas = [[0] * 36 for _ in range(36)]
    for r in range(28):
        for c in range(28):
            canvas[r][c] = int(a[r, c])
    for r in range(28):
        for c in range(28):
            canvas[r + 6][c + 6] = max(canvas[r + 6][c + 6], int(b[r, c]))
    out = np.zeros((28, 28), np.uint8)
    for r in range(28):
        for c in range(28):
            out[r, c] = canvas[math.floor((r + 0.5) * 36 / 28)][math.floor((c + 0.5) * 36 / 28)]
    return out


def test_nearest_indices_formula():
    expected = [math.floor((d + 0.5) * 36 / 28) for d in range(28)]
    np.testing.assert_array_equal(multi_mnist.nearest_indices(36, 28), expected)


def test_resize_matches_pil_nearest():
    pil = pytest.importorskip("PIL.Image")
    canvas = np.random.default_rng(0).integers(0, 256, (3, 36, 36), np.uint8)
    ours = multi_mnist.resize_nearest(canvas)
    for k in range(3):
        theirs = np.asarray(pil.fromarray(canvas[k]).resize((28, 28), pil.Resampling.NEAREST))
        np.testing.assert_array_equal(ours[k], theirs)


def test_overlay_positions_and_max():
    a = np.zeros((1, 28, 28), np.uint8)
    b = np.zeros((1, 28, 28), np.uint8)
    a[0, 0, 0], a[0, 27, 27], a[0, 10, 10] = 10, 20, 50
    b[0, 0, 0], b[0, 27, 27], b[0, 4, 4] = 30, 40, 7  # b[4,4] -> canvas[10,10]
    c = multi_mnist.overlay(a, b)[0]
    assert c.shape == (36, 36)
    assert c[0, 0] == 10 and c[6, 6] == 30 and c[33, 33] == 40
    assert c[27, 27] == 20  # a's corner, inside the overlap, b is 0 there
    assert c[10, 10] == 50  # max(50, 7)
    assert c.sum() == 10 + 20 + 50 + 30 + 40


def test_make_multi_matches_loop_reference():
    images, labels = fake_split(40, 7)
    out = multi_mnist.make_multi(images, labels, seed=3, split="train", chunk=16)
    assert out["image"].shape == (40, 28, 28, 1)
    assert out["image"].dtype == np.uint8
    partner = out["partner"]
    assert np.all(partner != np.arange(40)) and partner.min() >= 0
    np.testing.assert_array_equal(out["left"], labels)
    np.testing.assert_array_equal(out["right"], labels[partner])
    for i in range(0, 40, 5):
        np.testing.assert_array_equal(out["image"][i, ..., 0], reference_multi_image(images[i], images[partner[i]]))


def test_make_multi_is_deterministic_by_seed():
    images, labels = fake_split(60, 8)
    a = multi_mnist.make_multi(images, labels, seed=0)
    b = multi_mnist.make_multi(images, labels, seed=0)
    c = multi_mnist.make_multi(images, labels, seed=1)
    t = multi_mnist.make_multi(images, labels, seed=0, split="test")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["partner"], c["partner"])
    assert not np.array_equal(a["partner"], t["partner"])


# ----------------------------------------------------------------------------
# IDX verification errors.


def _break(folder: pathlib.Path, how: str) -> str:
    """Damages one file of a fake MNIST folder; returns the damaged file name."""
    imgs, labels = fake_split(30, 3)
    if how == "truncated":
        name = idx.TRAIN_IMAGES
        raw = (folder / name).read_bytes()
        (folder / name).write_bytes(raw[: len(raw) // 2])
    elif how == "corrupt":
        name = idx.TRAIN_IMAGES
        raw = bytearray((folder / name).read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        (folder / name).write_bytes(bytes(raw))
    elif how == "not_gzip":
        name = idx.TEST_LABELS
        (folder / name).write_bytes(b"this is not gzip data at all")
    elif how == "magic":
        name = idx.TRAIN_LABELS
        write_idx(folder / name, labels, magic=idx.IMAGES_MAGIC)
    elif how == "count":
        name = idx.TEST_IMAGES
        write_idx(folder / name, imgs, count=31)
    elif how == "label_range":
        name = idx.TEST_LABELS
        bad = labels.copy()
        bad[5] = 10
        write_idx(folder / name, bad)
    elif how == "pair_count":
        name = idx.TRAIN_LABELS
        write_idx(folder / name, labels[:20])
    elif how == "missing_file":
        name = idx.TEST_IMAGES
        (folder / name).unlink()
    else:
        raise ValueError(how)
    return name


@pytest.mark.parametrize(
    "how,needle",
    [
        ("truncated", "truncated gzip"),
        ("corrupt", "corrupt gzip"),
        ("not_gzip", "corrupt gzip"),
        ("magic", "bad IDX magic 2051"),
        ("count", "header says 31 images"),
        ("label_range", "label 10 at index 5 is outside 0..9"),
        ("pair_count", "labels"),
        ("missing_file", "missing MNIST file(s) t10k-images-idx3-ubyte.gz"),
    ],
)
def test_corrupt_inputs_raise_clear_errors(tmp_path, how, needle):
    write_fake_mnist(tmp_path / "mnist")
    name = _break(tmp_path / "mnist", how)
    with pytest.raises(data.DataError) as e:
        data.load("multi_mnist", **FAKE, data_dir=tmp_path, cache_dir=tmp_path / "c")
    msg = str(e.value)
    assert needle in msg
    if how == "pair_count":
        assert "holds 200 images but" in msg and "holds 20 labels" in msg
    else:
        assert name in msg
    assert "Fix:" in msg and "JMTL_DATA_DIR" in msg
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in msg


def test_download_verifies_md5(tmp_path, monkeypatch):
    src_dir = tmp_path / "src"
    write_fake_mnist(src_dir)
    md5 = {f: idx._md5(src_dir / f) for f in idx.FILES}
    source = idx.RawSource("mnist", "MNIST", ("http://a/", "http://b/"), md5)
    calls = []

    def fake_urlopen(url, timeout):
        del timeout
        calls.append(url)
        if url.startswith("http://a/"):
            raise OSError("unreachable")
        return io.BytesIO((src_dir / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(idx.urllib.request, "urlopen", fake_urlopen)
    out = idx.download(tmp_path / "dl", source)
    assert sorted(p.name for p in out.iterdir()) == sorted(idx.FILES)
    assert len(calls) == 8  # Each file: first mirror fails, second works.
    bad = dataclasses.replace(source, md5={f: "0" * 32 for f in idx.FILES})
    with pytest.raises(data.DataError, match="MD5 mismatch"):
        idx.download(tmp_path / "dl2", bad)
    assert not list((tmp_path / "dl2").iterdir())  # No half files left.


def test_missing_dir_and_no_dir(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load("multi_mnist", **FAKE, data_dir=tmp_path / "nope", cache_dir=tmp_path / "c")
    with pytest.raises(data.DataError, match="neither a data_dir argument"):
        data.load("multi_mnist", cache_dir=tmp_path / "c")
    with pytest.raises(data.DataError, match="fashion-mnist"):
        data.load("multi_fashion", data_dir=tmp_path, cache_dir=tmp_path / "c")


def test_failed_build_leaves_cache_usable(tmp_path):
    with pytest.raises(data.DataError):
        data.load("multi_mnist", **FAKE, data_dir=tmp_path, cache_dir=tmp_path / "c")
    write_fake_mnist(tmp_path)  # The folder itself holding the four files.
    ds = data.load("multi_mnist", **FAKE, data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert ds.spec.split_sizes["test"] == N_TEST


def test_env_data_dir_and_cache_dir(tmp_path, monkeypatch, fake_root):
    root, _ = fake_root
    monkeypatch.setenv(idx.ENV_DATA_DIR, str(root))
    monkeypatch.setenv(pipeline.ENV_CACHE_DIR, str(tmp_path / "envcache"))
    ds = data.load("multi_mnist", seed=5, **FAKE)
    assert ds.spec.split_sizes["test"] == N_TEST
    # The config folder names the seed and the raw files' fingerprint.
    built = list((tmp_path / "envcache" / "multi_mnist").glob("seed5-src*"))
    assert len(built) == 1 and (built[0] / "1.0.0" / "jmtl_cache.json").is_file()


def test_unknown_name_and_kwarg(tmp_path):
    with pytest.raises(
        data.DataError,
        match="valid names: celeba, cityscapes, gradnorm_toy, multi_fashion, multi_mnist, nyuv2, office31, office_home",
    ):
        data.load("multi_mnsit", cache_dir=tmp_path)
    with pytest.raises(data.DataError, match=r"unknown keyword\(s\) num_task;"):
        data.load("gradnorm_toy", cache_dir=tmp_path, num_task=3)
    assert data.names() == [
        "celeba",
        "cityscapes",
        "gradnorm_toy",
        "multi_fashion",
        "multi_mnist",
        "nyuv2",
        "office31",
        "office_home",
    ]


# ----------------------------------------------------------------------------
# Builder round trip and splits.


def _normalise(images: np.ndarray) -> np.ndarray:
    return ((images.astype(np.float32) / 255 - 0.1307) / 0.3081)[..., None]


def test_builder_round_trip(fake_ds):
    ds, splits = fake_ds
    spec = ds.spec
    assert spec.name == "multi_mnist" and spec.input_key == "image"
    assert spec.input_shape == (28, 28, 1)
    assert spec.labels["left"] == data.LabelSpec("left", "classification", 10, ())
    assert list(spec.labels) == ["left", "right"]
    assert spec.split_sizes == {"train": 180, "validation": 20, "test": N_TEST}

    for split in ("train", "test"):
        want = multi_mnist.make_multi(*splits[split], seed=0, split=split)
        if split == "train":
            got = {
                k: np.concatenate([ds.arrays("train")[k], ds.arrays("validation")[k]])
                for k in ("image", "left", "right")
            }
        else:
            got = ds.arrays("test")
        # Batches carry raw uint8 pixels; the spec's on-device transform normalises.
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_allclose(
            np.asarray(spec.input_transform(got["image"])), _normalise(want["image"][..., 0]), rtol=0, atol=1e-6
        )
        np.testing.assert_array_equal(got["left"], want["left"])
        np.testing.assert_array_equal(got["right"], want["right"])
        assert got["image"].dtype == np.uint8 and got["left"].dtype == np.int32

    record = ds.source("test")[3]
    assert record["image"].dtype == np.uint8
    assert ds.arrays("test") is ds.arrays("test")  # Cached.


def test_train_and_validation_are_disjoint(fake_ds):
    ds, _ = fake_ds
    flat = lambda s: {a.tobytes() for a in ds.arrays(s)["image"]}
    train, val, test = flat("train"), flat("validation"), flat("test")
    assert len(train) == 180 and len(val) == 20
    assert not train & val and not train & test and not val & test


def test_second_load_reuses_cache(fake_root, tmp_path):
    root, _ = fake_root
    raw = tmp_path / "raw"
    shutil.copytree(root, raw)
    first = data.load("multi_mnist", **FAKE, data_dir=raw, cache_dir=tmp_path / "c")
    shutil.rmtree(raw)  # A rebuild would now fail.
    # With no data dir given at all, the one cached build is used.
    second = data.load("multi_mnist", **FAKE, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(first.arrays("test")["image"], second.arrays("test")["image"])


def test_validation_percent(fake_root, tmp_path):
    root, _ = fake_root
    ds = data.load("multi_mnist", **FAKE, data_dir=root, cache_dir=tmp_path, validation_percent=25)
    assert ds.spec.split_sizes == {"train": 150, "validation": 50, "test": N_TEST}
    with pytest.raises(data.DataError, match="validation_percent"):
        data.load("multi_mnist", **FAKE, data_dir=root, cache_dir=tmp_path, validation_percent=0)


# ----------------------------------------------------------------------------
# train_iterator.


def test_batches_shapes_and_epoch_coverage(fake_ds):
    ds, _ = fake_ds
    assert ds.steps_per_epoch(32) == 5
    assert ds.steps_per_epoch(32, drop_remainder=False) == 6
    it = ds.train_iterator(36, seed=1, num_epochs=2)
    batches = list(it)
    assert len(batches) == 2 * 5
    b = batches[0]
    assert set(b) == {"image", "left", "right"}
    assert b["image"].shape == (36, 28, 28, 1) and b["image"].dtype == np.uint8
    assert b["left"].shape == (36,) and b["left"].dtype == np.int32
    # Each epoch visits 5*36 = all 180 examples once, in a different order.
    train = {a.tobytes(): i for i, a in enumerate(ds.arrays("train")["image"])}
    epochs = [[train[a.tobytes()] for x in batches[e * 5 : (e + 1) * 5] for a in x["image"]] for e in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(180))
    assert epochs[0] != epochs[1]


def test_remainder_and_seed(fake_ds):
    ds, _ = fake_ds
    sizes = [len(b["left"]) for b in ds.train_iterator(64, 0, num_epochs=1, drop_remainder=False, prefetch=0)]
    assert sizes == [64, 64, 52]
    first = lambda seed: next(ds.train_iterator(16, seed))["left"]
    np.testing.assert_array_equal(first(3), first(3))
    assert not np.array_equal(next(ds.train_iterator(64, 3))["image"], next(ds.train_iterator(64, 4))["image"])


def test_process_sharding_covers_global_batch(fake_ds):
    ds, _ = fake_ds
    whole = ds.train_iterator(40, seed=2, num_epochs=1)
    parts = [ds.train_iterator(40, seed=2, num_epochs=1, process_index=p, process_count=2) for p in range(2)]
    for g in whole:
        p0, p1 = next(parts[0]), next(parts[1])
        assert p0["image"].shape[0] == p1["image"].shape[0] == 20
        for k in g:
            np.testing.assert_array_equal(np.concatenate([p0[k], p1[k]]), g[k])
        rows0 = {a.tobytes() for a in p0["image"]}
        assert not rows0 & {a.tobytes() for a in p1["image"]}
    with pytest.raises(ValueError, match="multiple of process_count"):
        ds.train_iterator(41, seed=0, process_count=2)
    with pytest.raises(ValueError, match="process_index"):
        ds.train_iterator(40, seed=0, process_index=2, process_count=2)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_iterator_resume_is_exact(fake_ds, prefetch):
    ds, _ = fake_ds
    # 16-batches: 11 per epoch, so the 12 steps below cross an epoch boundary.
    it = ds.train_iterator(16, seed=9, prefetch=prefetch)
    for _ in range(7):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(5)]
    resumed = ds.train_iterator(16, seed=9, prefetch=prefetch)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])


def test_unknown_split(fake_ds):
    ds, _ = fake_ds
    with pytest.raises(data.DataError, match="unknown split"):
        ds.arrays("dev")


# ----------------------------------------------------------------------------
# GradNorm toy.


def test_toy_generation():
    a = gradnorm_toy.make_toy(3, seed=0, n=50)
    b = gradnorm_toy.make_toy(3, seed=0, n=50)
    c = gradnorm_toy.make_toy(3, seed=1, n=50)
    assert set(a) == {"x", "t0", "t1", "t2"}
    assert a["x"].shape == (50, 250) and a["t0"].shape == (50, 100)
    assert all(v.dtype == np.float32 for v in a.values())
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["t0"], c["t0"])
    np.testing.assert_allclose(gradnorm_toy.task_scales(2), [1.0, 100.0])
    # |t_i| <= sigma_i, and the targets really follow the formula.
    mats, sig = gradnorm_toy.task_matrices(3, 0), gradnorm_toy.task_scales(3)
    # The stored input is the standardised x / X_STD ~ N(0, I).
    assert abs(float(a["x"].std()) - 1.0) < 0.05 and abs(float(a["x"].mean())) < 0.05
    for i in range(3):
        assert np.abs(a[f"t{i}"]).max() <= sig[i] + 1e-4
        np.testing.assert_allclose(
            a[f"t{i}"],
            sig[i] * np.tanh((gradnorm_toy.X_STD * a["x"].astype(np.float64)) @ mats[i].T),
            rtol=1e-4,
            atol=1e-4 * sig[i],
        )
    # Growing the train set leaves the test set unchanged.
    np.testing.assert_array_equal(
        gradnorm_toy.make_toy(2, 0, 10, "test")["t1"], gradnorm_toy.make_toy(2, 0, 20, "test")["t1"][:10]
    )


def test_toy_dataset(toy_ds, tmp_path):
    spec = toy_ds.spec
    assert spec.input_key == "x" and spec.input_shape == (250,)
    assert spec.split_sizes == {"train": 96, "validation": 24, "test": 16}
    assert spec.labels["t1"] == data.LabelSpec("t1", "regression", None, (100,))
    b = next(toy_ds.train_iterator(32, seed=0))
    assert b["x"].shape == (32, 250) and b["t0"].shape == (32, 100)
    assert b["t1"].dtype == np.float32
    want = gradnorm_toy.make_toy(2, 0, 16, "test")
    for k in want:
        np.testing.assert_array_equal(toy_ds.arrays("test")[k], want[k])
    # Another config gets its own cache entry and its own data.
    other = data.load("gradnorm_toy", cache_dir=tmp_path, num_tasks=3, seed=1, n_train=8, n_validation=4, n_test=4)
    assert list(other.spec.labels) == ["t0", "t1", "t2"]
    assert not np.array_equal(other.arrays("test")["x"], toy_ds.arrays("test")["x"][:4])
    with pytest.raises(data.DataError, match="n_train must be an int >= 1"):
        data.load("gradnorm_toy", cache_dir=tmp_path, n_train=0)


# ----------------------------------------------------------------------------
# Real MNIST (only where the files are present).


def _real_mnist_root() -> pathlib.Path | None:
    # CI exports JMTL_DATA_DIR (.ci/run); a checkout next to shared/data works
    # without it.
    here = pathlib.Path(__file__).resolve().parents[1]
    for root in (os.environ.get(idx.ENV_DATA_DIR), here.parent / "shared" / "data"):
        if root and (pathlib.Path(root) / "mnist" / idx.TEST_IMAGES).is_file():
            return pathlib.Path(root)
    return None


_REAL = _real_mnist_root()
# Read before the autouse fixture clears it: CI points it at the checkout's
# own .cache/tfds (.ci/run).
_ENV_CACHE = os.environ.get(pipeline.ENV_CACHE_DIR)


@pytest.mark.skipif(_REAL is None, reason="real MNIST files not available")
def test_real_mnist_test_split():
    folder = idx.find_files(_REAL, idx.MNIST)
    images, labels = idx.read_split(folder, "test")
    assert images.shape == (10_000, 28, 28)
    np.testing.assert_array_equal(
        np.bincount(labels, minlength=10), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )
    multi = multi_mnist.make_multi(images, labels, seed=0, split="test")
    assert multi["image"].shape == (10_000, 28, 28, 1)


# It used to need JMTL_SLOW_TESTS=1 as well, which CI never sets, so it never
# ran there. A fresh build (70,000 tfds records) takes 8-18 s on the 2-core
# CI machine, so the build goes to $JMTL_CACHE_DIR when set (CI: the
# checkout's .cache/tfds): it is keyed by the raw files' fingerprint and
# checked for damage, so reusing it is safe, and a later run takes ~1 s.
@pytest.mark.skipif(_REAL is None, reason="real MNIST files not available")
def test_real_multi_mnist_load(tmp_path):
    cache_dir = pathlib.Path(_ENV_CACHE or tmp_path)
    ds = data.load("multi_mnist", data_dir=_REAL, cache_dir=cache_dir)
    assert ds.spec.split_sizes == {"train": 54_000, "validation": 6_000, "test": 10_000}
    test = ds.arrays("test")
    images, labels = idx.read_split(idx.find_files(_REAL, idx.MNIST), "test")
    want = multi_mnist.make_multi(images, labels, seed=0, split="test")
    np.testing.assert_array_equal(test["image"], want["image"])
    np.testing.assert_array_equal(test["right"], want["right"])
    record = json.loads((pathlib.Path(ds.builder.data_dir) / "jmtl_cache.json").read_text())
    assert sorted(s["sha256"] for s in record["sources"]) == sorted(
        p.sha256 for p in fingerprint.PUBLISHED["mnist"].values()
    )
