r"""Ablation grid: weighting schemes × architectures × seeds, with single-task baselines, Δm% and MR.

    python -m experiments.ablate --config experiments/configs/multimnist.py --methods all \
        --archs hps --seeds 3 --workdir /tmp/abl --config.num_epochs=2

Flags only; the grid, its cells (each :func:`jmtl.training.loop.train`), the checks (unknown
methods / architectures, a grid trained under another config: refused before anything trains) and
the reports (``results.csv``, ``table.md``, ``plots/``) are :mod:`jmtl.drivers.ablation`.
``--seeds_per_program=P`` splits a cell's seeds into programs of P seeds; ``--report_only`` rebuilds
the reports from the finished cells.
"""

from __future__ import annotations

from absl import app, flags, logging

from jmtl.drivers import ablation
from jmtl.training import cli

_CONFIG, _WORKDIR = cli.define_config_and_workdir("Experiment config file (path[:arg]).", "The grid's folder.")
_METHODS = flags.DEFINE_string(
    "methods", "equal", "'all' or comma-separated weighting schemes; 'name@rep' runs it on the representation Jacobian."
)
_ARCHS = flags.DEFINE_string("archs", "hps", "Comma-separated architectures (config.model.arch values).")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per cell.")
_SEEDS_PER_PROGRAM = flags.DEFINE_integer(
    "seeds_per_program", 0, "Seeds trained together in one compiled program; 0 = all of a cell's seeds."
)
_SINGLE_TASK = flags.DEFINE_bool("single_task", True, "Train the single-task baselines (needed for Δm%).")
_JACOBIAN_MODE = flags.DEFINE_string("jacobian_mode", None, "params | representation (default: the config's).")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only rebuild results.csv, table.md and plots.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    with cli.one_line_errors():
        ablation.run(
            _CONFIG.value,
            _WORKDIR.value,
            ablation.parse_methods(_METHODS.value),
            ablation.parse_archs(_ARCHS.value),
            _SEEDS.value,
            single_task=_SINGLE_TASK.value,
            jacobian_mode=_JACOBIAN_MODE.value,
            report_only=_REPORT_ONLY.value,
            seeds_per_program=_SEEDS_PER_PROGRAM.value,
        )


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
