r"""``jmtl.fit``: the training loop for your own Flax model and data, in one call.

    summary, state = jmtl.fit(MyModel(), tasks, train={"x": x, "price": y, ...},
                              validation=val_arrays, test=test_arrays, workdir="/tmp/run",
                              weighting="pcgrad", batch_size=128, num_epochs=10)

Everything the experiment scripts' loop has (:mod:`jmtl.training.loop`): checkpoints and exact
resume (re-running with the same workdir continues the run), best-validation selection, the
non-finite policy, metric records, plots, several seeds in one program, data parallelism. The
model follows the contract of :mod:`jmtl.training.contract` (checked on the first batch); the data
is in-memory arrays, any iterable of batch dicts, a factory ``seed -> iterable``, or with
``per_task_inputs=True`` one of those per task (LibMTL's ``multi_input``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np
import optax

from jmtl import data as data_lib
from jmtl import tasks as tasks_lib
from jmtl import weighting as weighting_lib
from jmtl.data.iterables import LabelCheck, ReplayIterator, call_factory, concatenate_batches, refuse_table
from jmtl.runs import identity
from jmtl.tasks import Task
from jmtl.training import builders, config_schema, contract, loop, parallel, warm_start
from jmtl.training import settings as settings_lib
from jmtl.training import step as step_lib

Data = Any  # Mapping of arrays | Iterable of batch dicts | Callable seed -> Iterable


def fit(
    model,
    tasks: Sequence[Task],
    train: Data,
    *,
    validation: Data,
    test: Data,
    workdir: str | Path,
    weighting: str | weighting_lib.WeightingTransform = "equal",
    weighting_kwargs: Optional[Mapping[str, Any]] = None,
    optimizer: optax.GradientTransformation | Mapping[str, Any] | None = None,
    batch_size: Optional[int] = None,
    num_epochs: Optional[int] = None,
    num_steps: Optional[int] = None,
    input_key: Optional[str] = None,
    step_config: Optional[step_lib.StepConfig] = None,
    per_task_inputs: bool = False,
    seed: int = 0,
    num_seeds: int = 1,
    name: str = "user_data",
    init_from: Any = None,
    **config_overrides: Any,
) -> loop.FitResult:
    """Trains ``model`` on ``tasks`` with jmtl's loop; returns the run summary and the final state,
    with the best-validation params beside them.

    Args:
      model: a Flax Linen module with ``__call__(x, *, train)`` returning ``{task name: output}``, its
        shared params under ``params['shared']`` (or what ``step_config.shared`` selects).
      tasks: the :class:`jmtl.Task` list (loss order; names match the model's outputs).
      train: the training data: a dict ``{entry: array}`` (shuffled each epoch by seed, batches of
        ``batch_size``); an iterable of batch dicts (a list, a loader; re-iterated each epoch); or a
        callable ``seed -> iterable`` / ``(seed, epoch) -> iterable``. With ``per_task_inputs``:
        ``{task name: one of those}``, each holding the input and that task's labels.
      validation: the model-selection split: a dict of arrays or a finite iterable of batches (per
        task with ``per_task_inputs``).
      test: the reported split, same form (pass ``test=validation`` if there is none: the reported
        numbers are then validation numbers).
      workdir: where the run writes; re-running with the same workdir resumes it.
      weighting: a scheme name (``jmtl.weighting.names()``) or a transform (``jmtl.weighting.get(...)``).
      weighting_kwargs: the scheme's hyperparameters, with a name.
      optimizer: an optax transform, or ``{name, learning_rate, ...}`` as ``config.optimizer``
        (default: Adam 1e-3). A transform's hyperparameters (what its closures hold: the learning
        rate, schedule settings, ...) are recorded in each checkpoint; a resume with other ones is
        refused, naming them.
      batch_size: examples per step (global; per task with ``per_task_inputs``). Required for
        arrays; for iterables, the batches' own size is used (and this is only recorded).
      num_epochs: the run's length in epochs (give this or ``num_steps``). An epoch of an iterable
        is one pass; ``num_epochs`` needs a sized one (``len``).
      num_steps: the run's length in steps (give this or ``num_epochs``).
      input_key: the batch entry holding the model input (default ``'x'``, as ``StepConfig``'s, or
        ``step_config.input_key``). A missing entry is named with the argument that set the key.
      step_config: the step's settings (``jmtl.StepConfig``: shared-param selector, Jacobian mode,
        mixed precision, ...).
      per_task_inputs: each task has its own data (see ``train``).
      seed: the first seed.
      num_seeds: seeds ``seed .. seed + num_seeds - 1`` train together in one program.
      name: the data's name in records and messages.
      init_from: a warm start (:mod:`jmtl.training.warm_start`): a workdir / checkpoints folder /
        params file path, or ``dict(path=..., part='shared' | 'all', freeze=False | True)``: the
        run's shared params (or all the source has) start from the source's, new tasks' heads fresh;
        frozen params get no update.
      **config_overrides: any other field of ``config_schema.default_config()`` (``eval_every_steps``,
        ``checkpoint_every_steps`` (default: by time, ``checkpoint_every_minutes=5``, and at the
        end), ``log_every_steps``, ``eval_batch_size``, ``parallel``, ``progress_bar``, ``writers``,
        ``nonfinite={'policy': 'skip'}``, ...).

    Returns:
      A ``jmtl.FitResult``, the pair ``(summary, state)`` (``summary, state = jmtl.fit(...)``) with
      attributes ``summary``, ``state``, ``best_params`` and ``best_state``:

      * ``summary``: what ``workdir/summary.json`` holds: final and best-validation metrics per task,
        ``selection`` (how the best evaluation is picked: the highest mean over tasks of each task's
        main validation metric, lower-is-better ones as ``-log``), ``checkpoint_time_s``, ...
      * ``state``: the final host train state.
      * ``best_params``: the params of the best-validation evaluation (also in
        ``workdir/best/<step>/``); with ``num_seeds > 1`` each seed's own best, stacked.

    Raises:
      FitInterrupted: Ctrl-C (SIGINT) during training, after a checkpoint was saved (a
        ``KeyboardInterrupt``; calling ``fit`` again with the same workdir resumes).
      FitTerminated: SIGTERM, after a checkpoint was saved (a ``SystemExit`` with code 143).
      jmtl.runs.workdir.ResumeIdentityError: the workdir's checkpoint was trained on other data,
        another optimizer or other tasks (each named).
    """
    _check_model(model)
    loop.check_workdir(workdir)  # before any work, as loop.train
    parallel.maybe_initialize_distributed()  # before anything touches a JAX backend (multi-host)
    run = experiment_from_data(
        model,
        tasks,
        train,
        validation=validation,
        test=test,
        weighting=weighting,
        weighting_kwargs=weighting_kwargs,
        optimizer=optimizer,
        batch_size=batch_size,
        num_epochs=num_epochs,
        num_steps=num_steps,
        input_key=input_key,
        step_config=step_config,
        per_task_inputs=per_task_inputs,
        seed=seed,
        num_seeds=num_seeds,
        name=name,
        init_from=init_from,
        **config_overrides,
    )
    return loop.run(run.experiment, run.config, workdir, on_stop="raise", settings=run.settings)


PerTaskEvaluator = loop.PerTaskEvaluator  # moved to loop (config runs use it too); the old name stays


# ---------------------------------------------------------------------------- the builder


@dataclasses.dataclass(frozen=True)
class UserExperiment:
    """What ``fit`` trains, as the config-driven trainer takes it (:func:`jmtl.training.loop.run`).

    Attributes:
      experiment: the model, tasks, weighting, optimizer, step settings, data iterators and evaluator.
      config: the run's config (``config_schema.default_config()`` with fit's arguments), saved in the
        workdir and compared on resume.
      settings: the loop's settings, built and checked once from ``config``.
    """

    experiment: loop.Experiment
    config: ml_collections.ConfigDict
    settings: settings_lib.LoopSettings


@dataclasses.dataclass
class _UserData:
    """fit's data, checked, in the loop's terms."""

    sources: dict  # {None | task name: training source} (a peeked one-shot iterator put back together)
    arrays_train: bool  # training data given as arrays (else iterables / factories)
    eval_splits: dict  # {None | task name: {split: arrays}}
    datasets: dict  # {None | task name: in-memory dataset} (arrays only)
    steps_per_epoch: int
    first_batch: dict  # {None | task name: first training batch}


def experiment_from_data(
    model,
    tasks: Sequence[Task],
    train: Data,
    *,
    validation: Data,
    test: Data,
    weighting: str | weighting_lib.WeightingTransform = "equal",
    weighting_kwargs: Optional[Mapping[str, Any]] = None,
    optimizer: optax.GradientTransformation | Mapping[str, Any] | None = None,
    batch_size: Optional[int] = None,
    num_epochs: Optional[int] = None,
    num_steps: Optional[int] = None,
    input_key: Optional[str] = None,
    step_config: Optional[step_lib.StepConfig] = None,
    per_task_inputs: bool = False,
    seed: int = 0,
    num_seeds: int = 1,
    name: str = "user_data",
    init_from: Any = None,
    **config_overrides: Any,
) -> UserExperiment:
    """Turns :func:`fit`'s arguments (see there) into what the config-driven trainer takes: the
    :class:`~jmtl.training.loop.Experiment` (model, tasks, data iterators, evaluator), the run's
    config and its :class:`~jmtl.training.settings.LoopSettings`. Every check runs here, before
    anything is built or written: a mistake is named with its fix, not raised from inside a step."""
    _check_model(model)
    tasks = tuple(tasks)
    if not tasks or not all(isinstance(t, Task) for t in tasks):
        raise TypeError("tasks must be a non-empty sequence of jmtl.Task, e.g. [jmtl.Task('price', 'regression', 1)]")
    for split, source in (("train", train), ("validation", validation), ("test", test)):
        refuse_table(source, split)
        if per_task_inputs and isinstance(source, Mapping):
            for k, v in source.items():
                refuse_table(v, f"{split} ({k})")
    step_cfg = _step_config(step_config, input_key, per_task_inputs)
    key_source = _input_key_source(step_config, input_key)
    _check_layout(train, tasks, per_task_inputs)
    if (num_epochs is None) == (num_steps is None):
        raise ValueError("give exactly one of num_epochs and num_steps")
    config = _config(config_overrides, init_from, seed, num_seeds, num_epochs, num_steps)
    if num_seeds > 1 and _is_one_shot(train, tasks, per_task_inputs):
        raise ValueError(
            "num_seeds > 1 needs data each seed can read: arrays, a re-iterable, or a callable seed -> "
            "iterable; a one-shot iterator can feed one seed only"
        )
    data = _user_data(
        train,
        validation,
        test,
        tasks,
        config,
        input_key=step_cfg.input_key,
        key_source=key_source,
        per_task_inputs=per_task_inputs,
        batch_size=batch_size,
        name=name,
        num_epochs=num_epochs,
        num_steps=num_steps,
        seed=seed,
    )

    weighting_tx = (
        builders.weighting(
            weighting,
            dict(weighting_kwargs or {}),
            tasks,
            data.steps_per_epoch,
            learning_rate=_learning_rate(optimizer),
        )
        if isinstance(weighting, str)
        else weighting
    )
    if weighting_kwargs and not isinstance(weighting, str):
        raise ValueError("weighting_kwargs go with a weighting name; a transform already has its hyperparameters")
    if isinstance(weighting, str):
        config.weighting = config_schema.method_config(weighting)
        config.weighting.hparams.update(dict(weighting_kwargs or {}))
    else:
        config.weighting.name = f"custom:{getattr(weighting, 'name', type(weighting).__name__)}"
    config.weighting.jacobian_mode = step_cfg.jacobian_mode
    tx = _optimizer(optimizer, config, data.steps_per_epoch)
    meta_split = builders.meta_split(config, weighting_tx)
    if weighting_tx.requires == weighting_lib.BILEVEL and (not data.arrays_train or per_task_inputs):
        raise ValueError(
            f"the bilevel scheme {weighting!r} needs a second (meta) batch each step, which fit() draws "
            "from array data only: pass train/validation as arrays (one input for all tasks)"
        )

    # The contract (batch entries, label dtypes and ranges, outputs vs tasks, shared params) before
    # anything is built: a mistake is named here, not as a traceback from init.
    first_batch = data.first_batch
    probe = {t.name: first_batch[t.name] for t in tasks} if per_task_inputs else first_batch[None]
    contract.check(model, tasks, probe, config=step_cfg, weighting=weighting_tx)
    example = first_batch[tasks[0].name] if per_task_inputs else first_batch[None]
    example_input = jax.tree.map(lambda v: np.asarray(v)[:1], example[step_cfg.input_key])

    config.dataset.name = name
    config.dataset.kwargs = {
        "fingerprint": _fingerprint(data.sources, data.eval_splits) if data.arrays_train else "iterable"
    }
    config.model.encoder = f"user:{type(model).__module__}.{type(model).__qualname__}"
    config.model.arch = "user"
    settings = settings_lib.LoopSettings.from_config(config)  # validates the whole config
    run_identity = _identity(
        data.sources if data.arrays_train else first_batch,
        data.arrays_train,
        data.eval_splits,
        optimizer,
        weighting,
    )
    experiment = loop.Experiment(
        name=name,
        tasks=tasks,
        model=model,
        weighting=weighting_tx,
        optimizer=tx,
        step_config=step_cfg,
        example_input=example_input,
        steps_per_epoch=data.steps_per_epoch,
        train_iterator=functools.partial(
            _train_iterator,
            data,
            tasks,
            per_task_inputs,
            settings.batch_size,
            meta_split,
            meta_batch_size=int(config.weighting.get("meta_batch_size", 0)),
        ),
        make_evaluator=functools.partial(
            _make_evaluator, data.eval_splits, tasks, step_cfg, model, settings.eval_batch_size, per_task_inputs, name
        ),
        identity=run_identity,
    )
    return UserExperiment(experiment, config, settings)


def _check_model(model) -> None:
    if isinstance(model, type):
        raise TypeError(f"model is the class {model.__name__}; pass an instance: fit({model.__name__}(), ...)")
    if not hasattr(model, "init") or not hasattr(model, "apply"):
        raise TypeError(
            f"model must be a Flax Linen module (with init/apply), got {type(model).__name__}; for "
            "other JAX models write your own step around jmtl.mtl_value_and_grad"
        )


def _config(config_overrides: Mapping, init_from, seed: int, num_seeds: int, num_epochs, num_steps):
    """``default_config()`` with fit's config-field arguments."""
    config = config_schema.default_config()
    unknown = sorted(set(config_overrides) - set(config))
    if unknown:
        raise TypeError(f"fit() got unknown argument(s) {unknown}; config fields: {sorted(config)}")
    for key, value in config_overrides.items():
        if isinstance(value, Mapping):
            _update_known(config[key], value, key)
        else:
            config[key] = value
    spec = warm_start.InitFrom.parse(init_from)  # a bad field is named here, before any work
    if spec is not None:
        config.init_from.update(dataclasses.asdict(spec))
    config.seed, config.num_seeds = seed, num_seeds
    config.num_steps = int(num_steps) if num_steps is not None else -1
    config.num_epochs = int(num_epochs) if num_epochs is not None else 1
    return config


