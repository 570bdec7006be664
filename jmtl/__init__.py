"""jmtl: multi-task learning in JAX.

The public API (everything else is reachable through the subpackages)::

    import jmtl
    jmtl.weighting.get("pcgrad")              # weighting schemes as optax-style transforms
    jmtl.weighting.as_optax("pcgrad")         # ... and as optax GradientTransformations
    jmtl.mtl_value_and_grad(loss_fn, "mgda")  # multi-task gradients of any params pytree
    jmtl.Task("digit", "classification", 10)  # a task: name, kind, outputs
    jmtl.StepConfig, jmtl.make_train_step, jmtl.init_state   # the built-in jitted train step
    jmtl.check_contract(model, tasks, batch)  # what a model and batch must satisfy, checked
    jmtl.fit(model, tasks, train, validation=..., test=..., workdir=...)  # your model and data in the loop
    jmtl.train(config, workdir)               # the loop on a config (checkpoints, eval, metrics)
    jmtl.data.from_arrays(...), jmtl.data.register(...)      # your own data

Subpackages load on first use, so ``import jmtl`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.7.0"

# Type checkers and IDEs read these imports; at run time the names load lazily (``__getattr__``).
# Rule: the names below and in ``__all__`` (and the subpackages' ``__all__``) are public; modules or
# names with a leading underscore are private and may change without notice.
if TYPE_CHECKING:  # pragma: no cover
    from jmtl import core, data, metrics, models, plotting, tasks, training, weighting
    from jmtl.core.sharing import Sharing
    from jmtl.core.value_and_grad import MTLGradients, mtl_value_and_grad
    from jmtl.tasks import Task
    from jmtl.training.contract import ContractError
    from jmtl.training.contract import check as check_contract
    from jmtl.training.fit import fit
    from jmtl.training.loop import FitInterrupted, FitResult, FitTerminated, train
    from jmtl.training.state import TrainState, init_state
    from jmtl.training.step import StepConfig, make_train_step

_SUBPACKAGES = ("core", "data", "metrics", "models", "plotting", "tasks", "training", "weighting")
_ATTRIBUTES = {
    "Task": ("jmtl.tasks", "Task"),
    "mtl_value_and_grad": ("jmtl.core.value_and_grad", "mtl_value_and_grad"),
    "MTLGradients": ("jmtl.core.value_and_grad", "MTLGradients"),
    "StepConfig": ("jmtl.training.step", "StepConfig"),
    "TrainState": ("jmtl.training.state", "TrainState"),
    "make_train_step": ("jmtl.training.step", "make_train_step"),
    "init_state": ("jmtl.training.state", "init_state"),
    "Sharing": ("jmtl.core.sharing", "Sharing"),
    "check_contract": ("jmtl.training.contract", "check"),
    "ContractError": ("jmtl.training.contract", "ContractError"),
    "train": ("jmtl.training.loop", "train"),
    "fit": ("jmtl.training.fit", "fit"),
    "FitResult": ("jmtl.training.loop", "FitResult"),
    "FitInterrupted": ("jmtl.training.loop", "FitInterrupted"),
    "FitTerminated": ("jmtl.training.loop", "FitTerminated"),
}

__all__ = ["__version__", *_SUBPACKAGES, *_ATTRIBUTES]


# Modules of the optional extras (pyproject.toml) -> the extra that installs them. `pip install .` gives
# the functional core and the step; the trainer (`fit`, `train`) and the datasets need more.
_EXTRA_OF = {
    "grain": "experiments",
    "tensorflow_datasets": "experiments",
    "array_record": "experiments",
    "etils": "experiments",
    "importlib_resources": "experiments",
    "orbax": "experiments",
    "ml_collections": "experiments",
    "tqdm": "experiments",
    "matplotlib": "experiments",
    "tensorboardX": "tensorboard",
    "rdkit": "graphs",
    "scipy": "school",
    "PIL": "vision",
}


def _import(module: str, name: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        extra = _EXTRA_OF.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        raise ModuleNotFoundError(
            f"jmtl.{name} needs {e.name!r}, which `pip install jmtl` leaves out. Fix: pip install 'jmtl[{extra}]' "
            f"(from a checkout: pip install '.[{extra}]')",
            name=e.name,
        ) from e


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return _import(f"jmtl.{name}", name)
    if name in _ATTRIBUTES:
        module, attr = _ATTRIBUTES[name]
        return getattr(_import(module, name), attr)
    raise AttributeError(f"module 'jmtl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
