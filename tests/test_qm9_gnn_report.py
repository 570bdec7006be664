"""experiments/qm9_gnn.py's report: Delta-m% against its closed form, a row for every method (the
PCGrad row was once lost from the results file), per-seed means."""

import numpy as np
import pytest

from experiments import qm9_gnn

TASKS = ("a", "b", "c")
UNITS = ("D", "meV", "meV")
SETUP = dict(train_size=100, eval_size=10, epochs=1)


def _cells(rng):
    base = {t: float(v) for t, v in zip(TASKS, rng.uniform(1.0, 5.0, len(TASKS)))}
    # A method's MAE = base x (1 + r): its Delta-m% is 100 x mean_k r_k, for any base.
    rel = {
        ("equal", 0): rng.uniform(-0.5, 1.0, 3),
        ("equal", 1): rng.uniform(-0.5, 1.0, 3),
        ("pcgrad", 0): rng.uniform(-0.5, 1.0, 3),
    }
    cells = {"single-task": {0: dict(base)}}
    for (m, seed), r in rel.items():
        cells.setdefault(m, {})[seed] = {t: base[t] * (1 + r[k]) for k, t in enumerate(TASKS)}
    return cells, rel


def test_delta_m_is_the_mean_relative_change_and_averages_seeds():
    cells, rel = _cells(np.random.default_rng(0))
    result, _ = qm9_gnn.build_report(cells, ["equal", "pcgrad"], TASKS, UNITS, SETUP, {})
    for (m, seed), r in rel.items():
        assert result["delta_m_percent_per_seed"][m][str(seed)] == pytest.approx(100 * r.mean())
    # Delta-m% is affine in each MAE: the Delta-m% of the seed-mean row is the mean of the seeds'.
    assert result["delta_m_percent"]["equal"] == pytest.approx(50 * (rel["equal", 0].mean() + rel["equal", 1].mean()))
    assert result["seeds_per_row"]["equal"] == [0, 1] and result["seeds_per_row"]["pcgrad"] == [0]
    assert result["delta_m_tasks"] == list(TASKS)


def test_every_method_has_a_row_even_without_runs():
    cells, _ = _cells(np.random.default_rng(1))
    _, lines = qm9_gnn.build_report(
        cells, ["equal", "pcgrad", "nash_mtl"], TASKS, UNITS, SETUP, {}, missing=["nash_mtl-s0"]
    )
    for label in ("single-task", "equal (LS)", "PCGrad", "Nash-MTL"):
        assert sum(line.startswith(f"| {label} |") for line in lines) == 1, label
    nash = next(line for line in lines if line.startswith("| Nash-MTL |"))
    assert set(nash.strip("| ").split(" | ")[1:]) <= {"–", ""}  # no numbers where nothing ran
    assert any("nash_mtl-s0" in line for line in lines)
    assert qm9_gnn.PUBLISHED_NOTE_MD in lines  # the note on the paper's rows comes from the script


def test_delta_m_only_over_targets_with_a_single_task_model():
    cells, _ = _cells(np.random.default_rng(2))
    cells["single-task"] = {0: {"a": 2.0}, 1: {"a": 4.0, "c": 1.0}}  # per target: mean over the seeds it has
    cells["equal"] = {0: {"a": 4.5, "b": 1.0, "c": 0.5}}
    result, _ = qm9_gnn.build_report(cells, ["equal"], TASKS, UNITS, SETUP, {})
    assert result["test_mae_mean"]["single-task"] == {"a": 3.0, "c": 1.0}
    assert result["delta_m_tasks"] == ["a", "c"]
    assert result["delta_m_percent"]["equal"] == pytest.approx(100 * ((4.5 - 3) / 3 + (0.5 - 1) / 1) / 2)