def _user_data(
    train: Data,
    validation: Data,
    test: Data,
    tasks: Sequence[Task],
    config: ml_collections.ConfigDict,
    *,
    input_key: str,
    key_source: str,
    per_task_inputs: bool,
    batch_size: Optional[int],
    name: str,
    num_epochs: Optional[int],
    num_steps: Optional[int],
    seed: int,
) -> _UserData:
    """The training sources, the evaluation arrays and the epoch length, checked (label masks, the
    input entry); sets ``config.batch_size`` (an iterable's batches' own size when not given)."""
    sources = {t.name: train[t.name] for t in tasks} if per_task_inputs else {None: train}
    arrays_train = all(isinstance(s, Mapping) for s in sources.values())
    if arrays_train and batch_size is None:
        raise ValueError("batch_size is required when the training data is arrays")
    config.batch_size = int(batch_size) if batch_size is not None else config.batch_size

    eval_splits = _eval_arrays(validation, test, tasks, per_task_inputs)
    for key, splits in eval_splits.items():  # label masks (the check every data path runs) and the input entry
        for split, arrays in splits.items():
            tasks_lib.check_masks(
                [t for t in tasks if key is None or t.name == key],
                arrays,
                f"the {split} split{f' of task {key!r}' if key else ''}",
            )
            _check_input_key(arrays, input_key, key_source, f"the {split} data" + (f" of task {key!r}" if key else ""))
    if arrays_train:
        for key, src in sources.items():
            _check_input_key(src, input_key, key_source, "the training data" + (f" of task {key!r}" if key else ""))
    datasets = {}
    if arrays_train:
        datasets = {
            key: _dataset(
                f"{name}/{key}" if key else name,
                src,
                eval_splits[key],
                tasks if key is None else [t for t in tasks if t.name == key],
                input_key,
            )
            for key, src in sources.items()
        }
        steps_per_epoch = max(d.steps_per_epoch(config.batch_size) for d in datasets.values())
        if steps_per_epoch == 0:
            raise ValueError(f"batch_size {config.batch_size} is larger than the training set: no full batch per epoch")
        first_batch = {k: jax.tree.map(lambda v: v[:1], d.arrays("train")) for k, d in datasets.items()}
    else:
        sources, first_batch, sizes = _peek(sources, seed)
        for key, batch in first_batch.items():
            _check_input_key(
                batch, input_key, key_source, "the first training batch" + (f" of task {key!r}" if key else "")
            )
        steps_per_epoch = _steps_per_epoch(sizes, num_epochs, num_steps)
        if batch_size is None:  # recorded (config.json) and checked against the device count
            first = next(iter(first_batch.values()))
            config.batch_size = len(jax.tree.leaves(first.get(input_key, first))[0])
    return _UserData(sources, arrays_train, eval_splits, datasets, steps_per_epoch, first_batch)


