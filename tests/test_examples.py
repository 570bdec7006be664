"""The README's two library examples run (issue 16): your own model and data through the loop, and
the functional core in a plain optax loop."""

from __future__ import annotations

import json

import numpy as np

from experiments.examples import functional_core, own_model_and_data


def test_functional_core_example_trains():
    import jax

    from experiments.examples.functional_core import init_params, loss_fn

    x = np.random.default_rng(0).normal(size=(512, 8)).astype(np.float32)
    ys = np.stack([np.sin(x[:, 0]), 10 * x[:, 1] * x[:, 2], -np.sin(x[:, 0])], axis=1).astype(np.float32)
    before = np.asarray(loss_fn(init_params(jax.random.PRNGKey(0)), x, ys))
    after = np.asarray(functional_core.main(["--method", "pcgrad", "--steps", "60"]))
    assert after.shape == (3,) and np.all(np.isfinite(after))
    assert np.all(after < before), (before, after)


def test_own_model_and_data_example_trains(tmp_path):
    summary = own_model_and_data.main(["--workdir", str(tmp_path / "wd"), "--num_epochs", "1"])
    assert set(summary["tasks"]) == {"kind", "size", "rare"}
    assert summary["dataset"] == "my_data"
    # the loop wrote its records for the user's model
    records = [json.loads(l) for l in (tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()]
    assert records and "rare" in records[-1]["test"]
    assert 0.0 <= summary["final"]["test"]["kind"]["accuracy"] <= 1.0


def test_fit_your_model_example_trains(tmp_path):
    from experiments.examples import fit_your_model

    for flags in ([], ["--per_task"]):
        summary = fit_your_model.main(["--workdir", str(tmp_path / f"wd{len(flags)}"), "--num_epochs", "2", *flags])
        test = summary["best_validation"]["test"]
        assert set(test) == {"kind", "price", "sold"}
        # Two epochs of PCGrad beat the majority class on the 4-class task and the constant predictor
        # on price (the test split's own baselines).
        y = fit_your_model.make_split(np.random.default_rng(1), 5000)
        majority = np.bincount(y["kind"]).max() / len(y["kind"])
        assert test["kind"]["accuracy"] > majority + 0.1, (test, majority)
        assert test["price"]["mse"] < 0.5 * np.var(y["price"]), test
        assert test["sold"]["auc"] > 0.8, test
