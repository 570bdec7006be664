"""The README's headline leaderboard table (experiments/readme_tables.py, ``leaderboard_headline``)
renders from results/leaderboard.json: the top schemes by rank plus equal weighting, their t
intervals and verdicts, the board's summary sentences; a changed number fails ``--check``; a board
file from before the t intervals is refused, naming the fix. Synthetic boards, no training."""

import json

import numpy as np
import pytest
from test_leaderboard_stats import _board as _benchmark

from experiments import readme_tables as rt
from jmtl.drivers import leaderboard as lb


def _write_board(results, benchmarks: dict) -> dict:
    for name, r in benchmarks.items():
        r["summary"] = lb.summarize(name, r)
    record = {"interval": "student_t", "benchmarks": benchmarks}
    record["overall"] = lb.overall_summary(record)
    results.mkdir(parents=True, exist_ok=True)
    (results / "leaderboard.json").write_text(json.dumps(record))
    return record


@pytest.fixture
def board(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    base = rng.normal(0.0, 0.5, 5)
    jitter = lambda: rng.normal(0.0, 0.02, 5)
    schemes = {
        "equal": base,
        "a_win": base - 1.0 + jitter(),
        "b_win": base - 0.8 + jitter(),
        "c_mid": base - 0.1 + jitter(),
        "d_bad": base + 2.0 + jitter(),
    }
    benchmarks = {
        "bench_win": _benchmark({m: list(v) for m, v in schemes.items()}),
        "bench_null": _benchmark(
            {"equal": list(base), "x": list(base + (j := jitter()) - j.mean()), "y": list(base + 3.0)}
        ),
    }
    results = tmp_path / "results"
    monkeypatch.setattr(rt, "RESULTS", results)
    return results, _write_board(results, benchmarks)


def test_headline_rows_and_sentences_come_from_the_board(board):
    results, record = board
    lines = rt.leaderboard_headline()
    rows = [l for l in lines if l.startswith("| bench_")]
    win = record["benchmarks"]["bench_win"]["entries"]
    # The LEADERBOARD_TOP (2) best by rank (ties ordered by mean Δm%), then equal weighting (not among them).
    top = rt.LEADERBOARD_TOP
    order = sorted(win, key=lambda m: (win[m]["rank"], win[m]["delta_m"]))[:top]
    assert [r.split(" | ")[2] for r in rows[: top + 1]] == [f"`{m}`" for m in order] + ["`equal`"]
    a = win["a_win"]
    assert rows[0] == (
        f"| bench_win | {a['rank']} | `a_win` | {a['delta_m']:+.2f} [{a['ci'][0]:+.2f}, {a['ci'][1]:+.2f}] | "
        f"{a['vs_equal']:+.2f} [{a['vs_equal_ci'][0]:+.2f}, {a['vs_equal_ci'][1]:+.2f}] | better | 5 |"
    )
    # bench_null: x's paired differences average exactly 0 (a tie whatever the draw), y is worse;
    # equal is among its top two, shown once.
    null_rows = [r for r in rows if r.startswith("| bench_null")]
    assert sum("`equal`" in r for r in null_rows) == 1 and len(null_rows) == 2
    assert not any("`y`" in r for r in null_rows)  # y (worse) ranks below the two shown
    assert "bench_null: no scheme beats equal weighting beyond noise; 1 of 2 schemes is worse" in "\n".join(lines)
    text = "\n".join(lines)
    assert record["benchmarks"]["bench_win"]["summary"]["headline"].removesuffix(".") in text
    assert "bench_null: no scheme beats equal weighting beyond noise" in text
    assert lines[-1] == f"**{record['overall']}**" and "`a_win`, `b_win`, `c_mid` on bench_win" in record["overall"]


def test_a_changed_board_number_fails_the_check_and_an_old_board_is_refused(board, tmp_path):
    results, record = board
    readme = tmp_path / "README.md"
    readme.write_text("<!-- table:leaderboard_headline -->\nstale\n<!-- /table:leaderboard_headline -->\n")
    assert rt.main(["--readme", str(readme)]) == 0
    assert rt.main(["--check", "--readme", str(readme)]) == 0
    record["benchmarks"]["bench_win"]["entries"]["a_win"]["delta_m"] -= 0.5
    (results / "leaderboard.json").write_text(json.dumps(record))
    assert rt.main(["--check", "--readme", str(readme)]) == 1
    # A board rendered before the t intervals and summaries (bootstrap-only): refused, naming the fix.
    del record["interval"]
    (results / "leaderboard.json").write_text(json.dumps(record))
    with pytest.raises(rt.TableError, match="predates the board's Student-t intervals.*Fix: re-render"):
        rt.render(readme.read_text())
