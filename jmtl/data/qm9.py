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
                raise _error(
                    path,
                    f"line {line}, column {columns[column] + 1} ({column}): {row[columns[column]]!r} is not a finite number",
                )
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

    Returns:
      An ``MTLDataset`` with input ``x`` and one regression label per task (float32,
      standardised); ``dataset.qm9`` is the ``QM9Data``.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"qm9: seed must be a non-negative int, got {seed!r}")
    if inputs not in INPUTS:
        raise DataError(f"qm9: inputs={inputs!r}; valid: {', '.join(INPUTS)}")
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


INPUTS = ("composition", "graph")


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
) -> MTLDataset:
    """Splits, standardises on train and wraps ``raw`` (see ``load_qm9``).

    ``graphs``: ``featurise(raw.smiles)`` of every molecule (e.g. from the cache) for
    ``inputs='graph'``; None = featurise the molecules of the splits here.
    """
    if inputs not in INPUTS:
        raise DataError(f"qm9: inputs={inputs!r}; valid: {', '.join(INPUTS)}")
    for name, size in (("train_size", train_size), ("eval_size", eval_size)):
        if size is not None and (not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 0):
            raise DataError(f"qm9: {name} must be None, 0 (whole split) or a positive int, got {size!r}")
    if graphs is not None and len(graphs) != len(raw.index):
        raise DataError(f"qm9: {len(graphs)} graphs for {len(raw.index)} molecules")
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
