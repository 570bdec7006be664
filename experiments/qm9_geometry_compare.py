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

from jmtl.drivers import leaderboard

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
        # One number a seed: the geometric mean over the targets of MAE_geometry / MAE_graph (the ratio
        # of a typical target; < 1: geometry helps), and its Student-t interval over the seeds.
        geomean = [
            float(np.exp(np.mean([np.log(per[t]["ratio_per_seed"][i]) for t in tasks]))) for i in range(len(seeds))
        ]
        summary = {"geomean_ratio_per_seed": geomean}
        if len(seeds) >= 2:
            summary["geomean_ratio_mean_ci95"] = list(leaderboard.t_interval(geomean))
        summary["targets_lower_every_seed"] = [t for t in tasks if max(per[t]["ratio_per_seed"]) < 1]
        summary["targets_higher_every_seed"] = [t for t in tasks if min(per[t]["ratio_per_seed"]) > 1]
        out["rows"][method] = {"seeds": [int(s) for s in seeds], "tasks": per, "summary": summary}
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
        if len(seeds) > 1:
            lines.append(
                f"| {method} | {s} | ratio, lowest–highest seed | "
                + " | ".join(f"{min(per[t]['ratio_per_seed']):.2f}–{max(per[t]['ratio_per_seed']):.2f}" for t in tasks)
                + " |"
            )
    for method, seeds, per in rows:
        summary = out["rows"][method]["summary"]
        each = ", ".join(f"{g:.2f}" for g in summary["geomean_ratio_per_seed"])
        ci = summary.get("geomean_ratio_mean_ci95")
        lines += [
            "",
            f"**{method}**: the geometric mean over the {len(tasks)} targets of MAE_geometry / MAE_graph is {each} "
            f"(seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)})"
            + (
                f"; mean {ci[0]:.2f}, 95 % t-interval [{ci[1]:.2f}, {ci[2]:.2f}] over the {len(seeds)} seeds"
                if ci
                else ""
            )
            + f". Lower with geometry in every seed: {', '.join(summary['targets_lower_every_seed']) or 'no target'}; "
            f"higher in every seed: {', '.join(summary['targets_higher_every_seed']) or 'no target'}.",
        ]
    lines += [
        "",
        f"Sources: {geometry.get('_path', '--geometry')} and {graph.get('_path', '--graph')} (their provenance "
        "blocks name the commits and commands that trained the cells).",
    ]
    return out, lines


