r"""Hierarchical multi-task tagging (Søgaard & Goldberg 2016; Hashimoto et al. 2017) through the
train loop (the library side of ``experiments/hierarchical_tagging.py``).

:func:`train_run` trains one (variant, seed) of a tagging config with :func:`jmtl.training.loop.run`:
the same optimizer builder (Adam, per-epoch decay, global-norm clipping: ``config.optimizer``),
non-finite policy, checkpoints (a rerun resumes), and metric records as every other experiment.
What is the taggers' own is the :class:`jmtl.training.loop.Experiment` built here:

* the data: :class:`TaggingIterator`, the bucketed variable-length batches of
  ``TaggingDataset.epoch_plan`` (epoch ``e`` shuffled from ``[seed, e]``), resumable, with the
  length-matched meta batch of bilevel schemes;
* the evaluation: :class:`TaggingEvaluator`, corpus-level scores (span F1 exactly as conlleval
  counts it for chunk / NER, token accuracy for POS) of the decoded predictions, selection on
  ``config.select_on``'s validation score; the test split is scored only when validation
  improves (``config.eval_test_every_epoch`` to score it every epoch);
* per-epoch records (``metrics.jsonl``: validation and test scores, mean train loss, task-weight
  sums, train time) and one printed line per epoch.

Sweep records (:func:`append_result`) are keyed by (variant, seed, config): a rerun replaces its
record instead of adding a duplicate, so the table never shows a spread over copies of one run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmtl import metrics as metrics_lib
from jmtl.data import conll
from jmtl.data import embeddings as embeddings_lib
from jmtl.metrics import summary as summary_lib
from jmtl.models import crf, sequence
from jmtl.runs import metric_writers
from jmtl.tasks import CRF_TAGGING, TAGGING, Task
from jmtl.training import builders, config_schema, loop, parallel
from jmtl.training import step as step_lib
from jmtl.training.cli import suggest

LOADERS = {"conll2000": conll.load_conll2000, "conll2003": conll.load_conll2003}
_DATASETS: dict[str, conll.TaggingDataset] = {}
RECORD = "record.json"  # a finished run's record, in its run folder


def load_dataset(config) -> conll.TaggingDataset:
    """The config's dataset, loaded once per process."""
    if config.dataset.name not in LOADERS:
        raise ValueError(
            f"unknown tagging dataset {config.dataset.name!r}{suggest(config.dataset.name, LOADERS)}; "
            f"valid: {', '.join(LOADERS)}"
        )
    kwargs = dict(config.dataset.kwargs)
    kwargs["buckets"] = tuple(kwargs["buckets"])
    key = json.dumps([config.dataset.name, config.dataset.data_dir, config.dataset.cache_dir, kwargs], sort_keys=True)
    if key not in _DATASETS:
        _DATASETS[key] = LOADERS[config.dataset.name](
            data_dir=config.dataset.data_dir or None, cache_dir=config.dataset.cache_dir or None, **kwargs
        )
    return _DATASETS[key]


# config.model fields that are not HierarchicalTagger attributes (the pretrained word vectors).
EMBEDDING_FIELDS = ("pretrained_embeddings", "embeddings_format", "freeze_embeddings")
_EMBEDDINGS: dict[tuple, embeddings_lib.Embeddings] = {}


def model_settings(config) -> dict:
    """``config.model`` as a dict; the embedding fields are left out while no file is given, so
    records and fingerprints of runs without pretrained vectors are what they were before them."""
    settings = config.model.to_dict()
    if not settings.get("pretrained_embeddings"):
        for key in EMBEDDING_FIELDS:
            settings.pop(key, None)
    return settings


