r"""Census-Income (KDD) comparison grid: single-task, shared-bottom, OMoE, MMoE, CGC, PLE × weighting
methods × seeds, each architecture at its own sizes (``experiments/configs/census_common.py``,
``ARCH_SETTINGS``), with the test ROC AUC of every task at each seed's best-validation evaluation.

    python -m experiments.census_grid --config experiments/configs/census_income_marital.py \
        --workdir workdirs/census_g1 --methods equal,pcgrad --seeds 3 \
        --config.dataset.data_dir=../shared/data --config.num_epochs=2 --out results/census/income_marital

``experiments/ablate.py`` runs one config for every architecture, so its architectures share
``model.arch_kwargs`` and the encoder; here each architecture gets its own (8 experts of 16 units
for the MoE models, a 128-unit shared bottom for hard sharing), and otherwise the grid is the
ablation's (:mod:`jmtl.drivers.ablation`: the same cells, programs, resumption, ``results.csv``,
``table.md`` and plots; the single-task baselines use the shared-bottom encoder). A rerun under
another config or other sizes in the same workdir is refused.

Every evaluation record carries each binary task's split-level ROC AUC (the loop's evaluator computes
it over the whole split, ``jmtl.metrics.split_level_metrics``). Model selection
is the loop's (mean validation accuracy over the tasks) unless ``--select_on=income`` picks each
seed's best evaluation by that task's validation AUC, as the paper selects on its main task.

Writes, besides the ablation's outputs in the workdir, ``auc.md`` / ``auc.json`` (mean ± sample std
over seeds of the test AUC per task, beside the best-validation step and the cost). ``--out``
copies the outputs (not the checkpoints) there with their provenance (``provenance.json``).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
import traceback
from pathlib import Path

from absl import app, flags, logging

from experiments import script_checks
from experiments.configs import census_common
from experiments.results_io import (
    CODE_NOTE,
    cell_code,
    code_mark,
    provenance,
    record_code_start,
    started_now,
    write_outputs,
)
from jmtl.drivers import ablation
from jmtl.metrics import summary as summary_lib
from jmtl.training import cli, config_schema, loop, parallel

_CONFIG, _WORKDIR = cli.define_config_and_workdir("A census config file (path[:method]).", "The grid's folder.")
_METHODS = flags.DEFINE_string("methods", "equal", "Comma-separated weighting schemes ('name@rep' allowed).")
_ARCHS = flags.DEFINE_string("archs", ",".join(census_common.ARCH_SETTINGS), "Comma-separated architectures.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per cell.")
_SEEDS_PER_PROGRAM = flags.DEFINE_integer("seeds_per_program", 0, "Seeds per compiled program; 0 = all of a cell's.")
_SINGLE_TASK = flags.DEFINE_bool("single_task", True, "Train the single-task baselines (needed for Δm%).")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only rebuild the reports from the finished cells.")
_OUT = flags.DEFINE_string("out", "", "Copy the reports (not the checkpoints) into this folder, with provenance.")
_ALLOW_FEWER = flags.DEFINE_bool(
    "allow_fewer_cells", False, "Let --out replace an auc.json that holds cells this grid lacks."
)
_SELECT_ON = flags.DEFINE_string(
    "select_on",
    "",
    "Pick each seed's best evaluation by this task's validation ROC AUC (the paper's main task, e.g. "
    "income); a cell without the task uses the mean AUC of its tasks. '' = the loop's mean validation accuracy.",
)


def cells_for(
    config, methods: list[str], archs: list[str], task_names: list[str], seeds: int, single_task: bool
) -> list[tuple[str, object]]:
    """``[(cell name, config)]``: the single-task baselines (shared-bottom encoder), then every
    (arch, method), each arch at its :data:`census_common.ARCH_SETTINGS` sizes."""
    cells = []
    if single_task:
        cells += ablation.grid(census_common.apply_arch(config, "hps"), [], [], task_names, seeds, True)
    for arch in archs:
        cells += ablation.grid(census_common.apply_arch(config, arch), methods, [arch], task_names, seeds, False)
    return cells


class SelectOnAUC:
    """The loop's evaluator (which already reports each binary task's split-level ROC AUC), with each
    seed's best evaluation picked by ``select_on``'s validation AUC, as the MMoE paper selects on its
    main task; a cell without that task (single-task marital) uses the mean AUC of its tasks."""

    def __init__(self, inner, tasks, select_on: str):
        self.inner, self.tasks, self.select_on = inner, tasks, select_on

    def __call__(self, params, splits):
        return self.inner(params, splits)

    def score(self, validation):
        if self.select_on in validation:
            return float(validation[self.select_on]["auc"])
        return float(sum(validation[t.name]["auc"] for t in self.tasks) / len(self.tasks))


def train(config, workdir, select_on: str = ""):
    """:func:`jmtl.training.loop.train`, with the selection of ``select_on`` when given (see
    :class:`SelectOnAUC`)."""
    config_schema.validate_config(config)
    loop.check_workdir(workdir)
    parallel.maybe_initialize_distributed()
    experiment = loop.build_experiment(config)
    if select_on:
        make = experiment.make_evaluator
        experiment.make_evaluator = lambda driver, axis: SelectOnAUC(make(driver, axis), experiment.tasks, select_on)
    return loop.run(experiment, config, workdir)


def run_programs(cells, workdir: Path, seeds_per_program: int = 0, select_on: str = "") -> dict[str, str]:
    """:func:`jmtl.drivers.ablation.run_grid` (same folders, skipping and error files) with
    :func:`train`; returns ``{cell: error}``."""
    errors = {}
    for name, rel, c in ablation.programs(cells, seeds_per_program):
        run_dir = workdir / "cells" / rel
        if (run_dir / "summary.json").exists() or name in errors:
            continue
        print(f"census grid: {rel}", flush=True)
        record_code_start(run_dir)  # the code this program starts (or resumes) with, before it trains
        try:
            summary, _ = train(c, str(run_dir), select_on)
        except (KeyboardInterrupt, SystemExit, OSError):  # OSError: disk / folders, as ablation.run_grid
            raise
        except Exception as e:  # noqa: BLE001  (a method that cannot run here is reported, not fatal)
            errors[name] = f"{type(e).__name__}: {e}"
            (workdir / "cells" / name).mkdir(parents=True, exist_ok=True)
            (workdir / "cells" / name / "error.txt").write_text(errors[name] + "\n\n" + traceback.format_exc())
            print(f"cell {name} failed: {errors[name][:300]}", flush=True)
        else:
            if summary.get("interrupted"):
                print(f"interrupted in {rel}; rerun the same command to resume.", flush=True)
                sys.exit(0)
            (workdir / "cells" / name / "error.txt").unlink(missing_ok=True)
    return errors


def grid_key(config, seeds: int, archs: list[str], select_on: str = "") -> dict:
    key = ablation.grid_key(config, seeds, None)
    if select_on:  # cells selected another way must not be mixed with these
        key["select_on"] = select_on
    key["arch_settings"] = {a: [list(f), dict(k)] for a, (f, k) in census_common.ARCH_SETTINGS.items() if a in archs}
    return key


def _mean_std(vals: list[float]) -> tuple[float, float]:
    # exact: correctly rounded (statistics.fmean / stdev), as the committed auc.json were computed.
    return summary_lib.mean_sd(vals, single=math.nan, drop_missing=True, exact=True)


def auc_summary(rows: list[dict], task_names: list[str]) -> list[dict]:
    """One entry per cell: mean and sample std over seeds of each task's test AUC (best-validation
    and final), the best-validation steps, ms/step and wall time."""
    out = []
    for cell in dict.fromkeys(r["cell"] for r in rows):
        rs = [r for r in rows if r["cell"] == cell and r.get("seed") not in (None, "")]
        err = next((r["error"] for r in rows if r["cell"] == cell and r.get("error")), "")
        e = {
            "cell": cell,
            "arch": cell.split("__")[0],
            "method": cell.split("__", 1)[1],
            "seeds": len(rs),
            "error": err,
        }
        for t in task_names:
            for prefix in ("test", "final_test", "validation"):
                key = f"{prefix}.{t}.auc"
                e[key] = _mean_std([_float(r.get(key)) for r in rs])
        e["best_step"] = [r.get("best_step") for r in rs]
        e["ms_per_step"] = _float(rs[0].get("ms_per_step")) if rs else math.nan
        e["wall_time_s"] = _float(rs[0].get("wall_time_s")) if rs else math.nan
        e["epochs"] = _float(rs[0].get("epochs")) if rs else math.nan
        out.append(e)
    return out


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _pm(ms: tuple[float, float]) -> str:
    return summary_lib.format_mean_sd(*ms, spec=".4f")


def auc_lines(summary: list[dict], task_names: list[str], title: str) -> list[str]:
    head = [
        "arch",
        "method",
        *[f"{t} test AUC" for t in task_names],
        *[f"{t} final AUC" for t in task_names],
        "seeds",
        "best-val step",
        "ms/step",
        "wall s",
    ]
    lines = [
        f"# {title}",
        "",
        "Test ROC AUC at each seed's best-validation evaluation (mean ± sample std over seeds); "
        "'final' = at the last step.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for e in summary:
        if e["error"] and not e["seeds"]:
            lines.append(
                f"| {e['arch']} | {e['method']} | "
                + " | ".join(["—"] * (2 * len(task_names)))
                + f" | 0 | {e['error'][:80]} | | |"
            )
            continue
        cells = [_pm(e[f"test.{t}.auc"]) for t in task_names] + [_pm(e[f"final_test.{t}.auc"]) for t in task_names]
        lines.append(
            f"| {e['arch']} | {e['method']}{code_mark(e.get('code'))} | "
            + " | ".join(cells)
            + f" | {e['seeds']} | {', '.join(str(s) for s in e['best_step'])} | {e['ms_per_step']:.1f}"
            + f" | {e['wall_time_s']:.0f} |"
        )
    if any(code_mark(e.get("code")) for e in summary):
        lines += ["", CODE_NOTE]
    return lines


def check_select_on(select_on: str, task_names: list[str]) -> None:
    """``--select_on`` must name a task: a typo would otherwise select every cell on the mean AUC and
    title the report 'selected on <typo>'."""
    if select_on:
        script_checks.choices("--select_on", [select_on], task_names, task_names[0] if task_names else "income")


def auc_cells(record) -> set[str]:
    """The cells of an ``auc.json`` (each cell once per seed it averaged)."""
    return {f"{e['cell']} seed {i}" for e in record["cells"] for i in range(int(e.get("seeds") or 0))}


def check_options(
    config,
    methods: list[str],
    archs: list[str],
    seeds: int,
    seeds_per_program: int = 0,
    select_on: str = "",
    out: str = "",
) -> tuple[list[str], list[str]]:
    """Every option, before any data is read or anything trains; returns the parsed methods and archs."""
    methods, archs = ablation.parse_methods(",".join(methods)), ablation.parse_archs(archs)
    unknown = [a for a in archs if a not in census_common.ARCH_SETTINGS]
    if unknown:
        raise ValueError(f"no census sizes for {unknown}; known: {', '.join(census_common.ARCH_SETTINGS)}")
    script_checks.at_least("--seeds", seeds, 1)
    script_checks.at_least("--seeds_per_program", seeds_per_program, 0)
    config_schema.validate_config(config)
    if len(config.tasks):  # the census configs name their tasks; else they are the dataset's labels
        check_select_on(select_on, list(config.tasks.keys()))
    ablation.check_out_folder(out)
    return methods, archs


def run(
    config,
    workdir: Path,
    methods: list[str],
    archs: list[str],
    seeds: int,
    *,
    single_task: bool = True,
    seeds_per_program: int = 0,
    report_only: bool = False,
    out: str = "",
    select_on: str = "",
    allow_fewer_cells: bool = False,
) -> list[dict]:
    started = started_now()
    methods, archs = check_options(config, methods, archs, seeds, seeds_per_program, select_on, out)
    key = grid_key(config, seeds, archs, select_on)
    if not report_only:
        ablation.check_grid(workdir, key)
    tasks = ablation.task_list(config)
    names = [t.name for t in tasks]
    check_select_on(select_on, names)
    cells = cells_for(config, methods, archs, names, seeds, single_task)
    if out:  # the planned grid against what --out holds, before anything trains
        planned = {f"{name} seed {i}" for name, _ in cells for i in range(seeds)}
        script_checks.check_cells(Path(out) / "auc.json", planned, auc_cells, allow_fewer_cells)
    workdir.mkdir(parents=True, exist_ok=True)
    with ablation.grid_lock(workdir):  # held to the end (reports, --out): a second run is refused at once
        if not report_only:
            ablation.write_grid_record(
                workdir, config, methods, archs, seeds, seeds_per_program, single_task, cells, key
            )
            run_programs(cells, workdir, seeds_per_program, select_on)
        title = f"{config.dataset.name} ({dict(config.dataset.kwargs).get('group')}): {len(methods)} method(s) × {len(archs)} arch(s) × {seeds} seed(s)"
        if select_on:
            title += f", selected on {select_on} validation AUC"
        ablation.report(cells, workdir, tasks, title)
        with open(workdir / "results.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        summary = auc_summary(rows, names)
        for e in summary:  # which code trained each cell, from its programs' start records
            e["code"] = cell_code(*ablation.program_dirs(workdir, e["cell"]))
        lines = auc_lines(summary, names, title)
        prov = provenance(started=started)
        write_outputs(workdir / "auc", {"title": title, "tasks": names, "cells": summary}, lines, prov)
        if out:
            dest = Path(out)
            script_checks.check_cells(dest / "auc.json", auc_cells({"cells": summary}), auc_cells, allow_fewer_cells)
            (dest / "plots").mkdir(parents=True, exist_ok=True)
            index = {}
            for rel in (
                "results.csv",
                "table.md",
                "grid.json",
                "auc.md",
                "auc.json",
                *[f"plots/{p.name}" for p in sorted((workdir / "plots").glob("*.png"))],
            ):
                if (workdir / rel).exists():
                    shutil.copyfile(workdir / rel, dest / rel)
                    if rel not in ("auc.md", "auc.json"):  # those carry their own provenance
                        index.setdefault(str(Path(rel).parent), {})[Path(rel).name] = prov
            for folder, entries in index.items():
                (dest / folder / "provenance.json").write_text(json.dumps(entries, indent=2) + "\n")
        return summary


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    with cli.one_line_errors():
        run(
            _CONFIG.value,
            Path(_WORKDIR.value),
            _METHODS.value.split(","),
            _ARCHS.value.split(","),
            _SEEDS.value,
            single_task=_SINGLE_TASK.value,
            seeds_per_program=_SEEDS_PER_PROGRAM.value,
            report_only=_REPORT_ONLY.value,
            out=_OUT.value,
            select_on=_SELECT_ON.value,
            allow_fewer_cells=_ALLOW_FEWER.value,
        )


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
