"""Tiny datasets in the exact on-disk formats of NYUv2, Cityscapes, CelebA, Office-31 and Office-Home.

``write(name, out_dir, n=...)`` writes ``out_dir/<name>/`` in the format its loader reads (see
``jmtl.data.vision``, ``jmtl.data.celeba``, ``jmtl.data.office``): real per-example shapes and value
conventions, random content, a few examples. Used by the tests and the README's smoke commands
(``python -m experiments.make_fake_vision_data --out DIR``). The content is random but not
meaningless: segmentation labels and depth follow the image's brightness, so a model can learn
something in a smoke run; invalid pixels (label -1, depth 0, normal 0) are present in every map.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import numpy as np

NAMES = ("nyuv2", "cityscapes", "celeba", "office31", "office_home")

# The 40 attribute names of CelebA's list_attr_celeba.txt, in the file's order.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)
CELEBA_SIZE = (178, 218)  # (width, height) of the aligned-and-cropped JPEGs

OFFICE31_DOMAINS = ("amazon", "dslr", "webcam")
OFFICE_HOME_DOMAINS = ("Art", "Clipart", "Product", "Real_World")


def _dense(
    path: pathlib.Path, n: int, h: int, w: int, label_folders: dict[str, int], normals: bool, rng: np.random.Generator
) -> None:
    for i in range(n):
        image = rng.random((h, w, 3), dtype=np.float32)
        gray = image.mean(-1)
        arrays = {"image": image}
        for folder, classes in label_folders.items():
            label = np.minimum((gray * classes).astype(np.int64), classes - 1).astype(np.float32)
            label[: h // 8] = -1  # an unlabelled band (ignore index), as in the real maps
            arrays[folder] = label
        depth = (1.0 + 9.0 * gray)[..., None].astype(np.float32)
        depth[:, : w // 10] = 0.0  # no measurement
        arrays["depth"] = depth
        if normals:
            v = rng.normal(size=(h, w, 3)).astype(np.float32)
            v /= np.linalg.norm(v, axis=-1, keepdims=True)
            v[-h // 10 :] = 0.0  # no measurement
            arrays["normal"] = v
        for folder, x in arrays.items():
            (path / folder).mkdir(parents=True, exist_ok=True)
            np.save(path / folder / f"{i}.npy", x)


def write_nyuv2(out: pathlib.Path, n: int = 3, n_val: int | None = None, seed: int = 0) -> pathlib.Path:
    """``out/nyuv2/{train,val}/{image,label,depth,normal}/{i}.npy`` at 288x384 (HWC float32)."""
    root = pathlib.Path(out) / "nyuv2"
    rng = np.random.default_rng([seed, 1])
    for split, m in (("train", n), ("val", n if n_val is None else n_val)):
        _dense(root / split, m, 288, 384, {"label": 13}, True, rng)
    return root


def write_cityscapes(
    out: pathlib.Path,
    n: int = 3,
    n_val: int | None = None,
    seed: int = 0,
    label_folders: Sequence[str] = ("label_7", "label_19"),
) -> pathlib.Path:
    """``out/cityscapes/{train,val}/{image,label_7,label_19,depth}/{i}.npy`` at 128x256 (MTAN's names;
    ``label_folders=('label',)`` writes LibMTL's copy, 7 classes in ``label/``)."""
    root = pathlib.Path(out) / "cityscapes"
    rng = np.random.default_rng([seed, 2])
    classes = {f: (19 if f == "label_19" else 2 if f == "label_2" else 7) for f in label_folders}
    for split, m in (("train", n), ("val", n if n_val is None else n_val)):
        _dense(root / split, m, 128, 256, classes, False, rng)
    return root


def _jpeg(path: pathlib.Path, size: tuple[int, int], rng: np.random.Generator) -> None:
    from PIL import Image  # pylint: disable=g-import-not-at-top

    w, h = size
    # Smooth random content (a gradient plus noise) compresses like a photo and survives JPEG.
    base = np.linspace(0, 255, w)[None, :, None] * rng.random(3)[None, None, :]
    pix = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pix, "RGB").save(path, format="JPEG", quality=90)


