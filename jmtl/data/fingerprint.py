"""Raw-file digests, published checksums and source fingerprints.

Every cache of a dataset built from raw files is keyed by a *source
fingerprint*: a hash of the builder's name and version and of the name, size
and sha256 of each raw file it reads. A cache built from other files (a wrong
data dir, a re-downloaded or edited file, a new builder version) therefore
lives in another folder and is never picked up by mistake.

Hashing is cheap enough to do on every load: sha256 runs at about 400 MB/s
here (measured on this project's 2-core CI machine: the eight MNIST and
Fashion-MNIST `.gz` files, 42 MB, hash in 0.11-0.16 s), so MNIST's 11.6 MB
costs ~30 ms and Fashion-MNIST's 31 MB ~75 ms per load.

`PUBLISHED` holds the checksums listed for the shared raw files (the
data folder's README, taken from each dataset's official distribution where
there is one). `check_published` compares a file against them and, on a
mismatch, names the file, the expected and the found checksum, and -- when
the file matches another known file (MNIST handed to the Fashion-MNIST
builder) -- which one it is.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import json
import os
import pathlib
from typing import Iterable, Mapping, NamedTuple

from jmtl.data.idx import DataError

_CHUNK = 1 << 20
FLAG_HINT = "verify_checksums=False to the loader (on the command line: --config.dataset.kwargs.verify_checksums=False)"


class FileDigest(NamedTuple):
    """Size and sha256 of one raw file.

    Attributes:
      name: the file's name as the builder knows it (e.g.
        'train-images-idx3-ubyte.gz'); the fingerprint uses this, not the
        folder, so moving the same files elsewhere keeps the cache.
      path: where it was read (for messages only).
      size: bytes on disk.
      sha256: hex digest of the bytes on disk.
    """

    name: str
    path: str
    size: int
    sha256: str


def sha256_file(path: os.PathLike[str] | str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def digest_file(path: os.PathLike[str] | str, name: str | None = None) -> FileDigest:
    """Returns the `FileDigest` of `path` (`name` defaults to its basename).

    Raises:
      DataError: the file cannot be read.
    """
    path = pathlib.Path(path)
    try:
        return FileDigest(name or path.name, str(path), path.stat().st_size, sha256_file(path))
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e}). Fix: check that it exists and is readable") from e


def source_fingerprint(builder: str, version: str, digests: Iterable[FileDigest]) -> str:
    """A 16-hex-digit key of (builder, version, each file's name/size/sha256).

    Args:
      builder: the builder's registry name, e.g. 'multi_fashion'.
      version: the builder's version string (a new version = a new cache).
      digests: the raw files read by the build.
    """
    payload = json.dumps(
        {"builder": builder, "version": str(version), "files": sorted([d.name, d.size, d.sha256] for d in digests)},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------
# Published checksums.


@dataclasses.dataclass(frozen=True)
class Published:
    """The published checksum of one raw file.

    Attributes:
      dataset: title used in messages, e.g. 'MNIST'.
      name: file name, e.g. 'train-images-idx3-ubyte.gz'.
      size: bytes of the file as published.
      sha256: sha256 of the file as published.
      content_sha256: sha256 of the decompressed content, when listed; a
        recompressed copy (other gzip header or level) with that content is
        accepted.
      content_md5: md5 of the decompressed content, when only that is listed.
    """

    dataset: str
    name: str
    size: int
    sha256: str
    content_sha256: str | None = None
    content_md5: str | None = None


def _table(dataset: str, *rows: tuple) -> dict[str, Published]:
    return {r[0]: Published(dataset, *r) for r in rows}


# Copied from the shared data folder's README (sections 1-8), which records
# the official MD5s / checksums of each file.
PUBLISHED: dict[str, dict[str, Published]] = {
    "mnist": _table(
        "MNIST",
        (
            "train-images-idx3-ubyte.gz",
            9_912_422,
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            None,
            "6bbc9ace898e44ae57da46a324031adb",
        ),
        (
            "train-labels-idx1-ubyte.gz",
            28_881,
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            None,
            "a25bea736e30d166cdddb491f175f624",
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            1_648_877,
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            None,
            "2646ac647ad5339dbf082846283269ea",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            4_542,
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            None,
            "27ae3e4e09519cfbb04c329615203637",
        ),
    ),
    "fashion_mnist": _table(
        "Fashion-MNIST",
        ("train-images-idx3-ubyte.gz", 26_421_880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        ("train-labels-idx1-ubyte.gz", 29_515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        ("t10k-images-idx3-ubyte.gz", 4_422_102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        ("t10k-labels-idx1-ubyte.gz", 5_148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    ),
    "conll2000": _table(
        "CoNLL-2000",
        (
            "train.txt.gz",
            599_156,
            "160109d8a1c31381976affcb534abbfa11e0bb5acabc60d4feb5c6b0874a8858",
            "82033cd7a72b209923a98007793e8f9de3abc1c8b79d646c50648eb949b87cea",
        ),
        (
            "test.txt.gz",
            136_837,
            "6864d222606f9deff739206a49f01d43651041b8deb94f0ea4e98ba0b14217ab",
            "73b7b1e565fa75a1e22fe52ecdf41b6624d6f59dacb591d44252bf4d692b1628",
        ),
    ),
    "conll2003": _table(
        "CoNLL-2003",
        (
            "eng.train.gz",
            611_383,
            "042759a7f725d1b3349b083f473bba5990b8e814c71c63b771e6d5b97191d975",
            "eac0822f501353f265383ddf1edb0dcd42a1b6eefd3e383d7074db98c38eb41c",
        ),
        (
            "eng.testa.gz",
            153_371,
            "06b824b163e1d2ce8dccf9dc5e6acb40d1f4d337f98fcb6ee9178687e829d966",
            "aedc4ccbd1ae9795feaa0e86fe72d195b0258abed9d705b630d1c889276fac1e",
        ),
        (
            "eng.testb.gz",
            137_345,
            "c9e7166a9dbf1808ace69ab33af6b1ea9aea22a5ce0516c2ce2a843f877b896a",
            "0632f32c090ef31c223135b7fee3187a7cf8e65c4015c7866bb7783428cdd9a6",
        ),
    ),
    "census_income_kdd": _table(
        "Census-Income (KDD)",
        (
            "census-income.data.bz2",
            2_651_475,
            "18871717881a27d471fbcd7448541e181e32bbbc9b7d900824742c28e14e4469",
            "3676a81db7d3528f3f8b9f3c699d0f0aa28db45e6e994fa0b8ed38327539ee86",
        ),
        (
            "census-income.test.gz",
            3_261_416,
            "5ac4cacd3ca9f1ecb10de1a0a41e4ac68fdc419e3fec190f5c0c6cc03b2ea659",
            "98402b1ab879573d0a7f38a699a40258080e25e33d3401e7bf9c96d3fa0fab8c",
        ),
        ("census-income.names", 14_892, "d6fea52977f68504ab3149351980458e09bfc3116808da8986646710d254ef98"),
    ),
    "school": _table(
        "School (ILEA)",
        ("school_b.mat", 40_592, "973f1ca99d0d41a838ec6ae86001a48e7b69391eb74646b9e4fc54f62866a146"),
        *[
            (f"school_{i}_indexes.mat", size, sha)
            for i, size, sha in (
                (1, 28_567, "030c9ca0a73d6264aa1eeac49aba1d760a1b5692cd3124667e74a7a2b7751bc5"),
                (2, 28_570, "63d3a076a4cdd3de81825d3cf0c030b93bdc60e912eaed4763ee224efab163f8"),
                (3, 28_559, "f7f68e3adb50db8094e230c2b83d548790379cd93ad98fadb35ff2999762dbe6"),
                (4, 28_571, "02643928224056a61e25dec8d4841dba5195ed9affdc76fdc697854a2506d142"),
                (5, 28_569, "6ed00a453d582dce4397f6f49120cff803c22f53cfb2dd63a3826c359c24bcdf"),
                (6, 28_568, "ca853babe5b7f0f5812e7f4261f8b5e5728f1b3b06711e56a76b27b7f959f379"),
                (7, 28_568, "b72105509c70f94f48c7c8b0e1359c6c0ea630c7ac588337b412f946ede62283"),
                (8, 28_569, "8ad60073b135220f1a6f49fdd79b4430b6a0c8ce9925a22dcc5a09141f5b1c04"),
                (9, 28_573, "0de74247d93c413b690ebb65e2e7beb1c55f05b2a2d5db46469e673a552cccf2"),
                (10, 28_573, "b408742eab66cd124563493057b080fd39e5075f48b4c391c53e5f6a1a4c8df1"),
            )
        ],
        ("school.mat", 44_759, "57fb3238fdd03a9aa17276e2ce18d9bbb5d128c3261e794fe6233b58b6909068"),
    ),
    "qm9": _table(
        "QM9",
        (
            "qm9_qm9pack_scalar.csv.gz",
            9_500_134,
            "fd24acdd08d20b78cfc84f09fd5cd4b6bab785692a474c147a3a9b65eb9e846b",
            "ac33178384158d4ac2763dd3e02915b98454f90d65bf5c0e5cde817bed284ab2",
        ),
    ),
    "sarcos": _table(
        "SARCOS",
        ("sarcos_inv_test.mat", 996_776, "161a59b5c3b4f4b404584323f181607b2acbe620eb134dc720760dc3f38f5cec"),
    ),
}


def identify(sha256: str) -> list[tuple[str, Published]]:
    """The published files (family, entry) whose bytes have this sha256."""
    return [(family, p) for family, files in PUBLISHED.items() for p in files.values() if p.sha256 == sha256]


def _decompressed_digests(path: str) -> tuple[str, str] | None:
    """(sha256, md5) of a .gz/.bz2 file's content; None if it does not open."""
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(pathlib.Path(path).suffix)
    if opener is None:
        return None
    sha, md5 = hashlib.sha256(), hashlib.md5()
    try:
        with opener(path, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                sha.update(chunk)
                md5.update(chunk)
    except (OSError, EOFError, ValueError):
        return None
    return sha.hexdigest(), md5.hexdigest()


def matches_published(digest: FileDigest, published: Published) -> bool:
    """Whether the file is the published one (same bytes, or same content)."""
    if digest.sha256 == published.sha256:
        return True
    if published.content_sha256 is None and published.content_md5 is None:
        return False
    # A recompressed copy (another gzip header/level) of the same content:
    # only decompressed when the bytes differ, so the usual path costs nothing.
    content = _decompressed_digests(digest.path)
    return content is not None and (content[0] == published.content_sha256 or content[1] == published.content_md5)


def check_published(family: str, digests: Iterable[FileDigest], *, flag: str = FLAG_HINT) -> None:
    """Verifies files against the checksums published for `family`.

    Files without a published checksum (and families without any) pass.

    Args:
      family: key of `PUBLISHED`, e.g. 'fashion_mnist'.
      digests: the raw files about to be read.
      flag: how the caller turns the check off, quoted in the fix.

    Raises:
      DataError: naming every differing file (path, expected and found sha256
        and size), what the file looks like when it is another known file,
        and the fix.
    """
    table = PUBLISHED.get(family, {})
    problems, lookalikes = [], set()
    for d in digests:
        want = table.get(d.name)
        if want is None or matches_published(d, want):
            continue
        line = (
            f"{d.path}: sha256 {d.sha256} ({d.size:,} bytes), expected "
            f"{want.sha256} ({want.size:,} bytes) as published for "
            f"{want.dataset} {want.name}"
        )
        known = [(f, p) for f, p in identify(d.sha256) if f != family]
        if known:
            lookalikes.update(p.dataset for _, p in known)
            line += "; these bytes are the published " + " / ".join(f"{p.dataset} {p.name}" for _, p in known)
        problems.append(line)
    if not problems:
        return
    title = next(iter(table.values())).dataset
    head = f"{title} checksum mismatch in {len(problems)} file(s)"
    if lookalikes:
        head += f": these look like {' / '.join(sorted(lookalikes))} files, not {title}"
    raise DataError(
        head + ":\n  " + "\n  ".join(problems) + "\nFix: point the data dir "
        f"(--config.dataset.data_dir or $JMTL_DATA_DIR) at the {title} files, "
        f"or download them again; if you changed the files on purpose, pass "
        f"{flag}; the cache is keyed by the files' hashes, so it never mixes "
        "with the official data. Nothing was written to the cache."
    )


def check_family_files(
    family: str, files: Mapping[str, os.PathLike[str] | str], *, verify: bool = True
) -> list[FileDigest]:
    """Digests `files` (name -> path) and, if `verify`, checks them.

    The one call a builder needs: returns the digests for
    `source_fingerprint` and raises `DataError` (see `check_published`) on a
    mismatch.
    """
    digests = [digest_file(p, n) for n, p in files.items()]
    if verify:
        check_published(family, digests)
    return digests
