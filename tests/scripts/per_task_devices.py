"""Per-task inputs on 8 devices: jmtl.fit under shard_map and pmap equals the 1-device run.

Prints ``RESULT {"max_abs_diff": {driver: {method: float}}, "devices": n}``.
"""

import json
import sys
import tempfile

import flax.linen as nn
import jax
import numpy as np
import optax

import jmtl
from experiments.examples.fit_your_model import TASKS, make_split


class Model(nn.Module):
    """The example's model without dropout (dropout keys differ per device, so runs would differ)."""

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        h = nn.relu(nn.Dense(32, name="trunk")(x))
        return {
            "kind": nn.Dense(4, name="kind_head")(h),
            "price": nn.Dense(1, name="price_head")(h)[:, 0],
            "sold": nn.Dense(1, name="sold_head")(h)[:, 0],
        }


def run(method: str, parallel: str, workdir: str):
    rng = np.random.default_rng(0)
    split = lambda n: {t.name: make_split(rng, n, shift=0.3 * i) for i, t in enumerate(TASKS)}
    train, val, test = split(256), split(64), split(64)
    _, state = jmtl.fit(
        Model(),
        TASKS,
        train,
        validation=val,
        test=test,
        workdir=workdir,
        weighting=method,
        optimizer=optax.sgd(0.05),
        batch_size=64,
        num_steps=4,
        per_task_inputs=True,
        step_config=jmtl.StepConfig(input_key="x", shared="trunk"),
        parallel=parallel,
        progress_bar=False,
        eval_every_steps=4,
    )
    return state.params


if __name__ == "__main__":
    out = {}
    for method in sys.argv[1].split(","):
        with tempfile.TemporaryDirectory() as d:
            ref = run(method, "single", d + "/single")
            for driver in ("shard_map", "pmap"):
                got = run(method, driver, d + "/" + driver)
                diff = max(
                    float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got))
                )
                out.setdefault(driver, {})[method] = diff
    print("RESULT " + json.dumps({"max_abs_diff": out, "devices": jax.device_count()}))
