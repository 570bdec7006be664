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

Inputs (``load_qm9(inputs=...)``): 'composition' (no extra dependency): ``x`` = the counts of
H, C, N, O, F (float32 [5]), a composition baseline. 'graph' (needs rdkit, imported only then):
molecule graphs from the SMILES with explicit hydrogens and PyG's QM9 atom / bond features
(``featurise``), cached under ``cache_dir`` keyed by the source file's sha256 (``cached_graphs``),
each molecule padded to ``MAX_NODES`` / ``MAX_EDGES`` and flattened (``pack``) so a batch of B
molecules is one fixed-size padded graph batch for ``jmtl.models.gnn.MPNN``. Nash-MTL's network
also reads 3D geometry (PyG ``T.Distance`` on a complete graph); this file has no coordinates, so
the graph model here sees the bond graph and bond types only. ``QM9Data.smiles[split]`` keeps the
SMILES of each split.

'geometry' (needs rdkit and the qm9pack wheel, ``pip install 'jmtl[qm9]'``; not the shared file):
the same molecules, targets (one conversion, ``_row_targets``) and split, read from qm9pack's CSVs,
which hold the xyz files' coordinates and elements (``load_qm9pack``; QM9's 3,054 uncharacterised
molecules are left out by Index, ``uncharacterized()``). Each molecule is PyG's graph in the xyz atom
order (``featurise_geometry``) made complete as in Nash-MTL (every ordered pair of distinct atoms;
edge features = bond one-hot, zeros when not bonded, and the interatomic distance in Angstrom,
``GeometryGraphs.complete_graph``), packed densely (``pack_geometry``) for
``jmtl.models.gnn.MPNN(geometry=True)``, and cached keyed by the package files' sha256.
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
    "Index",
    "SMILES",
    "InChi",
    "N_atoms",
    "RotA_GHz",
    "RotB_GHz",
    "RotC_GHz",
    "Dipole_debye",
    "Polarizability_bohr3",
    "HOMO_au",
    "LUMO_au",
    "HOMO_LUMO_gap_au",
    "R2_bohr2",
    "ZPVE_au",
    "InternalEnergy_0K_au",
    "InternalEnergy_298K_au",
    "Enthalphy_298K_au",
    "GibbsFreeEnergy_298K_au",
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


def _row_targets(row: list[str], columns: dict[str, int], comp: dict[str, int], error) -> list[float]:
    """The 11 targets of one CSV row in the module table's stored units (atomization energies for
    U0 / U / H / G from the atom counts ``comp``); ``error(problem)`` builds the exception."""
    values = []
    for column, to_ev, ref, _ in TARGETS.values():
        try:
            v = float(row[columns[column]])
        except ValueError:
            v = float("nan")
        if not np.isfinite(v):
            raise error(f"column {columns[column] + 1} ({column}): {row[columns[column]]!r} is not a finite number")
        if ref is not None:
            v -= sum(n * ATOM_REF[e][ref] for e, n in comp.items())
        values.append(v * HARTREE_TO_EV if to_ev else v)
    return values


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
        values = _row_targets(row, columns, comp, lambda problem: _error(path, f"line {line}, {problem}"))
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
    return RawQM9(
        index, np.asarray(smiles, dtype=object), np.asarray(counts, np.int64), np.asarray(targets, np.float64)
    )


