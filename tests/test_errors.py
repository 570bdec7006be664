"""Every exception class the library defines is a ``jmtl.errors.JmtlError`` (and keeps its built-in
base, so existing ``except ValueError`` / ``except OSError`` handlers still catch it). The exceptions
that stop a run on a signal (``FitInterrupted``, a ``KeyboardInterrupt``; ``FitTerminated``, a
``SystemExit``) are deliberately not ``Exception``s, so ``except Exception`` cannot swallow them."""

import importlib
import inspect
import pkgutil

import jmtl
from jmtl import errors


def test_every_library_exception_derives_from_jmtl_error():
    found = {}
    for info in pkgutil.walk_packages(jmtl.__path__, "jmtl."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__.startswith("jmtl"):
                found[f"{obj.__module__}.{name}"] = obj
    assert len(found) >= 12
    control_flow = (KeyboardInterrupt, SystemExit)
    strays = sorted(
        k for k, cls in found.items() if not issubclass(cls, errors.JmtlError) and not issubclass(cls, control_flow)
    )
    assert {"jmtl.training.loop.FitInterrupted", "jmtl.training.loop.FitTerminated"} <= set(found)
    assert not any(issubclass(cls, control_flow) and issubclass(cls, Exception) for cls in found.values())
    assert not strays, f"exceptions outside the jmtl.errors hierarchy: {strays}"
    assert issubclass(errors.DataError, ValueError) and issubclass(errors.NonFiniteLossError, FloatingPointError)
    from jmtl.runs.workdir import StorageError

    assert issubclass(StorageError, OSError)
