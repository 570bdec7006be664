"""Task heads, split into ``represent`` (task-specific representation h) and ``output`` (last layer).

The split lets the task-relation matrix mix the representations, z_i = sum_j W_ij h_j, before each
task's output layer.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax


class ClassificationHead(nn.Module):
    """Sener & Koltun's Multi-LeNet head: dense -> relu -> dropout (h), then dense -> logits."""

    num_outputs: int
    hidden: int = 50
    dropout_rate: float = 0.5

    def setup(self):
        self.body = nn.Dense(self.hidden)
        self.dropout = nn.Dropout(self.dropout_rate)
        self.out = nn.Dense(self.num_outputs)

    @property
    def rep_size(self) -> int:
        return self.hidden

    def represent(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.dropout(nn.relu(self.body(x)), deterministic=not train)

    def output(self, z: jax.Array) -> jax.Array:
        return self.out(z)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.output(self.represent(x, train=train))


class RegressionHead(nn.Module):
    """Affine head (``hidden=None``, as in the GradNorm toy) or dense -> relu -> dense."""

    num_outputs: int
    hidden: Optional[int] = None

    def setup(self):
        if self.hidden:
            self.body = nn.Dense(self.hidden)
        self.out = nn.Dense(self.num_outputs)

    @property
    def rep_size(self) -> Optional[int]:
        return self.hidden

    def represent(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        return nn.relu(self.body(x)) if self.hidden else x

    def output(self, z: jax.Array) -> jax.Array:
        return self.out(z)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.output(self.represent(x, train=train))


# 'binary' (jmtl.tasks.BINARY): the classification head with one output, the sigmoid logit.
HEADS = {"classification": ClassificationHead, "regression": RegressionHead, "binary": ClassificationHead}
