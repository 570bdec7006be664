"""Fields every experiment config shares. Each experiment file overrides what it needs."""

import ml_collections

from jmtl import weighting


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = ml_collections.ConfigDict(dict(name="gradnorm_toy", data_dir="", cache_dir="", kwargs={}))
    # {task_name: {label: dataset label key, weight: static weight}}; empty = one task per dataset label.
    c.tasks = ml_collections.ConfigDict()
    # arch: hps | independent | soft_sharing | cross_stitch | mtan | mmoe | dselect_k | cgc | ple |
    # learning_to_branch (jmtl/models/architectures.py); arch_kwargs: its options plus the
    # regularizer keys (penalty, penalty_weight, mtrl_weight, mtrl_eps: jmtl/models/regularizers.py).
    c.model = ml_collections.ConfigDict(
        dict(
            encoder="mlp", encoder_kwargs={}, head_kwargs={}, relation=False, relation_alpha=0.0,
            arch="hps", arch_kwargs={},
        )
    )
    c.weighting = method_config("equal")
    c.optimizer = ml_collections.ConfigDict(
        dict(name="adam", learning_rate=1e-3, momentum=0.9, weight_decay=0.0, decay_rate=1.0, decay_every_epochs=0)
    )
    c.batch_size = 256  # global batch, split over all devices
    c.num_epochs = 10
    c.num_steps = -1  # > 0 overrides num_epochs
    c.eval_every_steps = -1  # <= 0: once per epoch
    c.eval_batch_size = 1000
    c.log_every_steps = 20
    c.checkpoint_every_steps = -1  # <= 0: at every eval
    c.parallel = "shard_map"  # shard_map | pmap | single
    c.nonfinite = ml_collections.ConfigDict(dict(policy="raise", max_consecutive_skips=10))
    c.progress_bar = True
    return c


def method_config(name: str) -> ml_collections.ConfigDict:
    """``{name, hparams}`` with every hyperparameter of the method at its default, so each can be
    overridden from the command line (``--config.weighting.hparams.normalization=l2``)."""
    hp = ml_collections.ConfigDict(weighting.hyperparameters(name))
    # jacobian_mode: 'params' (exact per-task gradients of the shared params) or 'representation'
    # (gradients w.r.t. the shared representation, MGDA-UB style). Loss-level schemes ignore it.
    return ml_collections.ConfigDict(dict(name=name, hparams=hp, jacobian_mode="params"))


def apply_arg(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """``--config=experiments/configs/x.py:mgda`` picks the weighting method."""
    if arg:
        c.weighting = method_config(arg)
    return c