def _train_iterator(
    data: _UserData, tasks, per_task_inputs: bool, batch_size: int, meta_split, seed: int, meta_batch_size: int = 0
):
    """Seed ``seed``'s resumable training batches (the loop's ``Experiment.train_iterator``)."""
    if data.arrays_train and not per_task_inputs:
        return loop.dataset_batches(data.datasets[None], batch_size, seed, meta_split, meta_batch_size)
    if data.arrays_train:
        its = {k: loop.dataset_batches(d, batch_size, seed) for k, d in data.datasets.items()}
    else:
        its = {
            k: ReplayIterator(
                src,
                seed,
                name=f"train{f' ({k})' if k else ''}",
                check=LabelCheck([t for t in tasks if k is None or t.name == k], f"train{f' ({k})' if k else ''}"),
            )
            for k, src in data.sources.items()
        }
    return data_lib.PerTaskBatches(its) if per_task_inputs else its[None]


def _make_evaluator(
    eval_splits, tasks, step_cfg, model, eval_batch_size: int, per_task_inputs: bool, name: str, driver, seed_axis
):
    """The loop's ``Experiment.make_evaluator``: in-memory evaluation (each task on its own data with
    per-task inputs)."""
    if not per_task_inputs:
        return loop.InMemoryEvaluator(
            eval_splits[None], tasks, step_cfg, model, eval_batch_size, driver, seed_axis, name=name
        )
    return PerTaskEvaluator(
        {
            t.name: loop.InMemoryEvaluator(
                eval_splits[t.name],
                (t,),
                step_cfg,
                model,
                eval_batch_size,
                driver,
                seed_axis,
                name=f"{name} ({t.name})",
            )
            for t in tasks
        },
        tasks,
    )


