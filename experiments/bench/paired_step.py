"""Step time of equal / mgda / mgda@representation at K = 2 and 10 (Multi-LeNet, batch 256) for the jmtl on
sys.path (run it once with the old tree and once with the new one, alternating: results/bench/step_paired_before_after.md);
prints JSON {config: {wall_ms, cpu_ms}}."""

from __future__ import annotations

import json
import sys
import time

import jax
import numpy as np
import optax

from jmtl import weighting
from jmtl.models import mtl
from jmtl.tasks import Task
from jmtl.training import step as step_lib


def main() -> None:
    out = {}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 28, 28, 1)).astype(np.float32)
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    for k in (2, 10):
        tasks = tuple(Task(f"t{i}", "classification", 10) for i in range(k))
        batch = {"image": x, **{t.name: rng.integers(0, 10, 256).astype(np.int32) for t in tasks}}
        model = mtl.build(tasks, encoder="multi_lenet")
        for name, method, mode in (
            ("equal", "equal", "params"),
            ("mgda", "mgda", "params"),
            ("mgda_rep", "mgda", "representation"),
        ):
            w = weighting.get(method)
            cfg = step_lib.StepConfig(input_key="image", jacobian_mode=mode, jacobian_chunk_size=1)
            state = step_lib.init_state(model, w, optax.adam(1e-3), x[:1], k, 0)
            step = jax.jit(step_lib.make_train_step(model, tasks, w, optax.adam(1e-3), cfg), donate_argnums=0)
            state, m = step(state, batch)
            jax.block_until_ready(m)
            state, m = step(state, batch)
            jax.block_until_ready(m)
            ts, cs = [], []
            for _ in range(reps):
                t0, c0 = time.perf_counter(), time.process_time()
                state, m = step(state, batch)
                jax.block_until_ready(m)
                ts.append(time.perf_counter() - t0)
                cs.append(time.process_time() - c0)
            out[f"{name}/K={k}"] = {"wall_ms": 1000 * float(np.median(ts)), "cpu_ms": 1000 * float(np.median(cs))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
