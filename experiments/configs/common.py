"""Fields every experiment config shares. Each experiment file overrides what it needs.

The fields, their defaults and their validation live in the library
(:mod:`jmtl.training.config_schema`), which the train loop uses; this module keeps the names the
config files use.
"""

import ml_collections

from jmtl.training import config_schema
from jmtl.training.config_schema import method_config, validate_config  # noqa: F401  (re-exported)


def base_config() -> ml_collections.ConfigDict:
    return config_schema.default_config()


def apply_arg(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """``--config=experiments/configs/x.py:mgda`` picks the weighting scheme."""
    if arg:
        c.weighting = method_config(arg)
    return c
