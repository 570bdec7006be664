r"""The Census-Income summary table (``results/census/table.md`` / ``.json``): every group's grid
(``experiments/census_grid.py`` outputs, ``auc.json``) side by side, with the MMoE paper's setup and
a notes file written by hand (what matches the paper, what does not and why).

    python -m experiments.census_table --groups results/census/income_marital,results/census/education_marital \
        --notes results/census/notes.md --out results/census/table
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments import script_checks
from experiments.results_io import CODE_NOTE, code_mark
from jmtl.metrics import mtl as mtl_metrics
from jmtl.metrics import summary as summary_lib

# Where the paper's setup is quoted from (the MMoE paper's text; its Tables 1 and 2 are images there).
PAPER_SOURCE = (
    "Ma et al., KDD 2018, Sec. 5.1, 6.2, 6.3 (text as quoted in github.com/anmingyu11/Gor-rok, "
    "Papers/multitask/MMOE/O.md, commit 58be4dde1a75c289d5b3be0b0c92e823ce8c2949)"
)


def _pm(v) -> str:
    return "—" if v is None else summary_lib.format_mean_sd(*v, spec=".4f")


def delta_m(e: dict, tasks: list[str], base: dict) -> float | None:
    """Δm% on the test AUC (Navon et al. 2022's definition, higher-is-better metrics): the mean over
    tasks of 100 (single-task AUC - this AUC) / single-task AUC; None for the single-task rows or
    when a baseline is missing."""
    if e["arch"] == "single_task":
        return None
    vals = {t: (e.get(f"test.{t}.auc") or (None,))[0] for t in tasks}
    return mtl_metrics.delta_m_of(vals, base, higher_is_better=True, tasks=tasks)


def rows_of(folder: Path) -> tuple[str, list[str], list[dict]]:
    path = folder / "auc.json"
    if not path.is_file():
        raise ValueError(f"--groups: {path} does not exist. Fix: pass folders written by experiments.census_grid --out")
    data = script_checks.read_json_record(path)
    try:
        return data["title"], data["tasks"], data["cells"]
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"{path} lacks {e} (not an experiments.census_grid auc.json). Fix: pass folders written by "
            "experiments.census_grid --out"
        ) from None


def table_cells(record) -> set[str]:
    """The cells of a table.json: group / cell / seed."""
    return {
        f"{g}/{e['cell']} seed {i}"
        for g, group in record["groups"].items()
        for e in group["cells"]
        for i in range(int(e.get("seeds") or 0))
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", required=True, help="comma-separated result folders (each with auc.json)")
    parser.add_argument("--notes", default="", help="a markdown file appended after the tables")
    parser.add_argument("--out", required=True, help="output path without suffix")
    parser.add_argument(
        "--allow_fewer_cells", action="store_true", help="replace an output that holds cells the new table lacks"
    )
    args = parser.parse_args(argv)
    from jmtl.training import cli

    with cli.one_line_errors():
        return _main(args)


def _main(args) -> int:
    folders = [Path(g) for g in args.groups.split(",") if g]
    if not folders:
        raise ValueError("--groups: no folder given. Fix: e.g. --groups=results/census/income_marital")
    for folder in folders:  # every input before anything is written
        rows_of(folder)
    if args.notes and not Path(args.notes).is_file():
        raise ValueError(f"--notes: {args.notes} does not exist. Fix: pass the notes file, or leave --notes out")
    script_checks.output_path("--out", args.out)
    lines = [
        "# Census-Income (KDD): test ROC AUC per architecture and weighting",
        "",
        f"Paper setup quoted from: {PAPER_SOURCE}.",
        "",
    ]
    record = {"paper_source": PAPER_SOURCE, "groups": {}}
    for folder in folders:
        title, tasks, cells = rows_of(folder)
        record["groups"][folder.name] = {"title": title, "tasks": tasks, "cells": cells}
        base = {
            t: next((e[f"test.{t}.auc"][0] for e in cells if e["cell"] == f"single_task__{t}"), None) for t in tasks
        }
        head = [
            "arch",
            "method",
            *[f"{t} AUC (best val)" for t in tasks],
            "Δm% (AUC) ↓",
            *[f"{t} AUC (final)" for t in tasks],
            "seeds",
            "ms/step",
            "wall s",
        ]
        lines += [
            f"## {title}",
            "",
            f"From `{folder}/auc.md` (mean ± sample std over seeds).",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "---|" * len(head),
        ]
        for e in cells:
            e["delta_m_auc"] = delta_m(e, tasks, base)
            dm = "—" if e["delta_m_auc"] is None else f"{e['delta_m_auc']:+.3f}"
            vals = (
                [_pm(e.get(f"test.{t}.auc")) for t in tasks] + [dm] + [_pm(e.get(f"final_test.{t}.auc")) for t in tasks]
            )
            # A cell whose auc.json entry names no start commit (grids run before they were kept) is marked.
            lines.append(
                f"| {e['arch']} | {e['method']}{code_mark(e.get('code'))} | "
                + " | ".join(vals)
                + f" | {e['seeds']} | {e['ms_per_step']:.1f} | {e['wall_time_s']:.0f} |"
            )
        if any(code_mark(e.get("code")) for e in cells):
            lines += ["", CODE_NOTE]
        lines.append("")
    if args.notes:
        lines += Path(args.notes).read_text().rstrip("\n").splitlines()
    script_checks.write_results(args.out, record, lines, table_cells, args.allow_fewer_cells)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
