"""The library's errors, in one place: every error jmtl raises on purpose is a :class:`JmtlError`.

Each also subclasses the built-in it refines (``ValueError`` for bad input, ``OSError`` for the
file system, ``FloatingPointError`` for non-finite training), so existing handlers keep working:

    JmtlError
    ├── DataError (ValueError)              data missing or failing verification
    │   └── DataExhaustedError             a one-shot iterator ran out before the last step
    ├── ContractError (ValueError)          a model / tasks / batch that break the step's contract
    ├── ResumeConfigError (ValueError)      jmtl.runs.workdir: a resume that would change the run
    │   └── ResumeIdentityError             other data, optimizer or tasks than the run's
    ├── CheckpointMismatchError (ValueError) a checkpoint of another model / tasks / scheme
    ├── GridMismatchError (ValueError)      an ablation grid trained under another config
    ├── WarmStartError (ValueError)         jmtl.training.warm_start: params that cannot start this model
    ├── NonFiniteLossError (FloatingPointError)
    ├── WorkdirError (OSError)              jmtl.runs.workdir: the workdir cannot be used
    │   └── WorkdirLostError                 the workdir or its lock was deleted or replaced mid-run
    ├── StorageError (OSError)              jmtl.runs.workdir: a write failed (disk full, ...)
    │   └── CheckpointSaveError             jmtl.runs.checkpoint
    ├── CheckpointIntegrityError (OSError)  jmtl.runs.checkpoint: files differ from their checksums
    └── CheckpointRestoreError (OSError)    jmtl.runs.checkpoint: no checkpoint restores

    (not JmtlError, on purpose: ``except Exception`` must not swallow them)
    FitInterrupted (KeyboardInterrupt)      jmtl.training.loop: Ctrl-C in jmtl.fit, after its checkpoint
    FitTerminated (SystemExit, code 143)    jmtl.training.loop: SIGTERM in jmtl.fit, after its checkpoint

Catch ``jmtl.errors.JmtlError`` to tell jmtl's refusals from bugs.
"""

from __future__ import annotations


class JmtlError(Exception):
    """Base class of the errors jmtl raises on purpose (each message names the problem and the fix)."""


class DataError(JmtlError, ValueError):
    """Input data is missing or fails verification."""


class DataExhaustedError(DataError):
    """A one-shot iterator ran out before the run's last step."""


class ContractError(JmtlError, ValueError):
    """A model, task list or batch that does not meet the train step's contract."""


class CheckpointMismatchError(JmtlError, ValueError):
    """The workdir holds a checkpoint of a different model / task set / weighting scheme."""


class GridMismatchError(JmtlError, ValueError):
    """The workdir holds a grid trained under another config."""


class NonFiniteLossError(JmtlError, FloatingPointError):
    """A step produced a non-finite loss or update (``nonfinite.policy='raise'``, or too many skips)."""


__all__ = [
    "CheckpointMismatchError",
    "ContractError",
    "DataError",
    "DataExhaustedError",
    "GridMismatchError",
    "JmtlError",
    "NonFiniteLossError",
]
