"""The report tables of the per-XLA-setting benchmarks (``experiments.bench.segnet_ops``,
``experiments.bench.lenet_floor``), with their settings: the benchmarks write them and
:mod:`experiments.readme_tables` renders them from the results files, so they live outside
``experiments.bench`` (experiment scripts do not import the benchmarks)."""

from __future__ import annotations

from experiments.timing import fmt

SEGNET_SETTINGS = {
    "default": "",
    "eigen convs": "--xla_cpu_experimental_ynn_fusion_type=individual_dot",
    "no YNNPACK": "--xla_cpu_experimental_ynn_fusion_type=",
}
PARTS = ("forward", "input grad", "weight grad")

LENET_SETTINGS = {
    "default": "",
    # The setting segnet_ops recommends for conv nets on CPU: here (convolutions written as matmuls)
    # it should change nothing; measured so that a CPU user of both models knows.
    "eigen convs": "--xla_cpu_experimental_ynn_fusion_type=individual_dot",
    "no YNNPACK": "--xla_cpu_experimental_ynn_fusion_type=",
    "single-threaded Eigen": "--xla_cpu_multi_thread_eigen=false",
}


def segnet_summary_tables(result: dict) -> list[str]:
    """The convs summed over the network per setting (and PyTorch), then the equal step per setting."""
    c = result["config"]
    shapes, settings, torch_convs = result["shapes"], result["settings"], result.get("torch_convs")
    ok = {n: r for n, r in settings.items() if "error" not in r}
    cols = list(ok) + (["PyTorch"] if torch_convs else [])
    lines = ["| conv part, summed over the network (ms) | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    totals = dict.fromkeys(cols, 0.0)
    for part in PARTS:
        row = []
        for n in cols:
            per = torch_convs if n == "PyTorch" else ok[n]["convs"]
            t = sum(s["count"] * p[part] for s, p in zip(shapes, per))
            totals[n] += t
            row.append(f"{t:.0f}")
        lines.append(f"| {part} | " + " | ".join(row) + " |")
    lines.append("| **all three** | " + " | ".join(f"**{totals[n]:.0f}**" for n in cols) + " |")
    lines += [
        "",
        f"| equal-weighting step ({c['repeats']} interleaved rounds) | jmtl s | PyTorch s | jmtl / PyTorch (paired) "
        "| jmtl vs default | compile s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base = ok.get("default", {}).get("step", {}).get("median_s")
    for n, r in ok.items():
        st = r["step"]
        lines.append(
            f"| {n} (`{SEGNET_SETTINGS[n] or 'no flag'}`) | {st['median_s']:.2f} | {fmt(st.get('torch_median_s'))} | "
            f"{fmt(st.get('vs_torch'))} | {fmt(None if not base else st['median_s'] / base)} | {r['compile_s']:.0f} |"
        )
    for n, r in settings.items():
        if "error" in r:
            lines += ["", f"**{n}**: not supported by this jaxlib (`{r['error']}`)."]
    return lines


def lenet_floor_report(result: dict) -> list[str]:
    c, peak = result["config"], result["peak"]
    ok = {n: r for n, r in result["settings"].items() if "error" not in r}
    fl = result["flops"]
    xla_flops = next(iter(ok.values()))["xla_cost_flops"] if ok else None
    lines = [
        f"# Multi-LeNet equal-weighting step against its FLOP floor (batch {c['batch']}, 2 tasks, Adam)",
        "",
        f"Step FLOPs (the layers' multiply-adds x 2: forward {fl['forward'] / 1e6:.1f}, input gradients "
        f"{fl['input_grads'] / 1e6:.1f}, weight gradients {fl['weight_grads'] / 1e6:.1f}): "
        f"**{fl['total'] / 1e6:.1f} MFLOP** (XLA's cost analysis of the compiled step counts "
        f"{fmt(xla_flops and xla_flops / 1e6, '.1f')} MFLOP: Toeplitz zeros, elementwise work and Adam). "
        f"Peak of this CPU: **{peak['gflops']:.0f} GFLOP/s** ({peak['source']}; float32 matmuls of "
        f"{', '.join(peak['sizes'])}, best of {c['matmul_repeats']} calls each; XLA "
        + ", ".join(f"{k}: {v:.0f}" for k, v in peak["xla_by_setting"].items())
        + (f"; PyTorch: {', '.join(f'{k}: {v:.0f}' for k, v in peak['torch'].items())}" if peak.get("torch") else "")
        + f"). Floor = FLOPs / peak = **{fmt(result['floor_ms'], '.2f')} ms**. Each setting in its own process, "
        f"{c['repeats']} rounds, interleaved with PyTorch's step when it is installed (ratios paired per round).",
        "",
        "| XLA setting | XLA_FLAGS | jmtl median ms | jmtl / floor | PyTorch median ms | PyTorch / floor "
        "| jmtl / PyTorch (paired) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for n, r in ok.items():
        lines.append(
            f"| {n} | `{LENET_SETTINGS[n] or '(none)'}` | {r['jmtl_ms']:.2f} | {r['jmtl_vs_floor']:.2f} | "
            f"{fmt(r.get('torch_ms'), '.2f')} | {fmt(r.get('torch_vs_floor'))} | {fmt(r.get('vs_torch'))} |"
        )
    for n, r in result["settings"].items():
        if "error" in r:
            lines += ["", f"**{n}**: not supported by this jaxlib (`{r['error']}`)."]
    best = min(ok.items(), key=lambda kv: kv[1]["jmtl_ms"]) if ok else None
    if best:
        lines += [
            "",
            f"Goal (issue 25 §4): ≤ 2× the floor. Best setting here: **{best[0]}**, "
            f"{best[1]['jmtl_vs_floor']:.2f}× the floor ({'met' if best[1]['jmtl_vs_floor'] <= 2 else 'missed'}).",
        ]
    return lines
