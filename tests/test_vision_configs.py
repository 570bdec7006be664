"""The vision protocol configs (experiments/configs/{nyuv2,cityscapes,celeba,office}.py): the
papers' settings as read from the authors' code (results/published.md), the VARIANT[,METHOD]
argument, and torch-Adam's L2 weight decay that LibMTL's protocol uses."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import common
from jmtl.training import builders


def _cfg(name, arg=None):
    return importlib.import_module(f"experiments.configs.{name}").get_config(arg)


@pytest.mark.parametrize(
    "name,arg,batch,epochs,lr",
    [
        ("nyuv2", None, 2, 200, 1e-4),
        ("nyuv2", "segnet", 2, 200, 1e-4),
        ("nyuv2", "deeplab", 8, 200, 1e-4),
        ("cityscapes", None, 8, 200, 1e-4),
        ("cityscapes", "deeplab", 64, 200, 1e-4),
        ("celeba", None, 256, 15, 3e-4),
        ("office", None, 64, 100, 1e-4),
        ("office", "office_home", 64, 100, 1e-4),
    ],
)
def test_protocol_settings(name, arg, batch, epochs, lr):
    c = _cfg(name, arg)
    common.validate_config(c)
    assert (c.batch_size, c.num_epochs, c.optimizer.name, c.optimizer.learning_rate) == (batch, epochs, "adam", lr)
    assert c.eval_every_steps <= 0  # every epoch: the last-10-epochs average needs each epoch's test record
    if name in ("nyuv2", "cityscapes"):  # StepLR(step_size=100, gamma=0.5)
        assert (c.optimizer.decay_rate, c.optimizer.decay_every_epochs) == (0.5, 100)
        assert c.dataset.kwargs.augment and c.dataset.kwargs.validation_percent == 0
        assert c.model.arch == ("mtan_segnet" if arg in (None, "mtan") else "hps")
    if name == "office" or arg == "deeplab":
        assert c.optimizer.weight_decay == 1e-5


def test_variants_tasks_and_methods():
    assert set(_cfg("nyuv2").tasks) == {"segmentation", "depth", "normal"}
    assert list(_cfg("nyuv2", "stl_depth").tasks) == ["depth"]
    assert _cfg("nyuv2", "stl_depth").model.arch == "hps"
    assert list(_cfg("cityscapes", "stl_segmentation").tasks) == ["segmentation"]
    assert _cfg("nyuv2", "mtan,nash_mtl").weighting.name == "nash_mtl"
    assert _cfg("nyuv2", "mtan,famo").weighting.hparams.gamma == 1e-3  # FAMO Sec. 5.2
    assert _cfg("cityscapes", "mtan,famo").weighting.hparams.gamma == 1e-2
    # CelebA: one task per attribute ('*' alone), each reported and selected by its F1 (FAMO's metric).
    assert _cfg("celeba").tasks.to_dict() == {"*": {"metric": "f1"}}
    assert _cfg("celeba", "stl_smiling").tasks.to_dict() == {
        "smiling": {"label": "smiling", "weight": 1.0, "metric": "f1"}
    }
    assert set(_cfg("office", "office_home").tasks) == {"art", "clipart", "product", "real_world"}
    o = _cfg("office", "stl_clipart")
    assert (o.dataset.name, list(o.tasks)) == ("office_home", ["clipart"])


@pytest.mark.parametrize(
    "name,arg,match",
    [
        ("nyuv2", "resnet", "unknown variant 'resnet'"),
        ("nyuv2", "stl_edges", "no task 'edges'"),
        ("nyuv2", "stl_depth,famo", "single-task run has no weighting"),
        ("cityscapes", "mtan,famo,x", "VARIANT\\[,METHOD\\]"),
        ("celeba", "stl_5_o", "not a task name"),
        ("nyuv2", "mtan,nosuch", "unknown weighting scheme"),
    ],
)
def test_bad_arguments_name_the_fix(name, arg, match):
    with pytest.raises(ValueError, match=match):
        _cfg(name, arg)


def test_adam_weight_decay_is_torch_adams_l2_term():
    """torch.optim.Adam(weight_decay=wd): g <- g + wd * p, then Adam's moments (first step: the update
    is -lr * g / (|g| + eps) elementwise). Checked against that closed form, and wd=0 is plain Adam."""
    p = {"w": jnp.array([1.0, -2.0, 0.5])}
    g = {"w": jnp.array([0.1, 0.0, -0.3])}
    lr, wd = 1e-2, 0.5
    opt = builders.optimizer(dict(name="adam", learning_rate=lr, weight_decay=wd), steps_per_epoch=1)
    upd, _ = opt.update(g, opt.init(p), p)
    g2 = np.array([0.1, 0.0, -0.3]) + wd * np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(upd["w"], -lr * g2 / (np.abs(g2) + 1e-8), rtol=1e-5)
    plain = builders.optimizer(dict(name="adam", learning_rate=lr, weight_decay=0.0), steps_per_epoch=1)
    upd0, _ = plain.update(g, plain.init(p), p)
    np.testing.assert_allclose(upd0["w"], jax.tree.leaves(optax_adam_step(g, lr))[0], rtol=1e-6)


def optax_adam_step(g, lr):
    import optax

    opt = optax.adam(lr)
    return opt.update(g, opt.init(g))[0]
