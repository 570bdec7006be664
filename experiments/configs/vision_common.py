"""What the vision protocol configs (nyuv2, cityscapes, celeba, office) share.

A vision config's argument is ``VARIANT[,METHOD]``: ``experiments/configs/nyuv2.py:mtan,nash_mtl``
trains MTAN-SegNet with Nash-MTL; ``:segnet`` the shared SegNet with equal weights; ``:stl_depth`` a
single-task SegNet on depth alone (the papers' STL baseline). The method is any name of
``jmtl.weighting`` (``python -m experiments.list_methods``); its hyperparameters stay overridable
(``--config.weighting.hparams.gamma=0.01``).
"""

from __future__ import annotations

from typing import Sequence

import ml_collections

from experiments.configs import common


def parse_arg(
    arg: str | None, variants: Sequence[str], tasks: Sequence[str] | None, default: str
) -> tuple[str, str | None, str | None]:
    """``'mtan,famo'`` -> ``('mtan', 'famo', None)``; ``'stl_depth'`` -> ``('stl', None, 'depth')``.

    ``tasks=None`` accepts any single-task name (CelebA: the loader names the valid attributes)."""
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    variant = parts[0] if parts else default
    method = parts[1] if len(parts) > 1 else None
    if len(parts) > 2:
        raise ValueError(f"config argument {arg!r}: expected VARIANT[,METHOD], e.g. {default},nash_mtl")
    stl_task = None
    if variant.startswith("stl_"):
        stl_task = variant[len("stl_") :]
        if tasks is not None and stl_task not in tasks:
            raise ValueError(
                f"config argument {arg!r}: no task {stl_task!r}; single-task variants: "
                f"{', '.join('stl_' + t for t in tasks)}"
            )
        if not stl_task.isidentifier():
            raise ValueError(f"config argument {arg!r}: {stl_task!r} is not a task name (e.g. stl_smiling)")
        variant = "stl"
        if method not in (None, "equal"):
            raise ValueError(f"config argument {arg!r}: a single-task run has no weighting method; drop ',{method}'")
    elif variant not in variants:
        raise ValueError(
            f"config argument {arg!r}: unknown variant {variant!r}; valid: {', '.join(variants)}, "
            f"or stl_<task>{'' if tasks is None else ' with <task> one of ' + ', '.join(tasks)} "
            f"(e.g. :{default},famo)"
        )
    return variant, method, stl_task


def set_method(c: ml_collections.ConfigDict, method: str | None) -> ml_collections.ConfigDict:
    if method:
        c.weighting = common.method_config(method)
    return c