def test_a_workdir_holds_one_input_kind(tmp_path):
    """Finished cells are reused: cells trained on bond graphs must never be read back as geometry
    cells, or the reverse."""
    qm9_gnn.check_workdir_inputs(tmp_path / "geo", "geometry")
    qm9_gnn.check_workdir_inputs(tmp_path / "geo", "geometry")  # the same kind again: fine
    with pytest.raises(ValueError, match="trained with --inputs geometry, not graph. Fix: pass another --workdir"):
        qm9_gnn.check_workdir_inputs(tmp_path / "geo", "graph")
    old = tmp_path / "old"  # a grid from before the record existed (bond graphs)
    (old / "equal-s0").mkdir(parents=True)
    with pytest.raises(ValueError, match="without an inputs record"):
        qm9_gnn.check_workdir_inputs(old, "geometry")
    qm9_gnn.check_workdir_inputs(old, "graph")


def test_geometry_comparison_pairs_seeds_and_refuses_other_setups():
    from experiments import qm9_geometry_compare

    setup = dict(train_size=100, eval_size=10, epochs=1, batch_size=120, lr=1e-3)
    units = {"a": "D", "b": "meV"}
    graph = {
        "setup": {**setup, "inputs": "graph"},
        "units": units,
        "test_mae": {"equal": {"0": {"a": 2.0, "b": 10.0}, "1": {"a": 4.0, "b": 10.0}}},
    }
    geometry = {
        "setup": {**setup, "inputs": "geometry"},
        "units": units,
        "test_mae": {"equal": {"0": {"a": 1.0, "b": 5.0}, "1": {"a": 1.0, "b": 20.0}, "2": {"a": 9.0, "b": 9.0}}},
    }
    result, lines = qm9_geometry_compare.compare(geometry, graph)
    row = result["rows"]["equal"]
    assert row["seeds"] == [0, 1]  # seed 2 has no graph run: left out of the pairs
    assert row["tasks"]["a"]["ratio_per_seed"] == [0.5, 0.25] and row["tasks"]["a"]["ratio_median"] == 0.375
    assert row["tasks"]["b"]["ratio_per_seed"] == [0.5, 2.0] and row["tasks"]["b"]["geometry_mean"] == 12.5
    assert any("| ratio | 0.38 | 1.25 |" in line for line in lines)
    assert any("| ratio, lowest–highest seed | 0.25–0.50 | 0.50–2.00 |" in line for line in lines)
    # per seed, the geometric mean over the targets: sqrt(0.5 x 0.5) = 0.5, sqrt(0.25 x 2) = 0.707
    summary = row["summary"]
    np.testing.assert_allclose(summary["geomean_ratio_per_seed"], [0.5, np.sqrt(0.5)])
    mean, lo, hi = summary["geomean_ratio_mean_ci95"]
    half = 12.7062047 * np.std([0.5, np.sqrt(0.5)], ddof=1) / np.sqrt(2)  # t_{0.975, 1}
    np.testing.assert_allclose([mean, lo, hi], [(0.5 + np.sqrt(0.5)) / 2 + d for d in (0, -half, half)], rtol=1e-6)
    assert summary["targets_lower_every_seed"] == ["a"] and summary["targets_higher_every_seed"] == []
    with pytest.raises(ValueError, match=r"differ in epochs \(2 vs 1\)"):
        qm9_geometry_compare.compare({**geometry, "setup": {**geometry["setup"], "epochs": 2}}, graph)
    with pytest.raises(ValueError, match="pass a --inputs geometry record"):
        qm9_geometry_compare.compare(graph, graph)


def test_geometry_comparison_per_epoch_from_the_cells_metrics(tmp_path):
    import json

    from experiments import qm9_geometry_compare

    def cell(name, inputs, maes):
        d = tmp_path / name
        d.mkdir()
        kwargs = dict(inputs=inputs, train_size=100, eval_size=10, seed=0)
        (d / "config.json").write_text(json.dumps(dict(dataset=dict(kwargs=kwargs), seed=0, batch_size=120)))
        rows = [dict(step=10 * e, epoch=float(e), test={"a": {"mae": m}}) for e, m in enumerate(maes, 1)]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        return d

    geo, graph = cell("geo", "geometry", [0.5]), cell("graph", "graph", [0.4, 0.2])
    result, lines = qm9_geometry_compare.compare_epochs(geo, graph)
    assert list(result["epochs"]) == ["1.0"] and result["epochs"]["1.0"]["a"]["ratio"] == 0.5 / 0.4
    assert result["epochs_graph"] == [1.0, 2.0] and "| 1 | ratio | 1.25 | 1.25 |" in lines
    with pytest.raises(ValueError, match="pass a geometry cell and a graph cell"):
        qm9_geometry_compare.compare_epochs(graph, graph)


