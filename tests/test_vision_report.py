"""experiments/vision_report.py: Δm% (Maninis et al. / Navon et al.) on hand-worked numbers, the
last-N test average of Nash-MTL's protocol, and the transcribed published tables checked against
their own printed Δm% / Δp / Avg."""

import json

import numpy as np
import pytest

from experiments import vision_report as vr

SPECS = [
    {"task": "seg", "metric": "miou", "label": "mIoU", "higher_is_better": True, "unit": "%"},
    {"task": "seg", "metric": "pixel_accuracy", "label": "Pix", "higher_is_better": True, "unit": "%"},
    {"task": "depth", "metric": "abs_err", "label": "Abs", "higher_is_better": False, "unit": ""},
]


def test_delta_m_hand_worked():
    # mIoU 40 vs 50: -20 % (worse, higher is better -> +20); Pix 80 vs 80: 0; Abs 0.6 vs 0.5: +20 % (worse).
    # Over metrics: (20 + 0 + 20) / 3 = 13.33; over tasks: ((20 + 0) / 2 + 20) / 2 = 15.
    m, b = [40.0, 80.0, 0.6], [50.0, 80.0, 0.5]
    assert vr.delta_m(m, b, SPECS) == pytest.approx(40.0 / 3)
    assert vr.delta_m(m, b, SPECS, average="tasks") == pytest.approx(15.0)
    # Better on every metric -> negative; the baseline against itself -> 0.
    assert vr.delta_m([60.0, 88.0, 0.4], b, SPECS) == pytest.approx((-20 - 10 - 20) / 3)
    assert vr.delta_m(b, b, SPECS) == 0.0


def test_delta_m_matches_the_library_formula():
    from jmtl.metrics.mtl import delta_m as lib_delta_m

    rng = np.random.default_rng(0)
    m, b = rng.uniform(0.1, 2, 3), rng.uniform(0.1, 2, 3)
    assert vr.delta_m(m, b, SPECS) == pytest.approx(lib_delta_m(m, b, [s["higher_is_better"] for s in SPECS]))


def test_delta_m_refuses_bad_input():
    with pytest.raises(ValueError, match="3 metrics"):
        vr.delta_m([1.0, 2.0], [1.0, 2.0], SPECS)
    with pytest.raises(ValueError, match="baseline metric is 0"):
        vr.delta_m([1.0, 2.0, 3.0], [1.0, 0.0, 3.0], SPECS)
    with pytest.raises(ValueError, match="'metrics' or 'tasks'"):
        vr.delta_m([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], SPECS, average="task")


def _write_run(tmp_path, n_evals=12, with_test=True):
    lines = []
    for e in range(1, n_evals + 1):
        rec = {
            "step": e * 10,
            "epoch": float(e),
            "validation": {"seg": {"miou": 0.1, "pixel_accuracy": 0.2}, "depth": {"abs_err": 9.0}},
        }
        if with_test:
            rec["test"] = {"seg": {"miou": 0.01 * e, "pixel_accuracy": 0.5, "loss": 1.0}, "depth": {"abs_err": 1.0 / e}}
        lines.append(json.dumps(rec))
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_last_n_average_uses_the_last_test_records(tmp_path):
    run = _write_run(tmp_path)
    avg = vr.average_last(vr.read_evals(run), 10)
    assert avg["seg"]["miou"] == pytest.approx(np.mean([0.01 * e for e in range(3, 13)]))
    assert avg["depth"]["abs_err"] == pytest.approx(np.mean([1.0 / e for e in range(3, 13)]))
    # In the tables' units (%): fractions x 100.
    assert vr.vector(avg, SPECS) == pytest.approx([100 * avg["seg"]["miou"], 50.0, avg["depth"]["abs_err"]])


def test_last_n_refuses_short_runs_and_missing_test(tmp_path):
    with pytest.raises(ValueError, match="fewer than the 10"):
        vr.average_last(vr.read_evals(_write_run(tmp_path, n_evals=4)), 10)
    with pytest.raises(ValueError, match="no 'test' metrics"):
        vr.average_last(vr.read_evals(_write_run(tmp_path, with_test=False)), 2)
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        vr.read_evals(tmp_path / "absent")
    with pytest.raises(KeyError, match="no metric seg/median"):
        vr.vector({"seg": {"miou": 1.0}}, [dict(SPECS[0], metric="median")])


