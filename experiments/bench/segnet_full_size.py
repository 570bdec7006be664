"""SegNet on NYUv2 shapes (288x384, batch 2, 3 pixel tasks): step time and peak memory of jmtl's
weighting schemes beside the same step in plain PyTorch, in one interleaved run.

Rows (Adam, lr 1e-4, generated NYUv2-shaped data: ``experiments.bench.vision_common``):

* jmtl equal weighting (loss level: one backward pass of the sum);
* jmtl MGDA-UB (``jacobian_mode='representation'``: per-task gradients of SegNet's 64-channel output
  map, one weighted backward pass through the encoder);
* jmtl PCGrad, Nash-MTL, UPGrad (parameter-level per-task gradients of the ~25M shared params; the
  factored path: one backward through the heads, then one per task through the encoder, in chunks
  of ``--chunk`` rows);
* jmtl FAMO (loss level);
* PyTorch (a): forward, sum of the losses, one backward, Adam (the yardstick for equal weighting);
* PyTorch (b): forward, K = 3 backward passes collecting the shared params' gradient rows, Adam on
  their sum (LibMTL's way; "the time of K backward passes" for the parameter-level methods).

Timing: shuffled round-robin (:func:`experiments.bench.common.time_round_robin`), medians, and
per-round paired ratios. Peak memory: XLA's memory analysis of each compiled jmtl step (arguments
+ temporaries + outputs not aliased to arguments); PyTorch's is not measured.

    python -m experiments.bench.segnet_full_size [--height 288 --width 384 --batch 2 --repeats 3]
    # -> results/bench/segnet_full_size.{json,md}
"""

from __future__ import annotations

import argparse
import os
import time

from experiments.bench import vision_common as vc
from experiments.bench.common import (
    RESULTS,
    _git,
    fmt,
    output_path,
    provenance,
    spread,
    started_now,
    time_round_robin,
    write_outputs,
)

ROWS = (
    # label, method, jacobian mode
    ("jmtl equal", "equal", "params"),
    ("jmtl MGDA-UB (representation)", "mgda", "representation"),
    ("jmtl PCGrad", "pcgrad", "params"),
    ("jmtl Nash-MTL", "nash_mtl", "params"),
    ("jmtl FAMO", "famo", "params"),
    ("jmtl UPGrad", "upgrad", "params"),
)
PARAM_LEVEL = ("jmtl PCGrad", "jmtl Nash-MTL", "jmtl UPGrad")
TORCH_A = "PyTorch (a) equal: sum, 1 backward"
TORCH_B = "PyTorch (b) K backward passes"