def split_ids(
    n: int, seed: int, test_size: int = NASH_MTL_SIZES["test"], validation_size: int = NASH_MTL_SIZES["validation"]
) -> dict[str, np.ndarray]:
    """Nash-MTL's cut of a seeded permutation: test first, then validation, then train."""
    if test_size + validation_size >= n:
        raise DataError(
            f"qm9: test_size + validation_size ({test_size} + {validation_size}) must be below {n} molecules"
        )
    perm = np.random.default_rng(seed).permutation(n)
    return {
        "test": perm[:test_size],
        "validation": perm[test_size : test_size + validation_size],
        "train": perm[test_size + validation_size :],
    }


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
    inputs: str = "composition",
    train_size: int | None = None,
    eval_size: int | None = None,
    package_dir: os.PathLike[str] | str | None = None,
) -> MTLDataset:
    """QM9 with Nash-MTL's 11 standardised regression targets (a ``from_arrays`` dataset).

    Args:
      data_dir: raw file (argument > $JMTL_DATA_DIR).
      cache_dir: where the molecule graphs of ``inputs='graph'`` are cached (``cached_graphs``);
        None = featurise on every load (~15 s for the whole file). Unused for 'composition'.
      seed: the permutation behind the 110,831 / 10,000 / 10,000 split.
      verify_checksums: check the file's published sha256 and the 130,831 molecules.
      inputs: 'composition' (default): ``x`` = float32 [5] atom counts H C N O F; 'graph': ``x`` =
        the molecule graph in ``pack`` 's layout (float32 [``packed_size()``]; needs rdkit), the
        input of ``jmtl.models.gnn.MPNN``.
      train_size: None or 0 = the whole 110,831-molecule train split; n = its first n molecules (a
        subset for quick runs; the standardisation stays that of the whole train split).
      eval_size: None or 0 = the whole validation and test splits; n = the first n of each.
      package_dir: for inputs='geometry': the qm9pack package folder (argument >
        $JMTL_QM9PACK_DIR > the installed ``qm9pack``); the other inputs read ``data_dir``.

    'geometry' (needs rdkit and the qm9pack data: ``pip install 'jmtl[qm9]'``): the molecules,
    targets and split of the other inputs, read from qm9pack's CSVs (which hold the xyz files'
    coordinates), as PyG's QM9 with Nash-MTL's ``Complete()`` and ``T.Distance(norm=False)``: ``x`` =
    ``pack_geometry`` 's layout (float32 [``geometry_packed_size()``]), a complete graph whose edge
    features are the bond one-hot and the interatomic distance (``GeometryGraphs.complete_graph``),
    the input of ``jmtl.models.gnn.MPNN(geometry=True)``. Cached under ``cache_dir`` keyed by the
    package files' sha256 (``cached_geometry``).

    Returns:
      An ``MTLDataset`` with input ``x`` and one regression label per task (float32,
      standardised); ``dataset.qm9`` is the ``QM9Data``.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"qm9: seed must be a non-negative int, got {seed!r}")
    if inputs not in INPUTS:
        raise DataError(f"qm9: inputs={inputs!r}; valid: {', '.join(INPUTS)}")
    if inputs == "geometry":
        raw, atoms, parts = load_qm9pack(package_dir, verify_checksums)
        graphs = cached_geometry(raw, atoms, parts, cache_dir) if cache_dir is not None else None
        return dataset_from_raw(
            raw, seed, inputs=inputs, graphs=graphs, atoms=atoms, train_size=train_size, eval_size=eval_size
        )
    path = find_file(data_dir)
    if verify_checksums:
        fingerprint.check_family_files("qm9", {FILE: path})
    try:
        with gzip.open(path, "rt", encoding="ascii", newline="") as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise _error(path, f"cannot read ({type(e).__name__}: {e}); the file is truncated or corrupt") from e
    raw = parse(text, path, NUM_MOLECULES if verify_checksums else None)
    graphs = None
    if inputs == "graph" and cache_dir is not None:
        graphs = cached_graphs(raw, path, cache_dir)
    return dataset_from_raw(raw, seed, inputs=inputs, graphs=graphs, train_size=train_size, eval_size=eval_size)


INPUTS = ("composition", "graph", "geometry")


def dataset_from_raw(
    raw: RawQM9,
    seed: int = 0,
    test_size: int = NASH_MTL_SIZES["test"],
    validation_size: int = NASH_MTL_SIZES["validation"],
    *,
    inputs: str = "composition",
    graphs: "MoleculeGraphs | None" = None,
    train_size: int | None = None,
    eval_size: int | None = None,
    atoms: "Atoms | None" = None,
) -> MTLDataset:
    """Splits, standardises on train and wraps ``raw`` (see ``load_qm9``).

    ``graphs``: ``featurise(raw.smiles)`` of every molecule (e.g. from the cache) for
    ``inputs='graph'`` (``featurise_geometry`` for 'geometry'); None = featurise the molecules of the
    splits here ('geometry' then needs ``atoms``, the xyz atoms of ``raw`` 's molecules).
    """
    if inputs not in INPUTS:
        raise DataError(f"qm9: inputs={inputs!r}; valid: {', '.join(INPUTS)}")
    for name, size in (("train_size", train_size), ("eval_size", eval_size)):
        if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 0):
            raise DataError(f"qm9: {name} must be None, 0 (whole split) or a positive int, got {size!r}")
    if graphs is not None and len(graphs) != len(raw.index):
        raise DataError(f"qm9: {len(graphs)} graphs for {len(raw.index)} molecules")
    if inputs == "geometry" and not isinstance(graphs, GeometryGraphs) and atoms is None:
        raise DataError("qm9: inputs='geometry' needs the molecules' atoms (atoms=) or their GeometryGraphs (graphs=)")
    ids = split_ids(len(raw.index), seed, test_size, validation_size)
    train = raw.targets[ids["train"]]
    mean, std = train.mean(axis=0), train.std(axis=0)
    if np.any(std == 0):
        raise DataError(f"qm9: task(s) {[t for t, s in zip(TASKS, std) if s == 0]} are constant over train")
    # Subsets: a prefix of each split of the full permutation (the split itself does not move).
    ids = {s: r[: ((train_size if s == "train" else eval_size) or None)] for s, r in ids.items()}
    splits = {}
    for split, rows in ids.items():
        z = ((raw.targets[rows] - mean) / std).astype(np.float32)
        if inputs == "graph":
            split_graphs = graphs.take(rows) if graphs is not None else featurise(raw.smiles[rows], raw.counts[rows])
            arrays = {"x": pack(split_graphs)}
        elif inputs == "geometry":
            split_graphs = (
                graphs.take(rows)
                if isinstance(graphs, GeometryGraphs)
                else featurise_geometry(raw.smiles[rows], raw.counts[rows], atoms.take(rows))
            )
            arrays = {"x": pack_geometry(split_graphs)}
        else:
            arrays = {"x": raw.counts[rows].astype(np.float32)}
        arrays.update({t: z[:, k] for k, t in enumerate(TASKS)})
        splits[split] = arrays
    dataset = from_arrays(
        "qm9",
        {s: splits[s] for s in ("train", "validation", "test")},
        input_key="x",
        labels={t: "regression" for t in TASKS},
    )
    dataset.qm9 = QM9Data(
        tasks=TASKS,
        mean=mean,
        std=std,
        report_scale=REPORT_SCALE,
        report_units=REPORT_UNITS,
        smiles={s: raw.smiles[r] for s, r in ids.items()},
        index={s: raw.index[r] for s, r in ids.items()},
    )
    # Stored (standardised) units -> the papers' units, per task: what the trainer reads a
    # selection_reference in (Nash-MTL's STL MAEs).
    dataset.metric_scale = {t: float(std[k] * REPORT_SCALE[k]) for k, t in enumerate(TASKS)}
    return dataset


# ---------------------------------------------------------------------------- molecule graphs

# PyTorch Geometric's QM9 featurisation (torch_geometric/datasets/qm9.py, ``process``): per atom the
# element one-hot, the atomic number, aromaticity, sp / sp2 / sp3 one-hot and the number of bonded
# H atoms; per bond a single / double / triple / aromatic one-hot, both directions. H atoms are
# nodes (explicit hydrogens, as PyG's QM9 built from the SDF files). PyG reads rdkit molecules
# from the 3D SDF files; here they come from the SMILES (``Chem.AddHs(MolFromSmiles(s))``), so
# aromaticity and hybridisation are rdkit's perception from the SMILES, and there is no distance.
NODE_FEATURES = ELEMENTS + ("atomic_number", "aromatic", "sp", "sp2", "sp3", "num_hs")
BOND_TYPES = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")
MAX_NODES = 29  # QM9's largest molecules have 29 atoms with hydrogens
MAX_EDGES = 56  # directed edges: QM9's most bonded molecules (with H) have 28 bonds
# A new number = a new cache (the featurisation changed).
FEATURISER_VERSION = "1"
GRAPH_CACHE_FOLDER = "qm9_graphs"
GRAPH_CACHE_FILE = "graphs.npz"
RDKIT_REQUIREMENT = "rdkit>=2026.9.1"


def _rdkit():
    """rdkit's ``Chem`` and its version; imported only when graphs are built."""
    try:
        from rdkit import Chem, RDLogger, rdBase
    except ImportError as e:
        raise ImportError(
            f"QM9 molecule graphs (inputs='graph') need rdkit, which is not installed ({e}). Fix: "
            f"pip install '{RDKIT_REQUIREMENT}' (the 'graphs' extra: pip install 'jmtl[graphs]'), or use "
            "inputs='composition', which needs no rdkit."
        ) from None
    RDLogger.DisableLog("rdApp.*")  # per-molecule warnings; failures raise DataError below
    return Chem, rdBase.rdkitVersion


@dataclasses.dataclass(frozen=True)
class MoleculeGraphs:
    """Molecule graphs, concatenated (CSR): molecule ``i`` owns nodes
    ``node_offsets[i]:node_offsets[i+1]`` and edges ``edge_offsets[i]:edge_offsets[i+1]``.

    Attributes:
      node_offsets, edge_offsets: int64 [M + 1].
      nodes: int8 [total nodes, 11], ``NODE_FEATURES`` (all small integers).
      senders, receivers: int8 [total edges], node numbers local to the molecule; each bond gives
        both directions, sorted by (sender, receiver) as PyG's ``edge_index``.
      bonds: int8 [total edges], index into ``BOND_TYPES``.
    """

    node_offsets: np.ndarray
    nodes: np.ndarray
    edge_offsets: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    bonds: np.ndarray

    def __len__(self) -> int:
        return len(self.node_offsets) - 1

    def graph(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Molecule ``i`` as (nodes float32 [n, 11], edge features float32 [e, 4] one-hot,
        senders int32 [e], receivers int32 [e])."""
        n0, n1 = self.node_offsets[i], self.node_offsets[i + 1]
        e0, e1 = self.edge_offsets[i], self.edge_offsets[i + 1]
        edges = np.eye(len(BOND_TYPES), dtype=np.float32)[self.bonds[e0:e1]]
        return (
            self.nodes[n0:n1].astype(np.float32),
            edges,
            self.senders[e0:e1].astype(np.int32),
            self.receivers[e0:e1].astype(np.int32),
        )

    def take(self, rows: np.ndarray) -> "MoleculeGraphs":
        """The graphs of molecules ``rows``, in that order."""
        rows = np.asarray(rows, np.int64)
        n_len, e_len = np.diff(self.node_offsets)[rows], np.diff(self.edge_offsets)[rows]
        node_idx = _ranges(self.node_offsets[rows], n_len)
        edge_idx = _ranges(self.edge_offsets[rows], e_len)
        return MoleculeGraphs(
            np.concatenate([[0], np.cumsum(n_len)]),
            self.nodes[node_idx],
            np.concatenate([[0], np.cumsum(e_len)]),
            self.senders[edge_idx],
            self.receivers[edge_idx],
            self.bonds[edge_idx],
        )


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for each (s, l)."""
    if len(starts) == 0:
        return np.zeros(0, np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(int(lengths.sum())) + offsets


def featurise(smiles: Any, counts: np.ndarray | None = None) -> MoleculeGraphs:
    """PyG-QM9-style graphs of SMILES strings (explicit hydrogens; see ``NODE_FEATURES``).

    Args:
      smiles: sequence of SMILES strings.
      counts: optional int [M, 5] atom counts (H C N O F, e.g. ``RawQM9.counts`` from the InChI);
        each graph's element counts must equal them (a SMILES / InChI disagreement is an error).

    Raises:
      DataError: a SMILES rdkit cannot parse, an element outside H C N O F, a bond type outside
        ``BOND_TYPES``, more than ``MAX_NODES`` atoms or ``MAX_EDGES`` directed edges, or counts
        that differ from ``counts``.
      ImportError: rdkit is not installed (the message names the package to install).
    """
    Chem, _ = _rdkit()
    element_index = {e: k for k, e in enumerate(ELEMENTS)}
    bond_index = {getattr(Chem.BondType, b): k for k, b in enumerate(BOND_TYPES)}
    hybrid_index = {Chem.HybridizationType.SP: 7, Chem.HybridizationType.SP2: 8, Chem.HybridizationType.SP3: 9}
    node_len, edge_len, nodes, senders, receivers, bonds = [], [], [], [], [], []
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            raise DataError(f"qm9 graphs: molecule {i}: rdkit cannot parse the SMILES {s!r}")
        mol = Chem.AddHs(mol)
        n = mol.GetNumAtoms()
        if n > MAX_NODES:
            raise DataError(
                f"qm9 graphs: molecule {i} ({s!r}) has {n} atoms with hydrogens, above MAX_NODES={MAX_NODES}"
            )
        x = np.zeros((n, len(NODE_FEATURES)), np.int8)
        for atom in mol.GetAtoms():
            k, symbol = atom.GetIdx(), atom.GetSymbol()
            if symbol not in element_index:
                raise DataError(f"qm9 graphs: molecule {i} ({s!r}) has element {symbol}, not one of {ELEMENTS}")
            x[k, element_index[symbol]] = 1
            x[k, 5] = atom.GetAtomicNum()
            x[k, 6] = atom.GetIsAromatic()
            if atom.GetHybridization() in hybrid_index:
                x[k, hybrid_index[atom.GetHybridization()]] = 1
            x[k, 10] = sum(nb.GetAtomicNum() == 1 for nb in atom.GetNeighbors())
        if counts is not None and not np.array_equal(x[:, :5].sum(0), counts[i]):
            raise DataError(
                f"qm9 graphs: molecule {i}: the SMILES {s!r} gives atom counts {x[:, :5].sum(0).tolist()} (H C N O F), "
                f"the InChI {np.asarray(counts[i]).tolist()}"
            )
        edges = []
        for bond in mol.GetBonds():
            if bond.GetBondType() not in bond_index:
                raise DataError(
                    f"qm9 graphs: molecule {i} ({s!r}) has a {bond.GetBondType()} bond, not one of {BOND_TYPES}"
                )
            a, b, t = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), bond_index[bond.GetBondType()]
            edges += [(a, b, t), (b, a, t)]
        if len(edges) > MAX_EDGES:
            raise DataError(
                f"qm9 graphs: molecule {i} ({s!r}) has {len(edges)} directed edges, above MAX_EDGES={MAX_EDGES}"
            )
        edges.sort()
        e = np.asarray(edges, np.int8).reshape(-1, 3)
        node_len.append(n)
        edge_len.append(len(e))
        nodes.append(x)
        senders.append(e[:, 0])
        receivers.append(e[:, 1])
        bonds.append(e[:, 2])
    cat = lambda parts, shape: np.concatenate(parts) if parts else np.zeros(shape, np.int8)
    return MoleculeGraphs(
        np.concatenate([[0], np.cumsum(node_len, dtype=np.int64)]),
        cat(nodes, (0, len(NODE_FEATURES))),
        np.concatenate([[0], np.cumsum(edge_len, dtype=np.int64)]),
        cat(senders, (0,)),
        cat(receivers, (0,)),
        cat(bonds, (0,)),
    )


def cached_graphs(raw: RawQM9, path: os.PathLike[str] | str, cache_dir: os.PathLike[str] | str) -> MoleculeGraphs:
    """``featurise(raw.smiles, raw.counts)``, cached under ``cache_dir``, tied to the source bytes.

    The folder ``<cache_dir>/qm9_graphs/<key>`` is keyed by ``fingerprint.source_fingerprint`` of
    (the featuriser version, the rdkit version, the raw file's name / size / sha256), so other
    source bytes or another featuriser never read it; ``jmtl.data.cache`` records the cache file's
    size and sha256 and a folder that no longer matches its record is moved aside and rebuilt.

    Args:
      raw: the parsed file at ``path``.
      path: the raw file ``raw`` was parsed from (its bytes key the cache).
      cache_dir: the cache root.
    """
    from jmtl.data import cache as cache_lib  # tensorflow_datasets import: only when caching

    _, rdkit_version = _rdkit()
    digest = fingerprint.digest_file(path)
    key = fingerprint.source_fingerprint(GRAPH_CACHE_FOLDER, f"{FEATURISER_VERSION}/rdkit{rdkit_version}", [digest])
    root = pathlib.Path(cache_dir).expanduser()
    folder = root / GRAPH_CACHE_FOLDER / key
    if folder.is_dir():
        problem = cache_lib.damage(folder, key)
        if problem is None:
            with np.load(folder / GRAPH_CACHE_FILE) as z:
                graphs = MoleculeGraphs(**{f.name: z[f.name] for f in dataclasses.fields(MoleculeGraphs)})
            if len(graphs) == len(raw.index):
                return graphs
            problem = f"it holds {len(graphs)} graphs, the file {len(raw.index)} molecules"
        moved = cache_lib.move_aside(folder, os.fspath(root))
        print(f"jmtl: qm9 graph cache {folder} cannot be used ({problem}); moved to {moved}, rebuilding", flush=True)
    graphs = featurise(raw.smiles, raw.counts)
    tmp = root / GRAPH_CACHE_FOLDER / f".{key}.tmp"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    np.savez(tmp / GRAPH_CACHE_FILE, **dataclasses.asdict(graphs))
    cache_lib.write_record(tmp, fingerprint=key, sources=[digest])
    os.replace(tmp, folder)
    return graphs


def packed_size(max_nodes: int = MAX_NODES, max_edges: int = MAX_EDGES) -> int:
    """Floats per molecule in ``pack`` 's layout (see ``jmtl.models.gnn.unpack``)."""
    return max_nodes * (1 + len(NODE_FEATURES)) + max_edges * (3 + len(BOND_TYPES))


def pack(graphs: MoleculeGraphs, max_nodes: int = MAX_NODES, max_edges: int = MAX_EDGES) -> np.ndarray:
    """Each molecule padded to ``max_nodes`` / ``max_edges`` and flattened: float32 [M, packed_size].

    Layout per molecule (``jmtl.models.gnn.unpack`` reads it): node mask [max_nodes], node
    features [max_nodes, 11], edge mask [max_edges], senders [max_edges], receivers [max_edges]
    (local node numbers, exact in float32), edge features [max_edges, 4]. One array per example
    keeps QM9 an ordinary ``from_arrays`` dataset (shuffling, batching, resume as every other);
    a batch of B molecules is then a padded graph batch of B * max_nodes nodes and B * max_edges
    edges, one compiled step.
    """
    m, f, fe = len(graphs), len(NODE_FEATURES), len(BOND_TYPES)
    n_len, e_len = np.diff(graphs.node_offsets), np.diff(graphs.edge_offsets)
    if m and (n_len.max() > max_nodes or e_len.max() > max_edges):
        raise DataError(
            f"qm9 graphs: a molecule has {n_len.max()} nodes / {e_len.max()} edges, above the budget "
            f"max_nodes={max_nodes} / max_edges={max_edges}"
        )
    node_slot = np.arange(len(graphs.nodes)) - np.repeat(graphs.node_offsets[:-1], n_len)
    edge_slot = np.arange(len(graphs.bonds)) - np.repeat(graphs.edge_offsets[:-1], e_len)
    node_mol, edge_mol = np.repeat(np.arange(m), n_len), np.repeat(np.arange(m), e_len)
    node_mask = np.zeros((m, max_nodes), np.float32)
    nodes = np.zeros((m, max_nodes, f), np.float32)
    edge_mask = np.zeros((m, max_edges), np.float32)
    senders = np.zeros((m, max_edges), np.float32)
    receivers = np.zeros((m, max_edges), np.float32)
    edges = np.zeros((m, max_edges, fe), np.float32)
    node_mask[node_mol, node_slot] = 1
    nodes[node_mol, node_slot] = graphs.nodes
    edge_mask[edge_mol, edge_slot] = 1
    senders[edge_mol, edge_slot] = graphs.senders
    receivers[edge_mol, edge_slot] = graphs.receivers
    edges[edge_mol, edge_slot, graphs.bonds.astype(np.int64)] = 1
    return np.concatenate(
        [node_mask, nodes.reshape(m, -1), edge_mask, senders, receivers, edges.reshape(m, -1)], axis=1
    )


# ---------------------------------------------------------------------------- 3-D geometry (qm9pack)

# The qm9pack wheel (PyPI, by QM9's first author; ~100 MB) ships every molecule's row of the
# original xyz files as CSV: its package folder holds data/qm9_part{1,2,3}.csv (one header line, then
# one molecule per line in Index order; the per-atom columns are Python-literal lists as text).
QM9PACK_REQUIREMENT = "qm9pack==1.0.3"
ENV_QM9PACK_DIR = "JMTL_QM9PACK_DIR"
QM9PACK_PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
QM9PACK_HEADER = (
    "XYZ_file",
    "Index",
    "SMILES",
    "InChi",
    "N_atoms",
    "Stoichiometry",
    "Elements",
    "XYZ_Ang",
    "Mulliken_pop",
    "Harmonic_Freq_cmi",
) + HEADER[4:]
# The 3,054 molecules of QM9's ``uncharacterized.txt`` (figshare 978904; the relaxed geometry fails
# the consistency check against the GDB SMILES), which PyTorch Geometric's QM9 skips. The file is the
# complement, in 1..133,885, of the Index column of the shared qm9_qm9pack_scalar.csv.gz, which
# shared/data/README.md section 7 checked to equal the official list.
UNCHARACTERIZED_FILE = pathlib.Path(__file__).with_name("qm9_uncharacterized.txt.gz")
NUM_UNCHARACTERIZED = 3054
# qm9pack 1.0.3's parts (bytes, sha256), as in the wheel's RECORD; checked when verify_checksums.
QM9PACK_FILES = {
    "qm9_part1.csv": (69_693_764, "19f0a5d595462d52cd82eef3370f3e9eb55a1f52cb14985657200349568deff3"),
    "qm9_part2.csv": (76_868_612, "2bca113fdc0b28a13563c80ed9b240e934f3da6c64c64fe74ddb4f0f36036e61"),
    "qm9_part3.csv": (79_083_002, "9c5efb5733d2af149db8d95d36ff198b4ffed12d9f7b344220a1e5877d5c6a43"),
}

_QM9PACK_FIX = (
    f"pip install 'jmtl[qm9]' (the wheel {QM9PACK_REQUIREMENT}, ~100 MB), or pass package_dir= / set "
    f"${ENV_QM9PACK_DIR} to a folder holding data/{QM9PACK_PARTS[0]} ... {QM9PACK_PARTS[-1]}"
)


def uncharacterized() -> frozenset[int]:
    """The Index of each of QM9's 3,054 uncharacterised molecules (left out, as PyG's QM9 does)."""
    with gzip.open(UNCHARACTERIZED_FILE, "rt", encoding="ascii") as f:
        ids = frozenset(int(v) for v in f.read().split())
    if len(ids) != NUM_UNCHARACTERIZED:  # the package data file is damaged
        raise DataError(f"{UNCHARACTERIZED_FILE}: {len(ids)} ids, expected {NUM_UNCHARACTERIZED}. Fix: reinstall jmtl")
    return ids


def find_qm9pack(package_dir: os.PathLike[str] | str | None = None) -> list[pathlib.Path]:
    """The three CSV parts of the qm9pack package: ``package_dir`` > ``$JMTL_QM9PACK_DIR`` > the
    installed ``qm9pack`` (found without importing it: its import pulls in pandas).

    Raises:
      DataError: no package, or a folder without the parts; the message names the install command.
    """
    import importlib.util

    if package_dir is None:
        package_dir = os.environ.get(ENV_QM9PACK_DIR) or None
    if package_dir is None:
        spec = importlib.util.find_spec("qm9pack")
        if spec is None or not spec.submodule_search_locations:
            raise DataError(
                "QM9 with 3-D geometry (inputs='geometry') reads the qm9pack package's data, and qm9pack is not "
                f"installed. Fix: {_QM9PACK_FIX}"
            )
        package_dir = list(spec.submodule_search_locations)[0]
    root = pathlib.Path(package_dir).expanduser()
    parts = [root / "data" / name for name in QM9PACK_PARTS]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise DataError(f"qm9pack folder {root}: no data/{', data/'.join(missing)}. Fix: {_QM9PACK_FIX}")
    return parts


@dataclasses.dataclass(frozen=True)
class Atoms:
    """Each molecule's atoms in the xyz file's order (CSR): molecule ``i`` owns
    ``offsets[i]:offsets[i+1]``; ``elements`` int8 index into ``ELEMENTS``; ``positions`` float64
    [total, 3] in Angstrom (as PyG's ``pos``)."""

    offsets: np.ndarray
    elements: np.ndarray
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def take(self, rows: np.ndarray) -> "Atoms":
        rows = np.asarray(rows, np.int64)
        lengths = np.diff(self.offsets)[rows]
        idx = _ranges(self.offsets[rows], lengths)
        return Atoms(np.concatenate([[0], np.cumsum(lengths)]), self.elements[idx], self.positions[idx])


def _floats(text: str) -> list[float]:
    """The numbers of a nested Python list literal such as ``[[0.5,0.,1.],[-0.5,0.,1.]]``."""
    return [float(v) for v in text.replace("[", "").replace("]", "").split(",") if v]


def parse_qm9pack(
    parts: list[tuple[Any, str]], expected_rows: int | None = NUM_MOLECULES, drop: frozenset[int] | None = None
) -> tuple[RawQM9, Atoms]:
    """Parses qm9pack's CSV parts (in order) into the scalar table and the atoms, without the
    uncharacterised molecules.

    Args:
      parts: ``(path, text)`` of each part (the path names the file in errors).
      expected_rows: the molecules left after the filter (None: no check).
      drop: the Index values to leave out; None = ``uncharacterized()``.

    Raises:
      DataError: naming the file, the 1-based line and the column, for a header that is not
        qm9pack's, a row of the wrong length, an element / position / count that disagrees with the
        InChI formula or ``N_atoms``, a non-finite target, or Index not increasing over the parts.
    """
    import sys

    drop = uncharacterized() if drop is None else drop
    columns = {name: j for j, name in enumerate(QM9PACK_HEADER)}
    index, smiles, counts, targets = [], [], [], []
    lengths, elements, positions = [], [], []
    element_index = {e: k for k, e in enumerate(ELEMENTS)}
    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))  # per-atom lists
    for path, text in parts:
        err = lambda problem: DataError(f"{path}: {problem}. Fix: {_QM9PACK_FIX}")
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if tuple(header or ()) != QM9PACK_HEADER:
            raise err(f"line 1 is not qm9pack's header {','.join(QM9PACK_HEADER)}: {header}")
        for line, row in enumerate(reader, start=2):
            if len(row) != len(QM9PACK_HEADER):
                raise err(f"line {line} has {len(row)} fields, expected {len(QM9PACK_HEADER)}")
            try:
                i = int(row[1])
            except ValueError:
                raise err(f"line {line}, column 2 (Index): {row[1]!r} is not an integer") from None
            if i in drop:
                continue
            try:
                comp = composition(row[3])
            except ValueError as e:
                raise err(f"line {line}, column 4 (InChi): {e}") from e
            symbols = re.findall(r"[A-Za-z]+", row[6])
            xyz = _floats(row[7])
            n = int(row[4])
            if (
                sorted(collections.Counter(symbols).items()) != sorted(comp.items())
                or len(symbols) != n
                or len(xyz) != 3 * n
                or set(symbols) - set(ELEMENTS)
            ):
                raise err(
                    f"line {line} (Index {i}): N_atoms {n}, Elements {symbols} and {len(xyz)} coordinates do not "
                    f"agree with the InChI formula {comp} (H C N O F only, 3 coordinates per atom)"
                )
            pos = np.asarray(xyz, np.float64).reshape(n, 3)
            if not np.all(np.isfinite(pos)):
                raise err(f"line {line} (Index {i}), column 8 (XYZ_Ang): a coordinate is not finite")
            values = _row_targets(row, columns, comp, lambda problem: err(f"line {line}, {problem}"))
            index.append(i)
            smiles.append(row[2])
            counts.append([comp.get(e, 0) for e in ELEMENTS])
            targets.append(values)
            lengths.append(n)
            elements.append([element_index[e] for e in symbols])
            positions.append(pos)
    where = parts[-1][0] if parts else "qm9pack"
    if not index:
        raise DataError(f"{where}: no molecules. Fix: {_QM9PACK_FIX}")
    index_arr = np.asarray(index, np.int64)
    if np.any(np.diff(index_arr) <= 0):
        bad = int(np.flatnonzero(np.diff(index_arr) <= 0)[0])
        raise DataError(
            f"qm9pack: Index {index_arr[bad + 1]} follows {index_arr[bad]} (parts out of order or a duplicate). "
            f"Fix: {_QM9PACK_FIX}"
        )
    if expected_rows is not None and len(index) != expected_rows:
        raise DataError(
            f"qm9pack: {len(index)} molecules after leaving out the uncharacterised ones, expected {expected_rows}. "
            f"Fix: {_QM9PACK_FIX}"
        )
    raw = RawQM9(
        index_arr, np.asarray(smiles, dtype=object), np.asarray(counts, np.int64), np.asarray(targets, np.float64)
    )
    atoms = Atoms(
        np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]),
        np.concatenate([np.asarray(e, np.int8) for e in elements]),
        np.concatenate(positions),
    )
    return raw, atoms


