"""QM9 scalar properties as the 11-task regression benchmark of Nash-MTL (Navon et al., ICML 2022).

Raw file (never copied into the repo), from ``data_dir`` / ``$JMTL_DATA_DIR`` (the folder itself or
its ``qm9/`` subfolder): ``qm9_qm9pack_scalar.csv.gz``, 130,831 molecules (the standard set: the
3,054 "uncharacterized" ones removed), columns ``Index, SMILES, InChi, N_atoms`` and 15 scalar
properties in the original units (energies in Hartree). There are no coordinates in this file.

Tasks, in Nash-MTL's order and units (its ``experiments/quantum_chemistry/utils.py``: PyTorch
Geometric's QM9 targets ``[0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11]``):

=====  ======================  ================  =================================
task   column                  stored unit       reported (``REPORT_SCALE``)
=====  ======================  ================  =================================
mu     Dipole_debye            D                 D
alpha  Polarizability_bohr3    a0^3              a0^3
homo   HOMO_au                 eV                meV (x1000)
lumo   LUMO_au                 eV                meV
r2     R2_bohr2                a0^2              a0^2
zpve   ZPVE_au                 eV                meV
U0     InternalEnergy_0K_au    eV, atomization   meV
U      InternalEnergy_298K_au  eV, atomization   meV
H      Enthalphy_298K_au       eV, atomization   meV
G      GibbsFreeEnergy_298K_au eV, atomization   meV
cv     Heatcapacity_Cv_...     cal/(mol K)       cal/(mol K)
=====  ======================  ================  =================================

Hartree -> eV uses PyG's factor 27.211386246. U0, U, H and G are *atomization* energies as in
PyG's targets 12-15 (which Nash-MTL uses): the molecule's energy minus the sum of its atoms'
reference energies (QM9's atomref table, figshare 1057643, B3LYP/6-31G(2df,p); ``ATOM_REF``). The
atom counts come from the InChI formula layer plus its mobile-proton layer (``/p+1``, 136
zwitterions); their sum is checked against ``N_atoms`` for every molecule.

Targets are standardised with the TRAIN mean and population s.d. (Nash-MTL uses torch's
unbiased s.d.; at 110,831 molecules the two differ by 5 ppm, and the MAE in original units does
not depend on it); ``QM9Data.mean`` /
``QM9Data.std`` undo it, and ``jmtl.metrics.mae_original_units(pred, target, mean, std) *
REPORT_SCALE`` gives the per-task MAE in the units of Nash-MTL's Table (the mean cancels).

Split: Nash-MTL shuffles PyG's QM9 (``dataset.shuffle()``, a torch permutation under the run's
seed) and takes test = the first 10,000, validation = the next 10,000, train = the remaining
110,831. The torch permutation cannot be reproduced without torch, so here a
``np.random.default_rng(seed)`` permutation of the 130,831 molecules (in ``Index`` order, PyG's
order) is cut the same way: same sizes, different molecules.

Inputs: Nash-MTL's model is a message-passing network on 3D geometry (PyG ``T.Distance``), which
this file cannot feed. Built here, without extra dependencies: ``x`` = the counts of H, C, N, O, F
(float32 [5]) -- a composition baseline only -- and the SMILES of each split
(``QM9Data.smiles[split]``) for a graph featuriser (rdkit, not a dependency yet).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import io
import os
import pathlib
import re
from typing import Any

import numpy as np

from jmtl.data import fingerprint
from jmtl.data.idx import DataError
from jmtl.data.pipeline import MTLDataset, from_arrays

ENV_DATA_DIR = "JMTL_DATA_DIR"
SUBFOLDER = "qm9"
FILE = "qm9_qm9pack_scalar.csv.gz"
NUM_MOLECULES = 130_831
HEADER = (
    "Index", "SMILES", "InChi", "N_atoms", "RotA_GHz", "RotB_GHz", "RotC_GHz", "Dipole_debye",
    "Polarizability_bohr3", "HOMO_au", "LUMO_au", "HOMO_LUMO_gap_au", "R2_bohr2", "ZPVE_au",
    "InternalEnergy_0K_au", "InternalEnergy_298K_au", "Enthalphy_298K_au", "GibbsFreeEnergy_298K_au",
    "Heatcapacity_Cv_cal_mol_K",
)
HARTREE_TO_EV = 27.211386246  # torch_geometric.datasets.qm9.HAR2EV
ELEMENTS = ("H", "C", "N", "O", "F")
# QM9 atomref (figshare 1057643): U(0 K), U(298.15 K), H(298.15 K), G(298.15 K) in Hartree.
ATOM_REF = {
    "H": (-0.500273, -0.498857, -0.497912, -0.510927),
    "C": (-37.846772, -37.845355, -37.844411, -37.861317),
    "N": (-54.583861, -54.582445, -54.581501, -54.598897),
    "O": (-75.064579, -75.063163, -75.062219, -75.079532),
    "F": (-99.718730, -99.717314, -99.716370, -99.733544),
}
# task -> (column, Hartree->eV?, index into ATOM_REF or None, factor to the reported unit)
TARGETS = {
    "mu": ("Dipole_debye", False, None, 1.0),
    "alpha": ("Polarizability_bohr3", False, None, 1.0),
    "homo": ("HOMO_au", True, None, 1000.0),
    "lumo": ("LUMO_au", True, None, 1000.0),
    "r2": ("R2_bohr2", False, None, 1.0),
    "zpve": ("ZPVE_au", True, None, 1000.0),
    "U0": ("InternalEnergy_0K_au", True, 0, 1000.0),
    "U": ("InternalEnergy_298K_au", True, 1, 1000.0),
    "H": ("Enthalphy_298K_au", True, 2, 1000.0),
    "G": ("GibbsFreeEnergy_298K_au", True, 3, 1000.0),
    "cv": ("Heatcapacity_Cv_cal_mol_K", False, None, 1.0),
}
TASKS = tuple(TARGETS)
REPORT_SCALE = np.array([TARGETS[t][3] for t in TASKS])
REPORT_UNITS = ("D", "a0^3", "meV", "meV", "a0^2", "meV", "meV", "meV", "meV", "meV", "cal/(mol K)")
NASH_MTL_SIZES = {"test": 10_000, "validation": 10_000}

_FIX = (
    f"put {FILE} (shared/data/README.md section 7: cut from the qm9pack 1.0.3 wheel) unchanged in "
    f"data_dir / ${ENV_DATA_DIR} or in its {SUBFOLDER}/ subfolder"
)


def _error(path, problem: str) -> DataError:
    return DataError(f"{path}: {problem}. Fix: {_FIX}.")


def find_file(data_dir: os.PathLike[str] | str | None) -> pathlib.Path:
    """The path of ``qm9_qm9pack_scalar.csv.gz`` in ``data_dir`` or ``data_dir/qm9``."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_DATA_DIR) or None
    if data_dir is None:
        raise DataError(f"QM9: no data dir (neither a data_dir argument nor ${ENV_DATA_DIR}). Fix: {_FIX}.")
    root = pathlib.Path(data_dir).expanduser()
    for folder in (root / SUBFOLDER, root):
        if (folder / FILE).is_file():
            return folder / FILE
    raise _error(root, f"no {FILE} here or in {SUBFOLDER}/")


