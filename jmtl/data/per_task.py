"""Per-task inputs (LibMTL's ``multi_input``): each task has its own dataset, e.g. Office-31's domains.

:class:`PerTaskBatches` zips one resumable iterator per task into batches ``{task: that task's
batch}``, the layout ``StepConfig(per_task_inputs=True)`` expects. Its state is the dict of the
iterators' states, so a checkpointed run resumes every task's data order exactly.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping


class PerTaskBatches:
    """Zips per-task iterators: ``next(it) -> {task name: next(iterators[task])}``.

    Args:
      iterators: ``{task name: iterator}``; each yields that task's batches (dicts with the input and
        the task's labels). Iterators with ``get_state``/``set_state`` (grain's, jmtl's) make the
        zip resumable.
    """

    def __init__(self, iterators: Mapping[str, Iterator[dict]]):
        if not iterators:
            raise ValueError("PerTaskBatches needs at least one task's iterator")
        self.iterators = dict(iterators)

    def __iter__(self) -> "PerTaskBatches":
        return self

    def __next__(self) -> dict[str, Any]:
        return {name: next(it) for name, it in self.iterators.items()}

    def get_state(self) -> dict:
        missing = [n for n, it in self.iterators.items() if not hasattr(it, "get_state")]
        if missing:
            raise TypeError(f"the iterators of task(s) {missing} have no get_state(); they cannot be checkpointed")
        return {name: it.get_state() for name, it in self.iterators.items()}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or set(state) != set(self.iterators):
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                f"the saved data-iterator state is for tasks {got}, not {sorted(self.iterators)}: the checkpoint "
                "was written by a run with other tasks"
            )
        for name, it in self.iterators.items():
            it.set_state(state[name])
