"""School (ILEA exam scores), pooled: one regression over all 139 schools' students.

This is the single-model baseline of the School benchmark (Argyriou, Evgeniou & Pontil, MLJ
2008): the school is ignored (``school_id_feature=False``; True appends its one-hot). The
per-school view (139 tasks, each with its own students) is ``jmtl.data.school.load_school``; it
needs per-task inputs in the train loop. The papers' score is the explained variance
(``jmtl.metrics.explained_variance``) over the test students, averaged over the 10 splits
(``--config.dataset.kwargs.split_index=0..9``).

    python -m experiments.train --config experiments/configs/school_pooled.py --workdir /tmp/school \
        --config.dataset.data_dir=../shared/data
"""

from experiments.configs import common
from jmtl import data
from jmtl.data import school


def get_config(arg=None):
    # Not (yet) a built-in name of jmtl.data.load: registered here, so the CLI finds it.
    data.register("school_pooled", school.load_school_pooled, overwrite=True)
    c = common.base_config()
    c.dataset.name = "school_pooled"
    # split_index 0..9 = school_<1..10>_indexes.mat; validation_percent of each school's training
    # students is held out for model selection (the papers have no validation split).
    c.dataset.kwargs = dict(
        split_index=0, validation_percent=10, seed=0, school_id_feature=False, standardize=True, verify_checksums=True
    )
    c.tasks = dict(score=dict(label="score", weight=1.0))
    c.model.encoder = "mlp"
    c.model.encoder_kwargs = dict(features=(64,))
    c.model.head_kwargs = dict(hidden=None)  # affine output on the shared representation
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.batch_size = 128
    c.num_epochs = 50
    c.log_every_steps = 50
    return common.apply_arg(c, arg)
