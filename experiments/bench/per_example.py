r"""Per-example objectives (instance-wise risk minimisation, K = B) with UPGrad: jmtl against torchjd.

    /work/venv_g/bin/python -m experiments.bench.per_example      # what results/bench/per_example.md ran
    python -m experiments.bench.per_example --quick --out-dir /tmp/x  # CI smoke: seconds (no torch needed)

Every example's loss is its own objective and UPGrad balances the B per-example gradients of ALL the
params (torchjd's IWRM: its ``autogram.Engine`` covers the whole model, so jmtl selects every param as
shared). Two models, the same weights in both frameworks (jmtl's init copied into PyTorch):

* ``multi_lenet``: Sener & Koltun's Multi-LeNet, one task (digit cross-entropy), MNIST test images
  (28x28); dropout off in both (torchjd's engine and jmtl's vmap would draw different masks).
* ``mlp_sarcos``: an MLP 21-128-128 with 7 linear heads (one per joint torque), SARCOS's 4,449-example
  test file (standardised); per-example loss: the sum of the 7 squared errors.

Rows at each B (one SGD step each, lr 0.01; timed round-robin within a (model, B) cell):

* ``jmtl_mean``: jmtl's equal-weighting step (mean loss, one backward pass): the yardstick;
* ``jmtl_per_example``: ``StepConfig(per_example=True)``, UPGrad on the B x d per-example rows
  (one ``vmap(grad)``; :class:`jmtl.core.paths.PerExampleJacobian`);
* ``torch_mean``: the plain PyTorch mean-loss step;
* ``torchjd_autogram``: ``torchjd.autogram.Engine(model, batch_dim=0)``: the Gramian of the
  per-example losses without the Jacobian, ``UPGradWeighting``, ``losses.backward(weights)``;
* ``torchjd_autojac``: ``torchjd.autojac.backward(losses)`` + ``jac_to_grad(params, UPGrad())``
  (the Jacobian held, as jmtl's rows path).

Memory: jmtl rows give XLA's memory analysis of the compiled step (arguments + outputs - aliased +
temporaries). PyTorch has no CPU peak counter: each torch row runs 3 steps in a fresh process and the
growth of its peak RSS (``VmHWM``, reset by ``/proc/self/clear_refs`` before the first step) over the RSS then is reported; the two
measures are not the same quantity (RSS includes the allocator's slack), so compare within a
framework first. The first step's update of ``jmtl_per_example`` and of ``torchjd_autogram`` from the
same weights and batch are compared (``max_rel_diff``: max |a - b| / max |b| over the params).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments.bench import common
from experiments.bench.process_stats import status_field

OUT_DIR = common.ROOT / "results" / "bench"
MODELS = ("mlp_sarcos", "multi_lenet")
BATCHES = (32, 64, 128, 256)
JMTL_ROWS = ("jmtl_mean", "jmtl_per_example")
TORCH_ROWS = ("torch_mean", "torchjd_autogram", "torchjd_autojac")
LR = 0.01
SLOW_S = 2.0  # seconds per call above which a row is timed alone (a few calls)
SLOW_REPEATS = 1  # the probe call only: jmtl's UPGrad at K = B = 256 takes minutes per step on 2 cores
SARCOS_TASKS = 7
SARCOS_HIDDEN = (128, 128)


# ---------------------------------------------------------------------------------------- data


def load_data(model: str, quick: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """``(x, y, source)``: x NHWC images / features (float32), y labels (int) or targets [N, 7]."""
    data_dir = Path(os.environ.get("JMTL_DATA_DIR", "/work/shared/data"))
    rng = np.random.default_rng(0)
    if model == "multi_lenet":
        folder = data_dir / "mnist"
        if not quick and (folder / "t10k-images-idx3-ubyte.gz").exists():
            from jmtl.data import idx

            images, labels = idx.read_split(folder, "test")
            x = ((images.astype(np.float32) / 255.0 - 0.1307) / 0.3081)[..., None]
            return x, labels.astype(np.int64), f"MNIST test images ({folder})"
        return rng.normal(size=(512, 28, 28, 1)).astype(np.float32), rng.integers(0, 10, 512), "random (quick)"
    path = data_dir / "sarcos" / "sarcos_inv_test.mat"
    if not quick and path.exists():
        from scipy.io import loadmat

        raw = np.asarray(loadmat(path)["sarcos_inv_test"], np.float64)
        raw = (raw - raw.mean(0)) / raw.std(0)
        return raw[:, :21].astype(np.float32), raw[:, 21:].astype(np.float32), f"SARCOS test file ({path})"
    return rng.normal(size=(512, 21)).astype(np.float32), rng.normal(size=(512, 7)).astype(np.float32), "random (quick)"


def batch_of(x: np.ndarray, y: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """The first b examples of a fixed shuffle (the same batch for every row of a cell)."""
    ids = np.random.default_rng(b).permutation(len(x))[:b]
    return x[ids], y[ids]


# ---------------------------------------------------------------------------------------- jmtl


def jmtl_model(model: str, quick: bool):
    """``(flax module, tasks, input example)``."""
    import flax.linen as nn

    from jmtl.models import mtl
    from jmtl.tasks import Task

    if model == "multi_lenet":
        tasks = (Task("digit", "classification", 10),)
        m = mtl.build(
            tasks, encoder="multi_lenet", encoder_kwargs=dict(dropout_rate=0.0), head_kwargs=dict(dropout_rate=0.0)
        )
        return m, tasks, np.zeros((1, 28, 28, 1), np.float32)

    hidden = (8, 8) if quick else SARCOS_HIDDEN

    class SarcosMLP(nn.Module):
        """Dense layers with relu, then one Dense(1) head per torque (mirrored by :class:`TorchMLP`)."""

        @nn.compact
        def __call__(self, x, *, train: bool = False):
            for i, f in enumerate(hidden):
                x = nn.relu(nn.Dense(f, name=f"dense{i}")(x))
            return {f"torque{k}": nn.Dense(1, name=f"head{k}")(x) for k in range(SARCOS_TASKS)}

    tasks = tuple(Task(f"torque{k}", "regression", 1) for k in range(SARCOS_TASKS))
    return SarcosMLP(), tasks, np.zeros((1, 21), np.float32)


def jmtl_batch(model: str, tasks, x: np.ndarray, y: np.ndarray) -> dict:
    if model == "multi_lenet":
        return {"x": x, "digit": y.astype(np.int32)}
    return {"x": x, **{t.name: y[:, k : k + 1] for k, t in enumerate(tasks)}}


def jmtl_steps(model: str, b: int, batch: dict, quick: bool):
    """name -> (call, memory, state0, first-step params), compiled and donated."""
    import jax
    import optax

    from jmtl import weighting
    from jmtl.training import step as step_lib

    m, tasks, example = jmtl_model(model, quick)
    opt = optax.sgd(LR)
    out = {}
    for name in JMTL_ROWS:
        per_example = name == "jmtl_per_example"
        scheme = weighting.get("upgrad" if per_example else "equal")
        # IWRM balances every param (torchjd's engine covers the whole model).
        cfg = step_lib.StepConfig(per_example=per_example, shared=(lambda path: True) if per_example else None)
        state = step_lib.init_state(
            m, scheme, opt, example, b if per_example else len(tasks), seed=0, shared=cfg.shared
        )
        state0 = jax.device_get(state)
        compiled = (
            jax.jit(step_lib.make_train_step(m, tasks, scheme, opt, cfg), donate_argnums=0)
            .lower(state, batch)
            .compile()
        )
        holder = [state]

        def call(holder=holder, compiled=compiled):
            holder[0], _ = compiled(holder[0], batch)
            jax.block_until_ready(holder[0])

        t0 = time.perf_counter()
        call()
        first_s = time.perf_counter() - t0
        first = jax.device_get(holder[0].params)
        out[name] = (call, common.memory_mib(compiled), state0, first, first_s)
    return out


# ---------------------------------------------------------------------------------------- torch


def torch_model(model: str, params: dict, quick: bool):
    """The PyTorch twin of the jmtl model, with jmtl's weights copied in."""
    import torch
    from torch import nn

    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)
    dense = lambda layer, p: (layer.weight.data.copy_(t(p["kernel"]).T), layer.bias.data.copy_(t(p["bias"])))
    conv = lambda layer, p: (
        layer.weight.data.copy_(t(np.transpose(p["kernel"], (3, 2, 0, 1)))),
        layer.bias.data.copy_(t(p["bias"])),
    )
    if model == "multi_lenet":
        from experiments.bench import torch_reference

        net = torch_reference.MultiLeNet(num_tasks=1)
        net.eval()  # dropout off, as in the jmtl model
        s, h = params["shared"], params["tasks"]["digit"]
        conv(net.encoder.conv1, s["conv1"])
        conv(net.encoder.conv2, s["conv2"])
        # jmtl flattens [4, 4, 20] NHWC features, PyTorch [20, 4, 4] NCHW ones.
        fc = np.asarray(s["fc"]["kernel"]).reshape(4, 4, 20, 50).transpose(3, 2, 0, 1).reshape(50, 320)
        net.encoder.fc.weight.data.copy_(t(fc))
        net.encoder.fc.bias.data.copy_(t(s["fc"]["bias"]))
        dense(net.heads[0].fc1, h["body"])
        dense(net.heads[0].fc2, h["out"])
        return net

    hidden = (8, 8) if quick else SARCOS_HIDDEN

    class TorchMLP(nn.Module):
        def __init__(self):
            super().__init__()
            sizes = (21, *hidden)
            self.dense = nn.ModuleList(nn.Linear(a, c) for a, c in zip(sizes[:-1], sizes[1:]))
            self.heads = nn.ModuleList(nn.Linear(hidden[-1], 1) for _ in range(SARCOS_TASKS))

        def forward(self, x):
            for layer in self.dense:
                x = torch.relu(layer(x))
            return torch.cat([head(x) for head in self.heads], dim=1)

    net = TorchMLP()
    for i, layer in enumerate(net.dense):
        dense(layer, params[f"dense{i}"])
    for k, head in enumerate(net.heads):
        dense(head, params[f"head{k}"])
    return net


