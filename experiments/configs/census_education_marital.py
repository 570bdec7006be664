"""Census-Income (KDD), MMoE group 2: education at least college (main task) and marital status
never married. "At least college" = an associate degree or higher (see jmtl/data/census.py).

    python -m experiments.train --config experiments/configs/census_education_marital.py \
        --workdir /tmp/census2 --config.dataset.data_dir=../shared/data
"""

from experiments.configs import census_common


def get_config(arg=None):
    return census_common.census_config("education_marital", arg)
