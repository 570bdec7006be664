"""The experiment config's fields, their defaults and their validation (library side).

``default_config()`` is every field the train loop (:mod:`jmtl.training.loop`) reads, at its
default; experiment config files (``experiments/configs/*.py``) start from it and override what
they need. ``validate_config`` runs at the start of every run so a mistyped or out-of-range field
fails at once, naming the field and the fix, before anything is written.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Sequence

import ml_collections
from ml_collections.config_dict import placeholder

from jmtl import weighting
from jmtl.runs.workdir import empty_setting

WRITERS = ("jsonl", "tensorboard", "wandb")


def default_config() -> ml_collections.ConfigDict:
    """Every field the train loop reads, at its default."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Seeds seed, seed + 1, ... trained together in one compiled program (jmtl/training/seeds.py).
    c.num_seeds = 1
    # How the seeds share the program: 'vmap' (batched ops; best for small models) or 'map' (one
    # seed after another inside the step; faster for Multi-LeNet on CPU). jmtl/training/seeds.py.
    c.seeds_mode = "vmap"
    c.dataset = ml_collections.ConfigDict(dict(name="gradnorm_toy", data_dir="", cache_dir="", kwargs={}))
    # {task_name: {label: dataset label key, weight: static weight}}; empty = one task per dataset label.
    c.tasks = ml_collections.ConfigDict()
    # arch: hps | independent | soft_sharing | cross_stitch | mtan | mmoe | dselect_k | cgc | ple |
    # learning_to_branch (jmtl/models/architectures.py); arch_kwargs: its options plus the
    # regularizer keys (penalty, penalty_weight, mtrl_weight, mtrl_eps: jmtl/models/regularizers.py).
    # compute_dtype: '' (float32) | 'bfloat16' | 'float16': forward and backward passes in that dtype on
    # a cast of the float32 master params; losses, Jacobians and weighting stay float32.
    c.model = ml_collections.ConfigDict(
        dict(
            encoder="mlp",
            encoder_kwargs={},
            head_kwargs={},
            relation=False,
            relation_alpha=0.0,
            arch="hps",
            arch_kwargs={},
            compute_dtype="",
        )
    )
    c.weighting = method_config("equal")
    # clip_norm > 0: gradients clipped to that global norm before the optimizer (0: no clipping).
    c.optimizer = ml_collections.ConfigDict(
        dict(
            name="adam",
            learning_rate=1e-3,
            momentum=0.9,
            weight_decay=0.0,
            decay_rate=1.0,
            decay_every_epochs=0,
            clip_norm=0.0,
            # ReduceLROnPlateau (jmtl/training/plateau.py; PyTorch's rule): plateau_factor > 0 turns it
            # on, monitoring each evaluation's validation value (Delta-m% against selection_reference,
            # else minus the selection score).
            plateau_factor=0.0,
            plateau_patience=10,
            plateau_threshold=1e-4,
            plateau_min_lr=0.0,
            plateau_cooldown=0,
        )
    )
    # Model selection (and the plateau schedule's monitored value): {} keeps each seed's evaluation
    # with the best validation score (evaluate.selection_score); {task: reference main metric} (e.g.
    # single-task results, every task named) selects on the lowest validation Delta-m% instead.
    # Keyed by name, not position: a config's tasks are ordered by name, not as written.
    c.selection_reference = {}
    c.batch_size = 256  # global batch, split over all devices
    c.num_epochs = 10
    c.num_steps = -1  # > 0 overrides num_epochs
    c.eval_every_steps = -1  # <= 0: once per epoch
    c.eval_batch_size = 1000
    c.log_every_steps = 20
    c.checkpoint_every_steps = -1  # > 0: every that many steps; <= 0: by time (checkpoint_every_minutes)
    # With checkpoint_every_steps <= 0: a checkpoint once this many minutes of the run have passed
    # since the last one, and at the end (and on SIGTERM / SIGINT). Per epoch cost fit 2.4-5x on small
    # data (results/bench/fit_checkpoint_cadence.md); a preempted run loses at most this much work.
    c.checkpoint_every_minutes = 5.0
    c.parallel = "shard_map"  # shard_map | pmap | single
    c.nonfinite = ml_collections.ConfigDict(dict(policy="raise", max_consecutive_skips=10))
    c.progress_bar = True
    # Where train_log / metrics records go: any of jsonl (always kept: resume reads it), tensorboard, wandb.
    c.writers = ("jsonl",)
    # Warm start / transfer (jmtl/training/warm_start.py): path '' = from scratch; else a jmtl workdir,
    # its checkpoints/ folder or a .msgpack / .npz params file; part 'shared' | 'all'; freeze: no
    # updates to the loaded params; seed_index: which seed of a run that trained several.
    c.init_from = ml_collections.ConfigDict(dict(path="", part="shared", freeze=False, seed_index=0))
    return c


