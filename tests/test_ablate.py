"""The ablation runner: Δm% and MR against hand-computed values, a resumable grid, its outputs."""

import csv
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, toy_config

from jmtl.drivers import ablation as ablate
from jmtl.metrics import mtl

# Values, not speed: the programs compile without XLA's optimisation passes (conftest's
# xla_optimizations_off; this file's compile-bound tests took ~0.6x the time in one measured run).
pytestmark = pytest.mark.usefixtures("xla_optimizations_off")


def test_delta_m_closed_form():
    # Accuracy up 1% relative on task 1 (higher is better), error down 10% on task 2 (lower is better):
    # both improvements, so Δm = mean(-1, -10) = -5.5.
    assert mtl.delta_m([0.909, 0.9], [0.9, 1.0], [True, False]) == pytest.approx(-5.5)
    assert mtl.delta_m([0.9, 1.0], [0.9, 1.0], [True, False]) == 0.0
    assert mtl.delta_m([0.8], [1.0], [True]) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="baseline metric is 0"):
        mtl.delta_m([1.0], [0.0], [True])


def test_mean_rank_and_pareto():
    table = {"a": [0.9, 2.0], "b": [0.8, 1.0], "c": [0.9, 3.0]}  # task 1 accuracy, task 2 error
    ranks = mtl.mean_rank(table, [True, False])
    # task 1: a and c tie for ranks 1-2 (1.5 each), b 3; task 2: b 1, a 2, c 3.
    assert ranks == {"a": pytest.approx(1.75), "b": pytest.approx(2.0), "c": pytest.approx(2.25)}
    front = mtl.pareto_front(np.array(list(table.values())), [True, False])
    assert front.tolist() == [True, True, False]  # c is dominated by a


def test_grid_runs_resumes_and_reports(tmp_path):
    config = toy_config(
        tmp_path, num_steps=20, eval_every_steps=10, log_every_steps=5, parallel="single", progress_bar=False
    )
    wd = tmp_path / "grid"
    summary = ablate.run(config, wd, ["equal", "mgda", "krum"], ["hps"], seeds=2)
    rows = list(csv.DictReader(open(wd / "results.csv")))
    done = [r for r in rows if r["seed"]]
    # 2 single-task cells + equal + mgda, 2 seeds each; krum (needs K >= 5) is reported, not fatal.
    assert len(done) == 8
    assert {r["cell"] for r in rows if not r["seed"]} == {"hps__krum"}
    assert "needs at least" in (wd / "table.md").read_text()
    for name in ("pareto.png", "learning_curves.png", "weights.png"):
        assert (wd / "plots" / name).stat().st_size > 0

    # Δm of a row recomputed by hand from the CSV (best-validation test MSEs, lower is better).
    base = {
        t: np.mean([float(r[f"test.{t}.mse"]) for r in done if r["cell"] == f"single_task__{t}"]) for t in ("t0", "t1")
    }
    r = next(r for r in done if r["cell"] == "hps__mgda")
    expected = np.mean([(float(r[f"test.{t}.mse"]) - base[t]) / base[t] * 100 for t in ("t0", "t1")])
    assert float(r["delta_m"]) == pytest.approx(expected)
    assert {e["method"] for e in summary} == {"single-task", "equal", "mgda"}

    # A rerun skips finished cells (their outputs are untouched) and retries failed ones.
    stamp = (wd / "cells" / "hps__equal" / "summary.json").stat().st_mtime_ns
    ablate.run(config, wd, ["equal", "mgda"], ["hps"], seeds=2)
    assert (wd / "cells" / "hps__equal" / "summary.json").stat().st_mtime_ns == stamp
    assert json.loads((wd / "grid.json").read_text())["cells"][-1] == "hps__mgda"

    # A rerun under another schedule would rank its cells beside these: refused, naming the
    # difference, before anything trains; every file of the grid stays as it was.
    before = _hashes(wd)
    with pytest.raises(
        ablate.GridMismatchError, match=re.escape("holds a grid trained under another config (num_steps: 20 -> 10)")
    ):
        ablate.run(
            toy_config(
                tmp_path, num_steps=10, eval_every_steps=10, log_every_steps=5, parallel="single", progress_bar=False
            ),
            wd,
            ["equal", "mgda"],
            ["hps"],
            seeds=2,
        )
    with pytest.raises(ablate.GridMismatchError, match=re.escape("(seeds: 2 -> 3)")):
        ablate.run(config, wd, ["equal"], ["hps"], seeds=3)
    # The same from the command line: one line, exit 2.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.ablate",
            "--config",
            "experiments/configs/gradnorm_toy.py",
            "--workdir",
            str(wd),
            "--seeds",
            "2",
            "--methods",
            "equal",
            "--config.num_steps=10",
            "--config.eval_every_steps=10",
            "--config.log_every_steps=5",
            "--config.parallel=single",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)),
    )
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("GridMismatchError: ") and "(num_steps: 20 -> 10)" in lines[0]
    assert _hashes(wd) == before