def composition(inchi: str) -> dict[str, int]:
    """Atom counts from an InChI: its formula layer plus the mobile protons of a ``/p`` layer.

    >>> composition('InChI=1S/C5H5N2O/c6-5-3-4(8)1-2-7-5/h1-3H,(H2,6,7)/q-1/p+1')
    {'C': 5, 'H': 6, 'N': 2, 'O': 1}
    """
    layers = inchi.split("/")
    if len(layers) < 2 or not re.fullmatch(r"(?:[A-Z][a-z]?\d*)+", layers[1]):
        raise ValueError(f"no single-component formula layer in {inchi!r}")
    counts: collections.Counter = collections.Counter()
    for element, n in re.findall(r"([A-Z][a-z]?)(\d*)", layers[1]):
        counts[element] += int(n or 1)
    for layer in layers[2:]:
        if layer.startswith("p"):
            counts["H"] += int(layer[1:])
    return dict(counts)


@dataclasses.dataclass(frozen=True)
class RawQM9:
    """The parsed file, in ``Index`` order: ``index`` int [N], ``smiles`` [N] str, ``counts``
    int [N, 5] (H C N O F), ``targets`` float64 [N, 11] in the stored units of the module table."""

    index: np.ndarray
    smiles: np.ndarray
    counts: np.ndarray
    targets: np.ndarray


