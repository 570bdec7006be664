"""Δm% of a vision run (NYUv2, Cityscapes, CelebA, Office) against the published single-task rows
and against jmtl's own single-task runs, reported the way the papers report.

Which numbers of a run are reported (``--select``):

* ``last:N`` (NYUv2 / Cityscapes, Nash-MTL's and FAMO's protocol): the mean of the **test** metrics of
  the last ``N`` evaluations in the run's ``metrics.jsonl`` (the configs evaluate once per epoch, so
  ``last:10`` is "averaged over the last 10 epochs", Navon et al. 2022, Sec. 6.2 and the Nash-MTL
  repository's ``experiments/nyuv2/README.md``). The averaging is done here, from the records, not
  in the train loop: a run keeps every epoch's record and any ``N`` can be reported afterwards.
* ``best_val`` (Office, CelebA: LibMTL's and FAMO's CelebA protocol): the test metrics of the
  evaluation with the best validation score (``summary.json``'s ``best_validation``). CelebA's
  metrics are the 40 attributes' split-level F1s (``experiments/configs/celeba.py`` selects on their
  mean validation F1, as FAMO's ``experiments/celeba/trainer.py``); FAMO prints no per-attribute
  single-task F1s, so its Δm% is against jmtl's own single-attribute runs (``--stl``) only.

Δm% (Maninis et al. 2019, in the form of Navon et al. 2022, Sec. 6, and Liu et al. 2021):

    Δm% = (1/K) Σ_k (-1)^{δ_k} (M_m,k - M_b,k) / M_b,k × 100,   δ_k = 1 if higher is better,

over all K metrics (``--average metrics``, Nash-MTL / FAMO / CAGrad: 9 metrics on NYUv2, 4 on
Cityscapes); lower is better. LibMTL's Δp (Lin et al.) instead averages first over each task's
metrics, then over tasks, and flips the sign (higher is better): ``--average tasks`` gives
``-Δp``, reported here as Δm with the same sign convention as Nash-MTL.

    python -m experiments.vision_report --benchmark nyuv2 --workdir /tmp/nyu_mtan_equal \
        --select last:10 --table nash_mtl_table2 --out results/vision/nyuv2_mtan_equal
    python -m experiments.vision_report --benchmark office31 --workdir /tmp/office31_equal \
        --select best_val --table dbmtl_table4 --average tasks \
        --stl amazon=/tmp/o31_amazon dslr=/tmp/o31_dslr webcam=/tmp/o31_webcam --out results/vision/office31

The published rows come from ``results/published_vision.json`` (transcribed from the papers'
tables, each named there and in ``results/published.md``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from jmtl.metrics import mtl as mtl_metrics
from jmtl.metrics import summary as mtl_summary

PUBLISHED = Path(__file__).resolve().parents[1] / "results" / "published_vision.json"
# jmtl reports fractions where the papers print percentages; angles and errors are in the papers' units.
UNIT_SCALE = {"%": 100.0, "": 1.0, "deg": 1.0}
BENCHMARKS = ("nyuv2", "cityscapes", "celeba", "office31", "office_home")


def load_published(path: Path = PUBLISHED) -> dict:
    return json.loads(Path(path).read_text())


def metric_specs(benchmark: str, published: Optional[Mapping] = None) -> list[dict]:
    """The benchmark's metrics ``[{task, metric, label, higher_is_better, unit}]`` in the tables' order."""
    published = published or load_published()
    if benchmark not in published:
        raise ValueError(
            f"unknown benchmark {benchmark!r}; valid: {', '.join(BENCHMARKS)}. "
            "Fix: --benchmark nyuv2 (or another of those)"
        )
    return list(published[benchmark]["metrics"])


def table(benchmark: str, table_id: str, published: Optional[Mapping] = None) -> dict:
    published = published or load_published()
    tables = published[benchmark]["tables"]
    for t in tables:
        if t["id"] == table_id:
            return t
    raise ValueError(
        f"{benchmark}: no published table {table_id!r}; valid: {', '.join(t['id'] for t in tables)}. "
        f"Fix: --table {tables[0]['id']}"
    )


def delta_m(
    method: Sequence[float], baseline: Sequence[float], specs: Sequence[Mapping], average: str = "metrics"
) -> float:
    """Δm% of ``method`` against ``baseline`` (lower is better).

    Args:
      method, baseline: the K metric values, in the same units, in the order of ``specs``.
      specs: ``[{task, higher_is_better}]`` per metric.
      average: ``'metrics'``: mean over the K metrics (Navon et al.); ``'tasks'``: mean over tasks of
        the mean over each task's metrics (LibMTL's Δp with its sign flipped).
    """
    m, b = np.asarray(method, np.float64), np.asarray(baseline, np.float64)
    if m.shape != b.shape or m.shape != (len(specs),) or len(specs) == 0:
        raise ValueError(f"delta_m needs {len(specs)} metrics of each, got {m.shape} and {b.shape}")
    if average not in ("metrics", "tasks"):
        raise ValueError(f"average must be 'metrics' or 'tasks', got {average!r}")
    groups = [s["task"] for s in specs] if average == "tasks" else None
    return mtl_metrics.delta_m(m, b, [s["higher_is_better"] for s in specs], groups=groups)


def read_evals(workdir: Path) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no metrics.jsonl. Fix: pass the --workdir of a finished (or running) "
            "jmtl run (python -m experiments.train ... --workdir DIR)"
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def average_last(evals: Sequence[Mapping], n: int, split: str = "test") -> dict[str, dict[str, float]]:
    """``{task: {metric: mean over the last n evaluations}}`` of one split (Nash-MTL's last-10 average)."""
    if n < 1:
        raise ValueError(f"--select last:N needs N >= 1, got {n}")
    if len(evals) < n:
        raise ValueError(
            f"the run has {len(evals)} evaluations, fewer than the {n} to average. "
            f"Fix: --select last:{max(1, len(evals))}, or train longer"
        )
    last = evals[-n:]
    missing = [int(r.get("step", -1)) for r in last if split not in r]
    if missing:
        raise ValueError(
            f"evaluations at steps {missing} have no {split!r} metrics. Fix: score the test split at "
            "every evaluation (the in-memory loop's default, test_every_eval=True)"
        )
    tasks = last[-1][split].keys()
    return {t: {k: float(np.mean([r[split][t][k] for r in last])) for k in last[-1][split][t]} for t in tasks}


def best_validation_test(workdir: Path) -> dict[str, dict[str, float]]:
    path = Path(workdir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no summary.json (the run has not finished). Fix: wait for the run to end, "
            "or report --select last:N from its metrics.jsonl"
        )
    return json.loads(path.read_text())["best_validation"]["test"]


def select(workdir: Path, how: str) -> dict[str, dict[str, float]]:
    if how == "best_val":
        return best_validation_test(workdir)
    if how.startswith("last:"):
        return average_last(read_evals(workdir), int(how.split(":", 1)[1]))
    raise ValueError(f"--select must be last:N or best_val, got {how!r}")


def vector(metrics: Mapping[str, Mapping[str, float]], specs: Sequence[Mapping], where: str = "run") -> list[float]:
    """The run's metrics in the order and units of the published tables."""
    out = []
    for s in specs:
        task, name = s["task"], s["metric"]
        if task not in metrics or name not in metrics[task]:
            have = {t: sorted(v) for t, v in metrics.items()}
            raise KeyError(
                f"{where}: no metric {task}/{name} (it has {have}). Fix: report a run of this benchmark's "
                "config (experiments/configs/<benchmark>.py), whose tasks are named as in the tables"
            )
        out.append(float(metrics[task][name]) * UNIT_SCALE[s["unit"]])
    return out


def stl_vector(stl_runs: Mapping[str, Path], specs: Sequence[Mapping], how: str) -> list[float]:
    """jmtl's own single-task baseline: each task's metrics from the run that trained that task alone."""
    tasks = list(dict.fromkeys(s["task"] for s in specs))
    missing = [t for t in tasks if t not in stl_runs]
    if missing:
        raise ValueError(
            f"--stl has no run for task(s) {missing}. Fix: --stl {' '.join(f'{t}=WORKDIR' for t in tasks)}"
        )
    values = []
    for s in specs:
        run = select(Path(stl_runs[s["task"]]), how)
        values += vector(run, [s], where=f"single-task run {stl_runs[s['task']]}")
    return values


def report(
    benchmark: str,
    workdir: Path,
    how: str,
    table_id: Optional[str] = None,
    average: str = "metrics",
    stl_runs: Optional[Mapping[str, Path]] = None,
    published: Optional[Mapping] = None,
) -> dict[str, Any]:
    """The run's metrics (in the tables' units) and its Δm% against the published STL row of
    ``table_id`` (when that table has one) and against jmtl's single-task runs ``stl_runs``."""
    published = published or load_published()
    specs = metric_specs(benchmark, published)
    selected = select(Path(workdir), how)
    if not specs:  # CelebA: one F1 per attribute (FAMO's metric), named by the run (FAMO prints no such row)
        specs = [{"task": t, "metric": "f1", "label": t, "higher_is_better": True, "unit": "%"} for t in selected]
    tab = table(benchmark, table_id, published) if table_id else None
    run = vector(selected, specs)
    out: dict[str, Any] = {
        "benchmark": benchmark,
        "workdir": str(workdir),
        "select": how,
        "average": average,
        "metrics": [s["label"] for s in specs],
        "run": run,
        "table": tab["source"] if tab else None,
    }
    if tab is not None and "STL" in tab["rows"]:
        out["delta_m_vs_published_stl"] = delta_m(run, tab["rows"]["STL"]["values"], specs, average)
    if stl_runs:
        base = stl_vector(stl_runs, specs, how)
        out["jmtl_stl"] = base
        out["delta_m_vs_jmtl_stl"] = delta_m(run, base, specs, average)
    return out


def markdown(rep: Mapping[str, Any], published: Optional[Mapping] = None) -> list[str]:
    published = published or load_published()
    tab = next((t for t in published[rep["benchmark"]]["tables"] if t["source"] == rep["table"]), None)
    head = "| row | " + " | ".join(rep["metrics"]) + " | Δm% (vs published STL) | Δm% (vs jmtl STL) |"
    lines = [
        f"# {rep['benchmark']}: {rep['workdir']} ({rep['select']})",
        "",
        f"Published rows: {tab['source']}. Protocol: {tab['protocol']}." if tab else "No published table.",
        "",
        head,
        "|" + "---|" * (len(rep["metrics"]) + 3),
    ]
    fmt = lambda v: f"{v:.4g}"  # noqa: E731
    dm_pub = rep.get("delta_m_vs_published_stl")
    dm_own = rep.get("delta_m_vs_jmtl_stl")
    lines.append(
        "| **jmtl run** | "
        + " | ".join(fmt(v) for v in rep["run"])
        + f" | {'—' if dm_pub is None else f'{dm_pub:+.2f}'} | {'—' if dm_own is None else f'{dm_own:+.2f}'} |"
    )
    if "jmtl_stl" in rep:
        lines.append("| jmtl STL runs | " + " | ".join(fmt(v) for v in rep["jmtl_stl"]) + " | | |")
    for name, row in (tab["rows"] if tab else {}).items():
        if len(row["values"]) != len(rep["metrics"]):
            continue
        d = row.get("delta_m", -row["delta_p"] if "delta_p" in row else None)
        lines.append(
            f"| {name} (published) | "
            + " | ".join(fmt(v) for v in row["values"])
            + f" | {'' if d is None else f'{d:+.2f}'} | |"
        )
    lines += [
        "",
        f"Δm% over {'all metrics' if rep['average'] == 'metrics' else 'tasks (LibMTL Δp, sign flipped)'}; "
        "lower is better.",
    ]
    return lines


def published_markdown(published: Optional[Mapping] = None) -> list[str]:
    """``results/published_vision.json`` as the markdown tables of ``results/published.md``."""
    published = published or load_published()
    lines = []
    for bench in BENCHMARKS:
        for tab in published[bench]["tables"]:
            specs = tab.get("metrics", published[bench]["metrics"])
            rows = tab["rows"]
            extra = [k for k in ("avg", "MR", "delta_m", "delta_p") if any(k in r for r in rows.values())]
            labels = [s["label"] + (f" ({s['unit']})" if s["unit"] else "") for s in specs]
            names = {"avg": "Avg", "MR": "MR ↓", "delta_m": "Δm% ↓", "delta_p": "Δp ↑"}
            lines += [f"**{bench}: {tab['source']}.** {tab['protocol']}. Read from: {tab['read_from']}.", ""]
            if tab.get("note"):
                lines += [f"Note: {tab['note']}.", ""]
            lines += [
                "| method | " + " | ".join(labels + [names[k] for k in extra]) + " |",
                "|---|" + "---:|" * (len(labels) + len(extra)),
            ]
            notes = []
            for name, row in rows.items():
                cells = [f"{v:g}" for v in row["values"]] if row["values"] else ["—"] * len(labels)
                for k in extra:
                    v = row.get(k)
                    err = row.get(f"{k}_stderr")
                    cells.append("" if v is None else mtl_summary.format_mean_sd(v, err, spec="g"))
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
                if row.get("note"):
                    notes.append(f"- {name}: {row['note']}.")
            lines += [""] + (notes + [""] if notes else [])
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", choices=BENCHMARKS)
    parser.add_argument(
        "--print_published", action="store_true", help="print results/published_vision.json as markdown tables and exit"
    )
    parser.add_argument("--workdir", help="the multi-task run's --workdir")
    parser.add_argument("--select", default="last:10", help="last:N (mean of the last N test evaluations) or best_val")
    parser.add_argument("--table", help="a table id of results/published_vision.json")
    parser.add_argument("--average", default="metrics", choices=("metrics", "tasks"))
    parser.add_argument("--stl", nargs="*", default=[], help="TASK=WORKDIR of jmtl's single-task runs")
    parser.add_argument("--out", default="", help="write OUT.json and OUT.md (with provenance)")
    args = parser.parse_args(argv)
    if args.print_published:
        print("\n".join(published_markdown()))
        return
    if not args.benchmark:
        parser.error("--benchmark is required (or --print_published)")
    stl = dict(s.split("=", 1) for s in args.stl)
    rep = report(args.benchmark, Path(args.workdir), args.select, args.table, args.average, stl)
    lines = markdown(rep)
    print("\n".join(lines))
    if args.out:
        from experiments.results_io import write_outputs

        write_outputs(Path(args.out), rep, lines)


if __name__ == "__main__":
    main()