def torch_per_example_losses(model: str, net, x, y):
    import torch.nn.functional as F

    out = net(x)
    if model == "multi_lenet":
        return F.cross_entropy(out[0], y, reduction="none")
    return ((out - y) ** 2).sum(dim=1)


def torch_step(model: str, name: str, net, x, y):
    """A zero-argument callable running one step of ``name`` on (x, y)."""
    import torch

    opt = torch.optim.SGD(net.parameters(), lr=LR)
    if name == "torch_mean":

        def call():
            opt.zero_grad(set_to_none=True)
            torch_per_example_losses(model, net, x, y).mean().backward()
            opt.step()

        return call
    if name == "torchjd_autogram":
        from torchjd.aggregation import UPGradWeighting
        from torchjd.autogram import Engine

        engine, weighting = Engine(net, batch_dim=0), UPGradWeighting()

        def call():
            opt.zero_grad(set_to_none=True)
            losses = torch_per_example_losses(model, net, x, y)
            losses.backward(weighting(engine.compute_gramian(losses)))
            opt.step()

        return call
    from torchjd.aggregation import UPGrad
    from torchjd.autojac import backward, jac_to_grad

    aggregator = UPGrad()

    def call():
        opt.zero_grad(set_to_none=True)
        backward(torch_per_example_losses(model, net, x, y))
        jac_to_grad(list(net.parameters()), aggregator)
        opt.step()

    return call


