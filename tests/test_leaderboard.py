"""The leaderboard (jmtl/drivers/leaderboard.py): bootstrap intervals against a brute-force
percentile, paired differences, the tie rule, and a tiny board that resumes without retraining,
refuses a changed protocol and refuses a typo before any work."""

import itertools
import json
import re

import numpy as np
import pytest
from conftest import toy_config

from jmtl.drivers import leaderboard as lb
from jmtl.errors import GridMismatchError


def _brute_force_ci(x, confidence=0.95):
    """Every one of the n^n equally likely resamples enumerated (n = 4: 256), each mean weighted
    equally: the exact bootstrap distribution, whose percentiles the Monte Carlo interval estimates."""
    means = np.array([np.mean(c) for c in itertools.product(x, repeat=len(x))])
    a = (1 - confidence) / 2
    return np.quantile(means, [a, 1 - a])


def test_bootstrap_ci_matches_the_exact_bootstrap_distribution():
    x = [1.0, 2.0, 4.0, 8.0]
    mean, lo, hi = lb.bootstrap_ci(x, resamples=200_000, seed=1)
    exact_lo, exact_hi = _brute_force_ci(x)
    assert mean == pytest.approx(3.75)
    # Monte Carlo error of a 2.5 % quantile at B = 2e5 is far below the 0.25 grid spacing of the means.
    assert lo == pytest.approx(exact_lo, abs=0.13) and hi == pytest.approx(exact_hi, abs=0.13)
    assert lo < mean < hi
    # Fixed seed: the same interval twice; constant values: a zero-width interval at the value.
    assert lb.bootstrap_ci(x, seed=3) == lb.bootstrap_ci(x, seed=3)
    assert lb.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="Fix: run more seeds"):
        lb.bootstrap_ci([1.0])


def test_paired_difference_uses_common_seeds_only():
    scheme = {0: 1.0, 1: 2.0, 2: 3.0, 7: 100.0}
    equal = {0: 0.5, 1: 1.5, 2: 2.5, 3: -50.0}
    mean, lo, hi, n = lb.paired_difference(scheme, equal)
    # Seeds 0, 1, 2 in both, each 0.5 apart: the paired difference is 0.5 with a zero-width interval,
    # though the unpaired seed spreads (1..3 vs 0.5..2.5) overlap.
    assert (mean, lo, hi, n) == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5), 3)
    with pytest.raises(ValueError, match="present in both"):
        lb.paired_difference({0: 1.0, 5: 2.0}, {0: 1.0, 6: 2.0})


def test_rank_with_ties_on_hand_made_intervals():
    intervals = {"a": (-3.0, -2.0), "b": (-2.5, -1.0), "c": (-0.5, 0.5), "d": (0.0, 1.0), "e": (2.0, 3.0)}
    # a and b overlap: both rank 1. c lies wholly above a and b: rank 3. d overlaps c but is above a, b: 3.
    # e lies above a, b, c and d: rank 5.
    assert lb.rank_with_ties(intervals) == {"a": 1, "b": 1, "c": 3, "d": 3, "e": 5}
    # Touching intervals overlap (a tie), strictly separated ones do not.
    assert lb.rank_with_ties({"x": (0.0, 1.0), "y": (1.0, 2.0)}) == {"x": 1, "y": 1}
    assert lb.rank_with_ties({"x": (0.0, 1.0), "y": (1.0 + 1e-9, 2.0)}) == {"x": 1, "y": 2}


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory):
    """One toy data cache for the module's tests (building it is most of a tiny run's time)."""
    return tmp_path_factory.mktemp("leaderboard_data")


def _registry(cache, num_steps=4):
    def make():
        return toy_config(
            cache, num_steps=num_steps, eval_every_steps=2, log_every_steps=2, parallel="single", progress_bar=False
        )

    # baseline="config": one reference cell (the same toy model, equal weighting) instead of one
    # single-task cell per task, so the board test trains three small cells.
    return {"toy": lb.Benchmark("toy", make, "the gradnorm toy, a few steps", baseline="config", baseline_config=make)}