def pretrained_words(config, ds: conll.TaggingDataset) -> Optional[tuple[np.ndarray, dict]]:
    """The initial word table from ``config.model.pretrained_embeddings`` and a summary for the
    record (file, format, dimension, coverage of the vocabulary and of the train tokens); None when
    no file is given. The file is read once per process (only the vocabulary's words are kept).

    Raises:
      ValueError: the file's dimension differs from ``config.model.word_dim`` (both named), or
        ``freeze_embeddings`` without a file.
      DataError: an unreadable file (see :func:`jmtl.data.embeddings.load_embeddings`).
    """
    path = config.model.get("pretrained_embeddings", "")
    if not path:
        if config.model.get("freeze_embeddings", False):
            raise ValueError(
                "config.model.freeze_embeddings=True needs a file: pass "
                "--config.model.pretrained_embeddings=/path/glove.6B.100d.txt (or freeze nothing)"
            )
        return None
    fmt = config.model.get("embeddings_format", "auto")
    tokens = ds.word_vocab.tokens
    # A rewritten file (or reinstalled package) is read again.
    key = (path, fmt, embeddings_lib.source_stamp(path), hash(tokens))
    if key not in _EMBEDDINGS:
        keep = set(tokens) | {conll.normalize_word(t) for t in tokens}
        _EMBEDDINGS[key] = embeddings_lib.load_embeddings(path, fmt, keep=keep)
    emb = _EMBEDDINGS[key]
    if emb.dim != config.model.word_dim:
        raise ValueError(
            f"{emb.path}: the vectors have dimension {emb.dim} but config.model.word_dim is "
            f"{config.model.word_dim}. Fix: --config.model.word_dim={emb.dim}, or a file of "
            f"dimension {config.model.word_dim}"
        )
    matrix, found, coverage = embeddings_lib.embedding_matrix(
        emb, tokens, seed=config.seed, pad_id=conll.PAD_ID, unk_id=conll.UNK_ID, token_counts=ds.word_counts("train")
    )
    summary = {
        "path": emb.path,
        "format": emb.format,
        "dim": emb.dim,
        "file_vectors": emb.num_lines,
        "duplicates": emb.duplicates,
        "frozen": bool(config.model.get("freeze_embeddings", False)),
        "found_words": int(found.sum()),
        "vocab_words": len(tokens) - 2,
        "coverage_types": coverage.types,
        "coverage_train_tokens": coverage.tokens,
        "found_by_normalized_key": coverage.normalized,
        "unk_from_file": coverage.unk_from_file,
    }
    return matrix, summary


