"""Shared encoders (trunks): small Linen modules, ``__call__(x, *, train) -> [B, features]``."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from jmtl.models import layers, vision
from jmtl.registry import Registry


class MLP(nn.Module):
    """ReLU MLP; ``features`` are the hidden sizes (the last one is the representation size).

    The GradNorm toy trunk (Chen et al. 2018, Sec. 5.1) is ``MLP((100, 100, 100, 100))``.
    """

    features: Sequence[int] = (100, 100, 100, 100)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        del train
        x = x.reshape(x.shape[0], -1)
        for f in self.features:
            x = nn.relu(nn.Dense(f)(x))
        return x


class MultiLeNet(nn.Module):
    """The Multi-LeNet encoder of Sener & Koltun (NeurIPS 2018) for MultiMNIST (NHWC input).

    conv 1->10 k5, max-pool 2, relu, conv 10->20 k5, dropout, max-pool 2, relu, dense 320->50, relu.
    Max and relu commute, so relu runs before each pool (on the larger tensor it is cheaper to fuse
    with the convolution's bias add) with identical results.
    """

    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if x.ndim == 3:
            x = x[..., None]
        x = layers.Conv(10, kernel_size=(5, 5), padding="VALID", name="conv1")(x)
        x = layers.max_pool_2x2(nn.relu(x))
        x = layers.Conv(20, kernel_size=(5, 5), padding="VALID", name="conv2")(x)
        # Sener & Koltun use Dropout2d here: whole channels are dropped.
        x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train)(x)
        x = layers.max_pool_2x2(nn.relu(x))
        x = x.reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(50, name="fc")(x))


ENCODERS: Registry = Registry(
    "encoder",
    {
        "mlp": MLP,
        "multi_lenet": MultiLeNet,
        # The vision benchmarks' networks (jmtl.models.vision): NYUv2 / Cityscapes, Office, CelebA.
        "segnet": vision.SegNet,
        "resnet50_dilated": vision.resnet50_dilated,
        "resnet18": vision.resnet18,
        "celeba_cnn": vision.CelebACNN,
    },
)
_BUILTIN = frozenset(ENCODERS)


def register(name: str, factory, *, overwrite: bool = False) -> None:
    """Makes a user encoder nameable in configs (``config.model.encoder = name``).

    Args:
      name: the config name.
      factory: a Linen module class (or any callable ``**encoder_kwargs -> nn.Module``) whose
        instances have ``__call__(x, *, train) -> representation``.
      overwrite: replace an earlier registration of ``name`` (built-in encoders cannot be replaced).
    """
    if not callable(factory):
        raise TypeError(f"encoder factory for {name!r} must be callable (a Linen module class), got {factory!r}")
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in encoder; register yours under another name")
    ENCODERS.register(name, factory, overwrite=overwrite)


def names() -> list[str]:
    """The encoder names configs may use."""
    return ENCODERS.names()


def get(name: str, **kwargs) -> nn.Module:
    factory = ENCODERS.lookup(name)
    try:
        return factory(**kwargs)
    except TypeError as e:
        import dataclasses

        cls = factory
        valid = (
            [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
            if dataclasses.is_dataclass(cls)
            else ["(see its signature)"]
        )
        raise ValueError(f"bad arguments {kwargs} for encoder {name!r}; valid: {', '.join(valid)} ({e})") from None
