"""Runs 20 steps with the single-device, shard_map and pmap drivers; prints relative param errors as JSON.

Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=N (the count must be fixed
before jax starts). Arguments: comma-separated weighting schemes, each ``name[@rep][:cN]``
(``@rep``: representation-level Jacobian; ``:cN``: ``jacobian_chunk_size=N``), then the problem
(``lenet`` or ``mlp``). A chunked method is also compared with the unchunked 1-device run
(``<method>/vs_unchunked``). Several groups in one interpreter (the tests share one start-up):
``--groups METHODS@@PROBLEM ...`` prints ``RESULT {"METHODS@@PROBLEM": {...}, ...}``.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jmtl import weighting
from jmtl.models import mtl
from jmtl.tasks import Task
from jmtl.training import parallel
from jmtl.training import step as step_lib


def run(method: str, kind: str, batches, tasks, model, input_key="image", example=None):
    """``method`` is a scheme name, optionally ``name@rep`` for the representation-level mode and
    ``:cN`` for Jacobian chunks of N tasks. Returns the final params, the device count and the
    initial params (host copies)."""
    method, _, chunk = method.partition(":c")
    method, _, mode = method.partition("@")
    # auto_lambda's look-ahead step defaults to the optimizer's learning rate (filled in by builders).
    transform = weighting.get(method, **({"lookahead_lr": 1e-3} if method == "auto_lambda" else {}))
    opt = optax.adam(1e-3)
    if transform.requires == weighting.BILEVEL:  # the upper level's batch: the next batch
        batches = [
            {**b, **{step_lib.META_PREFIX + key: v for key, v in batches[(i + 1) % len(batches)].items()}}
            for i, b in enumerate(batches)
        ]
    driver = parallel.Driver(kind)
    example = jnp.zeros((1, 28, 28, 1)) if example is None else example
    state = driver.replicate(step_lib.init_state(model, transform, opt, example, len(tasks), seed=0))
    init = jax.tree.map(np.array, driver.unreplicate(state.params))  # copied before the steps donate them
    cfg = step_lib.StepConfig(
        penalties=(mtl.relation_penalty(1e-3),),
        input_key=input_key,
        jacobian_mode="representation" if mode == "rep" else "params",
        jacobian_chunk_size=int(chunk or 0),
    )
    fn = driver.compile_step(lambda ax: step_lib.make_train_step(model, tasks, transform, opt, cfg, axis_name=ax))
    for b in batches:
        state, _ = fn(state, driver.shard_batch(b))
    return driver.unreplicate(state.params), driver.num_devices, init


def lenet_problem():
    tasks = (Task("left", "classification", 10), Task("right", "classification", 10))
    # No dropout: the devices draw different masks than one device would.
    model = mtl.build(
        tasks,
        encoder="multi_lenet",
        encoder_kwargs=dict(dropout_rate=0.0),
        head_kwargs=dict(dropout_rate=0.0),
        relation=True,
    )
    rng = np.random.default_rng(0)
    batches = [
        dict(
            image=rng.normal(size=(64, 28, 28, 1)).astype(np.float32),
            left=rng.integers(0, 10, 64).astype(np.int32),
            right=rng.integers(0, 10, 64).astype(np.int32),
        )
        for _ in range(20)
    ]
    return tasks, model, batches, "image", jnp.zeros((1, 28, 28, 1))


def mlp_problem():
    """Three regression tasks with partly conflicting targets on a small MLP (cheap to compile)."""
    tasks = tuple(Task(f"t{i}", "regression", 2) for i in range(3))
    model = mtl.build(
        tasks, encoder="mlp", encoder_kwargs=dict(features=(32, 32)), head_kwargs=dict(hidden=16), relation=True
    )
    rng = np.random.default_rng(0)
    ws = rng.normal(size=(3, 8, 2))
    ws[1] = -0.5 * ws[0] + 0.5 * ws[1]
    batches = []
    for _ in range(20):
        x = rng.normal(size=(64, 8)).astype(np.float32)
        batches.append({"x": x, **{f"t{i}": np.tanh(x @ ws[i]).astype(np.float32) for i in range(3)}})
    return tasks, model, batches, "x", jnp.zeros((1, 8))


def main():
    if sys.argv[1] == "--groups":
        groups = [g.split("@@") for g in sys.argv[2:]]
        print("RESULT " + json.dumps({f"{m}@@{p}": agreement(m.split(","), p) for m, p in groups}))
    else:
        print("RESULT " + json.dumps(agreement(sys.argv[1].split(","), sys.argv[2] if len(sys.argv) > 2 else "lenet")))


def agreement(methods, problem):
    tasks, model, batches, input_key, example = {"lenet": lenet_problem, "mlp": mlp_problem}[problem]()
    out = {"device_count": jax.device_count()}
    for method in methods:
        ref, _, init = run(method, "single", batches, tasks, model, input_key, example)
        for kind in ("shard_map", "pmap"):
            params, n, _ = run(method, kind, batches, tasks, model, input_key, example)
            rel = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12)), params, ref)
            moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params, init)
            out[f"{method}/{kind}"] = {"max_rel_err": max(jax.tree.leaves(rel)), "devices": n}
        out[f"{method}/moved"] = max(jax.tree.leaves(moved))
        if ":c" in method:
            unchunked, _, _ = run(method.partition(":c")[0], "single", batches, tasks, model, input_key, example)
            rel = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-12)), ref, unchunked)
            out[f"{method}/vs_unchunked"] = max(jax.tree.leaves(rel))
    return out


if __name__ == "__main__":
    main()