# ---------------------------------------------------------------------------- helpers


def _step_config(step_config, input_key, per_task_inputs) -> step_lib.StepConfig:
    cfg = step_config or step_lib.StepConfig(input_key=input_key or "x")
    if step_config is not None and input_key is not None and input_key != step_config.input_key:
        raise ValueError(f"input_key={input_key!r} but step_config.input_key={step_config.input_key!r}; give one")
    if step_config is not None and step_config.per_task_inputs and not per_task_inputs:
        raise ValueError(
            "step_config has per_task_inputs=True: pass per_task_inputs=True to fit() too (the data "
            "is then {task name: data})"
        )
    if per_task_inputs and not cfg.per_task_inputs:
        cfg = dataclasses.replace(cfg, per_task_inputs=True)
    return cfg


def _input_key_source(step_config, input_key) -> str:
    """Which argument set the input key, for messages."""
    if input_key is not None:
        return f"input_key={input_key!r} given to fit"
    if step_config is not None:
        default = step_lib.StepConfig().input_key
        how = " (StepConfig's default)" if step_config.input_key == default else ""
        return f"step_config.input_key={step_config.input_key!r}{how}"
    return f"fit's default input_key={step_lib.StepConfig().input_key!r}"


def _check_input_key(arrays: Mapping, key: str, source: str, where: str) -> None:
    if isinstance(arrays, Mapping) and key not in arrays:
        raise ValueError(
            f"{where} has no entry {key!r} for the model input (the key set by {source}); its entries: "
            f"{sorted(map(str, arrays))}. Fix: pass input_key='<the entry holding the input>' to fit"
        )


