"""experiments/bench/school_cell_cost.py: option checks and the table it writes (no cell trains here)."""

from __future__ import annotations

import sys

import pytest

from experiments.bench import school_cell_cost


def test_too_few_steps_is_refused_before_any_cell(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["school_cell_cost", "--steps", "10", "--out", "/nonexistent/x"])
    monkeypatch.setattr(school_cell_cost, "run_one", lambda *a, **k: pytest.fail("a cell ran"))
    with pytest.raises(SystemExit) as e:
        school_cell_cost.main()
    assert e.value.code == 2
    assert "--steps must be >= 25" in capsys.readouterr().err


def test_markdown_row_carries_each_phase_and_the_params_hash():
    phases = {k: float(i) + 0.25 for i, k in enumerate(school_cell_cost.PHASES)}
    phases["other"] = 9.5
    row = {"method": "mgda", "cache": "warm", "cpu_s": 12.34, "wall_s": 56.7, "phases": phases, "params_sha256": "ab12"}
    lines = school_cell_cost.markdown([row], 25)
    cells = [c.strip() for c in lines[-2].strip("|").split("|")]
    header = [c.strip() for c in lines[-4].strip("|").split("|")]
    assert dict(zip(header, cells)) == {
        "#": "1",
        "scheme": "mgda",
        "cache": "warm",
        "CPU s": "12.3",
        "wall s": "57",
        **{k: f"{v:.1f}" for k, v in phases.items() if k != "other"},
        "other": "9.5",
        "params sha256": "`ab12`",
    }
