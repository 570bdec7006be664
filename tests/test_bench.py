"""experiments/bench.py runs end to end in its smallest configuration (the timings are not checked)."""

import importlib.util
import json


def test_bench_scaling_smoke(tmp_path):
    from experiments import bench

    argv = ["--parts", "scaling", "--ks", "2", "--repeats", "1", "--warmup", "0", "--batch", "8",
            "--chunks", "1", "--methods", "", "--no-rep", "--out-dir", str(tmp_path)]
    if importlib.util.find_spec("torch") is None:
        argv.append("--no-torch")
    bench.main(argv)
    result = json.loads((tmp_path / "bench_scaling.json").read_text())
    res = result["by_k"]["2"]
    assert not res["errors"], res["errors"]
    rows = res["rows"]
    assert {"equal", bench.bare_label(0), bench.bare_label(1)} <= set(rows)
    assert all(r["median_ms"] > 0 for r in rows.values())
    assert res["fastest_bare_chunk"] in (0, 1)
    if res["memory_check"] is not None:  # XLA's memory analysis: one chunk needs less than K at once
        assert res["memory_check"]["chunking_reduces_temp"]
    assert "## K = 2" in (tmp_path / "bench_scaling.md").read_text()


def test_bench_rows_smoke(tmp_path):
    from experiments import bench

    argv = ["--parts", "rows", "--rows-k", "2", "--repeats", "1", "--warmup", "0", "--batch", "8",
            "--out-dir", str(tmp_path)]
    if importlib.util.find_spec("torch") is None:
        argv.append("--no-torch")
    bench.main(argv)
    result = json.loads((tmp_path / "bench_rows.json").read_text())
    assert [label for label, _ in bench.ROW_SETS] == list(result["rows"])
    assert all(v > 0 for v in result["median_ms"].values())
    assert "| + conv1 kernel |" in (tmp_path / "bench_rows.md").read_text()


def test_round_robin_times_every_fn_each_round_in_varying_order():
    from experiments.bench_step import time_round_robin

    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    samples = time_round_robin(fns, repeats=6, warmup=1)
    assert {n: len(v) for n, v in samples.items()} == {n: 6 for n in "abcd"}
    rounds = [tuple(calls[4 + 4 * r: 8 + 4 * r]) for r in range(6)]  # after the 4 warm-up calls
    assert all(sorted(r) == list("abcd") for r in rounds)
    assert len(set(rounds)) > 1  # no row always follows the same neighbour