@pytest.mark.parametrize(
    "table, tolerance",
    [(qm9_gnn.PUBLISHED, 0.5), (qm9_gnn.PUBLISHED_QIN2025, 0.15)],
    ids=["navon2022", "qin2025"],
)
def test_each_published_row_gives_its_delta_m_against_its_own_stl_row(table, tolerance):
    """A transcription check: each row's Delta-m%, recomputed from its printed MAEs against the table's
    STL row, lands on the printed Delta-m% (within the rounding of the printed MAEs; a mistyped MAE
    moves it by more). FAMO's row rides on Navon et al.'s STL (same protocol); Nash-MTL's table prints
    fewer digits than its code's BASE, hence the wider tolerance."""
    (stl, zero), *rows = table.values()
    assert zero == 0.0 and len(stl) == 11
    for name, (maes, printed) in zip(list(table)[1:], rows):
        recomputed = 100 * np.mean([(m - b) / b for m, b in zip(maes, stl)])
        assert recomputed == pytest.approx(printed, abs=tolerance), name


def test_the_ntkmtl_protocol_divides_by_its_papers_stl_row():
    """The NTKMTL config's selection reference (its code's BASE) is the STL row of the paper's Table 3."""
    from experiments.configs import qm9_geometry

    assert list(qm9_geometry.PROTOCOLS["ntkmtl"][2]) == qm9_gnn.PUBLISHED_QIN2025["STL (Qin et al.)"][0]
    assert list(qm9_geometry.PROTOCOLS["nash_mtl"][2]) == qm9_gnn.PUBLISHED["STL (paper)"][0]


def test_the_report_prints_both_protocols_tables():
    cells, _ = _cells(np.random.default_rng(3))
    result, lines = qm9_gnn.build_report(cells, ["equal"], TASKS, UNITS, SETUP, {})
    assert qm9_gnn.PUBLISHED_QIN2025_NOTE_MD in lines
    assert sum(line.startswith("| NTKMTL-SR (Qin et al.) |") for line in lines) == 1
    assert result["published_qin2025"]["FAMO (Qin et al.)"]["delta_m"] == 38.9


def test_published_md_holds_the_same_ntkmtl_table():
    """results/published.md's Qin et al. table and the script's constant are one transcription."""
    import pathlib

    text = (pathlib.Path(qm9_gnn.__file__).resolve().parents[1] / "results" / "published.md").read_text()
    section = text.split("## QM9: Qin et al.")[1].split("\n## ")[0]
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| ") and "---" not in line
    ]
    table = {r[0]: ([float(v) for v in r[1:12]], float(r[12] or 0.0)) for r in rows[1:]}
    assert len(table) == len(qm9_gnn.PUBLISHED_QIN2025)
    for (name, row), (key, want) in zip(table.items(), qm9_gnn.PUBLISHED_QIN2025.items()):
        assert row == want, (name, key)


def test_geometry_comparison_refuses_a_missing_record_and_writes_nothing(tmp_path, capsys):
    """A mistyped record path is an error naming it (exit 2), never an empty comparison written to --out."""
    import json

    from experiments import qm9_geometry_compare

    graph = tmp_path / "graph.json"
    graph.write_text(json.dumps({"setup": {"inputs": "graph"}, "units": {}, "test_mae": {}}))
    out = tmp_path / "cmp"
    for argv in (
        ["--geometry", str(tmp_path / "geomtry.json"), "--graph", str(graph)],  # a typo
        ["--graph", str(graph)],  # one record alone
        ["--cells", f"{tmp_path}/a,{tmp_path}/b"],  # cells without metrics
    ):
        with pytest.raises(SystemExit) as exit_:
            qm9_geometry_compare.main([*argv, "--out", str(out)])
        assert exit_.value.code == 2
        assert "Fix:" in capsys.readouterr().err
        assert not list(tmp_path.glob("cmp*"))
