"""Where SegNet's full-size step spends its time on XLA:CPU, and the setting that closes most of the gap.

Every 3x3 conv of SegNet with MTAN's pixel heads at NYUv2 shapes (288x384, batch 2), timed alone in
its three parts (forward, input gradient, weight gradient), under each XLA:CPU convolution setting
below, beside the same conv's three parts in PyTorch (``torch.nn.functional.conv2d`` and
``torch.nn.grad.conv2d_input`` / ``conv2d_weight``, NCHW as the PyTorch SegNet); then the whole
equal-weighting train step (``experiments.bench.vision_common.jmtl_step``) under each setting,
interleaved with PyTorch's step in the same process (paired ratios).

XLA settings (each in its own process: XLA reads ``XLA_FLAGS`` once):

* ``default``: jax's own choice; on jax 0.10.2, XLA:CPU hands convolutions and dots to YNNPACK.
* ``eigen convs``: ``--xla_cpu_experimental_ynn_fusion_type=individual_dot``: dots stay with
  YNNPACK, convolutions go to XLA's Eigen kernels.
* ``no YNNPACK``: ``--xla_cpu_experimental_ynn_fusion_type=`` (empty): neither.

A jaxlib that does not know the flag stops the process; its setting is then reported as unsupported.

    python -m experiments.bench.segnet_ops [--repeats 3] [--conv_repeats 5]
    # -> results/bench/segnet_ops.{json,md}
    python -m experiments.bench.segnet_ops --tiny --out /tmp/segnet_ops   # CPU smoke (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from experiments.bench.common import (
    RESULTS,
    output_path,
    parse_settings,
    provenance,
    run_in_xla_setting,
    spread,
    started_now,
    write_outputs,
)
from experiments.xla_setting_tables import PARTS, SEGNET_SETTINGS
from experiments.xla_setting_tables import segnet_summary_tables as summary_tables

SETTINGS = SEGNET_SETTINGS
TORCH_STEP = "PyTorch equal step"
JMTL_STEP = "jmtl equal step"


def conv_shapes(height: int, width: int, filters, head_hidden: int = 64, heads: int = 3) -> list[dict]:
    """SegNet's 3x3 convs (:class:`jmtl.models.vision.SegNet` and MTAN's pixel heads), grouped by shape.

    Returns:
      ``[{"h", "w", "cin", "cout", "count", "where"}]`` in network order, one entry per distinct shape.
    """
    from jmtl.models.vision import _extra_convs

    f = tuple(filters)
    convs = []
    for i in range(5):
        h, w = height >> i, width >> i
        cin = 3 if i == 0 else f[i - 1]
        convs.append((h, w, cin, f[i], f"enc{i}_0"))
        convs += [(h, w, f[i], f[i], f"enc{i}_{r + 1}") for r in range(_extra_convs(i))]
    for i in reversed(range(5)):
        h, w, out = height >> i, width >> i, f[max(i - 1, 0)]
        convs.append((h, w, f[i], out, f"dec{i}_0"))
        convs += [(h, w, out, out, f"dec{i}_{r + 1}") for r in range(_extra_convs(i))]
    convs += [(height, width, f[0], head_hidden, f"head{k}") for k in range(heads)]
    shapes: dict[tuple, dict] = {}
    for h, w, cin, cout, name in convs:
        s = shapes.setdefault((h, w, cin, cout), {"h": h, "w": w, "cin": cin, "cout": cout, "count": 0, "where": []})
        s["count"] += 1
        s["where"].append(name)
    return list(shapes.values())


def _median_s(fn, repeats: int) -> float:
    fn()  # compile / warm caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _inputs(batch: int, s: dict):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, s["h"], s["w"], s["cin"]), np.float32)
    w = (rng.standard_normal((3, 3, s["cin"], s["cout"])) / np.sqrt(9 * s["cin"])).astype(np.float32)
    g = rng.standard_normal((batch, s["h"], s["w"], s["cout"]), np.float32)
    return x, w, g


def jax_conv_parts(shapes, batch: int, repeats: int) -> list[dict]:
    """Milliseconds of each shape's forward, input gradient and weight gradient, each its own jit."""
    import jax
    from jax import lax

    def conv(x, w):  # flax.linen.Conv's lowering: NHWC / HWIO, explicit padding 1
        return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    parts = {
        "forward": jax.jit(lambda x, w, g: conv(x, w)),
        "input grad": jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
        "weight grad": jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]),
    }
    out = []
    for s in shapes:
        x, w, g = (jax.device_put(a) for a in _inputs(batch, s))
        out.append({p: 1e3 * _median_s(lambda f=f: f(x, w, g).block_until_ready(), repeats) for p, f in parts.items()})
    return out


