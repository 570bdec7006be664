r"""The leaderboard: every weighting scheme × seeds × benchmarks, one protocol per benchmark.

    python -m experiments.leaderboard --plan --benchmarks school_s0,census1      # pilot + CPU-hour plan
    nice -n 5 python -m experiments.leaderboard --benchmarks school_s0,census1 --seeds 5 \
        --workdir /tmp/leaderboard                                                # train, resume, render
    python -m experiments.leaderboard --report_only --workdir /tmp/leaderboard    # render only

Flags only; the benchmarks are :mod:`experiments.configs.leaderboard`, the cells, protocol checks,
statistics (Student-t intervals over seeds with the percentile bootstrap beside them, paired
differences from equal weighting and their verdicts, ranks with ties, the computed "what the board
shows" sentences) and rendering are :mod:`jmtl.drivers.leaderboard`. Writes ``--out``.md/.json (default
``results/leaderboard``) with provenance, and ``--out``.png. A board with fewer finished entries than
the file it would replace is refused unless ``--allow_fewer_cells``. A cell whose last attempt ended
in an error is retried from scratch (the log says ``retried``; the attempt is kept under
``WORKDIR/<benchmark>/failed_attempts``). Every finished cell's record files are archived beside
``--out`` (``--archive``, default ``results/leaderboard_cells``) and restored from there into a new
``--workdir``, so a lost workdir costs only the unfinished cells.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from absl import app, flags, logging

from experiments import results_io, script_checks
from experiments.configs import leaderboard as benchmarks
from jmtl.drivers import leaderboard
from jmtl.training import cli

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/jmtl_leaderboard", "Folder of the cells (one subfolder per benchmark).")
_BENCHMARKS = flags.DEFINE_string("benchmarks", "all", "'all' or comma-separated benchmark names (see --plan).")
_METHODS = flags.DEFINE_string("methods", "all", "'all' or comma-separated weighting schemes (equal is always added).")
_SEEDS = flags.DEFINE_integer("seeds", 5, "Seeds per cell, trained together in one compiled program.")
_PLAN = flags.DEFINE_bool(
    "plan", False, "Run the pilots and print cells × seconds per cell and CPU hours; train nothing else."
)
_PILOT_STEPS = flags.DEFINE_integer("pilot_steps", 6, "Steps of each pilot cell (--plan).")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Render the board from the finished cells; train nothing.")
_STOP_AT = flags.DEFINE_string(
    "stop_at", "", "UTC time HH:MM after which no new cell starts (then the board is rendered)."
)
_OUT = flags.DEFINE_string("out", "results/leaderboard", "Output path without suffix (.md, .json, .png).")
_XLA_CACHE = flags.DEFINE_string(
    "xla_cache",
    "auto",
    "XLA's persistent compilation cache: 'auto' = <workdir>/xla_cache, '' = off, or a folder. A resumed "
    "cell then skips compiling its step and every cell of a benchmark shares the evaluation and init "
    "programs (results/bench/school_cell_cost.md; params bitwise identical). JAX_COMPILATION_CACHE_DIR wins.",
)
_ARCHIVE = flags.DEFINE_string(
    "archive",
    "auto",
    "Folder of the finished cells' records (protocol, config, summary, code, cost: kilobytes each), kept with the "
    "results so the board survives the loss of --workdir: its cells are restored into --workdir before anything "
    "runs and every finished cell is archived there. 'auto' = <out>_cells (results/leaderboard_cells), '' = off.",
)
_CARRY = flags.DEFINE_bool(
    "carry_over",
    True,
    "Keep the benchmarks of the board being replaced (--out's .json) that this run does not name, as rendered "
    "there and marked carried over; --nocarry_over drops them (then --allow_fewer_cells is needed).",
)
_ALLOW_FEWER = flags.DEFINE_bool(
    "allow_fewer_cells", False, "Let --out replace a board that holds entries this one lacks."
)


def _deadline(text: str) -> float | None:
    if not text:
        return None
    try:
        h, m = (int(x) for x in text.split(":"))
        now = _dt.datetime.now(_dt.timezone.utc)
        at = now.replace(hour=h, minute=m, second=0, microsecond=0)
    except ValueError:
        raise ValueError(f"--stop_at {text!r} is not a UTC time HH:MM. Fix: e.g. --stop_at=21:50") from None
    if at < now:
        at += _dt.timedelta(days=1)
    return at.timestamp()


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    with cli.one_line_errors():
        benchmarks.register_all()
        # Every option is checked here, before any pilot or cell trains.
        names = leaderboard.parse_benchmarks(_BENCHMARKS.value)
        methods = leaderboard.parse_methods(_METHODS.value)
        leaderboard.check_options(_SEEDS.value)
        script_checks.at_least("--pilot_steps", _PILOT_STEPS.value, 2)
        deadline = _deadline(_STOP_AT.value)
        out = script_checks.output_path("--out", _OUT.value, (".json", ".md", ".png"))
        workdir = Path(_WORKDIR.value)
        archive = None
        if _ARCHIVE.value:
            archive = out.with_name(out.name + "_cells") if _ARCHIVE.value == "auto" else Path(_ARCHIVE.value)
        started = results_io.started_now()
        if not _REPORT_ONLY.value:
            leaderboard.use_xla_cache(_XLA_CACHE.value, workdir)
        if _PLAN.value:
            if archive is not None:
                leaderboard.restore(archive, workdir, names)
            p = leaderboard.plan(
                workdir, [leaderboard.BENCHMARKS[n] for n in names], methods, _SEEDS.value, _PILOT_STEPS.value
            )
            for name, b in p["benchmarks"].items():
                todo = [r for r in b["cells"] if not r["done"]]
                print(
                    f"{name}: {len(b['cells'])} cells ({len(todo)} to run) × {b['budget_steps']} steps; "
                    f"{b['todo_s'] / 3600:.2f} CPU h to run, {b['done_s'] / 3600:.2f} done"
                )
                for k, v in b["pilots"].items():
                    if "cell_s" in v:
                        print(f"    {k}: {v['cell_s']:.0f} CPU s per cell (median of the finished cells)")
                        continue
                    print(
                        f"    pilot {k} ({v['method']}): {v['s_per_step']:.3f} CPU s/step, {v['fixed_s']:.0f} CPU s fixed"
                    )
            print(f"total: {p['todo_cpu_hours']:.2f} CPU hours to run, {p['done_cpu_hours']:.2f} done")
            (workdir / "plan.json").write_text(json.dumps(p, indent=2))
            return
        record = leaderboard.run(
            workdir,
            names,
            methods,
            _SEEDS.value,
            report_only=_REPORT_ONLY.value,
            deadline=deadline,
            on_cell_start=results_io.record_code_start,
            archive_dir=archive,
        )
        json_path, png = out.with_name(out.name + ".json"), out.with_name(out.name + ".png")
        if _CARRY.value and json_path.exists():
            carried = leaderboard.carry_over(record, json.loads(json_path.read_text()))
            if carried:
                print(f"carried over from {json_path}: {', '.join(carried)}")
        script_checks.check_cells(
            json_path, leaderboard.board_cells(record), leaderboard.board_cells, _ALLOW_FEWER.value
        )
        prov = results_io.provenance(started=started)
        leaderboard.plot(record, png)
        results_io.index_figure(png, prov, data=json_path.name)
        script_checks.write_results(out, record, leaderboard.markdown(record), leaderboard.board_cells, True, prov)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
