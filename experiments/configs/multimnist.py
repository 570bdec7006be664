"""MultiMNIST with Multi-LeNet (Sener & Koltun, NeurIPS 2018): two tasks, left and right digit.

Their schedule is 100 epochs of batch 256 with the learning rate x0.85 every 10 epochs; the default
here is shorter for a CPU (set --config.num_epochs=100 for the full schedule).

    python -m experiments.train --config experiments/configs/multimnist.py --workdir /tmp/mm \
        --config.dataset.data_dir=../shared/data
    python -m experiments.train --config experiments/configs/multimnist.py:mgda --workdir /tmp/mm_mgda
"""

from experiments.configs import common


def get_config(arg=None):
    c = common.base_config()
    c.dataset.name = "multi_mnist"
    # seed: the pairing seed; download=True fetches the official files; verify_checksums=False accepts
    # raw files that differ from the published ones (--config.dataset.kwargs.verify_checksums=False).
    c.dataset.kwargs = dict(seed=0, download=False, verify_checksums=True)
    c.tasks = dict(left=dict(label="left", weight=1.0), right=dict(label="right", weight=1.0))
    c.model.encoder = "multi_lenet"
    c.model.encoder_kwargs = dict(dropout_rate=0.5)
    c.model.head_kwargs = dict(hidden=50, dropout_rate=0.5)
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.decay_rate = 0.85
    c.optimizer.decay_every_epochs = 10
    c.batch_size = 256
    c.num_epochs = 30
    c.log_every_steps = 50
    return common.apply_arg(c, arg)
