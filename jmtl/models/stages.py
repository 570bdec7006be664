"""Encoders split into stages, for architectures that act *between* stages.

Cross-stitch networks (Misra et al. 2016) mix the task towers after every stage, MTAN (Liu et al.
2019) puts a task attention mask on every stage's output and learning to branch (Guo et al. 2020)
chooses a parent node at every stage. They all need the encoder as a sequence of stages.

The stages of an encoder compose to exactly that encoder, and each stage names its layers as the
encoder does (``conv1``, ``Dense_2``, ...), so params convert both ways:
:func:`split_params` (encoder params -> ``{'stage_i': ...}``) and :func:`merge_params` (back).

* ``MLP(features)``: one stage per Dense + ReLU layer.
* ``MultiLeNet``: ``conv1 + relu + pool`` | ``conv2 + dropout + relu + pool`` | ``flatten + fc + relu``
  (the natural cut points: after each pooling and after the fully connected layer, where Misra et
  al. place their cross-stitch units).
* any other Linen module with ``__call__(x, *, train)``: one stage, the whole encoder (stage-wise
  architectures then act on the encoder's output only).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax

from jmtl.models import encoders, layers

PyTree = Any


class MLPStage(nn.Module):
    """Stage ``index`` of :class:`encoders.MLP`: flatten, Dense (named as in the MLP), ReLU."""

    features: int
    index: int

    @property
    def layer_names(self) -> tuple[str, ...]:
        return (f"Dense_{self.index}",)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        x = x.reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(self.features, name=f"Dense_{self.index}")(x))


class LeNetStage1(nn.Module):
    """conv1 (1->10, k5) -> relu -> 2x2 max-pool."""

    @property
    def layer_names(self) -> tuple[str, ...]:
        return ("conv1",)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        if x.ndim == 3:
            x = x[..., None]
        x = layers.Conv(10, kernel_size=(5, 5), padding="VALID", name="conv1")(x)
        return layers.max_pool_2x2(nn.relu(x))


class LeNetStage2(nn.Module):
    """conv2 (10->20, k5) -> channel dropout -> relu -> 2x2 max-pool (output stays a feature map)."""

    dropout_rate: float = 0.5

    @property
    def layer_names(self) -> tuple[str, ...]:
        return ("conv2",)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = layers.Conv(20, kernel_size=(5, 5), padding="VALID", name="conv2")(x)
        x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train)(x)
        return layers.max_pool_2x2(nn.relu(x))


class LeNetStage3(nn.Module):
    """flatten -> fc (320->50) -> relu."""

    @property
    def layer_names(self) -> tuple[str, ...]:
        return ("fc",)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        return nn.relu(nn.Dense(50, name="fc")(x.reshape(x.shape[0], -1)))


class WholeEncoder(nn.Module):
    """A single stage wrapping an encoder that has no stage split (its params sit one level down,
    under ``'encoder'``).

    Any Linen module with ``__call__(x, *, train)`` works (compact or setup-style). The template is
    copied in ``setup``: the very same template object is shared by every tower / node / trunk made
    from this stage, and Flax binds a module passed as an attribute once per model (sharing its
    params by reference), so each stage instance needs its own copy.
    """

    template: nn.Module

    @property
    def layer_names(self) -> None:
        return None

    def setup(self):
        self.encoder = self.template.clone()

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return self.encoder(x, train=train)


def stages_of(encoder: nn.Module) -> tuple[nn.Module, ...]:
    """The stages (unbound templates) whose composition is ``encoder``."""
    if isinstance(encoder, encoders.MLP):
        return tuple(MLPStage(features=f, index=i) for i, f in enumerate(encoder.features))
    if isinstance(encoder, encoders.MultiLeNet):
        return (LeNetStage1(), LeNetStage2(dropout_rate=encoder.dropout_rate), LeNetStage3())
    return (WholeEncoder(template=encoder),)


def output_features(encoder: nn.Module) -> int | None:
    """Width of the encoder's output when it is known without an input shape (else ``None``)."""
    if isinstance(encoder, encoders.MLP):
        return int(encoder.features[-1])
    if isinstance(encoder, encoders.MultiLeNet):
        return 50
    return None


class Staged(nn.Module):
    """An encoder run stage by stage. Params: ``{'stage_0': ..., 'stage_1': ..., ...}``."""

    stages: tuple[nn.Module, ...]

    def setup(self):
        for i, s in enumerate(self.stages):
            setattr(self, f"stage_{i}", s.clone())

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def stage(self, i: int, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Runs stage ``i`` alone."""
        return getattr(self, f"stage_{i}")(x, train=train)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        for i in range(len(self.stages)):
            x = self.stage(i, x, train=train)
        return x


def split_params(encoder_params: Mapping[str, PyTree], stages: Sequence[nn.Module]) -> dict:
    """Encoder params -> the params of :class:`Staged` over ``stages`` (same arrays, regrouped)."""
    out = {}
    for i, s in enumerate(stages):
        names = s.layer_names
        out[f"stage_{i}"] = (
            {"encoder": dict(encoder_params)} if names is None else {n: encoder_params[n] for n in names}
        )
    return out


def merge_params(staged_params: Mapping[str, PyTree]) -> dict:
    """The inverse of :func:`split_params`."""
    out = {}
    for key in sorted(staged_params, key=lambda k: int(k.split("_")[1])):
        sub = staged_params[key]
        out.update(sub["encoder"] if set(sub) == {"encoder"} else sub)
    return out
