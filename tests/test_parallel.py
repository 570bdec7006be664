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
