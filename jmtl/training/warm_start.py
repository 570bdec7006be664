"""Warm starts and transfer to new tasks: a run's params initialised from a checkpoint or a file.

What users do with a trained multi-task encoder: start a new run (new tasks, new heads) from its
shared params -- or from all of its params -- and either fine-tune them or keep them frozen::

    jmtl.fit(model, [Task("right", "classification", 10)], ..., init_from=dict(
        path="/runs/left", part="shared", freeze=True))
    # config runs: config.init_from = dict(path=..., part="shared" | "all", freeze=True | False)

* ``path``: a jmtl workdir or its ``checkpoints/`` folder (the latest checkpoint's params; of a
  run with several seeds, seed ``seed_index``), or a params file written by :func:`save_params`
  (``.msgpack``: flax serialisation; ``.npz``: one array per ``/``-joined param path).
* ``part='shared'``: the shared params (what the step's ``shared`` selector selects, default
  ``params['shared']``) are loaded; every one must exist in the source with the same shape. The
  task heads start fresh (new tasks get new heads).
* ``part='all'``: every param the source has under the same path is loaded (heads of tasks both
  runs have included); the run's params the source lacks (new tasks' heads) start fresh, and the
  source's params the run lacks (old tasks' heads) are not used. The loaded and fresh paths are
  printed.
* Any param loaded from the source with a different shape is refused, every mismatch named.
* ``freeze=True``: the loaded params get no updates (``optax.multi_transform`` with
  ``optax.set_to_zero()`` on them), so they stay bitwise equal to the source's; the rest trains.
  Their per-task gradients are still computed (a gradient-based weighting scheme reads them).

A resumed run restores its own checkpoint; ``init_from`` acts only on a fresh start.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmtl.core.sharing import Selector, Sharing, as_sharing
from jmtl.errors import JmtlError

PyTree = Any
PARTS = ("shared", "all")
FROZEN, TRAINED = "frozen", "trained"


class WarmStartError(JmtlError, ValueError):
    """The source of ``init_from`` cannot initialise this run (missing params, shape mismatches)."""


@dataclasses.dataclass(frozen=True)
class InitFrom:
    """Where a run's initial params come from (see the module docstring)."""

    path: str
    part: str = "shared"
    freeze: bool = False
    seed_index: int = 0

    def __post_init__(self):
        if not self.path:
            raise ValueError(
                "init_from needs a path: a jmtl workdir, its checkpoints/ folder, or a .msgpack / .npz "
                "params file (jmtl.training.warm_start.save_params)"
            )
        if self.part not in PARTS:
            raise ValueError(f"init_from.part must be one of {PARTS}, got {self.part!r}")

    @classmethod
    def parse(cls, value: Any) -> Optional["InitFrom"]:
        """``None`` / ``''`` / a config with an empty path -> None; a str -> its path (part
        'shared', not frozen); a mapping or config dict -> its fields; an ``InitFrom`` -> itself."""
        if value is None or isinstance(value, InitFrom):
            return value
        if isinstance(value, (str, Path)):
            return cls(str(value)) if str(value) else None
        fields = dict(value.to_dict() if hasattr(value, "to_dict") else value)
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"init_from has unknown field(s) {unknown}; valid: path, part, freeze, seed_index")
        if not fields.get("path"):
            return None
        return cls(**fields)


# ---------------------------------------------------------------------------- reading and writing params


def _flat(tree: PyTree) -> dict[str, Any]:
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def save_params(path: str | Path, params: PyTree) -> Path:
    """Writes ``params`` (a nested dict) to ``.msgpack`` (flax serialisation) or ``.npz``."""
    from flax import serialization

    path = Path(path)
    params = jax.device_get(params)
    if path.suffix == ".msgpack":
        path.write_bytes(serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))
    elif path.suffix == ".npz":
        flat = {
            "/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
        }
        np.savez(path, **flat)
    else:
        raise ValueError(f"save_params: {path} must end in .msgpack or .npz")
    return path


def _unflatten_npz(arrays: Mapping[str, np.ndarray]) -> dict:
    out: dict = {}
    for key, value in arrays.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = np.asarray(value)
    return out


