"""Soak test: does the real training loop's memory stay flat over a long run?

Trains the GradNorm toy (``experiments/configs/gradnorm_toy.py``, driver ``single``) for 20,000 steps
with ``experiments.train.train`` itself -- evaluation and an orbax checkpoint every 2,000 steps,
logging every 10 -- while a background thread samples the process RSS (``VmRSS`` of
``/proc/self/status``) and the number of open file descriptors several times a second. The step a
sample belongs to is the number of batches the loop has taken (the train iterator is wrapped by a
counter; nothing else in the loop changes). Reported: RSS after warm-up (steps 2,000-2,500, i.e.
after the first evaluation and checkpoint) vs the last 500 steps, growth in %, target < 5 %.

    python -m experiments.bench.soak [--steps 20000] [--workdir /tmp/jmtl_soak]

``--checkpoint_every 10`` isolates the memory of the checkpoint saves; ``--per_array_checkpoints`` saves
leaf by leaf as before ``checkpoint.pack_state`` (the comparison in results/bench/soak_checkpoints_*.md).

Writes results/bench/<name>.json, .md and <name>_rss.png (``--name``, default bench_soak). Not part of
the test suite (it takes minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from pathlib import Path

import jax
import numpy as np

from experiments.bench.common import RESULTS, index_figure, provenance, write_outputs
from experiments.bench.process_stats import open_fds, rss_mib
from experiments.configs import gradnorm_toy
from jmtl.data import pipeline
from jmtl.training.loop import train

TARGET_GROWTH_PCT = 5.0


class _StepCounter:
    """Wraps ``MTLDataset.train_iterator``: counts the batches the loop takes (= its current step)."""

    def __init__(self):
        self.batches = 0
        self._original = pipeline.MTLDataset.train_iterator

    def install(self):
        counter, original = self, self._original

        def train_iterator(dataset, *args, **kwargs):
            inner = original(dataset, *args, **kwargs)

            class Counting:
                def __next__(self):
                    batch = next(inner)
                    counter.batches += 1
                    return batch

                def __iter__(self):
                    return self

                def get_state(self):
                    return inner.get_state()

                def set_state(self, state):
                    inner.set_state(state)

            return Counting()

        pipeline.MTLDataset.train_iterator = train_iterator

    def uninstall(self):
        pipeline.MTLDataset.train_iterator = self._original


def soak(steps: int, workdir: Path, eval_every: int, interval_s: float, checkpoint_every: int | None = None) -> dict:
    config = gradnorm_toy.get_config()
    config.num_steps = steps
    config.eval_every_steps = eval_every
    config.checkpoint_every_steps = checkpoint_every or eval_every
    config.parallel = "single"
    config.progress_bar = False
    if workdir.exists():
        shutil.rmtree(workdir)  # a fresh run, not a resume

    counter = _StepCounter()
    samples = []  # (seconds since start, batches taken, RSS MiB, open fds)
    stop = threading.Event()
    t0 = time.time()

    def sample():
        while not stop.is_set():
            samples.append((time.time() - t0, counter.batches, rss_mib(), open_fds()))
            stop.wait(interval_s)

    counter.install()
    thread = threading.Thread(target=sample, daemon=True)
    rss_start = rss_mib()
    thread.start()
    try:
        summary, _ = train(config, str(workdir))
    finally:
        stop.set()
        thread.join()
        counter.uninstall()
    return {"summary": summary, "samples": samples, "rss_before_train_mib": rss_start, "rss_after_train_mib": rss_mib()}


def analyse(samples, steps: int, warm_step: int, every: int) -> dict:
    arr = np.array([(s, r, f) for _, s, r, f in samples], dtype=np.float64)
    step, rss, fds = arr[:, 0], arr[:, 1], arr[:, 2]
    # Batch k taken = steps 1..k-1 done (and step k-1's eval / checkpoint, if any). Samples taken once
    # the last batch is (final eval, summary, plots: matplotlib's import) are not the loop's.
    in_loop = (step > 0) & (step < steps)

    def window(lo, hi):
        sel = in_loop & (step > lo) & (step <= hi)
        if not sel.any():
            raise RuntimeError(f"no RSS sample between steps {lo} and {hi}; lower --interval")
        return rss[sel], fds[sel]

    warm_rss, warm_fds = window(warm_step, warm_step + every)
    end_rss, end_fds = window(steps - every, steps)
    warm, end = float(np.median(warm_rss)), float(np.median(end_rss))
    after = in_loop & (step > warm_step)
    slope, slope_ci = float("nan"), float("nan")
    if after.sum() > 2:
        x, y = step[after], rss[after]
        coef = np.polyfit(x, y, 1)
        resid = y - np.polyval(coef, x)
        # 95 % interval of the slope (ordinary least squares; the samples are autocorrelated, so this
        # is a lower bound on the real uncertainty).
        se = np.sqrt(resid.var(ddof=2) / ((x - x.mean()) ** 2).sum())
        slope, slope_ci = float(coef[0]) * 10_000, 1.96 * float(se) * 10_000
    per_mark = []
    for mark in range(every, steps + 1, every):  # the first sample once step `mark` is done
        sel = np.nonzero(in_loop & (step > mark))[0]
        idx = sel[0] if len(sel) else np.nonzero(in_loop)[0][-1]  # the last mark: the loop's last sample
        per_mark.append({"step": mark, "rss_mib": round(float(rss[idx]), 2), "open_fds": int(fds[idx])})
    return {
        "rss_warm_mib": round(warm, 2),
        "rss_end_mib": round(end, 2),
        "growth_pct": round(100 * (end - warm) / warm, 3),
        "rss_max_after_warm_mib": round(float(rss[after].max()), 2),
        "rss_slope_after_warm_mib_per_10k_steps": round(slope, 3),
        "rss_slope_ci95_mib_per_10k_steps": round(slope_ci, 3),
        "open_fds_warm": int(np.median(warm_fds)),
        "open_fds_end": int(np.median(end_fds)),
        "per_500_steps": per_mark,
    }


def plot(samples, analysis, steps: int, warm_step: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(s, r) for _, s, r, _ in samples if 0 < s < steps]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.8, color="0.6", label="RSS samples")
    marks = analysis["per_500_steps"]
    ax.plot([m["step"] for m in marks], [m["rss_mib"] for m in marks], "o-", ms=3, label="every 500 steps")
    ax.axvline(warm_step, ls=":", color="k", lw=0.8)
    ax.axhline(
        analysis["rss_warm_mib"] * (1 + TARGET_GROWTH_PCT / 100),
        ls="--",
        color="r",
        lw=0.8,
        label=f"warm-up RSS + {TARGET_GROWTH_PCT:g} %",
    )
    ax.set_xlabel("step")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(
        f"gradnorm_toy, {steps} steps: RSS {analysis['rss_warm_mib']:.0f} -> {analysis['rss_end_mib']:.0f} MiB "
        f"({analysis['growth_pct']:+.2f} %)"
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--eval_every", type=int, default=2_000, help="evaluation and checkpoint period")
    parser.add_argument("--warm_step", type=int, default=2_000, help="RSS reference: the 500 steps after this one")
    parser.add_argument("--every", type=int, default=500, help="report RSS every this many steps")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between RSS samples")
    parser.add_argument(
        "--checkpoint_every",
        type=int,
        default=0,
        help="checkpoint period (0: with each evaluation); a short one isolates the saves' memory",
    )
    parser.add_argument("--workdir", default="/tmp/jmtl_soak")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--name", default="bench_soak", help="output file name, without suffix")
    parser.add_argument(
        "--no_heap_trim",
        action="store_true",
        help="no malloc_trim after each save (checkpoint.TRIM_HEAP_AFTER_SAVE = False), to measure it",
    )
    parser.add_argument(
        "--no_spec_json_fix",
        action="store_true",
        help="let orbax call tensorstore's leaking KvStore.Spec.to_json (checkpoint.AVOID_SPEC_JSON_LEAK = "
        "False), to measure the fix",
    )
    parser.add_argument(
        "--per_array_checkpoints",
        action="store_true",
        help="save the state leaf by leaf, as before checkpoint.pack_state (the 'before' of the "
        "memory-per-save comparison)",
    )
    args = parser.parse_args(argv)
    from jmtl.runs import checkpoint

    checkpoint.Checkpointer.PACK = not args.per_array_checkpoints
    checkpoint.TRIM_HEAP_AFTER_SAVE = not args.no_heap_trim
    checkpoint.AVOID_SPEC_JSON_LEAK = not args.no_spec_json_fix
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance()  # the commit and dirty flag of the code that runs, recorded at the start
    ckpt_every = args.checkpoint_every or args.eval_every

    run = soak(args.steps, Path(args.workdir), args.eval_every, args.interval, ckpt_every)
    analysis = analyse(run["samples"], args.steps, args.warm_step, args.every)
    summary = run["summary"]
    loop_s = max(t for t, s, _, _ in run["samples"] if s < args.steps)
    record = {
        "config": "experiments/configs/gradnorm_toy.py",
        "driver": "single",
        "steps": args.steps,
        "checkpoint_layout": "packed" if checkpoint.Checkpointer.PACK else "per_array",
        "heap_trim_after_save": checkpoint.TRIM_HEAP_AFTER_SAVE,
        "avoid_spec_json_leak": checkpoint.AVOID_SPEC_JSON_LEAK,
        "eval_every": args.eval_every,
        "checkpoint_every": ckpt_every,
        "checkpoints_saved": args.steps // ckpt_every,
        # Per save only when saves dominate the run (a period of <= 100 steps); else not meaningful.
        "rss_slope_per_checkpoint_kib": (
            round(analysis["rss_slope_after_warm_mib_per_10k_steps"] * 1024 * ckpt_every / 10_000, 2)
            if ckpt_every <= 100
            else None
        ),
        "rss_slope_per_checkpoint_ci95_kib": (
            round(analysis["rss_slope_ci95_mib_per_10k_steps"] * 1024 * ckpt_every / 10_000, 2)
            if ckpt_every <= 100
            else None
        ),
        "log_every_steps": 10,
        "warm_step": args.warm_step,
        "target_growth_pct": TARGET_GROWTH_PCT,
        "passed": analysis["growth_pct"] < TARGET_GROWTH_PCT,
        **analysis,
        "rss_before_train_mib": round(run["rss_before_train_mib"], 2),
        "rss_after_train_mib": round(run["rss_after_train_mib"], 2),
        "steps_per_s": round(summary["steps_per_s"], 1),
        "wall_time_s": round(summary["wall_time_s"], 1),
        "loop_seconds_sampled": round(loop_s, 1),
        "num_samples": len(run["samples"]),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "cpus": os.cpu_count(),
    }
    end = provenance()
    prov.update(date=end["date"], load_average_end=end["load_average_end"])
    record["load_average_end"] = prov["load_average_end"]
    plot(run["samples"], analysis, args.steps, args.warm_step, out / f"{args.name}_rss.png")
    index_figure(out / f"{args.name}_rss.png", prov, data=f"{args.name}.json")

    rows = "\n".join(f"| {m['step']} | {m['rss_mib']:.1f} | {m['open_fds']} |" for m in analysis["per_500_steps"])
    verdict = "PASS" if record["passed"] else "FAIL"
    per_save = (
        f" ({record['rss_slope_per_checkpoint_kib']:+.1f} ± {record['rss_slope_per_checkpoint_ci95_kib']:.1f} KiB "
        "per checkpoint save, 95 % OLS interval)"
        if record["rss_slope_per_checkpoint_kib"] is not None
        else ""
    )
    report = f"""# Soak: RSS of the training loop over {args.steps:,} steps

