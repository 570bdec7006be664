r"""The train loop every experiment runs: ``train(config, workdir) -> (summary, state)``.

``experiments/train.py`` (the in-memory datasets), ``experiments/ablate.py`` (one call per grid cell)
and ``experiments/hierarchical_tagging.py`` (CoNLL taggers, through :func:`run` with their own
:class:`Experiment`) all train here, with the same optimizer builder, evaluation schedule,
non-finite policy, checkpoints and metric records.

A run, in order (each a function below):

1. :func:`train` builds the loop's settings from the config once
   (:class:`~jmtl.training.settings.LoopSettings`: validated, nothing is written on a bad field; the
   trainer reads them, not the config) and the :class:`Experiment` (data, tasks, model, weighting,
   optimizer, step settings, evaluator) with :func:`build_experiment`;
2. :func:`run` sets up the compiled step and the seed axis (:class:`SeedAxis`), the workdir, the
   checkpointer and the data iterators, then resumes from the latest checkpoint if there is one
   (``_Trainer.resume``);
3. ``_Trainer.loop`` runs the steps and, after each, the periodic actions due
   (:func:`cadence_actions`): each step's finiteness is checked one step late
   (``_Trainer.check_finite``), train records every ``log_every_steps`` (with the task-relation
   matrix of a model that has one, ``mtl.relation_matrix``), an evaluation every
   ``eval_every_steps`` (``_Trainer.evaluate``: per seed, best-validation selection on the
   evaluator's score; the best evaluation's params are kept) and a checkpoint every
   ``checkpoint_every_steps`` or, by default, at most every ``checkpoint_every_minutes`` (and at the
   end); SIGTERM / SIGINT save, then return (the command line) or raise :class:`FitInterrupted` /
   :class:`FitTerminated` (``jmtl.fit``);
4. ``_Trainer.summary`` writes ``summary.json``; then the end-of-run action draws the plots.

Workdir outputs: ``config.json``, ``train_log.jsonl`` (losses and task weights every
``log_every_steps``), ``metrics.jsonl`` (one record per evaluation), ``summary.json``, ``plots/*.png``,
orbax checkpoints under ``checkpoints/`` and the best-validation params under ``best/``. Re-running
with the same workdir resumes from the latest checkpoint (data order included), after checking that
it is the same run: each checkpoint carries its config and identity (data fingerprints, custom
optimizer hyperparameters, tasks: :mod:`jmtl.runs.identity`), so a removed or damaged
``config.json`` cannot let a changed run through.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Protocol, Sequence

import jax
import numpy as np
from tqdm import tqdm

from jmtl import data as data_lib
from jmtl import plotting
from jmtl import tasks as tasks_lib
from jmtl.errors import NonFiniteLossError
from jmtl.metrics import mtl as mtl_metrics
from jmtl.models import mtl
from jmtl.runs import checkpoint, identity, metric_writers
from jmtl.runs import workdir as workdir_lib
from jmtl.tasks import Task
from jmtl.training import (
    builders,
    config_schema,
    contract,
    evaluate,
    packing,
    parallel,
    plateau,
    warm_start,
)
from jmtl.training import seeds as seeds_lib
from jmtl.training import settings as settings_lib
from jmtl.training import step as step_lib
from jmtl.training.state import TrainState

PyTree = Any
# A run's splits: model selection looks at the first, the reported numbers come from the second.
VALIDATION, TEST = "validation", "test"


# How the best validation evaluation is picked (InMemoryEvaluator.score = evaluate.selection_score).
SELECTION_RULE = (
    "the evaluation with the highest validation score, the mean over tasks of each task's main "
    "metric, lower-is-better metrics (MSE, error) entered as -log(metric) so tasks on different "
    "scales count by relative change; picked per seed"
)


class _Stopped:
    """What the library exceptions of a stopped run carry."""

    def _setup(self, signal_name: str, step: int, workdir: Path):
        self.signal, self.step, self.workdir = signal_name, step, Path(workdir)
        self.message = (
            f"jmtl.fit stopped by {signal_name} after step {step}: a checkpoint of that step is in "
            f"{self.workdir / 'checkpoints'}. Resume by calling jmtl.fit again with the same arguments "
            f"and workdir={str(self.workdir)!r}"
        )


class FitInterrupted(_Stopped, KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped ``jmtl.fit``; a checkpoint was saved first. A ``KeyboardInterrupt``, so a
    script looping over several fits stops as at any Ctrl-C. Attributes: ``signal``, ``step``
    (the step checkpointed), ``workdir``, ``message``."""

    def __init__(self, signal_name: str, step: int, workdir: Path):
        self._setup(signal_name, step, workdir)
        super().__init__(self.message)


class FitTerminated(_Stopped, SystemExit):
    """SIGTERM (a scheduler's preemption) stopped ``jmtl.fit``; a checkpoint was saved first. A
    ``SystemExit`` with code 143 (128 + SIGTERM, what the signal's default action gives), so
    ``except Exception`` does not swallow it and an uncaught one ends the process as SIGTERM would
    have, after the message is printed to stderr. Attributes as :class:`FitInterrupted`."""

    def __init__(self, signal_name: str, step: int, workdir: Path):
        self._setup(signal_name, step, workdir)
        super().__init__(128 + signal.SIGTERM)

    def __str__(self) -> str:
        return self.message


class FitResult(tuple):
    """What ``loop.run`` / ``jmtl.fit`` return: the pair ``(summary, state)`` (so ``summary, state =
    jmtl.fit(...)`` unpacks as before) with the best-validation params beside it.

    Attributes:
      summary: the run summary (``summary.json``).
      state: the final host train state.
      best_params: the params of the best validation evaluation (``summary['best_validation']``; a
        leading seed axis with several seeds, each seed's own best), or None when unknown (a run
        resumed from a checkpoint written before best params were kept, with no better evaluation
        since). Also saved in ``<workdir>/best/<step>/`` (orbax; ``state`` item).
    """

    def __new__(cls, summary: dict, state: Any, best_params: Any = None):
        self = super().__new__(cls, (summary, state))
        self.best_params = best_params
        return self

    @property
    def summary(self) -> dict:
        return self[0]

    @property
    def state(self) -> Any:
        return self[1]

    @property
    def best_state(self) -> Any:
        """``state`` with the best-validation params (``state._replace(params=best_params)``), or None."""
        return None if self.best_params is None else self[1]._replace(params=self.best_params)


# ---------------------------------------------------------------------------- what the loop trains


class Evaluator(Protocol):
    """Scores params on the evaluation splits.

    ``__call__(params, splits)`` -> one ``{split: {task: {metric: value}}}`` per seed (``params``
    carry a leading seed axis when several seeds train together); ``score(validation)`` -> the
    scalar (higher is better) that picks each seed's best evaluation.
    """

    def __call__(self, params: PyTree, splits: Sequence[str]) -> list[dict]: ...

    def score(self, validation: dict) -> float: ...