# Scheme hyperparameters a run sets from its data when the config leaves them unset.
FROM_THE_DATA = ("steps_per_epoch",)


def method_config(name: str) -> ml_collections.ConfigDict:
    """``{name, hparams}`` with every hyperparameter of the method at its default, so each can be
    overridden from the command line (``--config.weighting.hparams.normalization=l2``).

    Hyperparameters without a default (``static``'s ``weights``, ...) are untyped placeholders, so
    they too can be given on the command line: ``--config.weighting.hparams.weights=1,2`` gives
    ``(1, 2)``.

    Hyperparameters the run takes from its data (:data:`FROM_THE_DATA`: ``steps_per_epoch`` of DWA,
    STCH and FORUM) are unset placeholders too, so :func:`jmtl.training.builders.weighting` fills
    them from the data; a value given on the command line still wins. (Filled with the factory's
    default, 100, they silently overrode the data: on School's full-batch steps STCH's 4 warm-up
    "epochs" lasted 400 steps, longer than the 100-step run, so STCH trained as ``si``.)
    """
    hp = ml_collections.ConfigDict(
        {
            k: (placeholder(int) if k in FROM_THE_DATA else placeholder(object) if v is None else v)
            for k, v in weighting.hyperparameters(name).items()
        }
    )
    # jacobian_mode: 'params' (exact per-task gradients of the shared params) or 'representation'
    # (gradients w.r.t. the shared representation, MGDA-UB style). Loss-level schemes ignore it.
    # jacobian_chunk_size: per-task gradients in chunks of this many tasks (a loop of vmaps inside the
    # step; bounds the backward pass's memory to that many copies); 0 = all K in one vmap; -1 = auto
    # (1 on CPU, where XLA runs K single backward passes ~1.8x faster than one vmap over K
    # (results/bench/bench_scaling.md), and 0 on GPU/TPU).
    # meta_split: where bilevel schemes (auto_lambda, moml, forum) take the batch of their upper-level
    # losses each step: 'validation' (held out, as MOML does), 'train' (a second, independently
    # shuffled training batch, as the Auto-Lambda and FORUM code do) or '' (the scheme's own choice).
    # Other schemes ignore it.
    # meta_batch_size: examples per meta batch: 0 = the training batch's size, -1 = the whole meta
    # split every step (a full-batch run's upper level, e.g. School's 1,151 validation students).
    # gramian: 'rows' (G from the Jacobian's rows) or 'autogram' (G from per-layer terms without the
    # Jacobian, then one weighted backward pass; Gramian schemes on one device: results/bench/autogram.md).
    # per_example: every example's loss (summed over the tasks) is its own objective, K = batch_size
    # (instance-wise risk minimisation; Gramian/Jacobian schemes, one device: StepConfig.per_example).
    # per_group: '' (the scheme on the whole shared Jacobian), or run it on each parameter group's
    # columns separately (jmtl.weighting.per_group): 'layer' (one module's leaves, e.g. a kernel and
    # its bias), 'leaf' (every parameter tensor) or 'all' (one group; the same as ''). Gramian and
    # Jacobian schemes only. Each group keeps its own scheme state.
    return ml_collections.ConfigDict(
        dict(
            name=name,
            hparams=hp,
            jacobian_mode="params",
            jacobian_chunk_size=-1,
            meta_split="",
            meta_batch_size=0,
            gramian="rows",
            per_example=False,
            per_group="",
        )
    )


