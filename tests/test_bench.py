"""experiments/bench/: the parts run end to end in their smallest configuration (the timings are not checked),
the shared round-robin timer, and the provenance every results file carries."""

import importlib.util
import json


def test_bench_scaling_smoke(tmp_path):
    """The scaling part end to end; its outputs also carry the recorded provenance (checked here on
    the same run rather than compiling the Multi-LeNet steps a second time)."""
    from experiments.bench import parts as bench

    argv = [
        "--parts",
        "scaling",
        "--ks",
        "2",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--batch",
        "8",
        "--chunks",
        "1",
        "--methods",
        "",
        "--no-rep",
        "--out-dir",
        str(tmp_path),
    ]
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
    _assert_recorded_provenance(result["provenance"], "")
    md = (tmp_path / "bench_scaling.md").read_text()
    assert "## Provenance" in md and "- git commit:" in md and "- load average:" in md


def test_bench_rows_smoke(tmp_path):
    from experiments.bench import parts as bench

    argv = [
        "--parts",
        "rows",
        "--rows-k",
        "2",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--batch",
        "8",
        "--out-dir",
        str(tmp_path),
    ]
    if importlib.util.find_spec("torch") is None:
        argv.append("--no-torch")
    bench.main(argv)
    result = json.loads((tmp_path / "bench_rows.json").read_text())
    assert [label for label, _ in bench.ROW_SETS] == list(result["rows"])
    assert all(v > 0 for v in result["median_ms"].values())
    assert "| + conv1 kernel |" in (tmp_path / "bench_rows.md").read_text()


def test_round_robin_times_every_fn_each_round_in_varying_order():
    from experiments.bench.common import time_round_robin

    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    samples = time_round_robin(fns, repeats=6, warmup=1)
    assert {n: len(v) for n, v in samples.items()} == {n: 6 for n in "abcd"}
    rounds = [tuple(calls[4 + 4 * r : 8 + 4 * r]) for r in range(6)]  # after the 4 warm-up calls
    assert all(sorted(r) == list("abcd") for r in rounds)
    assert len(set(rounds)) > 1  # no row always follows the same neighbour


def _assert_recorded_provenance(prov, command_part):
    import os
    import subprocess

    assert prov["recorded"] is True
    assert command_part in prov["command"]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__))
    ).stdout.strip()
    assert prov["git_commit"] == (head or None)  # None outside a git checkout
    assert prov["machine"]["cores"] == os.cpu_count()
    assert len(prov["load_average_start"]) == len(prov["load_average_end"]) == 3
    assert prov["date"] >= prov["date_start"]  # ISO 8601 UTC strings sort by time


def test_write_outputs_and_markdown_mark_recovered_provenance(tmp_path):
    from experiments.bench import common

    prov = common.provenance(command="python -m experiments.bench.step --repeats 3")
    _assert_recorded_provenance(prov, "--repeats 3")
    common.write_outputs(tmp_path / "sub" / "x", {"a": 1}, ["# title"], prov, echo=False)
    assert json.loads((tmp_path / "sub" / "x.json").read_text()) == {"a": 1, "provenance": prov}
    md = (tmp_path / "sub" / "x.md").read_text()
    assert md.startswith("# title\n") and "`python -m experiments.bench.step --repeats 3`" in md
    assert "Recorded by the script" in md
    recovered = common.provenance_markdown(
        {
            "recorded": False,
            "note": "from git log",
            "git_commit": "abc",
            "machine": "the shared 2-core CPU",
            "load_average": "not recorded",
        }
    )
    text = "\n".join(recovered)
    assert "**Recovered after the fact**" in text and "not recorded" in text and "`abc`" in text


def test_round_robin_rejects_no_repeats():
    import pytest

    from experiments.bench.common import time_round_robin

    with pytest.raises(ValueError, match="repeats"):
        time_round_robin({"a": lambda: None}, repeats=0)
