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
import re
import sys
import textwrap
import traceback
from typing import Iterator, Sequence

from absl import flags
from ml_collections import config_flags

from jmtl.registry import closest
from jmtl.runs import workdir as workdir_lib

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
    close = closest(name, valid)
    return f" (did you mean {close!r}?)" if close else ""


def _unknown_config_field(argv: Sequence[str], error: Exception) -> str:
    """The one-line message for an override of a field the config does not have."""
    text = str(error).strip("'\"")
    key = re.match(r"^\\?'?([^'\\\n]+)", text)
    key = key.group(1) if key else text
    arg = next((a for a in argv if a.startswith("--config.") and re.search(rf"[.]{re.escape(key)}(=|$|\.)", a)), None)
    dotted = arg.split("=", 1)[0][len("--config.") :] if arg else key
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
    field_list = (
        f" (fields of config{'.' + where if where else ''}: {', '.join(valid)})" if valid and len(valid) <= 12 else ""
    )
    did_you_mean = suggest(key, valid)
    return f"error: unknown config field --config.{dotted}{did_you_mean or field_list}"


_CAST = re.compile(
    r"Could not override field '([^']+)' \(reference\)\. (.*) is of original type <class '(\w+)'> "
    r"and cannot be casted to type <class '(\w+)'>",
    re.S,
)
_TYPE_WORDS = {"int": "an int", "float": "a number", "str": "a string", "bool": "True or False", "tuple": "a tuple"}


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from or during (absl and ml_collections re-raise a
    config file's error as new ones carrying only the traceback's text)."""
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def config_file_error(error: BaseException) -> str | None:
    """One line for an error raised while a config file runs, naming the file, the line and the
    fix; ``None`` for anything else (a bug in the file keeps its traceback).

    A value of the wrong type (``c.batch_size = "256"``) is refused by the ConfigDict itself, at the
    line that sets it; that line is the one the user must change.
    """
    found = [(e, _CAST.search(str(e))) for e in _chain(error) if isinstance(e, TypeError)]
    found = [(e, m) for e, m in found if m is not None and not str(e).startswith("Error whilst")]
    if not found:
        return None
    root, match = found[0]
    field, value, got, want = match.groups()
    where, source = "the config file", ""
    # The innermost frame outside the installed packages (ml_collections) is the config file's line.
    for frame in reversed(traceback.extract_tb(root.__traceback__)):
        if "site-packages" in frame.filename or "ml_collections" in frame.filename:
            continue
        where, source = f"{frame.filename}, line {frame.lineno}", (frame.line or "").strip()
        break
    lhs = source.split("=", 1)[0].strip() if "=" in source else ""
    dotted = lhs.split(".", 1)[1] if "." in lhs else field
    try:
        {"int": int, "float": float}[want](value)
        fix = f"write {value} without quotes" if got == "str" else f"write {_TYPE_WORDS.get(want, want)}"
    except (KeyError, ValueError):
        fix = f"give config.{dotted} {_TYPE_WORDS.get(want, 'a ' + want)}"
    return (
        f"error: {where}: config.{dotted} must be {_TYPE_WORDS.get(want, 'a ' + want)}, the config file "
        f"sets the {got} {value!r}{f' ({source})' if source else ''}. Fix: {fix} in the config file"
    )


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a misspelt ``--config.`` field or a config file's value of the wrong type
    reported in one line (exit 2); other flag errors print as absl prints them (exit 1)."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:
        print(_unknown_config_field(argv, e), file=sys.stderr)
        sys.exit(USAGE_ERROR)
    except flags.Error as e:
        line = config_file_error(e)
        if line is not None:
            print(line, file=sys.stderr)
            sys.exit(USAGE_ERROR)
        # absl's own message and exit status (app.parse_flags_with_usage; parsing again would define
        # the override flags twice).
        message = str(e)
        message = f"\n{textwrap.indent(message, '  ')}\n" if "\n" in message else f" {message}\n"
        sys.stderr.write(f"FATAL Flags parsing error:{message}Pass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(1)


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
        print(
            "KeyboardInterrupt: stopped at once by a second interrupt, without a final checkpoint. Fix: rerun the "
            "same command to resume from the last checkpoint",
            file=sys.stderr,
            flush=True,
        )
        workdir_lib.exit_process(130)
    except Exception as e:  # noqa: BLE001  (re-raised unless it is one of the kinds above)
        usage = isinstance(e, (ValueError, TypeError, FileNotFoundError, workdir_lib.WorkdirError))
        if not (usage or isinstance(e, FloatingPointError) or workdir_lib.is_expected_failure(e)):
            raise
        print(workdir_lib.format_fatal(e), file=sys.stderr, flush=True)
        workdir_lib.exit_process(USAGE_ERROR if usage else RUN_ERROR)
