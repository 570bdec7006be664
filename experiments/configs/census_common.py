"""Shared setup of the Census-Income (KDD) MMoE benchmark (Ma et al., KDD 2018, Sec. 6.3).

Both task groups are two binary tasks (sigmoid cross-entropy, one logit each); the paper scores
them by ROC AUC on the test half of the official test file (the other half is validation). The
model follows the reference Keras MMoE demo (drawbridge/keras-mmoe): one-hot inputs (the
dataset's on-device ``input_transform``), 8 experts of one ReLU layer, a softmax gate per task,
and a tower of 8 ReLU units per task. The paper tuned these per method (thousands of trials) and
reports the mean over 400 runs; the defaults here are a single CPU-sized run.
"""

from experiments.configs import common
from jmtl import data
from jmtl.data import census

GROUPS = ("income_marital", "education_marital")


def census_config(group: str, arg=None):
    if group not in GROUPS:
        raise ValueError(f"census group must be one of {GROUPS}, got {group!r}")
    # Not (yet) a built-in name of jmtl.data.load: registered here, so the CLI finds it.
    data.register("census_income", census.load_census, overwrite=True)
    c = common.base_config()
    c.dataset.name = "census_income"
    # seed: the validation/test halving of census-income.test; education_split: 'associates' (the
    # split matching the paper's label correlation) or 'bachelors'.
    c.dataset.kwargs = dict(group=group, seed=0, education_split="associates", verify_checksums=True)
    first = group.split("_")[0]  # income | education: the main task (hyper-parameters are tuned on its AUC)
    c.tasks = {first: dict(label=first, weight=1.0), "marital": dict(label="marital", weight=1.0)}
    c.model.encoder = "mlp"
    c.model.encoder_kwargs = dict(features=(16,))  # one expert = Dense(16) + ReLU
    c.model.arch = "mmoe"
    c.model.arch_kwargs = dict(num_experts=8)
    c.model.head_kwargs = dict(hidden=8, dropout_rate=0.0)  # tower: Dense(8) + ReLU -> Dense(1)
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-3
    c.batch_size = 1024
    c.num_epochs = 10
    c.eval_batch_size = 4096
    c.log_every_steps = 50
    return common.apply_arg(c, arg)
