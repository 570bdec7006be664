"""Office-31 (3 domains, 31 classes) and Office-Home (4 domains, 65 classes) as LibMTL runs them
(``median-research-group/LibMTL``, ``examples/office``): each domain is a task with its own images
(per-task inputs), classified by a shared ImageNet ResNet-18 encoder and one linear head per domain.

Variants (``:VARIANT[,METHOD]``): ``office31`` (default), ``office_home``, and single-domain runs
``stl_<domain>`` (``stl_amazon``, ``stl_dslr``, ``stl_webcam`` of Office-31; ``stl_art``,
``stl_clipart``, ``stl_product``, ``stl_real_world`` of Office-Home).

Protocol (LibMTL's ``examples/office/main.py`` and ``office31.yaml``): ResNet-18 (ImageNet weights
from a local file converted from torchvision's; without one the run starts from scratch and says
so) + Linear(512)-BatchNorm-ReLU-Dropout(0.5), one Linear head per domain, 224x224 inputs, Adam
1e-4 with weight decay 1e-5 (torch Adam's L2 term), batch 64 per domain, 100 epochs, LibMTL's
60/20/20 split lists; reported: the test accuracy at the epoch of the best validation score
(``experiments/vision_report.py --select best_val --average tasks``).

    python -m experiments.train --config experiments/configs/office.py:office31,nash_mtl \
        --workdir /tmp/office31_nash --config.dataset.data_dir=/path/to/office31 \
        --config.model.encoder_kwargs.weights=/path/to/resnet18_imagenet.npz
    python -m experiments.vision_report --benchmark office31 --workdir /tmp/office31_nash \
        --select best_val --average tasks --table dbmtl_table4

``/path/to/office31`` holds the domain folders (``amazon/images/<class>/*.jpg`` ...) and LibMTL's
``data_txt`` split lists, in the layout ``jmtl/data`` documents for ``office31`` / ``office_home``.

Expected GPU time (an ESTIMATE from FLOPs, not a measurement): ResNet-18 at 224x224 is 3.4 GFLOP
per image forward (XLA's cost analysis, multiply-adds counted as 2), ~10 GFLOP per training image;
Office-31's ~2,500 training images x 100 epochs is ~2.5e15 FLOP and Office-Home's ~9,300 x 100 is
~1e16 FLOP: minutes of compute on an H100, the
epochs bound by image decoding and per-epoch evaluation rather than FLOPs.

Compares to: DB-MTL Table 4 (STL, EW, GLS, RLW, UW, DWA, IMTL-L, MGDA, GradNorm, PCGrad, GradDrop,
GradVac, IMTL-G, CAGrad, Nash-MTL, IMTL, DB-MTL; per-domain accuracy, Avg, Δp vs STL) and RLW Table 8
(batch 128). Numbers: results/published.md, results/published_vision.json. No jmtl number on real
Office data exists yet.
"""

from experiments.configs import common, vision_common

DOMAINS = {"office31": ("amazon", "dslr", "webcam"), "office_home": ("art", "clipart", "product", "real_world")}
NUM_CLASSES = {"office31": 31, "office_home": 65}


def get_config(arg=None):
    all_domains = DOMAINS["office31"] + DOMAINS["office_home"]
    variant, method, stl_task = vision_common.parse_arg(arg, tuple(DOMAINS), all_domains, default="office31")
    if variant == "stl":
        variant = "office31" if stl_task in DOMAINS["office31"] else "office_home"
    c = common.base_config()
    c.dataset.name = variant
    c.dataset.kwargs = dict()
    domains = (stl_task,) if stl_task else DOMAINS[variant]
    c.tasks = {d: dict(label=d, weight=1.0) for d in domains}
    c.model.encoder = "resnet18"
    # LibMTL's Office encoder: ImageNet ResNet-18, global pool, Linear(512) + BN + ReLU + Dropout(0.5).
    # width: torchvision's 64 (the only width ImageNet weights fit); smaller only for smoke runs
    # (--config.model.encoder_kwargs.width=8).
    c.model.encoder_kwargs = dict(pool=True, hidden=512, weights="", width=64)
    c.model.head_kwargs = dict(hidden=0)  # one Linear(512, classes) per domain
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 1e-4
    c.optimizer.weight_decay = 1e-5  # torch Adam's L2 term (LibMTL's optim_param)
    c.batch_size = 64
    c.num_epochs = 100
    c.eval_every_steps = -1
    c.eval_batch_size = 64
    c.log_every_steps = 50
    return vision_common.set_method(c, method)
