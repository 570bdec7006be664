"""What every benchmark shares: the PyTorch reference's set-up, a compiled Multi-LeNet step and XLA's
memory analysis; the timer (:mod:`experiments.timing`) and provenance / output writing
(:mod:`experiments.results_io`) are re-exported from the modules the experiment scripts share.

``jax`` is imported lazily, so :mod:`experiments.bench.torch_reference` can use the timer without it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments.results_io import (  # noqa: F401  (re-exported for the benchmarks)
    CODE_MARKS,
    CODE_NOTE,
    CODE_RECORD,
    PROVENANCE_MARK,
    _git,
    cell_code,
    code_mark,
    code_of,
    code_state,
    cpu_model,
    index_figure,
    load_average,
    machine,
    provenance,
    provenance_markdown,
    record_code_start,
    started_now,
    write_outputs,
)
from experiments.timing import fmt, spread, spread_of, time_round_robin  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results" / "bench"


def torch_setup(batch_size: int, enabled: bool = True):
    """The PyTorch reference and a note on it: ``(torch_reference module or None, note)``.

    Picks the thread count the project rule asks for: as many threads as cores unless fewer are
    measurably faster (fastest median of fwd+bwd over 1 and ``os.cpu_count()`` threads).

    Args:
      batch_size: batch of the thread-choice timing.
      enabled: False skips PyTorch (``--no-torch``); default True.
    """
    if not enabled:
        return None, "PyTorch rows skipped (--no-torch)"
    try:
        import torch

        from experiments.bench import torch_reference
    except ImportError:
        note = "PyTorch not installed: pip install -r experiments/bench/requirements.txt"
        print(note, file=sys.stderr)
        return None, note
    threads = torch_reference.choose_num_threads(sorted({1, os.cpu_count() or 1}), batch_size, repeats=10)
    best = min(threads, key=threads.get)
    torch.set_num_threads(best)
    return torch_reference, f"torch {torch.__version__}, {best} thread(s) (fastest of {sorted(threads)})"


def lenet_step(method, batch_size: int, num_tasks: int = 2, mode: str = "params", chunk: int = 0):
    """One compiled, donated jmtl train step of Multi-LeNet on a fixed random MultiMNIST-shaped batch.

    Args:
      method: a weighting scheme name or a ``WeightingTransform``.
      batch_size: images per batch ([28, 28, 1] each).
      num_tasks: K heads on the one encoder (default 2).
      mode: ``StepConfig.jacobian_mode``, ``"params"`` (default) or ``"representation"``.
      chunk: ``StepConfig.jacobian_chunk_size`` (0 = all K rows in one vmap, the default).

    Returns:
      ``(call, compile_s, memory)``: a zero-argument callable running one step (blocking on it),
      the seconds lowering + compiling took, and XLA's memory analysis in MiB (or None).
    """
    import jax
    import jax.numpy as jnp
    import optax

    from jmtl import weighting
    from jmtl.models import mtl
    from jmtl.tasks import Task
    from jmtl.training import step as step_lib

    tasks = tuple(Task(f"task{k}", "classification", 10) for k in range(num_tasks))
    model = mtl.build(tasks, encoder="multi_lenet")
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.normal(size=(batch_size, 28, 28, 1)), jnp.float32)}
    for t in tasks:
        batch[t.name] = jnp.asarray(rng.integers(0, 10, batch_size), jnp.int32)
    transform = weighting.get(method) if isinstance(method, str) else method
    if transform.requires == weighting.BILEVEL:  # the upper-level (meta) batch: another batch
        batch.update({step_lib.META_PREFIX + key: jnp.roll(v, 1, axis=0) for key, v in batch.items()})
    opt = optax.adam(1e-3)
    state = step_lib.init_state(model, transform, opt, jnp.zeros((1, 28, 28, 1)), num_tasks, seed=0)
    cfg = step_lib.StepConfig(input_key="image", jacobian_mode=mode, jacobian_chunk_size=chunk)
    t0 = time.perf_counter()
    compiled = (
        jax.jit(step_lib.make_train_step(model, tasks, transform, opt, cfg), donate_argnums=0)
        .lower(state, batch)
        .compile()
    )
    compile_s = time.perf_counter() - t0
    holder = [state]

    def call():
        holder[0], _ = compiled(holder[0], batch)
        jax.block_until_ready(holder[0])

    call()
    call.compiled = compiled  # for XLA's cost and memory analyses (experiments.bench.lenet_floor)
    return call, compile_s, memory_mib(compiled)


MIB = 2**20


def memory_mib(compiled) -> dict | None:
    """XLA's memory analysis of a compiled executable, in MiB (None where the backend gives none)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    if m is None:
        return None
    get = lambda name: float(getattr(m, name, 0) or 0) / MIB
    out = {
        "temp_mib": get("temp_size_in_bytes"),
        "argument_mib": get("argument_size_in_bytes"),
        "output_mib": get("output_size_in_bytes"),
        "alias_mib": get("alias_size_in_bytes"),
    }
    out["peak_mib"] = out["argument_mib"] + out["output_mib"] - out["alias_mib"] + out["temp_mib"]
    return out


def output_path(parser, args, default) -> str:
    """``--out``, or the committed results file ``default``; a smoke run (``--tiny``) must name its
    own ``--out``, so it never replaces the real result with a tiny one."""
    if args.out is not None:
        return str(args.out)
    if getattr(args, "tiny", False):
        parser.error(f"--tiny writes a smoke result: pass --out (the default {default} holds the real run's result)")
    return str(default)


def run_in_xla_setting(module: str, name: str, flags: str, argv: Sequence[str]) -> dict:
    """Runs ``python -m <module> <argv> --child_out FILE`` in a fresh process whose ``XLA_FLAGS`` are
    the caller's plus ``flags`` (XLA reads them once per process, so each setting needs its own), and
    returns the JSON the child wrote, with ``xla_flags``. A child that fails (e.g. a jaxlib that does
    not know a flag stops the process) gives ``{"xla_flags", "error", "exit"}`` instead of raising, so
    the other settings still run; ``name`` labels the printed failure.
    """
    import json
    import subprocess
    import tempfile

    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), flags) if f)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "child.json")
        cmd = [sys.executable, "-m", module, *argv, "--child_out", out]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            print(f"{name}: the child process failed (exit {proc.returncode}): {' / '.join(tail)}", flush=True)
            return {"xla_flags": env["XLA_FLAGS"], "error": " / ".join(tail), "exit": proc.returncode}
        with open(out) as f:
            return {"xla_flags": env["XLA_FLAGS"], **json.load(f)}


def parse_settings(parser, text: str, settings: Sequence[str], flag: str = "--settings") -> list[str]:
    """The names (comma-separated) a benchmark's ``flag`` takes (``--settings`` of a per-XLA-setting
    benchmark, ``--models``, ...); unknown or none is the parser's one-line error naming the valid ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in settings]
    if unknown or not names:
        parser.error(f"unknown {flag} {unknown}; valid: {', '.join(settings)}")
    return names
