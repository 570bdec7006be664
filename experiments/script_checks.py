"""What every experiment script shares about its options and its results files.

* Option checks (``int_list``, ``choices``, ``at_least``, ``weighting_methods``): each raises
  ``ValueError`` naming the option, what is wrong and the fix, so a script checks all of its options
  before any work and :func:`jmtl.training.cli.one_line_errors` prints that one line (exit 2).
* :func:`write_results`: the one writer of a script's ``<out>.json`` / ``<out>.md``
  (``experiments.results_io.write_outputs``), which refuses to replace a results file holding cells
  the new one lacks (``FewerCellsError``) unless ``--allow_fewer_cells`` is given;
  :func:`check_cells` is the same check before any work, on the cells a run plans to write.

A typo in an option (``--only hps_linaer``) used to train a subset and replace the committed
10-split table with a 1-split one; here it stops before anything trains or is written.
"""

from __future__ import annotations

import difflib
import json
import tempfile
from pathlib import Path
from typing import Callable, Collection, Iterable, Mapping, Sequence

ALLOW_FEWER_FLAG = "--allow_fewer_cells"


class FewerCellsError(ValueError):
    """A results file would be replaced by one without some of its cells."""


def _did_you_mean(value: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def choices(flag: str, values: Iterable[str], valid: Sequence[str], example: str = "") -> list[str]:
    """``values`` if each is one of ``valid``; else ``ValueError`` naming the unknown ones, the
    closest valid name and the valid names."""
    values = list(values)
    unknown = [v for v in values if v not in valid]
    if unknown:
        raise ValueError(
            f"{flag}: unknown {', '.join(map(repr, unknown))}{_did_you_mean(unknown[0], valid)}; valid: "
            f"{', '.join(map(str, valid))}. Fix: e.g. {flag}={example or valid[0]}"
        )
    return values


def int_list(
    flag: str, text: str, low: int | None = None, high: int | None = None, example: str = "0,1,2"
) -> list[int]:
    """``'0-2,5'`` -> ``[0, 1, 2, 5]`` (each once, in order), each in ``[low, high]``."""
    out: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        a, dash, b = part.partition("-") if not part.startswith("-") else (part, "", "")
        try:
            items = list(range(int(a), int(b) + 1)) if dash else [int(a)]
        except ValueError:
            raise ValueError(f"{flag}: {part!r} is not an integer or a range A-B. Fix: e.g. {flag}={example}") from None
        if dash and int(b) < int(a):
            raise ValueError(f"{flag}: the range {part!r} is empty (end before start). Fix: e.g. {flag}={example}")
        out += [i for i in items if i not in out]
    bad = [i for i in out if (low is not None and i < low) or (high is not None and i > high)]
    if bad:
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(
            f"{flag}: {', '.join(map(str, bad))} {'is' if len(bad) == 1 else 'are'} out of range (valid: "
            f"{bounds}). Fix: e.g. {flag}={example}"
        )
    if not out:
        raise ValueError(f"{flag}: no value given. Fix: e.g. {flag}={example}")
    return out


def float_list(flag: str, text: str, low: float | None = None, example: str = "1,10") -> list[float]:
    """``'1,10'`` -> ``[1.0, 10.0]``, each finite and > ``low`` when given."""
    out = []
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        try:
            v = float(part)
        except ValueError:
            raise ValueError(f"{flag}: {part!r} is not a number. Fix: e.g. {flag}={example}") from None
        if v != v or v in (float("inf"), float("-inf")) or (low is not None and v <= low):
            raise ValueError(
                f"{flag}: {part!r} must be a finite number{f' > {low:g}' if low is not None else ''}. "
                f"Fix: e.g. {flag}={example}"
            )
        out.append(v)
    if not out:
        raise ValueError(f"{flag}: no value given. Fix: e.g. {flag}={example}")
    return out


def at_least(flag: str, value: int, low: int) -> int:
    if value < low:
        raise ValueError(f"{flag}: {value} must be >= {low}. Fix: e.g. {flag}={max(low, 1)}")
    return value


def weighting_methods(flag: str, names: Iterable[str]) -> list[str]:
    """Weighting scheme names, ``'name@rep'`` allowed (per-task gradients of the representation)."""
    from jmtl import weighting

    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise ValueError(f"{flag}: no method given. Fix: e.g. {flag}=equal,mgda")
    choices(flag, [n.split("@", 1)[0] for n in names], weighting.names(), "equal,mgda")
    bad = [n for n in names if "@" in n and n.split("@", 1)[1] != "rep"]
    if bad:
        raise ValueError(f"{flag}: {bad[0]!r}: the only suffix is '@rep'. Fix: e.g. {flag}=mgda@rep")
    return names


def output_path(flag: str, out: str | Path, suffixes: Sequence[str] = (".json", ".md")) -> Path:
    """``out`` (a path without suffix) whose folder and files are not in the way (a file where the
    folder goes, a folder where a file goes), its folder created and writable: checked before any
    work, so a long run never ends unable to write its report."""
    out = Path(out)
    for p in (out.parent, *out.parent.parents):
        if p.exists() and not p.is_dir():
            raise ValueError(f"{flag}: {p} is a file, so {out} cannot be written there. Fix: pass another {flag}")
    for s in suffixes:
        target = out.with_name(out.name + s)
        if target.is_dir():
            raise ValueError(f"{flag}: {target} is a folder. Fix: pass another {flag}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out.parent).close()
    except OSError as e:
        raise ValueError(f"{flag}: cannot write into {out.parent} ({e.strerror}). Fix: pass another {flag}") from None
    return out


# ------------------------------------------------------------------------------------- results files


def read_json_record(path: Path) -> object:
    """A results file's JSON, or ``ValueError`` naming the file and the fix."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{path} is not a readable results file ({type(e).__name__}: {e}). Fix: restore it (git checkout "
            f"{path}) or move it away; {ALLOW_FEWER_FLAG} replaces it"
        ) from None


def check_cells(
    json_path: str | Path,
    new_cells: Collection[str],
    cells_of: Callable[[object], Iterable[str]],
    allow_fewer: bool = False,
) -> None:
    """Refuses (``FewerCellsError``) to replace ``json_path`` when it holds cells that ``new_cells``
    lacks, unless ``allow_fewer``.

    Args:
      json_path: the results ``.json`` about to be written.
      new_cells: the cells (names) the new file will hold.
      cells_of: the cells of a results record (the existing file's JSON, in the script's format).
      allow_fewer: the user asked to replace it anyway (``--allow_fewer_cells``).
    """
    json_path = Path(json_path)
    if allow_fewer or not json_path.exists():
        return
    old = read_json_record(json_path)
    try:
        old_cells = set(cells_of(old))
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise ValueError(
            f"{json_path} has not the layout this script writes ({type(e).__name__}: {e}), so its cells cannot be "
            f"counted. Fix: pass another output path, or {ALLOW_FEWER_FLAG} to replace it"
        ) from None
    lost = sorted(old_cells - set(new_cells))
    if lost:
        shown = ", ".join(lost[:4]) + (f", ... ({len(lost) - 4} more)" if len(lost) > 4 else "")
        raise FewerCellsError(
            f"{json_path} holds {len(old_cells)} cells and this run would replace it with {len(set(new_cells))}, "
            f"without {len(lost)} of them ({shown}); nothing was written. Fix: include them in the run (the full "
            f"lists, or --resume where the script has it), write elsewhere (another output path), or pass "
            f"{ALLOW_FEWER_FLAG} to replace the file"
        )


def write_results(
    out: str | Path,
    result: Mapping,
    lines: Sequence[str],
    cells_of: Callable[[object], Iterable[str]],
    allow_fewer: bool = False,
    prov: Mapping | None = None,
    echo: bool = True,
) -> dict:
    """``experiments.results_io.write_outputs`` (``<out>.json`` + ``<out>.md`` with provenance)
    after :func:`check_cells` on the cells of ``result``. Returns the provenance written."""
    from experiments import results_io as common

    out = Path(out)
    check_cells(out.with_name(out.name + ".json"), set(cells_of(result)), cells_of, allow_fewer)
    return common.write_outputs(out, dict(result), lines, prov, echo=echo)