def test_report_against_published_and_own_stl(tmp_path):
    """A run whose averaged metrics equal Nash-MTL's Nash-MTL row gets that row's Δm% (-4.04 printed;
    -4.06 from the printed, rounded means); against its own numbers as single-task runs, Δm = 0."""
    pub = vr.load_published()
    specs = vr.metric_specs("nyuv2", pub)
    row = vr.table("nyuv2", "nash_mtl_table2", pub)["rows"]["Nash-MTL"]["values"]
    metrics = {}
    for s, v in zip(specs, row):
        metrics.setdefault(s["task"], {})[s["metric"]] = v / vr.UNIT_SCALE[s["unit"]]
    recs = [{"step": i, "test": metrics} for i in range(10)]
    run = tmp_path / "mtl"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    rep = vr.report(
        "nyuv2", run, "last:10", "nash_mtl_table2", stl_runs={t: run for t in ("segmentation", "depth", "normal")}
    )
    assert rep["delta_m_vs_published_stl"] == pytest.approx(-4.04, abs=0.05)
    assert rep["delta_m_vs_jmtl_stl"] == pytest.approx(0.0, abs=1e-9)
    assert "| **jmtl run** |" in "\n".join(vr.markdown(rep, pub))
    with pytest.raises(ValueError, match="no run for task"):
        vr.report("nyuv2", run, "last:10", "nash_mtl_table2", stl_runs={"segmentation": run})
    with pytest.raises(ValueError, match="no published table"):
        vr.table("nyuv2", "table9", pub)


def _check_rows(bench, tab, specs):
    rows = tab["rows"]
    base = rows.get("STL", {}).get("values")
    checked = 0
    for name, row in rows.items():
        if row.get("inconsistent") or not row["values"]:
            continue
        if "avg" in row:  # printed Avg = mean of the printed per-domain accuracies (2-decimal rounding)
            assert np.mean(row["values"]) == pytest.approx(row["avg"], abs=0.02), (bench, tab["id"], name)
        if base is None or name == "STL":
            continue
        # Δm is affine in the metrics, so the mean over seeds of Δm is Δm of the printed means, up to the
        # rounding of the printed means (Cityscapes' 3-significant-digit Abs Err: up to ~0.1).
        if "delta_m" in row:
            assert vr.delta_m(row["values"], base, specs) == pytest.approx(row["delta_m"], abs=0.12), (
                bench,
                tab["id"],
                name,
            )
        if "delta_p" in row:
            assert -vr.delta_m(row["values"], base, specs, "tasks") == pytest.approx(row["delta_p"], abs=0.1), (
                bench,
                tab["id"],
                name,
            )
        checked += 1
    return checked


def test_published_tables_agree_with_their_printed_summaries():
    """Every transcribed row (bar the ones marked inconsistent, with the reason in their note)
    reproduces its table's printed Δm% / Δp / Avg: a check on the transcription and on the formula."""
    pub = vr.load_published()
    total = 0
    for bench in vr.BENCHMARKS:
        for tab in pub[bench]["tables"]:
            assert tab["source"] and tab["protocol"] and tab["read_from"]
            specs = tab.get("metrics", pub[bench]["metrics"])
            for name, row in tab["rows"].items():
                assert len(row["values"]) in (0, len(specs)), (bench, tab["id"], name)
                if row.get("inconsistent"):
                    assert row.get("note"), (bench, tab["id"], name)
            total += _check_rows(bench, tab, specs)
    assert total > 60
    # The one published Δm that is not from STL rows here: FAMO's CelebA, read as Δm first, MR second.
    famo = vr.table("celeba", "famo_table3", pub)["rows"]
    assert famo["FAMO"]["delta_m"] == 1.21 and np.mean([r["MR"] for r in famo.values()]) == pytest.approx(6.5, abs=0.01)


def test_published_markdown_is_in_published_md():
    text = (vr.PUBLISHED.parent / "published.md").read_text()
    for line in vr.published_markdown():
        if line.startswith("| "):
            assert line in text, line


def test_celeba_report_uses_the_runs_attributes(tmp_path):
    """CelebA has no published per-attribute row: the metrics are the run's attribute F1s (FAMO's
    metric; the accuracies beside them are not read) and Δm% is against jmtl's single-attribute
    runs. Hand-worked: 0.8 vs 0.9 (+11.11 %), 0.5 vs 0.5 (0)."""

    def run(name, f1s):
        d = tmp_path / name
        d.mkdir()
        summary = {"best_validation": {"test": {a: {"accuracy": 0.97, "f1": v, "loss": 0.3} for a, v in f1s.items()}}}
        (d / "summary.json").write_text(json.dumps(summary))
        return d

    mtl = run("mtl", {"smiling": 0.8, "young": 0.5})
    stl = {"smiling": run("s1", {"smiling": 0.9}), "young": run("s2", {"young": 0.5})}
    rep = vr.report("celeba", mtl, "best_val", None, stl_runs=stl)
    assert rep["run"] == pytest.approx([80.0, 50.0]) and rep["metrics"] == ["smiling", "young"]
    assert rep["delta_m_vs_jmtl_stl"] == pytest.approx((100 / 9) / 2)
    assert "delta_m_vs_published_stl" not in rep and "No published table." in "\n".join(vr.markdown(rep))
