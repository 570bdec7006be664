"""Console commands installed with the package (``[project.scripts]`` in pyproject.toml).

``jmtl-train --config CONFIG.py --workdir DIR`` trains from a config file (the same as
``python -m experiments.train`` in a checkout); ``jmtl-schemes`` prints the weighting catalogue.
"""

from __future__ import annotations

import sys


def schemes() -> None:
    """``jmtl-schemes``: the registered weighting schemes as a markdown table."""
    from jmtl.weighting.catalogue import table

    print(table())


def train() -> None:
    """``jmtl-train``: train from an ml_collections config file (flags only; the loop is
    :func:`jmtl.training.loop.train`). A misspelt ``--config.`` field or a bad value prints one line
    and exits 2; SIGTERM / SIGINT save a checkpoint and exit 0 (a re-run resumes)."""
    from absl import app, logging

    from jmtl.training import cli
    from jmtl.training.loop import train as train_loop

    config, workdir = cli.define_config_and_workdir(
        "Experiment config file (path[:arg]).", "Where outputs and checkpoints go (resumes if it has one)."
    )

    def main(argv):
        del argv
        logging.set_verbosity(logging.WARNING)  # orbax and tfds log every file operation at INFO
        with cli.one_line_errors():
            train_loop(config.value, workdir.value)

    app.run(main, argv=sys.argv, flags_parser=cli.parse_flags)


__all__ = ["schemes", "train"]
