"""School (ILEA, 139 regression tasks): baselines, hard sharing, the task-relation matrix W and MTRL
over the 10 published splits, explained variance (%) as Argyriou et al. (MLJ 2008) and Zhang &
Yeung (UAI 2010) report it; a heatmap of the learned W; and the weighting catalogue at K = 139.

    # rows (a)-(e) over the 10 splits -> results/school/relations.{json,md}, heatmaps
    python -m experiments.school_relations main --data-dir ../shared/data --splits 0-9
    # every weighting scheme on split 0, short schedule -> results/school/catalogue.{json,md}
    python -m experiments.school_relations catalogue --data-dir ../shared/data --split 0
    # step time of W before / after the mix_tasks fix -> results/school/relation_step_time.{json,md}
    python -m experiments.school_relations steptime --data-dir ../shared/data

Single-task and pooled rows are numpy closed forms (ridge per school; least squares over all
students), their ridge lambda picked on the validation carve; the others train in the built-in
loop (``jmtl.training.loop``) on ``experiments/configs/school_tasks.py`` and are scored from the
final params. EV = 1 - sum (y - f)^2 / sum (y - mean y)^2 over the pooled test students
(``jmtl.metrics.explained_variance``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from jmtl.metrics import summary as summary_lib
from jmtl.runs.metric_writers import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "school"
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 3.0, 10.0, 30.0, 100.0)

# The papers' numbers (explained variance %, mean +- std over the 10 splits); see the report's
# citations. None where we could not verify a number.
PAPERS: dict[str, str] = {}


# ---------------------------------------------------------------------------- closed forms


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """argmin_w |y - x w|^2 + lam |w[:-1]|^2 (the last column, the bias, unpenalised), float64."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    penalty = np.eye(x.shape[1]) * lam
    penalty[-1, -1] = 0.0
    return np.linalg.lstsq(x.T @ x + penalty, x.T @ y, rcond=None)[0]


def closed_forms(data_dir, split: int) -> dict:
    """(a) ridge per school and (b) pooled ridge: lambda by validation EV (carve of 10 %), then the
    fit on the carve's training part ('train90', the loop's data) and on all training students
    ('train', the papers' protocol)."""
    from jmtl import metrics
    from jmtl.data import school

    carved = school.load_school(data_dir=data_dir, split_index=split, validation_percent=10)
    full = school.load_school(data_dir=data_dir, split_index=split, validation_percent=0)
    names = carved.task_names

    def per_task_ev(data, lam, fit_split, eval_split):
        w = {t: ridge(data.splits[fit_split][t]["x"], data.splits[fit_split][t]["y"], lam) for t in names}
        ys = [data.splits[eval_split][t]["y"] for t in names]
        fs = [data.splits[eval_split][t]["x"].astype(np.float64) @ w[t] for t in names]
        return metrics.explained_variance(ys, fs)

    def pooled_ev(data, lam, fit_split, eval_split):
        p, q = data.pooled(fit_split), data.pooled(eval_split)
        return metrics.explained_variance(q["y"], q["x"].astype(np.float64) @ ridge(p["x"], p["y"], lam))

    out = {}
    for name, fn in (("single_task", per_task_ev), ("pooled", pooled_ev)):
        val = {lam: fn(carved, lam, "train", "validation") for lam in RIDGE_GRID}
        lam = max(val, key=val.get)
        out[name] = {
            "lambda": lam,
            "validation_ev": val[lam],
            "test_ev_train90": fn(carved, lam, "train", "test"),
            "test_ev": fn(full, lam, "train", "test"),
        }
    return out


# ---------------------------------------------------------------------------- the loop


def train_variant(
    variant: str, split: int, data_dir, method: str = "", overrides: dict | None = None, workdir: str | None = None
) -> dict:
    """Trains one config of experiments/configs/school_tasks.py in the built-in loop (plots off: at
    K = 139 they are 139-line legends and an 8000-pixel heatmap) and scores its final params."""
    import jax

    from experiments.configs import school_tasks
    from jmtl import metrics
    from jmtl.models import regularizers
    from jmtl.training import loop

    config = school_tasks.get_config(f"{variant},{method}" if method else variant)
    config.dataset.data_dir = str(data_dir)
    config.dataset.kwargs.split_index = split
    for key, value in (overrides or {}).items():
        node = config
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    exp = dataclasses.replace(loop.build_experiment(config), plots=False)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary, state = loop.run(exp, config, workdir or tmp)
        wall = time.perf_counter() - t0
    from jmtl.data import school

    data = school.load_school(data_dir=data_dir, split_index=split, validation_percent=10)
    test = data.pooled("test")
    outputs = exp.model.apply({"params": state.params}, test["x"], train=False)
    pred = school.own_task_predictions(jax.device_get(outputs), data.task_names, test["school"])
    # The same on the students it trained on: a train EV far above the test EV is overfitting.
    train = data.pooled("train")
    train_out = exp.model.apply({"params": state.params}, train["x"], train=False)
    train_pred = school.own_task_predictions(jax.device_get(train_out), data.task_names, train["school"])
    rec = {
        "variant": variant,
        "method": method or config.weighting.name,
        "split": split,
        "overrides": overrides or {},
        "test_ev": metrics.explained_variance(test["y"], pred),
        "train_ev": metrics.explained_variance(train["y"], train_pred),
        "wall_s": wall,
        "steps": summary["steps"],
        "steps_per_s": summary["steps_per_s"],
        "train_time_per_eval_s": summary["train_time_per_eval_s"],
    }
    if "relation" in state.params:
        rec["relation"] = np.asarray(state.params["relation"]).tolist()
    if config.model.arch_kwargs.get("mtrl_weight", 0):
        rec["mtrl_omega"] = np.asarray(regularizers.mtrl_omega(state.params)).tolist()
    return rec