def test_board_resumes_refuses_other_protocols_and_typos(tmp_path, data_cache, monkeypatch):
    wd = tmp_path / "board"
    reg = _registry(data_cache)
    started = lambda d: (d / "code.jsonl").write_text(json.dumps({"git_commit": "c0ffee", "git_dirty": False}) + "\n")
    record = lb.run(wd, ["toy"], ["equal", "mean"], seeds=2, registry=reg, on_cell_start=started)
    toy = record["benchmarks"]["toy"]
    assert set(toy["entries"]) == {"equal", "mean"} and toy["missing"] == []
    eq, mg = toy["entries"]["equal"], toy["entries"]["mean"]
    assert eq["vs_equal"] == 0.0 and eq["vs_equal_ci"] == [0.0, 0.0]
    # Paired difference recomputed from the per-seed Δm% the record holds.
    d = [mg["per_seed"][s] - eq["per_seed"][s] for s in ("0", "1")]
    assert mg["vs_equal"] == pytest.approx(np.mean(d))
    # Every cell carries its protocol fingerprint; the baseline (the same toy model with equal
    # weighting) has the equal cell's config, so the same fingerprint; mean's differs.
    fp = {c["cell"]: c["fingerprint"] for c in toy["cells"]}
    assert fp["baseline__reference"] == fp["hps__equal"] != fp["hps__mean"]
    assert {c["git_commit"] for c in toy["cells"]} == {"c0ffee"}  # the code each cell started from
    lines = "\n".join(lb.markdown(record))
    assert "Tie rule" in lines and "one learning rate for all schemes" in lines and "`mean`" in lines
    # The main interval is the t interval of the per-seed values; the summary is on the board.
    assert mg["ci"] == pytest.approx(list(lb.t_interval([mg["per_seed"][s] for s in ("0", "1")])[1:]))
    assert record["overall"] in lines and toy["summary"]["headline"] in lines

    # A rerun trains nothing: the train loop is never entered and the summaries are untouched.
    stamp = (wd / "toy" / "cells" / "hps__mean" / "summary.json").stat().st_mtime_ns
    monkeypatch.setattr(lb.ablation, "train", lambda *a, **k: pytest.fail("a finished cell was retrained"))
    again = lb.run(wd, ["toy"], ["equal", "mean"], seeds=2, registry=reg)
    assert again["benchmarks"]["toy"]["entries"]["mean"]["per_seed"] == mg["per_seed"]
    assert (wd / "toy" / "cells" / "hps__mean" / "summary.json").stat().st_mtime_ns == stamp

    # The plan counts the finished cells' recorded cost and estimates the unfinished pcgrad cell
    # (gramian) by a pilot, the losses class by the finished cells' median: no pilot for it.
    pilots = []
    fake = lambda b, m, s: pilots.append(m) or {"method": m, "s_per_step": 0.0, "fixed_s": 5.0, "cpu_per_wall": 1.0}
    p = lb.plan(wd, [reg["toy"]], ["equal", "mean", "pcgrad"], seeds=2, measure=fake)["benchmarks"]["toy"]
    assert pilots == ["pcgrad"] and [r["done"] for r in p["cells"]] == [True, True, True, False]
    assert p["todo_s"] == 5.0 and p["done_s"] == pytest.approx(sum(c["cpu_s"] for c in toy["cells"]))

    # A changed protocol is refused before any work, naming what changed.
    with pytest.raises(GridMismatchError, match=re.escape("num_steps: 4 -> 9")):
        lb.run(wd, ["toy"], ["equal", "mean"], seeds=2, registry=_registry(data_cache, num_steps=9))
    # Typos: refused before any work, naming the closest valid name.
    with pytest.raises(ValueError, match="did you mean 'toy'"):
        lb.run(wd, ["tyo"], ["equal"], seeds=2, registry=reg)
    with pytest.raises(ValueError, match="did you mean 'mgda'"):
        lb.run(wd, ["toy"], ["equal", "mgdaa"], seeds=2, registry=reg)
    with pytest.raises(ValueError, match="--seeds must be >= 2"):
        lb.run(wd, ["toy"], ["equal"], seeds=1, registry=reg)
    # A missing cell is listed, not silently dropped.
    partial = lb.run(wd, ["toy"], ["equal", "mean", "pcgrad"], seeds=2, registry=reg, report_only=True)
    assert partial["benchmarks"]["toy"]["missing"] == ["hps__pcgrad"]
    assert "Missing cells (1)" in "\n".join(lb.markdown(partial))
    # A registered benchmark left off the board is named as such.
    other = lb.run(wd, ["toy"], ["equal"], seeds=2, registry={**reg, "more": reg["toy"]}, report_only=True)
    assert other["not_on_board"] == {"more": "the gradnorm toy, a few steps"}
    assert "Registered benchmarks not on this board" in "\n".join(lb.markdown(other))
    json.dumps(partial)  # the record is JSON as written


