"""Orbax checkpoints of the whole train state plus the JSON needed to resume exactly.

A checkpoint holds params, optimizer and weighting state, step and PRNG key (the ``TrainState``) and
a JSON record: the data iterator's state, the best-validation record, and a *model signature* (the
params tree's paths and shapes, the task names, the weighting method). Restoring into a workdir whose
checkpoint has a different signature is refused (nothing is overwritten). Orbax writes each
checkpoint to a temporary directory and renames it when complete, so a half-written checkpoint is
never picked up as the latest: orbax 0.12.8 on a local disk writes ``<step>.orbax-checkpoint-tmp/``,
adds ``commit_success.txt`` last and renames the folder to ``<step>/``; orbax ignores the temporary
name, and left-over temporary folders of a killed save are deleted when the next run starts. A
``<step>/`` folder that still lacks a file of a finished save (copied or synced half-way, a file
system without atomic rename) would be taken as complete by orbax, so ``Checkpointer`` moves it
aside to ``<step>.incomplete-<time>/`` before looking for the latest step.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

PyTree = Any


class CheckpointMismatchError(ValueError):
    """The workdir holds a checkpoint of a different model / task set / weighting scheme."""


def model_signature(state_host: PyTree, task_names, weighting_name: str) -> dict:
    params_shapes = {
        jax.tree_util.keystr(path): list(np.shape(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(state_host.params)[0]
    }
    return {"params": params_shapes, "tasks": list(task_names), "weighting": weighting_name}


def _describe_difference(saved: dict, current: dict) -> str:
    parts = []
    if saved.get("tasks") != current.get("tasks"):
        parts.append(f"tasks {saved.get('tasks')} vs {current.get('tasks')}")
    if saved.get("weighting") != current.get("weighting"):
        parts.append(f"weighting {saved.get('weighting')!r} vs {current.get('weighting')!r}")
    sp, cp = saved.get("params", {}), current.get("params", {})
    missing = sorted(set(sp) - set(cp))[:3]
    extra = sorted(set(cp) - set(sp))[:3]
    shape = [k for k in sorted(set(sp) & set(cp)) if sp[k] != cp[k]][:3]
    if missing:
        parts.append(f"params only in the checkpoint: {missing}")
    if extra:
        parts.append(f"params only in this model: {extra}")
    if shape:
        parts.append("shape changes: " + ", ".join(f"{k} {sp[k]} -> {cp[k]}" for k in shape))
    return "; ".join(parts) or "signatures differ"


_STEP_DIR = re.compile(r"^(0|[1-9][0-9]*)$")  # orbax's default step-folder names
# What a finished save of ``Checkpointer.save`` holds (orbax 0.12.8): the commit marker is written last.
_COMPLETE_FILES = ("commit_success.txt", "_CHECKPOINT_METADATA", "state/_METADATA", "meta/metadata")


def incomplete_step_dirs(directory: str | Path) -> list[Path]:
    """Step folders (``<step>/``) under ``directory`` missing a file that every finished save has."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(
        (p for p in directory.iterdir()
         if p.is_dir() and _STEP_DIR.match(p.name) and not all((p / f).exists() for f in _COMPLETE_FILES)),
        key=lambda p: int(p.name),
    )


def _set_aside_incomplete(directory: Path) -> None:
    if jax.process_index() == 0:
        for path in incomplete_step_dirs(directory):
            missing = [f for f in _COMPLETE_FILES if not (path / f).exists()]
            aside = path.with_name(f"{path.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
            path.rename(aside)
            logging.warning(
                "checkpoint %s is incomplete (missing %s: its save was interrupted); moved it to %s and "
                "resuming from the latest complete checkpoint instead",
                path, ", ".join(missing), aside.name,
            )
    if jax.process_count() > 1:  # every process must see the same steps
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jmtl_checkpoint_set_aside_incomplete")


class Checkpointer:
    def __init__(self, directory: str | Path, *, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        _set_aside_incomplete(self.directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True),
        )

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: PyTree, meta: dict) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore(self, abstract_state: PyTree, signature: dict, step: Optional[int] = None) -> tuple[PyTree, dict]:
        """Restores the latest (or given) step into ``abstract_state``'s structure.

        Raises ``CheckpointMismatchError`` (naming the differences) if the checkpoint's model signature
        differs from ``signature``.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        saved = meta.get("signature", {})
        if json.dumps(saved, sort_keys=True) != json.dumps(signature, sort_keys=True):
            raise CheckpointMismatchError(
                f"the workdir {self.directory.parent} holds a checkpoint of a different model "
                f"({_describe_difference(saved, signature)}); refusing to resume or overwrite it. "
                "Use a new --workdir, or delete that directory if you no longer need it."
            )
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )["state"]
        return restored, meta

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
