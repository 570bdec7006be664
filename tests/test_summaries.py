"""One Δm% (``jmtl.metrics.mtl.delta_m``) and one mean ± s.d. (``jmtl.metrics.summary``) behind every
table (issue 22 §3): closed forms, numpy, and the committed results files re-rendered unchanged by the
scripts that now call them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from jmtl.metrics import mtl

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
