"""A Flax model and its declared tasks as the core's :class:`jmtl.core.Objective`.

``model.apply`` gives ``{task: output}``; each :class:`jmtl.tasks.Task` turns its output and labels
into a batch-mean loss (over its labelled examples when the batch carries the task's mask). The
representation split (``encode``/``decode``, or ``decode_split`` for separable heads) is offered
to the core when the model declares it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from jmtl import tasks as tasks_lib
from jmtl.core.paths import Objective
from jmtl.tasks import Task
from jmtl.weighting import last_layer as last_layer_scheme  # the kinds bayesagg_mtl implements

Array = jax.Array


def check_outputs(outputs: Any, tasks: Sequence[Task]) -> None:
    """The model's outputs must be a dict with exactly one entry per declared task (checked at trace time)."""
    if not isinstance(outputs, dict):
        raise TypeError(
            f"the model returned {type(outputs).__name__}; a multi-task model's __call__ must return a dict "
            f"{{task name: output}} with the tasks {[t.name for t in tasks]}"
        )
    names = [t.name for t in tasks]
    missing = [n for n in names if n not in outputs]
    extra = [n for n in outputs if n not in names]
    if missing or extra:
        raise ValueError(
            "the model's outputs do not match the declared tasks: "
            + "; ".join(
                part
                for part in (
                    f"missing output(s) for task(s) {missing}" if missing else "",
                    f"output(s) {extra} belong to no declared task" if extra else "",
                )
                if part
            )
            + f". Declared tasks: {names}; model outputs: {list(outputs)}. Build the model for the same task list."
        )


def task_losses(tasks: Sequence[Task], outputs: dict, batch: dict, axis_name: Optional[str]) -> Array:
    """Batch-mean loss ``[K]`` of every task (over its labelled examples where the batch has the
    task's mask entry, see :class:`jmtl.tasks.Task`)."""
    check_outputs(outputs, tasks)
    losses = []
    for t in tasks:
        mask = batch.get(t.mask_key)
        if mask is None:
            losses.append(jnp.mean(t.loss(outputs[t.name], batch[t.label_key])))
            continue
        labels = t.safe_labels(batch[t.label_key], mask)
        if t.kind in tasks_lib.PIXEL_KINDS and t.loss_fn is None:
            # Unlabelled examples now hold no valid pixel, so the plain batch mean of the pooled
            # per-example values is already the pixel mean over the labelled examples.
            losses.append(jnp.mean(t.loss(outputs[t.name], labels)))
            continue
        count = jnp.sum(mask.astype(jnp.float32))
        scale = 1.0
        if axis_name is not None:
            # The device mean of the local losses must be the global masked mean: divide the local
            # sum by the global count and multiply by the device count.
            count = jax.lax.psum(count, axis_name)
            scale = jax.lax.axis_size(axis_name)
        losses.append(scale * tasks_lib.masked_mean(t.loss(outputs[t.name], labels), mask, count))
    return jnp.stack(losses)


