"""Provenance names the code a run *started* with (issue 23 §6): the commit and dirty flag are read at
the start, per cell for the grids (census_grid, qm9_gnn, school_relations), and a table marks every
cell that cannot name its code."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from experiments import census_grid, qm9_gnn
from experiments import results_io as common


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A throwaway git checkout standing in for the project's (results_io reads git at its ROOT)."""
    r = tmp_path / "repo"
    r.mkdir()
    _git(r, "init", "-q")
    _git(r, "config", "user.email", "t@example.com")
    _git(r, "config", "user.name", "t")
    (r / "code.py").write_text("a = 1\n")
    _git(r, "add", "code.py")
    _git(r, "commit", "-qm", "first")
    monkeypatch.setattr(common, "ROOT", r)
    return r


def _commit(repo, text):
    (repo / "code.py").write_text(text)
    _git(repo, "commit", "-qam", text)
    return _git(repo, "rev-parse", "HEAD")


def test_commit_is_the_one_at_the_start_and_a_later_change_is_recorded_beside_it(repo):
    first = _git(repo, "rev-parse", "HEAD")
    started = common.started_now()
    second = _commit(repo, "a = 2\n")  # the tree moves on while the run trains
    prov = common.provenance(command="x", started=started)
    assert (prov["git_commit"], prov["git_dirty"]) == (first, False)
    assert (prov["git_commit_at_write"], prov["git_dirty_at_write"]) == (second, False)
    md = "\n".join(common.provenance_markdown(prov))
    assert f"`{first}` at the start; `{second}` when written" in md


def test_a_tree_that_stays_put_records_no_at_write_fields(repo):
    started = common.started_now()
    prov = common.provenance(command="x", started=started)
    assert prov["git_commit"] == _git(repo, "rev-parse", "HEAD") and prov["git_dirty"] is False
    assert "git_commit_at_write" not in prov and "git_dirty_at_write" not in prov


def test_uncommitted_changes_at_the_start_are_flagged(repo):
    (repo / "code.py").write_text("a = 3\n")  # tracked file edited, not committed
    started = common.started_now()
    _git(repo, "checkout", "code.py")  # clean again by the time the results are written
    prov = common.provenance(command="x", started=started)
    assert prov["git_dirty"] is True and prov["git_dirty_at_write"] is False


def test_cell_code_clean_dirty_mixed_unknown(repo, tmp_path):
    cell = tmp_path / "cell"
    common.record_code_start(cell)
    common.record_code_start(cell)  # a resume under the same commit
    assert common.cell_code(cell) == {
        "git_commit": _git(repo, "rev-parse", "HEAD"),
        "git_dirty": False,
        "status": "clean",
    }
    assert common.code_mark(common.cell_code(cell)) == ""
    (repo / "code.py").write_text("a = 4\n")
    common.record_code_start(cell)  # resumed from a dirty tree
    assert common.cell_code(cell)["status"] == "dirty"
    _git(repo, "checkout", "code.py")
    _commit(repo, "a = 5\n")
    common.record_code_start(cell)  # resumed under another commit
    assert common.cell_code(cell)["status"] == "mixed" and common.cell_code(cell)["git_commit"] is None
    # A program folder without start records (trained before they were kept) makes the cell unknown.
    assert common.cell_code(cell, tmp_path / "older_program")["status"] == "unknown"
    assert common.cell_code(tmp_path / "nothing")["status"] == "unknown"
    assert [json.loads(l)["git_dirty"] for l in (cell / common.CODE_RECORD).read_text().splitlines()] == [
        False,
        False,
        True,
        False,
    ]
    assert {common.code_mark({"status": s}) for s in ("dirty", "mixed", "unknown")} == {"‡", "§", "†"}
    assert common.code_mark(None) == "†"


def test_census_auc_table_marks_cells_that_cannot_name_their_code():
    entry = lambda cell, code: {
        "cell": cell,
        "arch": cell.split("__")[0],
        "method": cell.split("__")[1],
        "seeds": 1,
        "error": "",
        "test.t.auc": (0.9, np.nan),
        "final_test.t.auc": (0.9, np.nan),
        "best_step": [1],
        "ms_per_step": 1.0,
        "wall_time_s": 1.0,
        "code": code,
    }
    clean = {"git_commit": "abc", "git_dirty": False, "status": "clean"}
    lines = census_grid.auc_lines([entry("hps__equal", clean), entry("hps__pcgrad", None)], ["t"], "title")
    rows = {l.split(" | ")[1]: l for l in lines if l.startswith("| hps")}
    assert set(rows) == {"equal", "pcgrad†"}
    assert common.CODE_NOTE in lines
    lines = census_grid.auc_lines([entry("hps__equal", clean)], ["t"], "title")
    assert common.CODE_NOTE not in lines  # nothing to explain when every cell names its code


def test_qm9_report_marks_rows_with_a_cell_of_unknown_code():
    cells = {"single-task": {0: {"a": 1.0}}, "equal": {0: {"a": 1.1}, 1: {"a": 1.2}}, "pcgrad": {0: {"a": 0.9}}}
    times = {"stl-a-s0": 1.0, "equal-s0": 1.0, "equal-s1": 1.0, "pcgrad-s0": 1.0}
    clean = {"git_commit": "abc", "git_dirty": False, "status": "clean"}
    code = {"stl-a-s0": clean, "equal-s0": clean, "equal-s1": {"status": "dirty"}, "pcgrad-s0": clean}
    result, lines = qm9_gnn.build_report(
        cells,
        ["equal", "pcgrad"],
        ("a",),
        ("D",),
        dict(train_size=10, eval_size=5, epochs=1),
        times,
        code=code,
        notes=["a note"],
    )
    firsts = [l.split(" | ")[0] for l in lines if l.startswith("| ") and "|---" not in l]
    assert "| single-task" in firsts and "| equal (LS)‡" in firsts and "| PCGrad" in firsts
    assert result["cell_code"]["equal-s1"] == {"status": "dirty"} and "a note" in lines
    _, lines = qm9_gnn.build_report(
        cells, ["equal", "pcgrad"], ("a",), ("D",), dict(train_size=10, eval_size=5, epochs=1), times
    )  # no records at all
    text = "\n".join(lines)
    assert all(f"| {row}† |" in text for row in ("single-task", "equal (LS)", "PCGrad"))


def test_census_grid_and_qm9_record_each_cells_code_before_it_trains(repo, tmp_path, monkeypatch):
    from pathlib import Path

    from jmtl.training import loop

    seen = []

    def fake_train(config, run_dir, *args):
        seen.append(common.cell_code(run_dir)["status"])  # the start record exists while it trains
        (Path(run_dir) / "summary.json").write_text("{}")
        return {}, None

    monkeypatch.setattr(census_grid, "train", fake_train)
    monkeypatch.setattr(census_grid.ablation, "programs", lambda cells, spp: [("hps__equal", Path("hps__equal"), None)])
    assert census_grid.run_programs([], tmp_path / "grid", 0, "") == {}
    monkeypatch.setattr(loop, "train", fake_train)
    qm9_gnn.run_cell("equal-s0", None, tmp_path / "qm9" / "equal-s0")
    assert seen == ["clean", "clean"]
    assert common.cell_code(tmp_path / "qm9" / "equal-s0")["git_commit"] == _git(repo, "rev-parse", "HEAD")
