r"""Train a multi-task model from an ml_collections config (flags only; the loop is
:func:`jmtl.training.loop.train`; after ``pip install`` the same command is ``jmtl-train``).

    python -m experiments.train --config experiments/configs/gradnorm_toy.py --workdir /tmp/toy
    python -m experiments.train --config experiments/configs/multimnist.py:mgda --workdir /tmp/mm \
        --config.dataset.data_dir=../shared/data --config.num_epochs=5

Writes to the workdir: ``config.json``, ``train_log.jsonl`` (losses and task weights every
``log_every_steps``), ``metrics.jsonl`` (one JSON object per evaluation, validation and test),
``summary.json`` (final and best-validation test metrics, wall time, steps/s), ``plots/*.png`` and orbax
checkpoints under ``checkpoints/``. Re-running with the same workdir resumes from the latest
checkpoint (data order included). SIGTERM / SIGINT finish the current step, save a checkpoint and
exit 0. A misspelt ``--config.`` field or a bad value prints one line and exits 2; so does a field no
code reads set in the config file itself (``c.num_epoch = 1``; a field added on purpose is declared in
``c.extra_fields``) or a value of the wrong type there (``c.batch_size = "256"``).
"""

from absl import app

from jmtl import commands
from jmtl.training import cli

_CONFIG, _WORKDIR = commands.define_train_flags()


def main(argv):
    commands.run_train(_CONFIG, _WORKDIR, argv)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