def parse(text: str, path: Any = FILE, expected_rows: int | None = NUM_MOLECULES) -> RawQM9:
    """Parses and checks the CSV text; errors name the file, the 1-based line and the column."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if tuple(header or ()) != HEADER:
        raise _error(path, f"line 1 is not the expected header {','.join(HEADER)}: {header}")
    columns = {name: j for j, name in enumerate(HEADER)}
    index, smiles, counts, targets = [], [], [], []
    for line, row in enumerate(reader, start=2):
        if len(row) != len(HEADER):
            raise _error(path, f"line {line} has {len(row)} fields, expected {len(HEADER)}")
        try:
            comp = composition(row[2])
        except ValueError as e:
            raise _error(path, f"line {line}, column 3 (InChi): {e}") from e
        unknown = set(comp) - set(ELEMENTS)
        if unknown or sum(comp.values()) != int(row[3]):
            raise _error(
                path,
                f"line {line}: the InChI formula gives {comp} ({sum(comp.values())} atoms), but N_atoms is "
                f"{row[3]}" + (f" and elements {sorted(unknown)} are not H, C, N, O, F" if unknown else ""),
            )
        values = []
        for task, (column, to_ev, ref, _) in TARGETS.items():
            try:
                v = float(row[columns[column]])
            except ValueError:
                v = float("nan")
            if not np.isfinite(v):
                raise _error(path, f"line {line}, column {columns[column] + 1} ({column}): {row[columns[column]]!r} is not a finite number")
            if ref is not None:
                v -= sum(n * ATOM_REF[e][ref] for e, n in comp.items())
            values.append(v * HARTREE_TO_EV if to_ev else v)
        index.append(int(row[0]))
        smiles.append(row[1])
        counts.append([comp.get(e, 0) for e in ELEMENTS])
        targets.append(values)
    if expected_rows is not None and len(index) != expected_rows:
        raise _error(path, f"{len(index)} molecules, the published file has {expected_rows}")
    if not index:
        raise _error(path, "no molecules")
    index = np.asarray(index, np.int64)
    if np.any(np.diff(index) <= 0):
        bad = int(np.flatnonzero(np.diff(index) <= 0)[0])
        raise _error(path, f"line {bad + 3}: Index {index[bad + 1]} does not increase (after {index[bad]})")
    return RawQM9(index, np.asarray(smiles, dtype=object), np.asarray(counts, np.int64), np.asarray(targets, np.float64))


def split_ids(n: int, seed: int, test_size: int = NASH_MTL_SIZES["test"], validation_size: int = NASH_MTL_SIZES["validation"]) -> dict[str, np.ndarray]:
    """Nash-MTL's cut of a seeded permutation: test first, then validation, then train."""
    if test_size + validation_size >= n:
        raise DataError(f"qm9: test_size + validation_size ({test_size} + {validation_size}) must be below {n} molecules")
    perm = np.random.default_rng(seed).permutation(n)
    return {"test": perm[:test_size], "validation": perm[test_size : test_size + validation_size], "train": perm[test_size + validation_size :]}


@dataclasses.dataclass(frozen=True)
class QM9Data:
    """Standardisation and per-split side information of a loaded QM9.

    Attributes:
      tasks: the 11 task names (column order of ``mean`` / ``std``).
      mean, std: float64 [11] train statistics in the stored units (targets are ``(y - mean) / std``).
      report_scale, report_units: factor and unit of each task in Nash-MTL's Table.
      smiles: split -> SMILES strings in the split's example order.
      index: split -> QM9 ``Index`` (gdb number) of each example.
    """

    tasks: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    report_scale: np.ndarray
    report_units: tuple[str, ...]
    smiles: dict[str, np.ndarray]
    index: dict[str, np.ndarray]


def load_qm9(
    *,
    data_dir: os.PathLike[str] | str | None = None,
    cache_dir: Any = None,
    seed: int = 0,
    verify_checksums: bool = True,
) -> MTLDataset:
    """QM9 with Nash-MTL's 11 standardised regression targets (a ``from_arrays`` dataset).

    Args:
      data_dir: raw file (argument > $JMTL_DATA_DIR).
      cache_dir: ignored (parsing the 9.5 MB file takes ~3 s; nothing is cached).
      seed: the permutation behind the 110,831 / 10,000 / 10,000 split.
      verify_checksums: check the file's published sha256 and the 130,831 molecules.

    Returns:
      An ``MTLDataset`` with input ``x`` (float32 [5] atom counts H C N O F) and one regression
      label per task (float32, standardised); ``dataset.qm9`` is the ``QM9Data``.
    """
    del cache_dir
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"qm9: seed must be a non-negative int, got {seed!r}")
    path = find_file(data_dir)
    if verify_checksums:
        fingerprint.check_family_files("qm9", {FILE: path})
    try:
        with gzip.open(path, "rt", encoding="ascii", newline="") as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise _error(path, f"cannot read ({type(e).__name__}: {e}); the file is truncated or corrupt") from e
    raw = parse(text, path, NUM_MOLECULES if verify_checksums else None)
    return dataset_from_raw(raw, seed)


def dataset_from_raw(raw: RawQM9, seed: int = 0, test_size: int = NASH_MTL_SIZES["test"],
                     validation_size: int = NASH_MTL_SIZES["validation"]) -> MTLDataset:
    """Splits, standardises on train and wraps ``raw`` (see ``load_qm9``)."""
    ids = split_ids(len(raw.index), seed, test_size, validation_size)
    train = raw.targets[ids["train"]]
    mean, std = train.mean(axis=0), train.std(axis=0)
    if np.any(std == 0):
        raise DataError(f"qm9: task(s) {[t for t, s in zip(TASKS, std) if s == 0]} are constant over train")
    splits = {}
    for split, rows in ids.items():
        z = ((raw.targets[rows] - mean) / std).astype(np.float32)
        arrays = {"x": raw.counts[rows].astype(np.float32)}
        arrays.update({t: z[:, k] for k, t in enumerate(TASKS)})
        splits[split] = arrays
    dataset = from_arrays("qm9", {s: splits[s] for s in ("train", "validation", "test")}, input_key="x",
                          labels={t: "regression" for t in TASKS})
    dataset.qm9 = QM9Data(
        tasks=TASKS, mean=mean, std=std, report_scale=REPORT_SCALE, report_units=REPORT_UNITS,
        smiles={s: raw.smiles[r] for s, r in ids.items()}, index={s: raw.index[r] for s, r in ids.items()},
    )
    return dataset
