"""Your own batches, from any Python iterable, made resumable for the training loop.

:class:`ReplayIterator` turns an iterable of batch dicts (a generator, a list of batches, a PyTorch or
grain loader yielding numpy arrays) or a factory ``seed -> iterable`` into the iterator the loop needs:
endless (a finished pass starts the next epoch from the factory) and checkpointable. Its state is
the position ``(epoch, batches into it)``, so a resumed run re-creates the epoch and skips the batches
already trained on; an iterable with its own ``get_state``/``set_state`` (grain's) is restored
directly instead. Exact resume needs the factory to give the same batches again for the same seed
and epoch (a seeded shuffle), which is what a researcher's deterministic loader does.

:func:`concatenate_batches` reads a finite iterable of batches into one dict of arrays (evaluation
splits are held in memory).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import jax
import numpy as np

from jmtl import tasks as tasks_lib
from jmtl.data.idx import DataError
from jmtl.errors import DataExhaustedError

Batch = dict[str, Any]


class LabelCheck:
    """Checks a user's training batches as :func:`jmtl.data.from_arrays` checks arrays.

    Every batch: its label masks hold only 0/1 (``tasks.check_mask_values``, the check of every data
    path). Over the first epoch (when seen whole by this process): the labelled examples of each task
    are counted, and a task labelled on none of them is refused at the epoch's end (it would train on
    nothing and still be scored and counted in model selection).

    Args:
      tasks: the tasks whose entries the batches carry.
      name: how messages name the data (e.g. ``'train'``).
    """

    def __init__(self, tasks, name: str = "train"):
        self.tasks, self.name = tuple(tasks), name
        self.labelled = {t.name: 0 for t in self.tasks}
        self.counting = True

    def __call__(self, batch: Mapping[str, Any], epoch: int, position: int) -> None:
        tasks_lib.check_masks(self.tasks, batch, f"the {self.name} data's batch {position + 1} of epoch {epoch}")
        if self.counting:
            for t in self.tasks:
                if t.mask_key in batch:
                    self.labelled[t.name] += int(np.count_nonzero(np.asarray(batch[t.mask_key])))
                else:
                    self.labelled[t.name] += 1  # no mask: every example is labelled

    def epoch_end(self) -> None:
        if not self.counting:
            return
        self.counting = False
        empty = [n for n, c in self.labelled.items() if c == 0]
        if empty:
            raise DataError(tasks_lib.unlabelled_task_message(empty, f"the {self.name} data's first epoch"))


def refuse_table(source: Any, name: str) -> None:
    """A pandas-like table (a DataFrame: ``columns`` and ``to_numpy``) is neither a dict of arrays nor an
    iterable of batches (iterating one yields its column names): refused, naming the type and the fix."""
    if (
        isinstance(source, Mapping)
        or not hasattr(source, "columns")
        or not (hasattr(source, "to_numpy") or hasattr(source, "iloc"))
    ):
        return
    kind = f"{type(source).__module__}.{type(source).__qualname__}"
    raise TypeError(
        f"the {name} data is a table ({kind}); jmtl takes a dict of arrays or an iterable of batch dicts. "
        "Fix: pass {column: df[column].to_numpy() for column in df.columns}"
    )


def call_factory(factory: Callable[..., Iterable[Batch]], seed: int, epoch: int) -> Iterable[Batch]:
    """``factory(seed, epoch)`` when it takes two arguments, else ``factory(seed)``."""
    try:
        params = [
            p
            for p in inspect.signature(factory).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
    except (TypeError, ValueError):  # builtins without a signature
        params = []
    takes_epoch = len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
    return factory(seed, epoch) if takes_epoch else factory(seed)


class ReplayIterator:
    """An endless, checkpointable iterator over a user's batches.

    Args:
      source: an iterable of batch dicts, or a factory ``seed -> iterable`` (or ``(seed, epoch) ->
        iterable``, to reshuffle each epoch). A re-iterable source (a list, a loader) or a factory
        starts a new epoch when a pass ends; a one-shot iterator (a generator object) cannot, and
        raises :class:`DataExhaustedError` naming the fix when it runs out.
      seed: passed to the factory.
      name: how messages name the data (e.g. ``'train'``).
    """

    def __init__(
        self,
        source: Iterable[Batch] | Callable[..., Iterable[Batch]],
        seed: int = 0,
        name: str = "train",
        check: Optional[LabelCheck] = None,
    ):
        refuse_table(source, name)
        if not callable(source) and not isinstance(source, Iterable):
            raise TypeError(
                f"{name} data must be an iterable of batch dicts or a callable seed -> iterable, "
                f"got {type(source).__name__}"
            )
        self.source, self.seed, self.name, self.check = source, int(seed), name, check
        self.one_shot = not callable(source) and iter(source) is source
        self.epoch, self.position, self.total = 0, 0, 0
        self._iterator = self._start_epoch()

    def _start_epoch(self) -> Iterator[Batch]:
        iterable = call_factory(self.source, self.seed, self.epoch) if callable(self.source) else self.source
        return iter(iterable)

    def __iter__(self) -> "ReplayIterator":
        return self

    def __next__(self) -> Batch:
        try:
            batch = next(self._iterator)
        except StopIteration:
            if self.one_shot:
                raise DataExhaustedError(
                    f"the {self.name} data (a one-shot iterator) ran out after {self.total} batches. Fix: pass a "
                    "re-iterable (a list of batches, a loader), a callable seed -> iterable (called again for each "
                    "epoch), in-memory arrays, or fewer steps"
                ) from None
            if self.position == 0:
                raise DataExhaustedError(f"the {self.name} data yielded no batches") from None
            if self.check is not None:
                self.check.epoch_end()
            self.epoch, self.position = self.epoch + 1, 0
            self._iterator = self._start_epoch()
            return next(self)
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"the {self.name} data yielded a {type(batch).__name__}; each batch must be a dict "
                "{entry name: array} (the input and the labels)"
            )
        if self.check is not None:
            self.check(batch, self.epoch, self.position)
        self.position += 1
        self.total += 1
        return dict(batch)

    def get_state(self) -> dict:
        state = {"epoch": self.epoch, "position": self.position, "total": self.total}
        if hasattr(self._iterator, "get_state"):
            state["iterator"] = self._iterator.get_state()
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Moves to a saved position: the saved iterator state when there is one, else re-creating that
        epoch and skipping the batches already consumed."""
        if not isinstance(state, Mapping) or not {"epoch", "position"} <= set(state):
            raise ValueError(
                f"the saved {self.name} data state {state!r} was not written by a ReplayIterator: "
                "the checkpoint comes from a run fed other data"
            )
        self.epoch, self.total = int(state["epoch"]), int(state.get("total", 0))
        if self.check is not None and (self.epoch, int(state["position"])) != (0, 0):
            self.check.counting = False  # a part of the first epoch only: its counts would prove nothing
        if self.one_shot:
            # The caller passed a fresh iterator for the resumed run: skip what the checkpoint trained on.
            self.epoch, skip = 0, int(state["total"])
        else:
            self._iterator, skip = self._start_epoch(), int(state["position"])
        if "iterator" in state and hasattr(self._iterator, "set_state"):
            self._iterator.set_state(state["iterator"])
            self.position = int(state["position"])
            return
        for i in range(skip):
            try:
                next(self._iterator)
            except StopIteration:
                raise DataExhaustedError(
                    f"resuming: the {self.name} data has fewer than the {skip} batches the checkpoint had trained on "
                    f"in epoch {self.epoch} (it ended after {i}); it is not the data the run started with"
                ) from None
        self.position = int(state["position"]) if not self.one_shot else skip


