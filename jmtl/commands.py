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


def define_train_flags():
    """The ``--config`` and ``--workdir`` flags of a training command (absl flag holders)."""
    from jmtl.training import cli

    return cli.define_config_and_workdir(
        "Experiment config file (path[:arg]).", "Where outputs and checkpoints go (resumes if it has one)."
    )


def run_train(config, workdir, argv) -> None:
    """The body of a training command: the loop on the parsed flags, errors as one line."""
    del argv
    from absl import logging

    from jmtl.training import cli
    from jmtl.training.loop import train as train_loop

    logging.set_verbosity(logging.WARNING)  # orbax and tfds log every file operation at INFO
    with cli.one_line_errors():
        train_loop(config.value, workdir.value)


def train() -> None:
    """``jmtl-train``: train from an ml_collections config file (flags only; the loop is
    :func:`jmtl.training.loop.train`). A misspelt ``--config.`` field or a bad value prints one line
    and exits 2; SIGTERM / SIGINT save a checkpoint and exit 0 (a re-run resumes)."""
    from absl import app

    from jmtl.training import cli

    config, workdir = define_train_flags()
    app.run(lambda argv: run_train(config, workdir, argv), argv=sys.argv, flags_parser=cli.parse_flags)


__all__ = ["define_train_flags", "run_train", "schemes", "train"]
