"""Small builders from an ``ml_collections`` config: model, optimizer, weighting and step settings.
(The loop itself is ``jmtl/training/loop.py``.)"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional, Sequence

import optax

from jmtl import weighting as weighting_lib
from jmtl.core.value_and_grad import auto_chunk_size
from jmtl.models import architectures, mtl, regularizers
from jmtl.registry import closest
from jmtl.tasks import Task
from jmtl.training import plateau
from jmtl.training import settings as settings_lib
from jmtl.training import step as step_lib
from jmtl.weighting.grouping import GROUPINGS

OPTIMIZERS = settings_lib.OPTIMIZERS


def optimizer(
    cfg: Mapping[str, Any] | settings_lib.OptimizerSettings, steps_per_epoch: int
) -> optax.GradientTransformation:
    """Adam / AdamW / SGD(momentum) with an optional staircase decay every ``decay_every_epochs``
    (Sener & Koltun: x0.85 every 10 epochs) and optional global-norm gradient clipping.

    Args:
      cfg: ``config.optimizer`` (or a mapping, or ``LoopSettings.optimizer``); absent fields take
        ``config_schema.default_config()``'s values (:class:`~jmtl.training.settings.OptimizerSettings`):
        ``name`` (adam), ``learning_rate`` (1e-3), ``decay_rate`` (1.0: none) every
        ``decay_every_epochs`` (0: never), ``weight_decay`` (adamw: decoupled; adam: torch
        ``Adam(weight_decay=...)``'s L2 term, ``wd * param`` added to the gradient before the moments,
        as LibMTL trains; 0 = none), ``momentum`` (sgd) and
        ``clip_norm`` (0: no clipping; > 0: updates computed from gradients rescaled to at most that
        global norm, as the hierarchical taggers train).
      steps_per_epoch: steps of one epoch (the decay period's unit).

    ``plateau_factor`` > 0 appends :func:`jmtl.training.plateau.scale_by_plateau` (ReduceLROnPlateau,
    driven by the train loop's evaluations).
    """
    opt = settings_lib.OptimizerSettings.from_config(cfg)
    base = _base_optimizer(opt, steps_per_epoch)
    if opt.plateau_factor > 0:
        # Last in the chain: the plateau's scale multiplies the finished update, as a smaller
        # learning rate would (the loop changes it after each evaluation: jmtl/training/plateau.py).
        base = optax.chain(base, plateau.scale_by_plateau())
    # No chain without clipping: the optimizer state keeps its structure (and old checkpoints load).
    return optax.chain(optax.clip_by_global_norm(opt.clip_norm), base) if opt.clip_norm > 0 else base


def _base_optimizer(opt: settings_lib.OptimizerSettings, steps_per_epoch: int) -> optax.GradientTransformation:
    lr, every, rate = opt.learning_rate, opt.decay_every_epochs, opt.decay_rate
    if every > 0 and rate != 1.0:
        schedule = optax.exponential_decay(
            lr, transition_steps=every * steps_per_epoch, decay_rate=rate, staircase=True
        )
    else:
        schedule = lr
    if opt.name == "adam":
        if opt.weight_decay > 0:
            return optax.chain(optax.add_decayed_weights(opt.weight_decay), optax.adam(schedule))
        return optax.adam(schedule)
    if opt.name == "adamw":
        return optax.adamw(schedule, weight_decay=opt.weight_decay)
    if opt.name == "sgd":
        return optax.sgd(schedule, momentum=opt.momentum or None)
    raise ValueError(f"unknown optimizer {opt.name!r}; valid optimizers: {', '.join(OPTIMIZERS)}")


def weighting(
    name: str,
    hparams: Mapping[str, Any],
    tasks: Sequence[Task],
    steps_per_epoch: int,
    learning_rate: Optional[float] = None,
):
    """The weighting transform from the config. ``static`` defaults to the tasks' weights; schemes
    that take ``steps_per_epoch`` (DWA, FORUM) get it from the data; a bilevel scheme's unset
    ``lookahead_lr`` (Auto-Lambda) is the model optimizer's ``learning_rate``."""
    hparams = {k: v for k, v in dict(hparams).items() if v is not None or k == "weights"}
    if name in weighting_lib.names() and learning_rate is not None:
        if "lookahead_lr" in inspect.signature(weighting_lib.factory(name)).parameters:
            hparams.setdefault("lookahead_lr", float(learning_rate))
    if name == "static" and hparams.get("weights") is None:
        hparams["weights"] = [t.weight for t in tasks]
    if name in weighting_lib.names():
        accepted = inspect.signature(weighting_lib.factory(name)).parameters
        if "steps_per_epoch" in accepted and "steps_per_epoch" not in hparams:
            hparams["steps_per_epoch"] = steps_per_epoch
    return weighting_lib.get(name, **hparams)


def weighting_from_config(config, tasks: Sequence[Task], steps_per_epoch: int):
    """:func:`weighting` for ``config.weighting`` (the look-ahead rate defaults to ``config.optimizer``'s),
    run per parameter group when ``config.weighting.per_group`` names a grouping."""
    transform = weighting(
        config.weighting.name,
        config.weighting.hparams.to_dict(),
        tasks,
        steps_per_epoch,
        learning_rate=config.optimizer.learning_rate,
    )
    group_by = config.weighting.get("per_group", "") or ""
    if not group_by:
        return transform
    if group_by not in GROUPINGS:
        near = closest(group_by, GROUPINGS)
        raise ValueError(
            f"unknown weighting.per_group {group_by!r}{f' (did you mean {near!r}?)' if near else ''}; "
            f"valid: '' (off), {', '.join(GROUPINGS)}"
        )
    if transform.requires not in (weighting_lib.GRAMIAN, weighting_lib.JACOBIAN):
        raise ValueError(
            f"weighting.per_group={group_by!r} runs a scheme on each parameter group's gradients, but "
            f"{config.weighting.name!r} is a {transform.requires}-level scheme (its weights do not depend on the "
            "parameters); use a Gramian or Jacobian scheme (e.g. upgrad, mgda, pcgrad) or per_group=''"
        )
    return weighting_lib.per_group(transform, group_by)


# The meta-batch order of seed s is shuffled with seed s + this (not the training order's seed).
META_SEED_OFFSET = 1_000_003
META_SPLITS = ("validation", "train")


def meta_split(config, weighting_transform) -> Optional[str]:
    """Where a bilevel scheme takes its second ("meta") batch each step: ``config.weighting.meta_split``,
    or the scheme's own default when that is empty; ``None`` for every other scheme."""
    if weighting_transform.requires != weighting_lib.BILEVEL:
        return None
    split = config.weighting.meta_split or weighting_transform.lookahead.meta_split
    if split not in META_SPLITS:
        raise ValueError(f"unknown weighting.meta_split {split!r}; valid: validation, train, '' (the scheme's)")
    return split


def jacobian_chunk_size(value: int) -> int:
    """The config's chunk size, with -1 (auto) resolved for the backend (:func:`jmtl.core.auto_chunk_size`)."""
    return auto_chunk_size() if value == -1 else value


def model(config, tasks: Sequence[Task]):
    """The ``MultiTaskModel`` of ``config.model`` for ``tasks``."""
    return mtl.build(
        tasks,
        encoder=config.model.encoder,
        encoder_kwargs=config.model.encoder_kwargs.to_dict(),
        head_kwargs=config.model.head_kwargs.to_dict(),
        relation=config.model.relation,
        arch=config.model.arch,
        arch_kwargs=config.model.arch_kwargs.to_dict(),
    )


def step_config(config, built_model, input_key: str, input_transform=None) -> step_lib.StepConfig:
    """The train step's static settings: relation penalty, Jacobian mode and chunking, the
    architecture's regulariser and its step-dependent model arguments, and the dataset's on-device
    input transform (``DatasetSpec.input_transform``)."""
    if config.weighting.gramian not in step_lib.GRAMIAN_SOURCES:
        raise ValueError(
            f"unknown weighting.gramian {config.weighting.gramian!r}; valid: {', '.join(step_lib.GRAMIAN_SOURCES)}"
        )
    alpha = config.model.relation_alpha
    if alpha and not config.model.relation:
        raise ValueError(
            f"model.relation_alpha={alpha} penalises the task-relation matrix, but model.relation is False "
            "(no matrix): set model.relation=True or model.relation_alpha=0"
        )
    penalties = [mtl.relation_penalty(alpha)] if alpha else []
    regulariser = regularizers.from_config(config.model.arch, config.model.arch_kwargs.to_dict())
    if regulariser is not None:
        penalties.append(regulariser)
    return step_lib.StepConfig(
        input_key=input_key,
        input_transform=input_transform,
        compute_dtype=config.model.compute_dtype or None,
        jacobian_mode=config.weighting.jacobian_mode,
        jacobian_chunk_size=jacobian_chunk_size(config.weighting.jacobian_chunk_size),
        gramian=config.weighting.gramian,
        per_example=bool(config.weighting.get("per_example", False)),
        penalties=tuple(penalties),
        model_kwargs=architectures.model_kwargs_fn(built_model),
    )