def _identity(train_parts: Mapping, arrays_train: bool, eval_splits: Mapping, optimizer, weighting) -> dict:
    """What the checkpoint must have been trained on (beyond the config), in words: the data (the
    training arrays, or the first batch of an iterable: the rest cannot be read without consuming it),
    the concatenated validation / test arrays, a custom optimizer's and weighting's hyperparameters."""

    def fp(tree) -> str:
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return identity.array_fingerprint({jax.tree_util.keystr(p): v for p, v in leaves})

    out = {}
    for key, part in train_parts.items():
        what = "the training arrays" if arrays_train else "the first training batch"
        out[what + (f" of task {key!r}" if key else "")] = fp(part)
    for key, splits in eval_splits.items():
        for split, arrays in splits.items():
            out[f"the {split} arrays" + (f" of task {key!r}" if key else "")] = fp(arrays)
    if optimizer is not None and not isinstance(optimizer, Mapping):
        out["the optimizer (a custom optax transform)"] = identity.describe_transform(optimizer)
    if not isinstance(weighting, str):
        out["the weighting transform"] = identity.describe_transform(weighting)
    return out


def _check_layout(train, tasks, per_task_inputs: bool) -> None:
    """Per-task data must be said (``per_task_inputs=True``), never guessed from the keys."""
    names = {t.name for t in tasks}
    keyed_by_task = (
        isinstance(train, Mapping) and set(train) == names and all(not hasattr(v, "shape") for v in train.values())
    )
    if per_task_inputs and not (isinstance(train, Mapping) and set(train) == names):
        got = sorted(train) if isinstance(train, Mapping) else type(train).__name__
        raise ValueError(
            f"per_task_inputs=True: train must be {{task name: that task's data}} for tasks {sorted(names)}, got {got}"
        )
    if not per_task_inputs and keyed_by_task:
        raise ValueError(
            f"train is keyed by the task names {sorted(names)}: if each task has its own data, pass "
            "per_task_inputs=True; else give one dict {input key: array, label key: array, ...}"
        )