def torch_inputs(model: str, x: np.ndarray, y: np.ndarray):
    import torch

    xt = torch.tensor(np.transpose(x, (0, 3, 1, 2)).copy() if model == "multi_lenet" else x)
    return xt, torch.tensor(y)


def torch_memory_child(args) -> None:
    """In a fresh process: peak RSS growth over 3 steps of one torch row (prints one JSON line)."""
    import torch

    torch.set_num_threads(args.threads)
    saved = np.load(args.child_npz, allow_pickle=True)
    params = saved["params"].item()
    net = torch_model(args.child_model, params, args.quick)
    xt, yt = torch_inputs(args.child_model, saved["x"], saved["y"])
    call = torch_step(args.child_model, args.child_row, net, xt, yt)
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS, so the import's and
    # the set-up's transient peaks do not count.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_field("VmRSS") / 1024
    for _ in range(3):
        call()
    peak = status_field("VmHWM") / 1024
    print(json.dumps({"rss_before_mib": before, "peak_rss_mib": peak, "peak_growth_mib": peak - before}))


def torch_memory(model: str, row: str, params, x, y, threads: int, quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "inputs.npz"
        np.savez(npz, params=np.array(params, dtype=object), x=x, y=y)
        cmd = [sys.executable, "-m", "experiments.bench.per_example", "--child-row", row, "--child-model", model]
        cmd += ["--child-npz", str(npz), "--threads", str(threads)] + (["--quick"] if quick else [])
        res = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        return {"status": "failed", "error": res.stderr[-500:]}
    return {"status": "measured", **json.loads(res.stdout.strip().splitlines()[-1])}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _params_of(net) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in net.parameters()]