def compare_epochs(geometry_cell: pathlib.Path, graph_cell: pathlib.Path) -> tuple[dict, list[str]]:
    """Per-epoch test MAE of two cells (``<workdir>/<cell>``, e.g. ``equal-s0``) read from their
    ``metrics.jsonl``, for the epochs both have evaluated: a cell that has not finished can still be
    set beside the other at equal epochs. The MAE is of the standardised targets; the ratio
    geometry / graph is the same in the papers' units (both cells share the train split's s.d.).
    This is the test MAE at each epoch, not the best-validation selection of ``compare``."""

    def read(cell):
        config = json.loads((cell / "config.json").read_text())
        rows = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines() if line.strip()]
        return config, {r["epoch"]: r["test"] for r in rows if "test" in r}

    (g_config, g_rows), (b_config, b_rows) = read(geometry_cell), read(graph_cell)
    g_kw, b_kw = g_config["dataset"]["kwargs"], b_config["dataset"]["kwargs"]
    if g_kw.get("inputs") != "geometry" or b_kw.get("inputs") != "graph":
        raise ValueError(
            f"{geometry_cell} has inputs {g_kw.get('inputs')!r}, {graph_cell} {b_kw.get('inputs')!r}. "
            "Fix: pass a geometry cell and a graph cell"
        )
    keys = ("train_size", "eval_size", "seed")
    differ = [k for k in keys if g_kw.get(k) != b_kw.get(k)]
    differ += [k for k in ("seed", "batch_size") if g_config.get(k) != b_config.get(k)]
    if differ:
        raise ValueError(f"the cells differ in {', '.join(differ)}. Fix: compare cells of the same grid options")
    epochs = sorted(set(g_rows) & set(b_rows))
    tasks = sorted(g_rows[epochs[0]]) if epochs else []
    out = {
        "geometry_cell": str(geometry_cell),
        "graph_cell": str(graph_cell),
        "epochs": {
            str(e): {
                t: {
                    "geometry_mae_std_units": g_rows[e][t]["mae"],
                    "graph_mae_std_units": b_rows[e][t]["mae"],
                    "ratio": g_rows[e][t]["mae"] / b_rows[e][t]["mae"],
                }
                for t in tasks
            }
            for e in epochs
        },
        "epochs_geometry": sorted(g_rows),
        "epochs_graph": sorted(b_rows),
    }
    lines = [
        "",
        f"## Per epoch: {geometry_cell.name}, test MAE (standardised targets) at each evaluated epoch",
        "",
        f"Cells `{geometry_cell}` (geometry, epochs evaluated: {', '.join(f'{e:g}' for e in sorted(g_rows))}) and "
        f"`{graph_cell}` (bond graph, epochs {', '.join(f'{e:g}' for e in sorted(b_rows))}), read from their "
        "metrics.jsonl; ratio = geometry / graph (< 1: geometry helps).",
        "",
        "| epoch | input | " + " | ".join(tasks) + " | mean ratio |",
        "|---|---|" + "---:|" * (len(tasks) + 1),
    ]
    for e in epochs:
        ratios = [out["epochs"][str(e)][t]["ratio"] for t in tasks]
        lines.append(f"| {e:g} | bond graph | " + " | ".join(f"{b_rows[e][t]['mae']:.3f}" for t in tasks) + " | |")
        lines.append(f"| {e:g} | geometry | " + " | ".join(f"{g_rows[e][t]['mae']:.3f}" for t in tasks) + " | |")
        lines.append(
            f"| {e:g} | ratio | " + " | ".join(f"{r:.2f}" for r in ratios) + f" | {float(np.mean(ratios)):.2f} |"
        )
    return out, lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--geometry", default=None, help="the --inputs geometry record (.json)")
    p.add_argument("--graph", default=None, help="the --inputs graph record (.json)")
    p.add_argument("--out", required=True, help="results path without suffix")
    p.add_argument(
        "--cells",
        default=None,
        help="GEOMETRY_CELL_DIR,GRAPH_CELL_DIR: also set two cells side by side per epoch (metrics.jsonl)",
    )
    args = p.parse_args(argv)
    from experiments import results_io

    # Both records, or neither (then --cells alone: two cells of grids that have not finished). A path
    # that does not exist is a mistake, never an empty comparison written over a real one.
    given = [(flag, path) for flag, path in (("--geometry", args.geometry), ("--graph", args.graph)) if path]
    if len(given) == 1 or (not given and not args.cells):
        p.error(
            "pass both --geometry and --graph (the two qm9_gnn records), or neither with --cells. "
            "Fix: e.g. --geometry results/qm9/qm9_gnn_cpu_subset_geometry.json "
            "--graph results/qm9/qm9_gnn_cpu_subset_graph.json"
        )
    for flag, path in given:
        if not pathlib.Path(path).is_file():
            p.error(f"{flag} {path} does not exist. Fix: pass the .json an experiments.qm9_gnn grid wrote (--out)")
    if args.cells:
        cell_dirs = [pathlib.Path(c) for c in args.cells.split(",")]
        if len(cell_dirs) != 2 or not all((d / "metrics.jsonl").is_file() for d in cell_dirs):
            p.error(
                f"--cells {args.cells!r}: need GEOMETRY_CELL_DIR,GRAPH_CELL_DIR, each with a metrics.jsonl. "
                "Fix: e.g. --cells /tmp/qm9_geo/equal-s0,/tmp/qm9_graph/equal-s0"
            )
    started = results_io.started_now()
    records, lines, result = [], [], {}
    for _, path in given:
        record = json.loads(pathlib.Path(path).read_text())
        record["_path"] = path
        records.append(record)
    if records:
        result, lines = compare(*records)
    else:
        lines = [
            "# QM9 with and without 3-D geometry (CPU subset)",
            "",
            "No best-validation comparison: no records given, only the cells below (their grids have not finished).",
        ]
    result["sources"] = {
        "geometry": {"path": args.geometry, "provenance": records[0].get("provenance") if records else None},
        "graph": {"path": args.graph, "provenance": records[1].get("provenance") if records else None},
    }
    if args.cells:
        per_epoch, epoch_lines = compare_epochs(*cell_dirs)
        result["per_epoch"] = per_epoch
        lines += epoch_lines
    results_io.write_outputs(args.out, result, lines, results_io.provenance(started=started))


if __name__ == "__main__":
    main()