@dataclasses.dataclass
class Experiment:
    """Everything the loop needs that depends on the data and the model.

    Attributes:
      name: the dataset's name (messages, summary).
      tasks: the tasks, in the order of the step's loss vector.
      model, weighting, optimizer, step_config: the train step's parts (``step.make_train_step``).
      example_input: one input batch (``model.init``).
      steps_per_epoch: steps of one epoch (the default eval period; ``epoch`` in records).
      train_iterator: ``seed -> iterator`` of training batches with ``get_state()`` /
        ``set_state(state)`` (JSON), one per seed (stacked by :class:`SeedAxis`).
      make_evaluator: ``(driver, seed_axis) -> Evaluator``.
      test_every_eval: False: the test split is scored only when some seed's validation score
        improved (the reported numbers are the best-validation evaluation's, so nothing is lost).
      interval_train_stats: each metrics record also gets the mean training loss and the sum of the
        task weights over the steps since the previous evaluation, and their wall time (per-epoch
        records of the tagging experiments).
      on_eval: called with each metrics record (on the main process), e.g. to print a line.
      plots: draw ``plots/*.png`` at the end.
      metric_scale: ``{task: factor}`` from a regression label's stored units to the units its
        results are reported in (QM9: train std x meV/eV factor; the dataset's ``metric_scale``), so
        ``selection_reference`` is read in the reported units. None: the stored units.
      identity: what the run trains on that the config does not pin down, ``{what, in words: value}``
        (data fingerprints, a custom optimizer's hyperparameters; :mod:`jmtl.runs.identity`).
        Stored in every checkpoint with the tasks; a resume with other values is refused, naming them.
    """

    name: str
    tasks: Sequence[Task]
    model: Any
    weighting: Any
    optimizer: Any
    step_config: step_lib.StepConfig
    example_input: Any
    steps_per_epoch: int
    train_iterator: Callable[[int], Iterator[dict]]
    make_evaluator: Callable[[parallel.Driver, "SeedAxis"], Evaluator]
    test_every_eval: bool = True
    interval_train_stats: bool = False
    on_eval: Optional[Callable[[dict], None]] = None
    plots: bool = True
    identity: Optional[dict] = None
    metric_scale: Optional[Mapping[str, float]] = None


class InMemoryEvaluator:
    """The default evaluator: mean task metrics over whole splits held in memory, data-parallel;
    selection on ``evaluate.selection_score``.

    Args:
      arrays: ``{split: {entry: array}}`` for the validation and test splits (the input and labels).
      tasks: the tasks to score (a subset of the model's outputs is fine: per-task evaluation).
      step_config, model: as in the train step.
      eval_batch_size: examples per evaluation batch (rounded up to a multiple of the devices).
      driver, seed_axis: how the run places data and stacks seeds.
      name: the data's name (messages).
    """

    def __init__(
        self,
        arrays: dict,
        tasks: Sequence[Task],
        step_config,
        model,
        eval_batch_size: int,
        driver: parallel.Driver,
        seed_axis: "SeedAxis",
        name: str = "dataset",
    ):
        self.tasks, self.driver, self.batch_size = tasks, driver, eval_batch_size
        self.arrays = {split: arrays[split] for split in (VALIDATION, TEST)}
        for split, split_arrays in self.arrays.items():
            tasks_lib.check_labels(tasks, split_arrays, where=f"{name} {split} split")
        make_eval = lambda ax: evaluate.make_eval_step(model, tasks, step_config, axis_name=ax)
        self.eval_step = driver.compile_eval(seed_axis.wrap_eval(make_eval))
        self.seed_axis = seed_axis
        self.predict = evaluate.make_predict(model, step_config) if any(t.split_metrics for t in tasks) else None

    def __call__(self, params, splits):
        results = {
            split: evaluate.evaluate(
                self.eval_step,
                params,
                self.arrays[split],
                self.tasks,
                driver=self.driver,
                batch_size=self.batch_size,
            )
            for split in splits
        }
        per_seed = self.seed_axis.per_seed_results(results)
        if self.predict is not None:
            # Split-level metrics (ROC AUC of binary tasks) from the outputs gathered over each split.
            host = self.driver.unreplicate(params)
            for i, res in enumerate(per_seed):
                seed_params = jax.tree.map(lambda x: x[i], host) if self.seed_axis.stacked else host
                for split in splits:
                    extra = evaluate.predict_split_metrics(
                        self.predict, seed_params, self.arrays[split], self.tasks, batch_size=self.batch_size
                    )
                    for task, metrics in extra.items():
                        res[split][task].update(metrics)
        return per_seed

    selection = SELECTION_RULE

    def score(self, validation):
        return evaluate.selection_score(validation, self.tasks)


class PerTaskEvaluator:
    """Each task scored on its own validation / test data (``per_task_inputs``); selection on all."""

    selection = SELECTION_RULE

    def __init__(self, evaluators: Mapping[str, InMemoryEvaluator], tasks: Sequence[Task]):
        self.evaluators, self.tasks = dict(evaluators), tuple(tasks)

    def __call__(self, params, splits):
        merged = None
        for evaluator in self.evaluators.values():
            per_seed = evaluator(params, splits)
            if merged is None:
                merged = per_seed
            else:
                for into, res in zip(merged, per_seed):
                    for split in splits:
                        into[split].update(res[split])
        return merged

    def score(self, validation):
        return evaluate.selection_score(validation, self.tasks)


def dataset_identity(dataset) -> dict:
    """Fingerprints of a dataset's three splits (``{"the train split's examples": sha, ...}``): the
    raw arrays as read (before the input transform), so files changed under the same ``data_dir``
    (MNIST swapped for Fashion-MNIST) are a different run. ~0.2 s for MultiMNIST's 70 MB of pixels."""
    out = {}
    for split in ("train", VALIDATION, TEST):
        raw = dataset._raw_split(split) if hasattr(dataset, "_raw_split") else dataset.arrays(split)
        out[f"the {split} split's examples"] = identity.array_fingerprint(raw)
    return out


def build_experiment(config) -> Experiment:
    """The :class:`Experiment` of an in-memory dataset config (``jmtl.data.load``): the path a config
    takes to the step is ``builders.model`` / ``builders.weighting_from_config`` (the weighting name
    and hyperparameters) / ``builders.optimizer`` / ``builders.step_config``."""
    dataset = data_lib.load(
        config.dataset.name,
        data_dir=config.dataset.data_dir or None,
        cache_dir=config.dataset.cache_dir or None,
        **dict(config.dataset.kwargs),
    )
    if getattr(dataset, "per_task_inputs", False):
        return _per_task_experiment(config, dataset)
    spec = dataset.spec
    tasks = tasks_lib.tasks_from_config(config.tasks.to_dict(), spec)
    steps_per_epoch = dataset.steps_per_epoch(config.batch_size)
    model = builders.model(config, tasks)
    weighting = builders.weighting_from_config(config, tasks, steps_per_epoch)
    optimizer = builders.optimizer(config.optimizer, steps_per_epoch)
    step_cfg = builders.step_config(config, model, spec.input_key, spec.input_transform)
    meta_split = builders.meta_split(config, weighting)

    return Experiment(
        name=config.dataset.name,
        tasks=tasks,
        model=model,
        weighting=weighting,
        optimizer=optimizer,
        step_config=step_cfg,
        example_input=np.zeros((1,) + tuple(spec.input_shape), np.float32),
        steps_per_epoch=steps_per_epoch,
        train_iterator=lambda seed: dataset_batches(
            dataset, config.batch_size, seed, meta_split, config.weighting.get("meta_batch_size", 0)
        ),
        make_evaluator=lambda driver, axis: InMemoryEvaluator(
            {split: dataset.arrays(split) for split in (VALIDATION, TEST)},
            tasks,
            step_cfg,
            model,
            config.eval_batch_size,
            driver,
            axis,
            name=config.dataset.name,
        ),
        identity=dataset_identity(dataset),
        metric_scale=getattr(dataset, "metric_scale", None),
    )


