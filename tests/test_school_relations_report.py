"""The School report's summaries (experiments/school_relations.py) against hand computations."""

import numpy as np
import pytest

from experiments import school_relations as sr


def test_relation_stats_on_a_known_matrix():
    w = np.array([[2.0, -1.0, 0.0], [0.5, 1.0, 0.0], [0.0, 3.0, -1.0]])
    st = sr.relation_stats(w)
    assert st["diag_mean"] == pytest.approx((2.0 + 1.0 - 1.0) / 3)
    assert st["offdiag_abs_mean"] == pytest.approx((1.0 + 0.0 + 0.5 + 0.0 + 0.0 + 3.0) / 6)
    assert st["offdiag_abs_max"] == pytest.approx(3.0)
    assert st["frobenius"] == pytest.approx(np.sqrt(4 + 1 + 0.25 + 1 + 9 + 1))
    assert st["dist_from_identity"] == pytest.approx(np.sqrt(1 + 1 + 0.25 + 9 + 4))
    assert st["row_sum_mean"] == pytest.approx((1.0 + 1.5 + 2.0) / 3)


def test_paired_differences_are_per_split_and_on_common_splits_only():
    def rec(label, split, ev):
        return {"label": label, "split": split, "test_ev": ev}

    records = [rec("closed", 0, None)]
    records += [rec(sr.NO_W, s, ev) for s, ev in ((0, 0.30), (1, 0.32), (2, 0.34))]
    # W on splits 0, 1 and 3: only 0 and 1 are shared with the control.
    records += [rec("W, alpha=1", s, ev) for s, ev in ((0, 0.31), (1, 0.30), (3, 0.99))]
    out = {(p["row"], p["reference"]): p for p in sr.paired_differences(records)}
    p = out[("W, alpha=1", sr.NO_W)]
    d = np.array([1.0, -2.0])  # EV points: 31 - 30, 30 - 32
    assert p["splits"] == [0, 1] and p["n"] == 2 and p["wins"] == 1
    assert p["mean"] == pytest.approx(d.mean()) and p["std"] == pytest.approx(d.std(ddof=1))
    # A reference that did not run is no comparison (no row, no error).
    assert ("W, alpha=1", sr.HARD) not in out


def test_row_order_puts_alphas_in_numeric_order():
    labels = [
        "W, alpha=100",
        "W, alpha=1, full batch",
        "W, alpha=0.1",
        sr.NO_W,
        "MTRL (linear heads on x)",
        sr.HARD,
        "W, alpha=10",
        "single_task (x)",
    ]
    ordered = sorted(labels, key=sr.row_order)
    assert ordered == [
        "single_task (x)",
        sr.HARD,
        sr.NO_W,
        "W, alpha=0.1",
        "W, alpha=10",
        "W, alpha=100",
        "W, alpha=1, full batch",
        "MTRL (linear heads on x)",
    ]
