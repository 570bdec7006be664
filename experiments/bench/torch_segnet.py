"""Plain-PyTorch SegNet (MTAN's 'split' baseline) on the three NYUv2 tasks: the yardstick of
``experiments/bench/segnet_full_size.py``.

The same network as :class:`jmtl.models.vision.SegNet` with MTAN's pixel heads (the layer list of
lorenmt/mtan's ``model_segnet_split.py``; batch norm in training mode), written here so the
benchmark compares one architecture in two frameworks. Two steps:

* :func:`equal_step`: forward, the sum of the three losses, one backward pass, Adam.
* :func:`k_backward_step`: forward, then one backward pass per task (``retain_graph``) collecting
  the shared params' K gradient rows, as LibMTL does for gradient-weighting schemes, then Adam on
  their sum: "the time of K backward passes" the issue's goal compares jmtl's parameter-level
  methods with.

Needs ``torch`` (``pip install -r experiments/bench/requirements.txt``).
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FILTERS = (64, 128, 256, 512, 512)


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SegNetSplit(nn.Module):
    """Shared SegNet encoder-decoder and three ``conv3x3 -> conv1x1`` heads (13, 1, 3 outputs)."""

    def __init__(self, classes: int = 13):
        super().__init__()
        f = FILTERS
        self.enc = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(5):
            n = 2 if i < 2 else 3
            self.enc.append(
                nn.Sequential(
                    *[
                        conv_bn_relu(3 if (i == 0 and r == 0) else (f[i - 1] if r == 0 else f[i]), f[i])
                        for r in range(n)
                    ]
                )
            )
            out = f[max(i - 1, 0)]
            self.dec.append(nn.Sequential(*[conv_bn_relu(f[i] if r == 0 else out, out) for r in range(n)]))
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(f[0], f[0], 3, padding=1), nn.Conv2d(f[0], c, 1)) for c in (classes, 1, 3)
        )
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def shared_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("heads.")]

    def forward(self, x: torch.Tensor):
        idx = []
        for i in range(5):
            x = self.enc[i](x)
            x, ind = self.pool(x)
            idx.append(ind)
        for i in reversed(range(5)):
            x = self.dec[i](self.unpool(x, idx[i]))
        return [h(x) for h in self.heads]


def task_losses(outputs, batch) -> list:
    """MTAN's losses, each a per-image mean over its valid pixels, then the batch mean (as
    ``experiments.bench.vision_common``'s tasks)."""
    seg, depth, normal = outputs
    lab = batch["segmentation"]
    valid = (lab >= 0).float()
    nll = F.cross_entropy(seg, lab.clamp(min=0), reduction="none") * valid
    l_seg = (nll.sum((1, 2)) / valid.sum((1, 2)).clamp(min=1)).mean()
    dv = (batch["depth"] != 0).float()
    l_depth = ((depth - batch["depth"]).abs() * dv).sum((1, 2, 3)) / dv.sum((1, 2, 3)).clamp(min=1)
    n = normal / normal.norm(dim=1, keepdim=True).clamp(min=1e-12)
    nv = (batch["normal"] != 0).any(dim=1).float()
    l_normal = ((1 - (n * batch["normal"]).sum(1)) * nv).sum((1, 2)) / nv.sum((1, 2)).clamp(min=1)
    return [l_seg, l_depth.mean(), l_normal.mean()]


def to_torch(batch: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
    """NHWC numpy batch (``vision_common.make_batch``) -> NCHW torch tensors."""
    return {
        "image": torch.from_numpy(np.ascontiguousarray(batch["image"].transpose(0, 3, 1, 2))),
        "segmentation": torch.from_numpy(batch["segmentation"].astype(np.int64)),
        "depth": torch.from_numpy(np.ascontiguousarray(batch["depth"].transpose(0, 3, 1, 2))),
        "normal": torch.from_numpy(np.ascontiguousarray(batch["normal"].transpose(0, 3, 1, 2))),
    }


def equal_step(model: SegNetSplit, opt: torch.optim.Optimizer, batch) -> None:
    opt.zero_grad(set_to_none=True)
    sum(task_losses(model(batch["image"]), batch)).backward()
    opt.step()


def k_backward_step(model: SegNetSplit, opt: torch.optim.Optimizer, batch) -> torch.Tensor:
    """One forward, K backward passes (one per task) into a [K, d] matrix of shared-param gradient
    rows, then Adam on their sum; returns the rows."""
    opt.zero_grad(set_to_none=True)
    losses = task_losses(model(batch["image"]), batch)
    shared = model.shared_parameters()
    rows = []
    for k, loss in enumerate(losses):
        head = list(model.heads[k].parameters())
        grads = torch.autograd.grad(loss, shared + head, retain_graph=k < len(losses) - 1)
        rows.append(torch.cat([g.reshape(-1) for g in grads[: len(shared)]]))
        for p, g in zip(head, grads[len(shared) :]):  # head k's gradient comes from task k alone
            p.grad = g
    jac = torch.stack(rows)
    total = jac.sum(0)
    offset = 0
    for p in shared:
        p.grad = total[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    opt.step()
    return jac


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
