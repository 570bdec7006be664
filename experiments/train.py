r"""Train a multi-task model from an ml_collections config.

    python -m experiments.train --config experiments/configs/gradnorm_toy.py --workdir /tmp/toy
    python -m experiments.train --config experiments/configs/multimnist.py:mgda --workdir /tmp/mm \
        --config.dataset.data_dir=../shared/data --config.num_epochs=5

Writes to the workdir: ``config.json``, ``train_log.jsonl`` (losses and task weights every
``log_every_steps``), ``metrics.jsonl`` (one JSON object per evaluation, validation and test),
``summary.json`` (final and best-validation test metrics, wall time, steps/s), ``plots/*.png`` and orbax
checkpoints under ``checkpoints/``. Re-running with the same workdir resumes from the latest
checkpoint (data order included). SIGTERM / SIGINT finish the current step, save a checkpoint and
exit 0.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from experiments.configs.common import validate_config
from jmtl import data as data_lib
from jmtl import plotting, tasks as tasks_lib
from jmtl.training import builders, checkpoint, evaluate, parallel
from jmtl.training import seeds as seeds_lib
from jmtl.training import step as step_lib


_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (path[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where outputs and checkpoints go (resumes if it has one).")
flags.mark_flags_as_required(["config", "workdir"])


class NonFiniteLossError(FloatingPointError):
    pass


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (preemption-safe)."""

    def __init__(self):
        self.signal = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal is not None:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name


