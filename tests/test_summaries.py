"""One Δm% (``jmtl.metrics.mtl.delta_m``) and one mean ± s.d. (``jmtl.metrics.summary``) behind every
table (issue 22 §3): closed forms, numpy, and the committed results files re-rendered unchanged by the
scripts that now call them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from jmtl.metrics import mtl, summary

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def _before_provenance(text: str) -> str:
    return text.split("<!-- provenance -->")[0]


# ----------------------------------------------------------------------------- Δm%


def test_delta_m_closed_form_k3_both_directions():
    # accuracy (higher better) 1.0 -> 0.8: worse by 20 %; error (lower better) 1.6 -> 2.0: worse by
    # 25 %; mIoU (higher better) 0.4 -> 0.5: better by 25 %. Δm = (20 + 25 - 25) / 3.
    m, b, hib = [0.8, 2.0, 0.5], [1.0, 1.6, 0.4], [True, False, True]
    assert mtl.delta_m(m, b, hib) == pytest.approx(20.0 / 3, rel=1e-12)
    # Roles swapped: accuracy 0.8 -> 1.0 is 25 % better, error 2.0 -> 1.6 20 % better, mIoU 0.5 -> 0.4
    # 20 % worse.
    assert mtl.delta_m(b, m, hib) == pytest.approx((-25.0 - 20.0 + 20.0) / 3, rel=1e-12)
    assert mtl.delta_m(b, b, hib) == 0.0
    # Grouped by task (LibMTL's Δp averaging): task a = mean(20, 25), task b = -25.
    assert mtl.delta_m(m, b, hib, groups=["a", "a", "b"]) == pytest.approx((22.5 - 25.0) / 2, rel=1e-12)
    with pytest.raises(ValueError, match="one label per metric"):
        mtl.delta_m(m, b, hib, groups=["a", "b"])


def test_delta_m_of_rows_skips_or_refuses_missing_tasks():
    base = {"a": 2.0, "b": 4.0, "c": None}
    row = {"a": 3.0, "b": 2.0, "c": 1.0}
    # lower is better: a +50 %, b -50 %; c has no baseline.
    assert mtl.delta_m_of(row, base, False, skip_missing=True) == 0.0
    assert mtl.delta_m_of(row, base, False) is None  # c is missing: no Δm over all tasks
    assert mtl.delta_m_of(row, base, False, tasks=["a"]) == pytest.approx(50.0)
    assert mtl.delta_m_of({"a": 3.0, "b": math.nan}, base, {"a": True, "b": True}, tasks=["a", "b"]) is None
    assert mtl.delta_m_of({"a": 3.0, "b": math.nan}, base, True, tasks=["a", "b"], skip_missing=True) == -50.0
    assert mtl.delta_m_of({}, base, True, skip_missing=True) is None  # nothing left to compare


def test_census_table_renders_the_committed_table_unchanged(tmp_path):
    """results/census/table.{md,json} re-rendered from the committed auc.json files by the command its
    provenance names (with the Δm% and ± of the shared functions) equal the committed ones."""
    from experiments import census_table

    committed = json.loads((RESULTS / "census" / "table.json").read_text())
    argv = committed["provenance"]["command"].split()[3:]
    out = tmp_path / "table"
    argv[argv.index("--out") + 1] = str(out)
    assert census_table.main(argv) == 0
    new = json.loads(out.with_suffix(".json").read_text())
    assert new["groups"] == committed["groups"]  # exact floats, Δm% included
    assert any(e.get("delta_m_auc") is not None for g in new["groups"].values() for e in g["cells"])
    assert _before_provenance(out.with_suffix(".md").read_text()) == _before_provenance(
        (RESULTS / "census" / "table.md").read_text()
    )


def test_qm9_report_rerenders_the_committed_record_unchanged():
    from experiments import qm9_report

    record = json.loads((RESULTS / "qm9" / "qm9_gnn_cpu_subset.json").read_text())
    result, lines = qm9_report.rerender(record, record["notes"])
    for key in ("delta_m_percent", "delta_m_percent_per_seed", "delta_m_tasks", "test_mae_mean"):
        assert result[key] == record[key], key  # exact floats
    md = (RESULTS / "qm9" / "qm9_gnn_cpu_subset.md").read_text()
    assert md.startswith("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- mean ± s.d.


def test_mean_sd_is_numpys_sample_sd():
    x = np.random.default_rng(0).normal(size=7)
    assert summary.mean_sd(x) == (np.mean(x), np.std(x, ddof=1))  # bitwise: the same computation
    assert summary.mean_sd(x, ddof=0) == (np.mean(x), np.std(x))
    m, s = summary.mean_sd(x, exact=True)  # correctly rounded: equal to float64 precision
    assert m == pytest.approx(np.mean(x), rel=1e-14) and s == pytest.approx(np.std(x, ddof=1), rel=1e-13)
    # A hand-worked case: 1, 2, 3, 4 -> mean 2.5, sample variance (2.25 + 0.25 + 0.25 + 2.25) / 3.
    assert summary.mean_sd([1.0, 2.0, 3.0, 4.0]) == (2.5, math.sqrt(5.0 / 3.0))
    assert summary.mean_sd([0.3]) == (0.3, 0.0)
    assert math.isnan(summary.mean_sd([0.3], single=math.nan)[1])
    assert summary.mean_sd([1.0, None, math.nan, 3.0], drop_missing=True) == (2.0, math.sqrt(2.0))
    assert all(math.isnan(v) for v in summary.mean_sd([None], drop_missing=True))
    with pytest.raises(ValueError, match="ddof 0 or 1"):
        summary.mean_sd(x, ddof=2, exact=True)


def test_format_mean_sd():
    assert summary.format_mean_sd(0.12345, 0.0123, scale=100) == "12.35 ± 1.23"
    assert summary.format_mean_sd(-1.234, 0.5, signed=True) == "-1.23 ± 0.50"
    assert summary.format_mean_sd(1.234, 0.5, spec=".4f", signed=True) == "+1.2340 ± 0.5000"
    assert summary.format_mean_sd(0.5, math.nan, spec=".4f") == "0.5000" == summary.format_mean_sd(0.5, None, ".4f")
    assert summary.format_mean_sd(None, 0.1) == "—" == summary.format_mean_sd(math.nan, 0.1)
    assert summary.format_mean_sd(12.5, 0.25, spec="g") == "12.5 ± 0.25"
    assert summary.mean_sd_text([0.5]) == "0.50"
    assert summary.mean_sd_text([0.1, 0.2, 0.3], scale=100) == f"20.00 ± {np.std([10.0, 20.0, 30.0], ddof=1):.2f}"


def test_school_render_reproduces_the_committed_relations_file(tmp_path, monkeypatch):
    """results/school/relations.{json,md} re-rendered from the committed run log (``render`` mode's
    write_main) with the shared mean ± s.d. equal the committed ones (exact floats, same text)."""
    from experiments import results_io
    from experiments import school_relations as sr

    committed_dir = ROOT / "results" / "school"
    out = tmp_path / "results" / "school"
    out.mkdir(parents=True)
    (out / "relation_matrices.npz").write_bytes((committed_dir / "relation_matrices.npz").read_bytes())
    monkeypatch.setattr(sr, "OUT", out)
    monkeypatch.setattr(sr, "ROOT", tmp_path)
    drawn = []  # the heatmaps (matplotlib, ~10 s) are not what this test checks: named, not drawn
    monkeypatch.setattr(sr, "heatmap", lambda matrix, path, *a, **k: drawn.append(path) or Path(path))
    log = (committed_dir / "relations_partial.jsonl").read_text().splitlines()
    sr.write_main([json.loads(line) for line in log if line.strip()], results_io)
    committed = json.loads((committed_dir / "relations.json").read_text())
    new = json.loads((out / "relations.json").read_text())
    assert {k: v for k, v in new.items() if k != "provenance"} == {
        k: v for k, v in committed.items() if k != "provenance"
    }
    assert _before_provenance((out / "relations.md").read_text()) == _before_provenance(
        (committed_dir / "relations.md").read_text()
    )
    assert drawn  # the heatmaps the table names were asked for


def test_census_grid_summary_reproduces_the_committed_auc_records():
    """Each committed census group's auc.json statistics, recomputed from its results.csv with the
    shared mean ± s.d. (exact=True, as they were computed), are the committed floats, and the auc.md
    rows render the same."""
    import csv

    from experiments import census_grid

    groups = [d for d in sorted((RESULTS / "census").iterdir()) if (d / "results.csv").is_file()]
    assert len(groups) >= 3
    for d in groups:
        record = json.loads((d / "auc.json").read_text())
        with open(d / "results.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        new = census_grid.auc_summary(rows, record["tasks"])
        for e, old in zip(new, record["cells"], strict=True):
            for key, value in e.items():
                if key.endswith(".auc"):
                    assert np.array_equal(value, old[key], equal_nan=True), (d.name, e["cell"], key)
        table = lambda text: [l for l in text.splitlines() if l.startswith("| ")]  # the code marks aside
        lines = census_grid.auc_lines(new, record["tasks"], record["title"])
        assert table((d / "auc.md").read_text().translate({ord(c): None for c in "†‡§"})) == table(
            "\n".join(lines).translate({ord(c): None for c in "†‡§"})
        ), d.name


def test_tagging_tables_reproduce_the_committed_hierarchical_tables():
    from jmtl.drivers import tagging

    tables = sorted((RESULTS / "hierarchical").glob("*.table.md"))
    assert len(tables) >= 5
    for t in tables:
        text = _before_provenance(t.read_text())
        title = text.splitlines()[0][3:] if text.startswith("## ") else ""
        records = json.loads(t.with_name(t.name.replace(".table.md", ".json")).read_text())
        assert tagging.results_table(records, title).rstrip("\n") == text.rstrip("\n"), t.name


def test_ablation_tables_reproduce_the_committed_ablation_tables(tmp_path):
    """results/ablation/*/table.md re-rendered from their results.csv (jmtl.drivers.ablation's
    summarise + write_table, with the shared mean ± s.d.) equal the committed tables (one folder has
    a note added under its table: the rendered part is its prefix)."""
    import csv

    from jmtl import tasks as tasks_lib
    from jmtl.drivers import ablation

    def value(v: str):
        for cast in (int, float):
            try:
                return cast(v)
            except ValueError:
                pass
        return v

    folders = sorted(d for d in (RESULTS / "ablation").iterdir() if (d / "table.md").is_file())
    assert len(folders) >= 5
    for d in folders:
        with open(d / "results.csv", newline="") as f:
            raw = list(csv.DictReader(f))
        # What ablation.collect wrote: absent metrics as missing keys, a failed cell's seed as None.
        rows = [{k: value(v) for k, v in r.items() if v != "" or k in ("error",)} for r in raw]
        for r in rows:
            r.setdefault("seed", None)
        names = [k.split(".")[1] for k in raw[0] if k.startswith("test.") and k.endswith(".accuracy")]
        tasks = [tasks_lib.Task(n, "classification", 10) for n in names]
        committed = _before_provenance((d / "table.md").read_text())
        ablation.write_table(
            ablation.summarise(rows, tasks), rows, tasks, tmp_path / "t.md", committed.splitlines()[0][2:]
        )
        assert committed.startswith((tmp_path / "t.md").read_text().rstrip("\n")), d.name
