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
    text = (ROOT / "results" / "README.md").read_text()
    assert set(rt.marked(text)) == set(rt.TABLES) - rt.FRONT_PAGE_ONLY, "every table is marked in results/README.md"
    # A front-page cut is on the front page, and the table it cuts is on the results page.
    assert rt.FRONT_PAGE_ONLY <= set(rt.marked((ROOT / "README.md").read_text()))
    assert set(rt.marked((ROOT / "results" / "README.md").read_text())) <= set(rt.TABLES)
    assert rt.CLAIMS_MARK in text and not rt.check_claims(text), "a sentence's number differs from its results file"
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


@pytest.mark.parametrize(
    "original, edited",
    [
        ("PCGrad 17.7, FAMO 18.6", "PCGrad 16.7, FAMO 18.6"),  # a QM9 sentence
        ("| OMoE† | 0.9443 ± 0.0004 |", "| OMoE† | 0.9453 ± 0.0004 |"),  # the Census table
        ("−0.98 ± 1.86 at α 10", "−0.88 ± 1.86 at α 10"),  # a School sentence
        ("0.9458 (FAMO) to 0.9472 (Nash-MTL)", "0.9458 (FAMO) to 0.9477 (Nash-MTL)"),  # the Census catalogue
    ],
)
def test_an_edited_census_school_or_qm9_number_fails_the_check(tmp_path, original, edited):
    text = (ROOT / "results" / "README.md").read_text()
    assert text.count(original) == 1, f"the README no longer says {original!r}: update this test's example"
    readme = tmp_path / "README.md"
    readme.write_text(text.replace(original, edited))
    assert rt.main(["--check", "--readme", str(readme)]) == 1


def test_a_changed_result_fails_the_sentence_that_quotes_it(tmp_path, monkeypatch):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "results", results, ignore=shutil.ignore_patterns("*.png", "*.npz", "*.jsonl"))
    record = json.loads((results / "qm9" / "qm9_gnn_cpu_subset.json").read_text())
    record["delta_m_percent"]["famo"] = 21.0  # FAMO now ranks fourth: the sentence's order changes too
    (results / "qm9" / "qm9_gnn_cpu_subset.json").write_text(json.dumps(record))
    monkeypatch.setattr(rt, "RESULTS", results)
    text = (ROOT / "results" / "README.md").read_text()
    assert [line.split(":")[0] for line in rt.check_claims(text)] == ["qm9"]


def test_every_claim_is_a_number_from_its_sources():
    for name, fn in rt.CLAIMS.items():
        assert rt.CLAIM_SOURCES[name], name
        assert all((ROOT / "results" / src).is_file() for src in rt.CLAIM_SOURCES[name]), name
        assert all(any(ch.isdigit() for ch in phrase) for phrase in fn()), name


def test_pcgrad_cells_beyond_a_seed_std_counted_from_the_csv():
    """The README's count of Census cells PCGrad moves beyond a seed std, recomputed from the
    per-seed rows of results.csv (sample std, ddof 1) rather than from auc.json."""
    moved, total = 0, 0
    for group in ("income_marital", "education_marital"):
        with open(ROOT / "results" / "census" / group / "results.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["seed"]]
        tasks = [k.split(".")[1] for k in rows[0] if k.startswith("test.") and k.endswith(".auc")]
        for arch in ("hps", "omoe", "mmoe", "cgc", "ple"):
            for task in tasks:
                vals = {
                    m: [float(r[f"test.{task}.auc"]) for r in rows if r["cell"] == f"{arch}__{m}"]
                    for m in ("equal", "pcgrad")
                }
                total += 1
                std = max(np.std(v, ddof=1) for v in vals.values())
                moved += abs(np.mean(vals["pcgrad"]) - np.mean(vals["equal"])) > std
    assert f"PCGrad moves {moved} of the {total} multi-task cells" in " ".join(
        (ROOT / "results" / "README.md").read_text().split()
    )


def _recorded_commands():
    """Every ``command`` a results file's provenance records (JSON entries and markdown blocks)."""
    import re

    found = []

    def walk(obj, src):
        if isinstance(obj, dict):
            if isinstance(obj.get("command"), str):
                found.append((src, obj["command"]))
            for v in obj.values():
                walk(v, src)
        elif isinstance(obj, list):
            for v in obj:
                walk(v, src)

    for path in sorted((ROOT / "results").rglob("*")):
        if path.suffix == ".json":
            walk(json.loads(path.read_text()), path.name)
        elif path.suffix == ".md":
            found += [(path.name, m.group(1)) for m in re.finditer(r"^- command: `(.*)`$", path.read_text(), re.M)]
    return found


def test_every_recorded_command_names_a_module_that_exists():
    import importlib.util
    import re

    commands = _recorded_commands()
    assert len(commands) > 50  # the walk finds the records (a broken walk would pass vacuously)
    missing = sorted(
        {
            (mod, src)
            for src, cmd in commands
            for mod in re.findall(r"python -m ([\w.]+)", cmd)
            if importlib.util.find_spec(mod) is None
        }
    )
    assert not missing, f"provenance commands name modules that do not exist: {missing}"
