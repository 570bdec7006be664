r"""The functional core in a plain JAX + optax loop: no Flax, no jmtl trainer.

    python -m experiments.examples.functional_core --method mgda

Params are a dict of arrays; `loss_fn(params, x, ys) -> [K]` task losses. `jmtl.mtl_value_and_grad`
gives the losses and the weighting scheme's combined gradient (shared params combined, each head its
own task's gradient) inside the jitted step, like torchjd's `mtl_backward` for PyTorch.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jmtl


def init_params(key, d_in=8, width=32, num_tasks=3):
    k1, k2 = jax.random.split(key)
    return {
        "trunk": {"w": jax.random.normal(k1, (d_in, width)) / np.sqrt(d_in), "b": jnp.zeros(width)},
        "heads": {"w": jax.random.normal(k2, (num_tasks, width)) / np.sqrt(width), "b": jnp.zeros(num_tasks)},
    }


def loss_fn(params, x, ys):
    h = jnp.tanh(x @ params["trunk"]["w"] + params["trunk"]["b"])
    preds = h @ params["heads"]["w"].T + params["heads"]["b"]  # [B, K]
    return jnp.mean((preds - ys) ** 2, axis=0)  # [K] task losses


def main(argv=None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="mgda")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 8)).astype(np.float32)
    ys = np.stack([np.sin(x[:, 0]), 10 * x[:, 1] * x[:, 2], -np.sin(x[:, 0])], axis=1).astype(np.float32)

    params = init_params(jax.random.PRNGKey(0))
    vg = jmtl.mtl_value_and_grad(loss_fn, args.method, shared="trunk")  # the rows of 'trunk' get balanced
    wstate = vg.init(params, 3)
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, wstate, opt_state, i):
        res = vg(params, wstate, x, ys, key=jax.random.PRNGKey(i), step=i)
        updates, opt_state = opt.update(res.grads, opt_state, params)
        return optax.apply_updates(params, updates), res.weighting_state, opt_state, res.losses

    for i in range(args.steps):
        params, wstate, opt_state, losses = step(params, wstate, opt_state, i)
    final = [float(v) for v in losses]
    print(f"{args.method}: final task losses {np.round(final, 4).tolist()}")
    return final


if __name__ == "__main__":
    main()
