"""Caches tied to their raw files, published checksums, damaged caches, CoNLL
encoding errors, and user datasets from in-memory arrays (jmtl.data).

Every fault is injected here on tiny synthetic files; each test checks what
the user sees (exception type, and a message naming the problem and the fix)
and, where data comes back, compares it with an independent construction.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pathlib
import re

import numpy as np
import pytest
from test_data import fake_split, write_fake_mnist, write_idx

from jmtl import data
from jmtl.data import cache, conll, fingerprint, gradnorm_toy, idx, multi_mnist, pipeline

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAKE = dict(verify_checksums=False)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(idx.ENV_DATA_DIR, raising=False)
    monkeypatch.delenv(pipeline.ENV_CACHE_DIR, raising=False)


def _expected(splits, seed=0):
    """MultiMNIST train+validation and test, built independently of the cache."""
    return {s: multi_mnist.make_multi(*splits[s], seed=seed, split=s) for s in ("train", "test")}


def _loaded(ds):
    return {
        "train": np.concatenate([ds.arrays("train")["image"], ds.arrays("validation")["image"]]),
        "test": ds.arrays("test")["image"],
    }


def _builds(cache_dir: pathlib.Path, name="multi_mnist"):
    # tfds keeps a '.config' folder of its own next to the builds.
    return sorted(p.name for p in (cache_dir / name).iterdir() if not p.name.startswith("."))


def _publish(monkeypatch, family: str, title: str, folder: pathlib.Path):
    """Makes the files in `folder` the 'published' ones of `family`."""
    table = {
        f: fingerprint.Published(title, f, (folder / f).stat().st_size, fingerprint.sha256_file(folder / f))
        for f in idx.FILES
    }
    monkeypatch.setitem(fingerprint.PUBLISHED, family, table)


# ----------------------------------------------------------------------------
# Published checksums.


def test_fashion_builder_refuses_mnist_files(tmp_path, monkeypatch):
    splits = write_fake_mnist(tmp_path / "mnist")
    # Fake "official" Fashion-MNIST files too, so only the swap is wrong.
    (tmp_path / "fashion").mkdir()
    for name in idx.FILES:
        with gzip.open(tmp_path / "fashion" / name, "wb") as f:
            f.write(b"fashion " + name.encode())
    _publish(monkeypatch, "mnist", "MNIST", tmp_path / "mnist")
    _publish(monkeypatch, "fashion_mnist", "Fashion-MNIST", tmp_path / "fashion")
    cache_dir = tmp_path / "cache"
    # The user's mistake: the MNIST folder given as MultiFashion's data dir.
    with pytest.raises(data.DataError) as e:
        data.load("multi_fashion", data_dir=tmp_path / "mnist", cache_dir=cache_dir)
    msg = str(e.value)
    first = msg.splitlines()[0]
    assert first == ("Fashion-MNIST checksum mismatch in 4 file(s): these look like MNIST files, not Fashion-MNIST:")
    for name in idx.FILES:
        got = fingerprint.sha256_file(tmp_path / "mnist" / name)
        want = fingerprint.sha256_file(tmp_path / "fashion" / name)
        assert f"{tmp_path / 'mnist' / name}: sha256 {got}" in msg
        assert f"expected {want}" in msg
    assert "Fix: point the data dir" in msg and "verify_checksums=False" in msg
    # Nothing was built; MultiMNIST from the same files is fine.
    assert not (cache_dir / "multi_fashion").exists()
    ds = data.load("multi_mnist", data_dir=tmp_path, cache_dir=cache_dir)
    np.testing.assert_array_equal(_loaded(ds)["test"], _expected(splits)["test"]["image"])


def test_bad_checksum_names_the_file(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path / "mnist")
    _publish(monkeypatch, "mnist", "MNIST", tmp_path / "mnist")
    published = fingerprint.PUBLISHED["mnist"][idx.TEST_LABELS]
    bad = tmp_path / "mnist" / idx.TEST_LABELS
    labels = fake_split(50, 2)[1].copy()
    labels[0] = (labels[0] + 1) % 10  # One label changed: still a valid file.
    write_idx(bad, labels)
    with pytest.raises(data.DataError) as e:
        data.load("multi_mnist", data_dir=tmp_path, cache_dir=tmp_path / "c")
    msg = str(e.value)
    assert msg.startswith("MNIST checksum mismatch in 1 file(s):\n")
    assert (
        f"{bad}: sha256 {fingerprint.sha256_file(bad)} ({bad.stat().st_size:,} bytes), expected {published.sha256}"
    ) in msg
    for other in set(idx.FILES) - {idx.TEST_LABELS}:
        assert other not in msg
    assert "Fix: point the data dir" in msg and "download them again" in msg
    assert not (tmp_path / "c" / "multi_mnist").exists()
    # Deliberately changed data builds with the check off, into its own cache.
    ds = data.load("multi_mnist", data_dir=tmp_path, cache_dir=tmp_path / "c", **FAKE)
    assert ds.arrays("test")["left"][0] == labels[0]


def test_recompressed_copy_with_published_content_passes(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path / "mnist")
    path = tmp_path / "mnist" / idx.TRAIN_LABELS
    content = gzip.decompress(path.read_bytes())
    entry = fingerprint.Published("MNIST", idx.TRAIN_LABELS, 1, "0" * 64, content_md5=hashlib.md5(content).hexdigest())
    digest = fingerprint.digest_file(path)
    assert fingerprint.matches_published(digest, entry)
    other = fingerprint.Published("MNIST", idx.TRAIN_LABELS, 1, "0" * 64, content_md5="f" * 32)
    assert not fingerprint.matches_published(digest, other)


def _real_data_root() -> pathlib.Path | None:
    """Where the real MNIST and Fashion-MNIST files are: $JMTL_DATA_DIR (CI sets it,
    .ci/run), else a shared/data folder beside the checkout. Read at import,
    before the autouse fixture clears the variable."""
    for root in (os.environ.get(idx.ENV_DATA_DIR), ROOT.parent / "shared" / "data"):
        if root and all(
            (pathlib.Path(root) / family / idx.TRAIN_IMAGES).is_file() for family in ("mnist", "fashion_mnist")
        ):
            return pathlib.Path(root)
    return None


_REAL_DATA = _real_data_root()


@pytest.mark.skipif(_REAL_DATA is None, reason="real MNIST files not available ($JMTL_DATA_DIR)")
def test_real_mnist_files_refused_as_fashion(tmp_path):
    real = _REAL_DATA
    with pytest.raises(
        data.DataError,
        match=r"^Fashion-MNIST checksum mismatch "
        r"in 4 file\(s\): these look like MNIST files",
    ):
        data.load("multi_fashion", data_dir=real / "mnist", cache_dir=tmp_path)
    # The official files pass the check (hashing only; no build here).
    for family in ("mnist", "fashion_mnist"):
        fingerprint.check_family_files(family, {f: real / family / f for f in idx.FILES})


# ----------------------------------------------------------------------------
# Caches keyed by the source fingerprint.


def test_cache_follows_the_source_files(tmp_path):
    raw, cache_dir = tmp_path / "raw", tmp_path / "cache"
    first = write_fake_mnist(raw)
    ds = data.load("multi_mnist", data_dir=raw, cache_dir=cache_dir, **FAKE)
    np.testing.assert_array_equal(_loaded(ds)["test"], _expected(first)["test"]["image"])
    (build,) = _builds(cache_dir)
    record = json.loads((cache_dir / "multi_mnist" / build / "1.0.0" / cache.RECORD).read_text())
    assert record["fingerprint"] in build
    assert {s["name"] for s in record["sources"]} == set(idx.FILES)
    # The source changes under the same path: new test images.
    saved = {f: (raw / f).read_bytes() for f in (idx.TEST_IMAGES, idx.TEST_LABELS)}
    second = dict(first, test=fake_split(50, 99))
    write_idx(raw / idx.TEST_IMAGES, second["test"][0])
    write_idx(raw / idx.TEST_LABELS, second["test"][1])
    ds = data.load("multi_mnist", data_dir=raw, cache_dir=cache_dir, **FAKE)
    np.testing.assert_array_equal(_loaded(ds)["test"], _expected(second)["test"]["image"])
    assert len(_builds(cache_dir)) == 2 and build in _builds(cache_dir)
    # Back to the first files: their cache is reused, not rebuilt.
    for f, blob in saved.items():
        (raw / f).write_bytes(blob)
    os.utime(raw / idx.TEST_IMAGES, (0, 0))  # mtime plays no part in the key
    ds = data.load("multi_mnist", data_dir=raw, cache_dir=cache_dir, **FAKE)
    np.testing.assert_array_equal(_loaded(ds)["test"], _expected(first)["test"]["image"])
    assert len(_builds(cache_dir)) == 2


def test_swapped_data_dir_never_reuses_the_wrong_cache(tmp_path):
    # The original bug: one cache dir, the Fashion builder first given MNIST
    # files (checksum check off), then the right files.
    digits = write_fake_mnist(tmp_path / "digits")
    clothes = {"train": fake_split(200, 11), "test": fake_split(50, 12)}
    (tmp_path / "clothes").mkdir()
    for split, (imgs, labels) in clothes.items():
        prefix = "train" if split == "train" else "t10k"
        write_idx(tmp_path / "clothes" / f"{prefix}-images-idx3-ubyte.gz", imgs)
        write_idx(tmp_path / "clothes" / f"{prefix}-labels-idx1-ubyte.gz", labels)
    cache_dir = tmp_path / "cache"
    wrong = data.load("multi_fashion", data_dir=tmp_path / "digits", cache_dir=cache_dir, **FAKE)
    right = data.load("multi_fashion", data_dir=tmp_path / "clothes", cache_dir=cache_dir, **FAKE)
    np.testing.assert_array_equal(_loaded(wrong)["test"], _expected(digits)["test"]["image"])
    np.testing.assert_array_equal(_loaded(right)["test"], _expected(clothes)["test"]["image"])
    assert len(_builds(cache_dir, "multi_fashion")) == 2
    # Without any data dir, two candidate builds are refused, not guessed.
    with pytest.raises(
        data.DataError,
        match=r"no data dir given and the cache "
        r"holds 2 builds from different raw files: .*Fix:",
    ):
        data.load("multi_fashion", cache_dir=cache_dir, **FAKE)


# ----------------------------------------------------------------------------
# Damaged caches.


def _train_record(cache_dir: pathlib.Path, name="multi_mnist") -> pathlib.Path:
    (folder,) = [p for p in (cache_dir / name).glob("*/*.*.*") if not p.parent.name.startswith(".")]
    (shard,) = folder.glob(f"{name}-train.array_record-*")
    return shard


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_array_record_is_named_and_rebuilt(tmp_path, capsys, how):
    raw, cache_dir = tmp_path / "raw", tmp_path / "cache"
    splits = write_fake_mnist(raw)
    data.load("multi_mnist", data_dir=raw, cache_dir=cache_dir, **FAKE)
    shard = _train_record(cache_dir)
    folder = shard.parent
    blob = bytearray(shard.read_bytes())
    if how == "truncate":
        shard.write_bytes(bytes(blob[: len(blob) // 2]))
        problem = f"cache file {shard.name} has {len(blob) // 2:,} bytes, {len(blob):,} when it was written"
    else:
        blob[len(blob) // 3] ^= 0xFF
        shard.write_bytes(bytes(blob))
        problem = f"cache file {shard.name} has sha256"
    damaged = shard.read_bytes()
    capsys.readouterr()
    # Without raw files it cannot be rebuilt: an error names folder and fix.
    with pytest.raises(data.DataError) as e:
        data.load("multi_mnist", cache_dir=cache_dir, **FAKE)
    msg = str(e.value)
    assert msg.startswith(f"damaged dataset cache {folder}: {problem}")
    assert "Fix: re-download the MNIST files" in msg and "moved aside" in msg
    assert folder.is_dir()  # Untouched.
    # With raw files: moved aside (kept), said on stderr, rebuilt correctly.
    ds = data.load("multi_mnist", data_dir=raw, cache_dir=cache_dir, **FAKE)
    err = capsys.readouterr().err
    assert f"damaged dataset cache {folder}: {problem}" in err
    (moved,) = (cache_dir / cache.DAMAGED / "multi_mnist").glob("*/1.0.0-*")
    assert f"Moved it to {moved}" in err and "rebuilding" in err
    assert (moved / shard.name).read_bytes() == damaged  # kept as it was
    want = _expected(splits)
    np.testing.assert_array_equal(_loaded(ds)["train"], want["train"]["image"])
    assert cache.damage(folder, None) is None


def test_unrecorded_damaged_cache_read_error_names_folder(tmp_path):
    # A cache whose damage the record cannot show (no record: adopted as is)
    # fails on read with the folder and the fix, not a Riegeli traceback.
    raw, cache_dir = tmp_path / "raw", tmp_path / "cache"
    write_fake_mnist(raw)
    data.load("multi_mnist", data_dir=raw, cache_dir=cache_dir, **FAKE)
    shard = _train_record(cache_dir)
    (shard.parent / cache.RECORD).unlink()
    blob = shard.read_bytes()
    shard.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DataError) as e:
        ds = data.load("multi_mnist", data_dir=raw, cache_dir=cache_dir, **FAKE)
        ds.arrays("train")
    msg = str(e.value)
    assert "multi_mnist/train split" in msg
    assert f"cannot read the dataset cache {shard.parent}" in msg
    assert "Fix: move that folder away" in msg


def test_toy_cache_damage_rebuilds_identical_data(tmp_path, capsys):
    kw = dict(cache_dir=tmp_path, n_train=40, n_validation=8, n_test=8)
    data.load("gradnorm_toy", **kw)
    shard = _train_record(tmp_path, "gradnorm_toy")
    shard.write_bytes(shard.read_bytes()[:100])
    ds = data.load("gradnorm_toy", **kw)
    assert "damaged dataset cache" in capsys.readouterr().err
    want = gradnorm_toy.make_toy(2, 0, 40, "train")
    for k in want:
        np.testing.assert_array_equal(ds.arrays("train")[k], want[k])


def test_a_cache_build_waits_for_another_process_building_it(tmp_path):
    """Two runs started together on one cache folder would both build it and race on tfds' final
    rename: a build takes the folder's lock. Holding that lock here, a second process that loads the
    dataset must not build it until the lock is released, then build it once."""
    import subprocess
    import sys
    import time

    folder = cache.dataset_folder(str(tmp_path), gradnorm_toy.GradnormToy, gradnorm_toy.toy_config(2, 0, 40, 8, 8))
    code = (
        "from jmtl import data; print('loading', flush=True); "
        f"ds = data.load('gradnorm_toy', cache_dir={str(tmp_path)!r}, n_train=40, n_validation=8, n_test=8); "
        "print('rows', len(ds.arrays('train')['t0']), flush=True)"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu")
    with cache._build_lock(folder, str(tmp_path)):
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        assert proc.stdout.readline().strip() == "loading"
        time.sleep(8)  # unlocked, the 40-example build takes ~2 s
        assert proc.poll() is None and not folder.exists(), "the second process built the cache through the lock"
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == "rows 40"
    assert (folder / cache.RECORD).is_file()


# ----------------------------------------------------------------------------
# CoNLL.


def _gz(path: pathlib.Path, raw: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(raw)


def test_conll_non_utf8_byte_reports_line_and_offset(tmp_path):
    text = "The DT B-NP\ncat NN I-NP\n\ncaf\xe9 NN B-NP\n".encode("latin-1")
    path = tmp_path / "conll2000" / "train.txt.gz"
    _gz(path, text)
    _gz(tmp_path / "conll2000" / "test.txt.gz", b"a B C\n")
    offset = text.index(b"\xe9")
    with pytest.raises(data.DataError) as e:
        conll.load_conll2000(data_dir=tmp_path, cache_dir=tmp_path / "c", dev_sentences=1, **FAKE)
    msg = str(e.value)
    assert msg.startswith(
        f"{path}:4: byte 0xe9 at byte offset {offset} of the decompressed text (column 4 of line 4) is not valid UTF-8"
    )
    assert "Fix: convert the file to UTF-8" in msg
    assert not list((tmp_path / "c").glob("conll2000/*/1.0.0"))
    plain = tmp_path / "plain.txt"
    plain.write_bytes(text)
    with pytest.raises(data.DataError, match=re.escape(f"{plain}:4: byte 0xe9 at byte offset {offset} (column 4")):
        conll.read_conll(plain, 3)


def test_conll_cache_follows_source_and_checksums(tmp_path, monkeypatch):
    root, cache_dir = tmp_path / "raw", tmp_path / "c"
    _gz(root / "conll2000" / "train.txt.gz", b"a DT B-NP\n\nb NN B-NP\n")
    _gz(root / "conll2000" / "test.txt.gz", b"c NN B-NP\n")
    ds = conll.load_conll2000(data_dir=root, cache_dir=cache_dir, dev_sentences=1, **FAKE)
    assert ds.split("train").tokens == [["a"]]
    _gz(root / "conll2000" / "train.txt.gz", b"x DT B-NP\n\nb NN B-NP\n")
    ds = conll.load_conll2000(data_dir=root, cache_dir=cache_dir, dev_sentences=1, **FAKE)
    assert ds.split("train").tokens == [["x"]]
    assert len(list(cache_dir.glob("conll2000/src*/1.0.0"))) == 2
    # With checksums on, files that are not the published CoNLL-2000 are refused.
    with pytest.raises(data.DataError) as e:
        conll.load_conll2000(data_dir=root, cache_dir=cache_dir, dev_sentences=1)
    msg = str(e.value)
    assert msg.startswith("CoNLL-2000 checksum mismatch in 2 file(s):")
    assert str(root / "conll2000" / "train.txt.gz") in msg
    assert fingerprint.PUBLISHED["conll2000"]["train.txt.gz"].sha256 in msg
    assert "Fix:" in msg


# ----------------------------------------------------------------------------
# User datasets from in-memory arrays.


def _three_task_splits(sizes=(60, 12, 10)):
    rng = np.random.default_rng(0)
    out = {}
    for split, n in zip(("train", "validation", "test"), sizes):
        x = rng.normal(size=(n, 5))
        out[split] = {
            "x": x,
            "parity": (np.arange(n) % 2).astype(np.int64),
            "bucket": rng.integers(0, 4, n),
            "score": x.sum(1, keepdims=True),
        }
    return out


def _mine(**kw):
    labels = {"parity": "classification", "bucket": {"kind": "classification", "num_classes": 4}, "score": "regression"}
    return data.from_arrays(
        "mine", kw.pop("splits", _three_task_splits()), input_key="x", labels=kw.pop("labels", labels), **kw
    )


def test_from_arrays_three_tasks_order_and_resume():
    splits = _three_task_splits()
    ds = _mine()
    spec = ds.spec
    assert spec.input_shape == (5,) and list(spec.labels) == ["parity", "bucket", "score"]
    assert spec.labels["parity"] == data.LabelSpec("parity", "classification", 2, ())
    assert spec.labels["bucket"].num_classes == 4
    assert spec.labels["score"] == data.LabelSpec("score", "regression", None, (1,))
    assert spec.split_sizes == {"train": 60, "validation": 12, "test": 10}
    test = ds.arrays("test")
    np.testing.assert_array_equal(test["x"], splits["test"]["x"].astype(np.float32))
    assert test["x"].dtype == np.float32 and test["bucket"].dtype == np.int32
    # Batches follow the documented order: epoch e = default_rng([seed, e]).
    assert ds.steps_per_epoch(16) == 3
    it = ds.train_iterator(16, seed=4, prefetch=0)
    batches = [next(it) for _ in range(5)]  # crosses into epoch 1
    for step, b in enumerate(batches):
        epoch, k = divmod(step, 3)
        ids = np.random.default_rng([4, epoch]).permutation(60)[k * 16 : (k + 1) * 16]
        np.testing.assert_array_equal(b["x"], splits["train"]["x"][ids].astype(np.float32))
        np.testing.assert_array_equal(b["bucket"], splits["train"]["bucket"][ids])
    # Exact resume from a JSON round trip of the state.
    it = ds.train_iterator(16, seed=4)
    for _ in range(2):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it) for _ in range(3)]
    resumed = ds.train_iterator(16, seed=4)
    resumed.set_state(state)
    for w in want:
        got = next(resumed)
        for k in w:
            np.testing.assert_array_equal(got[k], w[k])
    # The caller's arrays can change afterwards without touching the dataset.
    splits["test"]["x"][:] = 0
    assert ds.arrays("test")["x"].any()


def test_from_arrays_errors_name_problem_and_fix():
    splits = _three_task_splits()
    bad = {**splits, "train": dict(splits["train"], score=splits["train"]["score"][:50])}
    with pytest.raises(
        data.DataError,
        match=re.escape(
            "mine: split 'train' arrays have different lengths (x: 60, parity: 60, "
            "bucket: 60, score: 50). Fix: one row per example"
        ),
    ):
        _mine(splits=bad)
    with pytest.raises(
        data.DataError,
        match=re.escape(
            "mine: split(s) validation missing (got train, test). Fix: pass "
            "splits= with 'train', 'validation' and 'test'"
        ),
    ):
        _mine(splits={"train": splits["train"], "test": splits["test"]})
    no_label = {**splits, "test": {k: v for k, v in splits["test"].items() if k != "bucket"}}
    with pytest.raises(data.DataError, match=re.escape("mine: split 'test' lacks 'bucket'. Fix:")):
        _mine(splits=no_label)
    big = {**splits, "test": dict(splits["test"], bucket=np.full(10, 4))}
    with pytest.raises(
        data.DataError,
        match=re.escape("mine: label 'bucket' in split 'test' has class id 4 at example 0, outside 0..3. Fix:"),
    ):
        _mine(splits=big)
    nan = {**splits, "validation": dict(splits["validation"])}
    nan["validation"]["score"] = nan["validation"]["score"].copy()
    nan["validation"]["score"][7] = np.nan
    with pytest.raises(
        data.DataError,
        match=re.escape("mine: regression label 'score' in split 'validation' is not finite at example 7. Fix:"),
    ):
        _mine(splits=nan)
    with pytest.raises(data.DataError, match="shape and dtype in every split"):
        _mine(splits={**splits, "test": dict(splits["test"], x=splits["test"]["x"][:, :4])})


def test_register_load_and_train(tmp_path):
    ds = _mine()
    data.register("mine", ds)
    try:
        assert "mine" in data.names()
        assert data.load("mine") is ds
        with pytest.raises(
            data.DataError, match="'mine' is already registered. Fix: choose another name, or pass overwrite=True"
        ):
            data.register("mine", ds)
        with pytest.raises(data.DataError, match="reads no raw files, but data_dir="):
            data.load("mine", data_dir="/somewhere")
        # A loader function gets the config's keywords.
        data.register("mine", lambda *, n=60: _mine(splits=_three_task_splits((n, 12, 10))), overwrite=True)
        assert data.load("mine", n=30).spec.split_sizes["train"] == 30
        with pytest.raises(
            data.DataError,
            match=r"unknown keyword\(s\) m; "
            "accepted: n",
        ):
            data.load("mine", m=1)
    finally:
        data.unregister("mine")
    assert "mine" not in data.names()


@pytest.mark.slow  # ~6 s of CPU (compiling a train and an eval step)
def test_registered_arrays_train_end_to_end(tmp_path):
    """experiments.train runs on a registered in-memory dataset, by name."""
    from conftest import toy_config  # pylint: disable=g-import-not-at-top

    try:
        from jmtl.training.loop import train  # pylint: disable=g-import-not-at-top
    except ImportError:
        from jmtl.training.loop import train  # pylint: disable=g-import-not-at-top
    data.register("mine", _mine())
    try:
        c = toy_config(
            tmp_path,
            **{
                "dataset.name": "mine",
                "dataset.kwargs": {},
                "model.encoder_kwargs": {"features": (8,)},
                "model.head_kwargs": {"hidden": 8},
                "batch_size": 12,
                "num_steps": 2,
                "eval_every_steps": 2,
                "log_every_steps": 1,
            },
        )
        summary, _ = train(c, str(tmp_path / "wd"))
    finally:
        data.unregister("mine")
    assert summary["dataset"] == "mine"
    last = json.loads((tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 2
    for split in ("validation", "test"):
        assert set(last[split]) == {"parity", "bucket", "score"}
        assert 0 <= last[split]["bucket"]["accuracy"] <= 1
        assert np.isfinite(last[split]["score"]["mse"])