# Covalent radii (Angstrom; Cordero et al., Dalton Trans. 2008) for the bonds of the xyz geometry,
# used only to put the SMILES' atoms in the xyz order: a pair is in contact within tolerance x their
# sum. 1.3 first; 1.5 for the strained cages whose relaxed geometry stretches a SMILES bond (Index
# 133857, CC1C2C3C4=CCC13C24, has two C-C "bonds" of 2.12 and 2.19 A; the only one in QM9 that needs it).
COVALENT_RADIUS = {"H": 0.31, "C": 0.76, "N": 0.71, "O": 0.66, "F": 0.57}
BOND_TOLERANCES = (1.3, 1.5)


@dataclasses.dataclass(frozen=True)
class GeometryGraphs(MoleculeGraphs):
    """``MoleculeGraphs`` in the xyz files' atom order, plus ``positions`` float32 [total nodes, 3]
    (Angstrom): PyG's QM9 ``Data`` (x, edge_index, edge_attr, pos) of each molecule."""

    positions: np.ndarray = None  # type: ignore[assignment]  (required: set by every constructor)

    def take(self, rows: np.ndarray) -> "GeometryGraphs":
        rows = np.asarray(rows, np.int64)
        base = MoleculeGraphs.take(self, rows)
        n_len = np.diff(self.node_offsets)[rows]
        pos = self.positions[_ranges(self.node_offsets[rows], n_len)]
        return GeometryGraphs(
            **{f.name: getattr(base, f.name) for f in dataclasses.fields(MoleculeGraphs)}, positions=pos
        )

    def complete_graph(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Molecule ``i`` as Nash-MTL feeds it to the network (its ``Complete()`` then PyG's
        ``T.Distance(norm=False)``): every ordered pair of distinct atoms is an edge, sender-major
        (``(0,1), (0,2), ..., (1,0), ...``); edge features [n (n - 1), 5] = the bond one-hot (zeros
        for a non-bonded pair) and the Euclidean distance |pos_s - pos_r| in Angstrom.

        Returns:
          (nodes float32 [n, 11], edge features float32 [n (n - 1), 5], senders, receivers int32).
        """
        nodes, bond_edges, s, r = self.graph(i)
        n = len(nodes)
        pos = self.positions[self.node_offsets[i] : self.node_offsets[i + 1]].astype(np.float64)
        bonds = np.zeros((n, n, len(BOND_TYPES)), np.float32)
        bonds[s, r] = bond_edges
        send, recv = np.nonzero(~np.eye(n, dtype=bool))
        dist = np.sqrt(((pos[send] - pos[recv]) ** 2).sum(-1))
        edges = np.concatenate([bonds[send, recv], dist[:, None].astype(np.float32)], axis=1)
        return nodes, edges, send.astype(np.int32), recv.astype(np.int32)


def xyz_order(mol, symbols: list[str], positions: np.ndarray) -> np.ndarray | None:
    """``_xyz_order`` at the first of ``BOND_TOLERANCES`` that gives a match (None: none does)."""
    for tolerance in BOND_TOLERANCES:
        order = _xyz_order(mol, symbols, positions, tolerance)
        if order is not None:
            return order
    return None


def _xyz_order(mol, symbols: list[str], positions: np.ndarray, tolerance: float) -> np.ndarray | None:
    """``order[k]`` = the xyz atom of the rdkit molecule's atom ``k`` (None: no match).

    The SMILES' explicit-H molecule and the xyz geometry list the same atoms, but not always in the
    same order (0.4 % of QM9 differ). The identity is kept when the elements agree and every SMILES
    bond is a covalent contact of the geometry; otherwise the bond graph is embedded (rdkit
    substructure match over all atoms, bond orders ignored) into the geometry's contact graph. A
    contact graph may have more edges than bonds (the bridgeheads of bicyclo[1.1.1]pentane are
    1.9 A apart), so an embedding, not an isomorphism, is asked for.
    """
    from rdkit import Chem

    n = mol.GetNumAtoms()
    if n != len(symbols):
        return None
    radius = np.array([COVALENT_RADIUS[e] for e in symbols])
    dist = np.sqrt(((positions[:, None] - positions[None]) ** 2).sum(-1))
    contact = (dist < tolerance * (radius[:, None] + radius[None])) & ~np.eye(n, dtype=bool)
    pairs = [(b.GetBeginAtomIdx(), b.GetEndAtomIdx()) for b in mol.GetBonds()]
    if [a.GetSymbol() for a in mol.GetAtoms()] == symbols and all(contact[a, b] for a, b in pairs):
        return np.arange(n)
    # Both graphs with plain single bonds and no aromaticity: match on elements and connectivity.
    target = Chem.RWMol()
    for e in symbols:
        target.AddAtom(Chem.Atom(e))
    for a, b in zip(*np.nonzero(np.triu(contact))):
        target.AddBond(int(a), int(b), Chem.BondType.SINGLE)
    query = Chem.RWMol()
    for atom in mol.GetAtoms():
        query.AddAtom(Chem.Atom(atom.GetSymbol()))
    for a, b in pairs:
        query.AddBond(a, b, Chem.BondType.SINGLE)
    for m in (target, query):
        m.UpdatePropertyCache(strict=False)
        Chem.FastFindRings(m)
    match = target.GetSubstructMatch(query)
    return np.asarray(match, np.int64) if len(match) == n else None


def featurise_geometry(smiles: Any, counts: np.ndarray, atoms: Atoms) -> GeometryGraphs:
    """PyG-QM9 graphs in the xyz atom order, with positions.

    Node and bond features are ``featurise`` 's (rdkit's perception of the SMILES with explicit H);
    the atoms are renumbered to the xyz order (``xyz_order``), the order of PyG's SDF-built graphs,
    and each node carries its xyz position.

    Raises:
      DataError: a molecule whose SMILES bond graph does not match its geometry's covalent contacts.
    """
    base = featurise(smiles, counts)
    Chem, _ = _rdkit()
    nodes, senders, receivers, bonds, positions = [], [], [], [], []
    edge_len = []
    for i, s in enumerate(smiles):
        mol = Chem.AddHs(Chem.MolFromSmiles(s))
        a0, a1 = atoms.offsets[i], atoms.offsets[i + 1]
        symbols = [ELEMENTS[e] for e in atoms.elements[a0:a1]]
        pos = atoms.positions[a0:a1]
        order = xyz_order(mol, symbols, pos)
        if order is None:
            raise DataError(
                f"qm9 geometry: molecule {i} ({s!r}): its SMILES bond graph does not match the covalent contacts of "
                f"its xyz geometry ({symbols})"
            )
        n0, e0, e1 = base.node_offsets[i], base.edge_offsets[i], base.edge_offsets[i + 1]
        x = np.zeros_like(base.nodes[n0 : n0 + len(order)])
        x[order] = base.nodes[n0 : n0 + len(order)]
        edges = sorted(
            zip(order[base.senders[e0:e1]].tolist(), order[base.receivers[e0:e1]].tolist(), base.bonds[e0:e1].tolist())
        )
        e = np.asarray(edges, np.int8).reshape(-1, 3)
        nodes.append(x)
        senders.append(e[:, 0])
        receivers.append(e[:, 1])
        bonds.append(e[:, 2])
        positions.append(pos.astype(np.float32))
        edge_len.append(len(e))
    return GeometryGraphs(
        base.node_offsets,
        np.concatenate(nodes),
        np.concatenate([[0], np.cumsum(edge_len, dtype=np.int64)]),
        np.concatenate(senders),
        np.concatenate(receivers),
        np.concatenate(bonds),
        positions=np.concatenate(positions),
    )


GEOMETRY_VERSION = "1"  # a new number = a new cache
GEOMETRY_CACHE_FOLDER = "qm9_geometry"


def cached_geometry(
    raw: RawQM9, atoms: Atoms, parts: list[pathlib.Path], cache_dir: os.PathLike[str] | str
) -> GeometryGraphs:
    """``featurise_geometry``, cached under ``<cache_dir>/qm9_geometry/<key>``, the key the
    fingerprint of (the featuriser versions, rdkit's version, each qm9pack part's name / size /
    sha256): other package files never read a cache built from these, and a folder that no longer
    matches its record (``jmtl.data.cache``) is moved aside and rebuilt."""
    from jmtl.data import cache as cache_lib

    _, rdkit_version = _rdkit()
    digests = [fingerprint.digest_file(p) for p in parts]
    key = fingerprint.source_fingerprint(
        GEOMETRY_CACHE_FOLDER, f"{GEOMETRY_VERSION}/{FEATURISER_VERSION}/rdkit{rdkit_version}", digests
    )
    root = pathlib.Path(cache_dir).expanduser()
    folder = root / GEOMETRY_CACHE_FOLDER / key
    fields = [f.name for f in dataclasses.fields(GeometryGraphs)]
    if folder.is_dir():
        problem = cache_lib.damage(folder, key)
        if problem is None:
            with np.load(folder / GRAPH_CACHE_FILE) as z:
                graphs = GeometryGraphs(**{f: z[f] for f in fields})
            if len(graphs) == len(raw.index):
                return graphs
            problem = f"it holds {len(graphs)} graphs, the package {len(raw.index)} molecules"
        moved = cache_lib.move_aside(folder, os.fspath(root))
        print(f"jmtl: qm9 geometry cache {folder} cannot be used ({problem}); moved to {moved}, rebuilding", flush=True)
    graphs = featurise_geometry(raw.smiles, raw.counts, atoms)
    tmp = root / GEOMETRY_CACHE_FOLDER / f".{key}.tmp"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    np.savez(tmp / GRAPH_CACHE_FILE, **{f: getattr(graphs, f) for f in fields})
    cache_lib.write_record(tmp, fingerprint=key, sources=digests)
    os.replace(tmp, folder)
    return graphs


def geometry_packed_size(max_nodes: int = MAX_NODES) -> int:
    """Floats per molecule in ``pack_geometry`` 's layout (see ``jmtl.models.gnn.unpack_complete``)."""
    return max_nodes * (1 + len(NODE_FEATURES) + 3) + max_nodes * max_nodes