# ---- validation ----------------------------------------------------------------------------------
# (field, expected type, lower bound or None). Absent fields are skipped (the tagging configs have
# fewer fields than the in-memory ones).
_INT, _NUM, _BOOL, _STR = "int", "number", "bool", "str"
_FIELDS = (
    ("seed", _INT, 0),
    ("num_seeds", _INT, 1),
    ("seeds_mode", _STR, None),
    ("batch_size", _INT, 1),
    ("num_epochs", _INT, None),  # >= 1 unless num_steps > 0 (checked below)
    ("num_steps", _INT, None),  # <= 0: use num_epochs
    ("eval_every_steps", _INT, None),  # <= 0: once per epoch
    ("eval_batch_size", _INT, 1),
    ("log_every_steps", _INT, 1),
    ("checkpoint_every_steps", _INT, None),  # <= 0: by time (checkpoint_every_minutes)
    ("checkpoint_every_minutes", _NUM, 0),
    ("max_steps_per_epoch", _INT, 0),  # tagging: > 0 cuts every epoch short
    ("parallel", _STR, None),
    ("progress_bar", _BOOL, None),
    ("dataset.name", _STR, None),
    ("model.encoder", _STR, None),
    ("model.arch", _STR, None),
    ("model.relation", _BOOL, None),
    ("model.relation_alpha", _NUM, 0),
    ("model.compute_dtype", _STR, None),
    ("weighting.name", _STR, None),
    ("weighting.jacobian_mode", _STR, None),
    ("weighting.jacobian_chunk_size", _INT, -1),  # 0: all K per-task gradients in one vmap, -1: auto
    ("weighting.meta_split", _STR, None),
    ("weighting.meta_batch_size", _INT, -1),
    ("weighting.gramian", _STR, None),
    ("weighting.per_example", _BOOL, None),
    ("weighting.per_group", _STR, None),
    ("optimizer.name", _STR, None),
    ("optimizer.learning_rate", _NUM, 0),
    ("optimizer.momentum", _NUM, 0),
    ("optimizer.weight_decay", _NUM, 0),
    ("optimizer.decay_rate", _NUM, 0),
    ("optimizer.decay_every_epochs", _INT, 0),
    ("optimizer.clip_norm", _NUM, 0),
    ("optimizer.plateau_factor", _NUM, 0),
    ("optimizer.plateau_patience", _INT, 0),
    ("optimizer.plateau_threshold", _NUM, 0),
    ("optimizer.plateau_min_lr", _NUM, 0),
    ("optimizer.plateau_cooldown", _INT, 0),
    ("nonfinite.policy", _STR, None),
    ("nonfinite.max_consecutive_skips", _INT, 1),
    ("init_from.path", _STR, None),
    ("init_from.part", _STR, None),
    ("init_from.freeze", _BOOL, None),
    ("init_from.seed_index", _INT, 0),
)
_STRICTLY_POSITIVE = {"optimizer.learning_rate", "optimizer.decay_rate"}
# Upper bounds: a decay factor above 1 grows the learning rate every period (a sign flip of intent).
_AT_MOST = {"optimizer.decay_rate": 1.0}
# Fields added to default_config() after grids, boards and runs were recorded, with the value at
# which each changes nothing: grid and protocol keys leave them out at that value, so cells trained
# before they existed keep their fingerprints (a resume fills them in: loop._with_new_defaults).
INERT_WHEN = {
    "optimizer.plateau_factor": 0.0,
    "optimizer.plateau_patience": 10,
    "optimizer.plateau_threshold": 1e-4,
    "optimizer.plateau_min_lr": 0.0,
    "optimizer.plateau_cooldown": 0,
    "selection_reference": {},
    "weighting.meta_batch_size": 0,
    "weighting.per_group": "",
    # BayesAgg-MTL's classification hyperparameters (added with its classification case): they change
    # nothing for regression tasks, the only ones bayesagg_mtl ran before they existed.
    "weighting.hparams.sqrt_power_cls": 0.1,
    "weighting.hparams.num_mc_samples": 1024,
}


def field_parent(tree: dict, dotted: str) -> tuple[dict, str]:
    """``(the dict holding a dotted field, the field's last name)`` in a config dict; a fresh ``{}``
    where a level is absent or not a dict (so reading, popping or setting there changes nothing)."""
    *path, last = dotted.split(".")
    node = tree
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return {}, last
    return node, last


def strip_inert(tree: dict) -> None:
    """Removes, from a config dict, each :data:`INERT_WHEN` field that holds its inert value (a
    protocol or grid fingerprint then equals the one recorded before the field existed)."""
    for dotted, inert in INERT_WHEN.items():
        node, last = field_parent(tree, dotted)
        if last in node and _same(node[last], inert):
            node.pop(last)