# ---------------------------------------------------------------------------------------- run


def run_cell(model: str, b: int, x, y, torch_ok: bool, threads: int, repeats: int, quick: bool) -> dict:
    import jax

    xb, yb = batch_of(x, y, b)
    _, tasks, _ = jmtl_model(model, quick)
    steps = jmtl_steps(model, b, jmtl_batch(model, tasks, xb, yb), quick)
    fns = {name: s[0] for name, s in steps.items()}
    cell = {"rows": {name: {"memory": s[1]} for name, s in steps.items()}}
    params0 = steps["jmtl_per_example"][2].params
    if torch_ok:
        xt, yt = torch_inputs(model, xb, yb)
        nets = {}
        for row in TORCH_ROWS:
            nets[row] = torch_model(model, params0, quick)
            fns[row] = torch_step(model, row, nets[row], xt, yt)
        # The first update of torchjd's autogram UPGrad against jmtl's, from the same weights.
        net = torch_model(model, params0, quick)
        before = _params_of(net)
        torch_step(model, "torchjd_autogram", net, xt, yt)()
        torch_update = [a - c for a, c in zip(before, _params_of(net))]
        twin = torch_model(model, steps["jmtl_per_example"][3], quick)
        jmtl_update = [a - c for a, c in zip(before, _params_of(twin))]
        scale = max(float(np.max(np.abs(u))) for u in torch_update)
        cell["max_rel_diff"] = max(float(np.max(np.abs(a - c))) for a, c in zip(jmtl_update, torch_update)) / scale
    # A row whose second call takes longer than SLOW_S is timed over a few calls on its own, outside
    # the round robin (jmtl's UPGrad at B = 256 solves 256 active-set QPs of size 256 per step).
    slow = {}
    for name, fn in fns.items():
        # jmtl rows: the first call after compiling (already made, for the update check) is the probe.
        first = steps[name][4] if name in steps else _timed(fn)
        print(f"  {name}: {first * 1e3:.1f} ms", file=sys.stderr, flush=True)
        if first > SLOW_S:
            slow[name] = [first] + [_timed(fn) for _ in range(SLOW_REPEATS - 1)]
    samples = common.time_round_robin({n: f for n, f in fns.items() if n not in slow}, repeats=repeats, warmup=1)
    for name, s in samples.items():
        cell["rows"].setdefault(name, {}).update(common.spread(s), status="ran", timing="round robin")
    for name, s in slow.items():
        cell["rows"].setdefault(name, {}).update(
            common.spread(s), status="ran", timing=f"alone, {len(s)} calls (over {SLOW_S} s per call)"
        )
    if torch_ok:
        for row in TORCH_ROWS:
            cell["rows"][row]["memory"] = torch_memory(model, row, params0, xb, yb, threads, quick)
    base = cell["rows"]
    cell["ratios"] = {
        "jmtl_per_example / torchjd_autogram": (
            base["jmtl_per_example"]["median_ms"] / base["torchjd_autogram"]["median_ms"] if torch_ok else None
        ),
        "jmtl_per_example / jmtl_mean": base["jmtl_per_example"]["median_ms"] / base["jmtl_mean"]["median_ms"],
        "torchjd_autogram / torch_mean": (
            base["torchjd_autogram"]["median_ms"] / base["torch_mean"]["median_ms"] if torch_ok else None
        ),
    }
    jax.clear_caches()
    return cell