def pack_geometry(graphs: GeometryGraphs, max_nodes: int = MAX_NODES) -> np.ndarray:
    """Each molecule as a padded complete graph, flattened: float32 [M, geometry_packed_size].

    Layout per molecule (``jmtl.models.gnn.unpack_complete`` reads it): node mask [max_nodes], node
    features [max_nodes, 11], positions [max_nodes, 3] (Angstrom), bond matrix [max_nodes,
    max_nodes] (0 = no bond, 1 + the ``BOND_TYPES`` index otherwise). The complete graph's edges and
    their distances are implied (the network computes them), which keeps a molecule at
    ``geometry_packed_size()`` floats instead of 812 explicit edges.
    """
    m, f = len(graphs), len(NODE_FEATURES)
    n_len, e_len = np.diff(graphs.node_offsets), np.diff(graphs.edge_offsets)
    if m and n_len.max() > max_nodes:
        raise DataError(f"qm9 geometry: a molecule has {n_len.max()} atoms, above the budget max_nodes={max_nodes}")
    node_slot = np.arange(len(graphs.nodes)) - np.repeat(graphs.node_offsets[:-1], n_len)
    node_mol, edge_mol = np.repeat(np.arange(m), n_len), np.repeat(np.arange(m), e_len)
    node_mask = np.zeros((m, max_nodes), np.float32)
    nodes = np.zeros((m, max_nodes, f), np.float32)
    pos = np.zeros((m, max_nodes, 3), np.float32)
    bond = np.zeros((m, max_nodes, max_nodes), np.float32)
    node_mask[node_mol, node_slot] = 1
    nodes[node_mol, node_slot] = graphs.nodes
    pos[node_mol, node_slot] = graphs.positions
    bond[edge_mol, graphs.senders.astype(np.int64), graphs.receivers.astype(np.int64)] = graphs.bonds + 1.0
    return np.concatenate([node_mask, nodes.reshape(m, -1), pos.reshape(m, -1), bond.reshape(m, -1)], axis=1)


