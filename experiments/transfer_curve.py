"""Transfer to a new task on a trained encoder vs from scratch (MultiMNIST, Multi-LeNet).

1. A *source* run trains Multi-LeNet on MultiMNIST's ``left`` digit only (``--source_steps``).
2. Three *target* runs learn the ``right`` digit (a task the source never saw; a new head) for
   ``--target_steps``, each with ``--seeds`` seeds trained together (``config.num_seeds``):
   ``scratch`` (fresh params), ``frozen`` (the source's shared encoder, ``init_from.part='shared'``,
   ``freeze=True``: only the new head trains) and ``fine_tuned`` (the same start, everything trains).
3. Test accuracy of ``right`` every ``--eval_every`` steps: the curves, their per-seed values, and
   the steps each variant needs to reach the accuracy levels in the table.

    python -m experiments.transfer_curve --data_dir ../shared/data --out results/transfer

``--dataset multi_fashion`` runs the same on MultiFashion (source and target on it);
``--target_dataset multi_fashion`` transfers a MultiMNIST encoder to MultiFashion's ``right``.
Writes ``<out>/<name>.json`` (curves, per seed, configs, provenance recorded at the start),
``<out>/<name>.md`` and ``<out>/<name>.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments import results_io
from experiments.configs import multimnist

VARIANTS = ("scratch", "frozen", "fine_tuned")
LEVELS = (0.5, 0.7, 0.8, 0.85)


def _config(
    dataset: str,
    data_dir: str,
    task: str,
    steps: int,
    eval_every: int,
    seeds: int,
    batch_size: int,
    validation_percent: int,
    init_from: dict | None = None,
):
    c = multimnist.get_config()
    c.dataset.name = dataset
    c.dataset.data_dir = data_dir
    c.tasks = {t: dict(label=t, weight=1.0) for t in task.split(",")}  # "left,right": a multi-task source
    c.num_steps = steps
    c.eval_every_steps = eval_every
    c.checkpoint_every_steps = steps
    c.log_every_steps = eval_every
    c.batch_size = batch_size
    c.num_seeds = seeds
    c.dataset.kwargs.validation_percent = validation_percent
    c.progress_bar = False
    if init_from:
        c.init_from = init_from
    return c


def _curve(workdir: Path, task: str, seeds: int) -> dict:
    """``{'step': [...], 'test': [[seed accuracies] per step], 'validation': [...]}`` from metrics.jsonl."""
    out = {"step": [], "test": [], "validation": []}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        per_seed = rec.get("seeds") or [rec]
        out["step"].append(rec["step"])
        for split in ("test", "validation"):
            out[split].append([float(r[split][task]["accuracy"]) for r in per_seed][:seeds])
    return out


def _steps_to(curve: dict, level: float) -> list:
    """Per seed: the first evaluated step whose test accuracy reaches ``level`` (None: never)."""
    acc = np.asarray(curve["test"])  # [evals, seeds]
    out = []
    for s in range(acc.shape[1]):
        hit = np.nonzero(acc[:, s] >= level)[0]
        out.append(int(curve["step"][hit[0]]) if hit.size else None)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default="", help="the folder holding mnist/ and fashion_mnist/ (or $JMTL_DATA_DIR)")
    p.add_argument("--dataset", default="multi_mnist")
    p.add_argument("--target_dataset", default="", help="default: --dataset")
    p.add_argument(
        "--source_task", default="left", help="the source run's task(s): 'left', or 'left,right' (multi-task)"
    )
    p.add_argument("--target_task", default="right")
    p.add_argument("--source_steps", type=int, default=300)
    p.add_argument("--target_steps", type=int, default=300)
    p.add_argument("--eval_every", type=int, default=25)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument(
        "--validation_percent",
        type=int,
        default=2,
        help="validation split size (%% of train); small keeps the frequent evaluations cheap",
    )
    p.add_argument("--variants", default=",".join(VARIANTS), help="which target runs, of " + ", ".join(VARIANTS))
    p.add_argument("--out", default="results/transfer")
    p.add_argument("--name", default="")
    p.add_argument("--workdir", default="", help="where the runs write (default: a temporary folder, removed)")
    args = p.parse_args(argv)

    from jmtl.training import loop  # after argument parsing: --help stays fast

    prov = results_io.provenance()  # commit, dirty flag and date at the START
    target_dataset = args.target_dataset or args.dataset
    name = args.name or f"{args.dataset}_{args.source_task.replace(',', '_')}_to_{target_dataset}_{args.target_task}"
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="jmtl_transfer_"))
    configs, curves, seconds = {}, {}, {}
    try:
        src_dir = root / "source"
        configs["source"] = _config(
            args.dataset,
            args.data_dir,
            args.source_task,
            args.source_steps,
            args.source_steps,
            1,
            args.batch_size,
            args.validation_percent,
        )
        t0 = time.time()
        loop.train(configs["source"], str(src_dir))
        seconds["source"] = time.time() - t0
        curves["source"] = _curve(src_dir, args.source_task.split(",")[0], 1)
        for variant in [v for v in VARIANTS if v in args.variants.split(",")]:
            init = None if variant == "scratch" else dict(path=str(src_dir), part="shared", freeze=variant == "frozen")
            configs[variant] = _config(
                target_dataset,
                args.data_dir,
                args.target_task,
                args.target_steps,
                args.eval_every,
                args.seeds,
                args.batch_size,
                args.validation_percent,
                init,
            )
            t0 = time.time()
            loop.train(configs[variant], str(root / variant))
            seconds[variant] = time.time() - t0
            curves[variant] = _curve(root / variant, args.target_task, args.seeds)
            print(
                f"{variant}: final test accuracy {np.mean(curves[variant]['test'][-1]):.4f} ({seconds[variant]:.0f} s)",
                flush=True,
            )
            _write(args, name, prov, configs, curves, seconds)  # after each variant: a cut-short run keeps its curves
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    return json.loads((Path(args.out) / f"{name}.json").read_text())


def _write(args, name: str, prov: dict, configs: dict, curves: dict, seconds: dict) -> None:
    done = [v for v in VARIANTS if v in curves]
    summary = {
        v: {
            "final_test_mean": float(np.mean(curves[v]["test"][-1])),
            "final_test_per_seed": curves[v]["test"][-1],
            "steps_to": {str(level): _steps_to(curves[v], level) for level in LEVELS},
        }
        for v in done
    }
    end = results_io.provenance(command=prov["command"])
    prov = {**prov, "date": end["date"], "load_average_end": end["load_average_end"]}
    result = {
        "name": name,
        "args": vars(args),
        "provenance": prov,
        "variants_done": done,
        "configs": {k: c.to_dict() for k, c in configs.items()},
        "seconds": seconds,
        "curves": curves,
        "summary": summary,
        "source_final_test": curves["source"]["test"][-1][0],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    _plot(result, out / f"{name}.png")
    (out / f"{name}.md").write_text(_markdown(result))
    results_io.index_figure(out / f"{name}.png", prov, data=f"{name}.json")
    print(f"wrote {out / name}.json / .md / .png ({', '.join(done)})", flush=True)


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for v, color in zip(VARIANTS, ("tab:gray", "tab:blue", "tab:orange")):
        if v not in result["curves"]:
            continue
        c = result["curves"][v]
        acc = np.asarray(c["test"]) * 100
        ax.plot(c["step"], acc.mean(1), color=color, label=f"{v} (mean of {acc.shape[1]} seeds)")
        ax.fill_between(c["step"], acc.min(1), acc.max(1), color=color, alpha=0.2)
    a = result["args"]
    ax.set(
        xlabel="training step (new task)",
        ylabel=f"test accuracy of '{a['target_task']}' (%)",
        title=f"{result['name']}: source {a['source_steps']} steps on '{a['source_task']}'",
        fontsize=8,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.text(
        0.01,
        0.01,
        f"commit {(result['provenance'].get('git_commit') or '?')[:10]}"
        f"{' (dirty)' if result['provenance'].get('git_dirty') else ''}, {result['provenance']['date']}",
        fontsize=6,
        color="gray",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _markdown(result: dict) -> str:
    a, s, done = result["args"], result["summary"], result["variants_done"]
    lines = [
        f"# Transfer to a new task: {result['name']}",
        "",
        f"Source: Multi-LeNet trained {a['source_steps']} steps (batch {a['batch_size']}) on `{a['source_task']}` of "
        f"{a['dataset']} (test accuracy of `{a['source_task'].split(',')[0]}`: {100 * result['source_final_test']:.2f}%). Target: "
        f"`{a['target_task']}` of {a['target_dataset'] or a['dataset']}, {a['target_steps']} steps, {a['seeds']} seeds "
        "each; `frozen` / `fine_tuned` start from the source's shared encoder (`init_from.part='shared'`) with a "
        "new head; `scratch` from fresh params. Test accuracy (%), mean over seeds [min, max]:",
        "",
        "| step | " + " | ".join(done) + " |",
        "|---:|" + "---:|" * len(done),
    ]
    steps = result["curves"][done[0]]["step"]
    for i, step in enumerate(steps):
        cells = []
        for v in done:
            acc = np.asarray(result["curves"][v]["test"][i]) * 100
            cells.append(f"{acc.mean():.2f} [{acc.min():.2f}, {acc.max():.2f}]")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Steps to reach a test accuracy (per seed; — = not within the run):",
        "",
        "| level | " + " | ".join(done) + " |",
        "|---:|" + "---:|" * len(done),
    ]
    for level in LEVELS:
        cells = [", ".join("—" if x is None else str(x) for x in s[v]["steps_to"][str(level)]) for v in done]
        lines.append(f"| {100 * level:.0f}% | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Wall time (s, this shared CPU): " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items()),
        "",
        f"![curve]({result['name']}.png)",
    ]
    lines += results_io.provenance_markdown(result["provenance"])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
