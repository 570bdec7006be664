"""The leaderboard's statistics and what it says (jmtl/drivers/leaderboard.py): the Student-t main
interval against closed forms, scipy and a coverage simulation; verdicts and ranks from that
interval; the plain-language summary on synthetic boards; failed cells retried from scratch.
No training: the boards here are made of hand-made per-seed values."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import toy_config

from jmtl.drivers import leaderboard as lb

# ----------------------------------------------------------------------------- the t quantile


def test_t_quantile_matches_closed_forms_and_scipy():
    from scipy import stats  # in requirements.txt (the School extra): the reference, never a dependency of the board

    for p in (0.6, 0.9, 0.95, 0.975, 0.995, 0.9995):
        # nu = 1 (Cauchy): F(x) = 1/2 + atan(x)/pi.  nu = 2: F(x) = 1/2 + x / (2 sqrt(2 + x^2)).
        assert lb.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
        s = 2 * p - 1
        assert lb.t_quantile(p, 2) == pytest.approx(math.sqrt(2) * s / math.sqrt(1 - s * s), rel=1e-10)
        for df in (3, 4, 5, 9, 19, 30, 99):
            assert lb.t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9), (p, df)
    assert lb.t_quantile(0.975, 4) == pytest.approx(2.7764451052, abs=1e-9)  # the 5-seed multiplier
    assert lb.t_quantile(0.025, 4) == -lb.t_quantile(0.975, 4)  # symmetric
    assert lb.t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-12)
    # Large df tends to the normal quantile 1.95996...
    assert lb.t_quantile(0.975, 10_000) == pytest.approx(1.959964, abs=1e-3)
    for bad in ((1.0, 4), (0.0, 4), (0.9, 0), (0.9, 2.5)):
        with pytest.raises(ValueError, match="integer df >= 1"):
            lb.t_quantile(*bad)


def test_t_interval_is_mean_plus_minus_t_times_standard_error():
    x = [1.0, 2.0, 4.0, 8.0, 10.0]
    mean, lo, hi = lb.t_interval(x)
    sd = np.std(x, ddof=1)
    assert mean == pytest.approx(5.0)
    assert hi - mean == pytest.approx(mean - lo) == pytest.approx(2.7764451052 * sd / math.sqrt(5))
    assert lb.t_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)  # no spread: a zero-width interval
    with pytest.raises(ValueError, match="Fix: run more seeds"):
        lb.t_interval([1.0])
    with pytest.raises(ValueError, match="finite"):
        lb.t_interval([1.0, float("nan")])


def test_coverage_of_the_main_interval_and_the_bootstrap_at_five_seeds():
    """2000 samples of n = 5 from N(3, 2^2): the t interval covers the mean 95 % of the time (binomial
    sd 0.5 %), the percentile bootstrap only about 85 % (why it is not the main interval)."""
    rng = np.random.default_rng(0)
    samples = rng.normal(3.0, 2.0, size=(2000, 5))
    t_cover = np.mean([lo <= 3.0 <= hi for _, lo, hi in map(lb.t_interval, samples)])
    boot = [lb.bootstrap_ci(x, resamples=1000, seed=i) for i, x in enumerate(samples)]
    boot_cover = np.mean([lo <= 3.0 <= hi for _, lo, hi in boot])
    assert 0.93 <= t_cover <= 0.97, t_cover
    assert 0.80 <= boot_cover <= 0.90, boot_cover


# ----------------------------------------------------------------------------- entries, verdicts, ranks


def test_verdicts_and_ranks_use_the_t_interval_not_the_bootstrap():
    equal = {s: 0.0 for s in range(5)}
    # Paired differences around 0.16, one seed negative: the percentile bootstrap interval
    # excludes 0 (about 85 % coverage), the t interval does not.
    d = {0: 0.30, 1: 0.25, 2: 0.20, 3: 0.15, 4: -0.10}
    e = lb.entry(d, equal)
    mean, lo, hi = lb.t_interval(list(d.values()))
    assert e["vs_equal_ci"] == [lo, hi] and lo < 0 < hi
    assert e["vs_equal_ci_bootstrap"][0] > 0  # the bootstrap alone would call it worse
    assert e["vs_equal_verdict"] == "tie" and e["ci"] == [lo, hi]
    assert lb.entry({s: 1.0 + 0.01 * s for s in range(5)}, equal)["vs_equal_verdict"] == "worse"
    assert lb.entry({s: -1.0 + 0.01 * s for s in range(5)}, equal)["vs_equal_verdict"] == "better"
    assert lb.entry(equal, equal)["vs_equal_verdict"] == "tie"  # equal against itself: [0, 0] contains 0
    assert [lb.verdict(c) for c in ([-2, -1], [-1, 0], [0, 1], [1, 2])] == ["better", "tie", "tie", "worse"]


def _board(per_seed: dict[str, list[float]], missing=()) -> dict:
    """A benchmark's part of a board record from hand-made per-seed Δm% (what benchmark_results does
    after reading the cells)."""
    entries = lb.ranked_entries({m: dict(enumerate(v)) for m, v in per_seed.items()})
    return {"entries": entries, "missing": list(missing)}


def test_summary_of_a_board_where_one_scheme_clearly_wins():
    rng = np.random.default_rng(1)
    base = rng.normal(0.0, 1.0, 5)  # shared seed effects: the paired differences cancel them
    board = _board(
        {
            "equal": list(base),
            "winner": list(base - 2.0 + rng.normal(0, 0.05, 5)),
            "loser": list(base + 3.0 + rng.normal(0, 0.05, 5)),
            "same": list(base + rng.normal(0, 0.3, 5)),
        }
    )
    s = lb.summarize("bench", board)
    assert (s["better"], s["worse"], s["tie"]) == (["winner"], ["loser"], ["same"])
    assert s["best"] == "winner" and s["worst"] == "loser"
    means = [e["delta_m"] for e in board["entries"].values()]
    assert s["spread"] == pytest.approx(max(means) - min(means))
    widths = [e["ci"][1] - e["ci"][0] for e in board["entries"].values()]
    assert s["median_ci_width"] == pytest.approx(np.median(widths))
    assert lb.NO_WINNER not in " ".join(s["text"])
    assert s["headline"] == (
        "bench: 1 of 3 schemes beats equal weighting beyond noise (`winner`); 1 is worse and 1 is no different."
    )
    text = " ".join(s["text"])
    assert "1 wholly below 0 (better): `winner`" in text and "1 wholly above 0 (worse): `loser`" in text
    assert f"span {s['spread']:.2f} points" in text
    record = {"benchmarks": {"bench": {**board, "summary": s}}}
    assert lb.overall_summary(record) == (
        "Schemes that beat equal weighting beyond noise (1 benchmark on the board): `winner` on bench."
    )


def test_summary_of_a_board_where_no_scheme_separates():
    rng = np.random.default_rng(2)
    # Every scheme's per-seed Δm% is equal's plus noise centred on 0 (its seed mean is exactly 0,
    # so its paired t interval is centred on 0): nothing separates, whatever the draw.
    equal = rng.normal(0.0, 1.0, 5)
    noise = {f"s{i}": rng.normal(0, 0.5, 5) for i in range(6)}
    board = _board(
        {"equal": list(equal), **{m: list(equal + n - n.mean()) for m, n in noise.items()}}, missing=["hps__later"]
    )
    assert all(e["vs_equal_verdict"] == "tie" for e in board["entries"].values())
    s = lb.summarize("null", board)
    assert s["better"] == [] and s["worse"] == [] and len(s["tie"]) == 6
    assert (
        s["headline"]
        == "null: no scheme beats equal weighting beyond noise; 0 of 6 schemes are worse than it and 6 are no different."
    )
    assert "about 0.15 would fall wholly below 0" in " ".join(s["text"])  # 2.5 % of 6
    assert s["text"][-1] == "1 cell is missing, so this may change."
    # A board where the only scheme is worse: still "no scheme beats" for it.
    worse = lb.summarize("w", _board({"equal": [0, 0.1, 0.2, 0.1, 0.0], "bad": [5, 5.1, 5.2, 5.1, 5.0]}))
    assert lb.NO_WINNER in worse["headline"] and worse["worse"] == ["bad"]
    record = {"benchmarks": {"a": {"summary": s}, "b": {"summary": worse}}}
    assert (
        lb.overall_summary(record) == "On both benchmarks on the board, no scheme beats equal weighting beyond noise."
    )
    # Unfinished equal weighting: nothing compared, said so.
    assert "not finished" in lb.summarize("x", _board({"mgda": [1, 2, 3]}))["headline"]
    assert lb.summarize("x", {"entries": {}, "missing": ["a", "b"]})["text"] == [
        "x: no finished cells yet.",
        "2 cells are missing, so this may change.",
    ]


# ----------------------------------------------------------------------------- failed cells


def test_a_failed_cell_is_retried_from_scratch_and_an_interrupted_one_resumes(tmp_path, monkeypatch, capsys):
    config = toy_config(tmp_path, num_steps=4, eval_every_steps=2, parallel="single")
    bench = tmp_path / "bench"
    cell = bench / "cells" / "hps__x"
    seen = []

    def fake_train(c, run_dir):  # what the train loop would find in the cell's folder
        seen.append(sorted(p.name for p in Path(run_dir).rglob("*")))
        if fail[0]:
            raise ValueError("still broken")
        summary = {"seeds": [], "steps": 4, "wall_time_s": 0.1}
        (cell / "summary.json").write_text(json.dumps(summary))
        return summary, None

    monkeypatch.setattr(lb.ablation, "train", fake_train)
    # An attempt that failed mid-run: its checkpoint, logs, cost and code record are on disk.
    lb.write_protocol(bench, "hps__x", config)
    (cell / "checkpoints").mkdir()
    (cell / "checkpoints" / "ckpt_50").write_text("old code's weights")
    (cell / "metrics.jsonl").write_text('{"step": 50}\n')
    (cell / "cost.json").write_text(json.dumps({"wall_s": 9.0, "cpu_s": 9.0, "sessions": 1}))
    (cell / "error.txt").write_text("ValueError: solver failed under shard_map\n\ntraceback")

    # Its protocol record differs from this run's (say the fix changed a setting): a failed cell holds no
    # result, so it is not refused; it is retried under this run's protocol.
    other_protocol = toy_config(tmp_path, num_steps=9, eval_every_steps=2, parallel="single")
    lb.write_protocol(bench, "hps__x", other_protocol)
    lb.check_protocols(bench, [("hps__x", config)])
    fail = [True]
    assert lb.train_cell(bench, "hps__x", config) == "ValueError: still broken"  # the retry fails too
    fail[0] = False
    assert lb.train_cell(bench, "hps__x", config) is None
    out = capsys.readouterr().out
    assert out.count("retried bench/hps__x from scratch") == 2 and "solver failed under shard_map" in out
    # Each retry started from an empty folder (only its protocol record): nothing of a failed attempt.
    assert seen == [["protocol.json"], ["protocol.json"]]
    attempts = bench / lb.FAILED_DIR / "hps__x"
    assert (attempts / "attempt_1" / "checkpoints" / "ckpt_50").exists()
    assert (attempts / "attempt_2" / "error.txt").read_text().startswith("ValueError: still broken")
    assert lb.finished(bench, "hps__x") and not (cell / "error.txt").exists()
    assert json.loads((cell / lb.PROTOCOL_FILE).read_text())["key"]["num_steps"] == 4
    with pytest.raises(lb.GridMismatchError, match="num_steps: 4 -> 9"):  # a finished cell is protected again
        lb.check_protocols(bench, [("hps__x", other_protocol)])
    rec = lb.cell_record(bench, "hps__x")
    assert rec["sessions"] == 1 and "error" not in rec  # the fresh attempt's cost only
    assert rec["failed_attempts"] == ["ValueError: solver failed under shard_map", "ValueError: still broken"]
    # A finished cell is not touched again.
    monkeypatch.setattr(lb.ablation, "train", lambda *a: pytest.fail("a finished cell was retrained"))
    assert lb.train_cell(bench, "hps__x", config) is None

    # An interrupted cell (no error.txt) resumes in place: its checkpoint is what the loop finds.
    other = bench / "cells" / "hps__y"
    lb.write_protocol(bench, "hps__y", config)
    (other / "checkpoints").mkdir()
    (other / "checkpoints" / "ckpt_2").write_text("same code's weights")
    found = []
    monkeypatch.setattr(
        lb.ablation, "train", lambda c, d: found.append((other / "checkpoints" / "ckpt_2").exists()) or ({}, None)
    )
    lb.train_cell(bench, "hps__y", config)
    assert found == [True] and "retried" not in capsys.readouterr().out


def test_the_overall_sentence_groups_schemes_that_win_on_the_same_benchmarks():
    """Lossless: every (scheme, benchmark) win is named once, schemes with the same wins share one
    clause, the widest clause first; 'only ... on every benchmark' when one wins everywhere."""
    wins = {"a": ["x", "y"], "b": ["x"], "c": ["x", "y"], "d": ["y"], "e": ["x"]}
    summaries = {"x": [m for m, bs in wins.items() if "x" in bs], "y": [m for m, bs in wins.items() if "y" in bs]}
    record = {"benchmarks": {b: {"summary": {"better": ms}} for b, ms in summaries.items()}}
    assert lb.overall_summary(record) == (
        "Schemes that beat equal weighting beyond noise (2 benchmarks on the board): `a`, `c` on x, y; "
        "`b`, `e` on x; `d` on y. Only `a`, `c` beat it on every benchmark."
    )
