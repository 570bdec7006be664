"""CelebA's 40 binary attributes at 64x64 with FAMO's CNN (Liu et al., NeurIPS 2023; the protocol of
``Cranial-XIX/FAMO``'s ``experiments/celeba``).

Variants (``:VARIANT[,METHOD]``): ``cnn`` (default: FAMO's 9-layer CNN shared by the 40 tasks, one
linear + sigmoid head per attribute) or ``stl_<attribute>`` (the same CNN on one attribute, FAMO's
``trainer_one_task.py``; attribute names as ``jmtl.data`` makes them, e.g. ``stl_smiling``).

Protocol (FAMO's code): Adam 3e-4, batch 256, 15 epochs, binary cross-entropy per attribute, the
official train / val / test partition (``list_eval_partition.txt``: 162,770 / 19,867 / 19,962).
Metric (FAMO's code): per-attribute F1 of the positive class, prediction ``sigmoid > 0.5`` (logit
> 0), TP / FP / FN counted over the whole split, F1 = 2 TP / (2 TP + FP + FN) (0 when an attribute
is neither present nor predicted in the split, as FAMO's ``2PR / (P + R + 1e-8)`` gives). Every task
here has ``metric='f1'`` (``config.tasks['*']``): each attribute reports its split-level ``f1``
beside accuracy and loss (instead of the AUC, which FAMO does not report), model selection keeps
the evaluation with the best mean validation F1 (the mean over the 40 attributes, FAMO's
``val_f1.mean()``), and ``experiments/vision_report.py --select best_val`` reports the test F1s of
that evaluation, with Δm% over the 40 F1s against jmtl's own single-attribute runs (``--stl``;
FAMO prints no per-attribute STL F1s, results/published.md). FAMO's gamma here: 0.001 (the default).

    python -m experiments.train --config experiments/configs/celeba.py:cnn,famo \
        --workdir /tmp/celeba_famo --config.dataset.data_dir=/path/to/celeba
    # one single-attribute run per attribute (stl_smiling, stl_young, ...; 40 in all), then:
    python -m experiments.vision_report --benchmark celeba --workdir /tmp/celeba_famo \
        --select best_val --stl smiling=/tmp/celeba_stl_smiling young=/tmp/celeba_stl_young ...

``/path/to/celeba`` holds ``list_attr_celeba.txt``, ``list_eval_partition.txt`` and the aligned
JPEGs (``img_align_celeba/``), in the layout of ``jmtl/data/celeba.py`` (FAMO's ``Anno/``, ``Eval/``,
``Img/`` layout included).

Expected GPU time (an ESTIMATE from FLOPs, not a measurement): the CNN is 1.3 GFLOP per 64x64 image
forward (XLA's cost analysis; 5.2 M params), ~4 GFLOP per training image; 15 epochs x 162,770
images is ~1e16 FLOP,
minutes of compute on an H100 (decoding the JPEGs once dominates: the builder caches the resized
arrays). Per-task-gradient methods on the parameters need 40 backward passes a step (~40x the
backward compute; use ``--config.weighting.jacobian_mode=representation`` for MGDA-UB style 512-wide
representation gradients); FAMO costs one extra forward pass.

Compares to: FAMO Table 3 (CelebA: Δm% and MR of LS, SI, RLW, DWA, UW, MGDA, PCGrad, GradDrop,
CAGrad, IMTL-G, Nash-MTL, FAMO; over F1, like this config's Δm%, but against FAMO's own STL runs)
and RLW's Table 7 (average accuracy, a different network: ResNet-18, Adam 1e-3, batch 512). Numbers:
results/published.md, results/published_vision.json. No jmtl number on real CelebA exists yet.
"""

from experiments.configs import common, vision_common


def get_config(arg=None):
    _, method, stl_task = vision_common.parse_arg(arg, ("cnn",), None, default="cnn")
    c = common.base_config()
    c.dataset.name = "celeba"
    c.dataset.kwargs = dict(image_size=64)
    # FAMO's metric: every attribute reported and selected by its split-level F1. '*' alone: one task
    # per label of the dataset, the 40 attributes in the file's order, each with these fields.
    f1 = dict(metric="f1")
    c.tasks = {stl_task: dict(label=stl_task, weight=1.0, **f1)} if stl_task else {"*": f1}
    c.model.encoder = "celeba_cnn"
    c.model.encoder_kwargs = dict(width=64)  # FAMO's widths; smaller only for smoke runs
    c.model.head_kwargs = dict(hidden=0)  # FAMO: one Linear(512, 1) per attribute
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 3e-4
    c.batch_size = 256
    c.num_epochs = 15
    c.eval_every_steps = -1
    c.eval_batch_size = 512
    c.log_every_steps = 100
    return vision_common.set_method(c, method)
