"""bayesagg_mtl through mtl_value_and_grad on one device and under shard_map over the forced CPU
devices (the batch split between them): prints the largest differences as ``RESULT {json}``."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import jmtl


def main():
    rng = np.random.default_rng(0)
    n_dev = jax.device_count()
    b, f, d, k = 4 * n_dev, 5, 3, 3
    x = jnp.asarray(rng.normal(size=(b, f)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(b, k)), jnp.float32)
    mask = jnp.asarray(rng.uniform(size=(b, k)) < 0.7, jnp.float32).at[:, 0].set(1.0)
    params = {
        "shared": {"A": jnp.asarray(rng.normal(size=(f, d)), jnp.float32)},
        "heads": {"W": jnp.asarray(rng.normal(size=(d, k)), jnp.float32), "c": jnp.zeros(k)},
    }

    def encode(p, x, y, m):
        return x @ p["shared"]["A"]

    def heads_for(axis_name):
        def heads(p, h, x, y, m):
            # Each task's loss is the mean over its labelled examples of the global batch (the
            # built-in step's rule): local sum over the global count, times the device count.
            count = jnp.sum(m, 0)
            scale = 1.0
            if axis_name is not None:
                count, scale = jax.lax.psum(count, axis_name), jax.lax.axis_size(axis_name)
            return scale * jnp.sum((h @ p["heads"]["W"] + p["heads"]["c"] - y) ** 2 * m, 0) / jnp.maximum(count, 1.0)

        return heads

    def build(axis_name):
        return jmtl.mtl_value_and_grad(
            None,
            "bayesagg_mtl",
            encode=encode,
            heads=heads_for(axis_name),
            targets=lambda x, y, m: (y, m),
            axis_name=axis_name,
        )

    one = build(None)
    state = one.init(params, None, x, y, mask)
    mesh = jax.make_mesh((n_dev,), ("d",))
    many = build("d")
    spec = (P(), P(), P("d"), P("d"), P("d"))
    fn = jax.jit(jax.shard_map(lambda *a: many(*a), mesh=mesh, in_specs=spec, out_specs=P()))
    shard = lambda a: jax.device_put(a, NamedSharding(mesh, P("d")))  # noqa: E731
    out = {}
    for name, m in (("no_mask", jnp.ones_like(mask)), ("mask", mask)):
        ref = jax.jit(one)(params, state, x, y, m)
        got = fn(params, state, shard(x), shard(y), shard(m))
        diff = jax.tree.map(
            lambda a, r: float(jnp.max(jnp.abs(a - r))),
            (got.grads, got.weighting_state),
            (ref.grads, ref.weighting_state),
        )
        scale = jax.tree.map(lambda r: float(jnp.max(jnp.abs(r))), (ref.grads, ref.weighting_state))
        out[name] = {"diff": max(jax.tree.leaves(diff)), "scale": min(jax.tree.leaves(scale))}
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