def _freeze_word_table(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """Zero updates for the word table after ``optimizer``: with ``stop_gradient`` in the model its
    gradient is already 0, but weight decay (adamw) would still move it."""
    suffix = ["words", "embed", "embedding"]

    def zero(updates, params=None):
        del params
        return jax.tree_util.tree_map_with_path(
            lambda p, u: jnp.zeros_like(u) if [getattr(k, "key", None) for k in p][-3:] == suffix else u, updates
        )

    return optax.chain(optimizer, optax.stateless(zero))


def main_score(scores: dict, task: str) -> float:
    """Span F1 for span tasks, token accuracy otherwise."""
    s = scores[task]
    return s.get("f1", s["accuracy"])


# ----------------------------------------------------------------------------- data


class TaggingIterator:
    """Training batches of a :class:`conll.TaggingDataset`, epoch after epoch, resumable.

    Epoch ``e`` is ``ds.epoch_plan(batch_size, seed, e)`` (sentences shuffled within their length
    bucket, the batches shuffled), cut to ``steps_per_epoch`` batches. A batch holds ``inputs`` and
    the tasks' labels; with ``meta_split`` also a meta batch of that split at the batch's padded
    length (``ds.length_matched_batches``). State: ``{"epoch", "position"}``; restoring it replays
    the meta draws so the meta order continues exactly.
    """

    def __init__(
        self,
        ds: conll.TaggingDataset,
        batch_size: int,
        seed: int,
        task_names: Sequence[str],
        steps_per_epoch: int,
        meta_split: Optional[str] = None,
    ):
        self.ds, self.batch_size, self.seed = ds, batch_size, seed
        self.names, self.steps_per_epoch, self.meta_split = list(task_names), steps_per_epoch, meta_split
        self.epoch, self.position = 0, 0
        self._plans: dict[int, list] = {}
        self._reset_meta()

    def _reset_meta(self) -> None:
        self.meta = (
            self.ds.length_matched_batches(self.meta_split, self.batch_size, self.seed + builders.META_SEED_OFFSET)
            if self.meta_split
            else None
        )

    def _plan(self, epoch: int) -> list:
        if epoch not in self._plans:
            self._plans = {epoch: self.ds.epoch_plan(self.batch_size, self.seed, epoch)[: self.steps_per_epoch]}
        return self._plans[epoch]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        length, ids = self._plan(self.epoch)[self.position]
        self.position += 1
        batch = self.ds.make_batch("train", ids, self.batch_size, length)
        out = {"inputs": batch["inputs"], **{n: batch[n] for n in self.names}}
        if self.meta is not None:
            meta = self.meta(length)
            out.update({step_lib.META_PREFIX + k: v for k, v in meta.items() if k == "inputs" or k in self.names})
        return out

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def set_state(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != {"epoch", "position"}:
            raise ValueError(f"not a tagging data iterator state: {state!r}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._reset_meta()
        if self.meta is not None:  # the meta draws so far, in order (each length keeps its own cursor)
            for e in range(self.epoch + 1):
                for length, _ in self._plan(e)[: self.position if e == self.epoch else None]:
                    self.meta(length)


# ----------------------------------------------------------------------------- evaluation


class TaggingEvaluator:
    """Corpus-level scores of decoded predictions: ``{task: {accuracy[, precision, recall, f1]}}``."""

    def __init__(
        self,
        model,
        ds: conll.TaggingDataset,
        tasks: Sequence[Task],
        select_on: str,
        batch_size: int,
        driver: parallel.Driver,
    ):
        self.ds, self.tasks, self.select_on, self.batch_size, self.driver = ds, tasks, select_on, batch_size, driver

        @jax.jit
        def predict(params, inputs):
            outputs = model.apply({"params": params}, inputs, train=False)
            mask = inputs["words"] > 0
            return {
                name: (crf.viterbi(v, mask) if isinstance(v, crf.CRFOutput) else jnp.argmax(v, axis=-1)).astype(
                    jnp.int32
                )
                for name, v in outputs.items()
            }

        self.predict = predict

    def predictions(self, params, split: str) -> dict[str, list[list[str]]]:
        """Decoded tag strings of every sentence of ``split``, per task."""
        if self.driver.kind == "pmap":
            params = self.driver.unreplicate(params)
        n = self.ds.spec.split_sizes[split]
        preds: dict[str, list] = {t.name: [None] * n for t in self.tasks}
        lengths = self.ds.split(split).lengths
        for ids, batch in self.ds.eval_batches(split, self.batch_size):
            out = jax.device_get(self.predict(params, batch["inputs"]))
            for t in self.tasks:
                for row, i in enumerate(ids):
                    preds[t.name][i] = self.ds.decode(t.name, out[t.name][row, : lengths[i]])
        return preds

    def scores(self, preds: dict, split: str) -> dict[str, dict]:
        out = {}
        for t in self.tasks:
            gold = self.ds.gold(split, t.name)
            s = {"accuracy": metrics_lib.token_accuracy(gold, preds[t.name])}
            if t.name in self.ds.span_tasks:
                f = metrics_lib.span_f1(gold, preds[t.name])
                s.update(precision=f.precision, recall=f.recall, f1=f.f1)
            out[t.name] = s
        return out

    def __call__(self, params, splits):
        return [{split: self.scores(self.predictions(params, split), split) for split in splits}]

    def score(self, validation):
        return main_score(validation, self.select_on)


# ----------------------------------------------------------------------------- one run


def _layout(config, ds: conll.TaggingDataset) -> tuple[dict, tuple, tuple[Task, ...]]:
    """The variant's ``{task: depth}``, its CRF tasks and its :class:`Task` list (checked)."""
    if config.variant not in config.variants:
        raise ValueError(
            f"unknown variant {config.variant!r}{suggest(config.variant, list(config.variants))}; "
            f"valid: {', '.join(config.variants)}"
        )
    depths = dict(config.variants[config.variant])
    if config.select_on not in depths:
        raise ValueError(f"variant {config.variant!r} has no task {config.select_on!r} (config.select_on)")
    crf_tasks = tuple(config.get("crf_tasks", ()))
    unknown_crf = sorted(set(crf_tasks) - set(depths))
    if unknown_crf:
        raise ValueError(
            f"config.crf_tasks {unknown_crf} are not tasks of variant {config.variant!r} ({', '.join(depths)})"
        )
    unknown = sorted(set(depths) - set(ds.task_names))
    if unknown:
        raise ValueError(f"{ds.name} has no task(s) {', '.join(unknown)}; its tasks: {', '.join(ds.task_names)}")
    tasks = tuple(
        Task(n, CRF_TAGGING if n in crf_tasks else TAGGING, len(ds.tag_vocabs[n])) for n in ds.task_names if n in depths
    )
    return depths, crf_tasks, tasks


def build_experiment(
    config, ds: conll.TaggingDataset, on_eval: Optional[Callable[[dict], None]] = None
) -> tuple[loop.Experiment, dict, tuple]:
    """The loop's :class:`~jmtl.training.loop.Experiment` for ``config.variant``, its depths and CRF tasks."""
    depths, crf_tasks, tasks = _layout(config, ds)
    if config.num_seeds != 1:
        raise ValueError(
            "config.num_seeds must be 1 for the taggers (seeds' bucketed batches differ in length); "
            "sweep seeds with --seeds=0,1,2"
        )
    full_epoch = ds.steps_per_epoch(config.batch_size)
    cut = config.get("max_steps_per_epoch", 0)
    steps_per_epoch = min(full_epoch, cut) if cut > 0 else full_epoch
    model_kwargs = {k: v for k, v in config.model.to_dict().items() if k not in EMBEDDING_FIELDS}
    pretrained = pretrained_words(config, ds)
    if pretrained is not None:
        matrix, summary = pretrained
        print(
            f"[{config.variant} seed {config.seed}] pretrained word vectors {summary['path']} ({summary['format']}, "
            f"dim {summary['dim']}{', frozen' if summary['frozen'] else ''}): {summary['found_words']}/"
            f"{summary['vocab_words']} vocabulary words ({100 * summary['coverage_types']:.1f}%), "
            f"{100 * summary['coverage_train_tokens']:.1f}% of train tokens",
            flush=True,
        )
        model_kwargs.update(
            word_embedding_init=sequence.pretrained_init(matrix, summary["path"]),
            freeze_word_embeddings=summary["frozen"],
        )
    model = sequence.build(tasks, depths, num_words=len(ds.word_vocab), num_chars=len(ds.char_vocab), **model_kwargs)
    weighting = builders.weighting_from_config(config, tasks, steps_per_epoch)
    optimizer = builders.optimizer(config.optimizer, steps_per_epoch)
    if pretrained is not None and pretrained[1]["frozen"]:
        optimizer = _freeze_word_table(optimizer)
    step_cfg = step_lib.StepConfig(
        input_key=ds.spec.input_key,
        jacobian_mode=config.weighting.jacobian_mode,
        jacobian_chunk_size=builders.jacobian_chunk_size(config.weighting.jacobian_chunk_size),
    )
    # Bilevel schemes (auto_lambda, moml, forum) take a second batch each step, at the training
    # batch's length (see TaggingDataset.length_matched_batches).
    meta_split = builders.meta_split(config, weighting)
    if meta_split and config.weighting.get("meta_batch_size", 0) != 0:
        raise ValueError(
            "the tagging loop's meta batches match the training batch's sentence lengths, so "
            "config.weighting.meta_batch_size cannot change their size. Fix: --config.weighting.meta_batch_size=0"
        )
    names = [t.name for t in tasks]
    experiment = loop.Experiment(
        name=ds.name,
        tasks=tasks,
        model=model,
        weighting=weighting,
        optimizer=optimizer,
        step_config=step_cfg,
        example_input=ds.example_input(),
        steps_per_epoch=steps_per_epoch,
        train_iterator=lambda seed: TaggingIterator(ds, config.batch_size, seed, names, steps_per_epoch, meta_split),
        make_evaluator=lambda driver, axis: TaggingEvaluator(
            model, ds, tasks, config.select_on, config.eval_batch_size, driver
        ),
        test_every_eval=bool(config.get("eval_test_every_epoch", False)),
        interval_train_stats=True,
        on_eval=on_eval,
        plots=False,
    )
    return experiment, depths, crf_tasks


def _epoch_line(config, names: Sequence[str]) -> Callable[[dict], None]:
    def show(rec: dict) -> None:
        scores = " | ".join(
            f"{n}: dev {100 * main_score(rec['validation'], n):.2f}"
            + (f" test {100 * main_score(rec['test'], n):.2f}" if "test" in rec else "")
            for n in names
        )
        losses = np.round(list(rec["train_loss"].values()), 3).tolist()
        print(
            f"[{config.variant} seed {config.seed}] epoch {round(rec['epoch'])}/{config.num_epochs} "
            f"({rec['train_time_s']:.0f}s train) loss {losses} | {scores}",
            flush=True,
        )

    return show


def run_dir(workdir: str | Path, config) -> Path:
    return Path(workdir) / f"{config.variant}_seed{config.seed}"


def train_run(config, workdir: str | Path) -> dict[str, Any]:
    """Trains one (variant, seed) in ``WORKDIR/VARIANT_seedS`` (resuming it if interrupted; a
    finished run's record is returned as it is); returns its record (best-validation scores, times,
    settings)."""
    config_schema.validate_config(config)
    loop.check_workdir(workdir)
    ds = load_dataset(config)
    depths, _, tasks = _layout(config, ds)
    directory = run_dir(workdir, config)
    done = directory / RECORD
    if done.exists():
        record = json.loads(done.read_text())
        if record.get("config") == fingerprint(config):
            print(
                f"[{config.variant} seed {config.seed}] already finished in {directory}; its record is reused",
                flush=True,
            )
            return record
    experiment, depths, crf_tasks = build_experiment(config, ds, _epoch_line(config, [t.name for t in tasks]))
    summary, state = loop.run(experiment, config, directory)
    if summary.get("interrupted"):
        return summary
    evals = metric_writers.read_jsonl(directory / "metrics.jsonl")
    times = [r["train_time_s"] for r in evals]
    best = summary["best_validation"]
    spe = experiment.steps_per_epoch
    record = {
        "variant": config.variant,
        "depths": depths,
        "seed": config.seed,
        "weighting": config.weighting.name,
        "epochs": config.num_epochs,
        "steps": summary["steps"],
        "batch_size": config.batch_size,
        "best_epoch": int(round(best["step"] / spe)),
        "validation": best["validation"],
        "test": best["test"],
        "final_validation": summary["final"]["validation"],
        "train_time_s": float(sum(times)),
        "eval_time_s": summary["eval_time_s"],
        "wall_time_s": summary["wall_time_s"],
        "epoch_time_s": float(np.median(times)),
        "first_epoch_time_s": times[0],  # includes compiling each bucket shape
        "num_params": {k: int(sum(np.size(x) for x in jax.tree.leaves(v))) for k, v in state.params.items()},
        "model": model_settings(config),
        "crf_tasks": list(crf_tasks),
        "dataset": config.dataset.name,
        "config": fingerprint(config),
    }
    pretrained = pretrained_words(config, ds)
    if pretrained is not None:  # the key exists only with a file: other records stay as they were
        record["pretrained_embeddings"] = pretrained[1]
    done.write_text(json.dumps(record, indent=1))
    return record


# ----------------------------------------------------------------------------- sweeps and results


# Fields that do not change a run's numbers (where files are, how progress shows, output writers).
_NOT_RESULTS = ("compilation_cache_dir", "progress_bar", "writers", "variant", "seed", "checkpoint_every_minutes")
# Fields the tagging configs gained when they came to derive from config_schema.default_config()
# (experiments/configs/hierarchical_common.py); none is read by the taggers at its default.
_FROM_SCHEMA = ("seeds_mode", "tasks", "init_from", "optimizer.momentum", "optimizer.weight_decay")


def fingerprint(config) -> str:
    """A short id of everything in ``config`` that changes a run's numbers, except variant and seed."""
    import hashlib

    c = config_schema.as_dict(config)
    for key in _NOT_RESULTS:
        c.pop(key, None)
    defaults = config_schema.as_dict(config_schema.default_config())
    for dotted in _FROM_SCHEMA:  # at their defaults: records written before the fields existed keep their id
        *parents, leaf = dotted.split(".")
        node, default = c, defaults
        for part in parents:
            node, default = node.get(part, {}), default[part]
        if leaf in node and node[leaf] == default[leaf]:
            del node[leaf]
    if "model" in c and not c["model"].get("pretrained_embeddings"):
        for key in EMBEDDING_FIELDS:  # unset: the fingerprint of every earlier run stays valid
            c["model"].pop(key, None)
    c.get("dataset", {}).pop("data_dir", None)
    c.get("dataset", {}).pop("cache_dir", None)
    # Checking the raw files' checksums changes no number (a mismatch stops the run), and records
    # from before the field existed keep their id.
    c.get("dataset", {}).get("kwargs", {}).pop("verify_checksums", None)
    return hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()[:12]


def parse_variants(values: Sequence[str], config) -> list[str]:
    """``--variants`` checked against the config's variants (a typo lists the valid ones)."""
    unknown = [v for v in values if v not in config.variants]
    if unknown:
        raise ValueError(
            f"unknown variant(s) {unknown}{suggest(unknown[0], list(config.variants))}; "
            f"valid: {', '.join(config.variants)}"
        )
    return list(values) or [config.variant]


def parse_seeds(values: Sequence[str], default: int) -> list[int]:
    """``--seeds`` as non-negative ints, each once."""
    seeds = []
    for v in values:
        try:
            s = int(v)
        except ValueError:
            raise ValueError(f"--seeds: {v!r} is not an integer. Fix: e.g. --seeds=0,1,2") from None
        if s < 0:
            raise ValueError(f"--seeds: {s} is negative. Fix: e.g. --seeds=0,1,2")
        if s not in seeds:
            seeds.append(s)
    return seeds or [default]


def _key(record: dict) -> tuple:
    """(variant, seed, config): a record older than the ``config`` field stands for its settings."""
    config = record.get("config") or json.dumps(
        [record.get(k) for k in ("dataset", "depths", "weighting", "epochs", "batch_size", "model", "crf_tasks")],
        sort_keys=True,
    )
    return record["variant"], record["seed"], config


def _mean_std(values: list[float]) -> str:
    """Mean ± sample std (in %); one value has no spread to show."""
    return summary_lib.mean_sd_text(values, scale=100.0)


def results_table(records: list[dict], title: str = "") -> str:
    """Markdown: one row per (variant, weighting, config), mean ± sample std over seeds of the
    best-validation epoch's scores (one record per seed: see :func:`append_result`)."""
    groups: dict[tuple, list] = {}
    for r in records:
        key = (
            r["dataset"],
            r["variant"],
            r["weighting"],
            json.dumps(r["depths"]),
            ",".join(r.get("crf_tasks", [])),
            _key(r)[2],
        )
        groups.setdefault(key, []).append(r)
    tasks = []
    for r in records:
        for t in r["depths"]:
            if t not in tasks:
                tasks.append(t)
    head = ["variant", "depths", "weighting", "seeds", "epochs"]
    for t in tasks:
        kind = "F1" if "f1" in next(r for r in records if t in r["depths"])["test"][t] else "acc"
        head += [f"{t} {kind} dev", f"{t} {kind} test"]
    head += ["best epoch", "train s/epoch", "wall min/run"]
    lines = ([f"## {title}", ""] if title else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, variant, weighting, depths, crf_tasks, _), rs in groups.items():
        row = [
            variant + (f" (CRF: {crf_tasks})" if crf_tasks else ""),
            ", ".join(f"{k}@{v}" for k, v in json.loads(depths).items()),
            weighting,
            ",".join(str(r["seed"]) for r in rs),
            ",".join(sorted({str(r["epochs"]) for r in rs})),
        ]
        for t in tasks:
            if t not in rs[0]["depths"]:
                row += ["–", "–"]
                continue
            key = "f1" if "f1" in rs[0]["test"][t] else "accuracy"
            row += [_mean_std([r["validation"][t][key] for r in rs]), _mean_std([r["test"][t][key] for r in rs])]
        row += [
            ",".join(str(r["best_epoch"]) for r in rs),
            f"{np.mean([r['epoch_time_s'] for r in rs]):.0f}",
            f"{np.mean([r['wall_time_s'] for r in rs]) / 60:.1f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


# What results_table and the record key read of every record.
_RECORD_KEYS = (
    "variant",
    "seed",
    "dataset",
    "weighting",
    "depths",
    "validation",
    "test",
    "epochs",
    "best_epoch",
    "epoch_time_s",
    "wall_time_s",
)


def read_results(prefix: str) -> list[dict]:
    """The records of ``PREFIX.json`` ([] when absent); ``ValueError`` naming the file, what is wrong
    and the fix when it is not a list of run records. A sweep reads it before training, so a
    malformed file stops the sweep before the first run rather than after it."""
    path = Path(prefix + ".json")
    if not path.exists():
        return []
    fix = f"Fix: restore it (git checkout {path}), move it away, or pass another --results prefix; nothing was written"
    if path.is_dir():
        raise ValueError(f"--results: {path} is a folder, not a results file. {fix}")
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--results: {path} is not valid JSON ({type(e).__name__}: {e}). {fix}") from None
    if not isinstance(records, list):
        raise ValueError(f"--results: {path} holds a {type(records).__name__}, not a list of run records. {fix}")
    for i, r in enumerate(records):
        missing = [k for k in _RECORD_KEYS if not isinstance(r, dict) or k not in r]
        if missing:
            raise ValueError(f"--results: record {i} of {path} is not a run record (lacks {', '.join(missing)}). {fix}")
    return records


def append_result(prefix: str, record: dict, title: str) -> str:
    """Adds ``record`` to ``PREFIX.json`` (replacing the record of the same variant, seed and config:
    a rerun never leaves two copies of one run) and rewrites ``PREFIX.table.md``. Returns
    ``'added'`` or ``'replaced'``."""
    path = Path(prefix + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    records = read_results(prefix)
    kept = [r for r in records if _key(r) != _key(record)]
    action = "replaced" if len(kept) < len(records) else "added"
    kept.append(record)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(kept, indent=1))
    tmp.replace(path)  # a crash mid-write leaves the old file whole
    Path(prefix + ".table.md").write_text(results_table(kept, title))
    return action
