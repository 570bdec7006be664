"""QM9, Nash-MTL's 11 regression targets (standardised on train), from atom counts only.

A composition baseline: the input is the counts of H, C, N, O, F (jmtl/data/qm9.py); Nash-MTL's
model is a message-passing network on 3D geometry, which this data (SMILES + properties, no
coordinates) cannot feed. Split 110,831 / 10,000 / 10,000 as Nash-MTL, from a numpy permutation
(``dataset.kwargs.seed``). The papers' score is the per-task MAE in original units
(``jmtl.metrics.mae_original_units(pred, target, qm9.mean, qm9.std) * qm9.REPORT_SCALE``) and
Delta-m% against single-task baselines.

    python -m experiments.train --config experiments/configs/qm9_composition.py --workdir /tmp/qm9 \
        --config.dataset.data_dir=../shared/data
"""

from experiments.configs import common
from jmtl import data
from jmtl.data import qm9


def get_config(arg=None):
    # Not (yet) a built-in name of jmtl.data.load: registered here, so the CLI finds it.
    data.register("qm9", qm9.load_qm9, overwrite=True)
    c = common.base_config()
    c.dataset.name = "qm9"
    c.dataset.kwargs = dict(seed=0, verify_checksums=True)
    c.tasks = {t: dict(label=t, weight=1.0) for t in qm9.TASKS}
    c.model.encoder = "mlp"
    c.model.encoder_kwargs = dict(features=(64, 64))
    c.model.head_kwargs = dict(hidden=None)
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.batch_size = 120  # Nash-MTL's
    c.num_epochs = 5
    c.eval_batch_size = 5000
    c.log_every_steps = 100
    return common.apply_arg(c, arg)