def _is_one_shot(train, tasks, per_task_inputs: bool) -> bool:
    sources = [train[t.name] for t in tasks] if per_task_inputs else [train]
    return any(not callable(s) and not isinstance(s, Mapping) and iter(s) is s for s in sources)


def _eval_arrays(validation, test, tasks, per_task_inputs: bool) -> dict:
    """``{None: {split: arrays}}``, or ``{task name: {split: arrays}}`` with per-task inputs."""
    out: dict = {}
    for split, source in ((loop.VALIDATION, validation), (loop.TEST, test)):
        if per_task_inputs:
            if not isinstance(source, Mapping) or set(source) != {t.name for t in tasks}:
                raise ValueError(f"per_task_inputs=True: {split} must be {{task name: that task's data}}")
            for t in tasks:
                out.setdefault(t.name, {})[split] = concatenate_batches(source[t.name], f"{split} ({t.name})")
        else:
            out.setdefault(None, {})[split] = concatenate_batches(source, split)
    return out


def _dataset(name: str, train_arrays: Mapping, eval_splits: Mapping, tasks: Sequence[Task], input_key: str):
    """An in-memory dataset (shuffled, resumable batches; checked labels) over the three splits."""
    splits = {"train": concatenate_batches(train_arrays, "train"), **eval_splits}
    labels = {}
    for t in tasks:
        kind = t.kind if t.kind in data_lib.pipeline.ARRAY_LABEL_KINDS else "custom"
        labels[t.label_key] = {"kind": kind, "num_classes": t.num_outputs} if kind == "classification" else kind
    keys = {input_key, *labels, *(t.mask_key for t in tasks)}
    splits = {s: {k: v for k, v in cols.items() if k in keys} for s, cols in splits.items()}
    return data_lib.from_arrays(name, splits, input_key=input_key, labels=labels)


