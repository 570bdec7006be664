"""Seeds trained together in one program (jmtl/training/seeds.py) equal the same seeds run one by one."""

import json

import jax
import numpy as np
import pytest
from conftest import toy_config

from jmtl.training.loop import train

# Values, not speed: the programs compile without XLA's optimisation passes (conftest's
# xla_optimizations_off; this file's compile-bound tests took ~0.6x the time in one measured run).
pytestmark = pytest.mark.usefixtures("xla_optimizations_off")


def _config(tmp_path, **kw):
    return toy_config(
        tmp_path, **{"num_steps": 30, "eval_every_steps": 10, "log_every_steps": 5, "parallel": "single", **kw}
    )


@pytest.mark.parametrize("method,mode", [("equal", "vmap"), ("mgda", "vmap"), ("mgda", "map")])
def test_stacked_seeds_equal_separate_runs(tmp_path, method, mode):
    c = _config(tmp_path, seed=4, num_seeds=3, seeds_mode=mode)
    c.weighting.name = method
    summary, stacked = train(c, str(tmp_path / "stacked"))
    assert [s["seed"] for s in summary["seeds"]] == [4, 5, 6]
    for i, seed in enumerate((4, 5, 6)):
        c1 = _config(tmp_path, seed=seed)
        c1.weighting.name = method
        single_summary, single = train(c1, str(tmp_path / f"s{seed}"))
        for a, b in zip(jax.tree.leaves(stacked.params), jax.tree.leaves(single.params)):
            np.testing.assert_allclose(a[i], b, rtol=2e-4, atol=2e-6)
        for task, metrics in single_summary["final"]["test"].items():
            for name, value in metrics.items():
                assert summary["seeds"][i]["final"]["test"][task][name] == pytest.approx(value, rel=1e-3)
    # Seeds differ (own init and data order), and the top-level numbers are their mean.
    leaf = jax.tree.leaves(stacked.params)[0]
    assert not np.allclose(leaf[0], leaf[1])
    t0 = summary["tasks"][0]
    mean = np.mean([s["final"]["test"][t0]["mse"] for s in summary["seeds"]])
    assert summary["final"]["test"][t0]["mse"] == pytest.approx(mean)
    rec = json.loads((tmp_path / "stacked" / "train_log.jsonl").read_text().splitlines()[-1])
    assert np.asarray(rec["losses_per_seed"]).shape == (3, 2)


def test_stacked_seeds_resume_exactly(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    _, a = train(_config(tmp_path, num_seeds=2), str(full))
    train(_config(tmp_path, num_seeds=2, num_steps=20), str(part))
    _, b = train(_config(tmp_path, num_seeds=2), str(part))
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)


def test_unknown_seeds_mode(tmp_path):
    with pytest.raises(ValueError, match="unknown seeds mode 'loop'; valid: vmap, map"):
        train(_config(tmp_path, num_seeds=2, seeds_mode="loop"), str(tmp_path / "wd"))