def test_plan_scales_pilot_measurements(tmp_path, data_cache):
    reg = _registry(data_cache)
    fake = lambda b, m, s: {"method": m, "s_per_step": 0.5, "fixed_s": 10.0, "cpu_per_wall": 1.0}
    p = lb.plan(tmp_path / "plan", [reg["toy"]], ["equal", "mgda"], seeds=2, measure=fake)
    cells = p["benchmarks"]["toy"]["cells"]
    # The baseline cell + equal + mgda, each 10 s + 0.5 s × 4 steps; each class measured once.
    assert [c["seconds"] for c in cells] == [12.0] * 3
    assert set(p["benchmarks"]["toy"]["pilots"]) == {"losses", "gramian"}
    assert p["todo_cpu_hours"] == pytest.approx(36.0 / 3600)


def test_xla_cache_setting_is_resolved_before_any_cell(tmp_path, monkeypatch):
    """--xla_cache: 'auto' = <workdir>/xla_cache, a folder as given, '' = off; a cache the user set in
    JAX_COMPILATION_CACHE_DIR wins (jax's config is restored after the test)."""
    import jax

    before = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
    try:
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
        lb.use_xla_cache("auto", tmp_path / "work")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "work" / "xla_cache")
        assert (tmp_path / "work" / "xla_cache").is_dir() and jax.config.jax_persistent_cache_min_compile_time_secs == 0
        lb.use_xla_cache(str(tmp_path / "mine"), tmp_path / "work")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
        jax.config.update("jax_compilation_cache_dir", "unchanged")
        lb.use_xla_cache("", tmp_path / "work")
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "user"))
        lb.use_xla_cache("auto", tmp_path / "work")
        assert jax.config.jax_compilation_cache_dir == "unchanged"
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])


def test_method_overrides_touch_only_their_scheme(data_cache):
    """A benchmark's scheme-specific setting (School's MOML reads the whole validation split:
    ``weighting.meta_batch_size=-1``) reaches that scheme's cell alone; the other cells' protocol keys
    are the same as without it (recorded cells keep their fingerprints), and a misspelt field is refused."""
    import dataclasses

    plain = _registry(data_cache)["toy"]
    with_override = dataclasses.replace(plain, method_overrides={"moml": {"weighting.meta_batch_size": -1}})
    _, before = lb.cells_of(plain, ["equal", "mgda", "moml"], 2)
    _, after = lb.cells_of(with_override, ["equal", "mgda", "moml"], 2)
    keys = {name: lb.fingerprint(lb.protocol_key(c)) for name, c in after}
    assert {name: c.weighting.meta_batch_size for name, c in after} == {
        "hps__equal": 0,
        "hps__mgda": 0,
        "hps__moml": -1,
    }
    for (name, c_before), (_, c_after) in zip(before, after):
        same = keys[name] == lb.fingerprint(lb.protocol_key(c_before))
        assert same == (name != "hps__moml"), name
    typo = dataclasses.replace(plain, method_overrides={"moml": {"weighting.meta_batch_sise": -1}})
    with pytest.raises(KeyError, match="meta_batch_sise"):
        lb.cells_of(typo, ["moml"], 2)


