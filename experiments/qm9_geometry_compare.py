r"""QM9 with and without 3-D geometry, side by side: two ``experiments/qm9_gnn.py`` records of the
same grid (same methods, seeds, subset and epochs), one with ``--inputs geometry`` and one with
``--inputs graph``, read back (no training) into one table of per-target test MAE and the paired
per-seed ratio geometry / bond graph.

    python -m experiments.qm9_geometry_compare --geometry results/qm9/qm9_gnn_cpu_subset_geometry.json \
        --graph results/qm9/qm9_gnn_cpu_subset_graph.json --out results/qm9/qm9_geometry_vs_graph

The ratio of a target is the median over the seeds both records share of MAE_geometry / MAE_graph
(paired: the same seed gives the same split, initialisation and batch order in both); below 1 =
geometry helps. A record pair that differs in anything but the inputs is refused.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

# setup fields that must agree between the two records (all but the inputs and the model text)
SAME = ("train_size", "eval_size", "epochs", "batch_size", "lr")


def compare(geometry: dict, graph: dict) -> tuple[dict, list[str]]:
    """The JSON record and markdown lines of the comparison of two ``qm9_gnn`` records."""
    g_setup, b_setup = geometry["setup"], graph["setup"]
    if g_setup.get("inputs") != "geometry" or b_setup.get("inputs", "graph") != "graph":
        raise ValueError(
            f"--geometry has inputs {g_setup.get('inputs')!r}, --graph {b_setup.get('inputs', 'graph')!r}. "
            "Fix: pass a --inputs geometry record and a --inputs graph record"
        )
    differ = [k for k in SAME if g_setup.get(k) != b_setup.get(k)]
    if differ:
        raise ValueError(
            f"the records differ in {', '.join(f'{k} ({g_setup.get(k)} vs {b_setup.get(k)})' for k in differ)}. "
            "Fix: run both grids with the same options but --inputs"
        )
    units = geometry["units"]
    tasks = list(units)
    rows, out = [], {"setup": {k: g_setup[k] for k in SAME}, "rows": {}}
    for method in geometry["test_mae"]:
        if method not in graph["test_mae"]:
            continue
        seeds = sorted(set(geometry["test_mae"][method]) & set(graph["test_mae"][method]), key=int)
        if not seeds:
            continue
        per = {}
        for t in tasks:
            g = np.array([geometry["test_mae"][method][s][t] for s in seeds])
            b = np.array([graph["test_mae"][method][s][t] for s in seeds])
            per[t] = {
                "geometry_mean": float(g.mean()),
                "graph_mean": float(b.mean()),
                "ratio_per_seed": (g / b).tolist(),
                "ratio_median": float(np.median(g / b)),
            }
        out["rows"][method] = {"seeds": [int(s) for s in seeds], "tasks": per}
        rows.append((method, seeds, per))
    fmt = lambda v: f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    lines = [
        "# QM9 with and without 3-D geometry (CPU subset)",
        "",
        f"Test MAE of the best-validation evaluation, {g_setup['train_size']:,} training molecules, "
        f"{g_setup['eval_size']:,} validation / test molecules, {g_setup['epochs']} epoch(s), batch "
        f"{g_setup['batch_size']}; the same seeds (same split, initialisation and batch order) with the bond "
        "graph only (`--inputs graph`) and with the complete graph + interatomic distances from qm9pack "
        "(`--inputs geometry`). ratio = median over seeds of MAE_geometry / MAE_graph (< 1: geometry helps).",
        "",
        "| method | seeds | input | " + " | ".join(f"{t} ({u})" for t, u in units.items()) + " |",
        "|---|---|---|" + "---:|" * len(tasks),
    ]
    for method, seeds, per in rows:
        s = ", ".join(seeds)
        lines.append(f"| {method} | {s} | bond graph | " + " | ".join(fmt(per[t]["graph_mean"]) for t in tasks) + " |")
        lines.append(f"| {method} | {s} | geometry | " + " | ".join(fmt(per[t]["geometry_mean"]) for t in tasks) + " |")
        lines.append(f"| {method} | {s} | ratio | " + " | ".join(f"{per[t]['ratio_median']:.2f}" for t in tasks) + " |")
    lines += [
        "",
        f"Sources: {geometry.get('_path', '--geometry')} and {graph.get('_path', '--graph')} (their provenance "
        "blocks name the commits and commands that trained the cells).",
    ]
    return out, lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--geometry", required=True, help="the --inputs geometry record (.json)")
    p.add_argument("--graph", required=True, help="the --inputs graph record (.json)")
    p.add_argument("--out", required=True, help="results path without suffix")
    args = p.parse_args(argv)
    from experiments import results_io

    started = results_io.started_now()
    records = []
    for path in (args.geometry, args.graph):
        record = json.loads(pathlib.Path(path).read_text())
        record["_path"] = path
        records.append(record)
    result, lines = compare(*records)
    result["sources"] = {
        "geometry": {"path": args.geometry, "provenance": records[0].get("provenance")},
        "graph": {"path": args.graph, "provenance": records[1].get("provenance")},
    }
    results_io.write_outputs(args.out, result, lines, results_io.provenance(started=started))


if __name__ == "__main__":
    main()