def load_params(path: str | Path, seed_index: int = 0) -> PyTree:
    """The params of a workdir's latest checkpoint, a ``checkpoints/`` folder, or a params file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"init_from.path {path} does not exist. Fix: give a jmtl workdir, its checkpoints/ "
            "folder, or a .msgpack / .npz params file"
        )
    if path.is_file():
        if path.suffix == ".msgpack":
            from flax import serialization

            return serialization.msgpack_restore(path.read_bytes())
        if path.suffix == ".npz":
            with np.load(path) as f:
                return _unflatten_npz(dict(f))
        raise ValueError(
            f"init_from.path {path}: unknown params file type {path.suffix!r}. Fix: a .msgpack or .npz "
            "file (jmtl.training.warm_start.save_params), or a jmtl workdir"
        )
    ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    params = _checkpoint_params(ckpt_dir)
    workdir = ckpt_dir.parent
    num_seeds = _saved_num_seeds(workdir)
    if num_seeds > 1:  # seeds trained together: every leaf has a leading seed axis
        if not 0 <= seed_index < num_seeds:
            raise ValueError(
                f"init_from.seed_index {seed_index}: the run in {workdir} trained seeds 0..{num_seeds - 1}"
            )
        params = jax.tree.map(lambda v: np.asarray(v)[seed_index], params)
    return params


def _saved_num_seeds(workdir: Path) -> int:
    import json

    cfg = workdir / "config.json"
    if cfg.is_file():
        try:
            return int(json.loads(cfg.read_text()).get("num_seeds", 1))
        except (ValueError, TypeError, AttributeError):
            return 1
    return 1


def _checkpoint_params(ckpt_dir: Path) -> PyTree:
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(ckpt_dir.absolute(), options=ocp.CheckpointManagerOptions(create=False)) as manager:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"init_from.path {ckpt_dir} holds no checkpoint. Fix: point it at a jmtl workdir "
                "that saved one (or its checkpoints/ folder), or at a params file"
            )
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    # The TrainState is stored as its fields; without a target orbax gives them back as a dict (or a list).
    params = state["params"] if isinstance(state, Mapping) else state[1]
    return jax.tree.map(np.asarray, params)


# ---------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """What :func:`plan` decided: the source values of the loaded params and which ones freeze."""

    spec: InitFrom
    loaded: dict[str, np.ndarray]  # keystr path -> source value, for every loaded param
    fresh: tuple[str, ...]  # the run's params that keep their fresh initialisation

    def apply(self, params: PyTree) -> PyTree:
        """``params`` with every loaded param replaced by the source's value (same dtype)."""

        def put(path, leaf):
            key = jax.tree_util.keystr(path)
            return jnp.asarray(self.loaded[key], dtype=leaf.dtype) if key in self.loaded else leaf

        return jax.tree_util.tree_map_with_path(put, params)

    def labels(self, params: PyTree) -> PyTree:
        """``FROZEN`` / ``TRAINED`` per param leaf (all ``TRAINED`` unless ``freeze``)."""
        frozen = self.spec.freeze
        return jax.tree_util.tree_map_with_path(
            lambda p, _: FROZEN if frozen and jax.tree_util.keystr(p) in self.loaded else TRAINED, params
        )

    def wrap_optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
        """``tx`` on the trained params, ``set_to_zero`` on the frozen ones; the optimizer updates
        ``{'model': params, 'weighting': scheme params}`` (the scheme's params always train)."""
        if not self.spec.freeze:
            return tx

        def labels(tree):
            return {
                "model": self.labels(tree["model"]),
                "weighting": jax.tree.map(lambda _: TRAINED, tree["weighting"]),
            }

        return optax.multi_transform({TRAINED: tx, FROZEN: optax.set_to_zero()}, labels)

    def describe(self) -> str:
        what = "frozen" if self.spec.freeze else "fine-tuned"
        fresh = f"; fresh: {', '.join(self.fresh)}" if self.fresh else ""
        return (
            f"init_from {self.spec.path} (part={self.spec.part!r}): {len(self.loaded)} param(s) loaded, {what}{fresh}"
        )


def plan(
    spec: InitFrom,
    target_params: PyTree,
    shared: Optional[Selector | Sharing] = None,
    source_params: Optional[PyTree] = None,
) -> WarmStart:
    """Matches the source's params to the run's by path and shape.

    Args:
      spec: the warm start.
      target_params: the run's params (or their shapes: ``jax.eval_shape`` of the init).
      shared: the step's shared-param selector (``part='shared'``).
      source_params: the source's params (default: read from ``spec.path``).

    Raises:
      WarmStartError: a loaded param's shape differs (every mismatch listed), a shared param is
        missing from the source, or nothing at all would be loaded.
    """
    source = _flat(load_params(spec.path, spec.seed_index) if source_params is None else source_params)
    target = _flat(target_params)
    if spec.part == "shared":
        mask = _flat(as_sharing(shared).mask(target_params))
        wanted = [k for k in target if mask[k]]
        missing = [k for k in wanted if k not in source]
        if missing:
            raise WarmStartError(
                f"init_from {spec.path}: the source has no param at {len(missing)} shared path(s) of this run: "
                f"{', '.join(missing)}. Fix: the run's shared encoder must be the source's (same module names), or use "
                f"part='all' to load what matches"
            )
    else:
        wanted = [k for k in target if k in source]
    mismatched = [
        f"{k}: run {tuple(np.shape(target[k]))} vs source {tuple(np.shape(source[k]))}"
        for k in wanted
        if tuple(np.shape(target[k])) != tuple(np.shape(source[k]))
    ]
    if mismatched:
        raise WarmStartError(
            f"init_from {spec.path}: {len(mismatched)} param(s) differ in shape: "
            + "; ".join(mismatched)
            + ". Fix: build the run's encoder with the source's sizes, or load only matching parts (part='shared')"
        )
    if not wanted:
        raise WarmStartError(
            f"init_from {spec.path}: no param of this run is in the source (source paths: "
            f"{', '.join(list(source)[:8])}...). Fix: check that path is this model's run"
        )
    loaded = {k: np.asarray(source[k]) for k in wanted}
    return WarmStart(spec, loaded, tuple(k for k in target if k not in loaded))


def warm_state(state, warm: WarmStart, optimizer: optax.GradientTransformation):
    """A fresh :class:`TrainState` with the loaded params and its optimizer state re-initialised
    on them (an optimizer state may hold params-dependent values)."""
    params = warm.apply(state.params)
    opt_state = optimizer.init({"model": params, "weighting": state.weighting_params})
    new = state._replace(params=params, opt_state=opt_state)
    return jax.tree.map(lambda x: jnp.array(x, copy=True), new)


def prepare(spec: InitFrom, model, example_input: Any, shared: Optional[Selector | Sharing] = None) -> WarmStart:
    """The plan for ``model``: its params' shapes from an abstract init (nothing computed)."""
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
    shapes = jax.eval_shape(lambda: model.init(rngs, example_input, train=False))["params"]
    return plan(spec, shapes, shared)