`{prov["command"]}` — `experiments.train.train` on the GradNorm toy
(`gradnorm_toy.py`, equal weighting, driver `single`, batch 100), evaluation every {args.eval_every:,} steps,
orbax checkpoint every {ckpt_every:,} steps ({args.steps // ckpt_every} saves, {record["checkpoint_layout"].replace("_", "-")}
layout; tensorstore's leaking `KvStore.Spec.to_json` {"avoided" if record["avoid_spec_json_leak"] else "called, as orbax does"}; heap trim after each save {"on" if record["heap_trim_after_save"] else "off"}), train log every 10 steps. A background thread reads `VmRSS` from
`/proc/self/status` every {args.interval:g} s ({len(run["samples"])} samples); a sample's step is the
number of batches the loop has taken. jax {jax.__version__} on {jax.default_backend()} ({os.cpu_count()} cores,
shared; load average at the end {", ".join(f"{x:.1f}" for x in record["load_average_end"])}).

| | value |
|---|---:|
| RSS after warm-up (median, steps {args.warm_step:,}-{args.warm_step + args.every:,}) | {analysis["rss_warm_mib"]:.1f} MiB |
| RSS at the end (median, last {args.every} steps) | {analysis["rss_end_mib"]:.1f} MiB |
| growth | **{analysis["growth_pct"]:+.2f} %** (target < {TARGET_GROWTH_PCT:g} %: {verdict}) |
| max RSS after warm-up | {analysis["rss_max_after_warm_mib"]:.1f} MiB |
| linear trend after warm-up | {analysis["rss_slope_after_warm_mib_per_10k_steps"]:+.2f} ± {analysis["rss_slope_ci95_mib_per_10k_steps"]:.2f} MiB / 10k steps{per_save} |
| open file descriptors, warm-up -> end | {analysis["open_fds_warm"]} -> {analysis["open_fds_end"]} |
| RSS before `train()` (imports only) / after it returned (final eval, summary, plots) | {run["rss_before_train_mib"]:.1f} / {run["rss_after_train_mib"]:.1f} MiB |
| throughput | {summary["steps_per_s"]:.0f} steps/s ({summary["wall_time_s"]:.0f} s wall, evals and checkpoints included) |

![RSS over steps]({args.name}_rss.png)

RSS after each {args.every} steps (first sample once the step is done; the last row: the loop's last
sample, before the final evaluation, summary and plots):

| step | RSS MiB | open fds |
|---:|---:|---:|
{rows}"""
    write_outputs(out / args.name, record, report.splitlines(), prov, echo=False)
    print(json.dumps({k: v for k, v in record.items() if k != "per_500_steps"}, indent=2))


if __name__ == "__main__":
    main()
