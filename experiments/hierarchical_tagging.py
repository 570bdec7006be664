r"""Hierarchical multi-task tagging (Søgaard & Goldberg 2016; Hashimoto et al. 2017) on CoNLL data.

One run trains ``config.variant`` with ``config.seed``; ``--variants`` / ``--seeds`` sweep them
one after the other in this process, appending each finished run to ``--results``.json (and
rewriting the .md table), so partial sweeps keep what they finished.

    python -m experiments.hierarchical_tagging --config experiments/configs/hierarchical_sg.py:hier \
        --workdir /tmp/sg --config.dataset.data_dir=../shared/data --config.num_epochs=3
    python -m experiments.hierarchical_tagging --config experiments/configs/hierarchical_sg.py \
        --workdir /tmp/sg --variants=single,top,hier --seeds=0,1,2 --results=results/hierarchical_sg

Per run, ``WORKDIR/VARIANT_seedS/metrics.jsonl`` gets one line per epoch (train loss, validation and
test scores, times). Scores are corpus-level: span F1 exactly as conlleval counts it for chunk /
NER, token accuracy for POS (a test-only tag, like CoNLL-2000's I-LST, is always an error). The
reported test scores are those of the epoch with the best validation score of
``config.select_on``.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging
from ml_collections import config_flags

from jmtl import metrics as metrics_lib
from jmtl.data import conll
from jmtl.models import crf, sequence
from jmtl.tasks import CRF_TAGGING, TAGGING, Task
from jmtl.training import builders, parallel
from jmtl.training import step as step_lib

_FLAGS: dict[str, Any] = {}


def define_flags() -> None:
    """The command-line flags, defined only when run as a script: ``experiments.train`` defines
    flags of the same names, and importing both modules (as the tests do) must not clash."""
    _FLAGS.update(
        config=config_flags.DEFINE_config_file("config", None, "Experiment config (path[:VARIANT[,WEIGHTING]])."),
        workdir=flags.DEFINE_string("workdir", None, "Per-run logs go to WORKDIR/VARIANT_seedS/."),
        variants=flags.DEFINE_list("variants", [], "Sweep these variants (default: config.variant); seeds outermost."),
        seeds=flags.DEFINE_list("seeds", [], "Sweep these seeds (default: config.seed)."),
        results=flags.DEFINE_string("results", "", "Path prefix: append runs to PREFIX.json, write the table to PREFIX.md."),
        title=flags.DEFINE_string("title", "", "Heading of the .md table."),
    )
    flags.mark_flags_as_required(["config", "workdir"])

LOADERS = {"conll2000": conll.load_conll2000, "conll2003": conll.load_conll2003}
_DATASETS: dict[str, conll.TaggingDataset] = {}


def load_dataset(config) -> conll.TaggingDataset:
    """The config's dataset, loaded once per process."""
    kwargs = dict(config.dataset.kwargs)
    kwargs["buckets"] = tuple(kwargs["buckets"])
    key = json.dumps([config.dataset.name, config.dataset.data_dir, config.dataset.cache_dir, kwargs], sort_keys=True)
    if key not in _DATASETS:
        _DATASETS[key] = LOADERS[config.dataset.name](
            data_dir=config.dataset.data_dir or None, cache_dir=config.dataset.cache_dir or None, **kwargs
        )
    return _DATASETS[key]


