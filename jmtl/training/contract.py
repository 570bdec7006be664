"""The model contract, checked: what a model, its tasks and a batch must satisfy for the train step.

:func:`check` runs on one batch (the training loop calls it on the first one) and turns every mistake
a new user makes into an error that names the problem and the fix, instead of a raw traceback or,
worse, a run that trains on the wrong thing. The contract:

* the model is a Linen module with ``__call__(x, *, train: bool)`` returning ``{task name: output}``
  with exactly the declared tasks;
* the shared params are ``params['shared']`` (or what ``StepConfig.shared`` selects); a model with
  nothing shared declares ``no_shared_params = True``;
* ``jacobian_mode='representation'`` needs ``encode(x, *, train)`` and ``decode(rep, *, train)``;
* the batch holds the input under ``StepConfig.input_key`` and each task's labels under its
  ``label_key``: integer class ids in ``[0, num_outputs)`` of shape ``[B]`` for classification,
  ``[B, T]`` ids (-1 = padding) for tagging, floats of shape ``[B]`` or ``[B, num_outputs]`` for
  regression.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from jmtl import tasks as tasks_lib
from jmtl import weighting as weighting_lib
from jmtl.core.sharing import as_sharing, require_shared
from jmtl.errors import ContractError
from jmtl.tasks import Task
from jmtl.training.step import StepConfig
from jmtl.training.task_losses import check_outputs


def check_batch(tasks: Sequence[Task], batch: Mapping[str, Any], *, input_key: str, where: str = "the batch") -> None:
    """Input and label entries present, with the dtypes, shapes and ranges the tasks need.

    Args:
      tasks: the declared tasks.
      batch: one batch (host numpy or device arrays).
      input_key: the entry holding the model input.
      where: how to name the batch in messages.
    """
    entries = ", ".join(map(str, batch))
    if input_key not in batch:
        raise ContractError(
            f"{where} has no input entry {input_key!r} (entries: {entries}). Fix: set the step's input_key "
            f"(StepConfig(input_key=...), or the dataset spec's input_key) to the entry holding the input."
        )
    n = len(jax.tree.leaves(batch[input_key])[0])
    for t in tasks:
        if t.label_key not in batch:
            raise ContractError(
                f"{where} has no labels {t.label_key!r} for task {t.name!r} (entries: {entries}). Fix: name the "
                f"label entry after the task, or set Task(label_key=...)."
            )
        y = np.asarray(batch[t.label_key])
        if t.mask_key in batch:
            m = np.asarray(batch[t.mask_key])
            if m.shape != (n,):
                raise ContractError(
                    f"{where}: the label mask {t.mask_key!r} of task {t.name!r} has shape {m.shape}; expected [{n}] (1 = labelled)"
                )
        if y.shape[:1] != (n,):
            raise ContractError(
                f"{where}: labels of task {t.name!r} have shape {y.shape} but the input has {n} examples; "
                "the leading axis of every entry is the example axis."
            )
        if t.kind in (tasks_lib.CLASSIFICATION, *tasks_lib.TOKEN_KINDS):
            if not np.issubdtype(y.dtype, np.integer):
                raise ContractError(
                    f"{where}: labels of {t.kind} task {t.name!r} have dtype {y.dtype}; they must be integer class "
                    f"ids (e.g. `labels.astype(np.int32)`; one-hot labels: `labels.argmax(-1)`)."
                )
            want = 1 if t.kind == tasks_lib.CLASSIFICATION else 2
            if y.ndim != want:
                raise ContractError(
                    f"{where}: labels of {t.kind} task {t.name!r} have shape {y.shape}; expected "
                    + ("[B] class ids" if want == 1 else "[B, T] token class ids (-1 at padding)")
                    + "."
                )
        elif t.kind == tasks_lib.REGRESSION:
            if not np.issubdtype(y.dtype, np.floating):
                raise ContractError(
                    f"{where}: targets of regression task {t.name!r} have dtype {y.dtype}; they must be floats "
                    f"(`targets.astype(np.float32)`)."
                )
            size = int(np.prod(y.shape[1:])) if y.ndim > 1 else 1
            if size != t.num_outputs:
                raise ContractError(
                    f"{where}: targets of regression task {t.name!r} have shape {y.shape} ({size} value(s) per "
                    f"example) but the task declares num_outputs={t.num_outputs}."
                )
            labelled = np.asarray(batch[t.mask_key]).astype(bool) if t.mask_key in batch else slice(None)
            if not np.all(np.isfinite(y[labelled])):
                raise ContractError(
                    f"{where}: targets of regression task {t.name!r} hold NaN or inf values. Fix: for missing targets "
                    f"add a mask entry {t.mask_key!r} (1 = labelled, 0 = missing)."
                )
    try:
        tasks_lib.check_labels(tasks, batch, where=where)
    except ValueError as e:
        raise ContractError(str(e)) from e


def check(
    model,
    tasks: Sequence[Task],
    batch: Mapping[str, Any],
    *,
    config=None,
    weighting: Optional[weighting_lib.WeightingTransform] = None,
    params: Any = None,
) -> None:
    """Checks the whole contract on one batch; raises :class:`ContractError` (or ``TypeError``) naming
    the problem and the fix. Shapes only (``jax.eval_shape``): no FLOPs are spent.

    Args:
      model: the Linen module.
      tasks: the declared tasks.
      batch: one batch with the input and every task's labels (with ``config.per_task_inputs``:
        ``{task name: that task's batch}``).
      config: the step's ``StepConfig`` (default ``StepConfig()``).
      weighting: the weighting transform, to check what it needs (shared params, encode/decode).
      params: the model params, if already initialised (else they are initialised abstractly).
    """
    config = config or StepConfig()
    tasks = tuple(tasks)
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ContractError(f"task names must be unique, got {names}")
    if config.per_task_inputs:  # {task name: that task's batch}: each checked for its own task
        missing = [t.name for t in tasks if not isinstance(batch, Mapping) or t.name not in batch]
        if missing:
            raise ContractError(
                f"per_task_inputs: the batch has no sub-batch for task(s) {missing} (entries: {list(batch)}). Fix: "
                "the batch is {task name: {input, that task's labels}} (jmtl.data.PerTaskBatches zips one "
                "iterator per task)."
            )
        for t in tasks:
            check_batch((t,), batch[t.name], input_key=config.input_key, where=f"the batch of task {t.name!r}")
        model_batch = batch[tasks[0].name]
    else:
        check_batch(tasks, batch, input_key=config.input_key)
        model_batch = batch
    x = config.model_input(dict(model_batch))
    x1 = jax.tree.map(lambda v: v[:1], x)
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
    if params is None:
        try:
            params = jax.eval_shape(lambda: model.init(rngs, x1, train=False))["params"]
        except TypeError as e:
            if "train" in str(e):
                raise TypeError(
                    f"{type(model).__name__}.__call__ must accept a keyword argument `train` (bool), e.g. "
                    f"`def __call__(self, x, *, train: bool = False)`. Flax said: {e}"
                ) from e
            raise
    outputs = jax.eval_shape(
        lambda p: model.apply({"params": p}, x1, train=True, rngs={"dropout": rngs["dropout"]}), params
    )
    check_outputs(outputs, tasks)
    for t in tasks:
        out = outputs[t.name]
        shape = getattr(out, "shape", None)
        if t.kind == tasks_lib.CLASSIFICATION and shape is not None and (len(shape) != 2 or shape[-1] != t.num_outputs):
            raise ContractError(
                f"the model's output for classification task {t.name!r} has shape {shape} (for one example); "
                f"expected [1, {t.num_outputs}] logits (num_outputs={t.num_outputs})."
            )
        if t.kind == tasks_lib.REGRESSION and shape is not None and int(np.prod(shape[1:] or (1,))) != t.num_outputs:
            raise ContractError(
                f"the model's output for regression task {t.name!r} has shape {shape} (for one example); "
                f"expected {t.num_outputs} value(s) per example."
            )
    if weighting is not None and weighting.requires in (weighting_lib.JACOBIAN, weighting_lib.GRAMIAN):
        if config.jacobian_mode == "representation":
            missing = [m for m in ("encode", "decode") if not hasattr(model, m)]
            if missing:
                raise ContractError(
                    f"jacobian_mode='representation' needs {type(model).__name__}.{' and .'.join(missing)}: "
                    "`encode(x, *, train)` -> shared representation and `decode(rep, *, train)` -> {task: output}; "
                    "or use jacobian_mode='params'."
                )
        if not getattr(model, "no_shared_params", False):
            sharing = as_sharing(config.shared)
            shared = sharing.split(params)[0] if isinstance(params, dict) or not sharing.by_key else {}
            try:
                require_shared(shared, params, sharing, "this weighting scheme")
            except ValueError as e:
                raise ContractError(str(e)) from None
