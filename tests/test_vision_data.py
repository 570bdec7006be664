"""Vision benchmark data (issue 24 §1): formats, loaders, augmentation, resume, bad input, Office runs."""

from __future__ import annotations

import os

import numpy as np
import pytest

import jmtl
from jmtl import data as data_lib
from jmtl.data import fake_vision, office, vision
from jmtl.data.idx import DataError


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    """One copy of every fake dataset (read-only use), full per-example shapes, few examples."""
    root = tmp_path_factory.mktemp("fake_vision")
    fake_vision.write_nyuv2(root, n=3, n_val=2)
    fake_vision.write_cityscapes(root, n=2, n_val=1)
    fake_vision.write_celeba(root, n=7)
    fake_vision.write_office(root, "office31", n=2)
    fake_vision.write_office(root, "office_home", n=1)
    return root


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------- formats


def test_fake_writer_formats_are_the_references(fake_root):
    """The files are what MTAN's / LibMTL's / FAMO's readers open: names, HWC shapes, value conventions."""
    nyu = fake_root / "nyuv2"
    for split, n in (("train", 3), ("val", 2)):
        for folder, shape in (
            ("image", (288, 384, 3)),
            ("label", (288, 384)),
            ("depth", (288, 384, 1)),
            ("normal", (288, 384, 3)),
        ):
            names = sorted(p.name for p in (nyu / split / folder).iterdir())
            assert names == [f"{i}.npy" for i in range(n)]
            x = np.load(nyu / split / folder / "0.npy")
            assert x.shape == shape and x.dtype == np.float32
    img = np.load(nyu / "train/image/0.npy")
    assert 0 <= img.min() and img.max() <= 1
    lab = np.load(nyu / "train/label/0.npy")
    assert set(np.unique(lab)) <= set(range(-1, 13)) and (lab == -1).any()
    assert (np.load(nyu / "train/depth/0.npy") == 0).any()
    nrm = np.load(nyu / "train/normal/0.npy")
    norms = np.linalg.norm(nrm, axis=-1)
    assert ((norms == 0) | (np.abs(norms - 1) < 1e-5)).all() and (norms == 0).any()
    city = fake_root / "cityscapes"
    assert np.load(city / "train/image/1.npy").shape == (128, 256, 3)
    assert np.load(city / "train/label_19/0.npy").max() <= 18
    assert np.load(city / "val/depth/0.npy").shape == (128, 256, 1)
    lines = (fake_root / "celeba/Anno/list_attr_celeba.txt").read_text().splitlines()
    assert lines[0] == "7" and len(lines[1].split()) == 40 and len(lines) == 9
    assert all(len(ln.split()) == 41 and set(ln.split()[1:]) <= {"1", "-1"} for ln in lines[2:])
    from PIL import Image

    with Image.open(fake_root / "celeba/Img/img_align_celeba/000001.jpg") as im:
        assert im.size == (178, 218) and im.format == "JPEG"
    first = (fake_root / "office31/data_txt/dslr_val.txt").read_text().splitlines()[0]
    path, y = first.split(" ")
    assert path.startswith("dslr/images/") and (fake_root / "office31" / path).is_file() and 0 <= int(y) < 31
    assert (fake_root / "office_home/data_txt/Real_World_test.txt").is_file()


def test_make_fake_vision_data_cli(tmp_path):
    from experiments import make_fake_vision_data

    make_fake_vision_data.main(["--out", str(tmp_path), "--dataset", "cityscapes", "--n", "1"])
    assert sorted(p.name for p in (tmp_path / "cityscapes/val").iterdir()) == ["depth", "image", "label_19", "label_7"]
    assert not (tmp_path / "nyuv2").exists()


# ---------------------------------------------------------------------------------------- loaders


