"""ImageNet weights for the ResNet encoders, from a local file (never downloaded).

Users convert torchvision's checkpoint once, where torch is installed::

    python experiments/convert_torchvision_resnet.py --arch resnet50 --checkpoint resnet50-0676ba61.pth \\
        --out ~/weights/resnet50_imagenet.npz

(the ``.pth`` is the file torchvision itself downloads into ``~/.cache/torch/hub/checkpoints``) and
name the ``.npz`` in the config: ``config.model.encoder_kwargs.weights = '~/weights/resnet50_imagenet.npz'``.
When a run initialises its params (:func:`jmtl.training.state.init_state`),
:func:`apply_encoder_weights` replaces the encoder's params by the file's and says so; without a
file it says the encoder starts from scratch.

The ``.npz`` holds torchvision's state_dict as it is (names such as ``layer1.0.conv1.weight``,
conv kernels OIHW). :func:`torchvision_to_flax` maps it onto :class:`jmtl.models.vision.ResNet`'s
params: kernels to HWIO, batch norm ``weight`` / ``bias`` to ``scale`` / ``bias``. With
``norm='batch'`` the running statistics are not used (the network normalises by batch statistics,
as torch in training mode); with ``norm='frozen'`` they are folded in:
``scale = weight / sqrt(running_var + eps)``, ``bias = bias - running_mean * scale``, so the
network computes torchvision's evaluation-mode output exactly. ``fc.*`` (ImageNet's classifier)
is dropped.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional

import numpy as np

from jmtl.models import vision

BN_EPS = 1e-5  # torchvision's BatchNorm2d default
# Entries of a torchvision state_dict that are not weights of the encoder.
_IGNORED_SUFFIXES = (".num_batches_tracked",)
_IGNORED_PREFIXES = ("fc.",)


def _bn_names(flax_name: str) -> str:
    """flax block member -> torchvision module path inside a block."""
    if flax_name == "downsample_conv":
        return "downsample.0"
    if flax_name == "downsample_bn":
        return "downsample.1"
    return flax_name


def torchvision_layout(depth: int) -> dict[str, tuple[str, ...]]:
    """``{torchvision module path: flax module path}`` for every conv and batch norm of ResNet-``depth``."""
    out = {"conv1": ("conv1",), "bn1": ("bn1",)}
    for li, blocks in enumerate(vision.resnet_block_settings(depth, 32)):
        for b, s in enumerate(blocks):
            members = ["conv1", "bn1", "conv2", "bn2"] + (["conv3", "bn3"] if depth >= 50 else [])
            if s["downsample"]:
                members += ["downsample_conv", "downsample_bn"]
            for m in members:
                out[f"layer{li + 1}.{b}.{_bn_names(m)}"] = (f"layer{li + 1}_{b}", m)
    return out


def _is_conv(flax_path: tuple[str, ...]) -> bool:
    return flax_path[-1].startswith("conv") or flax_path[-1] == "downsample_conv"


def torchvision_to_flax(
    state: Mapping[str, np.ndarray], *, depth: int, norm: str = "batch", source: str = "the state_dict"
) -> dict:
    """torchvision ResNet state_dict -> :class:`jmtl.models.vision.ResNet` params (module docstring).

    Raises:
      ValueError: naming ``source`` and the entries that are missing, unexpected or of the wrong shape.
    """
    vision._check_norm(norm)
    layout = torchvision_layout(depth)
    expected = set()
    params: dict[str, Any] = {}
    problems = []
    for tv, path in layout.items():
        conv = _is_conv(path)
        names = ["weight"] if conv else ["weight", "bias", "running_mean", "running_var"]
        expected.update(f"{tv}.{n}" for n in names)
        missing = [f"{tv}.{n}" for n in names if f"{tv}.{n}" not in state]
        if missing:
            problems.append(f"missing {', '.join(missing)}")
            continue
        node = params
        for p in path:
            node = node.setdefault(p, {})
        if conv:
            w = np.asarray(state[f"{tv}.weight"], np.float32)
            if w.ndim != 4:
                problems.append(f"{tv}.weight has shape {w.shape}, not a conv kernel [out, in, kh, kw]")
                continue
            node["kernel"] = w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        else:
            weight, bias = (np.asarray(state[f"{tv}.{n}"], np.float32) for n in ("weight", "bias"))
            if norm == "frozen":
                mean, var = (np.asarray(state[f"{tv}.{n}"], np.float32) for n in ("running_mean", "running_var"))
                scale = weight / np.sqrt(var + BN_EPS)
                node["scale"], node["bias"] = scale, bias - mean * scale
            else:
                node["scale"], node["bias"] = weight, bias
    unexpected = sorted(
        k
        for k in state
        if k not in expected and not k.endswith(_IGNORED_SUFFIXES) and not k.startswith(_IGNORED_PREFIXES)
    )
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    if problems:
        raise ValueError(
            f"{source} is not a torchvision ResNet-{depth} state_dict: {'; '.join(problems[:3])}. Fix: convert the "
            f"matching torchvision checkpoint with experiments/convert_torchvision_resnet.py --arch resnet{depth}"
        )
    return params


def flax_to_torchvision(params: Mapping[str, Any], *, depth: int) -> dict[str, np.ndarray]:
    """Inverse of :func:`torchvision_to_flax` for ``norm='batch'`` params (weights only: the running
    statistics are not in the params). Used to check the mapping round trip."""
    out = {}
    for tv, path in torchvision_layout(depth).items():
        node = params
        for p in path:
            node = node[p]
        if _is_conv(path):
            out[f"{tv}.weight"] = np.asarray(node["kernel"]).transpose(3, 2, 0, 1)
        else:
            out[f"{tv}.weight"], out[f"{tv}.bias"] = np.asarray(node["scale"]), np.asarray(node["bias"])
    return out


def load_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of a converted ``.npz`` (an error naming the path and the fix when it is absent)."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"encoder weights file {path!r} does not exist. Fix: convert torchvision's checkpoint with "
            "experiments/convert_torchvision_resnet.py, or leave encoder_kwargs.weights unset to start from scratch"
        )
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _merge(init: Mapping[str, Any], loaded: Mapping[str, Any], where: str, kept: list) -> dict:
    """``init`` with every leaf ``loaded`` has replaced (shapes must agree); leaves only ``init`` has
    (the Office hidden layer) are kept and listed in ``kept``."""
    out = {}
    for k, v in init.items():
        here = f"{where}/{k}" if where else k
        if k not in loaded:
            kept.append(here)
            out[k] = v
        elif isinstance(v, Mapping):
            out[k] = _merge(v, loaded[k], here, kept)
        else:
            arr = np.asarray(loaded[k])
            if tuple(arr.shape) != tuple(v.shape):
                raise ValueError(f"pretrained weight {here} has shape {arr.shape}, the model's is {tuple(v.shape)}")
            out[k] = arr.astype(v.dtype)
    return out


def apply_encoder_weights(
    model: Any, params: Mapping[str, Any], log: Callable[[str], None] = print
) -> Mapping[str, Any]:
    """``params`` with the encoder's part replaced by its ``weights`` file, when it names one.

    Reads ``model.shared``, the encoder of hard sharing (``arch='hps'``). A model without a
    :class:`~jmtl.models.vision.ResNet` encoder is returned unchanged and nothing is logged; a
    ResNet without ``weights`` is logged as starting from scratch.
    """
    enc = getattr(model, "shared", None)
    if not isinstance(enc, vision.ResNet):
        return params
    if not enc.weights:
        log(
            f"encoder resnet{enc.depth}: no ImageNet weights file given (encoder_kwargs.weights), starting from scratch"
        )
        return params
    loaded = torchvision_to_flax(load_npz(enc.weights), depth=enc.depth, norm=enc.norm, source=repr(enc.weights))
    kept: list = []
    shared = _merge(params["shared"], loaded, "", kept)
    log(
        f"encoder resnet{enc.depth}: loaded ImageNet weights from {enc.weights} (norm={enc.norm})"
        + (f"; initialised, not in the file: {', '.join(kept)}" if kept else "")
    )
    return {**params, "shared": shared}


def check_weights_arch(encoder_kwargs: Optional[Mapping[str, Any]], arch: str) -> None:
    """Encoder weights are loaded into hard sharing's encoder only; refuse them elsewhere rather than
    silently starting from scratch."""
    if encoder_kwargs and encoder_kwargs.get("weights") and arch != "hps":
        raise ValueError(
            f"encoder_kwargs.weights is loaded into hard sharing's encoder only, but arch={arch!r}; use arch='hps' "
            "or drop encoder_kwargs.weights"
        )