def make_optimizer(cfg, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam after global-norm clipping; the learning rate is multiplied by ``decay_rate`` every epoch."""
    lr = optax.exponential_decay(
        cfg.learning_rate, transition_steps=steps_per_epoch, decay_rate=cfg.decay_rate, staircase=True
    )
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), optax.adam(lr))


def evaluate(predict, params, ds: conll.TaggingDataset, split: str, tasks, batch_size: int) -> dict[str, dict]:
    """Corpus-level scores of every task on ``split``: accuracy, plus span P/R/F1 for span tasks."""
    n = ds.spec.split_sizes[split]
    preds: dict[str, list] = {t.name: [None] * n for t in tasks}
    lengths = ds.split(split).lengths
    for ids, batch in ds.eval_batches(split, batch_size):
        out = jax.device_get(predict(params, batch["inputs"]))
        for t in tasks:
            for row, i in enumerate(ids):
                preds[t.name][i] = ds.decode(t.name, out[t.name][row, : lengths[i]])
    scores = {}
    for t in tasks:
        gold = ds.gold(split, t.name)
        s = {"accuracy": metrics_lib.token_accuracy(gold, preds[t.name])}
        if t.name in ds.span_tasks:
            f = metrics_lib.span_f1(gold, preds[t.name])
            s.update(precision=f.precision, recall=f.recall, f1=f.f1)
        scores[t.name] = s
    return scores


def main_score(scores: dict, task: str) -> float:
    s = scores[task]
    return s.get("f1", s["accuracy"])


def train_run(config, workdir: Path) -> dict[str, Any]:
    """Trains one (variant, seed); returns its record (best-validation scores, times, settings)."""
    ds = load_dataset(config)
    depths = dict(config.variants[config.variant])
    if config.select_on not in depths:
        raise ValueError(f"variant {config.variant!r} has no task {config.select_on!r} (config.select_on)")
    crf_tasks = tuple(config.get("crf_tasks", ()))
    unknown_crf = sorted(set(crf_tasks) - set(depths))
    if unknown_crf:
        raise ValueError(f"config.crf_tasks {unknown_crf} are not tasks of variant {config.variant!r} ({', '.join(depths)})")
    tasks = tuple(
        Task(n, CRF_TAGGING if n in crf_tasks else TAGGING, len(ds.tag_vocabs[n])) for n in ds.task_names if n in depths
    )
    unknown = sorted(set(depths) - set(ds.task_names))
    if unknown:
        raise ValueError(f"{ds.name} has no task(s) {', '.join(unknown)}; its tasks: {', '.join(ds.task_names)}")
    steps_per_epoch = ds.steps_per_epoch(config.batch_size)
    model = sequence.build(
        tasks, depths, num_words=len(ds.word_vocab), num_chars=len(ds.char_vocab), **config.model.to_dict()
    )
    weighting = builders.weighting_from_config(config, tasks, steps_per_epoch)
    optimizer = make_optimizer(config.optimizer, steps_per_epoch)
    step_cfg = step_lib.StepConfig(
        input_key=ds.spec.input_key,
        jacobian_mode=config.weighting.jacobian_mode,
        jacobian_chunk_size=builders.jacobian_chunk_size(config.weighting.get("jacobian_chunk_size", -1)),
    )
    driver = parallel.Driver(config.parallel)
    if config.batch_size % driver.num_devices:
        raise ValueError(f"batch_size {config.batch_size} does not split over {driver.num_devices} devices")
    train_step = driver.compile_step(
        lambda ax: step_lib.make_train_step(model, tasks, weighting, optimizer, step_cfg, axis_name=ax)
    )

    # Bilevel schemes (auto_lambda, moml, forum) take a second batch each step, at the training
    # batch's length (see TaggingDataset.length_matched_batches).
    meta_split = builders.meta_split(config, weighting)
    meta_batch = (
        ds.length_matched_batches(meta_split, config.batch_size, config.seed + builders.META_SEED_OFFSET)
        if meta_split else None
    )

    @jax.jit
    def predict(params, inputs):
        outputs = model.apply({"params": params}, inputs, train=False)
        mask = inputs["words"] > 0
        return {
            name: (crf.viterbi(v, mask) if isinstance(v, crf.CRFOutput) else jnp.argmax(v, axis=-1)).astype(jnp.int32)
            for name, v in outputs.items()
        }

    host_state = step_lib.init_state(model, weighting, optimizer, ds.example_input(), len(tasks), config.seed)
    num_params = {k: int(sum(x.size for x in jax.tree.leaves(v))) for k, v in host_state.params.items()}
    state = driver.replicate(jax.tree.map(np.asarray, host_state))

    run_dir = workdir / f"{config.variant}_seed{config.seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(config.to_json_best_effort(indent=2))
    log = open(run_dir / "metrics.jsonl", "w")
    names = [t.name for t in tasks]
    best: dict[str, Any] = {"score": -math.inf}
    train_time = eval_time = 0.0
    t_start = time.time()
    epoch_times = []
    for epoch in range(config.num_epochs):
        t0 = time.time()
        loss_sum, drawn = np.zeros(len(tasks)), np.zeros(len(tasks))
        # Host metrics are fetched once per epoch (a device->host sync per step costs time).
        pending = []
        for k, batch in enumerate(ds.train_iterator(config.batch_size, config.seed, num_epochs=1, start_epoch=epoch)):
            if 0 < config.max_steps_per_epoch <= k:
                break
            inputs = {"inputs": batch["inputs"], **{n: batch[n] for n in names}}
            if meta_batch is not None:
                meta = meta_batch(batch["inputs"]["words"].shape[1])
                inputs.update({step_lib.META_PREFIX + key: v for key, v in meta.items() if key == "inputs" or key in names})
            state, m = train_step(state, driver.shard_batch(inputs))
            pending.append((m["losses"], m["weights"], m["finite"]))
        for losses, weights, finite in driver.host_metrics(pending):
            if not bool(finite):
                raise FloatingPointError(f"non-finite loss in epoch {epoch + 1}; lower the learning rate")
            loss_sum += np.asarray(losses)
            drawn += np.nan_to_num(np.asarray(weights))
        dt = time.time() - t0
        train_time += dt
        epoch_times.append(dt)

        t0 = time.time()
        params = driver.unreplicate(state.params) if config.parallel == "pmap" else state.params
        scores = {"validation": evaluate(predict, params, ds, "validation", tasks, config.eval_batch_size)}
        score = main_score(scores["validation"], config.select_on)
        # Test scores are only reported for the best-validation epoch, so only computed for it.
        if score > best["score"] or config.eval_test_every_epoch:
            scores["test"] = evaluate(predict, params, ds, "test", tasks, config.eval_batch_size)
        eval_time += time.time() - t0
        rec = {
            "epoch": epoch + 1,
            "train_loss": dict(zip(names, (loss_sum / len(pending)).tolist())),
            "task_weight_sum": dict(zip(names, drawn.tolist())),
            **scores,
            "train_time_s": dt,
        }
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if score > best["score"]:
            best = {"score": score, "epoch": epoch + 1, "validation": scores["validation"], "test": scores["test"]}
        summary = " | ".join(
            f"{n}: dev {100 * main_score(scores['validation'], n):.2f}"
            + (f" test {100 * main_score(scores['test'], n):.2f}" if "test" in scores else "")
            for n in names
        )
        print(f"[{config.variant} seed {config.seed}] epoch {epoch + 1}/{config.num_epochs} "
              f"({dt:.0f}s train) loss {np.round(loss_sum / len(pending), 3).tolist()} | {summary}", flush=True)
    log.close()
    return {
        "variant": config.variant,
        "depths": depths,
        "seed": config.seed,
        "weighting": config.weighting.name,
        "epochs": config.num_epochs,
        "steps": config.num_epochs * len(pending),
        "batch_size": config.batch_size,
        "best_epoch": best["epoch"],
        "validation": best["validation"],
        "test": best["test"],
        "final_validation": scores["validation"],
        "train_time_s": train_time,
        "eval_time_s": eval_time,
        "wall_time_s": time.time() - t_start,
        "epoch_time_s": float(np.median(epoch_times)),
        "first_epoch_time_s": epoch_times[0],  # includes compiling each bucket shape
        "num_params": num_params,
        "model": config.model.to_dict(),
        "crf_tasks": list(crf_tasks),
        "dataset": config.dataset.name,
    }


# ----------------------------------------------------------------------------- results table


def _mean_std(values: list[float]) -> str:
    v = 100 * np.asarray(values)
    if len(v) == 1:
        return f"{v[0]:.2f}"
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def results_table(records: list[dict], title: str = "") -> str:
    """Markdown: one row per (variant, weighting), mean ± sample std over seeds of the best-validation
    epoch's scores."""
    groups: dict[tuple, list] = {}
    for r in records:
        key = (r["dataset"], r["variant"], r["weighting"], json.dumps(r["depths"]), ",".join(r.get("crf_tasks", [])))
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
    for (dataset, variant, weighting, depths, crf_tasks), rs in groups.items():
        row = [variant + (f" (CRF: {crf_tasks})" if crf_tasks else ""), ", ".join(f"{k}@{v}" for k, v in json.loads(depths).items()), weighting,
               ",".join(str(r["seed"]) for r in rs), ",".join(sorted({str(r["epochs"]) for r in rs}))]
        for t in tasks:
            if t not in rs[0]["depths"]:
                row += ["–", "–"]
                continue
            key = "f1" if "f1" in rs[0]["test"][t] else "accuracy"
            row += [_mean_std([r["validation"][t][key] for r in rs]), _mean_std([r["test"][t][key] for r in rs])]
        row += [",".join(str(r["best_epoch"]) for r in rs),
                f"{np.mean([r['epoch_time_s'] for r in rs]):.0f}",
                f"{np.mean([r['wall_time_s'] for r in rs]) / 60:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def append_result(prefix: str, record: dict, title: str) -> None:
    path = Path(prefix + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(path.read_text()) if path.exists() else []
    records.append(record)
    path.write_text(json.dumps(records, indent=1))
    Path(prefix + ".table.md").write_text(results_table(records, title))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # tfds logs every file operation at INFO
    config = _FLAGS["config"].value
    if config.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.compilation_cache_dir))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    variants = _FLAGS["variants"].value or [config.variant]
    seeds = [int(s) for s in _FLAGS["seeds"].value] or [config.seed]
    workdir = Path(_FLAGS["workdir"].value)
    # Seeds outermost: a sweep cut short still has every variant for the seeds it finished.
    for seed in seeds:
        for variant in variants:
            run_config = config.copy_and_resolve_references()
            run_config.variant, run_config.seed = variant, seed
            record = train_run(run_config, workdir)
            print(json.dumps({k: record[k] for k in ("variant", "seed", "best_epoch", "validation", "test")}), flush=True)
            if _FLAGS["results"].value:
                append_result(_FLAGS["results"].value, record, _FLAGS["title"].value)


if __name__ == "__main__":
    define_flags()
    app.run(main)
