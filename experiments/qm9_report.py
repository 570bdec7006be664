"""Re-renders a QM9 grid's report (``experiments/qm9_gnn.py``'s ``--out``) from its JSON record, training nothing.

For a report whose cells' workdirs are gone: the table, Δm% and wall times are rebuilt from the
record's per-seed test MAEs with :func:`experiments.qm9_gnn.build_report`, and every cell whose
code the record does not name (``cell_code``; records written before per-cell start records were
kept have none) is marked so. ``--note`` adds lines under the table (e.g. what a rerun found). The
provenance of the run that wrote the record is kept in ``training_provenance``.

    python -m experiments.qm9_report --record results/qm9/qm9_gnn_cpu_subset.json \
        --out results/qm9/qm9_gnn_cpu_subset --note "..."
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments import results_io
from experiments.qm9_gnn import build_report


def rerender(record: dict, notes: list[str]) -> tuple[dict, list[str]]:
    """``(result, lines)`` of :func:`build_report` from a written record (its ``test_mae`` etc.)."""
    from jmtl.data import qm9

    cells = {
        name: {int(seed): maes for seed, maes in per_seed.items()} for name, per_seed in record["test_mae"].items()
    }
    result, lines = build_report(
        cells,
        record["setup"]["methods"],
        qm9.TASKS,
        qm9.REPORT_UNITS,
        record["setup"],
        record["wall_time_s"],
        record.get("cells_reused", ()),
        record.get("cells_missing", ()),
        record.get("cell_finished_utc"),
        code=record.get("cell_code") or {},
        notes=notes,
    )
    result["training_provenance"] = record.get("training_provenance", record.get("provenance"))
    return result, lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--record", required=True, help="the grid's JSON record (qm9_gnn's <out>.json)")
    p.add_argument("--out", required=True, help="results path without suffix (.json / .md are written)")
    p.add_argument("--note", action="append", default=[], help="a markdown line under the table (repeatable)")
    args = p.parse_args(argv)
    path = Path(args.record)
    if not path.is_file():
        raise SystemExit(f"qm9_report: no record at {path}; pass qm9_gnn's <out>.json")
    result, lines = rerender(json.loads(path.read_text()), args.note)
    prov = results_io.provenance()
    lines += [
        "",
        f"Re-rendered from `{path}` by `experiments/qm9_report.py` (no training); the run that wrote "
        "the record: `" + str((result["training_provenance"] or {}).get("command", "not recorded")) + "`.",
    ]
    results_io.write_outputs(args.out, result, lines, prov)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
