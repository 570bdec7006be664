"""The embedded default: GradNorm's synthetic regression (Chen et al. 2018, Sec. 5.1), no download.

T regression tasks of strongly different scales on a shared 4-layer ReLU trunk (100 units) with an
affine head per task. Runs in well under 2 minutes on a laptop CPU.

    python -m experiments.train --config experiments/configs/gradnorm_toy.py --workdir /tmp/toy
    python -m experiments.train --config experiments/configs/gradnorm_toy.py:uncertainty --workdir /tmp/toy_uw
"""

from experiments.configs import common


def get_config(arg=None):
    c = common.base_config()
    c.dataset.name = "gradnorm_toy"
    c.dataset.kwargs = dict(num_tasks=2)
    c.model.encoder = "mlp"
    c.model.encoder_kwargs = dict(features=(100, 100, 100, 100))
    c.model.head_kwargs = dict(hidden=None)
    c.optimizer.learning_rate = 1e-3
    c.batch_size = 100
    c.num_epochs = 15
    c.log_every_steps = 10
    return common.apply_arg(c, arg)