def _hashes(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_unknown_architecture_fails_before_anything_trains(tmp_path):
    config = toy_config(tmp_path, num_steps=4, parallel="single", progress_bar=False)
    with pytest.raises(
        ValueError, match=re.escape("unknown architecture(s) ['hsp'] (did you mean 'hps'?); valid: hps,")
    ):
        ablate.run(config, tmp_path / "grid", ["equal"], ["hps", "hsp"], seeds=1)
    assert not (tmp_path / "grid").exists()


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown weighting scheme.*nash.*valid schemes"):
        ablate.parse_methods("equal,nash")


def test_rep_suffix_selects_the_representation_jacobian(tmp_path):
    assert ablate.parse_methods("mgda@rep,equal") == ["mgda@rep", "equal"]
    config = toy_config(tmp_path)
    cells = dict(ablate.grid(config, ["mgda@rep", "mgda", "ntkmtl_sr"], ["hps"], ["t0", "t1"], 2, single_task=False))
    assert cells["hps__mgda@rep"].weighting.name == "mgda"
    assert cells["hps__mgda@rep"].weighting.jacobian_mode == "representation"
    assert cells["hps__mgda"].weighting.jacobian_mode == "params"
    # A representation-only scheme gets the representation Jacobian without the suffix.
    assert cells["hps__ntkmtl_sr"].weighting.jacobian_mode == "representation"


def test_seeds_split_into_programs_match_one_program(tmp_path):
    # Seeds 0..2 as programs of 2 + 1 seeds give the same per-seed results as one program of 3: each
    # seed keeps its own PRNG key and data order whichever program it runs in.
    config = toy_config(
        tmp_path, num_steps=12, eval_every_steps=6, log_every_steps=3, parallel="single", progress_bar=False
    )
    together = ablate.run(config, tmp_path / "one", ["mgda"], ["hps"], seeds=3)
    split = ablate.run(config, tmp_path / "split", ["mgda"], ["hps"], seeds=3, seeds_per_program=2)
    cell = tmp_path / "split" / "cells" / "hps__mgda"
    assert sorted(d.name for d in cell.iterdir()) == ["seed_0", "seed_2"]
    assert [len(json.loads((cell / d / "summary.json").read_text())["seeds"]) for d in ("seed_0", "seed_2")] == [2, 1]

    def by_seed(wd):
        return {(r["cell"], r["seed"]): r for r in csv.DictReader(open(wd / "results.csv"))}

    one, two = by_seed(tmp_path / "one"), by_seed(tmp_path / "split")
    assert one.keys() == two.keys() and len(one) == 9  # 2 single-task cells + mgda, 3 seeds each
    for key, r in one.items():
        for col in ("test.t0.mse", "test.t1.mse", "final_test.t0.mse", "final_test.t1.mse"):
            if not r[col]:  # a single-task row has its own task only
                assert not two[key][col]
                continue
            assert float(two[key][col]) == pytest.approx(float(r[col]), rel=1e-4), (key, col)
    for a, b in zip(together, split):
        assert a["method"] == b["method"] and a["delta_m"][0] == pytest.approx(b["delta_m"][0], rel=1e-3, abs=1e-4)
    for name in ("learning_curves.png", "weights.png"):
        assert (tmp_path / "split" / "plots" / name).stat().st_size > 0
    with pytest.raises(ValueError, match="seeds_per_program must be >= 0"):
        ablate.run(config, tmp_path / "bad", ["equal"], ["hps"], seeds=2, seeds_per_program=-1)
