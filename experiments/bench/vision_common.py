"""What the vision benchmarks share: NYUv2-shaped generated batches, the three pixel tasks and one
compiled jmtl SegNet train step (``experiments/bench/segnet_full_size.py``, ``gpu_vision.py``).

The pixel tasks use jmtl's task kinds ``segmentation`` / ``depth`` / ``normal`` when
:mod:`jmtl.tasks` has them; otherwise ``custom`` tasks with the same losses (MTAN's
``model_fit``: pixel cross-entropy ignoring label -1; L1 on pixels whose depth is not 0;
1 - cosine of the L2-normalised prediction on pixels whose normal is not the zero vector), each a
per-image mean over its valid pixels. :func:`pixel_tasks` says which it used.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

NYU_CLASSES = 13
# MTAN's SegNet task names in the benchmark (jmtl.data's nyuv2 labels).
TASK_NAMES = ("segmentation", "depth", "normal")


def _seg_loss(outputs, labels):
    import jax
    import jax.numpy as jnp

    valid = labels >= 0
    logp = jax.nn.log_softmax(outputs.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0), axis=(1, 2)) / jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1)


def _depth_loss(outputs, labels):
    import jax.numpy as jnp

    valid = (labels != 0).astype(jnp.float32)
    err = jnp.abs(outputs.astype(jnp.float32) - labels) * valid
    return jnp.sum(err, axis=(1, 2, 3)) / jnp.maximum(jnp.sum(valid, axis=(1, 2, 3)), 1.0)


def _normal_loss(outputs, labels):
    import jax.numpy as jnp

    o = outputs.astype(jnp.float32)
    o = o / jnp.maximum(jnp.linalg.norm(o, axis=-1, keepdims=True), 1e-12)
    valid = jnp.any(labels != 0, axis=-1).astype(jnp.float32)
    cos = jnp.sum(o * labels, axis=-1)
    return jnp.sum((1.0 - cos) * valid, axis=(1, 2)) / jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1.0)


def pixel_tasks() -> tuple[tuple, str]:
    """The three NYUv2 tasks and a note saying whether jmtl's pixel kinds or custom tasks gave them."""
    from jmtl import tasks as tasks_lib
    from jmtl.tasks import Metric, Task

    if all(k in tasks_lib.KINDS for k in TASK_NAMES):
        tasks = (
            Task("segmentation", "segmentation", NYU_CLASSES),
            Task("depth", "depth", 1),
            Task("normal", "normal", 3),
        )
        return tasks, "jmtl's pixel task kinds (segmentation, depth, normal)"
    losses = {"segmentation": _seg_loss, "depth": _depth_loss, "normal": _normal_loss}
    outs = {"segmentation": NYU_CLASSES, "depth": 1, "normal": 3}
    tasks = tuple(
        Task(n, "custom", outs[n], loss_fn=losses[n], custom_metrics=(Metric("loss", losses[n], False),))
        for n in TASK_NAMES
    )
    return tasks, (
        "custom tasks with MTAN's pixel losses (jmtl's segmentation/depth/normal kinds were not "
        "merged into this branch when it ran)"
    )


def make_batch(batch_size: int, height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """NYUv2-shaped generated data: image in [0, 1], 13-class labels with ~5 % ignored (-1), depth with
    ~5 % invalid (0), unit normals with ~5 % invalid (zero vector)."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, height, width)
    seg = rng.integers(0, NYU_CLASSES, shape).astype(np.int32)
    seg[rng.random(shape) < 0.05] = -1
    depth = rng.uniform(0.5, 10.0, shape + (1,)).astype(np.float32)
    depth[rng.random(shape + (1,)) < 0.05] = 0.0
    normal = rng.normal(size=shape + (3,)).astype(np.float32)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    normal[rng.random(shape) < 0.05] = 0.0
    image = rng.random(shape + (3,), dtype=np.float32)
    return {"image": image, "segmentation": seg, "depth": depth, "normal": normal}


# SegNet widths of the CPU smoke runs (gpu_vision --tiny, segnet_full_size --tiny).
TINY_FILTERS = (4, 8, 8, 8, 8)


def segnet_model(tasks, arch: str = "hps", filters=None):
    """SegNet (``hps``: MTAN's split baseline, or ``mtan_segnet``) with MTAN's pixel heads. Built from
    the parts, so ``custom`` pixel tasks get :class:`jmtl.models.heads.PixelHead` too."""
    from jmtl.models import architectures, heads, vision
    from jmtl.models.base import TaskHeads

    th = TaskHeads(names=tuple(t.name for t in tasks), heads=tuple(heads.PixelHead(t.num_outputs) for t in tasks))
    encoder = vision.SegNet() if filters is None else vision.SegNet(filters=tuple(filters))
    return architectures.build(arch, encoder=encoder, heads=th)


def jmtl_step(
    method: str,
    batch: dict,
    *,
    mode: str = "params",
    chunk: int = -1,
    compute_dtype: Optional[str] = None,
    arch: str = "hps",
    lr: float = 1e-4,
    filters=None,
    batches: Optional[list] = None,
):
    """One compiled, donated jmtl train step of SegNet on ``batch`` (Adam, MTAN's lr 1e-4).

    Returns:
      ``(call, info)``: a zero-argument callable running one step and blocking on it; ``info`` has
      the gradient path, the chunk size used, compile seconds, XLA's memory analysis (MiB) and the
      note on the tasks. With ``batches`` (several batches of ``batch``'s shapes) each call trains
      on the next one, cycling (training rather than repeating one batch).
    """
    import jax
    import jax.numpy as jnp
    import optax

    from experiments.bench.common import memory_mib
    from jmtl import weighting
    from jmtl.training import step as step_lib

    tasks, note = pixel_tasks()
    model = segnet_model(tasks, arch, filters)
    transform = weighting.get(method)
    opt = optax.adam(lr)
    x0 = jnp.zeros((1,) + batch["image"].shape[1:], jnp.float32)
    # Initialised under jit: eagerly, every one of SegNet's init ops compiles on its own (minutes on CPU).
    state = jax.jit(lambda x: step_lib.init_state(model, transform, opt, x, len(tasks), seed=0))(x0)
    cfg = step_lib.StepConfig(
        input_key="image", jacobian_mode=mode, jacobian_chunk_size=chunk, compute_dtype=compute_dtype
    )
    jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
    step = step_lib.make_train_step(model, tasks, transform, opt, cfg)
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=0).lower(state, jbatch).compile()
    compile_s = time.perf_counter() - t0
    holder = [state]
    feed = [jbatch] + [{k: jnp.asarray(v) for k, v in b.items()} for b in (batches or [])]
    count = [0]

    def call():
        b = feed[count[0] % len(feed)]
        count[0] += 1
        holder[0], metrics = compiled(holder[0], b)
        jax.block_until_ready(holder[0])
        return metrics

    info = {
        "gradient_path": step.gradient_path,
        "chunk_size": cfg.resolved_chunk_size,
        "compile_s": compile_s,
        "memory_mib": memory_mib(compiled),
        "tasks": note,
        "method": method,
        "jacobian_mode": mode,
    }
    return call, info
