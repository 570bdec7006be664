"""Cityscapes at 128x256 (7-class segmentation, depth), the protocol of MTAN (Liu et al., CVPR 2019)
as Nash-MTL (Navon et al., ICML 2022) and FAMO (Liu et al., NeurIPS 2023) run it.

Variants (``:VARIANT[,METHOD]``): ``mtan`` (default; MTAN-SegNet, every multi-task row of Nash-MTL's
Table 3 and FAMO's Table 3), ``segnet`` (shared SegNet, hard sharing; no published multi-task row
read here), ``stl_segmentation`` / ``stl_depth`` (one SegNet per task, the STL row), ``deeplab``
(LibMTL's protocol: ResNet-50 dilated + ASPP heads, Adam 1e-4 weight decay 1e-5, batch 64; DB-MTL's
Table 2). ``--config.dataset.kwargs.num_classes=19`` reads MTAN's ``label_19/`` instead (no table
read here uses it with this network).

Protocol (from FAMO's ``experiments/cityscapes/trainer.py`` and the papers): Adam 1e-4 halved after
100 of 200 epochs, batch 8, 7-class labels, random scale-crop + flip (FAMO's default; the flip has
no normals to negate), test (the 500 val/ images) after every epoch; reported as the mean of the
test metrics of the last 10 epochs (``experiments/vision_report.py --select last:10``). FAMO's
gamma on Cityscapes is 0.01 (FAMO Sec. 5.2), set by ``:mtan,famo``.

    python -m experiments.train --config experiments/configs/cityscapes.py:mtan,famo \
        --workdir /tmp/city_mtan_famo --config.dataset.data_dir=/path/to/cityscapes
    python -m experiments.vision_report --benchmark cityscapes --workdir /tmp/city_mtan_famo \
        --select last:10 --table famo_table3

``/path/to/cityscapes`` holds MTAN's preprocessed ``train/`` and ``val/`` folders
(``image/``, ``label_7/``, ``depth/``; LibMTL's copy names the 7-class folder ``label/``).

Expected GPU time (an ESTIMATE from FLOPs, not a measurement): SegNet at 128x256 is 32 GFLOP per
image forward (XLA's cost analysis; heads excluded), ~0.1 TFLOP per training image; 200 epochs x
2,975 images + 200 x 500 test images is ~6e16 FLOP, about 20 min at 50 TFLOP/s and realistically
1-2 h on an H100; per-task-gradient methods roughly double the training part (two tasks).

Compares to: Nash-MTL Table 3 and FAMO Table 3 (STL, LS, SI, RLW, DWA, UW, MGDA, PCGrad, GradDrop,
CAGrad, IMTL-G, Nash-MTL, FAMO; Δm% over the 4 metrics; FAMO's LS row repeats SI's numbers, see
results/published.md), DB-MTL Table 2 for ``:deeplab``. Numbers: results/published.md,
results/published_vision.json. No jmtl number on real Cityscapes exists yet.
"""

from experiments.configs import common, vision_common

TASKS = ("segmentation", "depth")
VARIANTS = ("mtan", "segnet", "deeplab")


def get_config(arg=None):
    variant, method, stl_task = vision_common.parse_arg(arg, VARIANTS, TASKS, default="mtan")
    c = common.base_config()
    c.dataset.name = "cityscapes"
    c.dataset.kwargs = dict(num_classes=7, validation_percent=0, augment=True)
    tasks = (stl_task,) if stl_task else TASKS
    c.tasks = {t: dict(label=t, weight=1.0) for t in tasks}
    vision_common.dense_protocol(c, variant, batch_size=8, deeplab_batch_size=64, eval_batch_size=32)
    vision_common.set_method(c, method)
    if method == "famo":
        c.weighting.hparams.gamma = 1e-2  # FAMO Sec. 5.2: gamma 0.01 for CityScapes
    return c
