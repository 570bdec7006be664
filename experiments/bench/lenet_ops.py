"""Which JAX formulation of Multi-LeNet's conv/pool layers is fastest on this CPU?

Times the forward+backward pass (``jit(value_and_grad)`` of the summed two-task loss, batch 256,
after warm-up, ``block_until_ready``) of the Multi-LeNet model under several formulations of its
convolutions and max-pools, and the plain PyTorch forward+backward in the same process, all
round-robin so that the load of a shared machine hits every variant alike. Then the full train
steps (equal weighting; per-task gradients + mean) against their PyTorch counterparts.

Writes ``results/bench/bench_lenet_ops.json`` and ``.md`` (with their provenance).

    python -m experiments.bench.lenet_ops [--repeats 40] [--quick] [--xla-flags-sweep]

torch is optional (``experiments/bench/requirements.txt``): without it the torch rows are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from experiments.bench.common import RESULTS, ROOT, cpu_model, load_average, time_round_robin, write_outputs
from jmtl.models.layers import Conv, max_pool_2x2

try:
    import torch

    from experiments.bench import torch_reference as tref
except ImportError:  # torch is a benchmark-only extra
    torch = None
    tref = None

BATCH = 256
NUM_TASKS = 2
Timed = Tuple[Callable[..., Any], Tuple[Any, ...]]  # (function, its arguments)

# ------------------------------------------------------------------------------------------
# Formulations
# ------------------------------------------------------------------------------------------


def conv_patches(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """VALID conv as ``conv_general_dilated_patches`` (im2col, feature order (cin, kh, kw)) + dot."""
    kh, kw, cin, cout = kernel.shape
    p = lax.conv_general_dilated_patches(x, (kh, kw), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.dot(p, kernel.transpose(2, 0, 1, 3).reshape(cin * kh * kw, cout))


def conv_nchw(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """VALID ``lax`` conv with NCHW activations (the PyTorch layout)."""
    return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NCHW", "HWIO", "NCHW"))


class FnConv(nn.Module):
    """A conv with ``nn.Conv``'s params and initialisers around a functional formulation."""

    features: int
    kernel_size: int
    fn: Callable[[jax.Array, jax.Array], jax.Array]
    nchw: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cin = x.shape[1] if self.nchw else x.shape[-1]
        k = self.param("kernel", nn.initializers.lecun_normal(), (self.kernel_size,) * 2 + (cin, self.features))
        b = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        y = self.fn(x, k)
        return y + (b[:, None, None] if self.nchw else b)


def pool_reduce_window(x: jax.Array) -> jax.Array:
    """Flax's max-pool (``reduce_window``; gradient = ``select_and_scatter``)."""
    return nn.max_pool(x, (2, 2), (2, 2))