# ---------------------------------------------------------------------------- heatmap


def cluster_order(matrix: np.ndarray) -> np.ndarray:
    """Leaf order of an average-linkage clustering of the tasks, each described by its row and its
    column of ``matrix`` (how it reads the others and how they read it)."""
    from scipy.cluster import hierarchy

    feats = np.concatenate([matrix, matrix.T], axis=1)
    return hierarchy.leaves_list(hierarchy.linkage(feats, method="average", metric="euclidean"))


def heatmap(matrix: np.ndarray, path: Path, title: str, off_diagonal_scale: bool = True) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = cluster_order(matrix)
    m = matrix[np.ix_(order, order)]
    off = m[~np.eye(len(m), dtype=bool)]
    # The diagonal (near 1, W starts at I) would wash out the structure: the colour scale is set by
    # the off-diagonal entries (99th percentile of |W_ij|), the diagonal saturates.
    lim = float(np.percentile(np.abs(off), 99)) if off_diagonal_scale else float(np.max(np.abs(m)))
    fig, ax = plt.subplots(figsize=(8.5, 7.5))
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    ticks = np.arange(0, len(m), 10)
    ax.set_xticks(ticks, [str(order[i] + 1) for i in ticks], fontsize=6, rotation=90)
    ax.set_yticks(ticks, [str(order[i] + 1) for i in ticks], fontsize=6)
    ax.set_xlabel("school (clustered order; label = school number)", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- modes


NUM_SPLITS = 10  # school_1_indexes.mat .. school_10_indexes.mat (jmtl.data.school)


def parse_splits(text: str, flag: str = "--splits") -> list[int]:
    """``'0-9'`` / ``'0,3'`` -> split indices, each in 0..9 (a typo fails before any work)."""
    from experiments import script_checks

    return script_checks.int_list(flag, text, 0, NUM_SPLITS - 1, "0-9")


def relation_cells(record) -> set[str]:
    """The cells of a ``relations.json`` record (or of a list of run records): row label and split."""
    runs = record["runs"] if isinstance(record, dict) else record
    return {f"{r['label']} / split {r['split']}" for r in runs}


# alpha of alpha |W|_F^2. The losses are in squared exam-score units (summed over 139 tasks, ~1.4e4
# at the start) and |W|_F^2 = 139 at W = I: alpha 1e-4 ... 1e-1 left W and the EV unchanged on split 1
# (relations.md), so the sweep covers 1 ... 100 (a split-1 scan to 1000: the alpha=1000 row).
ALPHAS = (1.0, 10.0, 100.0)


def main_runs(alphas=ALPHAS) -> tuple:
    """(label, variant, overrides) of the rows run on every split."""
    return (
        ("hard sharing, linear 28->16", "hps_linear", {}),
        # the control of the W rows: the same model and minibatch without W
        (NO_W, "hps_hidden", {}),
        *[(f"W, alpha={a:g}", "relation", {"model.relation_alpha": a}) for a in alphas],
        ("MTRL (linear heads on x)", "mtrl", {}),
        # the minibatch's own effect: the first row at the W rows' batch
        (HARD_512, "hps_linear", {"batch_size": 512}),
    )


def full_batch_runs() -> tuple:
    """(label, variant, overrides) of ``--full-batch``: the no-W control and W at alpha 1 on every
    training student per step (the protocol of the hard-sharing row), affordable since the step fix."""
    from experiments.configs import school_tasks

    return (
        (NO_W_FULL, "hps_hidden", {"batch_size": school_tasks.FULL_BATCH}),
        (W1_FULL, "relation", {"model.relation_alpha": 1.0, "batch_size": school_tasks.FULL_BATCH}),
    )


CONTROL_RUNS = (
    # the first split only (the CPU budget): the controls of the rows above
    ("independent (GD, in the loop)", "independent", {}),
    ("hard sharing, ReLU 28->32", "hps_mlp", {}),
)


def relation_stats(w: np.ndarray) -> dict:
    """What the heatmap shows, in numbers: the diagonal, the off-diagonal entries, the distance from
    the identity (W's initialisation) and the row sums (z_i's total weight on the h_j)."""
    w = np.asarray(w, float)
    off = w[~np.eye(len(w), dtype=bool)]
    return {
        "diag_mean": float(np.diag(w).mean()),
        "offdiag_abs_mean": float(np.abs(off).mean()),
        "offdiag_abs_max": float(np.abs(off).max()),
        "frobenius": float(np.linalg.norm(w)),
        "dist_from_identity": float(np.linalg.norm(w - np.eye(len(w)))),
        "row_sum_mean": float(w.sum(axis=1).mean()),
    }


def mean_std(values) -> dict:
    """Mean and sample s.d. of fractions, in % (s.d. 0 for one split)."""
    v = 100.0 * np.asarray(values, float)
    mean, sd = summary_lib.mean_sd(v)
    return {"mean": mean, "std": sd, "n": len(v)}


def planned_runs(args, split: int, splits: list[int]) -> tuple:
    """(label, variant, overrides) of the rows ``main`` runs on ``split`` under ``args``."""
    alphas = tuple(script_float_list("--alphas", args.alphas)) if args.alphas else ALPHAS
    return (
        main_runs(alphas)
        + (full_batch_runs() if args.full_batch else ())
        + (CONTROL_RUNS if split == splits[0] and args.controls else ())
    )


def script_float_list(flag: str, text: str) -> list[float]:
    from experiments import script_checks

    return script_checks.float_list(flag, text, low=0.0, example="1,10,100")


def main_mode(args) -> None:
    from experiments import results_io as common
    from experiments import script_checks

    splits = parse_splits(args.splits)
    only = set(args.only.split(",")) if args.only else None
    partial_path = OUT / "relations_partial.jsonl"
    records = []
    if args.resume and partial_path.exists():
        records = read_jsonl(partial_path)
    done = {(r["label"], r["split"]) for r in records}
    # What relations.json will hold, checked before anything trains: a subset run (--only, fewer
    # --splits, no --resume) must not replace the full table.
    planned = {f"{label} / split {split}" for label, split in done}
    for split in splits:
        planned.add(f"closed / split {split}")
        planned |= {
            f"{label} / split {split}"
            for label, variant, _ in planned_runs(args, split, splits)
            if not only or variant in only
        }
    script_checks.check_cells(OUT / "relations.json", planned, relation_cells, args.allow_fewer_cells)
    OUT.mkdir(parents=True, exist_ok=True)
    for split in splits:
        if ("closed", split) not in done:
            t0, code = time.perf_counter(), common.code_state()  # the code this cell starts with
            cf = closed_forms(args.data_dir, split)
            rec = {"label": "closed", "split": split, **cf, "wall_s": time.perf_counter() - t0, "code": code}
            records.append(rec)
            with partial_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(
                f"split {split} closed forms: " + ", ".join(f"{k} {100 * v['test_ev']:.2f}" for k, v in cf.items()),
                flush=True,
            )
        for label, variant, overrides in planned_runs(args, split, splits):
            if (only and variant not in only) or (label, split) in done:
                continue
            code = common.code_state()  # the code this cell starts with
            rec = {"label": label, **train_variant(variant, split, args.data_dir, overrides=overrides), "code": code}
            if rec.get("relation") is not None:
                rec["relation_stats"] = relation_stats(np.asarray(rec["relation"]))
            if split != splits[0]:  # the matrices of the first split are kept for the heatmaps
                rec.pop("relation", None)
                rec.pop("mtrl_omega", None)
            records.append(rec)
            with partial_path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"split {split} {label}: EV {100 * rec['test_ev']:.2f} %, {rec['wall_s']:.1f} s", flush=True)
    write_main(records, common, args.allow_fewer_cells)


