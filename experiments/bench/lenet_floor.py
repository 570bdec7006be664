"""The equal-weighting Multi-LeNet step against its FLOP floor on this CPU (issue 25 §4).

* **FLOPs of the step** (:func:`step_flops`): the network's multiply-adds counted from its layers
  (two convolutions at their output sizes, the dense layers from their kernels), x 2 FLOPs each, for
  the forward pass, the input gradients (all but the first conv's) and the weight gradients: the
  arithmetic any implementation must do. Elementwise work, pooling and Adam are left out, so the
  floor is a lower bound. XLA's own count of the compiled step is shown beside it: it is larger, since
  jmtl's convolutions are matmuls against block-Toeplitz kernels whose zeros it multiplies too.
* **Peak of this CPU**: the best float32 matmul throughput measured here (square matmuls of 512 to
  2048, XLA's and PyTorch's, the best of both): what the machine's two cores sustain on the most
  favourable dense kernel, so ``floor = FLOPs / peak`` is a time no implementation of the step beats.
* **The step** under each XLA:CPU setting (each in its own process: XLA reads ``XLA_FLAGS`` once),
  interleaved with PyTorch's same step (``experiments.bench.torch_reference``, its fastest thread
  count) in that process, so the ratios are paired per round.

    python -m experiments.bench.lenet_floor [--repeats 30]     # -> results/bench/lenet_floor.{json,md}
    python -m experiments.bench.lenet_floor --tiny --out /tmp/lenet_floor   # smoke (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from experiments.bench.common import (
    RESULTS,
    lenet_step,
    output_path,
    parse_settings,
    provenance,
    run_in_xla_setting,
    spread,
    started_now,
    time_round_robin,
    torch_setup,
    write_outputs,
)
from experiments.xla_setting_tables import LENET_SETTINGS
from experiments.xla_setting_tables import lenet_floor_report as report

SETTINGS = LENET_SETTINGS
# Multi-LeNet's conv output sizes on 28x28 inputs: conv1 5x5 valid -> 24x24, pool -> 12x12, conv2 -> 8x8.
CONV_OUT = {"conv1": (24, 24), "conv2": (8, 8)}
JMTL = "jmtl equal step"
TORCH = "PyTorch equal step"
MATMUL_SIZES = (512, 1024, 2048)


def step_flops(batch: int, num_tasks: int = 2) -> dict:
    """FLOPs of one training step's dense arithmetic: ``{"forward", "input_grads", "weight_grads", "total"}``.

    Multiply-adds from the params of ``mtl.build(..., encoder="multi_lenet")`` (traced, not run): a conv
    kernel ``[kh, kw, cin, cout]`` costs ``batch * ho * wo * kh * kw * cin * cout`` per pass, a dense kernel
    ``[n, m]`` ``batch * n * m``; the input gradient of the first conv is not needed (the images are not
    trained). FLOPs = 2 x multiply-adds.
    """
    import jax
    import jax.numpy as jnp

    from jmtl.models import mtl
    from jmtl.tasks import Task

    tasks = tuple(Task(f"task{k}", "classification", 10) for k in range(num_tasks))
    model = mtl.build(tasks, encoder="multi_lenet")
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))))["params"]
    fwd = first = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = [getattr(k, "key", str(k)) for k in path]
        if keys[-1] != "kernel":
            continue
        if leaf.ndim == 4:
            ho, wo = CONV_OUT[keys[-2]]
            macs = batch * ho * wo * int(np.prod(leaf.shape))
            first += macs if keys[-2] == "conv1" else 0
        else:
            macs = batch * int(np.prod(leaf.shape))
        fwd += macs
    out = {"forward": 2 * fwd, "input_grads": 2 * (fwd - first), "weight_grads": 2 * fwd}
    out["total"] = sum(out.values())
    return out


def _best_rate(fn, flops: float, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return flops / best / 1e9


def xla_matmul_gflops(sizes, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    out = {}
    for n in sizes:
        a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
        f = jax.jit(lambda x: x @ x)
        out[str(n)] = _best_rate(lambda: f(a).block_until_ready(), 2.0 * n**3, repeats)
    return out


def torch_matmul_gflops(sizes, repeats: int) -> dict:
    import torch

    out = {}
    for n in sizes:
        a = torch.from_numpy(np.random.default_rng(0).standard_normal((n, n), np.float32))
        out[str(n)] = _best_rate(lambda: a @ a, 2.0 * n**3, repeats)
    return out


def child(args) -> dict:
    """This process's setting: the matmul peak, the step's FLOPs, the paired step timing."""
    sizes = MATMUL_SIZES[:1] if args.tiny else MATMUL_SIZES
    peak = xla_matmul_gflops(sizes, args.matmul_repeats)
    call, compile_s, _ = lenet_step("equal", args.batch)
    cost = call.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    fns = {JMTL: call}
    torch_note = None
    if not args.no_torch:
        torch_ref, torch_note = torch_setup(args.batch)
        if torch_ref is not None:
            fns[TORCH] = torch_ref.reference_timers(2, args.batch, "adam")["torch step (a) equal weighting"]
    samples = time_round_robin(fns, args.repeats, warmup=3)
    return {
        "xla_matmul_gflops": peak,
        "xla_cost_flops": float(cost["flops"]),
        "compile_s": compile_s,
        "samples_s": samples,
        "torch_note": torch_note,
    }


def run_setting(name: str, flags: str, argv: list[str]) -> dict:
    """:func:`child` in its own process under the setting's ``XLA_FLAGS`` (:func:`run_in_xla_setting`)."""
    return run_in_xla_setting("experiments.bench.lenet_floor", name, flags, argv)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30, help="interleaved rounds of the steps")
    parser.add_argument("--matmul_repeats", type=int, default=10)
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from: {', '.join(SETTINGS)}")
    parser.add_argument("--no-torch", dest="no_torch", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="smoke: batch 8, 2 rounds, one matmul size, no torch")
    parser.add_argument("--out", default=None, help="output path without suffix (default: the committed results file)")
    parser.add_argument("--child_out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tiny:
        args.batch, args.repeats, args.matmul_repeats, args.no_torch = 8, 2, 2, True
    if args.child_out is not None:
        with open(args.child_out, "w") as f:
            json.dump(child(args), f)
        return
    names = parse_settings(parser, args.settings, list(SETTINGS))
    args.out = output_path(parser, args, RESULTS / "lenet_floor")
    started = started_now()
    passed = [
        *("--batch", str(args.batch), "--repeats", str(args.repeats), "--matmul_repeats", str(args.matmul_repeats)),
        *(["--tiny"] if args.tiny else []),
        *(["--no-torch"] if args.no_torch else []),
    ]
    settings = {n: run_setting(n, SETTINGS[n], passed) for n in names}
    ok = {n: r for n, r in settings.items() if "error" not in r}
    if not ok:
        parser.exit(1, "no setting ran: see the errors above\n")
    torch_peak = None
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
            torch_peak = torch_matmul_gflops(MATMUL_SIZES, args.matmul_repeats)
        except ImportError:
            pass
    xla_by_setting = {n: max(r["xla_matmul_gflops"].values()) for n, r in ok.items()}
    candidates = {f"XLA, {n}": v for n, v in xla_by_setting.items()}
    if torch_peak:
        candidates["PyTorch"] = max(torch_peak.values())
    source = max(candidates, key=candidates.get)
    sizes = list(next(iter(ok.values()))["xla_matmul_gflops"])
    peak = {
        "gflops": candidates[source],
        "source": source,
        "sizes": sizes,
        "xla_by_setting": xla_by_setting,
        "torch": torch_peak,
    }
    flops = step_flops(args.batch)
    floor_s = flops["total"] / (peak["gflops"] * 1e9)
    for r in ok.values():
        jm = r["samples_s"][JMTL]
        r["jmtl"] = spread(jm)
        r["jmtl_ms"] = 1e3 * float(np.median(jm))
        r["jmtl_vs_floor"] = float(np.median(jm)) / floor_s
        if TORCH in r["samples_s"]:
            tt = r["samples_s"][TORCH]
            r["torch_ms"] = 1e3 * float(np.median(tt))
            r["torch_vs_floor"] = float(np.median(tt)) / floor_s
            r["vs_torch"] = float(np.median([a / b for a, b in zip(jm, tt)]))
    config = {k: v for k, v in vars(args).items() if k != "child_out"}
    result = {"config": config, "flops": flops, "peak": peak, "floor_ms": 1e3 * floor_s, "settings": settings}
    write_outputs(args.out, result, report(result), provenance(started=started))


if __name__ == "__main__":
    main()