def markdown(results: dict, meta: dict) -> list[str]:
    f = common.fmt
    lines = [
        "# Per-example objectives (IWRM, K = B) with UPGrad: jmtl vs torchjd",
        "",
        "Written by `experiments/bench/per_example.py` (its docstring says what each row does). One SGD step "
        "per call, median of the round-robin timings within each (model, B) cell, same weights and batch in "
        "both frameworks.",
        "",
        f"- data: {'; '.join(f'{m}: {s}' for m, s in meta['data'].items())}",
        f"- torch: {meta['torch']}",
        f"- repeats per row: {meta['repeats']}",
        "- memory: jmtl = XLA's memory analysis of the compiled step (peak = arguments + outputs - aliased + "
        "temporaries; temp = temporaries); torch = growth of the peak RSS over 3 steps in a fresh process "
        "(not the same quantity)",
        f"- rows marked *timed alone* took over {SLOW_S:g} s per call: timed by {SLOW_REPEATS} call(s) outside the "
        "round robin (p10-p90 then shows that one call)",
        "- `max diff`: the first update of jmtl's per-example UPGrad vs torchjd's autogram UPGrad from the "
        "same weights (max |a - b| / max |b|)",
        "",
    ]
    for model, cells in results.items():
        lines += [
            f"## {model}",
            "",
            "| B | row | median ms | p10-p90 ms | memory MiB | vs jmtl_mean | vs torchjd_autogram |",
            "|---:|---|---:|---|---:|---:|---:|",
        ]
        for b, cell in cells.items():
            rows = cell["rows"]
            for name, r in rows.items():
                mem = r.get("memory")
                if mem is None:
                    mem_text = "not measured"
                elif "peak_mib" in mem:
                    mem_text = f"peak {mem['peak_mib']:.1f} (temp {mem['temp_mib']:.1f})"
                elif mem.get("status") == "measured":
                    mem_text = f"RSS +{mem['peak_growth_mib']:.1f}"
                else:
                    mem_text = "failed"
                vs_mean = r["median_ms"] / rows["jmtl_mean"]["median_ms"]
                ag = rows.get("torchjd_autogram")
                vs_ag = f(r["median_ms"] / ag["median_ms"]) if ag else "—"
                label = name + (" (timed alone)" if str(r.get("timing", "")).startswith("alone") else "")
                lines.append(
                    f"| {b} | {label} | {r['median_ms']:.2f} | {r['p10_ms']:.2f}-{r['p90_ms']:.2f} | {mem_text} "
                    f"| {vs_mean:.2f} | {vs_ag} |"
                )
            if cell.get("max_rel_diff") is not None:
                lines.append(f"| {b} | max diff jmtl vs torchjd | {cell['max_rel_diff']:.1e} | | | | |")
        lines.append("")
    return lines


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny MLP, random data, B = 8, 2 repeats (CI)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out-dir", default=str(OUT_DIR))
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child-row", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child-model", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child-npz", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_row:
        torch_memory_child(args)
        return {}
    models = common.parse_settings(parser, args.models, MODELS, flag="--models")
    prov_start = common.started_now()
    models = ["mlp_sarcos"] if args.quick else models
    batches = [8] if args.quick else [int(b) for b in args.batches.split(",")]
    repeats = 2 if args.quick else args.repeats
    torch_ok, threads, torch_note = False, 1, "skipped (--no-torch)"
    if not args.no_torch:
        try:
            import importlib.metadata

            import torch
            import torchjd  # noqa: F401  (the rows need it)

            threads = torch.get_num_threads() if args.quick else None
            if threads is None:
                _, torch_note = common.torch_setup(max(batches))
                threads = torch.get_num_threads()
            torch_note = (
                f"torch {torch.__version__}, torchjd {importlib.metadata.version('torchjd')}, {threads} thread(s)"
            )
            if not args.quick:
                torch_note += " (fastest of 1 and all cores)"
            torch_ok = True
        except ImportError as e:
            torch_note = f"torch rows skipped: {e} (pip install torch torchjd in the benchmark's environment)"
            print(torch_note, file=sys.stderr)
    results, data = {}, {}
    for model in models:
        x, y, data[model] = load_data(model, args.quick)
        results[model] = {}
        for b in batches:
            print(f"{model} B={b}", file=sys.stderr, flush=True)
            results[model][b] = run_cell(model, b, x, y, torch_ok, threads, repeats, args.quick)
    meta = {"data": data, "torch": torch_note, "repeats": repeats, "quick": args.quick, "lr": LR}
    record = {"meta": meta, "results": {m: {str(b): c for b, c in cells.items()} for m, cells in results.items()}}
    common.write_outputs(
        Path(args.out_dir) / "per_example",
        record,
        markdown(results, meta),
        common.provenance(started=prov_start),
    )
    return record


if __name__ == "__main__":
    main()
