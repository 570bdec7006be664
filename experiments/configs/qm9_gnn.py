"""QM9, Nash-MTL's 11 regression targets, with Gilmer et al.'s MPNN on molecule graphs (shared encoder).

Inputs: graphs from the SMILES with explicit hydrogens and PyG's QM9 atom / bond features
(``jmtl/data/qm9.py``, ``inputs='graph'``; needs rdkit), cached under ``dataset.cache_dir``. The
network is PyG's QM9 NNConv example as Nash-MTL uses it (``jmtl/models/gnn.py``: hidden 64, 3
message-passing rounds with a GRU, Set2Set readout), shared by all tasks; each task has one linear
head. Nash-MTL's training: Adam 1e-3, batch 120, 300 epochs, ReduceLROnPlateau on validation Delta-m%
(here a constant rate and selection on the validation score; ``qm9_geometry.py`` sets both as the
papers do). With ``inputs='graph'`` (the default) the
network sees no 3D geometry (the shared data file has none); ``use_geometry(c)`` switches to
``inputs='geometry'`` (qm9pack's coordinates: complete graphs with interatomic distances, Nash-MTL's
input; ``pip install 'jmtl[qm9]'``), and ``experiments/configs/qm9_geometry.py`` holds the two
published protocols on it.

Full protocol (GPU; all 110,831 training molecules, 10,000 / 10,000 validation / test):

    python -m experiments.train --config experiments/configs/qm9_gnn.py:nash_mtl --workdir /tmp/qm9_nash \
        --config.dataset.data_dir=../shared/data --config.dataset.cache_dir=/tmp/jmtl_cache \
        --config.num_epochs=300

CPU subset (``:method`` picks the weighting): ``--config.dataset.kwargs.train_size=10000
--config.dataset.kwargs.eval_size=2000 --config.num_epochs=3`` (``experiments/qm9_gnn.py`` runs the grid).
"""

from experiments.configs import common
from jmtl import data
from jmtl.data import qm9
from jmtl.models import encoders, gnn


def get_config(arg=None):
    # Not built-in names: registered here, so the CLI finds them.
    data.register("qm9", qm9.load_qm9, overwrite=True)
    encoders.register("mpnn", gnn.MPNN, overwrite=True)
    c = common.base_config()
    c.dataset.name = "qm9"
    c.dataset.kwargs = dict(seed=0, verify_checksums=True, inputs="graph", train_size=0, eval_size=0)  # 0: whole split
    c.tasks = {t: dict(label=t, weight=1.0) for t in qm9.TASKS}
    c.model.encoder = "mpnn"
    c.model.encoder_kwargs = dict(
        hidden=64,
        steps=3,
        readout="set2set",
        max_nodes=qm9.MAX_NODES,
        max_edges=qm9.MAX_EDGES,
        node_features=len(qm9.NODE_FEATURES),
        edge_features=len(qm9.BOND_TYPES),
    )
    c.model.head_kwargs = dict(hidden=None)  # one linear layer per target, as Nash-MTL
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.batch_size = 120  # Nash-MTL's
    c.num_epochs = 300
    c.eval_batch_size = 1000
    c.log_every_steps = 100
    return common.apply_arg(c, arg)


def use_geometry(c, package_dir: str | None = None):
    """Switches ``c`` to QM9 with 3-D geometry: ``inputs='geometry'`` (qm9pack's xyz coordinates;
    complete graphs whose edge features are the bond one-hot and the interatomic distance, as
    Nash-MTL's ``Complete()`` + ``T.Distance(norm=False)``) and the MPNN's dense complete-graph path.

    Args:
      c: a ``get_config`` config.
      package_dir: the qm9pack package folder; None = $JMTL_QM9PACK_DIR or the installed qm9pack.
    """
    c.dataset.kwargs.inputs = "geometry"
    if package_dir:
        c.dataset.kwargs.package_dir = package_dir
    c.model.encoder_kwargs.geometry = True
    return c