def _per_task_experiment(config, dataset) -> Experiment:
    """The :class:`Experiment` of a per-task-input dataset (``dataset.tasks[label]``: each task's own
    :class:`~jmtl.data.MTLDataset`, e.g. Office-31's domains): LibMTL's ``multi_input``, as
    ``jmtl.fit(per_task_inputs=True)`` trains it. Each step takes one batch of ``config.batch_size``
    from every task's data; an epoch is the longest task's batches (shorter tasks cycle through theirs,
    each reshuffled per epoch); each task is scored on its own validation and test data."""
    spec = dataset.spec
    tasks = tasks_lib.tasks_from_config(config.tasks.to_dict(), spec)
    per_task = {t.name: dataset.tasks[t.label_key] for t in tasks}
    steps_per_epoch = max(d.steps_per_epoch(config.batch_size) for d in per_task.values())
    model = builders.model(config, tasks)
    weighting = builders.weighting_from_config(config, tasks, steps_per_epoch)
    if builders.meta_split(config, weighting):
        raise ValueError(
            f"the bilevel scheme {config.weighting.name!r} needs one input batch shared by all tasks "
            f"for its meta step; {config.dataset.name!r} has per-task inputs. Fix: another weighting"
        )
    optimizer = builders.optimizer(config.optimizer, steps_per_epoch)
    step_cfg = dataclasses.replace(
        builders.step_config(config, model, spec.input_key, spec.input_transform), per_task_inputs=True
    )

    def train_iterator(seed: int):
        return data_lib.PerTaskBatches(
            {name: dataset_batches(d, config.batch_size, seed) for name, d in per_task.items()}
        )

    def make_evaluator(driver, axis):
        return PerTaskEvaluator(
            {
                t.name: InMemoryEvaluator(
                    {split: per_task[t.name].arrays(split) for split in (VALIDATION, TEST)},
                    (t,),
                    step_cfg,
                    model,
                    config.eval_batch_size,
                    driver,
                    axis,
                    name=f"{config.dataset.name} ({t.name})",
                )
                for t in tasks
            },
            tasks,
        )

    return Experiment(
        name=config.dataset.name,
        tasks=tasks,
        model=model,
        weighting=weighting,
        optimizer=optimizer,
        step_config=step_cfg,
        example_input=np.zeros((1,) + tuple(spec.input_shape), np.float32),
        steps_per_epoch=steps_per_epoch,
        train_iterator=train_iterator,
        make_evaluator=make_evaluator,
    )


def dataset_batches(dataset, batch_size: int, seed: int, meta_split: Optional[str] = None, meta_batch_size: int = 0):
    """Seed ``seed``'s resumable training batches of an in-memory dataset (this process's share), with
    a second ("meta") batch from ``meta_split`` each step when a bilevel scheme needs one for its
    upper-level (validation) losses: ``meta_batch_size`` examples (0: ``batch_size``; -1: the whole
    split, the upper level of a full-batch run)."""
    pid, nproc = jax.process_index(), jax.process_count()
    it = dataset.train_iterator(batch_size, seed, process_index=pid, process_count=nproc)
    if meta_split:
        available = dataset.spec.split_sizes[meta_split]
        size = available if meta_batch_size == -1 else (meta_batch_size or batch_size)
        if available < size:  # the generic message would suggest a smaller batch for the whole run
            raise ValueError(
                f"the bilevel scheme's meta batches come from the {meta_split} split of {dataset.spec.name} "
                f"({available} examples), fewer than one meta batch of {size}"
                + (" (the training batch's size)" if not meta_batch_size else "")
                + ". Fix: --config.weighting.meta_batch_size=-1 (the whole split each step) or a size up to "
                f"{available}, or --config.weighting.meta_split=train (a second training batch)"
            )
        meta = dataset.train_iterator(
            size, seed + builders.META_SEED_OFFSET, split=meta_split, process_index=pid, process_count=nproc
        )
        it = data_lib.WithMetaBatches(it, meta, prefix=step_lib.META_PREFIX)
    return it


# ---------------------------------------------------------------------------- seeds


class SeedAxis:
    """Seeds ``seed, seed + 1, ...`` trained together in one program (a vmap over a leading seed
    axis of the state; each seed has its own init, dropout and data order: jmtl/training/seeds.py).

    One seed runs the plain step, without the axis: a vmap over a size-1 axis compiles to a
    different program, whose float results are not bitwise those of the plain step. Every place
    the two cases differ is a method here.
    """

    def __init__(self, first_seed: int, num_seeds: int, mode: str = "vmap"):
        self.seeds = [first_seed + i for i in range(num_seeds)]
        self.stacked = num_seeds > 1
        self.mode = mode

    def wrap_step(self, make_step):
        return seeds_lib.over_seeds(make_step, self.mode) if self.stacked else make_step

    def wrap_eval(self, make_eval):
        return seeds_lib.over_seeds_eval(make_eval) if self.stacked else make_eval

    def stack_states(self, states: list) -> PyTree:
        return seeds_lib.stack(states) if self.stacked else jax.tree.map(np.asarray, states[0])

    def stack_iterators(self, iterators: list):
        return seeds_lib.StackedIterator(iterators) if self.stacked else iterators[0]

    def per_seed_results(self, results: dict) -> list[dict]:
        """``{split: result}`` (a list per split when stacked) -> one ``{split: ...}`` per seed."""
        if not self.stacked:
            return [results]
        return [{split: results[split][i] for split in results} for i in range(len(self.seeds))]

    def first(self, x):
        """Seed 0's slice of a stacked array (the array itself for one seed)."""
        return x[0] if self.stacked else x


def mean_over_seeds(results: list):
    """Per-seed nested dicts of floats -> their mean (the dict itself for one seed)."""
    if len(results) == 1:
        return results[0]
    return jax.tree.map(lambda *xs: float(np.mean(xs)), *results)


# ---------------------------------------------------------------------------- entry points


def train(config, workdir: str | Path) -> tuple[dict, TrainState]:
    """Runs (or resumes) the experiment of an in-memory dataset config; returns the summary and the
    final host train state.

    Args:
      config: an experiment config (``config_schema.default_config()`` and overrides).
      workdir: where the run writes (created; a workdir with a checkpoint is resumed).
    """
    settings = settings_lib.LoopSettings.from_config(config)  # wrong types / ranges fail here, before any work
    check_workdir(workdir)
    parallel.maybe_initialize_distributed()
    return run(build_experiment(config), config, workdir, settings=settings)


def check_workdir(workdir: str | Path) -> None:
    """Refuses a workdir path that is (or lies under) a file, before anything is built or written."""
    workdir = Path(workdir).expanduser().absolute()
    for p in (workdir, *workdir.parents):
        if p.exists() and not p.is_dir():
            workdir_lib.prepare_workdir(workdir)  # raises WorkdirNotADirectoryError with the fix


def run(
    experiment: Experiment,
    config,
    workdir: str | Path,
    *,
    on_stop: str = "return",
    settings: Optional[settings_lib.LoopSettings] = None,
) -> FitResult:
    """Trains ``experiment`` under ``config``'s schedule, evaluation, non-finite policy and
    checkpoints in ``workdir`` (resuming from its latest checkpoint; a workdir in use by another
    live run is refused: ``workdir.workdir_lock``).

    Args:
      experiment, config, workdir: what to train, how, and where (``config`` is saved in the workdir
        and checked on resume).
      settings: the loop's settings, ``LoopSettings.from_config(config)`` (built here when None).
      on_stop: after SIGTERM / SIGINT and the checkpoint: ``'return'`` (the command line's
        behaviour: print how to resume and return ``({'interrupted': True, 'step': s}, state)``) or
        ``'raise'`` (library use: :class:`FitInterrupted` / :class:`FitTerminated`).

    Returns:
      A :class:`FitResult`: ``(summary, state)`` with ``.best_params``.
    """
    if on_stop not in ("return", "raise"):
        raise ValueError(f"on_stop must be 'return' or 'raise', got {on_stop!r}")
    if settings is None:
        settings = settings_lib.LoopSettings.from_config(config)
    workdir = workdir_lib.prepare_workdir(workdir)
    is_main = jax.process_index() == 0
    with workdir_lib.workdir_lock(workdir) if is_main else contextlib.nullcontext() as lock:
        trainer = _Trainer(experiment, config, settings, workdir)
        trainer.lock = lock
        trainer.on_stop = on_stop
        try:
            trainer.resume()
            return trainer.loop()
        finally:
            trainer.close()


# ---------------------------------------------------------------------------- periodic actions