def fill_inert(saved: dict, current: dict) -> None:
    """Sets, in a saved config dict, each :data:`INERT_WHEN` field it lacks to the inert value where
    ``current`` has the field at that value (a run recorded before the field existed resumes)."""
    for dotted, inert in INERT_WHEN.items():
        s_node, last = field_parent(saved, dotted)
        c_node, _ = field_parent(current, dotted)
        if last not in s_node and last in c_node and _same(c_node[last], inert):
            s_node[last] = inert


def _same(value, inert) -> bool:
    """``value`` is ``inert`` of the same kind (a list read back from JSON equals a tuple)."""
    if isinstance(inert, dict):
        return isinstance(value, dict) and value == inert
    if isinstance(inert, tuple):
        return isinstance(value, (tuple, list)) and tuple(value) == inert
    return not isinstance(value, (tuple, list, dict)) and value == inert


def _lookup(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _has_type(value, kind: str) -> bool:
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _STR:
        return isinstance(value, str)
    if isinstance(value, bool):  # True is an int to Python, never to a config
        return False
    if kind == _INT:
        return isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu")
    return isinstance(value, (int, float)) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iuf")


# Subtrees whose keys are another component's keyword arguments (the dataset loader's, the
# encoder's, the heads', the architecture's, the weighting scheme's) or names the user chooses (the
# tasks): the component that receives them refuses a name it does not know, listing the valid ones.
FREE_FORM = (
    "selection_reference",
    "dataset.kwargs",
    "tasks",
    "model.encoder_kwargs",
    "model.head_kwargs",
    "model.arch_kwargs",
    "weighting.hparams",
)
# A config that adds fields on purpose declares them here (dotted names; a declared field's subtree
# is free): ``c.extra_fields = ("notes",)``. Absent from ``default_config()`` so that configs which
# add nothing keep their saved form.
EXTRA_FIELDS = "extra_fields"
# The fields the tagging loop (jmtl/training/tagging.py, experiments/configs/hierarchical_common.py)
# reads beyond default_config()'s; a config with ``variants`` is a tagging config. (Its model
# fields are HierarchicalTagger's, so an unknown one is refused here rather than by a TypeError.)
TAGGING_FIELDS = (
    "variants",
    "variant",
    "select_on",
    "crf_tasks",
    "eval_test_every_epoch",
    "max_steps_per_epoch",
    "compilation_cache_dir",
    *(
        f"model.{f}"
        for f in (
            "num_layers",
            "hidden",
            "word_dim",
            "char_dim",
            "char_features",
            "char_width",
            "label_dim",
            "shortcut",
            "head_hidden",
            "dropout_rate",
            "word_dropout",
            "pretrained_embeddings",
            "embeddings_format",
            "freeze_embeddings",
        )
    ),
)


def unknown_fields(config, extra_fields: Sequence[str] = ()) -> list[tuple[str, list[str]]]:
    """``[(dotted field, valid sibling names), ...]``: the fields of ``config`` that neither
    :func:`default_config` nor ``extra_fields`` / ``config.extra_fields`` has.

    A field set in a config file by mistake (``c.num_epoch = 1``) would otherwise be kept and
    ignored while the default it meant to change runs.
    """
    declared = set(extra_fields)
    if hasattr(config, "keys") and "variants" in config:
        declared |= set(TAGGING_FIELDS)
    own = _lookup(config, EXTRA_FIELDS)
    if own is not _MISSING and own is not None:
        declared |= {str(own)} if isinstance(own, str) else {str(f) for f in own}
    out: list[tuple[str, list[str]]] = []

    def walk(node, schema, prefix: str) -> None:
        for key in node.keys():
            dotted = prefix + str(key)
            if dotted in FREE_FORM or dotted in declared or dotted == EXTRA_FIELDS:
                continue
            known = schema is not None and hasattr(schema, "keys") and key in schema
            sub = node[key]
            if not known:
                # A declared field deeper down (``model.num_layers``) makes its parents known.
                if any(d.startswith(dotted + ".") for d in declared) and hasattr(sub, "keys"):
                    walk(sub, None, dotted + ".")
                    continue
                siblings = list(schema.keys()) if schema is not None and hasattr(schema, "keys") else []
                siblings += [d[len(prefix) :] for d in declared if d.startswith(prefix) and "." not in d[len(prefix) :]]
                out.append((dotted, siblings))
            elif hasattr(sub, "keys"):
                walk(sub, schema[key], dotted + ".")

    walk(config, default_config(), "")
    return out


def check_fields(config, extra_fields: Sequence[str] = ()) -> None:
    """Refuses fields that no code reads (see :func:`unknown_fields`), as the command line refuses
    ``--config.num_epoch=1``: ``ValueError`` naming each, the closest valid name and the fix."""
    unknown = unknown_fields(config, extra_fields)
    if not unknown:
        return
    parts = []
    for dotted, siblings in unknown:
        close = difflib.get_close_matches(dotted.rsplit(".", 1)[-1], [str(s) for s in siblings], n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        parts.append(f"config.{dotted}{hint}")
    names = tuple(d for d, _ in unknown)
    raise ValueError(
        f"unknown config field(s) {', '.join(parts)}: set in the config file (or by the code that built the "
        f"config), where no code reads them, so their defaults would run instead. Fix: correct the name, or "
        f"declare a field added on purpose with config.{EXTRA_FIELDS} = {names!r}"
    )


def validate_config(config, extra_fields: Sequence[str] = ()) -> None:
    """Raises ``ValueError`` naming the first field of the wrong type or out of range, the expected
    type and the fix (``Fix: ... --config.batch_size=256``), or every field no code reads
    (:func:`check_fields`; ``extra_fields``: fields a caller's loop reads beyond
    :func:`default_config`, e.g. the tagging loop's). Names (dataset, encoder, weighting scheme, ...)
    are checked by the code that uses them, which lists the valid ones; the output writers and static
    weights are checked here."""
    check_fields(config, extra_fields)
    for field, kind, low in _FIELDS:
        value = _lookup(config, field)
        if value is _MISSING:
            continue
        if not _has_type(value, kind):
            article = "an" if kind == _INT else "a"
            if _parses(value, kind):
                fix = f"write {value} without quotes in the config file, or pass --config.{field}={value}"
            else:
                fix = f"pass {article} {kind}, e.g. --config.{field}={_example(field, kind, low)}"
            raise ValueError(
                f"config.{field} must be {article} {kind}, got {value!r} ({type(value).__name__}). Fix: {fix}"
            )
        if kind == _NUM and not math.isfinite(float(value)):
            raise ValueError(
                f"config.{field} must be a finite number, got {value!r}. "
                f"Fix: e.g. --config.{field}={_example(field, kind, low)}"
            )
        if low is not None:
            strict = field in _STRICTLY_POSITIVE
            if value < low or (strict and value <= low):
                raise ValueError(
                    f"config.{field} must be {'>' if strict else '>='} {low}, got {value!r}. "
                    f"Fix: e.g. --config.{field}={_example(field, kind, low)}"
                )
        if field in _AT_MOST and value > _AT_MOST[field]:
            raise ValueError(
                f"config.{field} must be <= {_AT_MOST[field]} (a decay factor; above 1 the learning rate grows), "
                f"got {value!r}. Fix: e.g. --config.{field}=0.85"
            )
    num_steps = _lookup(config, "num_steps")
    num_epochs = _lookup(config, "num_epochs")
    if num_epochs is not _MISSING and (num_steps is _MISSING or num_steps <= 0) and num_epochs < 1:
        raise ValueError(
            f"config.num_epochs must be >= 1 when config.num_steps <= 0, got num_epochs={num_epochs!r}. "
            "Fix: e.g. --config.num_epochs=10, or --config.num_steps=N to train N steps"
        )
    part = _lookup(config, "init_from.part")
    if part is not _MISSING and part not in ("shared", "all"):
        raise ValueError(
            f"config.init_from.part must be 'shared' or 'all', got {part!r}. "
            "Fix: --config.init_from.part=shared (the encoder only) or =all (every param the source has)"
        )
    _validate_plateau(config)
    _validate_selection_reference(config)
    _validate_static_weights(config)
    _validate_writers(config)


def _validate_plateau(config) -> None:
    factor = _lookup(config, "optimizer.plateau_factor")
    if factor is _MISSING or factor == 0:
        return
    if not 0 < factor < 1:
        raise ValueError(
            f"config.optimizer.plateau_factor must be in (0, 1) (0: no plateau schedule), got {factor!r}. "
            "Fix: e.g. --config.optimizer.plateau_factor=0.7"
        )
    every, rate = _lookup(config, "optimizer.decay_every_epochs"), _lookup(config, "optimizer.decay_rate")
    if every is not _MISSING and every > 0 and rate != 1.0:
        raise ValueError(
            "config.optimizer.plateau_factor and a staircase decay (decay_every_epochs, decay_rate) both change the "
            "learning rate. Fix: keep one, e.g. --config.optimizer.decay_every_epochs=0"
        )


def _validate_selection_reference(config) -> None:
    """A ``{task: number}`` mapping of finite, non-zero numbers; its names are checked against the
    tasks where they are known (the loop)."""
    reference = _lookup(config, "selection_reference")
    if reference is _MISSING or reference is None:
        return
    if not hasattr(reference, "items"):
        raise ValueError(
            f"config.selection_reference must map each task to its reference main metric, got {reference!r}. "
            'Fix: in the config file, c.selection_reference = {"mu": 0.0671, "alpha": 0.1814, ...}'
        )
    bad = {k: v for k, v in reference.items() if not (_has_type(v, _NUM) and math.isfinite(float(v)) and float(v) != 0)}
    if bad:
        raise ValueError(
            f"config.selection_reference must hold finite, non-zero numbers (the tasks' reference main metrics), "
            f"got {bad!r}. Fix: e.g. --config.selection_reference.{next(iter(bad))}=0.5"
        )


def _validate_static_weights(config) -> None:
    weights = _lookup(config, "weighting.hparams.weights")
    if _lookup(config, "weighting.name") != "static" or weights is _MISSING or weights is None:
        return
    values = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    bad = [w for w in values if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0]
    if bad:
        raise ValueError(
            f"config.weighting.hparams.weights must be finite numbers >= 0 (one per task), got {tuple(values)!r}. "
            "Fix: e.g. --config.weighting.hparams.weights=1,2"
        )


def writer_names(config) -> list[str]:
    """``config.writers`` as a list of names; ``--config.writers=jsonl,tensorboard`` arrives as the
    one-element tuple ``('jsonl,tensorboard',)``, so comma lists are split. Absent: the default's."""
    writers = config.writers if "writers" in config else default_config().writers
    items = [writers] if isinstance(writers, str) else list(writers)
    return [n.strip() for item in items for n in str(item).split(",") if n.strip()]


def _validate_writers(config) -> None:
    if _lookup(config, "writers") is _MISSING:
        return
    names = writer_names(config)
    unknown = [w for w in names if w not in WRITERS]
    if unknown or not names:
        raise ValueError(
            f"config.writers: unknown writer(s) {unknown or names}; valid: {', '.join(WRITERS)}. "
            "Fix: e.g. --config.writers=jsonl,tensorboard"
        )


def _parses(value, kind: str) -> bool:
    """True when ``value`` is a string that would be a valid ``kind`` without its quotes."""
    if not isinstance(value, str) or kind not in (_INT, _NUM):
        return False
    try:
        int(value) if kind == _INT else float(value)
    except ValueError:
        return False
    return True


def _example(field: str, kind: str, low) -> str:
    """The default config's value for ``field`` if it is a valid value, else a valid stand-in."""
    value = _lookup(default_config(), field)
    if value is not _MISSING and _has_type(value, kind):
        if low is None or value > low or (value == low and field not in _STRICTLY_POSITIVE):
            return str(value)
    return {_INT: str(max(1, low or 0)), _NUM: "0.001", _BOOL: "True", _STR: "NAME"}[kind]


def as_dict(config) -> dict[str, Any]:
    """The config as plain JSON-able data (for comparing two runs' configs)."""
    import json

    return json.loads(config.to_json_best_effort())


def differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """``['num_epochs: 20 -> 2', ...]``: the leaves where two config dicts differ. An empty list and an
    empty mapping are the same setting (nothing given): a field whose empty default changed type
    between versions (``selection_reference``: ``()`` then ``{}``) does not block a resume."""
    out = []
    for key in sorted(set(saved) | set(current), key=str):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b and not (empty_setting(a) and empty_setting(b)):
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