def test_a_lost_workdir_is_rebuilt_from_the_archive_without_training(tmp_path, data_cache, monkeypatch):
    """Finished cells are archived (record files only) and restored into a new workdir: the board is
    the same and nothing trains; one cell with two results, or an unfinished attempt of an archived
    cell, is refused; a benchmark this run does not hold is carried over from the board it replaces."""
    import shutil

    reg = _registry(data_cache)
    archive = tmp_path / "archive"
    first = lb.run(tmp_path / "wd1", ["toy"], ["equal", "mean"], seeds=2, registry=reg, archive_dir=archive)
    archived = sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*") if p.is_file())
    assert "toy/cells/hps__mean/summary.json" in archived and "toy/cells/hps__mean/protocol.json" in archived
    assert not any("checkpoint" in p or p.endswith("metrics.jsonl") for p in archived)  # records, not the run

    monkeypatch.setattr(lb.ablation, "train", lambda *a, **k: pytest.fail("an archived cell was retrained"))
    second = lb.run(tmp_path / "wd2", ["toy"], ["equal", "mean"], seeds=2, registry=reg, archive_dir=archive)
    assert second["benchmarks"]["toy"]["entries"] == first["benchmarks"]["toy"]["entries"]
    assert [c["fingerprint"] for c in second["benchmarks"]["toy"]["cells"]] == [
        c["fingerprint"] for c in first["benchmarks"]["toy"]["cells"]
    ]
    # The archived protocol is checked like any cell's: another protocol is refused.
    with pytest.raises(GridMismatchError, match=re.escape("num_steps: 4 -> 9")):
        lb.run(tmp_path / "wd3", ["toy"], ["equal"], seeds=2, registry=_registry(data_cache, 9), archive_dir=archive)

    # One cell, two results: refused by archive() and by restore(), naming the cell.
    full = json.loads((tmp_path / "wd1" / "toy" / "cells" / "hps__mean" / "summary.json").read_text())
    cut = json.loads((archive / "toy" / "cells" / "hps__mean" / "summary.json").read_text())
    assert cut == lb.board_summary(full) and cut == lb.board_summary(cut) and "final" not in cut
    summary = tmp_path / "wd2" / "toy" / "cells" / "hps__mean" / "summary.json"
    changed = json.loads(summary.read_text())
    test = changed["seeds"][0]["best_validation"]["test"]
    task = sorted(test)[0]
    metric = sorted(test[task])[0]
    test[task][metric] += 1.0
    summary.write_text(json.dumps(changed))
    with pytest.raises(GridMismatchError, match="hps__mean is finished both"):
        lb.archive(tmp_path / "wd2", archive, ["toy"])
    with pytest.raises(GridMismatchError, match="hps__mean is finished both"):
        lb.restore(archive, tmp_path / "wd2", ["toy"])
    # An unfinished attempt of an archived cell in the workdir: refused, not trained a second time.
    partial = tmp_path / "wd4" / "toy" / "cells" / "hps__mean"
    partial.mkdir(parents=True)
    shutil.copy(archive / "toy" / "cells" / "hps__mean" / "config.json", partial / "config.json")
    with pytest.raises(GridMismatchError, match="unfinished or failed attempt"):
        lb.restore(archive, tmp_path / "wd4", ["toy"])

    # Carry-over: the replaced board's other benchmark is kept as rendered, marked, and counted.
    previous = json.loads(json.dumps(first))
    previous["benchmarks"] = {"old": previous["benchmarks"]["toy"]}
    previous["provenance"] = {"git_commit": "abcdef1234", "date": "2026-12-06T10:00:00+00:00"}
    record = lb.run(tmp_path / "wd2b", ["toy"], ["equal", "mean"], seeds=2, registry=reg, archive_dir=archive)
    assert lb.carry_over(record, previous) == ["old"]
    assert list(record["benchmarks"]) == ["old", "toy"]  # the replaced board's order, then the new
    assert record["benchmarks"]["old"]["carried_over"]["git_commit"] == "abcdef1234"
    assert record["benchmarks"]["old"]["entries"] == previous["benchmarks"]["old"]["entries"]
    assert record["cpu_hours"] == pytest.approx(2 * first["cpu_hours"])
    assert (
        record["overall"] == lb.overall_summary(record)
        and "both benchmarks" in record["overall"]
        or ("2 benchmarks" in record["overall"])
    )
    assert "Carried over unchanged from the board rendered at `abcdef1`" in "\n".join(lb.markdown(record))
    assert lb.carry_over(record, previous) == []  # a benchmark this board holds is never replaced