def write_celeba(out: pathlib.Path, n: int = 6, seed: int = 0, partition: Sequence[int] | None = None) -> pathlib.Path:
    """FAMO's layout: ``out/celeba/Anno/list_attr_celeba.txt``, ``out/celeba/Eval/list_eval_partition.txt``,
    ``out/celeba/Img/img_align_celeba/000001.jpg ...`` (178x218 JPEGs).

    ``list_attr_celeba.txt``: the count, the 40 names, then ``<file> v1 .. v40`` with v = 1 / -1
    (positives padded with a space, as in the released file). ``list_eval_partition.txt``: ``<file> p``
    with p = 0 train / 1 val / 2 test; by default the examples cycle through 0, 1, 2. Within a split,
    examples pair up with opposite attributes, so with two or more per split both classes of every
    attribute occur in it.
    """
    root = pathlib.Path(out) / "celeba"
    rng = np.random.default_rng([seed, 3])
    partition = list(partition) if partition is not None else [i % 3 for i in range(n)]
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    attrs = np.where(rng.random((n, len(CELEBA_ATTRIBUTES))) < 0.5, 1, -1)
    # Each split's second example is the first's negation, so every split with two or more examples
    # holds both classes of every attribute (the evaluator's split-level AUC is undefined otherwise).
    for p in set(partition):
        members = [i for i, q in enumerate(partition) if q == p]
        for a, b in zip(members[::2], members[1::2]):
            attrs[b] = -attrs[a]
    lines = [str(n), " ".join(CELEBA_ATTRIBUTES)]
    lines += [name + " " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, attrs)]
    (root / "Anno").mkdir(parents=True, exist_ok=True)
    (root / "Anno" / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    (root / "Eval" / "list_eval_partition.txt").write_text(
        "".join(f"{name} {p}\n" for name, p in zip(names, partition))
    )
    for name in names:
        _jpeg(root / "Img" / "img_align_celeba" / name, CELEBA_SIZE, rng)
    return root


def write_office(
    out: pathlib.Path, name: str = "office31", n: int = 3, seed: int = 0, num_classes: int | None = None
) -> pathlib.Path:
    """LibMTL's Office layout: images ``out/<name>/<Domain>/...jpg`` and the split lists
    ``out/<name>/data_txt/<Domain>_{train,val,test}.txt``, lines ``<path relative to out/<name>> <class>``.

    Office-31 paths look like ``amazon/images/<class>/frame_0001.jpg`` (31 classes), Office-Home's like
    ``Real_World/<Class>/00001.jpg`` (65 classes). ``n`` images per domain and split; their classes
    cycle through 0..num_classes-1 (default: the real 31 / 65, so the class count is known)."""
    if name not in ("office31", "office_home"):
        raise ValueError(f"write_office: name must be office31 or office_home, got {name!r}")
    root = pathlib.Path(out) / name
    rng = np.random.default_rng([seed, 4 if name == "office31" else 5])
    domains = OFFICE31_DOMAINS if name == "office31" else OFFICE_HOME_DOMAINS
    classes = num_classes or (31 if name == "office31" else 65)
    (root / "data_txt").mkdir(parents=True, exist_ok=True)
    k = 0
    for d, domain in enumerate(domains):
        for split in ("train", "val", "test"):
            rows = []
            for i in range(n):
                c = (k + i) % classes
                rel = (
                    f"{domain}/images/class_{c:02d}/frame_{k + i:04d}.jpg"
                    if name == "office31"
                    else f"{domain}/Class_{c:02d}/{k + i:05d}.jpg"
                )
                # Real Office images vary in size (amazon 300x300, webcam 640x480, ...).
                _jpeg(root / rel, (40 + 8 * d, 30 + 6 * (i % 3)), rng)
                rows.append(f"{rel} {c}\n")
            k += n
            (root / "data_txt" / f"{domain}_{split}.txt").write_text("".join(rows))
    return root


def write(name: str, out_dir, n: int | None = None, seed: int = 0) -> pathlib.Path:
    """Writes dataset ``name`` (one of :data:`NAMES`) under ``out_dir/<name>/``; returns that folder.

    Args:
      name: nyuv2 | cityscapes | celeba | office31 | office_home.
      out_dir: the parent folder (then ``--config.dataset.data_dir=out_dir`` finds it).
      n: examples per split (NYUv2 / Cityscapes: per folder, default 3; CelebA: in total, default 6,
        cycling train / val / test; Office: per domain and split, default 3).
      seed: content seed.
    """
    out = pathlib.Path(out_dir)
    if name == "nyuv2":
        return write_nyuv2(out, n or 3, seed=seed)
    if name == "cityscapes":
        return write_cityscapes(out, n or 3, seed=seed)
    if name == "celeba":
        return write_celeba(out, n or 6, seed=seed)
    if name in ("office31", "office_home"):
        return write_office(out, name, n or 3, seed=seed)
    raise ValueError(f"unknown fake dataset {name!r}; valid: {', '.join(NAMES)}")