def test_nyuv2_reads_the_files_exactly(fake_root, cache):
    ds = data_lib.load("nyuv2", data_dir=fake_root, cache_dir=cache)
    assert list(ds.spec.labels) == ["segmentation", "depth", "normal"]
    assert ds.spec.labels["segmentation"].num_classes == 13 and ds.spec.labels["segmentation"].kind == "segmentation"
    assert ds.spec.split_sizes == {"train": 3, "validation": 2, "test": 2}
    test = ds.arrays("test")
    for i in range(2):
        np.testing.assert_array_equal(test["image"][i], np.load(fake_root / f"nyuv2/val/image/{i}.npy"))
        np.testing.assert_array_equal(
            test["segmentation"][i], np.load(fake_root / f"nyuv2/val/label/{i}.npy").astype(np.int32)
        )
        np.testing.assert_array_equal(test["normal"][i], np.load(fake_root / f"nyuv2/val/normal/{i}.npy"))
    assert test["segmentation"][0:2].dtype == np.int32 and test["depth"][0:2].shape == (2, 288, 384, 1)
    np.testing.assert_array_equal(np.asarray(ds.arrays("validation")["depth"]), np.asarray(test["depth"]))
    # validation_percent: the last examples of train/ held out instead of the val/ folder.
    held = data_lib.load("nyuv2", data_dir=fake_root / "nyuv2", cache_dir=cache, validation_percent=34)
    assert held.spec.split_sizes == {"train": 2, "validation": 1, "test": 2}
    np.testing.assert_array_equal(held.arrays("validation")["image"][0], np.load(fake_root / "nyuv2/train/image/2.npy"))
    # An unaugmented epoch visits every training example once, as stored.
    it = ds.train_iterator(1, seed=3, num_epochs=1, prefetch=0)
    seen = sorted(float(b["depth"].sum()) for b in it)
    want = sorted(float(np.load(fake_root / f"nyuv2/train/depth/{i}.npy").sum()) for i in range(3))
    np.testing.assert_allclose(seen, want, rtol=1e-6)


def test_lazy_columns_feed_the_evaluator(fake_root, cache):
    """``arrays(split)`` reads from disk batch by batch; the evaluator's padded batches hold the files."""
    from jmtl.training import evaluate

    ds = data_lib.load("nyuv2", data_dir=fake_root, cache_dir=cache)
    cols = ds.arrays("test")
    assert isinstance(cols["image"], vision.LazyColumn) and cols["image"].shape == (2, 288, 384, 3)
    batches = list(evaluate.iterate_eval_batches(cols, 3, 1))
    assert len(batches) == 1 and batches[0]["mask"].tolist() == [1, 1, 0]
    np.testing.assert_array_equal(batches[0]["segmentation"][2], np.load(fake_root / "nyuv2/val/label/1.npy"))
    np.testing.assert_array_equal(np.asarray(cols["depth"])[0], np.load(fake_root / "nyuv2/val/depth/0.npy"))


def test_data_dir_from_environment(fake_root, cache, monkeypatch):
    monkeypatch.setenv("JMTL_DATA_DIR", str(fake_root))
    assert data_lib.load("cityscapes", cache_dir=cache).spec.split_sizes["train"] == 2


def test_cityscapes_label_folders(fake_root, cache, tmp_path):
    c7 = data_lib.load("cityscapes", data_dir=fake_root, cache_dir=cache)
    c19 = data_lib.load("cityscapes", data_dir=fake_root, cache_dir=cache, num_classes=19)
    assert c7.spec.labels["segmentation"].num_classes == 7 and c19.spec.labels["segmentation"].num_classes == 19
    np.testing.assert_array_equal(
        c19.arrays("test")["segmentation"][0], np.load(fake_root / "cityscapes/val/label_19/0.npy").astype(np.int32)
    )
    assert c7.spec.input_shape == (128, 256, 3) and c7.spec.labels["depth"].shape == (128, 256, 1)
    # LibMTL's copy: the 7-class maps in label/, no 19-class ones.
    fake_vision.write_cityscapes(tmp_path, n=1, label_folders=("label",))
    lib = data_lib.load("cityscapes", data_dir=tmp_path, cache_dir=cache)
    np.testing.assert_array_equal(
        lib.arrays("train")["segmentation"][0], np.load(tmp_path / "cityscapes/train/label/0.npy").astype(np.int32)
    )
    with pytest.raises(DataError, match=r"label_19.*missing folder.*Fix: load num_classes=7"):
        data_lib.load("cityscapes", data_dir=tmp_path, cache_dir=cache, num_classes=19)


