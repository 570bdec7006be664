"""experiments/bench/lenet_floor.py: the FLOP count against a hand count of Multi-LeNet, and the smoke's
floor and ratios recomputed from what it recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.bench import lenet_floor


def test_step_flops_match_a_hand_count():
    """Per image: conv1 24*24*10*25 = 144,000 multiply-adds, conv2 8*8*20*250 = 320,000, fc 320*50 =
    16,000, two heads 50*50 + 50*10 each = 6,000; the first conv needs no input gradient."""
    fwd = 144_000 + 320_000 + 16_000 + 6_000
    f = lenet_floor.step_flops(3)
    assert f == {
        "forward": 3 * 2 * fwd,
        "input_grads": 3 * 2 * (fwd - 144_000),
        "weight_grads": 3 * 2 * fwd,
        "total": 3 * 2 * (3 * fwd - 144_000),
    }


def test_tiny_smoke_floor_and_ratios_follow_from_the_record(tmp_path):
    out = tmp_path / "floor"
    lenet_floor.main(["--tiny", "--settings", "default", "--out", str(out)])
    r = json.loads(out.with_suffix(".json").read_text())
    peak = r["peak"]["gflops"]
    assert peak == max(r["settings"]["default"]["xla_matmul_gflops"].values())
    assert r["floor_ms"] == pytest.approx(1e3 * r["flops"]["total"] / (peak * 1e9))
    d = r["settings"]["default"]
    assert d["jmtl_vs_floor"] == pytest.approx(np.median(d["samples_s"][lenet_floor.JMTL]) * 1e3 / r["floor_ms"])
    assert "Goal (issue 25 §4)" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        lenet_floor.main(["--tiny", "--settings", "defualt", "--out", str(tmp_path / "typo")])
    assert not (tmp_path / "typo.json").exists()