@dataclasses.dataclass(frozen=True)
class FlaxObjective:
    """The pieces a Flax model's objective is made of (static, fixed when the step is built)."""

    model: Any
    tasks: tuple[Task, ...]
    apply: Callable  # model.apply, possibly in mixed precision
    model_input: Callable[[dict], Any]
    axis_name: Optional[str]
    per_task_inputs: bool = False  # batch = {task name: that task's own batch} (LibMTL's multi_input)
    per_example: bool = False  # losses() gives one objective per example: the sum of its task losses

    def losses(self, params, batch: dict, rng: Array, extra: dict) -> Array:
        if self.per_example:
            return jnp.sum(self.example_losses(params, batch, rng, extra), axis=0)
        if self.per_task_inputs:
            return self._per_task_input_losses(params, batch, rng, extra)
        outputs = self.apply({"params": params}, self.model_input(batch), train=True, rngs={"dropout": rng}, **extra)
        return task_losses(self.tasks, outputs, batch, self.axis_name)

    def example_losses(self, params, batch: dict, rng: Array, extra: dict) -> Array:
        """``[K, B]``: task k's loss on example b (``Task.loss`` before the batch mean); per-example
        objectives only (no label masks, no losses pooled over the batch)."""
        masked = [t.mask_key for t in self.tasks if t.mask_key in batch]
        if masked:
            raise ValueError(
                f"per_example objectives take every task's loss on every example, but the batch has label masks "
                f"{masked}: use per_example=False for partially labelled data"
            )
        outputs = self.apply({"params": params}, self.model_input(batch), train=True, rngs={"dropout": rng}, **extra)
        check_outputs(outputs, self.tasks)
        return jnp.stack([t.loss(outputs[t.name], batch[t.label_key]) for t in self.tasks])

    def _per_task_input_losses(self, params, batch: dict, rng: Array, extra: dict) -> Array:
        """Each task's loss on its own batch through the shared encoder: ``batch[task.name]`` holds the
        task's input and labels. The model runs once per task (its other heads' outputs are unused)."""
        missing = [t.name for t in self.tasks if t.name not in batch]
        if missing:
            raise KeyError(
                f"per_task_inputs: the batch has no sub-batch for task(s) {missing} (entries: {list(batch)}); "
                "it must be {task name: {input, labels}} (see jmtl.data.PerTaskBatches)"
            )
        losses = []
        for i, t in enumerate(self.tasks):
            sub = batch[t.name]
            outputs = self.apply(
                {"params": params},
                self.model_input(sub),
                train=True,
                rngs={"dropout": jax.random.fold_in(rng, i)},
                **extra,
            )
            losses.append(task_losses((t,), {t.name: outputs[t.name]}, sub, self.axis_name)[0])
        return jnp.stack(losses)

    def encode(self, params, batch: dict, rng: Array, extra: dict):
        return self.apply(
            {"params": params}, self.model_input(batch), train=True, rngs={"dropout": rng}, method=self.model.encode
        )

    def heads(self, params, rep, batch: dict, rng: Array, extra: dict) -> Array:
        method = self.model.decode_split if self.split_heads else self.model.decode
        outputs = self.apply({"params": params}, rep, train=True, rngs={"dropout": rng}, method=method)
        return task_losses(self.tasks, outputs, batch, self.axis_name)

    def targets(self, batch: dict) -> tuple[Array, Array]:
        """``([B, K] labels, [B, K] mask)`` for last-layer schemes (``bayesagg_mtl``): regression
        targets, class indices or 0/1 labels (as floats); the mask is 1 where a task has no mask entry."""
        wrong = [
            f"{t.name} ({t.kind})" for t in self.tasks if t.kind not in last_layer_scheme.KINDS or t.loss_fn is not None
        ]
        if wrong:
            raise ValueError(
                f"bayesagg_mtl implements regression, classification and binary tasks with their built-in losses "
                f"only; task(s) {wrong} are not: use another scheme"
            )
        # The posterior is over the heads' last affine layer on the representation: a hidden layer
        # (or the relation mixing) between them would make it a posterior of some other model.
        heads = getattr(getattr(self.model, "tasks", None), "heads", ())
        hidden = [n for n, h in zip(self.model.tasks.names, heads) if getattr(h, "rep_size", None)] if heads else []
        if hidden or getattr(self.model, "relation", False):
            raise ValueError(
                f"bayesagg_mtl needs every head to be one affine layer on the shared representation; "
                f"{f'task(s) {hidden} have a hidden layer' if hidden else 'the relation matrix mixes them'}: "
                "set model.head_kwargs.hidden=None (0 for classification heads) and model.relation=False"
            )
        ys, masks = [], []
        for t in self.tasks:
            y = batch[t.label_key]
            if y.size != y.shape[0]:
                raise ValueError(
                    f"bayesagg_mtl: task {t.name!r} has {y.size // y.shape[0]} labels per example; one per task only"
                )
            ys.append(y.reshape(-1).astype(jnp.float32))
            mask = batch.get(t.mask_key)
            masks.append(jnp.ones_like(ys[-1]) if mask is None else mask.reshape(-1).astype(ys[-1].dtype))
        return jnp.stack(ys, axis=1), jnp.stack(masks, axis=1)

    @property
    def target_kinds(self) -> tuple[str, ...]:
        return tuple(t.kind for t in self.tasks)

    def last_layer(self, params) -> tuple:
        """Each head's last affine layer ``(kernel [D, C], bias [C])``, in task order: the model's
        ``last_layers(params)`` if it has one, else ``params['tasks'][name]['out']`` (jmtl's heads)."""
        own = getattr(self.model, "last_layers", None)
        if own is not None:
            return tuple(own(params))
        try:
            return tuple(
                (params["tasks"][n]["out"]["kernel"], params["tasks"][n]["out"]["bias"]) for n in self.model.tasks.names
            )
        except (KeyError, TypeError, AttributeError):
            raise ValueError(
                "bayesagg_mtl with classification tasks reads each head's last affine layer, which this model does "
                "not expose at params['tasks'][name]['out']. Fix: give the model a method last_layers(params) -> "
                "[(kernel [D, C], bias [C]) per task, in task order], or build it with jmtl.models.mtl.build"
            ) from None

    @property
    def has_representation(self) -> bool:
        return (
            not self.per_task_inputs
            and hasattr(self.model, "encode")
            and (hasattr(self.model, "decode") or self.split_heads)
        )

    @property
    def split_heads(self) -> bool:
        """Task k's output depends on the representation only through head k (declared by the model)."""
        return bool(getattr(self.model, "separable_heads", False)) and hasattr(self.model, "decode_split")

    def objective(self) -> Objective:
        split = self.has_representation and not self.per_example
        return Objective(
            num_tasks=len(self.tasks),
            losses=self.losses,
            encode=self.encode if split else None,
            heads=self.heads if split else None,
            split_heads=split and self.split_heads,
            targets=self.targets if split else None,
            target_kinds=self.target_kinds if split else None,
            # Only classification heads' posteriors read the current last layer (regression's is closed-form).
            last_layer=self.last_layer if split and set(self.target_kinds) - {tasks_lib.REGRESSION} else None,
        )
