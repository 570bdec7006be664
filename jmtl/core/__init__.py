"""The functional core: per-task gradients and weighting schemes for any JAX pytree.

The base layer of jmtl. Modules here import only :mod:`jmtl.weighting`, jax and optax (a test
walks their imports); the Flax train step (:mod:`jmtl.training.step`) and the trainer are built on
top of it.
"""
