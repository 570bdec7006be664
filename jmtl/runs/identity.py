"""What a run trains on beyond its config, recorded in every checkpoint and compared on resume.

A config names a dataset, an optimizer and tasks, but not always what they are: the files under a
``data_dir`` can change, ``jmtl.fit`` takes arrays, iterables and custom ``optax`` / weighting
objects that no config field describes. A resumed run on other data or with another optimizer
would continue from a checkpoint of a different experiment and exit 0. So each checkpoint's meta
carries an *identity*: ``{what: fingerprint}`` with ``what`` in words (``"the validation arrays"``,
``"the optimizer (a custom optax transform)"``, ``"the tasks"``), and :func:`check` refuses a resume
whose identity differs, naming every part that changed.

No jax import: numpy and the standard library only.
"""

from __future__ import annotations

import hashlib
import types
from typing import Any, Iterable, Mapping, Optional

import numpy as np


def array_fingerprint(arrays: Mapping[str, Any]) -> str:
    """sha256 (16 hex digits) of a dict of arrays: entry names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for key in sorted(arrays, key=str):
        a = np.ascontiguousarray(np.asarray(arrays[key]))
        h.update(str(key).encode())
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def tasks_identity(tasks: Iterable[Any]) -> list[list]:
    """``[[name, kind, num_outputs], ...]`` in loss order."""
    return [[t.name, t.kind, int(t.num_outputs)] for t in tasks]


_SCALARS = (bool, int, float, complex, str, bytes, type(None))


def describe_transform(obj: Any, max_depth: int = 12) -> dict[str, str]:
    """The hyperparameters an ``optax`` (or weighting) transform closes over, as ``{path: repr}``.

    optax transforms are pairs of functions whose hyperparameters live in their closures
    (``optax.sgd(0.1)`` = ``scale(-0.1)``, whose ``update_fn`` closes over ``step_size``); chains close
    over their parts. This walks the closures (functions, tuples, dicts, NamedTuples, ``functools``
    partials) and records every scalar and array it reaches, so two transforms built with other
    hyperparameters differ. A value read from a module global at call time is not seen.

    Args:
      obj: the transform (anything; a ``GradientTransformation`` is walked through its
        ``init`` / ``update``).
      max_depth: how deep to follow nested closures.
    """
    out: dict[str, str] = {}
    seen: set[int] = set()

    def walk(x: Any, path: str, depth: int) -> None:
        if isinstance(x, _SCALARS):
            out[path] = repr(x)
            return
        if (
            isinstance(x, (np.ndarray, np.generic))
            or type(x).__module__.startswith(("jax", "jaxlib"))
            and hasattr(x, "shape")
        ):
            a = np.asarray(x)
            out[path] = repr(a.item()) if a.size == 1 else f"array{a.shape}:{array_fingerprint({'a': a})}"
            return
        if depth > max_depth or id(x) in seen:
            return
        seen.add(id(x))
        if isinstance(x, types.FunctionType):
            out.setdefault(path + "@fn", f"{x.__module__}.{x.__qualname__}")
            for name, cell in zip(x.__code__.co_freevars, x.__closure__ or ()):
                try:
                    value = cell.cell_contents
                except ValueError:  # an empty cell
                    continue
                walk(value, f"{path}.{name}", depth + 1)
            for i, d in enumerate(x.__defaults__ or ()):
                walk(d, f"{path}.default{i}", depth + 1)
            return
        if hasattr(x, "func") and hasattr(x, "args") and hasattr(x, "keywords"):  # functools.partial
            walk(x.func, f"{path}.func", depth + 1)
            for i, a in enumerate(x.args):
                walk(a, f"{path}.arg{i}", depth + 1)
            for k, v in sorted(x.keywords.items()):
                walk(v, f"{path}.{k}", depth + 1)
            return
        if hasattr(x, "_fields") and isinstance(x, tuple):  # NamedTuple (GradientTransformation)
            for name in x._fields:
                walk(getattr(x, name), f"{path}.{name}" if path else name, depth + 1)
            return
        if isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]", depth + 1)
            return
        if isinstance(x, Mapping):
            for k in sorted(x, key=str):
                walk(x[k], f"{path}[{k!r}]", depth + 1)
            return
        if isinstance(x, types.BuiltinFunctionType) or isinstance(x, type):
            out[path + "@fn"] = getattr(x, "__qualname__", repr(x))
            return
        if hasattr(x, "__dict__") and not isinstance(x, types.ModuleType):  # a user's transform object
            out.setdefault(path + "@type", f"{type(x).__module__}.{type(x).__qualname__}")
            for k in sorted(vars(x)):
                walk(vars(x)[k], f"{path}.{k}", depth + 1)
            return
        out[path + "@type"] = f"{type(x).__module__}.{type(x).__qualname__}"

    walk(obj, "", 0)
    return out


def _short_path(path: str) -> str:
    """The tail of a closure path a user can read (``update.transforms[1].update.step_size`` ->
    ``transforms[1].step_size``)."""
    parts = [p for p in path.replace("@", ".@").split(".") if p and p not in ("update", "init", "update_fn", "init_fn")]
    return ".".join(parts[-3:])


def describe_difference(what: str, old: Any, new: Any) -> str:
    """One phrase naming what changed: ``"the validation arrays differ"``, the optimizer's changed
    hyperparameters, the tasks that changed."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):  # transform descriptions
        keys = sorted(set(old) | set(new))
        changed = [k for k in keys if old.get(k) != new.get(k)]
        shown = ", ".join(f"{_short_path(k)} {old.get(k, '<absent>')} -> {new.get(k, '<absent>')}" for k in changed[:6])
        more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
        return f"{what} differs ({shown}{more})"
    if what == "the tasks":
        old_t, new_t = {t[0]: t for t in old}, {t[0]: t for t in new}
        parts = []
        for name in list(old_t) + [n for n in new_t if n not in old_t]:
            o, n = old_t.get(name), new_t.get(name)
            if o is None:
                parts.append(f"task {name!r} added ({n[1]}, {n[2]} output(s))")
            elif n is None:
                parts.append(f"task {name!r} removed")
            elif o != n:
                parts.append(f"task {name!r}: {o[1]}, {o[2]} output(s) -> {n[1]}, {n[2]} output(s)")
        if not parts:
            parts.append(f"order {[t[0] for t in old]} -> {[t[0] for t in new]}")
        return "the tasks differ (" + "; ".join(parts) + ")"
    verb = "differs" if "batch " in what + " " else "differ"  # "the first training batch" is one thing
    return f"{what} {verb} (fingerprint {old} -> {new})"


def differences(saved: Optional[Mapping[str, Any]], current: Mapping[str, Any]) -> list[str]:
    """Phrases for every part of ``current`` that differs from ``saved`` (parts one side lacks are
    skipped: a checkpoint written before a part was recorded cannot be compared on it)."""
    if not saved:
        return []
    return [
        describe_difference(k, saved[k], current[k])
        for k in current
        if k in saved and _normal(saved[k]) != _normal(current[k])
    ]


def _normal(x: Any) -> Any:
    """JSON round trip (tuples -> lists) so a restored record compares equal to a fresh one."""
    if isinstance(x, Mapping):
        return {str(k): _normal(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_normal(v) for v in x]
    return x
