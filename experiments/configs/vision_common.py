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
            raise ValueError(f"config argument {arg!r}: a single-task run has no weighting scheme; drop ',{method}'")
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


def dense_protocol(
    c: ml_collections.ConfigDict, variant: str, *, batch_size: int, deeplab_batch_size: int, eval_batch_size: int
) -> ml_collections.ConfigDict:
    """The NYUv2 / Cityscapes protocol both configs share: SegNet (``hps``) or MTAN-SegNet, Adam 1e-4
    halved after 100 of 200 epochs (MTAN / Nash-MTL / FAMO), an evaluation every epoch (the last-10
    average needs each epoch's test record); ``deeplab``: LibMTL's ResNet-50-dilated with ASPP heads and
    torch Adam's L2 term 1e-5. The batch sizes are each benchmark's own."""
    c.model.encoder = "segnet"
    c.model.encoder_kwargs = dict()
    c.model.head_kwargs = dict()
    c.model.arch = "mtan_segnet" if variant == "mtan" else "hps"
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-4
    c.optimizer.decay_rate = 0.5  # StepLR(step_size=100, gamma=0.5)
    c.optimizer.decay_every_epochs = 100
    c.batch_size = batch_size
    c.num_epochs = 200
    if variant == "deeplab":
        c.model.encoder = "resnet50_dilated"
        # weights: a converted torchvision .npz (width 64, torchvision's: the only width it fits)
        c.model.encoder_kwargs = dict(output_stride=8, weights="", width=64)
        c.model.head_kwargs = dict(style="deeplab", upsample=8)  # ASPP heads, bilinear x8 to the input size
        c.optimizer.weight_decay = 1e-5  # torch Adam's L2 term (LibMTL's optim_param)
        c.batch_size = deeplab_batch_size
    c.eval_every_steps = -1  # once per epoch: the last-10-epochs average needs every epoch's test record
    c.eval_batch_size = eval_batch_size
    c.log_every_steps = 100
    return c
