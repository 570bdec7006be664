"""Converts torchvision's ImageNet ResNet checkpoint to the ``.npz`` jmtl's ResNet encoders load.

torch is needed here only (``pip install torch``); jmtl reads the ``.npz`` with numpy. Nothing is
downloaded: pass the ``.pth`` you have (torchvision keeps its downloads in
``~/.cache/torch/hub/checkpoints/``, e.g. ``resnet50-0676ba61.pth``, ``resnet18-f37072fd.pth``)::

    python experiments/convert_torchvision_resnet.py --arch resnet50 \\
        --checkpoint ~/.cache/torch/hub/checkpoints/resnet50-0676ba61.pth --out ~/weights/resnet50.npz

then ``--config.model.encoder_kwargs.weights=~/weights/resnet50.npz`` (encoder ``resnet50_dilated``;
``resnet18`` with a ResNet-18 file). The file keeps torchvision's names and layouts; the check at the
end maps it onto jmtl's ResNet (:func:`jmtl.models.pretrained.torchvision_to_flax`) so a wrong file
fails here, not in a run.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

DEPTHS = {"resnet18": 18, "resnet50": 50}


def state_dict_to_arrays(state) -> dict[str, np.ndarray]:
    """``{name: float32 / int64 numpy array}`` of a torch state_dict (tensors detached to CPU)."""
    out = {}
    for k, v in state.items():
        arr = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        out[k] = arr.astype(np.float32) if arr.dtype.kind == "f" else arr
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(DEPTHS), required=True)
    parser.add_argument("--checkpoint", required=True, help="torchvision's .pth state_dict")
    parser.add_argument("--out", required=True, help="the .npz to write")
    args = parser.parse_args(argv)
    path = os.path.expanduser(args.checkpoint)
    if not os.path.isfile(path):
        print(f"error: checkpoint {path!r} does not exist; pass the .pth torchvision saved", file=sys.stderr)
        return 2
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    arrays = state_dict_to_arrays(state)
    from jmtl.models import pretrained

    pretrained.torchvision_to_flax(arrays, depth=DEPTHS[args.arch], source=path)  # raises naming the problem
    out = os.path.expanduser(args.out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    np.savez(out, **arrays)
    print(f"wrote {out}: {len(arrays)} arrays of {args.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
