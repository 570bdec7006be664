"""The vision benchmarks' networks (jmtl.models.vision, pixel heads, ImageNet weights).

Cheap by construction: full-width models are only traced (``jax.eval_shape``: param counts and
output shapes at the real resolution, no compilation); numeric checks run narrow copies at 32x32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmtl.models import architectures, encoders, heads, mtl, pretrained, vision
from jmtl.models.base import TaskHeads
from jmtl.tasks import Task

NYU = (288, 384)
PIXEL = (("segmentation", 13), ("depth", 1), ("normal", 3))
# model_segnet_split.py / model_segnet_mtan.py print count / 24981069: the single-task SegNet
# (shared encoder-decoder plus one 13-class head).
MTAN_SINGLE_TASK_SEGNET = 24_981_069


# Compiling SegNet's steps with XLA's optimisation passes costs minutes on a loaded CPU; these tests
# check values, not speed (as tests/test_architectures.py).
pytestmark = pytest.mark.usefixtures("xla_optimizations_off")


def _pixel_heads(style="segnet", upsample=1, names=PIXEL):
    return TaskHeads(
        names=tuple(n for n, _ in names),
        heads=tuple(heads.PixelHead(c, style=style, upsample=upsample) for _, c in names),
    )


def _shapes(module, x_shape, method=None):
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    params = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), x)["params"]
    out = jax.eval_shape(lambda p, x: module.apply({"params": p}, x), params, x)
    return params, out


def _conv_params(cin, cout, k=3, bias=True, norm=False):
    return k * k * cin * cout + (cout if bias else 0) + (2 * cout if norm else 0)


def segnet_param_count_by_hand(filters=(64, 128, 256, 512, 512)) -> int:
    """MTAN's layer list (model_segnet_split.py), counted the way torch counts: conv weight + bias,
    batch norm weight + bias (running statistics are buffers)."""
    f = filters
    convs = [(3, f[0]), (f[0], f[0]), (f[0], f[1]), (f[1], f[1])]  # encoder levels 0, 1
    for i in (2, 3, 4):
        convs += [(f[i - 1], f[i]), (f[i], f[i]), (f[i], f[i])]
    convs += [(f[0], f[0]), (f[0], f[0]), (f[1], f[0]), (f[0], f[0])]  # decoder levels 0, 1
    for i in (2, 3, 4):
        convs += [(f[i], f[i - 1]), (f[i - 1], f[i - 1]), (f[i - 1], f[i - 1])]
    return sum(_conv_params(a, b, norm=True) for a, b in convs)


def test_segnet_split_and_mtan_param_counts_and_shapes_at_nyuv2_resolution():
    split = architectures.build("hps", encoder=vision.SegNet(), heads=_pixel_heads())
    p_split, out = _shapes(split, (1, *NYU, 3))
    shared = vision.count_params(p_split["shared"])
    assert shared == segnet_param_count_by_hand() == 24_943_296
    head13 = _conv_params(64, 64) + _conv_params(64, 13, k=1)
    assert shared + head13 == MTAN_SINGLE_TASK_SEGNET
    assert {k: v.shape for k, v in out.items()} == {
        "segmentation": (1, *NYU, 13),
        "depth": (1, *NYU, 1),
        "normal": (1, *NYU, 3),
    }
    mtan = architectures.build("mtan_segnet", encoder=vision.SegNet(), heads=_pixel_heads())
    p_mtan, out = _shapes(mtan, (1, *NYU, 3))
    assert {k: v.shape for k, v in out.items()} == {
        "segmentation": (1, *NYU, 13),
        "depth": (1, *NYU, 1),
        "normal": (1, *NYU, 3),
    }
    # MTAN (CVPR 2019) Table 2, column "#P.", in units of the single-task SegNet: Split (standard)
    # 1.00, MTAN 1.77.
    assert round(vision.count_params(p_split) / MTAN_SINGLE_TASK_SEGNET, 2) == 1.00
    assert round(vision.count_params(p_mtan) / MTAN_SINGLE_TASK_SEGNET, 2) == 1.77
    assert set(p_mtan) == {"shared", "attention", "tasks"}
    _check_mtan_attention_shapes(p_mtan)


def _check_mtan_attention_shapes(params):
    """The attention modules' 1x1 convs as model_segnet_mtan.py's att_layer / *_block_att lists."""
    f = vision.SEGNET_FILTERS
    for task in ("segmentation", "depth", "normal"):
        att = params["attention"][task]
        # encoder level j reads [first conv output, previous attended] (level 0: the first alone).
        for j in range(5):
            cin = f[0] if j == 0 else 2 * f[j]
            assert att[f"enc_{j}"]["conv1"]["kernel"].shape == (1, 1, cin, f[j])
            assert att[f"enc_{j}"]["conv2"]["kernel"].shape == (1, 1, f[j], f[j])
        # decoder level i reads [unpooled (f[i]), extracted (f[i-1])]; mask of width f[i-1].
        for i in range(5):
            out = f[max(i - 1, 0)]
            assert att[f"dec_{i}"]["conv1"]["kernel"].shape == (1, 1, f[i] + out, out)
            assert att[f"dec_{i}"]["conv2"]["kernel"].shape == (1, 1, out, out)
    shared = params["shared"]
    assert [shared[f"enc_att_{j}"]["conv"]["kernel"].shape[2:] for j in range(5)] == [
        (64, 128),
        (128, 256),
        (256, 512),
        (512, 512),
        (512, 512),
    ]
    assert [shared[f"dec_att_{i}"]["conv"]["kernel"].shape[2:] for i in range(5)] == [
        (64, 64),
        (128, 64),
        (256, 128),
        (512, 256),
        (512, 512),
    ]


def test_resnet_encoders_and_deeplab_heads_shapes_and_counts():
    # torchvision's counts minus the ImageNet classifier fc (2048*1000+1000 and 512*1000+1000).
    deeplab = architectures.build("hps", encoder=vision.resnet50_dilated(), heads=_pixel_heads("deeplab", 8))
    p, out = _shapes(deeplab, (1, *NYU, 3))
    assert vision.count_params(p["shared"]) == 25_557_032 - 2_049_000
    # Output stride 8: the heads' x8 upsampling gives back exactly the input resolution.
    assert {k: v.shape for k, v in out.items()} == {
        "segmentation": (1, *NYU, 13),
        "depth": (1, *NYU, 1),
        "normal": (1, *NYU, 3),
    }
    p, out = _shapes(encoders.get("resnet18"), (2, 64, 64, 3))  # + LibMTL's Office hidden layer
    assert vision.count_params(p) == 11_689_512 - 513_000 + 512 * 512 + 512 + 2 * 512 and out.shape == (2, 512)


def test_dilated_resnet_block_settings_follow_libmtl():
    s = vision.resnet_block_settings(50, 8)
    assert [b["stride"] for b in s[1]] == [2, 1, 1, 1]
    assert [(b["stride"], b["dilation"]) for b in s[2]] == [(1, 1)] + [(1, 2)] * 5
    assert [(b["stride"], b["dilation"]) for b in s[3]] == [(1, 2), (1, 4), (1, 4)]
    assert [b["downsample"] for layer in s for b in layer] == [i in (0, 3, 7, 13) for i in range(16)]


def test_celeba_cnn_matches_famo_network():
    p, out = _shapes(encoders.get("celeba_cnn"), (2, 64, 64, 3))
    convs = [(3, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
    expected = sum(_conv_params(a, b, bias=False, norm=True) for a, b in convs) + 2 * (512 * 512 + 2 * 512)
    assert vision.count_params(p) == expected and out.shape == (2, 512)
    # FAMO's heads: one dense layer per attribute (hidden=0).
    model = mtl.build([Task(f"a{i}", "binary", 1) for i in range(3)], encoder="celeba_cnn", head_kwargs={"hidden": 0})
    p, out = _shapes(model, (2, 64, 64, 3))
    assert p["tasks"]["a0"] == {
        "out": {"kernel": jax.ShapeDtypeStruct((512, 1), jnp.float32), "bias": jax.ShapeDtypeStruct((1,), jnp.float32)}
    }
    assert out["a2"].shape == (2, 1)


def test_width_scales_every_conv_of_the_resnet_and_the_celeba_cnn():
    """``encoder_kwargs.width`` (smoke runs): every conv's channels scale by width / 64, the layers
    and their order stay; the hidden layers of the Office encoder keep their width; ImageNet weights
    (width 64) are refused at another width, and a width < 1 is refused."""

    def convs(p):
        return {
            jax.tree_util.keystr(path): leaf.shape
            for path, leaf in jax.tree_util.tree_leaves_with_path(p)
            if len(leaf.shape) == 4
        }

    for make, x in ((encoders.get("resnet18"), (2, 64, 64, 3)), (vision.resnet50_dilated(), (1, 32, 32, 3))):
        wide, _ = _shapes(make, x)
        narrow, out = _shapes(make.clone(width=8), x)
        a, b = convs(wide), convs(narrow)
        assert a.keys() == b.keys() and len(a) in (20, 53)
        for name, (kh, kw, cin, cout) in a.items():
            assert b[name] == (kh, kw, cin if cin == 3 else cin // 8, cout // 8), name
    assert out.shape == (1, 4, 4, 256)  # ResNet-50's 2048 channels / 8
    narrow, out = _shapes(encoders.get("resnet18", width=8), (2, 64, 64, 3))
    assert narrow["hidden"]["kernel"].shape == (64, 512) and out.shape == (2, 512)

    wide, _ = _shapes(encoders.get("celeba_cnn"), (2, 64, 64, 3))
    narrow, out = _shapes(encoders.get("celeba_cnn", width=8), (2, 64, 64, 3))
    a, b = convs(wide), convs(narrow)
    assert a.keys() == b.keys() and len(a) == 7 and out.shape == (2, 64)
    assert all(b[n] == (3, 3, c if c == 3 else c // 8, d // 8) for n, (_, _, c, d) in a.items())

    with pytest.raises(ValueError, match="width=8 cannot load ImageNet weights"):
        _shapes(encoders.get("resnet18", width=8, weights="/some/resnet18.npz"), (1, 32, 32, 3))
    for make in (encoders.get("resnet18", width=0), encoders.get("celeba_cnn", width=0)):
        with pytest.raises(ValueError, match="width must be a positive channel count"):
            _shapes(make, (1, 32, 32, 3))


# ----------------------------------------------------------------------------- max-unpool


def _numpy_pool_with_indices(x):
    """Brute force, torch's convention: per (b, c) plane, the flat index h * W + w of the first
    maximum of each 2x2 window in row-major order (NaN counts as the maximum)."""
    b, h, w, c = x.shape
    pooled = np.zeros((b, h // 2, w // 2, c), x.dtype)
    flat = np.zeros((b, h // 2, w // 2, c), np.int64)
    for n in range(b):
        for i in range(h // 2):
            for j in range(w // 2):
                for ch in range(c):
                    best, where = None, None
                    for r in range(2):
                        for s in range(2):
                            v = x[n, 2 * i + r, 2 * j + s, ch]
                            if best is None or v > best or (np.isnan(v) and not np.isnan(best)):
                                best, where = v, (2 * i + r) * w + 2 * j + s
                    pooled[n, i, j, ch], flat[n, i, j, ch] = best, where
    return pooled, flat


def _numpy_unpool(values, flat, h, w):
    b, _, _, c = values.shape
    out = np.zeros((b, h * w, c), values.dtype)
    for n in range(b):
        for ch in range(c):
            out[n, flat[n, :, :, ch].ravel(), ch] = values[n, :, :, ch].ravel()
    return out.reshape(b, h, w, c)


def test_max_pool_indices_and_unpool_match_numpy_brute_force():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (2, 6, 8, 3)).astype(np.float32)  # many ties
    x[0, 0, 1, 0] = np.nan
    pooled, idx = jax.jit(vision.max_pool_2x2_with_indices)(x)
    ref_pooled, ref_flat = _numpy_pool_with_indices(x)
    np.testing.assert_array_equal(np.asarray(pooled), ref_pooled)
    k = np.asarray(idx).astype(np.int64)
    ii, jj = np.meshgrid(np.arange(3), np.arange(4), indexing="ij")
    flat = (2 * ii[None, :, :, None] + k // 2) * 8 + 2 * jj[None, :, :, None] + k % 2
    np.testing.assert_array_equal(flat, ref_flat)
    vals = rng.normal(size=pooled.shape).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(vision.max_unpool_2x2(jnp.asarray(vals), idx)), _numpy_unpool(vals, ref_flat, 6, 8)
    )
    # The pool's gradient sends each cotangent to its window's chosen element: unpooling it.
    xf = np.nan_to_num(x, nan=5.0)
    g = jax.grad(lambda z: jnp.sum(vision.max_pool_2x2_with_indices(z)[0] * vals))(jnp.asarray(xf))
    _, flat_f = _numpy_pool_with_indices(xf)
    np.testing.assert_array_equal(np.asarray(g), _numpy_unpool(vals, flat_f, 6, 8))


def test_pooling_refuses_odd_sizes_and_segnet_non_multiples_of_32():
    with pytest.raises(ValueError, match="even height and width"):
        vision.max_pool_2x2_with_indices(jnp.zeros((1, 5, 4, 1)))
    with pytest.raises(ValueError, match="multiples of 32"):
        _shapes(vision.SegNet(), (1, 100, 128, 3))


def test_bilinear_align_corners_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 3, 4, 2)).astype(np.float32)
    out = np.asarray(vision.resize_bilinear_align_corners(jnp.asarray(x), (6, 8)))
    ref = np.zeros((1, 6, 8, 2), np.float32)
    for i in range(6):
        for j in range(8):
            y, z = i * 2 / 5, j * 3 / 7  # align_corners: (in - 1) / (out - 1)
            y0, z0 = int(np.floor(y)), int(np.floor(z))
            y1, z1 = min(y0 + 1, 2), min(z0 + 1, 3)
            a, c = y - y0, z - z0
            ref[0, i, j] = (
                (1 - a) * (1 - c) * x[0, y0, z0]
                + (1 - a) * c * x[0, y0, z1]
                + a * (1 - c) * x[0, y1, z0]
                + a * c * x[0, y1, z1]
            )
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- numeric (narrow)

NARROW = (4, 8, 8, 8, 8)


def test_narrow_segnet_heads_separable_and_batch_norm():
    model = architectures.build("hps", encoder=vision.SegNet(filters=NARROW), heads=_pixel_heads())
    x = jnp.asarray(np.random.default_rng(2).random((2, 32, 32, 3), dtype=np.float32))

    # Params drawn from numpy (no compiled init); one compilation for the forward passes.
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))["params"]
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), jnp.float32), shapes)

    @jax.jit
    def run(params, x):
        rep = model.apply({"params": params}, x, method=model.encode)
        full = model.apply({"params": params}, rep, method=model.decode)
        split = model.apply({"params": params}, [rep] * 3, method=model.decode_split)
        first = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1))).apply({"params": params["shared"]["enc0_0"]["conv"]}, x)
        return full, split, first

    assert model.separable_heads
    full, split, h = run(params, x)
    for n, _ in PIXEL:
        np.testing.assert_allclose(np.asarray(split[n]), np.asarray(full[n]), rtol=1e-5, atol=1e-6)
    assert full["segmentation"].shape == (2, 32, 32, 13)
    # batch statistics: every channel of the first conv's normalised output has mean 0, variance 1.
    y = vision.Norm().apply({"params": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}}, h)
    np.testing.assert_allclose(np.asarray(y.mean(axis=(0, 1, 2))), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y.var(axis=(0, 1, 2))), 1.0, rtol=1e-3)


def test_gradient_paths_declared_by_the_vision_models():
    from jmtl import weighting
    from jmtl.training import step as step_lib

    tasks = [Task(n, "regression", 1) for n in ("a", "b")]
    th = TaskHeads(names=("a", "b"), heads=(heads.PixelHead(1), heads.PixelHead(1)))
    seg = architectures.build("hps", encoder=vision.SegNet(filters=NARROW), heads=th)
    path = step_lib.make_gradient_path(seg, tasks, weighting.get("pcgrad"), step_lib.StepConfig(), None)
    assert path.name == "factored_jacobian"
    mtan = architectures.build("mtan_segnet", encoder=vision.SegNet(filters=NARROW), heads=th)
    assert not mtan.separable_heads
    path = step_lib.make_gradient_path(mtan, tasks, weighting.get("pcgrad"), step_lib.StepConfig(), None)
    assert path.name == "param_jacobian"
    with pytest.raises(ValueError, match="no single shared representation"):
        mtan.encode(jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="encoder='segnet'"):
        architectures.build("mtan_segnet", encoder=encoders.get("mlp"), heads=th)


def test_pixel_heads_registered_by_kind():
    for kind, c in PIXEL:
        head = heads.HEADS[kind](num_outputs=c)
        y = jax.eval_shape(lambda x: head.init_with_output(jax.random.PRNGKey(0), x)[0], jnp.zeros((2, 16, 24, 64)))
        assert y.shape == (2, 16, 24, c)
    with pytest.raises(ValueError, match="NHWC feature maps"):
        heads.PixelHead(3).init(jax.random.PRNGKey(0), jnp.zeros((2, 64)))
    with pytest.raises(ValueError, match="unknown pixel head style"):
        heads.PixelHead(3, style="fcn").init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 8)))


# ----------------------------------------------------------------------------- ImageNet weights


def fake_torchvision_resnet18(seed=0) -> dict[str, np.ndarray]:
    """A state_dict with torchvision's ResNet-18 names and shapes, written from its definition
    (BasicBlock, layers 2-2-2-2, widths 64-512, 1x1 strided shortcut where the width changes)."""
    rng = np.random.default_rng(seed)
    sd = {}

    def bn(name, c):
        sd[f"{name}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[f"{name}.bias"] = rng.normal(size=c).astype(np.float32)
        sd[f"{name}.running_mean"] = rng.normal(size=c).astype(np.float32)
        sd[f"{name}.running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
        sd[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

    sd["conv1.weight"] = rng.normal(size=(64, 3, 7, 7)).astype(np.float32)
    bn("bn1", 64)
    cin = 64
    for layer, width in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{layer}.{b}"
            sd[f"{p}.conv1.weight"] = rng.normal(size=(width, cin if b == 0 else width, 3, 3)).astype(np.float32)
            bn(f"{p}.bn1", width)
            sd[f"{p}.conv2.weight"] = rng.normal(size=(width, width, 3, 3)).astype(np.float32)
            bn(f"{p}.bn2", width)
            if b == 0 and cin != width:
                sd[f"{p}.downsample.0.weight"] = rng.normal(size=(width, cin, 1, 1)).astype(np.float32)
                bn(f"{p}.downsample.1", width)
        cin = width
    sd["fc.weight"] = rng.normal(size=(1000, 512)).astype(np.float32)
    sd["fc.bias"] = np.zeros(1000, np.float32)
    return sd


def test_weight_loader_round_trip_on_a_fake_state_dict(tmp_path):
    sd = fake_torchvision_resnet18()
    path = tmp_path / "resnet18.npz"
    np.savez(path, **sd)
    tasks = [Task("amazon", "classification", 31), Task("dslr", "classification", 31)]
    model = mtl.build(tasks, encoder="resnet18", encoder_kwargs={"weights": str(path)}, head_kwargs={"hidden": 0})
    init = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))["params"]
    said = []
    shared = pretrained.apply_encoder_weights(model, init, log=said.append)["shared"]
    assert len(said) == 1 and "loaded ImageNet weights" in said[0] and "hidden" in said[0]
    back = pretrained.flax_to_torchvision(shared, depth=18)
    expected = {
        k: v for k, v in sd.items() if not k.startswith("fc.") and "running" not in k and "num_batches" not in k
    }
    assert set(back) == set(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    # LibMTL's Office hidden layer is not in the file: it keeps its initialisation.
    assert shared["hidden"] is init["shared"]["hidden"]
    # Layout: the stem conv with the loaded kernel equals a numpy cross-correlation with torch's
    # OIHW weight (stride 2, padding 3).
    x = np.random.default_rng(3).normal(size=(1, 9, 9, 3)).astype(np.float32)
    y = nn.Conv(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False).apply(
        {"params": {"kernel": jnp.asarray(shared["conv1"]["kernel"])}}, x
    )
    xp = np.pad(x[0], ((3, 3), (3, 3), (0, 0)))
    w = sd["conv1.weight"]
    ref = np.zeros((5, 5, 64), np.float32)
    for i in range(5):
        for j in range(5):
            ref[i, j] = np.einsum("hwc,ochw->o", xp[2 * i : 2 * i + 7, 2 * j : 2 * j + 7], w)
    np.testing.assert_allclose(np.asarray(y[0]), ref, rtol=1e-4, atol=1e-3)


def test_frozen_norm_folds_running_statistics():
    sd = fake_torchvision_resnet18(seed=1)
    p = pretrained.torchvision_to_flax(sd, depth=18, norm="frozen")
    x = np.random.default_rng(4).normal(size=(2, 3, 3, 64)).astype(np.float32)
    y = vision.Norm("frozen").apply({"params": p["bn1"]}, x)
    w, b, m, v = (sd[f"bn1.{n}"] for n in ("weight", "bias", "running_mean", "running_var"))
    np.testing.assert_allclose(np.asarray(y), (x - m) / np.sqrt(v + 1e-5) * w + b, rtol=1e-5, atol=1e-5)


def test_weight_loader_errors_name_the_problem(tmp_path):
    sd = fake_torchvision_resnet18()
    bad = dict(sd)
    del bad["layer2.0.downsample.0.weight"]
    with pytest.raises(ValueError, match=r"missing layer2\.0\.downsample\.0\.weight.*convert_torchvision_resnet"):
        pretrained.torchvision_to_flax(bad, depth=18)
    with pytest.raises(ValueError, match="not a torchvision ResNet-50"):
        pretrained.torchvision_to_flax(sd, depth=50)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrained.load_npz(str(tmp_path / "missing.npz"))
    wrong = dict(sd)
    wrong["conv1.weight"] = np.zeros((64, 3, 5, 5), np.float32)
    np.savez(tmp_path / "wrong.npz", **wrong)
    model = mtl.build(
        [Task("a", "classification", 3)], encoder="resnet18", encoder_kwargs={"weights": str(tmp_path / "wrong.npz")}
    )
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))["params"]
    with pytest.raises(ValueError, match="conv1/kernel has shape"):
        pretrained.apply_encoder_weights(model, params, log=lambda s: None)
    with pytest.raises(ValueError, match="arch='hps'"):
        mtl.build(
            [Task("a", "classification", 3)],
            encoder="resnet18",
            encoder_kwargs={"weights": "x.npz"},
            arch="cross_stitch",
        )


def test_without_weights_the_run_says_it_starts_from_scratch():
    model = mtl.build([Task("a", "classification", 3)], encoder="resnet18")
    said = []
    params = {"shared": {"w": 1}}
    assert pretrained.apply_encoder_weights(model, params, log=said.append) is params
    assert len(said) == 1 and "starting from scratch" in said[0]
    quiet = []
    pretrained.apply_encoder_weights(
        mtl.build([Task("a", "classification", 3)], encoder="mlp"), params, log=quiet.append
    )
    assert quiet == []


def test_classification_head_hidden_zero_is_one_dense_layer():
    head = heads.ClassificationHead(num_outputs=5, hidden=0)
    p = head.init(jax.random.PRNGKey(0), jnp.zeros((2, 7)))["params"]
    assert jax.tree.map(np.shape, p) == {"out": {"kernel": (7, 5), "bias": (5,)}}
    x = np.random.default_rng(5).normal(size=(2, 7)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(head.apply({"params": p}, x)),
        x @ np.asarray(p["out"]["kernel"]) + np.asarray(p["out"]["bias"]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_init_state_applies_the_encoder_weights(monkeypatch):
    import optax

    from jmtl import weighting
    from jmtl.training.state import init_state

    model = mtl.build([Task("a", "regression", 1)], encoder="mlp", encoder_kwargs={"features": (3,)})
    seen = []

    def fake(m, params):
        seen.append(m)
        return {**params, "shared": jax.tree.map(jnp.zeros_like, params["shared"])}

    monkeypatch.setattr(pretrained, "apply_encoder_weights", fake)
    state = init_state(model, weighting.get("equal"), optax.sgd(0.1), jnp.ones((1, 2)), 1, seed=0)
    assert seen == [model]
    assert all(np.all(np.asarray(v) == 0) for v in jax.tree.leaves(state.params["shared"]))


def test_gpu_vision_script_runs_tiny_on_cpu(tmp_path):
    """The prepared GPU benchmark's CPU smoke (equal weighting in bfloat16, the cheapest step to
    compile); the full run is the same code at 288x384 on a GPU."""
    import json

    from experiments.bench import gpu_vision

    out = tmp_path / "gpu_vision"
    gpu_vision.main(["--tiny", "--methods", "equal", "--dtypes", "bfloat16", "--out", str(out)])
    record = json.loads(out.with_name("gpu_vision.json").read_text())
    (row,) = record["rows"]
    assert (row["method"], row["dtype"], row["gradient_path"]) == ("equal", "bfloat16", "loss_level")
    assert row["finite"] and row["images_per_s"] > 0 and all(np.isfinite(row["losses_last"]))
    assert record["provenance"]["recorded"] and "32x32" in record["size"]
    assert "images/s" in out.with_name("gpu_vision.md").read_text()


def test_segnet_full_size_benchmark_smokes_tiny(tmp_path):
    """experiments/bench/segnet_full_size.py --tiny: the benchmark's code path on a narrow SegNet at
    32x32 (the equal row: the other rows' steps are compiled by the gpu_vision smoke above; the
    full-size run is results/bench/segnet_full_size.md)."""
    import json

    from experiments.bench import segnet_full_size

    out = tmp_path / "segnet"
    segnet_full_size.main(["--tiny", "--rows", "equal", "--out", str(out)])
    result = json.loads(out.with_suffix(".json").read_text())
    assert set(result["rows"]) == {"jmtl equal"} and result["config"]["height"] == 32
    assert result["rows"]["jmtl equal"]["gradient_path"] == "loss_level"
    assert result["rows"]["jmtl equal"]["memory_vs_equal"] == 1.0
