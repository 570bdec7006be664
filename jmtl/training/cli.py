"""Command-line helpers shared by the experiment scripts (each script defines its own flags).

* :func:`define_config_and_workdir`: the ``--config`` / ``--workdir`` flags, defined once per
  process whichever script (or test) imports first;
* :func:`parse_flags`: absl's flag parser, except that a misspelt ``--config.`` field prints one
  line with the closest valid names (``difflib``) and exits 2 instead of a 50-line traceback;
* :func:`one_line_errors`: a bad input found while running (unknown name, wrong range, refused
  resume) prints one line and exits 2; a failed run (non-finite loss, failed save) exits 1.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import sys
from typing import Iterator, Sequence

from absl import app, flags
from ml_collections import config_flags

from jmtl.training import workdir as workdir_lib

USAGE_ERROR = 2  # bad command line or config, as argparse and absl use
RUN_ERROR = 1


def define_config_and_workdir(config_help: str, workdir_help: str) -> tuple[flags.FlagHolder, flags.FlagHolder]:
    """``--config`` (an ml_collections config file, ``path[:arg]``) and ``--workdir`` (required).

    absl flags are global to the process: when a module imported earlier already defined them (a
    test importing two scripts), the existing flags are returned.
    """
    fv = flags.FLAGS
    if "config" not in fv:
        config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
    if "workdir" not in fv:
        flags.DEFINE_string("workdir", None, workdir_help)
    flags.mark_flags_as_required(["config", "workdir"])
    return flags.FlagHolder(fv, fv["config"]), flags.FlagHolder(fv, fv["workdir"])


def suggest(name: str, valid: Sequence[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``valid`` (empty when none is close)."""
    close = difflib.get_close_matches(name, [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_config_field(argv: Sequence[str], error: Exception) -> str:
    """The one-line message for an override of a field the config does not have."""
    text = str(error).strip("'\"")
    key = re.match(r"^\\?'?([^'\\\n]+)", text)
    key = key.group(1) if key else text
    arg = next((a for a in argv if a.startswith("--config.") and re.search(rf"[.]{re.escape(key)}(=|$|\.)", a)), None)
    dotted = arg.split("=", 1)[0][len("--config."):] if arg else key
    parent_path = dotted.split(".")[:-1] if dotted.endswith(key) else dotted.split(key)[0].strip(".").split(".")
    valid: list[str] = []
    try:
        node = flags.FLAGS["config"].value
        for part in (p for p in parent_path if p):
            node = node[part]
        valid = list(node.keys())
    except Exception:  # noqa: BLE001  (no config loaded: fall back to ml_collections' own hint)
        hint = re.search(r'Did you mean "([^"]+)"', text)
        valid = [hint.group(1)] if hint else []
    where = ".".join(p for p in parent_path if p)
    field_list = f" (fields of config{'.' + where if where else ''}: {', '.join(valid)})" if valid and len(valid) <= 12 else ""
    did_you_mean = suggest(key, valid)
    return f"error: unknown config field --config.{dotted}{did_you_mean or field_list}"


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a misspelt ``--config.`` field reported in one line (exit 2)."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:
        print(_unknown_config_field(argv, e), file=sys.stderr)
        sys.exit(USAGE_ERROR)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Turns the errors a user can fix into one line on stderr (``workdir.format_fatal``) and an
    exit code, promptly (``workdir.exit_process``: lingering save threads do not hold the exit).

    Exit 2: a bad input (``ValueError`` / ``TypeError``: a config field, an unknown name, a refused
    resume or grid, missing data) or an unusable workdir (a file, in use by another run). Exit 1: a
    failed run (a non-finite loss, a failed save, a full disk). Anything else keeps its traceback:
    it is a bug.
    """
    try:
        yield
    except KeyboardInterrupt:
        # A second SIGINT / SIGTERM stops a run at once (the first one saves and stops cleanly): one line,
        # not the traceback of wherever the signal landed. 130 = 128 + SIGINT, the shell's convention.
        print("KeyboardInterrupt: stopped at once by a second interrupt, without a final checkpoint. Fix: rerun the "
              "same command to resume from the last checkpoint", file=sys.stderr, flush=True)
        workdir_lib.exit_process(130)
    except Exception as e:  # noqa: BLE001  (re-raised unless it is one of the kinds above)
        usage = isinstance(e, (ValueError, TypeError, FileNotFoundError, workdir_lib.WorkdirError))
        if not (usage or isinstance(e, FloatingPointError) or workdir_lib.is_expected_failure(e)):
            raise
        print(workdir_lib.format_fatal(e), file=sys.stderr, flush=True)
        workdir_lib.exit_process(USAGE_ERROR if usage else RUN_ERROR)