NO_W = "hard sharing + per-task ReLU 8 (no W)"
HARD = "hard sharing, linear 28->16"
HARD_512 = "hard sharing, linear 28->16, minibatch 512"
NO_W_FULL = NO_W + ", full batch"
W1_FULL = "W, alpha=1, full batch"


def row_order(label: str) -> tuple:
    """Closed forms, hard sharing (full batch, then minibatch), the no-W control, W by alpha, the rest."""
    if label.startswith(("single_task", "pooled")):
        return (0, float(label.startswith("pooled")), label)
    fixed = {HARD: 1, HARD_512: 2, NO_W: 3, NO_W_FULL: 5, W1_FULL: 6}
    if label in fixed:
        return (fixed[label], 0.0, label)
    if label.startswith("W, alpha="):
        return (4, float(label.split("=")[1].split(",")[0]), label)
    return (7, 0.0, label)


def paired_differences(records: list[dict]) -> list[dict]:
    """Each W row against the no-W control and against hard sharing (full batch and minibatch 512),
    and hard sharing's minibatch against its full batch: per-split differences on common splits."""
    ev: dict[str, dict[int, float]] = {}
    for r in records:
        if r["label"] != "closed":
            ev.setdefault(r["label"], {})[r["split"]] = 100.0 * r["test_ev"]
    pairs = [(HARD_512, HARD), (NO_W, HARD_512)]
    for label in sorted((k for k in ev if k.startswith("W, alpha=") and k != W1_FULL), key=row_order):
        pairs += [(label, NO_W), (label, HARD_512), (label, HARD)]
    pairs += [(NO_W_FULL, NO_W), (W1_FULL, NO_W_FULL), (W1_FULL, "W, alpha=1"), (W1_FULL, HARD)]
    out = []
    for row, ref in pairs:
        common_splits = sorted(set(ev.get(row, {})) & set(ev.get(ref, {})))
        if len(common_splits) < 2:  # one split is no comparison
            continue
        d = np.array([ev[row][s] - ev[ref][s] for s in common_splits])
        mean, sd = summary_lib.mean_sd(d)
        out.append(
            {
                "row": row,
                "reference": ref,
                "mean": mean,
                "std": sd,
                "wins": int((d > 0).sum()),
                "n": len(d),
                "splits": common_splits,
            }
        )
    return out


def relation_summary(records: list[dict]) -> dict:
    """label -> (splits, mean of :func:`relation_stats` over them) for the W rows."""
    acc: dict[str, list[dict]] = {}
    for r in records:
        st = r.get("relation_stats") or (
            relation_stats(np.asarray(r["relation"])) if r.get("relation") is not None else None
        )
        if st is not None:
            acc.setdefault(r["label"], []).append(st)
    return {
        k: (len(v), {s: float(np.mean([x[s] for x in v])) for s in v[0]})
        for k, v in sorted(acc.items(), key=lambda kv: row_order(kv[0]))
    }


