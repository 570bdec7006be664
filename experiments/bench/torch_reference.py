"""Plain PyTorch Multi-LeNet (Sener & Koltun 2018) and timers for the reference train steps.

This is the yardstick of the project's acceptance criterion: the JAX joint train step must be at
least as fast as the plain PyTorch step on the same CPU. It is benchmark-only; ``torch`` is an
optional dependency (``experiments/bench/requirements.txt``): this module needs it, and the benchmark scripts
guard their import of this module and skip the torch rows without it.

The model follows the authors' MultiMNIST code (NCHW, as PyTorch does)::

    conv 1->10 k5 -> max-pool 2 -> relu -> conv 10->20 k5 -> Dropout2d -> max-pool 2 -> relu
    -> flatten (320) -> dense 50 -> relu
    head k (K of them): dense 50->50 -> relu -> dropout -> dense 50->10

Two ways to take a step are timed:

* :func:`equal_weighting_step` -- forward, sum of the K cross-entropies, ONE backward, step;
* :func:`per_task_gradient_step` -- what the PyTorch MTL libraries do for gradient-level schemes:
  K backward passes (``retain_graph``) each collecting the task's gradient of the shared params
  into a row of a ``[K, d]`` matrix, then a combination (the mean here) and a step.
"""

from __future__ import annotations

import statistics
from typing import Callable, Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from experiments.timing import time_round_robin

IMAGE_SHAPE = (1, 28, 28)  # NCHW without the batch axis
NUM_CLASSES = 10


class Encoder(nn.Module):
    """Shared LeNet trunk: [B,1,28,28] -> [B,50]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d(p=0.5)  # channel dropout, as in the authors' code
        self.fc = nn.Linear(320, 50)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        return F.relu(self.fc(x.flatten(1)))


class Head(nn.Module):
    """Task-specific head: [B,50] -> [B,10] logits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(50, 50)
        self.drop = nn.Dropout(p=0.5)
        self.fc2 = nn.Linear(50, NUM_CLASSES)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.relu(self.fc1(z))))


class MultiLeNet(nn.Module):
    """Shared encoder with ``num_tasks`` heads; ``forward`` returns a list of logits."""

    def __init__(self, num_tasks: int = 2) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.heads = nn.ModuleList(Head() for _ in range(num_tasks))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        z = self.encoder(x)
        return [head(z) for head in self.heads]


def task_losses(model: MultiLeNet, x: torch.Tensor, ys: torch.Tensor) -> List[torch.Tensor]:
    """Cross-entropy of each head; ``ys`` is [K, B] int64."""
    return [F.cross_entropy(logits, y) for logits, y in zip(model(x), ys)]


def make_batch(batch_size: int = 256, num_tasks: int = 2, seed: int = 0):
    """Random MultiMNIST-shaped batch: x [B,1,28,28] float32, ys [K,B] int64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((batch_size,) + IMAGE_SHAPE, generator=g)
    ys = torch.randint(0, NUM_CLASSES, (num_tasks, batch_size), generator=g)
    return x, ys


def make_optimizer(model: nn.Module, name: str = "adam", lr: float = 1e-3) -> torch.optim.Optimizer:
    """Adam (default) or SGD with momentum 0.9 (the paper's MultiMNIST optimiser)."""
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}")


def fwd_bwd(model: MultiLeNet, x: torch.Tensor, ys: torch.Tensor) -> None:
    """Forward, sum of the task losses, one backward (no optimiser): the op-level yardstick."""
    model.zero_grad(set_to_none=True)
    torch.stack(task_losses(model, x, ys)).sum().backward()


def equal_weighting_step(model: MultiLeNet, opt: torch.optim.Optimizer, x, ys) -> None:
    """(a) The joint step: forward, sum of the K losses, one backward, optimiser step."""
    opt.zero_grad(set_to_none=True)
    torch.stack(task_losses(model, x, ys)).sum().backward()
    opt.step()


def per_task_gradient_step(model: MultiLeNet, opt: torch.optim.Optimizer, x, ys) -> torch.Tensor:
    """(b) K backward passes filling a [K, d] Jacobian of the shared params, mean, step.

    Mirrors the usual PyTorch MTL-library loop: after each ``backward(retain_graph=True)`` the
    shared grads are copied into row k and zeroed, so each row holds one task's gradient; the
    heads' grads are left to accumulate (head k only receives task k's gradient anyway).
    Returns the Jacobian (so the caller can check it).
    """
    shared = [p for p in model.encoder.parameters()]
    opt.zero_grad(set_to_none=False)
    losses = task_losses(model, x, ys)
    d = sum(p.numel() for p in shared)
    jac = torch.empty(len(losses), d)
    for k, loss in enumerate(losses):
        loss.backward(retain_graph=k + 1 < len(losses))
        offset = 0
        for p in shared:
            n = p.numel()
            jac[k, offset : offset + n] = p.grad.reshape(-1)
            p.grad.zero_()
            offset += n
    direction = jac.mean(0)  # the "simple combination"
    offset = 0
    for p in shared:
        n = p.numel()
        p.grad.copy_(direction[offset : offset + n].view_as(p))
        offset += n
    opt.step()
    return jac


def choose_num_threads(candidates: Sequence[int], batch_size: int = 256, repeats: int = 30) -> Dict[int, float]:
    """Median fwd+bwd seconds for each thread count (round-robin); callers pick the min.

    The project rule: use the number of cores unless fewer threads are measurably faster.
    """
    torch.manual_seed(0)
    model = MultiLeNet().train()
    x, ys = make_batch(batch_size)
    fns = {}
    for n in candidates:

        def fn(n: int = n) -> None:
            torch.set_num_threads(n)
            fwd_bwd(model, x, ys)

        fns[n] = fn
    # set_num_threads is inside the timed call, but it is a no-op-cheap setter (microseconds).
    samples = time_round_robin(fns, repeats, warmup=5)
    return {n: statistics.median(s) for n, s in samples.items()}


def reference_timers(
    num_tasks: int = 2, batch_size: int = 256, optimizer: str = "adam"
) -> Dict[str, Callable[[], object]]:
    """Zero-argument callables for the torch fwd+bwd, step (a) and step (b), on one fixed batch."""
    torch.manual_seed(0)
    model = MultiLeNet(num_tasks).train()
    opt = make_optimizer(model, optimizer)
    x, ys = make_batch(batch_size, num_tasks)
    return {
        "torch fwd+bwd": lambda: fwd_bwd(model, x, ys),
        "torch step (a) equal weighting": lambda: equal_weighting_step(model, opt, x, ys),
        "torch step (b) per-task grads": lambda: per_task_gradient_step(model, opt, x, ys),
    }


if __name__ == "__main__":
    import os

    cores = os.cpu_count() or 1
    per_threads = choose_num_threads(sorted({1, cores}))
    best = min(per_threads, key=per_threads.get)
    print("fwd+bwd median ms by torch threads:", {n: round(1e3 * t, 3) for n, t in per_threads.items()})
    torch.set_num_threads(best)
    samples = time_round_robin(reference_timers(), 50, warmup=5)
    for name, s in samples.items():
        print(f"{name:36s} {1e3 * statistics.median(s):8.3f} ms (threads={best})")