def load_qm9pack(
    package_dir: os.PathLike[str] | str | None = None, verify_checksums: bool = True
) -> tuple[RawQM9, Atoms, list[pathlib.Path]]:
    """Reads and parses the qm9pack parts (``find_qm9pack``): ``(raw, atoms, part paths)``.

    ``verify_checksums``: each part must have qm9pack 1.0.3's size and sha256 (``QM9PACK_FILES``)
    and 130,831 molecules remain after the filter; False reads any folder in qm9pack's format.
    """
    parts = find_qm9pack(package_dir)
    if verify_checksums:
        for p in parts:
            size, sha = QM9PACK_FILES[p.name]
            if p.stat().st_size != size or fingerprint.sha256_file(p) != sha:
                raise DataError(
                    f"{p}: not the file of {QM9PACK_REQUIREMENT} (size {p.stat().st_size:,}, published {size:,} "
                    f"bytes / sha256 {sha[:12]}...). Fix: pip install --force-reinstall '{QM9PACK_REQUIREMENT}', or "
                    "pass verify_checksums=False to read another folder in its format"
                )
    texts = []
    for p in parts:
        try:
            texts.append((p, p.read_text(encoding="ascii")))
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{p}: cannot read ({type(e).__name__}: {e}). Fix: {_QM9PACK_FIX}") from e
    raw, atoms = parse_qm9pack(texts, NUM_MOLECULES if verify_checksums else None)
    return raw, atoms, parts