def pool_reshape_max(x: jax.Array) -> jax.Array:
    """Max over the two window axes of a reshape (gradient: eq-mask / tie count)."""
    b, h, w, c = x.shape
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def pool_nchw(x: jax.Array) -> jax.Array:
    """Reshape-max pool for NCHW activations."""
    b, c, h, w = x.shape
    return jnp.max(x.reshape(b, c, h // 2, 2, w // 2, 2), axis=(3, 5))


def pool_pairwise_maximum(x: jax.Array) -> jax.Array:
    """Two ``jnp.maximum`` of reshaped halves (gradient splits ties 50/50: extra mask math)."""
    b, h, w, c = x.shape
    r = x.reshape(b, h // 2, 2, w, c)
    x = jnp.maximum(r[:, :, 0], r[:, :, 1])
    r = x.reshape(b, h // 2, w // 2, 2, c)
    return jnp.maximum(r[:, :, :, 0], r[:, :, :, 1])


POOLS: Dict[str, Callable[[jax.Array], jax.Array]] = {
    "reduce_window": pool_reduce_window,
    "reshape_max": pool_reshape_max,
    "maximum": pool_pairwise_maximum,
    "pairwise": max_pool_2x2,  # layers.py: pairwise, where-select, first maximum wins
}


def make_conv(kind: str, features: int, block_width: Optional[int], name: str) -> nn.Module:
    """The conv module of formulation ``kind`` (all have nn.Conv's params)."""
    if kind == "lax":
        return nn.Conv(features, (5, 5), padding="VALID", name=name)
    if kind == "toeplitz":
        return Conv(features, (5, 5), padding="VALID", block_width=block_width, name=name)
    if kind == "patches":
        return FnConv(features, 5, conv_patches, name=name)
    if kind == "nchw":
        return FnConv(features, 5, conv_nchw, nchw=True, name=name)
    raise ValueError(kind)


class MultiLeNet(nn.Module):
    """Multi-LeNet with a choice of conv/pool formulation per layer.

    ``convs``: formulation of conv1 and conv2; ``pool``: a key of POOLS (ignored for NCHW);
    ``relu_first``: relu before the pool (same values: relu and max commute).
    """

    convs: Tuple[str, str] = ("lax", "lax")
    pool: str = "reduce_window"
    relu_first: bool = False
    block_widths: Tuple[Optional[int], Optional[int]] = (None, None)
    num_tasks: int = NUM_TASKS

    def _pool_relu(self, x: jax.Array) -> jax.Array:
        pool = pool_nchw if self.convs[0] == "nchw" else POOLS[self.pool]
        return pool(nn.relu(x)) if self.relu_first else nn.relu(pool(x))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> List[jax.Array]:
        nchw = self.convs[0] == "nchw"
        x = make_conv(self.convs[0], 10, self.block_widths[0], "conv1")(x)
        x = self._pool_relu(x)
        x = make_conv(self.convs[1], 20, self.block_widths[1], "conv2")(x)
        # Channel dropout (Dropout2d in the authors' code): one mask entry per (image, channel).
        x = nn.Dropout(0.5, broadcast_dims=(2, 3) if nchw else (1, 2), deterministic=not train)(x)
        x = self._pool_relu(x)
        z = nn.relu(nn.Dense(50, name="fc")(x.reshape(x.shape[0], -1)))
        logits = []
        for k in range(self.num_tasks):
            h = nn.relu(nn.Dense(50, name=f"head{k}_fc1")(z))
            h = nn.Dropout(0.5, deterministic=not train)(h)
            logits.append(nn.Dense(10, name=f"head{k}_fc2")(h))
        return logits


def task_losses(model: MultiLeNet, params, x, ys, key) -> jax.Array:
    """[K] mean softmax cross-entropies."""
    logits = model.apply(params, x, rngs={"dropout": key})
    return jnp.stack([optax.softmax_cross_entropy_with_integer_labels(l, y).mean() for l, y in zip(logits, ys)])


def fwd_bwd_fn(model: MultiLeNet) -> Callable:
    """jit(value_and_grad) of the summed task losses."""
    return jax.jit(jax.value_and_grad(lambda p, x, ys, key: task_losses(model, p, x, ys, key).sum()))


# name -> (convs, pool, relu_first, block_widths)
FORMULATIONS: Dict[str, Tuple[Tuple[str, str], str, bool, Tuple[Optional[int], Optional[int]]]] = {
    "nn.Conv + nn.max_pool (flax default)": (("lax", "lax"), "reduce_window", False, (None, None)),
    "nn.Conv + reshape-max": (("lax", "lax"), "reshape_max", False, (None, None)),
    "nn.Conv + pairwise jnp.maximum": (("lax", "lax"), "maximum", False, (None, None)),
    "nn.Conv + max_pool_2x2": (("lax", "lax"), "pairwise", False, (None, None)),
    "NCHW lax.conv + reshape-max": (("nchw", "nchw"), "reshape_max", False, (None, None)),
    "patches+dot conv1, nn.Conv conv2 + max_pool_2x2": (("patches", "lax"), "pairwise", False, (None, None)),
    "patches+dot both + max_pool_2x2": (("patches", "patches"), "pairwise", False, (None, None)),
    "toeplitz + nn.max_pool": (("toeplitz", "toeplitz"), "reduce_window", False, (None, None)),
    "toeplitz + reshape-max": (("toeplitz", "toeplitz"), "reshape_max", False, (None, None)),
    "toeplitz + pairwise jnp.maximum": (("toeplitz", "toeplitz"), "maximum", False, (None, None)),
    "toeplitz + max_pool_2x2 (layers.py)": (("toeplitz", "toeplitz"), "pairwise", False, (None, None)),
    "toeplitz + max_pool_2x2, relu before pool": (("toeplitz", "toeplitz"), "pairwise", True, (None, None)),
    "toeplitz wb=(4,2) + max_pool_2x2": (("toeplitz", "toeplitz"), "pairwise", False, (4, 2)),
    "toeplitz wb=(4,4) + max_pool_2x2": (("toeplitz", "toeplitz"), "pairwise", False, (4, 4)),
    "toeplitz wb=(24,8) (full rows) + max_pool_2x2": (("toeplitz", "toeplitz"), "pairwise", False, (24, 8)),
    "toeplitz wb=(1,1) (im2col by slices) + max_pool_2x2": (("toeplitz", "toeplitz"), "pairwise", False, (1, 1)),
}
BASELINE = "nn.Conv + nn.max_pool (flax default)"
WINNER = "toeplitz + max_pool_2x2 (layers.py)"
QUICK = [BASELINE, "nn.Conv + max_pool_2x2", WINNER]


def make_batch(nchw: bool = False, seed: int = 0) -> Tuple[jax.Array, jax.Array]:
    """Random MultiMNIST-shaped batch: x [B,28,28,1] (or NCHW) and labels [K,B]."""
    rng = np.random.default_rng(seed)
    x = rng.random((BATCH, 28, 28, 1), dtype=np.float32)
    ys = rng.integers(0, 10, (NUM_TASKS, BATCH))
    return jnp.asarray(x.transpose(0, 3, 1, 2) if nchw else x), jnp.asarray(ys)


def jax_fwd_bwd_cases(names: Sequence[str]) -> Tuple[Dict[str, Timed], Dict[str, float]]:
    """Compiled fwd+bwd per formulation, and each one's max |grad - baseline grad| (NHWC ones).

    All formulations share one params tree (same names/shapes), so the check is exact: same
    loss and gradients up to float rounding. NCHW flattens in another order: not comparable.
    """
    key = jax.random.key(1)
    ref_model = MultiLeNet()
    x, ys = make_batch()
    params = ref_model.init(jax.random.key(0), x, train=False)
    _, ref_grads = fwd_bwd_fn(ref_model)(params, x, ys, key)
    cases, errors = {}, {}
    for name in names:
        convs, pool, relu_first, wbs = FORMULATIONS[name]
        model = MultiLeNet(convs, pool, relu_first, wbs)
        fn = fwd_bwd_fn(model)
        if convs[0] == "nchw":
            xn, _ = make_batch(nchw=True)
            cases[name] = (fn, (params, xn, ys, key))
            continue
        _, grads = fn(params, x, ys, key)
        errors[name] = max(
            float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads))
        )
        cases[name] = (fn, (params, x, ys, key))
    return cases, errors


# ------------------------------------------------------------------------------------------
# Train steps (the acceptance criterion)
# ------------------------------------------------------------------------------------------


def jax_step_cases(name: str) -> Dict[str, Timed]:
    """Adam train steps of formulation ``name``: (a) equal weighting, (b) per-task grads + mean.

    (b) mirrors how jmtl's gradient schemes get the [K, d] Jacobian: one ``jax.vjp`` and a
    ``vmap`` over one-hot cotangents; the shared params get the mean of the task rows, each head
    its own task's gradient (the sum over tasks, as in torch_reference.per_task_gradient_step).
    """
    convs, pool, relu_first, wbs = FORMULATIONS[name]
    model = MultiLeNet(convs, pool, relu_first, wbs)
    x, ys = make_batch()
    params = model.init(jax.random.key(0), x, train=False)
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)
    key = jax.random.key(1)

    @jax.jit
    def step_equal(params, opt_state, x, ys, key):
        loss, g = jax.value_and_grad(lambda p: task_losses(model, p, x, ys, key).sum())(params)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def per_task_step(jacobian: Callable) -> Callable:
        """Step (b) with ``jacobian(vjp, losses) -> per-task grads (leaves [K, ...])``."""

        @jax.jit
        def step(params, opt_state, x, ys, key):
            losses, vjp = jax.vjp(lambda p: task_losses(model, p, x, ys, key), params)
            jac = jacobian(vjp, losses)
            shared = {"conv1", "conv2", "fc"}
            g = {
                "params": {
                    mod: jax.tree.map(lambda j, m=mod: j.mean(0) if m in shared else j.sum(0), sub)
                    for mod, sub in jac["params"].items()
                }
            }
            updates, opt_state = tx.update(g, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, losses

        return step

    def jac_vmap(vjp, losses):
        return jax.vmap(vjp)(jnp.eye(NUM_TASKS, dtype=losses.dtype))[0]

    def jac_unrolled(vjp, losses):
        # K separate backward passes sharing one forward, like torch's retain_graph loop.
        rows = [vjp(jnp.eye(NUM_TASKS, dtype=losses.dtype)[k])[0] for k in range(NUM_TASKS)]
        return jax.tree.map(lambda *r: jnp.stack(r), *rows)

    # The steps return new params; timing re-applies to the same inputs (same cost per call).
    args = (params, opt_state, x, ys, key)
    return {
        f"jax step (a) equal weighting [{name}]": (step_equal, args),
        f"jax step (b) per-task grads, vmap over one-hot cotangents [{name}]": (per_task_step(jac_vmap), args),
        f"jax step (b) per-task grads, K unrolled vjp calls [{name}]": (per_task_step(jac_unrolled), args),
    }


# ------------------------------------------------------------------------------------------
# Torch
# ------------------------------------------------------------------------------------------


def torch_cases(threads: Sequence[int]) -> Dict[str, Timed]:
    """Torch fwd+bwd at each thread count (thread counts share one round-robin)."""
    if torch is None:
        return {}
    torch.manual_seed(0)
    model = tref.MultiLeNet(NUM_TASKS).train()
    x, ys = tref.make_batch(BATCH, NUM_TASKS)

    def at(n: int, fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            torch.set_num_threads(n)  # a cheap setter; lets thread counts share one round-robin
            return fn()

        return call

    cases = {f"torch fwd+bwd ({n} thr)": (at(n, partial(tref.fwd_bwd, model, x, ys)), ()) for n in threads}
    return cases


def torch_step_cases(threads: int) -> Dict[str, Timed]:
    """Torch train steps (a) and (b) with Adam at ``threads`` threads."""
    if torch is None:
        return {}
    torch.set_num_threads(threads)
    timers = tref.reference_timers(NUM_TASKS, BATCH, "adam")
    return {
        f"torch step (a) equal weighting ({threads} thr)": (timers["torch step (a) equal weighting"], ()),
        f"torch step (b) per-task grads ({threads} thr)": (timers["torch step (b) per-task grads"], ()),
    }


# ------------------------------------------------------------------------------------------
# Timing and reporting
# ------------------------------------------------------------------------------------------


def _block(out: Any) -> None:
    """Waits for JAX results (torch calls return None and are synchronous)."""
    for leaf in jax.tree.leaves(out):
        if isinstance(leaf, jax.Array):
            leaf.block_until_ready()


def round_robin(cases: Dict[str, Timed], repeats: int, warmup: int = 3) -> Dict[str, List[float]]:
    """Seconds per call of every case (``common.time_round_robin``: each round calls every case once,
    in a shuffled order), waiting for JAX results."""
    return time_round_robin(
        {name: (lambda fn=fn, args=args: _block(fn(*args))) for name, (fn, args) in cases.items()},
        repeats,
        warmup=warmup,
    )


def summarize(samples: Dict[str, List[float]], reference: Optional[str]) -> Dict[str, Dict[str, float]]:
    """Median / p10 / p90 / IQR in ms; ratio to the reference as ratio of medians and as the
    median of per-round ratios (each round's calls ran back to back, so load drifts cancel)."""
    out = {}
    for name, s in samples.items():
        ms = 1e3 * np.asarray(s)
        row = {
            "median_ms": float(np.median(ms)),
            "p10_ms": float(np.percentile(ms, 10)),
            "p90_ms": float(np.percentile(ms, 90)),
            "iqr_ms": float(np.percentile(ms, 75) - np.percentile(ms, 25)),
            "n": len(ms),
        }
        if reference is not None:
            ref = 1e3 * np.asarray(samples[reference])
            row["ratio_of_medians"] = row["median_ms"] / float(np.median(ref))
            row["median_paired_ratio"] = float(np.median(ms / ref))
        out[name] = row
    return out


def machine_info() -> Dict[str, Any]:
    """Cores, load, versions: what the numbers depend on."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "loadavg_at_start": load_average(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "jax_backend": jax.default_backend(),
    }


# ------------------------------------------------------------------------------------------
# XLA flags (report only; the library must not depend on them)
# ------------------------------------------------------------------------------------------

FLAG_SETS = [
    "",
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_experimental_ynn_fusion_type=",  # no YNNPACK fusions: dots go to Eigen
]


def xla_flags_sweep(repeats: int) -> List[Dict[str, Any]]:
    """Re-runs the --quick table in a subprocess per XLA_FLAGS value (flags are read at start)."""
    rows = []
    for flags in FLAG_SETS:
        env = dict(os.environ, XLA_FLAGS=flags)
        cmd = [
            sys.executable,
            "-m",
            "experiments.bench.lenet_ops",
            "--quick",
            "--json-stdout",
            "--repeats",
            str(repeats),
        ]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            rows.append({"XLA_FLAGS": flags, "error": res.stderr[-2000:]})
            continue
        rows.append({"XLA_FLAGS": flags, "fwd_bwd": json.loads(res.stdout.splitlines()[-1])["fwd_bwd"]})
    return rows


# ------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------


def _table(summary: Dict[str, Dict[str, float]], errors: Dict[str, float], ref: Optional[str]) -> List[str]:
    head = "| variant | median ms | p10 / p90 ms | IQR ms |"
    sep = "|---|---:|---:|---:|"
    if ref:
        head += f" ratio vs `{ref}` (medians) | median paired ratio |"
        sep += "---:|---:|"
    if errors:
        head += " max abs grad diff vs flax default |"
        sep += "---:|"
    lines = [head, sep]
    for name, r in summary.items():
        line = f"| {name} | {r['median_ms']:.2f} | {r['p10_ms']:.2f} / {r['p90_ms']:.2f} | {r['iqr_ms']:.2f} |"
        if ref:
            line += f" {r['ratio_of_medians']:.2f} | {r['median_paired_ratio']:.2f} |"
        if errors:
            e = errors.get(name)
            line += f" {e:.1e} |" if e is not None else " - |"
        lines.append(line)
    return lines


def report_lines(result: Dict[str, Any]) -> List[str]:
    """The human-readable report."""
    m = result["machine"]
    lines = [
        "# Multi-LeNet conv/pool formulations: forward+backward on CPU",
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} cores (shared; load average at start "
        f"{', '.join(f'{v:.1f}' for v in m['loadavg_at_start'])}), jax {m['jax']}, flax {m['flax']}, "
        f"torch {m['torch']}, XLA_FLAGS='{m['XLA_FLAGS']}'.",
        "",
        f"Batch {BATCH}, NHWC [B,28,28,1] (NCHW rows: [B,1,28,28]), {NUM_TASKS} tasks, loss = sum of "
        "the softmax cross-entropies; jit(value_and_grad), warm-up, block_until_ready; "
        f"{result['repeats']} round-robin repeats of every row; torch {result['torch_threads_note']}.",
        "",
        "Formulations (all NHWC except the NCHW row; all share one params tree, checked by the last column):",
        "",
        "* **nn.Conv**: `flax.linen.Conv` (`lax.conv_general_dilated`, NHWC/HWIO).",
        "* **NCHW lax.conv**: the same conv with NCHW activations (PyTorch's layout).",
        "* **patches+dot**: `lax.conv_general_dilated_patches` (im2col) then one matmul.",
        "* **toeplitz wb=(a,b)**: `jmtl.models.layers.conv2d_toeplitz`: each group of `wb` adjacent "
        "output pixels of a row is one row of a single matmul with a block-Toeplitz matrix built "
        "from the kernel; conv1 uses `a`, conv2 `b`; no `wb` = the layers.py default (8, 4). "
        "`wb=1` is im2col by slices, `wb=output width` the full-row Toeplitz form.",
        "* **nn.max_pool**: `reduce_window` (gradient `select_and_scatter`); **reshape-max**: `jnp.max` "
        "over the window axes of a reshape; **pairwise jnp.maximum**: two `jnp.maximum` of reshaped "
        "halves (gradient splits ties); **max_pool_2x2**: layers.py, pairwise `where(a >= b)` "
        "selects (gradient = nn.max_pool's, a single select per stage).",
        "* relu after the pool unless stated (same values: relu and max commute).",
        "* ratio: median ms / median ms of the reference; median paired ratio: the median over "
        "rounds of (this row / reference) within the same round (robust to load drifts).",
        "",
        "## Forward + backward",
        "",
        *_table(result["fwd_bwd"], result["grad_check"], result["reference"]),
        "",
    ]
    if result.get("steps"):
        lines += [
            "## Train steps (Adam), one round-robin of their own",
            "",
            "(a) forward, sum of the task losses, one backward, Adam. (b) per-task gradients of "
            "the shared params ([K, d]), their mean, Adam: torch with K `backward(retain_graph)`; "
            "JAX with one `jax.vjp` and either a `vmap` over one-hot cotangents or K unrolled "
            "vjp calls.",
            "",
            *_table(result["steps"], {}, result.get("steps_reference")),
            "",
        ]
    if result.get("xla_flags"):
        lines += ["## XLA_FLAGS (each in its own process; --quick rows)", ""]
        lines += ["| XLA_FLAGS | variant | median ms | ratio vs torch (paired) |", "|---|---|---:|---:|"]
        for row in result["xla_flags"]:
            if "error" in row:
                lines.append(f"| `{row['XLA_FLAGS']}` | error | - | - |")
                continue
            for name, r in row["fwd_bwd"].items():
                ratio = r.get("median_paired_ratio")
                lines.append(
                    f"| `{row['XLA_FLAGS'] or '(none)'}` | {name} | {r['median_ms']:.2f} | "
                    f"{'-' if ratio is None else f'{ratio:.2f}'} |"
                )
        lines.append("")
    return lines


def _pick_threads(samples: Dict[str, List[float]], threads: Sequence[int]) -> Optional[int]:
    """The project rule: as many threads as cores unless fewer are faster (lower median)."""
    medians = {
        n: statistics.median(samples[f"torch fwd+bwd ({n} thr)"])
        for n in threads
        if f"torch fwd+bwd ({n} thr)" in samples
    }
    if not medians:
        return None
    return min(medians, key=lambda n: (medians[n], -n))


def run(repeats: int, quick: bool, threads: Sequence[int], steps: bool) -> Dict[str, Any]:
    """Both tables: fwd+bwd formulations (+ torch), then train steps (+ torch)."""
    names = QUICK if quick else list(FORMULATIONS)
    cases, errors = jax_fwd_bwd_cases(names)
    if torch is None:
        print(
            "torch not installed: skipping the PyTorch reference rows "
            "(pip install -r experiments/bench/requirements.txt)",
            file=sys.stderr,
        )
    samples = round_robin({**cases, **torch_cases(threads)}, repeats)
    best = _pick_threads(samples, threads)
    reference = f"torch fwd+bwd ({best} thr)" if best is not None else None
    result: Dict[str, Any] = {
        "machine": machine_info(),
        "repeats": repeats,
        "batch_size": BATCH,
        "num_tasks": NUM_TASKS,
        "reference": reference,
        "torch_threads": best,
        "torch_threads_note": (
            f"threads tried {list(threads)} in the same round-robin, chose {best} (fastest median)"
            if best is not None
            else "not installed"
        ),
        "fwd_bwd": summarize(samples, reference),
        "grad_check": errors,
    }
    if steps:
        step_cases = jax_step_cases(WINNER)
        tsteps = torch_step_cases(best) if best is not None else {}
        ssamples = round_robin({**step_cases, **tsteps}, repeats)
        sref = f"torch step (a) equal weighting ({best} thr)" if tsteps else None
        result["steps"] = summarize(ssamples, sref)
        result["steps_reference"] = sref
    return result


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40, help="round-robin rounds (>= 30)")
    parser.add_argument("--quick", action="store_true", help="only " + ", ".join(QUICK))
    parser.add_argument("--no-steps", action="store_true", help="skip the train-step table")
    parser.add_argument("--xla-flags-sweep", action="store_true", help="also time --quick under XLA_FLAGS sets")
    parser.add_argument("--json-stdout", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "bench_lenet_ops"), help="path prefix of the .json and .md")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    threads = sorted({1, cores}, reverse=True)
    result = run(args.repeats, args.quick, threads, steps=not (args.no_steps or args.json_stdout))
    if args.json_stdout:  # child of --xla-flags-sweep: results go to the parent
        print(json.dumps(result))
        return
    if args.xla_flags_sweep:
        result["xla_flags"] = xla_flags_sweep(args.repeats)
    write_outputs(Path(args.out), result, report_lines(result))


if __name__ == "__main__":
    main()
