"""Census-Income (KDD), MMoE group 1: income > 50K (main task) and marital status never married.

    python -m experiments.train --config experiments/configs/census_income_marital.py \
        --workdir /tmp/census1 --config.dataset.data_dir=../shared/data
    python -m experiments.train --config experiments/configs/census_income_marital.py:mgda --workdir /tmp/c1_mgda

The paper's metric is the split-level ROC AUC (``jmtl.metrics.binary_auc``, the ``auc`` entry of
each binary task's ``split_metrics``); the per-example metrics logged here are accuracy and loss.
"""

from experiments.configs import census_common


def get_config(arg=None):
    return census_common.census_config("income_marital", arg)
