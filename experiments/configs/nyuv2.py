"""NYUv2 (13-class segmentation, depth, surface normals) at 288x384, the protocol of MTAN (Liu et al.,
CVPR 2019) as Nash-MTL (Navon et al., ICML 2022) and FAMO (Liu et al., NeurIPS 2023) run it.

Variants (``:VARIANT[,METHOD]``, see ``vision_common.py``):

* ``mtan`` (default): MTAN-SegNet (``arch='mtan_segnet'``), the network of every multi-task row of
  Nash-MTL's Table 2 and FAMO's Table 1.
* ``segnet``: the shared SegNet encoder-decoder with one head per task (hard sharing; MTAN's
  "split" baseline). No table read here has a multi-task row for it (results/published.md).
* ``stl_segmentation`` / ``stl_depth`` / ``stl_normal``: one SegNet per task, the papers' STL row.
* ``deeplab``: LibMTL's protocol instead (DeepLabV3+: ResNet-50 dilated, output stride 8, ASPP
  heads; Adam 1e-4 with weight decay 1e-5, batch 8), the network of DB-MTL's Table 1.

Protocol (read from the authors' code, results/published.md): Adam, learning rate 1e-4 halved
after 100 of 200 epochs (``StepLR(100, 0.5)``), batch 2, LibMTL's / CAGrad's augmentation (random
scale-crop by {1, 1.2, 1.5} and horizontal flip; Nash-MTL's and FAMO's ``--apply-augmentation``
default; MTAN's original runs had none), evaluation on the 654 test images after every epoch.
Reported, as Nash-MTL and FAMO report: the test metrics averaged over the last 10 epochs,
computed from the run's ``metrics.jsonl`` by ``experiments/vision_report.py --select last:10``
(not by the train loop: every epoch's record stays, any N can be reported). The validation split
is the test split (``validation_percent=0``), as in those papers, which select no checkpoint;
``--config.dataset.kwargs.validation_percent=10`` holds out 10% of train instead.

    python -m experiments.train --config experiments/configs/nyuv2.py:mtan,nash_mtl \
        --workdir /tmp/nyuv2_mtan_nash --config.dataset.data_dir=/path/to/nyuv2
    python -m experiments.vision_report --benchmark nyuv2 --workdir /tmp/nyuv2_mtan_nash \
        --select last:10 --table nash_mtl_table2 \
        --stl segmentation=/tmp/nyu_stl_seg depth=/tmp/nyu_stl_depth normal=/tmp/nyu_stl_normal

(the ``--stl`` runs: the same command with ``:stl_segmentation`` etc.). ``/path/to/nyuv2`` holds
MTAN's preprocessed ``train/`` and ``val/`` folders (``{image,label,depth,normal}/{i}.npy``).

Expected GPU time (an ESTIMATE from FLOPs, not a measurement): the SegNet encoder-decoder at
288x384 is 0.11 TFLOP per image forward (XLA's cost analysis of ``encoders.get('segnet')``, 24.9 M
params; heads excluded), ~0.33 TFLOP per training image with the backward pass; 200 epochs x 795
images + 200 test passes x 654 images is ~7e16 FLOP, about 25 min at 50 TFLOP/s sustained on an
H100 and realistically 1-2 h at batch 2 (small kernels). ``:deeplab``: the dilated ResNet-50 is
0.08 TFLOP per image forward before its three ASPP heads. MTAN adds its attention modules (more FLOPs); per-task-gradient methods (MGDA,
PCGrad, CAGrad, Nash-MTL, IMTL-G) add a backward pass per task, ~2x the training time of equal
weighting; FAMO adds one forward pass per step.

Compares to: Nash-MTL Table 2 and FAMO Table 1 (STL, LS = equal weights here, SI, RLW, DWA, UW,
MGDA, PCGrad, GradDrop, CAGrad, IMTL-G, Nash-MTL, FAMO; Δm% vs STL over all 9 metrics) and, for
``:deeplab``, DB-MTL Table 1 (LibMTL protocol, Δp). Every number is in results/published.md and
results/published_vision.json. No jmtl number on real NYUv2 exists yet.
"""

from experiments.configs import common, vision_common

TASKS = ("segmentation", "depth", "normal")
VARIANTS = ("mtan", "segnet", "deeplab")


def get_config(arg=None):
    variant, method, stl_task = vision_common.parse_arg(arg, VARIANTS, TASKS, default="mtan")
    c = common.base_config()
    c.dataset.name = "nyuv2"
    # validation_percent=0: validation = the 654 val/ images (the papers' test split); augment: LibMTL's.
    c.dataset.kwargs = dict(validation_percent=0, augment=True)
    tasks = (stl_task,) if stl_task else TASKS
    c.tasks = {t: dict(label=t, weight=1.0) for t in tasks}
    vision_common.dense_protocol(c, variant, batch_size=2, deeplab_batch_size=8, eval_batch_size=8)
    if method == "famo":
        c.weighting = common.method_config("famo")
        c.weighting.hparams.gamma = 1e-3  # FAMO Sec. 5.2: gamma 0.001 on NYU-v2
        return c
    return vision_common.set_method(c, method)
