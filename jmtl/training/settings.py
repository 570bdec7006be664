"""The train loop's settings: one frozen, typed object built and checked once from the config.

The experiment config (an ``ml_collections.ConfigDict``, :mod:`jmtl.training.config_schema`) is what a
run saves and compares on resume; :class:`LoopSettings` is what the loop (:mod:`jmtl.training.loop`)
and ``jmtl.fit`` read. It is built by :meth:`LoopSettings.from_config`, which validates the config
(``config_schema.validate_config``: one line naming the field and the fix) and takes every field the
config leaves out from ``config_schema.default_config()``: the schema's default is the one source of
every default, so no reader keeps a fallback of its own that could disagree with it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from jmtl.training import config_schema, warm_start
from jmtl.training.parallel import DRIVERS
from jmtl.training.seeds import SEED_MODES
from jmtl.training.step import NONFINITE_POLICIES

OPTIMIZERS = ("adam", "adamw", "sgd")

_MISSING = object()


def _field(config, dotted: str, default_root=None):
    """``config``'s value of a dotted field, or ``default_config()``'s where the config has none."""
    node = config
    for part in dotted.split("."):
        if node is None or not hasattr(node, "keys") or part not in node:
            node = _MISSING
            break
        node = node[part]
    if node is not _MISSING:
        return node
    node = default_root if default_root is not None else config_schema.default_config()
    for part in dotted.split("."):
        node = node[part]
    return node


def _choice(field: str, value: str, valid: tuple, fix: str) -> str:
    if value not in valid:
        raise ValueError(f"unknown {field} {value!r}; valid: {', '.join(valid)}. Fix: {fix}")
    return value


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """``config.optimizer`` (see ``builders.optimizer``).

    Attributes:
      name: ``adam`` | ``adamw`` | ``sgd`` (``custom``: a user's optax transform, given to ``jmtl.fit``).
      learning_rate: the base learning rate.
      momentum: SGD's momentum (0: none).
      weight_decay: AdamW's decoupled decay; Adam's L2 term added to the gradient (torch's
        ``Adam(weight_decay=...)``); 0 = none.
      decay_rate: staircase decay factor every ``decay_every_epochs`` (1.0: none).
      decay_every_epochs: the decay period in epochs (0: never).
      clip_norm: global-norm gradient clipping before the optimizer (0: none).
      plateau_factor, plateau_patience, plateau_threshold, plateau_min_lr, plateau_cooldown:
        ReduceLROnPlateau (:mod:`jmtl.training.plateau`); ``plateau_factor`` 0: off.
    """

    name: str
    learning_rate: float
    momentum: float
    weight_decay: float
    decay_rate: float
    decay_every_epochs: int
    clip_norm: float
    plateau_factor: float = 0.0
    plateau_patience: int = 10
    plateau_threshold: float = 1e-4
    plateau_min_lr: float = 0.0
    plateau_cooldown: int = 0

    @classmethod
    def from_config(cls, node: Any) -> "OptimizerSettings":
        """From ``config.optimizer`` or a plain mapping; absent fields take the schema's defaults.
        A field the schema does not have is refused (a typo would otherwise be ignored)."""
        if isinstance(node, OptimizerSettings):
            return node
        defaults = config_schema.default_config().optimizer
        keys = list(node.keys()) if hasattr(node, "keys") else []
        unknown = sorted(str(k) for k in keys if k not in defaults)
        if unknown:
            raise ValueError(
                f"optimizer has no field(s) {unknown}; its fields: {sorted(defaults)}. Fix: correct the name(s)"
            )
        get = lambda k: node[k] if k in keys else defaults[k]  # noqa: E731
        return cls(
            name=str(get("name")),
            learning_rate=float(get("learning_rate")),
            momentum=float(get("momentum")),
            weight_decay=float(get("weight_decay")),
            decay_rate=float(get("decay_rate")),
            decay_every_epochs=int(get("decay_every_epochs")),
            clip_norm=float(get("clip_norm")),
            plateau_factor=float(get("plateau_factor")),
            plateau_patience=int(get("plateau_patience")),
            plateau_threshold=float(get("plateau_threshold")),
            plateau_min_lr=float(get("plateau_min_lr")),
            plateau_cooldown=int(get("plateau_cooldown")),
        )


@dataclasses.dataclass(frozen=True)
class NonfiniteSettings:
    """``config.nonfinite``: ``policy`` ``raise`` (stop at the first non-finite step) or ``skip``
    (drop it, stop after ``max_consecutive_skips`` in a row)."""

    policy: str
    max_consecutive_skips: int


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """Everything the train loop reads from the config, typed and checked.

    Attributes:
      dataset, weighting: the dataset's and the weighting scheme's names (records, messages).
      seed, num_seeds, seeds_mode: seeds ``seed .. seed + num_seeds - 1`` trained together
        (``vmap`` or ``map``: jmtl/training/seeds.py).
      batch_size, eval_batch_size: global examples per train step and per evaluation batch.
      num_epochs, num_steps: the run's length (``num_steps > 0`` overrides ``num_epochs``).
      log_every_steps: train records (losses, weights, the relation matrix) every that many steps.
      eval_every_steps: evaluations every that many steps (<= 0: once per epoch).
      checkpoint_every_steps: checkpoints every that many steps (<= 0: by time,
        ``checkpoint_every_minutes``).
      checkpoint_every_minutes: with ``checkpoint_every_steps <= 0``, the time between checkpoints.
      parallel: ``shard_map`` | ``pmap`` | ``single`` (jmtl/training/parallel.py).
      progress_bar: a tqdm bar on the main process.
      writers: where records go (``jsonl`` always kept; ``tensorboard``, ``wandb``).
      nonfinite: the non-finite step policy.
      optimizer: the optimizer's settings.
      init_from: a warm start, or None (from scratch).
      selection_reference: ``{task: reference main metric}`` (e.g. single-task results): selection on
        the lowest validation Delta-m% against them; empty = on the selection score.
    """

    dataset: str
    weighting: str
    seed: int
    num_seeds: int
    seeds_mode: str
    batch_size: int
    eval_batch_size: int
    num_epochs: int
    num_steps: int
    log_every_steps: int
    eval_every_steps: int
    checkpoint_every_steps: int
    checkpoint_every_minutes: float
    parallel: str
    progress_bar: bool
    writers: tuple[str, ...]
    nonfinite: NonfiniteSettings
    optimizer: OptimizerSettings
    init_from: Optional[warm_start.InitFrom] = None
    selection_reference: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_config(cls, config, extra_fields=()) -> "LoopSettings":
        """Validates ``config`` (``config_schema.validate_config``; ``extra_fields`` as there) and reads
        it; a field the config leaves out is ``config_schema.default_config()``'s."""
        config_schema.validate_config(config, extra_fields)
        defaults = config_schema.default_config()
        get = lambda dotted: _field(config, dotted, defaults)  # noqa: E731
        return cls(
            dataset=str(get("dataset.name")),
            weighting=str(get("weighting.name")),
            seed=int(get("seed")),
            num_seeds=int(get("num_seeds")),
            seeds_mode=_choice("seeds mode", get("seeds_mode"), SEED_MODES, "--config.seeds_mode=vmap"),
            batch_size=int(get("batch_size")),
            eval_batch_size=int(get("eval_batch_size")),
            num_epochs=int(get("num_epochs")),
            num_steps=int(get("num_steps")),
            log_every_steps=int(get("log_every_steps")),
            eval_every_steps=int(get("eval_every_steps")),
            checkpoint_every_steps=int(get("checkpoint_every_steps")),
            checkpoint_every_minutes=float(get("checkpoint_every_minutes")),
            parallel=_choice("parallel driver", get("parallel"), DRIVERS, "--config.parallel=shard_map"),
            progress_bar=bool(get("progress_bar")),
            writers=tuple(config_schema.writer_names(config)),
            nonfinite=NonfiniteSettings(
                policy=_choice(
                    "nonfinite.policy",
                    get("nonfinite.policy"),
                    NONFINITE_POLICIES,
                    "--config.nonfinite.policy=skip (drop non-finite steps) or =raise (stop at the first)",
                ),
                max_consecutive_skips=int(get("nonfinite.max_consecutive_skips")),
            ),
            optimizer=OptimizerSettings.from_config(get("optimizer")),
            init_from=warm_start.InitFrom.parse(get("init_from")),
            selection_reference={str(k): float(v) for k, v in dict(get("selection_reference") or {}).items()},
        )

    # ---- what the loop derives from them, per run (the data fixes steps_per_epoch) ----------------
    def total_steps(self, steps_per_epoch: int) -> int:
        """The run's length in steps: ``num_steps`` if > 0, else ``num_epochs`` epochs."""
        return self.num_steps if self.num_steps > 0 else self.num_epochs * steps_per_epoch

    def eval_every(self, steps_per_epoch: int) -> int:
        """Steps between evaluations: ``eval_every_steps`` if > 0, else one epoch."""
        return self.eval_every_steps if self.eval_every_steps > 0 else steps_per_epoch

    def checkpoint_every(self, steps_per_epoch: int, process_count: int = 1) -> int:
        """Steps between checkpoints, 0 for by time (``checkpoint_every_minutes``). Several processes
        must agree on which steps save (their clocks differ): per evaluation there."""
        if self.checkpoint_every_steps > 0:
            return self.checkpoint_every_steps
        return self.eval_every(steps_per_epoch) if process_count > 1 else 0


def optimizer_settings(value: Mapping[str, Any] | OptimizerSettings) -> OptimizerSettings:
    """:meth:`OptimizerSettings.from_config` (a mapping's absent fields at the schema's defaults)."""
    return OptimizerSettings.from_config(value)