def torch_timers(batch: dict, threads: int):
    """The two PyTorch steps as zero-argument callables, and the torch model's param count."""
    import torch

    from experiments.bench import torch_segnet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tb = torch_segnet.to_torch(batch)
    models = {k: torch_segnet.SegNetSplit() for k in ("a", "b")}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}
    fns = {
        TORCH_A: lambda: torch_segnet.equal_step(models["a"], opts["a"], tb),
        TORCH_B: lambda: torch_segnet.k_backward_step(models["b"], opts["b"], tb),
    }
    return fns, torch_segnet.count_params(models["a"]), torch.__version__


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=-1, help="jacobian_chunk_size (-1: the backend's default)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="PyTorch threads (default: all cores)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke: 32x32, SegNet widths 4-8, one round, no torch")
    parser.add_argument(
        "--rows",
        default="",
        help="comma-separated jmtl rows to run (method names: equal,mgda,pcgrad,nash_mtl,famo,upgrad; default all)",
    )
    parser.add_argument("--out", default=None, help="output path without suffix (default: the committed results file)")
    args = parser.parse_args(argv)
    args.out = output_path(parser, args, RESULTS / "segnet_full_size")
    filters = None
    if args.tiny:
        args.height, args.width, args.repeats, args.warmup, args.no_torch = 32, 32, 1, 0, True
        filters = vc.TINY_FILTERS
    started = started_now()
    config = vars(args).copy()
    # provenance() reads git when the file is written (after a long run): keep the commit it started at.
    status = _git("status", "--porcelain", "--untracked-files=no")
    start_git = {
        "git_commit_start": _git("rev-parse", "HEAD"),
        "git_dirty_start": None if status is None else bool(status),
    }

    import jax

    from jmtl.models import vision

    wanted = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(wanted) - {m for _, m, _ in ROWS})
    if unknown:
        parser.error(f"unknown --rows {unknown}; valid: {', '.join(m for _, m, _ in ROWS)}")
    rows_run = [r for r in ROWS if not wanted or r[1] in wanted]
    if not any(r[0] == "jmtl equal" for r in rows_run):
        parser.error("--rows must include equal (the memory ratios are taken against it)")
    batch = vc.make_batch(args.batch, args.height, args.width)
    fns, infos = {}, {}
    for label, method, mode in rows_run:
        t0 = time.perf_counter()
        fns[label], infos[label] = vc.jmtl_step(method, batch, mode=mode, chunk=args.chunk, filters=filters)
        print(
            f"{label}: compiled in {infos[label]['compile_s']:.0f} s ({infos[label]['gradient_path']}, "
            f"chunk {infos[label]['chunk_size']}), {time.perf_counter() - t0:.0f} s with init",
            flush=True,
        )
    tasks, task_note = vc.pixel_tasks()
    model = vc.segnet_model(tasks, filters=filters)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jax.numpy.zeros((1, 64, 64, 3))))["params"]
    jmtl_params = vision.count_params(params)
    shared_params = vision.count_params(params["shared"])
    torch_params = torch_version = None
    if not args.no_torch:
        tfns, torch_params, torch_version = torch_timers(batch, args.threads)
        fns.update(tfns)

    samples = time_round_robin(fns, args.repeats, warmup=args.warmup)
    rows = {
        name: {
            **spread(s),
            **(
                {k: infos[name][k] for k in ("gradient_path", "chunk_size", "compile_s", "memory_mib")}
                if name in infos
                else {}
            ),
        }
        for name, s in samples.items()
    }

    def paired(a: str, b: str):
        if a not in samples or b not in samples:
            return None
        import numpy as np

        return float(np.median([x / y for x, y in zip(samples[a], samples[b])]))

    eq_mem = (rows["jmtl equal"].get("memory_mib") or {}).get("peak_mib")
    for name, r in rows.items():
        r["vs_torch_equal"] = paired(name, TORCH_A)
        r["vs_torch_k_backward"] = paired(name, TORCH_B)
        r["vs_jmtl_equal"] = paired(name, "jmtl equal")
        mem = (r.get("memory_mib") or {}).get("peak_mib")
        r["memory_vs_equal"] = mem / eq_mem if mem and eq_mem else None

    goals = {
        "equal <= 1.0x PyTorch (a)": rows["jmtl equal"]["vs_torch_equal"],
        **{
            f"{n} <= 1.25x PyTorch (b) (K backward passes)": rows[n]["vs_torch_k_backward"]
            for n in PARAM_LEVEL
            if n in rows
        },
        **{f"{n} peak memory <= 2x equal's": rows[n]["memory_vs_equal"] for n in PARAM_LEVEL if n in rows},
    }
    limits = {k: (1.0 if k.startswith("equal") else 1.25 if "K backward" in k else 2.0) for k in goals}
    met = {k: (None if v is None else bool(v <= limits[k])) for k, v in goals.items()}

    result = {
        "config": config,
        "tasks": task_note,
        "params": {"jmtl_total": jmtl_params, "jmtl_shared": shared_params, "torch_total": torch_params},
        "torch": torch_version,
        "torch_threads": None if args.no_torch else args.threads,
        "rows": rows,
        "goals": {k: {"value": goals[k], "limit": limits[k], "met": met[k]} for k in goals},
        "samples_s": samples,
    }
    size = f"{args.height}x{args.width}, batch {args.batch}"
    lines = [
        f"# SegNet, NYUv2 shapes ({size}, 3 pixel tasks): jmtl vs PyTorch on this CPU",
        "",
        f"Params: jmtl {jmtl_params:,} (shared {shared_params:,}), PyTorch {fmt(torch_params, ',')}. Tasks: {task_note}. "
        f"{args.repeats} interleaved rounds after {args.warmup} warm-up call(s); ratios are medians of per-round "
        "ratios. Memory: XLA's memory analysis of the compiled step (peak = arguments + temporaries + "
        "non-aliased outputs). "
        f"XLA_FLAGS: `{os.environ.get('XLA_FLAGS') or '(none)'}` (see `experiments.bench.segnet_ops` for the "
        "convolution setting).",
        "",
        "| step | path | chunk | median s | vs PyTorch (a) | vs PyTorch (b) | vs jmtl equal | peak MiB | memory vs equal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        mem = (r.get("memory_mib") or {}).get("peak_mib")
        lines.append(
            f"| {name} | {r.get('gradient_path', 'torch')} | {r.get('chunk_size', '—')} | {r['median_ms'] / 1e3:.2f} | "
            f"{fmt(r['vs_torch_equal'])}x | {fmt(r['vs_torch_k_backward'])}x | {fmt(r['vs_jmtl_equal'])}x | "
            f"{fmt(mem, '.0f')} | {fmt(r['memory_vs_equal'])}x |"
        )
    lines += ["", "## Goals", "", "| goal | value | met |", "|---|---|---|"]
    for k, v in goals.items():
        lines.append(f"| {k} | {fmt(v)} | {'—' if met[k] is None else ('yes' if met[k] else 'no')} |")
    lines += [
        "",
        f"Run started at commit `{start_git['git_commit_start']}`"
        + (" (with uncommitted changes)" if start_git["git_dirty_start"] else " (clean)")
        + ".",
    ]
    write_outputs(args.out, result, lines, {**provenance(started=started), **start_git})


if __name__ == "__main__":
    main()
