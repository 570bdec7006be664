"""bayesagg_mtl through mtl_value_and_grad on one device and under shard_map over the forced CPU
devices (the batch split between them): prints the largest differences as ``RESULT {json}``."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
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
    out["classification"] = _classification_case(rng, mesh, shard, x, mask)
    print("RESULT " + json.dumps(out))


def _classification_case(rng, mesh, shard, x, mask):
    """Task 0 regression, task 1 a 3-class softmax (masked), task 2 a sigmoid: the draws use the
    replicated key and the replicated last layers, so the devices' rows match one device's."""
    b, f = x.shape
    d = 3
    params = {
        "shared": {"A": jnp.asarray(rng.normal(size=(f, d)), jnp.float32)},
        "heads": {
            "r": jnp.asarray(rng.normal(size=(d, 1)), jnp.float32),
            "c": jnp.asarray(rng.normal(size=(d, 3)), jnp.float32),
            "z": jnp.asarray(rng.normal(size=(d, 1)), jnp.float32),
        },
    }
    y = jnp.stack(
        [
            jnp.asarray(rng.normal(size=b), jnp.float32),
            jnp.asarray(rng.integers(0, 3, size=b), jnp.float32),
            jnp.asarray(rng.integers(0, 2, size=b), jnp.float32),
        ],
        axis=1,
    )

    def heads_for(axis_name):
        def heads(p, h, x, y, m):
            per = jnp.stack(
                [
                    (h @ p["heads"]["r"])[:, 0] - y[:, 0],
                    optax.softmax_cross_entropy_with_integer_labels(h @ p["heads"]["c"], y[:, 1].astype(jnp.int32)),
                    optax.sigmoid_binary_cross_entropy((h @ p["heads"]["z"])[:, 0], y[:, 2]),
                ],
                axis=1,
            )
            per = per.at[:, 0].set(per[:, 0] ** 2)
            count, scale = jnp.sum(m, 0), 1.0
            if axis_name is not None:
                count, scale = jax.lax.psum(count, axis_name), jax.lax.axis_size(axis_name)
            return scale * jnp.sum(per * m, 0) / jnp.maximum(count, 1.0)

        return heads

    def build(axis_name):
        return jmtl.mtl_value_and_grad(
            None,
            jmtl.weighting.get("bayesagg_mtl", num_mc_samples=64),
            encode=lambda p, x, y, m: x @ p["shared"]["A"],
            heads=heads_for(axis_name),
            targets=lambda x, y, m: (y, m),
            target_kinds=("regression", "classification", "binary"),
            last_layer=lambda p: tuple((p["heads"][n], jnp.zeros(p["heads"][n].shape[1])) for n in "rcz"),
            axis_name=axis_name,
        )

    one = build(None)
    state = one.init(params, None, x, y, mask)
    key = jax.random.PRNGKey(3)
    ref = jax.jit(one)(params, state, x, y, mask, key=key)
    many = build("d")
    spec = (P(), P(), P("d"), P("d"), P("d"), P())
    fn = jax.jit(
        jax.shard_map(lambda p, s, x, y, m, k: many(p, s, x, y, m, key=k), mesh=mesh, in_specs=spec, out_specs=P())
    )
    got = fn(params, state, shard(x), shard(y), shard(mask), key)
    diff = jax.tree.map(lambda a, r: float(jnp.max(jnp.abs(a - r))), got.grads, ref.grads)
    scale = jax.tree.map(lambda r: float(jnp.max(jnp.abs(r))), ref.grads)
    return {"diff": max(jax.tree.leaves(diff)), "scale": min(jax.tree.leaves(scale))}


if __name__ == "__main__":
    main()