def test_celeba_labels_partitions_and_pixels(fake_root, cache):
    from PIL import Image

    ds = data_lib.load("celeba", data_dir=fake_root, cache_dir=cache)
    names = list(ds.spec.labels)
    assert len(names) == 40 and names[0] == "five_o_clock_shadow" and names[-1] == "young"
    assert names[20] == "male" and all(ds.spec.labels[n].kind == "binary" for n in names)
    assert ds.spec.input_shape == (64, 64, 3)
    lines = (fake_root / "celeba/Anno/list_attr_celeba.txt").read_text().splitlines()[2:]
    parts = [int(ln.split()[1]) for ln in (fake_root / "celeba/Eval/list_eval_partition.txt").read_text().splitlines()]
    for split, p in (("train", 0), ("validation", 1), ("test", 2)):
        rows = [ln.split() for ln, q in zip(lines, parts) if q == p]
        arr = ds.arrays(split)
        want = np.array([[1 if v == "1" else 0 for v in r[1:]] for r in rows])
        got = np.stack([arr[n] for n in names], axis=1)
        np.testing.assert_array_equal(got, want)
        # FAMO: Image.open(..).convert('RGB') -> transforms.Resize((64, 64)) (PIL bilinear) -> uint8.
        with Image.open(fake_root / "celeba/Img/img_align_celeba" / rows[-1][0]) as im:
            ref = np.asarray(im.convert("RGB").resize((64, 64), Image.BILINEAR))
        np.testing.assert_array_equal(arr["image"][-1], ref)
    assert ds.spec.split_sizes == {"train": 3, "validation": 2, "test": 2}
    x = np.asarray(ds.spec.input_transform(ds.arrays("test")["image"][:1]))
    np.testing.assert_allclose(x, ds.arrays("test")["image"][:1] / 255.0, rtol=1e-6)
    # The decoded cache is reused: one folder, and a second load reads it.
    assert len([p for p in (cache / "celeba").iterdir()]) == 1
    assert data_lib.load("celeba", data_dir=fake_root, cache_dir=cache).spec.split_sizes["train"] == 3


def test_office_per_task_datasets(fake_root, cache):
    ds = data_lib.load("office31", data_dir=fake_root, cache_dir=cache, image_size=32)
    assert isinstance(ds, data_lib.PerTaskDataset) and list(ds.tasks) == ["amazon", "dslr", "webcam"]
    assert list(ds.spec.labels) == ["amazon", "dslr", "webcam"]
    assert all(s.num_classes == 31 and s.kind == "classification" for s in ds.spec.labels.values())
    for domain, task in (("dslr", "dslr"), ("webcam", "webcam")):
        for split, mode in (("train", "train"), ("validation", "val"), ("test", "test")):
            rows = [
                ln.split(" ") for ln in (fake_root / f"office31/data_txt/{domain}_{mode}.txt").read_text().splitlines()
            ]
            arr = ds.tasks[task].arrays(split)
            assert set(arr) == {"image", task}
            np.testing.assert_array_equal(arr[task], [int(y) for _, y in rows])
            assert arr["image"].shape == (len(rows), 32, 32, 3)
    home = data_lib.load("office_home", data_dir=fake_root, cache_dir=cache, image_size=16)
    assert list(home.tasks) == ["art", "clipart", "product", "real_world"]
    assert home.spec.labels["real_world"].num_classes == 65
    # LibMTL's normalisation: (x / 255 - mean) / std.
    x = home.tasks["art"].arrays("test")["image"][:1]
    np.testing.assert_allclose(
        np.asarray(office.normalise(x)),
        (x / 255.0 - np.array(office.IMAGENET_MEAN)) / np.array(office.IMAGENET_STD),
        atol=1e-5,
    )


# ----------------------------------------------------------------------------------- augmentation