def write_main(records: list[dict], common, allow_fewer_cells: bool = False) -> None:
    from experiments import script_checks

    # One record per (row, split): a rerun without --resume appends a second record of the same cell to
    # the log, and both counted would double that split in the row's mean and n. The latest is kept.
    records = list({(r["label"], r["split"]): r for r in records}.values())
    # Before any file (heatmaps, matrices, the table) is replaced.
    script_checks.check_cells(OUT / "relations.json", relation_cells(records), relation_cells, allow_fewer_cells)
    rows = {}
    for r in records:
        if r["label"] == "closed":
            for name, v in (("single_task", r["single_task"]), ("pooled", r["pooled"])):
                rows.setdefault(f"{name} (closed-form ridge, all 75 % train)", []).append(v["test_ev"])
                rows.setdefault(f"{name} (closed-form ridge, train minus 10 % validation)", []).append(
                    v["test_ev_train90"]
                )
        else:
            rows.setdefault(r["label"], []).append(r["test_ev"])
    times, row_splits, starts = {}, {}, {}
    for r in records:  # the code each row's cells started with (a closed-form record is both ridge rows')
        for k in (
            [k for k in rows if k.startswith(("single_task (", "pooled ("))] if r["label"] == "closed" else [r["label"]]
        ):
            starts.setdefault(k, []).append(r.get("code"))
    for r in records:
        if r["label"] != "closed":
            times.setdefault(r["label"], []).append(r["wall_s"])
            row_splits.setdefault(r["label"], []).append(r["split"])
    table = {k: mean_std(v) for k, v in sorted(rows.items(), key=lambda kv: row_order(kv[0]))}
    # The paired baseline: single-task ridge (train minus validation, the loop's data) on the row's splits.
    ridge90 = {r["split"]: r["single_task"]["test_ev_train90"] for r in records if r["label"] == "closed"}
    for k, sp in row_splits.items():
        if all(s in ridge90 for s in sp):
            table[k]["single_task_same_splits"] = 100.0 * float(np.mean([ridge90[s] for s in sp]))
            table[k]["splits"] = sorted(sp)
    lines = [
        "# School (ILEA, 139 tasks): explained variance (%) on the test students, mean ± s.d. over splits",
        "",
        "Rows in the loop: Adam (lr 1e-2, 300 steps) on the training students minus a 10 % per-school "
        "validation carve, final params (no selection); configs in `experiments/configs/school_tasks.py`. "
        "Full batch (each task's loss its exact mean over its own students) except the W rows, their "
        "no-W control ('+ per-task ReLU 8') and the row marked 'minibatch 512': minibatches of 512 students "
        "(about 3.7 per school). The W rows kept the minibatch after the step fix "
        "(`results/school/relation_step_time.md`: 30-50 ms per W step at batch 512, 0.3-0.4 s at the full "
        "batch, i.e. 2-3 min per 300-step run with compilation: 10 splits x 3 alphas did not fit the CPU budget); the "
        "'minibatch 512' hard-sharing row measures what the minibatch alone costs, and the two rows marked "
        "'full batch' (W at alpha 1 and its no-W control, on the splits listed) what it costs the W model. "
        "The W rows at alpha 1e-4 ... 1e-1 ran before that fix (their wall times are the slow step's; "
        "their values are unchanged by it, `tests/test_relation_speed.py`). "
        "Closed-form rows: ridge lambda picked on the validation carve from "
        f"{', '.join(f'{g:g}' for g in RIDGE_GRID)}, then refit.",
        "",
        "| model | EV % (mean ± s.d.) | splits | single-task ridge (train minus validation) on the same splits | wall s / run (median) | train EV % (runs recording it) |",
        "|---|---|---|---|---|---|",
    ]
    train_ev: dict[str, list[float]] = {}
    for r in records:
        if r.get("train_ev") is not None:
            train_ev.setdefault(r["label"], []).append(100.0 * r["train_ev"])
    for k, v in train_ev.items():
        table[k]["train_ev_mean"], table[k]["train_ev_n"] = float(np.mean(v)), len(v)
    for k, v in table.items():
        t = f"{np.median(times[k]):.1f}" if k in times else "< 1 (numpy)"
        same = f"{v['single_task_same_splits']:.2f}" if "single_task_same_splits" in v else "—"
        n = f"{v['n']} ({', '.join(str(s + 1) for s in v['splits'])})" if "splits" in v else str(v["n"])
        tr = f"{v['train_ev_mean']:.2f} ({v['train_ev_n']})" if "train_ev_mean" in v else "—"
        v["code"] = common.code_of(starts.get(k, [None]))
        lines.append(
            f"| {k}{common.code_mark(v['code'])} | {summary_lib.format_mean_sd(v['mean'], v['std'])} | {n} | {same} | {t} | {tr} |"
        )
    if any(common.code_mark(v["code"]) for v in table.values()):
        lines += ["", common.CODE_NOTE]
    paired = paired_differences(records)
    if paired:
        lines += [
            "",
            "Paired by split (EV points, row minus reference, on the splits both ran; wins = splits "
            "where the row is higher):",
            "",
            "| row | reference | mean difference ± s.d. | wins | splits |",
            "|---|---|---|---|---|",
        ]
        for p in paired:
            lines.append(
                f"| {p['row']} | {p['reference']} | {summary_lib.format_mean_sd(p['mean'], p['std'], signed=True)} | "
                f"{p['wins']} / {p['n']} | {p['n']} |"
            )
    w_stats = relation_summary(records)
    if w_stats:
        lines += [
            "",
            "The learned W (mean over the row's splits; W starts at the identity, |I|_F = "
            f"{np.sqrt(139):.1f}): the diagonal, the off-diagonal |W_ij|, the Frobenius norm, the "
            "distance from I, and the mean row sum (the total weight of z_i on the h_j):",
            "",
            "| row | splits | diag mean | off-diag mean abs | off-diag max abs | norm F | norm F of W - I | row sum mean |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, (n, st) in w_stats.items():
            lines.append(
                f"| {label} | {n} | {st['diag_mean']:.3f} | {st['offdiag_abs_mean']:.3f} | "
                f"{st['offdiag_abs_max']:.3f} | {st['frobenius']:.2f} | {st['dist_from_identity']:.2f} | "
                f"{st['row_sum_mean']:.3f} |"
            )
    heat = []
    # Matrices of the first split only (a later invocation's first split keeps its own too).
    split0 = min((r["split"] for r in records), default=0)
    first = [r for r in records if r.get("relation") is not None and r["split"] == split0]
    for r in first:
        a = r["overrides"].get("model.relation_alpha")
        batch = r["overrides"].get("batch_size")
        tag, note = (f"_batch{batch}", f", batch {batch}") if batch else ("", "")
        p = heatmap(
            np.asarray(r["relation"]),
            OUT / f"relation_W_alpha{a:g}{tag}_split{r['split']}.png",
            f"learned W (alpha={a:g}{note}, split {r['split'] + 1}), clustered; colour scale: off-diagonal 99th pct",
        )
        heat.append(str(p.relative_to(ROOT)))
    for r in records:
        if r.get("mtrl_omega") is not None and r["split"] == split0:
            p = heatmap(
                np.asarray(r["mtrl_omega"]),
                OUT / f"mtrl_omega_split{r['split']}.png",
                f"MTRL task covariance Omega (split {r['split'] + 1}), clustered",
            )
            heat.append(str(p.relative_to(ROOT)))
    if heat:
        lines += ["", "Heatmaps: " + ", ".join(f"`{h}`" for h in heat)]
    lines += [
        "",
        "Runs: `python -m experiments.school_relations main --resume --splits S --only VARIANTS` (one "
        "invocation per group of rows, each appending to `results/school/relations_partial.jsonl`), this "
        "file rendered from that log by the command below. Per-run records (EV, wall time, steps / s): "
        "`relations.json`; the 139 x 139 matrices of split 1: `relation_matrices.npz`.",
    ]
    slim = [{k: v for k, v in r.items() if k not in ("relation", "mtrl_omega")} for r in records]
    prov = script_checks.write_results(
        OUT / "relations",
        {
            "table": table,
            "paired": paired,
            "runs": slim,
            "heatmaps": heat,
            "relation_stats": {k: {"n": n, **st} for k, (n, st) in w_stats.items()},
        },
        lines,
        relation_cells,
        allow_fewer_cells,
    )
    # The full matrices (139 x 139) of the first split, for re-plotting.
    mats = {f"{r['label']}": r["relation"] for r in first}
    mats.update(
        {
            f"{r['label']} omega": r["mtrl_omega"]
            for r in records
            if r.get("mtrl_omega") is not None and r["split"] == split0
        }
    )
    extra = [ROOT / h for h in heat]
    if mats:
        np.savez_compressed(
            OUT / "relation_matrices.npz",
            **{k.replace(" ", "_").replace(",", ""): np.asarray(v) for k, v in mats.items()},
        )
        extra.append(OUT / "relation_matrices.npz")
    if (OUT / "relations_partial.jsonl").exists():
        extra.append(OUT / "relations_partial.jsonl")
    index_provenance(extra, prov)


def index_provenance(paths, prov: dict) -> None:
    """Files without room for a provenance (.png, .npz, .jsonl) get it in results/school/provenance.json,
    the folder index ``python -m experiments.recover_provenance --check`` reads."""
    index_path = OUT / "provenance.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    for p in paths:
        index[Path(p).name] = prov
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")


def catalogue_mode(args) -> None:
    """Every weighting scheme at K = 139 in the loop on one split: whether it runs, its step time, and
    (on a real schedule) its test explained variance. ``--name`` names the outputs
    (``results/school/<name>.{json,md}``, records in ``<name>_partial.jsonl``); an existing record
    file is continued only with ``--resume``, and only under the same schedule."""
    from experiments import results_io as common
    from experiments import script_checks
    from jmtl import weighting

    methods = args.methods.split(",") if args.methods else weighting.names()
    # Two evaluation intervals: the first holds the compilation, the second times the step.
    half = max(1, args.steps // 2)
    overrides = {
        "batch_size": args.batch_size,
        "num_steps": 2 * half,
        "eval_every_steps": half,
        "log_every_steps": half,
    }
    path = OUT / f"{args.name}_partial.jsonl"
    OUT.mkdir(parents=True, exist_ok=True)
    if path.exists() and not args.resume:
        raise SystemExit(
            f"{path} holds an earlier run's records: pass --resume to continue it, or --name for a new table"
        )
    records = [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []
    other = [
        r["method"]
        for r in records
        if r.get("overrides", overrides) != overrides or r.get("split", args.split) != args.split
    ]
    if other:
        raise SystemExit(
            f"{path} was written under another schedule or split (methods {other[:5]}); use --name for a new table"
        )
    done = {r["method"] for r in records}
    cells_of = lambda rec: {r["method"] for r in (rec["runs"] if isinstance(rec, dict) else rec)}
    script_checks.check_cells(OUT / f"{args.name}.json", done | set(methods), cells_of, args.allow_fewer_cells)
    for m in methods:
        if m in done:
            continue
        t0, code = time.perf_counter(), common.code_state()  # the code this cell starts with
        try:
            over = dict(overrides)
            if m == "static":
                over["weighting.hparams.weights"] = (1.0,) * 139
            rec = train_variant(args.variant, args.split, args.data_dir, method=m, overrides=over)
            rec["status"] = "ran"
        except Exception as e:  # noqa: BLE001  (a refusal or a crash is the finding)
            tb = traceback.format_exc().strip().splitlines()
            rec = {
                "method": m,
                "status": "refused" if isinstance(e, (ValueError, TypeError)) else "crashed",
                "error": f"{type(e).__name__}: {str(e)[:600]}",
                "where": tb[-3:] if len(tb) > 2 else tb,
                "wall_s": time.perf_counter() - t0,
            }
        rec.pop("relation", None)
        rec["overrides"], rec["split"], rec["code"] = overrides, args.split, code
        records.append(rec)
        with path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(
            f"{m}: {rec['status']} "
            + (
                f"EV {100 * rec['test_ev']:.2f} %, {rec['wall_s']:.1f} s, {rec['steps_per_s']:.2f} steps/s"
                if rec["status"] == "ran"
                else rec["error"][:200]
            ),
            flush=True,
        )
    for r in records:
        if r["status"] == "ran":
            iv = r.get("train_time_per_eval_s") or []
            r["s_per_step"] = iv[-1] / (r["steps"] / len(iv)) if len(iv) > 1 else r["wall_s"] / r["steps"]
    trained = overrides["num_steps"] >= 100
    title = [
        f"# School, K = 139: the weighting catalogue (variant `{args.variant}`, split {args.split + 1}, "
        f"{overrides['num_steps']} steps of batch {args.batch_size})",
        "",
    ]
    lines = (
        title
        + [
            "Every registered weighting scheme trained in the built-in loop at K = 139 tasks (Adam, lr 1e-2, final "
            "params, no selection), with its test explained variance (pooled over the test students, as in "
            "`relations.md`) and the loop's time per step (the second evaluation interval's training time / its "
            "steps; the first holds the compilation). The compiled steps alone, timed round-robin, are in "
            "`k139_step_time.md`.",
            "",
        ]
        if trained
        else title
        + [
            "Whether each method builds, compiles and trains at K = 139 tasks in the built-in loop, and its step "
            "time: the second evaluation interval's training time / its steps (the first interval holds the "
            "compilation: 'first interval s'). The schedule is too short to train (the test EV after it, kept in "
            "the .json, is that of a barely-trained model and ranks nothing).",
            "",
            "Timing caveat: one 3-step interval per method, on 2 CPU cores shared with other jobs (load average "
            "6-9 during these runs), so the s / step column carries noise of tens of % (e.g. `equal`, one backward "
            "pass, timed slower than `mgda`, 139 chunked backward passes); it bounds the cost (every method under "
            "~1.6 s / step at batch 512) but ranks nothing. The compiled steps timed round-robin are in "
            "`k139_step_time.md`.",
            "",
        ]
    )
    ran = [r for r in records if r["status"] == "ran"]
    if trained:
        lines += ["| rank | method | test EV % | loop s / step | wall s |", "|---|---|---|---|---|"]
        for i, r in enumerate(sorted(ran, key=lambda r: -r["test_ev"]), 1):
            lines.append(
                f"| {i} | `{r['method']}`{common.code_mark(common.code_of([r.get('code')]))} | {100 * r['test_ev']:.2f} | {r['s_per_step']:.3f} | {r['wall_s']:.1f} |"
            )
    else:
        lines += [
            "| method | status | s / step | first interval s (compile + steps) | wall s | note |",
            "|---|---|---|---|---|---|",
        ]
        for r in ran:
            iv = r.get("train_time_per_eval_s") or [r["wall_s"]]
            lines.append(
                f"| `{r['method']}`{common.code_mark(common.code_of([r.get('code')]))} | ran | {r['s_per_step']:.3f} | {iv[0]:.1f} | {r['wall_s']:.1f} | |"
            )
    for r in records:
        if r["status"] != "ran":
            lines.append(
                f"| `{r['method']}`{common.code_mark(common.code_of([r.get('code')]))} | {r['status']} | — | — | {r['wall_s']:.1f} | {r['error'][:300].replace('|', '/')} |"
            )
    if any(common.code_mark(common.code_of([r.get("code")])) for r in records):
        lines += ["", common.CODE_NOTE]
    prov = script_checks.write_results(
        OUT / args.name,
        {"runs": records, "overrides": overrides, "variant": args.variant, "split": args.split},
        lines,
        cells_of,
        args.allow_fewer_cells,
    )
    index_provenance([path], prov)


def indexed_mix(weights, xs):
    """``jmtl.models.base.mix_tasks`` before the fix (the reference of ``steptime``): ``list()`` on the
    product indexes it K times, whose backward pads each task's cotangent to the full [K, B, H] and
    sums K of them."""
    import jax.numpy as jnp

    stacked = jnp.stack(xs)
    return list(jnp.einsum("ij,j...->i...", weights.astype(stacked.dtype), stacked))


STEPTIME_ROWS = (
    # (label, variant, former indexing product?)
    ("hard sharing, linear 28->16", "hps_linear", False),
    ("+ per-task ReLU 8 (no W)", "hps_hidden", False),
    ("+ W (mix_tasks now: unstack)", "relation", False),
    ("+ W (mix_tasks before: list() indexing)", "relation", True),
)


def steptime_mode(args) -> None:
    """Median step time (equal weighting, Adam) of the rows above at the given batch sizes, timed
    round robin in one process after compilation; the compiled step's XLA temporary memory."""
    import jax

    from experiments import script_checks, timing
    from experiments.configs import school_tasks
    from jmtl.models import base
    from jmtl.training import loop
    from jmtl.training import step as step_lib

    cells_of = lambda rec: {f"{r['label']} @ {r['batch_size']}" for r in rec["rows"]}
    batch_sizes = script_checks.int_list("--batch-sizes", args.batch_sizes, 1, example="512,10321")
    script_checks.check_cells(
        OUT / "relation_step_time.json",
        {f"{label} @ {b}" for b in batch_sizes for label, _, _ in STEPTIME_ROWS},
        cells_of,
        args.allow_fewer_cells,
    )
    rows, fns = [], {}
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        for label, variant, former in STEPTIME_ROWS:
            if former and batch_size > args.former_max_batch:
                rows.append(
                    {
                        "label": label,
                        "variant": variant,
                        "batch_size": batch_size,
                        "former": former,
                        "skipped": f"not timed above batch {args.former_max_batch} (before the fix: 10 steps unfinished after 7 min, 8 GB)",
                    }
                )
                continue
            config = school_tasks.get_config(variant)
            config.dataset.data_dir = str(args.data_dir)
            config.dataset.kwargs.split_index = args.split
            config.batch_size = batch_size
            exp = loop.build_experiment(config)
            state = step_lib.init_state(exp.model, exp.weighting, exp.optimizer, exp.example_input, len(exp.tasks), 0)
            batch = next(iter(exp.train_iterator(0)))
            saved = base.mix_tasks
            if former:
                base.mix_tasks = indexed_mix  # read by heads_forward while the step is traced
            try:
                step = step_lib.make_train_step(exp.model, exp.tasks, exp.weighting, exp.optimizer, exp.step_config)
                t0 = time.perf_counter()
                compiled = jax.jit(step).lower(state, batch).compile()
                compile_s = time.perf_counter() - t0
            finally:
                base.mix_tasks = saved
            analysis = compiled.memory_analysis()
            name = f"{label} @ {batch_size}"
            rows.append(
                {
                    "label": label,
                    "variant": variant,
                    "batch_size": batch_size,
                    "former": former,
                    "gradient_path": step.gradient_path,
                    "compile_s": compile_s,
                    "temp_mib": None if analysis is None else analysis.temp_size_in_bytes / 2**20,
                    "name": name,
                }
            )
            fns[name] = lambda c=compiled, s=state, b=batch: jax.block_until_ready(c(s, b))
            print(f"compiled {name}: {compile_s:.1f} s", flush=True)
    samples = timing.time_round_robin(fns, repeats=args.repeats, warmup=2)
    for r in rows:
        if "name" in r:
            r["step_ms"] = [1000 * t for t in samples[r["name"]]]
            r["median_ms"] = float(np.median(r["step_ms"]))
    lines = [
        "# School, K = 139: step time of the task-relation matrix W, before and after the mix_tasks fix",
        "",
        f"One train step (equal weighting: one backward pass, path `loss_level`; Adam; "
        f"`experiments/configs/school_tasks.py`, split {args.split + 1}), median of {args.repeats} calls "
        "timed round robin in one process after compilation (`experiments.timing.time_round_robin`). "
        "'before' traces the same model with `jmtl.models.base.mix_tasks` replaced by its former body "
        "(`experiments.school_relations.indexed_mix`: `list(W @ stacked)`), 'now' with the current one "
        "(`jnp.unstack`). Temp MiB: XLA's temporary buffer of the compiled step (`memory_analysis`).",
        "",
        "Cause: `list(mixed)` indexes the [K, B, H] product K times; the backward pass of each index pads "
        "that task's [B, H] cotangent to a full [K, B, H] zero array and the K of them are summed: "
        "O(K^2 B H) work and memory (139 pads of 2.2 MB at batch 512; of 46 MB at the full batch, the 8 GB "
        "seen before). `jnp.unstack`'s backward is one concatenation. Forward values and gradients are "
        "unchanged (`tests/test_relation_speed.py`).",
        "",
        "What W still costs is the mixing's arithmetic: z = W h is 2 K^2 B H flops forward (K = 139, H = 8: "
        f"{2 * 139**2 * 8 * 512 / 1e9:.2f} GFLOP at batch 512, {2 * 139**2 * 8 * school_tasks.FULL_BATCH / 1e9:.1f} "
        "at the full batch; about three times that with the backward pass), against 2 K B 16 H for the per-task "
        f"layers it mixes ({2 * 139 * 16 * 8 * school_tasks.FULL_BATCH / 1e9:.2f} GFLOP at the full batch).",
        "",
        "| model | batch | ms / step (median) | × hard sharing at that batch | temp MiB | compile s |",
        "|---|---|---|---|---|---|",
    ]
    base_ms = {r["batch_size"]: r["median_ms"] for r in rows if r["variant"] == "hps_linear" and "median_ms" in r}
    for r in rows:
        if "median_ms" not in r:
            lines.append(f"| {r['label']} | {r['batch_size']} | {r['skipped']} | | | |")
            continue
        temp = f"{r['temp_mib']:.1f}" if r["temp_mib"] is not None else "—"
        lines.append(
            f"| {r['label']} | {r['batch_size']} | {r['median_ms']:.1f} | "
            f"{r['median_ms'] / base_ms[r['batch_size']]:.1f} | {temp} | {r['compile_s']:.1f} |"
        )
    script_checks.write_results(
        OUT / "relation_step_time",
        {"rows": rows, "repeats": args.repeats, "split": args.split},
        lines,
        cells_of,
        args.allow_fewer_cells,
    )


def enable_compilation_cache(folder: str) -> None:
    """XLA's persistent cache: the 10 splits of one config compile to the same program, so every
    split after the first skips the XLA compile (about 18 s of a 60 s run on 2 CPU cores)."""
    import jax

    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("main", "catalogue", "render", "steptime"))
    ap.add_argument("--data-dir", default=os.environ.get("JMTL_DATA_DIR", ""))
    ap.add_argument("--splits", default="0-9")
    ap.add_argument("--only", default="", help="comma list of variants to run (default all)")
    ap.add_argument("--alphas", default="", help="main: comma list of W's alpha (default ALPHAS)")
    ap.add_argument("--full-batch", action="store_true", help="main: also the full-batch no-W and W (alpha 1) rows")
    ap.add_argument("--controls", action="store_true", help="also the control rows, on the first split")
    ap.add_argument("--resume", action="store_true", help="skip runs already in the *_partial.jsonl")
    ap.add_argument("--split", type=int, default=0)
    ap.add_argument("--variant", default="hps_linear")
    ap.add_argument("--methods", default="")
    ap.add_argument("--name", default="catalogue", help="catalogue: output name under results/school/")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--batch-sizes", default="512,10321", help="steptime: batch sizes")
    ap.add_argument("--repeats", type=int, default=10, help="steptime: timed rounds")
    ap.add_argument(
        "--former-max-batch",
        type=int,
        default=512,
        help="steptime: largest batch the former (quadratic) product is timed at",
    )
    ap.add_argument(
        "--cache-dir",
        default=os.path.join(tempfile.gettempdir(), "jmtl_school_xla_cache"),
        help="XLA persistent compilation cache ('' = off)",
    )
    ap.add_argument(
        "--allow_fewer_cells",
        "--allow-fewer-cells",
        action="store_true",
        help="replace a results file even when the new one lacks some of its cells",
    )
    args = ap.parse_args(argv)
    from jmtl.training import cli

    with cli.one_line_errors():
        check_args(args)
        run_mode(args)


def check_args(args) -> None:
    """Every option of ``args``, before any work (``ValueError`` naming the option and the fix)."""
    from experiments import script_checks
    from experiments.configs import school_tasks

    parse_splits(args.splits)
    script_checks.int_list("--split", str(args.split), 0, NUM_SPLITS - 1, "0")
    if args.alphas:
        script_float_list("--alphas", args.alphas)
    script_checks.choices("--variant", [args.variant], school_tasks.VARIANTS, "hps_linear")
    if args.only:
        only = [v for v in args.only.split(",") if v]
        script_checks.choices("--only", only, school_tasks.VARIANTS, "hps_linear")
        runs = {
            v
            for _, v, _ in main_runs()
            + (full_batch_runs() if args.full_batch else ())
            + (CONTROL_RUNS if args.controls else ())
        }
        idle = [v for v in only if v not in runs]
        if args.mode == "main" and idle:
            raise ValueError(
                f"--only: no row of this command trains {', '.join(idle)} (the control rows need "
                f"--controls). Fix: e.g. --only={sorted(runs)[0]}, or add --controls"
            )
    if args.methods:
        script_checks.weighting_methods("--methods", args.methods.split(","))
    if not args.name or "/" in args.name or args.name.startswith("."):
        raise ValueError(f"--name: {args.name!r} must be a file name under results/school/. Fix: e.g. --name=catalogue")
    script_checks.at_least("--steps", args.steps, 1)
    script_checks.at_least("--batch-size", args.batch_size, 1)
    script_checks.int_list("--batch-sizes", args.batch_sizes, 1, example="512,10321")
    script_checks.at_least("--repeats", args.repeats, 1)
    script_checks.at_least("--former-max-batch", args.former_max_batch, 1)
    if args.mode != "render" and args.data_dir and not Path(args.data_dir).expanduser().is_dir():
        raise ValueError(
            f"--data-dir: {args.data_dir} is not a folder. Fix: pass the folder holding school/ (or set $JMTL_DATA_DIR)"
        )


def run_mode(args) -> None:
    if args.cache_dir:
        enable_compilation_cache(args.cache_dir)
    if args.mode == "main":
        main_mode(args)
    elif args.mode == "catalogue":
        catalogue_mode(args)
    elif args.mode == "steptime":
        steptime_mode(args)
    else:
        from experiments import results_io as common

        path = OUT / "relations_partial.jsonl"
        write_main([json.loads(l) for l in path.read_text().splitlines() if l.strip()], common, args.allow_fewer_cells)


if __name__ == "__main__":
    main(sys.argv[1:])
