"""Data parallelism: 8 forced CPU devices (shard_map and pmap) reproduce the 1-device run."""

import pytest


@pytest.mark.parametrize(
    "methods,problem",
    [
        ("equal,mgda,mgda@rep", "lenet"),  # Multi-LeNet, 2 tasks, param and representation Jacobians
        ("pcgrad,upgrad,nash_mtl", "mlp"),  # catalogue methods on 3 partly conflicting tasks
        # Bilevel: look-ahead hypergradients and FORUM's inner loop. (MOML is left out: on 3 tasks its
        # K upper-level hypergradients lie in a (K-1)-dim space, their min-norm point is ~0, and Adam
        # turns float noise of that size into weight steps, so devices agree only to ~1e-3.)
        ("auto_lambda,forum", "mlp"),
    ],
)
def test_eight_devices_match_one_device(eight_device_agreement, methods, problem):
    out = eight_device_agreement[(methods, problem)]  # one subprocess for every group (conftest)
    assert out["device_count"] == 8
    for method in methods.split(","):
        assert out[f"{method}/moved"] > 0.0
        for kind in ("shard_map", "pmap"):
            res = out[f"{method}/{kind}"]
            assert res["devices"] == 8
            # Same global batches: 20 steps of 8 devices agree with 1 device to 1e-5 relative.
            assert res["max_rel_err"] < 1e-5, (method, kind, res)


@pytest.mark.parametrize("kind", ["single", "shard_map", "pmap"])
def test_a_driver_compiles_its_step_once(kind):
    """The state and batches a driver places have the layout its compiled step returns, so the step
    is traced (and compiled) once, not again at its second call (pmap's placement once used a mesh
    named unlike the step's axis: every pmap run compiled twice)."""
    import jax
    import numpy as np

    from jmtl.training import parallel

    driver = parallel.Driver(kind)
    traces = []

    def make(axis):
        def step(state, batch):
            traces.append(1)
            total = batch.sum() if axis is None else jax.lax.psum(batch.sum(), axis)
            return {"w": state["w"] + total, "n": state["n"] + 1}, {"total": total}

        return step

    fn = driver.compile_step(make)
    state = driver.replicate({"w": np.zeros((3,), np.float32), "n": np.int32(0)})
    for i in range(3):
        state, _ = fn(state, driver.shard_batch(np.full((2 * driver.num_devices, 2), i, np.float32)))
    out = driver.unreplicate(state)
    # The global batch sums are 0, 4n and 8n (n devices); every device adds them all.
    assert out["n"] == 3 and np.allclose(out["w"], 12.0 * driver.num_devices)
    assert len(traces) == 1, f"{kind}: the step was traced {len(traces)} times in 3 calls"