def concatenate_batches(
    source: Mapping[str, Any] | Iterable[Batch], name: str, limit: Optional[int] = 1_000_000
) -> dict[str, np.ndarray]:
    """A split as one dict of host arrays: a mapping of arrays as is; a finite iterable of batch dicts
    concatenated along the example axis.

    Args:
      source: ``{entry: array}`` or a finite iterable of such batches (same entries in each).
      name: how messages name the split.
      limit: refuse more batches than this (an endless iterable would never finish).
    """
    if isinstance(source, Mapping):
        return {k: np.asarray(v) for k, v in source.items()}
    refuse_table(source, name)
    if callable(source):
        raise TypeError(f"the {name} split must be arrays or a finite iterable of batches, not a callable")
    batches = []
    for i, batch in enumerate(source):
        if limit is not None and i >= limit:
            raise ValueError(f"the {name} split yielded over {limit} batches; an evaluation split must be finite")
        if not isinstance(batch, Mapping):
            raise TypeError(f"the {name} split yielded a {type(batch).__name__}; each batch must be a dict")
        if batches and set(batch) != set(batches[0]):
            raise ValueError(
                f"the {name} split's batches have different entries: {sorted(batches[0])} vs {sorted(batch)}"
            )
        batches.append(jax.tree.map(np.asarray, dict(batch)))
    if not batches:
        raise ValueError(f"the {name} split is empty")
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *batches)