def train(config, workdir: str) -> tuple[dict, step_lib.TrainState]:
    """Runs (or resumes) the experiment; returns the summary and the final host train state."""
    validate_config(config)  # wrong types / ranges fail here, naming the field, before any work
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    parallel.maybe_initialize_distributed()
    pid, nproc = jax.process_index(), jax.process_count()
    is_main = pid == 0
    stop = _StopRequest()

    # ---- data, tasks, model, weighting, optimizer ------------------------------------------------
    dataset = data_lib.load(
        config.dataset.name,
        data_dir=config.dataset.data_dir or None,
        cache_dir=config.dataset.cache_dir or None,
        **dict(config.dataset.kwargs),
    )
    spec = dataset.spec
    tasks = tasks_lib.tasks_from_config(config.tasks.to_dict(), spec)
    names = [t.name for t in tasks]
    steps_per_epoch = dataset.steps_per_epoch(config.batch_size)
    total_steps = config.num_steps if config.num_steps > 0 else config.num_epochs * steps_per_epoch
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
    ckpt_every = config.checkpoint_every_steps if config.checkpoint_every_steps > 0 else eval_every

    model = builders.model(config, tasks)
    weighting = builders.weighting_from_config(config, tasks, steps_per_epoch)
    optimizer = builders.optimizer(config.optimizer, steps_per_epoch)
    step_cfg = builders.step_config(config, model, spec.input_key, spec.input_transform)

    if config.nonfinite.policy not in step_lib.NONFINITE_POLICIES:
        raise ValueError(
            f"unknown nonfinite.policy {config.nonfinite.policy!r}; valid: {', '.join(step_lib.NONFINITE_POLICIES)}"
        )
    driver = parallel.Driver(config.parallel)
    if config.batch_size % driver.num_devices:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {driver.num_devices} devices")
    # num_seeds > 1: seeds config.seed, config.seed + 1, ... train together in one program (a vmap
    # over a leading seed axis of the state; each seed has its own init, dropout and data order).
    num_seeds = config.num_seeds
    seeds = [config.seed + i for i in range(num_seeds)]
    make_step = lambda ax: step_lib.make_train_step(model, tasks, weighting, optimizer, step_cfg, axis_name=ax)
    make_eval = lambda ax: evaluate.make_eval_step(model, tasks, step_cfg, axis_name=ax)
    if num_seeds > 1:
        make_step, make_eval = seeds_lib.over_seeds(make_step, config.seeds_mode), seeds_lib.over_seeds_eval(make_eval)
    train_step = driver.compile_step(make_step)
    eval_step = driver.compile_eval(make_eval)

    example = np.zeros((1,) + tuple(spec.input_shape), np.float32)
    inits = [step_lib.init_state(model, weighting, optimizer, example, len(tasks), s) for s in seeds]
    host_state = jax.tree.map(np.asarray, inits[0]) if num_seeds == 1 else seeds_lib.stack(inits)
    signature = checkpoint.model_signature(host_state, names, config.weighting.name)

    # ---- resume ----------------------------------------------------------------------------------
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    iters = [dataset.train_iterator(config.batch_size, s, process_index=pid, process_count=nproc) for s in seeds]
    meta_split = builders.meta_split(config, weighting)
    if meta_split:
        # Bilevel schemes get a second batch each step for their upper-level (validation) losses.
        iters = [
            data_lib.WithMetaBatches(
                it,
                dataset.train_iterator(
                    config.batch_size, s + builders.META_SEED_OFFSET, split=meta_split, process_index=pid, process_count=nproc
                ),
                prefix=step_lib.META_PREFIX,
            )
            for it, s in zip(iters, seeds)
        ]
    train_iter = iters[0] if num_seeds == 1 else seeds_lib.StackedIterator(iters)
    bests = [{"score": -math.inf} for _ in seeds]  # best-validation record of each seed
    start_step, wall_before = 0, 0.0
    if ckpt.latest_step() is not None:
        host_state, meta = ckpt.restore(host_state, signature)
        train_iter.set_state(meta["data_iterator"])
        bests = meta["best"]
        wall_before = meta.get("wall_time", 0.0)
        start_step = int(np.max(host_state.step))  # every seed is at the same step
        _truncate_logs(workdir, start_step)
        if is_main:
            print(f"Resuming from step {start_step} of {total_steps} in {workdir}", flush=True)
    elif is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    state = driver.replicate(host_state)

    eval_arrays = {split: dataset.arrays(split) for split in ("validation", "test")}
    for split, arrays in eval_arrays.items():
        tasks_lib.check_labels(tasks, arrays, where=f"{config.dataset.name} {split} split")

    def run_eval(state) -> list[dict]:
        """``[{split: {task: {metric: value}}}]``, one entry per seed."""
        params = state.params
        results = {
            split: evaluate.evaluate(
                eval_step,
                params,
                arrays,
                tasks,
                shard_batch=driver.shard_batch,
                batch_size=config.eval_batch_size,
                num_devices=driver.num_devices,
                process_index=pid,
                process_count=nproc,
                unreplicate=driver.unreplicate,
            )
            for split, arrays in eval_arrays.items()
        }
        if num_seeds == 1:
            return [results]
        return [{split: results[split][i] for split in results} for i in range(num_seeds)]

    def save(state, step, wall):
        meta = {
            "signature": signature,
            "data_iterator": train_iter.get_state(),
            "best": bests,
            "wall_time": wall,
        }
        ckpt.save(step, driver.unreplicate(state) if config.parallel != "shard_map" else state, meta)

    # ---- the loop --------------------------------------------------------------------------------
    train_log = open(workdir / "train_log.jsonl", "a") if is_main else None
    metrics_log = open(workdir / "metrics.jsonl", "a") if is_main else None
    bar = tqdm(total=total_steps, initial=start_step, disable=not (is_main and config.progress_bar), unit="step")
    t0 = time.time()
    last_good_step = ckpt.latest_step()
    consecutive_skips, total_skips = 0, 0
    step = start_step
    first_batch_checked = False
    results = None
    pending = None

    def check_finite(at_step: int, metrics) -> None:
        nonlocal consecutive_skips, total_skips
        flags = driver.host_metrics({"finite": metrics["finite"], "losses_finite": metrics["losses_finite"]})
        if bool(np.all(flags["finite"])):
            consecutive_skips = 0
            return
        losses_ok = np.asarray(flags["losses_finite"]).reshape(-1, len(names)).all(axis=0)  # over seeds
        bad = [n for n, ok in zip(names, losses_ok) if not ok] or ["(the update)"]
        if num_seeds > 1:
            bad_seeds = [s for s, ok in zip(seeds, np.atleast_1d(flags["finite"])) if not ok]
            bad[-1] += f" (seed(s) {', '.join(map(str, bad_seeds))})"
        if config.nonfinite.policy == "raise":
            ckpt.wait()
            raise NonFiniteLossError(
                f"non-finite loss at step {at_step} in task(s) {', '.join(bad)}; the step was not applied. "
                + (
                    f"Last good checkpoint: {ckpt.directory}/{last_good_step} (step {last_good_step}). "
                    if last_good_step is not None
                    else "No checkpoint was written yet. "
                )
                +
                "Lower the learning rate, or set --config.nonfinite.policy=skip."
            )
        consecutive_skips += 1
        total_skips += 1
        if consecutive_skips >= config.nonfinite.max_consecutive_skips:
            ckpt.wait()
            raise NonFiniteLossError(
                f"{consecutive_skips} consecutive non-finite steps up to step {at_step} (task(s) {', '.join(bad)}); "
                f"last good checkpoint: step {last_good_step}"
            )
    while step < total_steps:
        batch = next(train_iter)
        if not first_batch_checked:
            tasks_lib.check_labels(tasks, batch, where=f"{config.dataset.name} train batch")
            first_batch_checked = True
        state, metrics = train_step(state, driver.shard_batch(batch))
        step += 1
        # Every step's finiteness is checked, one step late, so the host never waits for the step
        # it just dispatched. A non-finite step was not applied (the step keeps the old state).
        if pending is not None:
            check_finite(*pending)
        pending = (step, metrics)

        if step % config.log_every_steps == 0 or step == total_steps or step % eval_every == 0 or stop.signal:
            check_finite(*pending)
            pending = None
            m = driver.host_metrics(metrics)
            if is_main:
                # With several seeds the record holds the mean over seeds, and each seed's values.
                losses, weights = np.asarray(m["losses"]).reshape(-1, len(names)), np.asarray(m["weights"]).reshape(-1, len(names))
                rec = {
                    "step": step,
                    "losses": losses.mean(axis=0).tolist(),
                    "weights": [None if np.isnan(w) else float(w) for w in weights.mean(axis=0)],
                    "objective": float(np.mean(m["objective"])),
                    "grad_norm": float(np.mean(m["grad_norm"])),
                }
                if num_seeds > 1:
                    rec["losses_per_seed"] = losses.tolist()
                    rec["weights_per_seed"] = [[None if np.isnan(w) else float(w) for w in row] for row in weights]
                if "relation" in host_state.params:
                    relation = np.asarray(driver.unreplicate(state.params["relation"]))
                    rec["relation"] = (relation if num_seeds == 1 else relation[0]).tolist()
                train_log.write(json.dumps(rec) + "\n")
                bar.set_postfix({n: f"{l:.3g}" for n, l in zip(names, rec["losses"])})

        if step % eval_every == 0 or step == total_steps:
            results = run_eval(state)
            for i, res in enumerate(results):  # model selection on the validation split, per seed
                score = evaluate.selection_score(res["validation"], tasks)
                if score > bests[i]["score"]:
                    bests[i] = {"score": score, "step": step, "validation": res["validation"], "test": res["test"]}
            if is_main:
                rec = {"step": step, "epoch": step / steps_per_epoch, **_mean_over_seeds(results)}
                if num_seeds > 1:
                    rec["seeds"] = results
                metrics_log.write(json.dumps(rec) + "\n")
                metrics_log.flush()
                train_log.flush()
        if step % ckpt_every == 0 or step == total_steps or stop.signal:
            save(state, step, wall_before + time.time() - t0)
            last_good_step = step
        bar.update(1)
        if stop.signal:
            ckpt.close()
            bar.close()
            if is_main:
                print(
                    f"\nReceived {stop.signal}: saved a checkpoint at step {step}. Resume with the same command "
                    f"(--workdir {workdir}).",
                    flush=True,
                )
            return {"interrupted": True, "step": step}, driver.unreplicate(state)
    bar.close()
    ckpt.close()

    # ---- summary and plots -----------------------------------------------------------------------
    wall = wall_before + time.time() - t0
    final = results if results is not None else run_eval(state)
    summary = {
        "dataset": config.dataset.name,
        "weighting": config.weighting.name,
        "tasks": names,
        "steps": total_steps,
        "epochs": total_steps / steps_per_epoch,
        # One seed: its numbers. Several: the mean over seeds; each seed's numbers under "seeds".
        "final": _mean_over_seeds(final),
        "best_validation": bests[0] if num_seeds == 1 else {
            "test": _mean_over_seeds([b["test"] for b in bests]),
            "validation": _mean_over_seeds([b["validation"] for b in bests]),
            "step": [b["step"] for b in bests],
        },
        "seeds": [{"seed": s, "final": f, "best_validation": b} for s, f, b in zip(seeds, final, bests)],
        "wall_time_s": wall,
        "steps_per_s": (total_steps - start_step) / max(time.time() - t0, 1e-9),
        "wall_time_per_epoch_s": wall / (total_steps / steps_per_epoch),
        "skipped_nonfinite_steps": total_skips,
        "devices": driver.num_devices,
        "processes": nproc,
    }
    if is_main:
        train_log.close()
        metrics_log.close()
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
        plotting.plot_training(workdir, names)
        if "relation" in host_state.params:
            w = np.asarray(driver.unreplicate(state.params["relation"]))
            w = w if num_seeds == 1 else w[0]
            plotting.plot_relation_matrix(w, names, workdir / "plots" / "relation_matrix.png")
        print(_format_summary(summary), flush=True)
    return summary, driver.unreplicate(state)


def _mean_over_seeds(results: list):
    """Per-seed nested dicts of floats -> their mean (the dict itself for one seed)."""
    if len(results) == 1:
        return results[0]
    return jax.tree.map(lambda *xs: float(np.mean(xs)), *results)


def _truncate_logs(workdir: Path, step: int) -> None:
    """Drops log lines written after the checkpoint we resume from, so nothing is counted twice."""
    for name in ("train_log.jsonl", "metrics.jsonl"):
        path = workdir / name
        if path.exists():
            keep = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= step]
            path.write_text("".join(l + "\n" for l in keep))


def _format_summary(s: dict) -> str:
    lines = [f"done: {s['steps']} steps ({s['epochs']:.1f} epochs) in {s['wall_time_s']:.1f}s, {s['steps_per_s']:.1f} steps/s"]
    for label, res in (("final test", s["final"]["test"]), ("best-val test", s["best_validation"].get("test", {}))):
        parts = [f"{t}: " + ", ".join(f"{k}={v:.4f}" for k, v in m.items()) for t, m in res.items()]
        lines.append(f"{label}: " + " | ".join(parts))
    return "\n".join(lines)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax and tfds log every file operation at INFO
    train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
