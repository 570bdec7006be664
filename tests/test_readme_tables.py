"""The README's numeric tables agree with the results files they cite (experiments/readme_tables.py),
and every results file carries its provenance (experiments/recover_provenance.py)."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from experiments import readme_tables as rt

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_match_results():
    text = (ROOT / "README.md").read_text()
    assert set(rt.marked(text)) == set(rt.TABLES), "every generated table is marked in README.md"
    assert rt.main(["--check"]) == 0, "README and results/ disagree: run python -m experiments.readme_tables"


def test_a_changed_result_shows_in_the_check(tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "results" / "toy", results / "toy")
    toy = json.loads((results / "toy" / "gradnorm_toy.json").read_text())
    toy["by_T"]["2"]["gradnorm"]["final_normalised_mse_mean"] = 0.123
    (results / "toy" / "gradnorm_toy.json").write_text(json.dumps(toy))
    monkeypatch.setattr(rt, "RESULTS", results)
    readme = tmp_path / "README.md"
    original = "intro\n<!-- table:gradnorm_toy -->\nstale\n<!-- /table:gradnorm_toy -->\nafter\n"
    readme.write_text(original)
    assert rt.main(["--check", "--readme", str(readme)]) == 1
    assert readme.read_text() == original  # --check writes nothing
    assert rt.main(["--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "| 2 | GradNorm | 0.12 |" in text and "stale" not in text and text.endswith("after\n")
    assert rt.main(["--check", "--readme", str(readme)]) == 0


def test_unknown_table_name_is_an_error():
    with pytest.raises(KeyError, match="no_such_table"):
        rt.render("<!-- table:no_such_table -->\nx\n<!-- /table:no_such_table -->\n")


def test_ablation_rows_recompute_from_the_csv():
    """Mean accuracies straight from results.csv, and Δm% (Navon et al. 2022: mean over tasks of the
    relative drop from the single-task model, in %) from them: it is linear in the accuracies, so the
    mean of the per-seed Δm% equals the Δm% of the mean accuracies."""
    path = ROOT / "results" / "ablation" / "multimnist_1epoch" / "results.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    acc = lambda cell, task: np.mean([float(r[f"test.{task}.accuracy"]) for r in rows if r["cell"] == cell])
    single = {t: acc(f"single_task__{t}", t) for t in ("left", "right")}
    equal = {t: acc("hps__equal", t) for t in ("left", "right")}
    delta_m = 100 * np.mean([(single[t] - equal[t]) / single[t] for t in ("left", "right")])
    lines = rt.multimnist_1epoch()
    row = next(l for l in lines if l.startswith("| equal |"))
    assert row.split(" | ")[1] == f"{100 * equal['left']:.2f} / {100 * equal['right']:.2f}"
    assert float(row.split(" | ")[2]) == pytest.approx(delta_m, abs=0.006)


def test_every_results_file_has_provenance():
    from experiments import recover_provenance

    assert recover_provenance.main(["--check"]) == 0, "run python -m experiments.recover_provenance"