def _peek(sources: Mapping, seed: int) -> tuple[dict, dict, list[int]]:
    """Each source's first batch (to initialise the model), without losing it from a one-shot
    iterator, and the length of each sized one (batches per epoch)."""
    out, first, sizes = {}, {}, []
    for key, src in sources.items():
        probe = call_factory(src, seed, 0) if callable(src) else src
        if hasattr(probe, "__len__"):
            sizes.append(len(probe))
        if not callable(src) and iter(src) is src:  # a generator: put the batch back in front
            batch = next(src)
            first[key], out[key] = batch, itertools.chain([batch], src)
        else:
            first[key], out[key] = next(iter(probe)), src
        if not isinstance(first[key], Mapping):
            raise TypeError(
                f"the training data yielded a {type(first[key]).__name__}; each batch must be a dict "
                "{entry name: array}"
            )
    return out, first, sizes


def _steps_per_epoch(sizes: Sequence[int], num_epochs, num_steps) -> int:
    """Batches per epoch: the longest sized source's; an unsized one needs ``num_steps``."""
    if sizes:
        return max(1, max(sizes))
    if num_epochs is not None:
        raise ValueError("num_epochs needs training data with a length (len()); for an unsized iterable give num_steps")
    return max(1, int(num_steps))


def _default_learning_rate() -> float:
    return float(config_schema.default_config().optimizer.learning_rate)


def _learning_rate(optimizer) -> Optional[float]:
    if optimizer is None:
        return _default_learning_rate()
    if isinstance(optimizer, Mapping):  # the field left out: the schema's default
        return float(optimizer["learning_rate"] if "learning_rate" in optimizer else _default_learning_rate())
    return None


def _optimizer(optimizer, config, steps_per_epoch: int) -> optax.GradientTransformation:
    if optimizer is None or isinstance(optimizer, Mapping):
        _update_known(config.optimizer, dict(optimizer or {}), "optimizer")
        return builders.optimizer(config.optimizer, steps_per_epoch)
    if not hasattr(optimizer, "init") or not hasattr(optimizer, "update"):
        raise TypeError(f"optimizer must be an optax GradientTransformation or a dict, got {type(optimizer).__name__}")
    config.optimizer.name = "custom"
    return optimizer


def _update_known(node, values: Mapping[str, Any], where: str) -> None:
    """``node.update(values)``, refusing keys the config does not have (a typo would be ignored)."""
    unknown = sorted(set(values) - set(node))
    if unknown:
        raise ValueError(f"{where} has no field(s) {unknown}; its fields: {sorted(node)}")
    node.update(dict(values))


def _fingerprint(sources: Mapping, eval_splits: Mapping) -> str:
    """sha256 of every array (train, validation, test): a resumed run must see the same data."""
    h = hashlib.sha256()
    trees = [sources, {str(k): v for k, v in eval_splits.items()}]
    for tree in trees:
        for path, leaf in sorted(
            jax.tree_util.tree_flatten_with_path({str(k): v for k, v in tree.items()})[0],
            key=lambda pl: jax.tree_util.keystr(pl[0]),
        ):
            a = np.ascontiguousarray(np.asarray(leaf))
            h.update(jax.tree_util.keystr(path).encode())
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]