class PeriodicAction:
    """``fn(step, state, out)`` on the steps its triggers name (clu's ``periodic_actions`` is the
    model): every ``every_steps`` steps, once ``every_seconds`` have passed since it last ran (or
    since ``started``), at ``last_step``, or when ``when()`` says so. ``out`` is a dict the actions
    of one step share, in list order (the relation matrix joins that step's train record).

    ``at_end``: not run per step, but once after a run's last step, after its records are closed
    (the plots read them).
    """

    def __init__(
        self,
        name: str,
        fn: Callable[[int, Any, dict], None],
        *,
        every_steps: int = 0,
        every_seconds: Optional[float] = None,
        last_step: Optional[int] = None,
        when: Optional[Callable[[int], bool]] = None,
        at_end: bool = False,
        started: Optional[float] = None,
        clock: Callable[[], float] = time.time,
    ):
        self.name, self.fn, self.every_steps, self.every_seconds = name, fn, every_steps, every_seconds
        self.last_step, self.when, self.at_end, self.clock = last_step, when, at_end, clock
        self.last_run = clock() if started is None else started

    def due(self, step: int) -> bool:
        return (
            (self.every_steps > 0 and step % self.every_steps == 0)
            or (self.every_seconds is not None and self.clock() - self.last_run >= self.every_seconds)
            or step == self.last_step
            or (self.when is not None and self.when(step))
        )

    def __call__(self, step: int, state: Any, out: dict) -> None:
        self.fn(step, state, out)
        self.last_run = self.clock()

    def __repr__(self) -> str:
        return f"PeriodicAction({self.name!r}, every_steps={self.every_steps}, every_seconds={self.every_seconds})"


Fn = Callable[[int, Any, dict], None]


def cadence_actions(
    *,
    total_steps: int,
    log_every: int,
    eval_every: int,
    checkpoint_every: int,
    checkpoint_seconds: float,
    stop_requested: Callable[[], bool],
    log: Fn,
    evaluate: Fn,
    checkpoint: Fn,
    relation: Optional[Fn] = None,
    plots: Optional[Fn] = None,
    started: Optional[float] = None,
    clock: Callable[[], float] = time.time,
) -> list[PeriodicAction]:
    """The train loop's cadences, in the order they run within a step.

    * relation (a model with a task-relation matrix W): on the train-record steps, adding W to it;
    * log: the train record every ``log_every`` steps, at every evaluation, at the last step and on a
      stop request (its finiteness check comes first);
    * evaluate: every ``eval_every`` steps and at the last step;
    * checkpoint: every ``checkpoint_every`` steps, or with ``checkpoint_every <= 0`` once
      ``checkpoint_seconds`` have passed since the last save (or the loop's start); at the last step
      and on a stop request;
    * plots: once, when the run ends (``at_end``).

    Resuming at step s runs the same rules from s + 1, so a resumed run fires where an uninterrupted
    one does (the time-based checkpoints excepted: they follow the clock).
    """
    record_step = lambda step: step % eval_every == 0 or stop_requested()  # noqa: E731
    kw = dict(started=started, clock=clock)
    actions = []
    if relation is not None:
        actions.append(
            PeriodicAction("relation", relation, every_steps=log_every, last_step=total_steps, when=record_step, **kw)
        )
    actions += [
        PeriodicAction("log", log, every_steps=log_every, last_step=total_steps, when=record_step, **kw),
        PeriodicAction("evaluate", evaluate, every_steps=eval_every, last_step=total_steps, **kw),
        PeriodicAction(
            "checkpoint",
            checkpoint,
            every_steps=max(checkpoint_every, 0),
            every_seconds=None if checkpoint_every > 0 else checkpoint_seconds,
            last_step=total_steps,
            when=lambda step: stop_requested(),
            **kw,
        ),
    ]
    if plots is not None:
        actions.append(PeriodicAction("plots", plots, last_step=total_steps, at_end=True, **kw))
    return actions


