"""experiments/plot_hierarchical.py: per-epoch validation curves averaged over seeds."""

import json

import numpy as np

from experiments import plot_hierarchical


def test_curves_average_seeds_and_write_png_and_table(tmp_path):
    records = []
    for variant, base in (("single", 80.0), ("hier", 82.0)):
        for seed in (0, 1):
            run = tmp_path / f"{variant}_seed{seed}"
            run.mkdir()
            lines = [
                {"epoch": e, "validation": {"chunk": {"accuracy": 0.9, "f1": (base + e + seed) / 100}}}
                for e in (1, 2, 3)
            ]
            run.joinpath("metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
            records.append({"variant": variant, "seed": seed})
    prefix = str(tmp_path / "sweep")
    (tmp_path / "sweep.json").write_text(json.dumps(records))
    data = plot_hierarchical.curves(tmp_path, records, "chunk")
    np.testing.assert_allclose(data["hier"].mean(0), [83.5, 84.5, 85.5])
    assert data["single"].shape == (2, 3)
    plot_hierarchical.main(["--workdir", str(tmp_path), "--results", prefix, "--task", "chunk"])
    assert (tmp_path / "sweep.curves.png").stat().st_size > 0
    table = (tmp_path / "sweep.curves.md").read_text()
    assert "| 3 | 83.50 ± 0.71 | 85.50 ± 0.71 |" in table  # sample std of (83, 84) and (85, 86)
    # One seed: no spread to show.
    (tmp_path / "one.json").write_text(json.dumps([r for r in records if r["seed"] == 0]))
    plot_hierarchical.main(["--workdir", str(tmp_path), "--results", str(tmp_path / "one"), "--task", "chunk"])
    assert "| 3 | 83.00 | 85.00 |" in (tmp_path / "one.curves.md").read_text()
