"""Many small batch entries sent to the devices as a few arrays, unpacked inside the compiled step.

A many-task batch holds one label array per task, and one mask array per task with missing labels:
School's 139 tasks make 279 entries of ``[B]`` each. Every entry is its own host-to-device transfer,
about 25-35 us of host time on CPU, so the transfers of one such batch (7-18 ms) cost as much as the
compiled step itself (10-15 ms for a loss-level scheme at K = 139, ``results/school/k139_step_time.md``).
:class:`LeafPacker` stacks the entries that share dtype and shape into one array on the host (one
``np.stack``, ~0.3 ms) and slices them apart again at the start of the step, where slicing is free.
Values are unchanged; batches with fewer than :data:`MIN_LEAVES` entries pass through untouched, so
the programs of few-task runs are exactly those of before.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import numpy as np

PyTree = Any
MIN_LEAVES = 16  # below this many batch entries, packing saves too little to change the program


class LeafPacker:
    """Packs a batch's leaves into one array per (dtype, shape) group, and unpacks them in the step.

    The layout is fixed by the first batch packed; a later batch with another structure, dtype or
    shape raises (the compiled step was traced for the first).
    """

    def __init__(self, min_leaves: Optional[int] = None):
        self.min_leaves = MIN_LEAVES if min_leaves is None else min_leaves
        self.treedef = None
        self.groups: list[list[int]] = []  # leaf indices stacked together (along a new last axis)
        self.singles: list[int] = []  # leaves passed as they are
        self.signature: Optional[list[tuple]] = None

    @property
    def active(self) -> bool:
        return bool(self.groups)

    def _plan(self, leaves: list, treedef) -> None:
        self.treedef = treedef
        self.signature = [(np.asarray(x).dtype.str, np.shape(x)) for x in leaves]
        if len(leaves) < self.min_leaves:
            self.singles = list(range(len(leaves)))
            return
        by_kind: dict[tuple, list[int]] = {}
        for i, sig in enumerate(self.signature):
            by_kind.setdefault(sig, []).append(i)
        self.groups = [idx for idx in by_kind.values() if len(idx) > 1]
        grouped = {i for idx in self.groups for i in idx}
        self.singles = [i for i in range(len(leaves)) if i not in grouped]

    def pack(self, batch: PyTree) -> PyTree:
        """Host batch -> ``(stacked groups, single leaves)`` (the batch itself when not worth it)."""
        leaves, treedef = jax.tree_util.tree_flatten(batch)
        if self.signature is None:
            self._plan(leaves, treedef)
        if not self.active:
            return batch
        signature = [(np.asarray(x).dtype.str, np.shape(x)) for x in leaves]
        if treedef != self.treedef or signature != self.signature:
            raise ValueError(
                "a training batch changed its entries, dtypes or shapes after the first batch; every "
                "batch must have the layout of the first (the step was compiled for it)"
            )
        stacked = [np.stack([np.asarray(leaves[i]) for i in idx], axis=-1) for idx in self.groups]
        return stacked, [leaves[i] for i in self.singles]

    def unpack(self, packed: PyTree) -> PyTree:
        """Inside the step: ``pack``'s output -> the original batch (free slices)."""
        if not self.active:
            return packed
        stacked, singles = packed
        leaves: list = [None] * len(self.signature)
        for array, idx in zip(stacked, self.groups):
            for j, i in enumerate(idx):
                leaves[i] = array[..., j]
        for array, i in zip(singles, self.singles):
            leaves[i] = array
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def wrap(self, step: Callable[[PyTree, PyTree], Any]) -> Callable[[PyTree, PyTree], Any]:
        """``step(state, batch)`` -> ``step(state, packed batch)``."""
        return lambda state, packed: step(state, self.unpack(packed))