# ---------------------------------------------------------------------------- the trainer


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (preemption-safe), while the
    run lasts: ``restore`` puts back the handlers it replaced (a library call must not keep Ctrl-C
    after it returns). Off the main thread (where Python allows no handlers) the signals keep theirs.

    A second signal gives up at once (``KeyboardInterrupt``) -- except during a checkpoint save
    (``saving()``): an exception raised inside orbax's save would print its whole traceback and may
    leave the step half-written, so the save is finished first (it takes seconds) and one line says so;
    the run then stops as for the first signal.
    """

    def __init__(self):
        self.signal = None
        self.in_save = False
        self.previous = {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        previous, self.previous = self.previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    @contextlib.contextmanager
    def saving(self):
        self.in_save = True
        try:
            yield
        finally:
            self.in_save = False

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signal is not None and self.in_save:
            print(
                f"\nReceived {name} again during a checkpoint save: finishing the save (a few seconds), then stopping.",
                file=sys.stderr,
                flush=True,
            )
            return
        if self.signal is not None:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.signal = name


class _Trainer:
    """One run: built by ``__init__`` (setup), then ``resume``, ``loop`` (which ends in ``summary``)."""

    # ---- setup ------------------------------------------------------------------------------------
    def __init__(self, experiment: Experiment, config, settings: settings_lib.LoopSettings, workdir: Path):
        # config: saved in the workdir and compared on resume; settings: what the loop reads.
        self.exp, self.config, self.settings, self.workdir = experiment, config, settings, workdir
        self.is_main = jax.process_index() == 0
        self.lock: Optional[workdir_lib.WorkdirLock] = None  # set by run() on the main process
        self.logs = None
        self.names = [t.name for t in experiment.tasks]
        spe = experiment.steps_per_epoch
        self.total_steps = settings.total_steps(spe)
        self.on_stop = "return"
        self.driver = parallel.Driver(settings.parallel)
        one_device_only = (
            "weighting.per_example=True"
            if experiment.step_config.per_example
            else "weighting.gramian='autogram'"
            if experiment.step_config.gramian == "autogram"
            else None
        )
        if one_device_only and self.driver.kind != "single":
            # These run on one device; with one device the single driver computes the same step.
            if self.driver.num_devices > 1:
                raise ValueError(
                    f"{one_device_only} runs on one device, but parallel={settings.parallel!r} spans "
                    f"{self.driver.num_devices}: set --config.parallel=single"
                )
            self.driver = parallel.Driver("single")
        if settings.batch_size % self.driver.num_devices:
            raise ValueError(
                f"batch_size {settings.batch_size} is not divisible by the {self.driver.num_devices} devices"
            )
        self.seed_axis = SeedAxis(settings.seed, settings.num_seeds, settings.seeds_mode)
        e = experiment
        # A warm start (config.init_from): the plan is checked against the model's params before any
        # compile; frozen params get a zero update through the optimizer the step is built with.
        init_from = settings.init_from
        warm = warm_start.prepare(init_from, e.model, e.example_input, e.step_config.shared) if init_from else None
        if warm is not None:
            e = self.exp = dataclasses.replace(e, optimizer=warm.wrap_optimizer(e.optimizer))
            if self.is_main:
                print(warm.describe(), flush=True)
        make_step = lambda ax: step_lib.make_train_step(
            e.model, e.tasks, e.weighting, e.optimizer, e.step_config, axis_name=ax
        )
        # Many label entries (one per task) travel as a few stacked arrays (jmtl/training/packing.py).
        self.packer = packing.LeafPacker()
        seeded_step = self.seed_axis.wrap_step(make_step)
        self.train_step = self.driver.compile_step(lambda ax: self.packer.wrap(seeded_step(ax)))
        self.evaluator = experiment.make_evaluator(self.driver, self.seed_axis)
        # Per-example objectives: the scheme balances one objective per example of the (one-device) batch.
        num_objectives = settings.batch_size if e.step_config.per_example else len(e.tasks)
        inits = [
            step_lib.init_state(
                e.model, e.weighting, e.optimizer, e.example_input, num_objectives, s, shared=e.step_config.shared
            )
            for s in self.seed_axis.seeds
        ]
        if warm is not None:  # every seed starts from the source's params (a resume restores over them)
            inits = [warm_start.warm_state(s, warm, e.optimizer) for s in inits]
        self.host_state = self.seed_axis.stack_states(inits)
        reference = settings.selection_reference
        names = [t.name for t in e.tasks]
        if reference and set(reference) != set(names):
            missing, extra = sorted(set(names) - set(reference)), sorted(set(reference) - set(names))
            problems = ([f"missing {missing}"] if missing else []) + ([f"not a task {extra}"] if extra else [])
            raise ValueError(
                f"config.selection_reference must name every task once: {'; '.join(problems)}. "
                f"Fix: one reference main metric per task ({', '.join(names)})"
            )
        if settings.optimizer.plateau_factor > 0 and plateau.find(self.host_state.opt_state) is None:
            raise ValueError(
                "config.optimizer.plateau_factor > 0 needs the built-in optimizer (config.optimizer.name adam, adamw "
                "or sgd); a custom optax transform has no plateau state. Fix: --config.optimizer.plateau_factor=0, or "
                "chain jmtl.training.plateau.scale_by_plateau() last into your optimizer"
            )
        self.signature = checkpoint.model_signature(self.host_state, self.names, settings.weighting)
        self.identity = {"the tasks": identity.tasks_identity(e.tasks), **(e.identity or {})}
        self.ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
        # The best validation evaluation's params (per seed), kept on the host and written to
        # best/<step>/ with the checkpoint after they changed; best_saved_step names that folder in
        # the checkpoint's meta, so a resume restores the best of the same moment.
        self.best_ckpt = checkpoint.Checkpointer(workdir / "best")
        self.best_params, self.best_dirty, self.best_saved_step = None, False, None
        self.ckpt_time, self.ckpt_count = 0.0, 0
        self.stop = _StopRequest()  # last: a failure above must not leave the handlers installed
        self.train_iter = self.seed_axis.stack_iterators([e.train_iterator(s) for s in self.seed_axis.seeds])
        self.bests = [{"score": -math.inf} for _ in self.seed_axis.seeds]  # best-validation record per seed
        self.start_step, self.wall_before = 0, 0.0

    # ---- resume -----------------------------------------------------------------------------------
    def resume(self) -> None:
        """Restores the latest checkpoint (state, data order, best records; a damaged checkpoint is
        moved aside for the one before it) after checking that the config may resume it (a changed
        model, weighting or schedule is refused, naming every field), or starts the workdir. Records
        after the checkpoint are dropped (a fresh start moves old records aside): nothing is counted
        twice and no earlier record is overwritten."""
        resume_step = None
        latest = self.ckpt.latest_step()
        if latest is not None:
            # What the checkpoint was trained with is read from the checkpoint itself (config.json may
            # be gone or damaged); config.json only for checkpoints written before they carried it.
            file_config, problem = workdir_lib.read_saved_config(self.workdir)
            try:
                latest_meta = self.ckpt.read_meta(latest)
            except Exception:  # noqa: BLE001  (a damaged checkpoint: restore falls back and says so)
                latest_meta = None
            saved = self.saved_config(latest_meta, file_config)
            self.check_identity(latest_meta, latest, saved)
            if saved:
                self.refuse_changed_config(saved)
            self.host_state, meta = self.ckpt.restore(self.host_state, self.signature)
            self.start_step = int(np.max(self.host_state.step))  # every seed is at the same step
            saved = self.saved_config(meta, file_config)
            self.check_identity(meta, self.start_step, saved)
            if saved is None and self.is_main:
                print(
                    f"warning: {self.workdir / workdir_lib.CONFIG_NAME} cannot be read ({problem}) and checkpoint "
                    f"{self.start_step} predates configs in checkpoints: the resume config check is skipped",
                    file=sys.stderr,
                    flush=True,
                )
            changes = (
                workdir_lib.check_resume(
                    saved, self.config, restored_step=self.start_step, total_steps=self.total_steps
                )
                if saved
                else []
            )
            self.train_iter.set_state(meta["data_iterator"])
            self.bests = meta["best"]
            self.wall_before = meta.get("wall_time", 0.0)
            self.restore_best(meta)
            resume_step = self.start_step
            if self.is_main:
                if problem is not None and saved is not None:
                    self.repair_config(problem)
                workdir_lib.record_resume(self.workdir, self.start_step, changes, self.config)
                print(f"Resuming from step {self.start_step} of {self.total_steps} in {self.workdir}", flush=True)
        elif self.is_main:
            if self.best_ckpt.latest_step() is not None:  # left by an earlier run whose checkpoints are gone
                self.best_ckpt.close()
                aside = workdir_lib.set_aside(self.workdir / "best", "old")
                print(
                    f"note: moved the previous run's best/ to {aside.name} (no checkpoint to resume)", file=sys.stderr
                )
                self.best_ckpt = checkpoint.Checkpointer(self.workdir / "best")
            workdir_lib.write_config(self.workdir, self.config)
        self.logs = metric_writers.make_writers(
            list(self.settings.writers),
            self.workdir,
            self.is_main,
            resume_step=resume_step,
            config=self.config,
            task_names=self.names,
        )

    def saved_config(self, meta: Optional[dict], file_config: Optional[dict]) -> Optional[dict]:
        """The config the checkpoint was trained with: its own record, else config.json (older checkpoints)."""
        saved = (meta or {}).get("config") or file_config
        return _with_new_defaults(saved, self.config) if saved else None

    def check_identity(self, meta: Optional[dict], step: int, saved: Optional[dict] = None) -> None:
        """Refuses to resume on other data / optimizer / tasks than the checkpoint's, naming each (and
        the config fields that changed with them, e.g. the dataset's kwargs)."""
        if meta is None:
            return
        diffs = identity.differences(meta.get("identity"), self.identity)
        if diffs and saved:
            try:
                workdir_lib.check_resume(saved, self.config)
            except workdir_lib.ResumeConfigError as e:
                fields = [
                    f"{c.field}: {c.old!r} -> {c.new!r}" for c in e.changes if c.field != "dataset.kwargs.fingerprint"
                ]  # fit's data hash: said in words above
                if fields:
                    diffs.append("the config differs (" + "; ".join(fields) + ")")
        if diffs:
            raise workdir_lib.ResumeIdentityError(
                f"cannot resume {self.workdir}: " + "; ".join(diffs) + f" from what its checkpoint (step {step}) "
                "was trained on. Fix: resume with the same data, optimizer and tasks, or train the new setup in a "
                "new workdir",
                diffs,
            )

    def repair_config(self, problem: str) -> None:
        """Rewrites a missing or unreadable config.json (an unreadable one is kept aside)."""
        path = self.workdir / workdir_lib.CONFIG_NAME
        note = "was missing"
        if path.exists():
            note = f"could not be read ({problem}); kept as {workdir_lib.set_aside(path, 'unreadable').name}"
        workdir_lib.write_config(self.workdir, self.config)
        print(
            f"warning: {path} {note}; rewritten after checking this run against the config in the checkpoint",
            file=sys.stderr,
            flush=True,
        )

    def restore_best(self, meta: dict) -> None:
        """The best params of the restored checkpoint's moment (best/<best_params_step>/)."""
        step = meta.get("best_params_step")
        self.best_saved_step = step
        if step is None:
            if any(math.isfinite(b.get("score", -math.inf)) for b in self.bests) and self.is_main:
                print(
                    "note: this checkpoint predates kept best-validation params: best_params stays None until "
                    "an evaluation beats the recorded best",
                    file=sys.stderr,
                )
            return
        try:
            self.best_params, _ = self.best_ckpt.restore(self.host_state.params, self.signature, step=step)
        except Exception as e:  # noqa: BLE001  (the run itself resumes; only the best params are lost)
            self.best_params = None
            print(
                f"warning: the best-validation params in {self.workdir / 'best' / str(step)} do not restore "
                f"({type(e).__name__}); best_params stays None until an evaluation beats the recorded best",
                file=sys.stderr,
                flush=True,
            )

    def keep_best(self, params, improved: Sequence[int]) -> None:
        """Host copies of the improved seeds' params (copies: the step donates the device buffers)."""
        host = jax.tree.map(np.array, self.driver.unreplicate(params))
        if self.best_params is None or not self.seed_axis.stacked:
            self.best_params = host
        else:
            take = np.isin(np.arange(len(self.seed_axis.seeds)), improved)
            self.best_params = jax.tree.map(
                lambda b, h: np.where(take.reshape((-1,) + (1,) * (h.ndim - 1)), h, np.asarray(b)),
                self.best_params,
                host,
            )
        self.best_dirty = True

    def refuse_changed_config(self, saved: dict) -> None:
        """Refuses a config the checkpoint cannot resume under before its state is read (a changed
        optimizer would otherwise fail inside orbax with a tree-structure dump). A changed model,
        task set or weighting is named by the checkpoint's signature check instead, which lists the
        params that differ."""
        try:
            workdir_lib.check_resume(saved, self.config)
        except workdir_lib.ResumeConfigError:
            try:
                self.ckpt.restore(self.host_state, self.signature)
            except checkpoint.CheckpointMismatchError:
                raise
            except Exception:  # noqa: BLE001  (the config difference explains it: raised below)
                pass
            raise

    def close(self) -> None:
        if hasattr(self, "stop"):
            self.stop.restore()
        if self.logs is not None:
            self.logs, logs = None, self.logs
            logs.close()

    def check_lock(self) -> None:
        """Stops the run (``WorkdirLostError``) when its workdir or lock was deleted or replaced: a save
        there could mix with another run's files, and records written to a deleted folder are lost."""
        if self.lock is not None:
            self.lock.check()

    def save(self, state, step: int, wall: float) -> None:
        self.check_lock()
        t0 = time.time()
        with self.stop.saving():
            if self.best_dirty and self.best_params is not None:  # first, so the checkpoint can name it
                if step in self.best_ckpt.manager.all_steps():  # left by a checkpoint set aside as damaged
                    if self.is_main:
                        workdir_lib.set_aside(self.best_ckpt.directory / str(step), "stale")
                    self.best_ckpt.manager.reload()
                self.best_ckpt.save(step, self.best_params, {"signature": self.signature, "best": self.bests})
                self.best_saved_step, self.best_dirty = step, False
            meta = {
                "signature": self.signature,
                "data_iterator": self.train_iter.get_state(),
                "best": self.bests,
                "wall_time": wall,
                "config": workdir_lib._plain(self.config),
                "identity": self.identity,
                "best_params_step": self.best_saved_step,
            }
            self.ckpt.save(
                step, self.driver.unreplicate(state) if self.settings.parallel != "shard_map" else state, meta
            )
        self.ckpt_time += time.time() - t0
        self.ckpt_count += 1

    # ---- non-finite policy ------------------------------------------------------------------------
    def check_finite(self, at_step: int, metrics) -> None:
        """Raises, or counts a skipped step, when the step at ``at_step`` was not finite (it was not
        applied: the step keeps the old state)."""
        flags = self.driver.host_metrics({"finite": metrics["finite"], "losses_finite": metrics["losses_finite"]})
        if bool(np.all(flags["finite"])):
            self.consecutive_skips = 0
            return
        losses_ok = np.asarray(flags["losses_finite"]).reshape(-1, len(self.names)).all(axis=0)  # over seeds
        bad = [n for n, ok in zip(self.names, losses_ok) if not ok] or ["(the update)"]
        if self.seed_axis.stacked:
            bad_seeds = [s for s, ok in zip(self.seed_axis.seeds, np.atleast_1d(flags["finite"])) if not ok]
            bad[-1] += f" (seed(s) {', '.join(map(str, bad_seeds))})"
        last = self.last_good_step
        if self.settings.nonfinite.policy == "raise":
            self.ckpt.wait()
            raise NonFiniteLossError(
                f"non-finite loss at step {at_step} in task(s) {', '.join(bad)}; the step was not applied. "
                + (
                    f"Last good checkpoint: {self.ckpt.directory}/{last} (step {last}). "
                    if last is not None
                    else "No checkpoint was written yet. "
                )
                + "Lower the learning rate, or set --config.nonfinite.policy=skip."
            )
        self.consecutive_skips += 1
        self.total_skips += 1
        if self.consecutive_skips >= self.settings.nonfinite.max_consecutive_skips:
            self.ckpt.wait()
            raise NonFiniteLossError(
                f"{self.consecutive_skips} consecutive non-finite steps up to step {at_step} "
                f"(task(s) {', '.join(bad)}); last good checkpoint: step {last}"
            )

    # ---- records ----------------------------------------------------------------------------------
    def train_record(self, step: int, metrics, state) -> dict:
        """Losses and weights of this step (with several seeds: their mean, and each seed's)."""
        m = self.driver.host_metrics(metrics)
        k = len(self.names)
        losses, weights = np.asarray(m["losses"]).reshape(-1, k), np.asarray(m["weights"]).reshape(-1, k)
        rec = {
            "step": step,
            "losses": losses.mean(axis=0).tolist(),
            "weights": [None if np.isnan(w) else float(w) for w in weights.mean(axis=0)],
            "objective": float(np.mean(m["objective"])),
            "grad_norm": float(np.mean(m["grad_norm"])),
        }
        if self.seed_axis.stacked:
            rec["losses_per_seed"] = losses.tolist()
            rec["weights_per_seed"] = [[None if np.isnan(w) else float(w) for w in row] for row in weights]
        return rec

    def interval_stats(self, pending: list, seconds: float) -> dict:
        """Mean training loss and summed task weights over the steps since the last evaluation."""
        k = len(self.names)
        host = self.driver.host_metrics(pending)
        losses = np.sum([np.asarray(l).reshape(-1, k).mean(axis=0) for l, _ in host], axis=0) / len(host)
        drawn = np.sum([np.nan_to_num(np.asarray(w).reshape(-1, k).mean(axis=0)) for _, w in host], axis=0)
        return {
            "train_loss": dict(zip(self.names, losses.tolist())),
            "task_weight_sum": dict(zip(self.names, drawn.tolist())),
            "train_time_s": seconds,
        }

    # ---- evaluation -------------------------------------------------------------------------------
    def evaluate(self, state, step: Optional[int]) -> list[dict]:
        """Scores every seed and updates its best-validation record (``step=None``: score only)."""
        params = state.params
        if self.exp.test_every_eval:
            results = self.evaluator(params, (VALIDATION, TEST))
        else:
            results = self.evaluator(params, (VALIDATION,))
            improved = any(self.selection_score(r[VALIDATION]) > b["score"] for r, b in zip(results, self.bests))
            if improved or step is None:
                tests = self.evaluator(params, (TEST,))
                results = [{**r, **t} for r, t in zip(results, tests)]
        if step is not None:
            improved = []
            for i, res in enumerate(results):  # model selection on the validation split, per seed
                score = self.selection_score(res[VALIDATION])
                if score > self.bests[i]["score"]:
                    self.bests[i] = {"score": score, "step": step, VALIDATION: res[VALIDATION], TEST: res[TEST]}
                    improved.append(i)
            if improved:
                self.keep_best(params, improved)
        return results

    def selection_score(self, validation: dict) -> float:
        """The scalar (higher is better) that picks each seed's best evaluation and that the plateau
        schedule watches: minus the validation Delta-m% against ``config.selection_reference`` when it
        is set, else the evaluator's score."""
        reference = self.settings.selection_reference
        if not reference:
            return self.evaluator.score(validation)
        tasks = self.exp.tasks
        values = [validation[t.name][t.main_metric.name] * self.reported_units(t) for t in tasks]
        baseline = [reference[t.name] for t in tasks]
        return -mtl_metrics.delta_m(values, baseline, [t.main_metric.higher_is_better for t in tasks])

    def reported_units(self, task: Task) -> float:
        """The factor from ``task``'s main metric as evaluated to its reported units (``metric_scale``:
        MAE scales with the label, MSE with its square; other metrics are unit-free)."""
        scale = (self.exp.metric_scale or {}).get(task.name)
        if scale is None:
            return 1.0
        power = {"mae": 1, "mse": 2}.get(task.main_metric.name, 0)
        return float(scale) ** power

    def selection_rule(self) -> str:
        if self.settings.selection_reference:
            names = ", ".join(f"{t.name} {t.main_metric.name}" for t in self.exp.tasks)
            units = " in the data's reported units" if self.exp.metric_scale else ""
            return (
                f"the evaluation with the lowest validation Delta-m% against config.selection_reference "
                f"({names}{units}); picked per seed"
            )
        return getattr(
            self.evaluator, "selection", f"the highest {type(self.evaluator).__name__}.score of the validation split"
        )

    def plateau_step(self, state: TrainState, results: list[dict]) -> TrainState:
        """ReduceLROnPlateau after an evaluation (:mod:`jmtl.training.plateau`): each seed's monitored
        value is minus its selection score (its validation Delta-m% with a reference); only the
        plateau's own small state travels between host and devices."""
        opt = self.settings.optimizer
        device_ps = plateau.find(state.opt_state)
        values = np.asarray([-self.selection_score(r[VALIDATION]) for r in results], np.float64)
        new = plateau.plateau_update(
            jax.tree.map(np.asarray, self.driver.unreplicate(device_ps)),
            values if self.seed_axis.stacked else values[0],
            base_lr=opt.learning_rate,
            factor=opt.plateau_factor,
            patience=opt.plateau_patience,
            threshold=opt.plateau_threshold,
            min_lr=opt.plateau_min_lr,
            cooldown=opt.plateau_cooldown,
        )
        return state._replace(opt_state=plateau.replace(state.opt_state, self.driver.replicate(new)))

    # ---- the loop ---------------------------------------------------------------------------------
    def check_first_batch(self, batch: dict) -> None:
        """The model contract on the first batch (:mod:`jmtl.training.contract`): labels, batch
        entries, outputs vs tasks, shared params; a mistake stops the run before it trains."""
        where = f"{self.exp.name} train batch"
        self.warn_unlabelled_tasks(batch)
        if self.seed_axis.stacked:  # the batch carries a seed axis; the labels are what can be checked
            if self.exp.step_config.per_task_inputs:
                for t in self.exp.tasks:
                    tasks_lib.check_labels((t,), batch[t.name], where=f"{where} of task {t.name!r}")
            else:
                tasks_lib.check_labels(self.exp.tasks, batch, where=where)
            return
        train_entries, _ = step_lib.split_meta(batch)
        contract.check(
            self.exp.model,
            self.exp.tasks,
            train_entries,
            config=self.exp.step_config,
            weighting=self.exp.weighting,
            params=self.host_state.params,
        )

    def warn_unlabelled_tasks(self, batch: dict) -> None:
        """Warns when a task has no labelled example in the first batch (missing labels, small batches):
        its loss is then 0 and its Jacobian row zero, which a scheme other than fixed weights reads as
        a solved task. Measured on School (139 tasks, ~3 absent from each batch of 512): MGDA's
        min-norm point is the zero row (no update; test EV -38.7 % vs 36.9 % on full batches), and
        FAMO's log-losses blow up (-261 % vs 38.0 %), results/school/catalogue_300steps*.md."""
        if self.exp.weighting.fixed_weights or self.exp.step_config.per_task_inputs:
            return
        train_entries, _ = step_lib.split_meta(batch)
        empty = [
            t.name
            for t in self.exp.tasks
            if t.mask_key in train_entries
            and np.any(np.asarray(train_entries[t.mask_key]).reshape(len(train_entries[t.mask_key]), -1).sum(0) == 0)
        ]
        if empty and self.is_main:
            shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
            warnings.warn(
                f"{len(empty)} task(s) ({shown}) have no labelled example in the first training batch: such a "
                f"batch gives them loss 0 and a zero Jacobian row, which {self.settings.weighting!r} reads as a "
                "solved task (min-norm schemes such as MGDA stop updating, log-loss schemes such as FAMO diverge). "
                "Fix: batches that label every task (a larger batch_size, or per-task inputs), or equal weighting.",
                stacklevel=2,
            )

    def loop(self) -> tuple[dict, TrainState]:
        total_steps = self.total_steps
        state = self.driver.replicate(self.host_state)
        bar = tqdm(
            total=total_steps,
            initial=self.start_step,
            disable=not (self.is_main and self.settings.progress_bar),
            unit="step",
        )
        self.bar = bar
        self.t0 = time.time()
        self.last_good_step = self.ckpt.latest_step()
        self.consecutive_skips, self.total_skips = 0, 0
        self.eval_time, self.interval_times = 0.0, []
        self.results, self.pending, self.interval = None, None, []
        self.interval_start = time.time()
        actions = self.periodic_actions()
        step = self.start_step
        first_batch_checked = False
        while step < total_steps:
            batch = next(self.train_iter)
            if not first_batch_checked:
                self.check_first_batch(batch)
                first_batch_checked = True
            state, metrics = self.train_step(state, self.driver.shard_batch(self.packer.pack(batch)))
            step += 1
            if self.exp.interval_train_stats:  # device arrays, fetched once per evaluation
                self.interval.append((metrics["losses"], metrics["weights"]))
            # Every step's finiteness is checked, one step late, so the host never waits for the step
            # it just dispatched.
            if self.pending is not None:
                self.check_finite(*self.pending)
            self.pending = (step, metrics)
            out: dict = {}  # what this step's actions hand on (the relation matrix to the train record)
            for action in actions:
                if not action.at_end and action.due(step):
                    action(step, out.get("state", state), out)
            state = out.get("state", state)  # an evaluation may change the optimizer state (plateau)
            bar.update(1)
            if self.stop.signal:
                self.ckpt.close()
                self.best_ckpt.close()
                bar.close()
                if self.on_stop == "raise":
                    error = (FitInterrupted if self.stop.signal == "SIGINT" else FitTerminated)(
                        self.stop.signal, step, self.workdir
                    )
                    if self.is_main and isinstance(error, SystemExit):  # uncaught, it prints nothing
                        print(f"\n{error.message}", file=sys.stderr, flush=True)
                    raise error
                if self.is_main:
                    print(
                        f"\nReceived {self.stop.signal}: saved a checkpoint at step {step}. Resume with the same "
                        f"command (--workdir {self.workdir}).",
                        flush=True,
                    )
                return FitResult({"interrupted": True, "step": step}, self.driver.unreplicate(state), self.best_params)
        bar.close()
        self.ckpt.close()
        self.best_ckpt.close()
        self.close()  # summary.json and the plots read the records
        final = self.results if self.results is not None else self.evaluate(state, None)
        summary = self.summary(final)
        for action in actions:  # the end-of-run actions (plots), after summary.json
            if action.at_end:
                action(total_steps, state, {})
        if self.is_main:
            print(format_summary(summary), flush=True)
        return FitResult(summary, self.driver.unreplicate(state), self.best_params)

    # ---- the periodic actions ---------------------------------------------------------------------
    def periodic_actions(self) -> list[PeriodicAction]:
        """The run's five cadences (:func:`cadence_actions`) bound to this trainer."""
        s, spe = self.settings, self.exp.steps_per_epoch
        has_relation = mtl.relation_matrix(self.host_state.params) is not None
        return cadence_actions(
            total_steps=self.total_steps,
            log_every=s.log_every_steps,
            eval_every=s.eval_every(spe),
            checkpoint_every=s.checkpoint_every(spe, jax.process_count()),
            checkpoint_seconds=60.0 * s.checkpoint_every_minutes,
            stop_requested=lambda: bool(self.stop.signal),
            started=self.t0,
            log=self.log_action,
            relation=self.relation_action if has_relation else None,
            evaluate=self.eval_action,
            checkpoint=self.checkpoint_action,
            plots=self.plots_action if (self.exp.plots and self.is_main) else None,
        )

    def relation_action(self, step: int, state, out: dict) -> None:
        """The task-relation matrix W into this step's train record."""
        w = np.asarray(self.driver.unreplicate(mtl.relation_matrix(state.params)))
        out.setdefault("train", {})["relation"] = self.seed_axis.first(w).tolist()

    def log_action(self, step: int, state, out: dict) -> None:
        """The train record (losses, weights, what other actions added), after this step's finiteness check."""
        _, metrics = self.pending  # this step's
        self.check_finite(*self.pending)
        self.pending = None
        rec = {**self.train_record(step, metrics, state), **out.get("train", {})}
        if self.is_main:
            self.logs.write("train", rec)
            self.bar.set_postfix({n: f"{l:.3g}" for n, l in zip(self.names, rec["losses"])})

    def eval_action(self, step: int, state, out: dict) -> None:
        """An evaluation (per-seed best-validation selection) and its metrics record."""
        train_seconds = time.time() - self.interval_start
        self.interval_times.append(train_seconds)
        t_eval = time.time()
        results = self.results = self.evaluate(state, step)
        self.eval_time += time.time() - t_eval
        rec = {"step": step, "epoch": step / self.exp.steps_per_epoch, **mean_over_seeds(results)}
        if self.settings.selection_reference:  # what selection (and the plateau schedule) read
            dm = [-self.selection_score(r[VALIDATION]) for r in results]
            rec["validation_delta_m"] = dm if self.seed_axis.stacked else dm[0]
        if self.settings.optimizer.plateau_factor > 0:
            # The rate of the steps after this evaluation; the updated state goes on to the
            # checkpoint of this step and to the loop (PeriodicAction's ``out``).
            state = out["state"] = self.plateau_step(state, results)
            scale = np.asarray(self.driver.unreplicate(plateau.find(state.opt_state).scale), np.float64)
            lr = self.settings.optimizer.learning_rate * scale
            rec["learning_rate"] = lr.tolist() if self.seed_axis.stacked else float(lr)
        if self.seed_axis.stacked:
            rec["seeds"] = results
        if self.exp.interval_train_stats:
            rec.update(self.interval_stats(self.interval, train_seconds))
            self.interval = []
        if self.is_main:
            self.logs.write("eval", rec)
            if self.exp.on_eval is not None:
                self.exp.on_eval(rec)
        self.interval_start = time.time()

    def checkpoint_action(self, step: int, state, out: dict) -> None:
        self.save(state, step, self.wall_before + time.time() - self.t0)
        self.last_good_step = step

    def plots_action(self, step: int, state, out: dict) -> None:
        """``plots/*.png`` from the records (and W's heat map) at the end of the run."""
        plotting.plot_training(self.workdir, self.names)
        w = mtl.relation_matrix(state.params)
        if w is not None:
            w = self.seed_axis.first(np.asarray(self.driver.unreplicate(w)))
            plotting.plot_relation_matrix(w, self.names, self.workdir / "plots" / "relation_matrix.png")

    # ---- summary and plots ------------------------------------------------------------------------
    def summary(self, final: list[dict]) -> dict:
        """``summary.json`` (written on the main process) of a finished run."""
        total_steps, spe = self.total_steps, self.exp.steps_per_epoch
        wall = self.wall_before + time.time() - self.t0
        bests, seeds = self.bests, self.seed_axis.seeds
        summary = {
            "dataset": self.settings.dataset,
            "weighting": self.settings.weighting,
            "tasks": self.names,
            "steps": total_steps,
            "epochs": total_steps / spe,
            # One seed: its numbers. Several: the mean over seeds; each seed's numbers under "seeds".
            "final": mean_over_seeds(final),
            "best_validation": bests[0]
            if not self.seed_axis.stacked
            else {
                "test": mean_over_seeds([b["test"] for b in bests]),
                "validation": mean_over_seeds([b["validation"] for b in bests]),
                "step": [b["step"] for b in bests],
            },
            "seeds": [{"seed": s, "final": f, "best_validation": b} for s, f, b in zip(seeds, final, bests)],
            # How best_validation was picked; its params: FitResult.best_params and best/<step>/.
            "selection": self.selection_rule(),
            "best_params_saved": (
                str(self.workdir / "best" / str(self.best_saved_step)) if self.best_saved_step is not None else None
            ),
            "wall_time_s": wall,
            # None when this session trained no step (a finished run run again).
            "steps_this_session": total_steps - self.start_step,
            "steps_per_s": (
                (total_steps - self.start_step) / max(time.time() - self.t0, 1e-9)
                if total_steps > self.start_step
                else None
            ),
            # This session's checkpoint saves (with best/ params) and their time: the cadence's cost.
            "checkpoints_saved": self.ckpt_count,
            "checkpoint_time_s": self.ckpt_time,
            "wall_time_per_epoch_s": wall / (total_steps / spe),
            # This session's (not counting earlier sessions of a resumed run): evaluation time, and the
            # training time of each interval between evaluations (the first includes compilation).
            "eval_time_s": self.eval_time,
            "train_time_per_eval_s": self.interval_times,
            "skipped_nonfinite_steps": self.total_skips,
            "devices": self.driver.num_devices,
            "processes": jax.process_count(),
        }
        if self.is_main:
            self.check_lock()
            (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def _with_new_defaults(saved: Optional[dict], config) -> Optional[dict]:
    """A workdir's saved config with the fields added to ``config_schema.default_config()`` since it
    was written (e.g. ``optimizer.clip_norm``, ``writers``) at their defaults, where this run's config
    has them: a run started before a field existed resumes when the field keeps its default."""
    if saved is None:
        return None
    new = config_schema.as_dict(config)

    def fill(saved_node: dict, default_node: dict, new_node: dict) -> None:
        for key, value in default_node.items():
            if key not in new_node:
                continue
            if key not in saved_node:
                saved_node[key] = value
            elif isinstance(value, dict) and isinstance(saved_node[key], dict) and isinstance(new_node[key], dict):
                fill(saved_node[key], value, new_node[key])

    saved = json.loads(json.dumps(saved))
    fill(saved, config_schema.as_dict(config_schema.default_config()), new)
    config_schema.fill_inert(saved, new)
    # dataset.kwargs.verify_checksums entered the shipped configs after runs were started with them;
    # absent, the loader verified (True is every loader's default).
    saved_kwargs, new_kwargs = saved.get("dataset", {}).get("kwargs"), new.get("dataset", {}).get("kwargs", {})
    if isinstance(saved_kwargs, dict) and "verify_checksums" in new_kwargs:
        saved_kwargs.setdefault("verify_checksums", True)
    return saved


SUMMARY_TASKS = 8  # tasks printed at the end of a run; the rest are in summary.json


def format_summary(s: dict) -> str:
    if s.get("steps_per_s") is None:
        lines = [
            f"done: {s['steps']} steps ({s['epochs']:.1f} epochs); the run had already finished, nothing "
            "was trained in this session (the numbers below are its final state's)"
        ]
    else:
        lines = [
            f"done: {s['steps']} steps ({s['epochs']:.1f} epochs) in {s['wall_time_s']:.1f}s, "
            f"{s['steps_per_s']:.1f} steps/s"
            + (
                f"; {s['checkpoints_saved']} checkpoint(s) took {s['checkpoint_time_s']:.1f}s"
                if s.get("checkpoints_saved") is not None
                else ""
            )
        ]
    for label, res in (
        ("final test", s["final"].get("test", {})),
        ("best-val test", s["best_validation"].get("test", {})),
    ):
        parts = [
            f"{t}: " + ", ".join(f"{k}={v:.4f}" for k, v in m.items()) for t, m in list(res.items())[:SUMMARY_TASKS]
        ]
        if len(res) > SUMMARY_TASKS:
            parts.append(f"... {len(res) - SUMMARY_TASKS} more tasks in summary.json")
        lines.append(f"{label}: " + " | ".join(parts))
    best = s.get("best_validation", {})
    if "step" in best:
        lines.append(f"best-val = step {best['step']}: {s.get('selection', 'the best validation score')}")
    return "\n".join(lines)