def torch_conv_parts(shapes, batch: int, repeats: int, threads: int) -> list[dict]:
    """The same three parts in PyTorch (NCHW, as ``experiments.bench.torch_segnet``)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    out = []
    for s in shapes:
        x, w, g = (torch.from_numpy(np.ascontiguousarray(a)) for a in _inputs(batch, s))
        x, g = x.permute(0, 3, 1, 2).contiguous(), g.permute(0, 3, 1, 2).contiguous()
        w = w.permute(3, 2, 0, 1).contiguous()
        with torch.no_grad():
            parts = {
                "forward": lambda: F.conv2d(x, w, padding=1),
                "input grad": lambda: torch.nn.grad.conv2d_input(x.shape, w, g, padding=1),
                "weight grad": lambda: torch.nn.grad.conv2d_weight(x, w.shape, g, padding=1),
            }
            out.append({p: 1e3 * _median_s(f, repeats) for p, f in parts.items()})
    return out


def child(args) -> dict:
    """One XLA setting (this process's ``XLA_FLAGS``): the conv parts, then the paired step timing."""
    from experiments.bench import vision_common as vc

    shapes = conv_shapes(args.height, args.width, args.filters)
    convs = jax_conv_parts(shapes, args.batch, args.conv_repeats)
    batch = vc.make_batch(args.batch, args.height, args.width)
    step, info = vc.jmtl_step("equal", batch, filters=args.filters if args.tiny else None)
    fns = {JMTL_STEP: step}
    if not args.no_torch:
        import torch

        from experiments.bench import torch_segnet

        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        tb = torch_segnet.to_torch(batch)
        model = torch_segnet.SegNetSplit()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        fns[TORCH_STEP] = lambda: torch_segnet.equal_step(model, opt, tb)
    from experiments.bench.common import time_round_robin

    samples = time_round_robin(fns, args.repeats, warmup=1)
    return {"convs": convs, "step_samples_s": samples, "compile_s": info["compile_s"]}


def run_setting(name: str, flags: str, argv: list[str]) -> dict:
    """:func:`child` in its own process under the setting's ``XLA_FLAGS`` (:func:`run_in_xla_setting`)."""
    return run_in_xla_setting("experiments.bench.segnet_ops", name, flags, argv)


def gflop(s: dict, batch: int) -> float:
    """Multiply-adds x 2 of one part (the three parts of a conv cost the same)."""
    return 2 * batch * s["h"] * s["w"] * 9 * s["cin"] * s["cout"] / 1e9


def report(result: dict) -> list[str]:
    c = result["config"]
    shapes, settings, torch_convs = result["shapes"], result["settings"], result.get("torch_convs")
    ok = {n: r for n, r in settings.items() if "error" not in r}
    cols = list(ok) + (["PyTorch"] if torch_convs else [])
    lines = [
        f"# SegNet's full-size step on XLA:CPU: where the time goes ({c['height']}x{c['width']}, batch {c['batch']})",
        "",
        "Every 3x3 conv of SegNet with MTAN's pixel heads, each part timed alone (median of "
        f"{c['conv_repeats']} calls, ms), weighted by how many convs have that shape; then the equal-weighting "
        f"step in {c['repeats']} rounds interleaved with PyTorch's (PyTorch {c['threads']} threads, NCHW). "
        "Settings: " + "; ".join(f"**{n}** = `{f or '(none)'}`" for n, f in SETTINGS.items()) + ".",
        "",
        *summary_tables(result),
        "",
        "## Each conv shape (ms per conv: forward / input grad / weight grad; GFLOP/s of the weight grad)",
        "",
        "| H×W | Cin→Cout | convs | GFLOP per part | " + " | ".join(cols) + " |",
        "|---|---|---:|---:|" + "---|" * len(cols),
    ]
    for i, s in enumerate(shapes):
        cells = []
        for n in cols:
            p = torch_convs[i] if n == "PyTorch" else ok[n]["convs"][i]
            wg = gflop(s, c["batch"]) / (p["weight grad"] / 1e3)
            cells.append(" / ".join(f"{p[q]:.0f}" for q in PARTS) + f" ({wg:.0f})")
        lines.append(
            f"| {s['h']}×{s['w']} | {s['cin']}→{s['cout']} | {s['count']} | {gflop(s, c['batch']):.1f} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the whole step")
    parser.add_argument("--conv_repeats", type=int, default=5, help="timed calls of each conv part")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="PyTorch threads (default: all cores)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from: {', '.join(SETTINGS)}")
    parser.add_argument("--no-torch", dest="no_torch", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke: 32x32, SegNet widths 4-8, one round, no torch")
    parser.add_argument("--out", default=None, help="output path without suffix (default: the committed results file)")
    parser.add_argument("--child_out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from experiments.bench import vision_common as vc

    args.filters = vc.TINY_FILTERS if args.tiny else (64, 128, 256, 512, 512)
    if args.tiny:
        args.height, args.width, args.repeats, args.conv_repeats, args.no_torch = 32, 32, 1, 1, True
    if args.child_out is not None:
        with open(args.child_out, "w") as f:
            json.dump(child(args), f)
        return
    names = parse_settings(parser, args.settings, list(SETTINGS))
    args.out = output_path(parser, args, RESULTS / "segnet_ops")
    started = started_now()
    shapes = conv_shapes(args.height, args.width, args.filters)
    passed = [
        *("--height", str(args.height), "--width", str(args.width), "--batch", str(args.batch)),
        *("--repeats", str(args.repeats), "--conv_repeats", str(args.conv_repeats), "--threads", str(args.threads)),
        *(["--tiny"] if args.tiny else []),
        *(["--no-torch"] if args.no_torch else []),
    ]
    torch_convs = None
    if not args.no_torch:
        torch_convs = torch_conv_parts(shapes, args.batch, args.conv_repeats, args.threads)
        print("PyTorch convs timed", flush=True)
    settings = {}
    for name in names:
        t0 = time.perf_counter()
        r = run_setting(name, SETTINGS[name], passed)
        if "error" not in r:
            samples = r.pop("step_samples_s")
            jm = samples[JMTL_STEP]
            step = {**spread(jm), "median_s": float(np.median(jm)), "samples_s": jm}
            if TORCH_STEP in samples:
                tt = samples[TORCH_STEP]
                step.update(
                    torch_median_s=float(np.median(tt)),
                    torch_samples_s=tt,
                    vs_torch=float(np.median([a / b for a, b in zip(jm, tt)])),
                )
            r["step"] = step
            print(
                f"{name}: step {step['median_s']:.2f} s ({time.perf_counter() - t0:.0f} s with the convs)", flush=True
            )
        settings[name] = r
    config = {k: v for k, v in vars(args).items() if k not in ("child_out",)}
    config["filters"] = list(args.filters)
    result = {"config": config, "shapes": shapes, "torch_convs": torch_convs, "settings": settings}
    write_outputs(args.out, result, report(result), provenance(started=started))


if __name__ == "__main__":
    main()