def test_resizes_match_brute_force():
    rng = np.random.default_rng(0)
    x = rng.random((3, 5, 2)).astype(np.float32)
    out = vision.resize_bilinear_align_corners(x, 4, 7)
    want = np.zeros((4, 7, 2))
    for i in range(4):
        for j in range(7):  # align_corners=True: sample at i * (h - 1) / (H - 1), exact fractions
            sy, sx = i * 2 / 3, j * 4 / 6
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            y1, x1 = min(y0 + 1, 2), min(x0 + 1, 4)
            fy, fx = sy - y0, sx - x0
            want[i, j] = (1 - fy) * ((1 - fx) * x[y0, x0] + fx * x[y0, x1]) + fy * (
                (1 - fx) * x[y1, x0] + fx * x[y1, x1]
            )
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(vision.resize_bilinear_align_corners(x, 3, 5), x)  # identity
    # PyTorch 'nearest' = floor(d * in / out); for every crop the NYUv2 / Cityscapes scales make, float32
    # arithmetic gives the exact rational floor.
    for size in (288, 384, 128, 256):
        for s in vision.SCALES:
            n = int(size / s)
            np.testing.assert_array_equal(vision.nearest_indices_torch(n, size), (np.arange(size) * n) // size)


def _example(h=24, w=32):
    rng = np.random.default_rng(1)
    cols = np.broadcast_to(np.arange(w, dtype=np.float32), (h, w))
    n = rng.normal(size=(h, w, 3)).astype(np.float32)
    return {
        "image": rng.random((h, w, 3)).astype(np.float32),
        "segmentation": cols.astype(np.int32),
        "depth": np.full((h, w, 1), 6.0, np.float32),
        "normal": n / np.linalg.norm(n, axis=-1, keepdims=True),
    }


def test_augment_example_scale_crop_and_flip():
    ex = _example()
    same = vision.augment_example(ex, vision.AugmentDraw(1.0, 0, 0, False))
    for k in ex:
        np.testing.assert_array_equal(same[k], ex[k])
    flip = vision.augment_example(ex, vision.AugmentDraw(1.0, 0, 0, True))
    np.testing.assert_array_equal(flip["image"], ex["image"][:, ::-1])
    np.testing.assert_array_equal(flip["segmentation"], ex["segmentation"][:, ::-1])
    np.testing.assert_array_equal(flip["normal"][..., 0], -ex["normal"][:, ::-1, 0])  # x negated
    np.testing.assert_array_equal(flip["normal"][..., 1:], ex["normal"][:, ::-1, 1:])
    crop = vision.augment_example(ex, vision.AugmentDraw(1.5, 3, 5, False))
    np.testing.assert_allclose(crop["depth"], 4.0)  # 6 / 1.5: depth divided by the scale
    # Labels: nearest pixels of the crop's columns 5..5+21-1 (segmentation = column index).
    np.testing.assert_array_equal(crop["segmentation"][0], 5 + (np.arange(32) * 21) // 32)
    # Image corners map onto the crop's corners exactly (align_corners=True).
    np.testing.assert_allclose(crop["image"][0, 0], ex["image"][3, 5], rtol=1e-6)
    np.testing.assert_allclose(crop["image"][-1, -1], ex["image"][3 + 16 - 1, 5 + 21 - 1], rtol=1e-6)
    assert all(crop[k].dtype == ex[k].dtype and crop[k].shape == ex[k].shape for k in ex)


def test_augmentation_draws_cover_libmtl_choices():
    rng = np.random.default_rng(0)
    draws = [vision.draw_augmentation(rng, 288, 384) for _ in range(600)]
    assert {d.scale for d in draws} == {1.0, 1.2, 1.5}
    assert all(0 <= d.top <= 288 - int(288 / d.scale) and 0 <= d.left <= 384 - int(384 / d.scale) for d in draws)
    assert max(d.top for d in draws if d.scale == 1.5) == 96  # the last offset is reachable (inclusive)
    assert 0.4 < np.mean([d.flip for d in draws]) < 0.6


def _batches(it, k):
    return [next(it) for _ in range(k)]


def test_augmented_batches_deterministic_and_resumable(fake_root, cache):
    ds = data_lib.load("nyuv2", data_dir=fake_root, cache_dir=cache, augment=True)
    plain = data_lib.load("nyuv2", data_dir=fake_root, cache_dir=cache)
    # 3 examples, batch 1: 3 steps an epoch; the 5 batches cross an epoch boundary.
    ref = _batches(ds.train_iterator(1, seed=7, prefetch=0), 5)
    again = _batches(ds.train_iterator(1, seed=7, prefetch=0), 5)
    for a, b in zip(ref, again):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    raw = _batches(plain.train_iterator(1, seed=7, prefetch=0), 5)
    assert any(not np.array_equal(a["image"], r["image"]) for a, r in zip(ref, raw))  # it does augment
    other = _batches(ds.train_iterator(1, seed=8, prefetch=0), 5)
    assert any(not np.array_equal(a["image"], o["image"]) for a, o in zip(ref, other))
    # Resume mid-epoch: state after 2 batches, a fresh iterator set to it gives batches 3..5.
    it = ds.train_iterator(1, seed=7, prefetch=0)
    _batches(it, 2)
    state = it.get_state()
    resumed = ds.train_iterator(1, seed=7, prefetch=0)
    resumed.set_state(state)
    for a, b in zip(ref[2:], _batches(resumed, 3)):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    # Several batches prepared in parallel (read_threads) and prefetched: the same batches, and the same
    # resume point.
    ds.read_threads = 3
    threaded = ds.train_iterator(1, seed=7, prefetch=2)
    first = _batches(threaded, 2)
    state = threaded.get_state()
    for a, b in zip(ref, first + _batches(threaded, 3)):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    resumed = ds.train_iterator(1, seed=7, prefetch=2)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["normal"], ref[2]["normal"])
    # Other splits (a bilevel scheme's meta batches) are never augmented.
    val_aug = next(ds.train_iterator(1, seed=7, split="validation", prefetch=0))
    val_plain = next(plain.train_iterator(1, seed=7, split="validation", prefetch=0))
    np.testing.assert_array_equal(val_aug["image"], val_plain["image"])
    # Two processes' halves of a global batch of 2 are the single process's batch.
    whole = next(ds.train_iterator(2, seed=7, prefetch=0))
    halves = [next(ds.train_iterator(2, seed=7, prefetch=0, process_index=p, process_count=2)) for p in (0, 1)]
    for k in whole:
        np.testing.assert_array_equal(whole[k], np.concatenate([h[k] for h in halves]))


# ------------------------------------------------------------------------------------ bad input


def _nyu_copy(tmp_path):
    return fake_vision.write_nyuv2(tmp_path, n=2, n_val=1)


def _assert_nothing_cached(cache):
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*")), list(cache.rglob("*"))


@pytest.mark.parametrize(
    "damage, pattern",
    [
        ("missing_split", r"nyuv2/val: missing split folder.*Fix: unpack MTAN"),
        ("gap", r"train/image/1\.npy: missing: the indices must run 0\.\.1 without gaps.*Fix:"),
        ("chw", r"train/image/0\.npy: shape \(3, 288, 384\) is channels-first \(CHW\).*Fix: convert with np\.save"),
        ("shape", r"train/depth/1\.npy: shape \(288, 384\), expected \(288, 384, 1\).*Fix:"),
        (
            "uint8",
            r"val/image/0\.npy: dtype uint8; image must be a float array in \[0, 1\].*Fix: np\.save\(path, x\.astype",
        ),
        ("range", r"train/image/1\.npy: image values span \[0, 255\].*Fix: divide 8-bit images by 255"),
        ("label", r"train/label/0\.npy: label 13 is outside the 13 classes.*Fix: map unlabelled pixels to -1"),
        ("nan_depth", r"train/depth/0\.npy: depth holds NaN/inf.*Fix: x = np\.nan_to_num"),
        ("nan_normal", r"val/normal/0\.npy: normal holds NaN/inf.*Fix:"),
        ("not_npy", r"train/normal/1\.npy: not a readable \.npy file.*Fix:"),
        (
            "missing_depth",
            r"train/depth: 1 files but train/image/ has 2; every example needs all of image, label, "
            r"depth, normal.*Fix:",
        ),
    ],
)
def test_nyuv2_bad_input_names_file_and_fix(tmp_path, cache, damage, pattern):
    import shutil

    root = _nyu_copy(tmp_path)
    x = np.load(root / "train/image/0.npy")
    if damage == "missing_split":
        shutil.rmtree(root / "val")
    elif damage == "gap":
        (root / "train/image/1.npy").rename(root / "train/image/2.npy")
    elif damage == "chw":
        np.save(root / "train/image/0.npy", np.moveaxis(x, -1, 0))
    elif damage == "shape":
        np.save(root / "train/depth/1.npy", np.load(root / "train/depth/1.npy")[..., 0])
    elif damage == "uint8":
        np.save(root / "val/image/0.npy", (x * 255).astype(np.uint8))
    elif damage == "range":
        np.save(root / "train/image/1.npy", np.round(x * 255))
    elif damage == "label":
        lab = np.load(root / "train/label/0.npy")
        lab[5, 5] = 13
        np.save(root / "train/label/0.npy", lab)
    elif damage == "nan_depth":
        d = np.load(root / "train/depth/0.npy")
        d[10, 20, 0] = np.nan
        np.save(root / "train/depth/0.npy", d)
    elif damage == "nan_normal":
        n = np.load(root / "val/normal/0.npy")
        n[1, 2, 0] = np.nan
        np.save(root / "val/normal/0.npy", n)
    elif damage == "missing_depth":
        (root / "train/depth/1.npy").unlink()
    elif damage == "not_npy":
        (root / "train/normal/1.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match=pattern):
        data_lib.load("nyuv2", data_dir=tmp_path, cache_dir=cache)
    _assert_nothing_cached(cache)


def test_verification_is_tied_to_the_files(tmp_path, cache):
    """Verified once per file set; a changed file is verified again (and refused if bad)."""
    root = _nyu_copy(tmp_path)
    data_lib.load("nyuv2", data_dir=tmp_path, cache_dir=cache)
    assert len(list((cache / "nyuv2_verified").glob("*.json"))) == 1
    d = np.load(root / "train/depth/1.npy")
    d[0, 0, 0] = np.nan
    np.save(root / "train/depth/1.npy", d)
    with pytest.raises(DataError, match=r"train/depth/1\.npy: depth holds NaN"):
        data_lib.load("nyuv2", data_dir=tmp_path, cache_dir=cache)
    assert len(list((cache / "nyuv2_verified").glob("*.json"))) == 1


def test_cityscapes_label_outside_classes(tmp_path, cache):
    root = fake_vision.write_cityscapes(tmp_path, n=1)
    lab = np.load(root / "val/label_7/0.npy")
    lab[0, 0] = 9
    np.save(root / "val/label_7/0.npy", lab)
    with pytest.raises(DataError, match=r"val/label_7/0\.npy: label 9 is outside the 7 classes.*Fix:"):
        data_lib.load("cityscapes", data_dir=tmp_path, cache_dir=cache)
    _assert_nothing_cached(cache)
    assert data_lib.load("cityscapes", data_dir=tmp_path, cache_dir=cache, num_classes=19).spec.split_sizes["test"] == 1


@pytest.mark.parametrize(
    "damage, pattern",
    [
        ("columns", r"list_attr_celeba\.txt: line 5 has 40 columns, expected 41.*Fix: re-extract"),
        ("names", r"list_attr_celeba\.txt: line 2 names 39 attributes, CelebA has 40.*Fix:"),
        ("value", r"list_attr_celeba\.txt: line 4 has value '0'; attribute values are 1 or -1.*Fix:"),
        ("order", r"list_eval_partition\.txt: line 2 names 000003\.jpg.*same order.*Fix:"),
        ("image", r"img_align_celeba/000004\.jpg: image listed in list_attr_celeba\.txt not found.*Fix:"),
        ("jpeg", r"img_align_celeba/000002\.jpg: cannot decode the image.*Fix: re-copy"),
    ],
)
def test_celeba_bad_input(tmp_path, cache, damage, pattern):
    root = fake_vision.write_celeba(tmp_path, n=6)
    attr = root / "Anno/list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    if damage == "columns":
        lines[4] = lines[4].rsplit(" ", 1)[0].rstrip()
    elif damage == "names":
        lines[1] = " ".join(lines[1].split()[:-1])
    elif damage == "value":
        lines[3] = lines[3].replace("-1", " 0", 1)
    if damage in ("columns", "names", "value"):
        attr.write_text("\n".join(lines) + "\n")
    elif damage == "order":
        part = root / "Eval/list_eval_partition.txt"
        rows = part.read_text().splitlines()
        rows[1], rows[2] = rows[2], rows[1]
        part.write_text("\n".join(rows) + "\n")
    elif damage == "image":
        (root / "Img/img_align_celeba/000004.jpg").unlink()
    elif damage == "jpeg":
        (root / "Img/img_align_celeba/000002.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match=pattern):
        data_lib.load("celeba", data_dir=tmp_path, cache_dir=cache)
    _assert_nothing_cached(cache)


def test_office_bad_input(tmp_path, cache):
    root = fake_vision.write_office(tmp_path, "office31", n=1)
    lst = root / "data_txt/webcam_val.txt"
    good = lst.read_text()
    lst.write_text(good.rsplit(" ", 1)[0] + " 31\n")
    with pytest.raises(DataError, match=r"webcam_val\.txt: line 1 has class 31, outside 0\.\.30.*Fix: correct"):
        data_lib.load("office31", data_dir=tmp_path, cache_dir=cache, image_size=8)
    lst.write_text(good)
    (root / "data_txt/dslr_test.txt").unlink()
    with pytest.raises(DataError, match=r"dslr_test\.txt: split list not found.*Fix: put the Office-31 images"):
        data_lib.load("office31", data_dir=tmp_path, cache_dir=cache, image_size=8)
    _assert_nothing_cached(cache)


def test_bad_keywords(fake_root, cache):
    with pytest.raises(DataError, match=r"num_classes must be 7 or 19"):
        data_lib.load("cityscapes", data_dir=fake_root, cache_dir=cache, num_classes=13)
    with pytest.raises(DataError, match=r"validation_percent must be an int in 0\.\.50"):
        data_lib.load("nyuv2", data_dir=fake_root, cache_dir=cache, validation_percent=60)
    with pytest.raises(DataError, match=r"unknown keyword\(s\) augmentation; accepted: validation_percent, augment"):
        data_lib.load("nyuv2", data_dir=fake_root, cache_dir=cache, augmentation=True)


def test_missing_data_dir_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("JMTL_DATA_DIR", raising=False)
    for name in ("nyuv2", "cityscapes", "celeba", "office31"):
        with pytest.raises(DataError, match="no data dir.*Fix:"):
            data_lib.load(name, cache_dir=tmp_path)
    with pytest.raises(DataError, match=r"no train/ here or in nyuv2/.*Fix:"):
        data_lib.load("nyuv2", data_dir=tmp_path, cache_dir=tmp_path)


# ------------------------------------------------------------------------- config-driven Office run


def test_office_config_run_trains_per_task(fake_root, cache, tmp_path):
    """``jmtl.train(config, workdir)`` on Office-31: one batch per domain per step, each domain scored on
    its own data (the path ``jmtl.fit(per_task_inputs=True)`` already had)."""
    from jmtl.training import config_schema, loop

    config = config_schema.default_config()
    config.dataset.name = "office31"
    config.dataset.data_dir = str(fake_root)
    config.dataset.cache_dir = str(cache)
    config.dataset.kwargs = {"image_size": 8}
    config.model.encoder = "mlp"
    config.model.encoder_kwargs = {"features": (8,)}
    config.batch_size = 2
    config.num_steps = 2
    config.eval_every_steps = 2
    config.eval_batch_size = 4
    config.log_every_steps = 1
    config.progress_bar = False
    config.parallel = "single"

    exp = loop.build_experiment(config)
    assert exp.step_config.per_task_inputs and [t.name for t in exp.tasks] == ["amazon", "dslr", "webcam"]
    batch = next(exp.train_iterator(0))
    assert set(batch) == {"amazon", "dslr", "webcam"}
    for domain in batch:
        assert set(batch[domain]) == {"image", domain} and batch[domain]["image"].shape == (2, 8, 8, 3)
        classes = {
            int(ln.split(" ")[1])
            for ln in (fake_root / f"office31/data_txt/{domain}_train.txt").read_text().splitlines()
        }
        assert set(batch[domain][domain].tolist()) <= classes
    summary, state = jmtl.train(config, tmp_path / "run")
    assert int(state.step) == 2
    final = summary["final"]["test"] if "final" in summary else summary
    text = repr(final)
    assert all(d in text for d in ("amazon", "dslr", "webcam"))
    assert os.path.isfile(tmp_path / "run" / "metrics.jsonl")


def test_bench_vision_data_smoke(tmp_path):
    """The batch-preparation benchmark runs end to end in its smallest configuration (timings unchecked)."""
    import json

    from experiments.bench import vision_data

    vision_data.main(["--batch", "2", "--n", "2", "--repeats", "1", "--stream", "1", "--out", str(tmp_path / "vd")])
    result = json.loads((tmp_path / "vd.json").read_text())
    assert set(result["rows"]) == {"plain", "augment", "augment, threaded"} and result["provenance"]["recorded"]
    assert "| augment, threaded |" in (tmp_path / "vd.md").read_text()
