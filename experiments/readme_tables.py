"""Renders the README's numeric tables from the results files they report.

Each generated table sits in README.md between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``;
this script replaces what is between the markers with the table rendered from ``results/`` (the
source file is named in the README text around it, and in :data:`SOURCES`). ``--check`` changes
nothing and exits 1, printing a diff, when the README and the results disagree (a test runs it).

    python -m experiments.readme_tables            # rewrite the tables in README.md
    python -m experiments.readme_tables --check    # exit 1 if any table differs from its results

Paper numbers (Sener & Koltun 2018, Søgaard & Goldberg 2016, Hashimoto et al. 2017) are constants
here, cited next to the tables; everything else is computed from the results files.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
README = ROOT / "README.md"

# Sener & Koltun (NeurIPS 2018), Table 1, MultiMNIST left / right accuracy (%), 100 epochs.
PAPER_MULTIMNIST = {"single_task": "97.23 / 95.90", "equal": "96.46 / 94.99", "uncertainty": "96.47 / 95.29",
                    "gradnorm": "96.27 / 94.84", "mgda": "97.26 / 95.90 (MGDA-UB)", "mgda@rep": "97.26 / 95.90"}

DISPLAY = {
    "equal": "equal", "uncertainty": "uncertainty", "gradnorm": "GradNorm", "mgda": "MGDA (param Jacobian)",
    "mgda@rep": "MGDA-UB", "si": "SI", "stch": "STCH", "nash_mtl": "Nash-MTL", "fairgrad": "FairGrad",
    "aligned_mtl": "Aligned-MTL", "db_mtl": "DB-MTL", "moco": "MoCo", "alternating": "alternating",
    "auto_lambda": "Auto-Lambda", "moml": "MOML", "forum": "FORUM",
}

class TableError(ValueError):
    """A table cannot be rendered truthfully from its results files (one line: the table, the file,
    what is wrong and the fix)."""


class UnknownTableError(KeyError):
    """The README marks a table this script does not know."""

    def __str__(self) -> str:
        return str(self.args[0])


TABLES: dict[str, Callable[[], list[str]]] = {}
SOURCES: dict[str, tuple[str, ...]] = {}


def table(name: str, *sources: str):
    """Registers a renderer of the table ``name`` from the results files ``sources``."""

    def register(fn):
        TABLES[name], SOURCES[name] = fn, sources
        return fn

    return register


# ----------------------------------------------------------------------------- helpers


def _json(rel: str):
    return json.loads((RESULTS / rel).read_text())


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _mean_std(values, scale: float = 100.0) -> str:
    v = scale * np.asarray(values, float)
    return f"{v.mean():.2f}" if len(v) == 1 else f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


class Ablation:
    """An ablation folder's results.csv, by (arch, method): per-seed test accuracies, Δm%, ms/step."""

    def __init__(self, folder: str):
        self.path = RESULTS / "ablation" / folder / "results.csv"
        with open(self.path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if not r["error"] and r["seed"]]
        self.cells: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            self.cells[r["method"] if r["arch"] != "single_task" else f"single_task:{r['method']}"].append(r)

    def num_seeds(self, methods: list[str] | None = None) -> int:
        """The seeds every cell (of ``methods``, default all) averages: a header that says "mean of N
        seeds" must be true of each row, so cells with different counts (rows lost from results.csv,
        a failed seed) are refused, naming them."""
        cells = {m: len({r["seed"] for r in rs}) for m, rs in self.cells.items() if methods is None or m in methods}
        counts = sorted(set(cells.values()))
        if len(counts) != 1:
            most = max(counts, key=lambda c: sum(v == c for v in cells.values()))
            odd = ", ".join(f"{m} {n}" for m, n in cells.items() if n != most)
            raise TableError(
                f"{self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path}: the cells average "
                f"different numbers of seeds ({most} for most; {odd}), so no 'mean of N seeds' header fits every row. "
                f"Fix: rerun the missing seeds (or restore the file: git checkout {self.path.name})"
            )
        return counts[0]

    def acc(self, method: str, task: str) -> np.ndarray:
        return np.array([float(r[f"test.{task}.accuracy"]) for r in self.cells[method]])

    def single(self, task: str) -> np.ndarray:
        return self.acc(f"single_task:{task}", task)

    def delta_m(self, method: str) -> np.ndarray:
        return np.array([float(r["delta_m"]) for r in self.cells[method]])

    def ms(self, method: str) -> float:
        return float(np.mean([float(r["ms_per_step"]) for r in self.cells[method]]))

    def methods(self) -> list[str]:
        return [m for m in self.cells if not m.startswith("single_task:")]

    def by_delta_m(self) -> list[str]:
        return sorted(self.methods(), key=lambda m: self.delta_m(m).mean())

    def left_right(self, method: str, std: bool = False) -> str:
        if std:
            return f"{_mean_std(self.acc(method, 'left'))} / {_mean_std(self.acc(method, 'right'))}"
        return f"{_pct(self.acc(method, 'left').mean())} / {_pct(self.acc(method, 'right').mean())}"

    def single_left_right(self, std: bool = False) -> str:
        if std:
            return f"{_mean_std(self.single('left'))} / {_mean_std(self.single('right'))}"
        return f"{_pct(self.single('left').mean())} / {_pct(self.single('right').mean())}"


# ----------------------------------------------------------------------------- tables


@table("multimnist_100epochs", "runs/multimnist.json")
def multimnist_100epochs() -> list[str]:
    lines = ["| run | weighting | Jacobian | epochs | best-val epoch | test left | test right | final left | final right "
             "| paper left / right | wall s / epoch |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    data = _json("runs/multimnist.json")
    for r in data["runs"] if isinstance(data, dict) else data:
        jac = "—" if r["weighting"] == "equal" else r["jacobian_mode"]
        paper = r["paper"] + (" (MGDA-UB)" if r["jacobian_mode"] == "representation" and "MGDA-UB" not in r["paper"] else "")
        lines.append(_row([r["run"], r["weighting"], jac, f"{r['epochs']:.0f}", f"{r['best_val_epoch']:.0f}",
                           _pct(r["best_val_test"]["left"]), _pct(r["best_val_test"]["right"]),
                           _pct(r["final_test"]["left"]), _pct(r["final_test"]["right"]), paper,
                           f"{r['wall_time_per_epoch_s']:.1f}"]))
    return lines


@table("bench_step", "bench/bench_step.json")
def bench_step() -> list[str]:
    d = _json("bench/bench_step.json")
    m = d["meta"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average"])
    lines = [f"Batch {m['batch']}, {m['tasks']} tasks, Adam; {m['repeats']} round-robin repeats after warm-up; jax "
             f"{m['jax']} on {m['backend']} ({m['cpu_count']} cores, load average at the end {load}); {m['torch']}.",
             "",
             "| step | median ms | p10 / p90 ms | vs PyTorch (a) | vs PyTorch (b) | compile s |",
             "|---|---:|---:|---:|---:|---:|"]
    f2 = lambda x: "—" if x is None else f"{x:.2f}"
    for name, r in d["rows"].items():
        lines.append(_row([name, f"{r['median_ms']:.2f}", f"{r['p10_ms']:.1f} / {r['p90_ms']:.1f}", f2(r["vs_torch_a"]),
                           f2(r["vs_torch_b"]), f2(r["compile_s"])]))
    return lines


@table("gradnorm_toy", "toy/gradnorm_toy.json")
def gradnorm_toy() -> list[str]:
    lines = ["| T | method | mean over tasks | worst / best task |", "|---:|---|---:|---:|"]
    for t, by_method in _json("toy/gradnorm_toy.json")["by_T"].items():
        for method, r in by_method.items():
            lines.append(_row([t, DISPLAY.get(method, method), f"{r['final_normalised_mse_mean']:.2f}",
                               f"{r['final_worst_over_best_task']:.1f}"]))
    return lines


def _groups(ab: Ablation, methods: list[str]) -> list[list[str]]:
    """Consecutive methods whose rows print identically (e.g. SI and STCH during STCH's warm-up) as one group."""
    groups: list[list[str]] = []
    for m in methods:
        key = (ab.left_right(m), f"{ab.delta_m(m).mean():.2f}")
        if groups and (ab.left_right(groups[-1][0]), f"{ab.delta_m(groups[-1][0]).mean():.2f}") == key:
            groups[-1].append(m)
        else:
            groups.append([m])
    return groups


@table("multimnist_1epoch", "ablation/multimnist_1epoch/results.csv")
def multimnist_1epoch() -> list[str]:
    ab = Ablation("multimnist_1epoch")
    n = ab.num_seeds()
    lines = [f"| method | left / right test accuracy (%), 1 epoch, {'mean of ' + str(n) + ' seeds' if n > 1 else 'one seed'} "
             "| Δm% vs single-task ↓ | paper, 100 epochs |",
             "|---|---|---:|---|",
             _row(["single-task", ab.single_left_right(), "0", PAPER_MULTIMNIST["single_task"]])]
    for m in ("equal", "uncertainty", "gradnorm", "mgda"):
        lines.append(_row([DISPLAY[m], ab.left_right(m), f"{ab.delta_m(m).mean():.2f}", PAPER_MULTIMNIST[m]]))
    # Identical rows (sum / static / equal, DualProj / TrimmedMean, SI / STCH) count as one entry.
    groups = _groups(ab, ab.by_delta_m())
    for label, chosen in (("best three", groups[:3]), ("worst three", groups[-3:])):
        names = ", ".join(" / ".join(DISPLAY.get(m, m) for m in g) for g in chosen)
        lines.append(_row([f"{label}: {names}", ", ".join(ab.left_right(g[0]) for g in chosen),
                           ", ".join(f"{ab.delta_m(g[0]).mean():.2f}" for g in chosen), "—"]))
    return lines


@table("scaling", "bench/bench_scaling.json")
def scaling() -> list[str]:
    d = _json("bench/bench_scaling.json")
    lines = ["| K | equal | PyTorch (a) sum, 1 backward | bare Jacobian, one vmap | bare Jacobian, chunks of 1 | "
             "PyTorch (b) K backwards | MGDA, chunks of 1 | representation mode | temp MiB: one vmap → chunks of 1 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for k, res in d["by_k"].items():
        rows = res["rows"]
        ms = lambda n: f"{rows[n]['median_ms']:.1f}"
        temp = lambda n: f"{rows[n]['memory']['temp_mib']:.0f}"
        lines.append(_row([k, ms("equal"), ms("torch (a) equal: 1 backward"), ms("bare Jacobian, all K in one vmap"),
                           ms("bare Jacobian, chunks of 1"), ms("torch (b) K backward passes"), ms("mgda, chunks of 1"),
                           ms("bare Jacobian, representation"),
                           f"{temp('bare Jacobian, all K in one vmap')} → {temp('bare Jacobian, chunks of 1')}"]))
    return lines


@table("bilevel_1epoch", "ablation/multimnist_1epoch_bilevel/results.csv")
def bilevel_1epoch() -> list[str]:
    ab = Ablation("multimnist_1epoch_bilevel")
    single_ms = np.mean([ab.ms("single_task:left"), ab.ms("single_task:right")])
    n = ab.num_seeds()
    lines = [f"| method | left / right test accuracy (%) | Δm% ↓ | ms/step ({n} seed{'s' if n > 1 else ''} in one program, "
             "under load) |",
             "|---|---|---:|---:|",
             _row(["single-task", ab.single_left_right(), "0", f"{single_ms:.0f}"])]
    for m in ab.by_delta_m():
        lines.append(_row([DISPLAY.get(m, m), ab.left_right(m), f"{ab.delta_m(m).mean():.2f}", f"{ab.ms(m):.0f}"]))
    return lines


@table("multifashion_1epoch", "ablation/multifashion_1epoch/results.csv")
def multifashion_1epoch() -> list[str]:
    ab = Ablation("multifashion_1epoch")
    lines = ["| method | left / right test accuracy (%) | Δm% ↓ |", "|---|---|---:|",
             _row(["single-task", ab.single_left_right(), "0"])]
    for m in ab.by_delta_m():
        lines.append(_row([DISPLAY.get(m, m), ab.left_right(m), f"{ab.delta_m(m).mean():.2f}"]))
    return lines


@table("core_20epochs", "ablation/multimnist_20epochs/results.csv", "ablation/multifashion_20epochs/results.csv")
def core_20epochs() -> list[str]:
    mm, mf = Ablation("multimnist_20epochs"), Ablation("multifashion_20epochs")
    names = {"equal": "equal", "uncertainty": "uncertainty (UW)", "gradnorm": "GradNorm", "mgda@rep": "MGDA-UB (`mgda@rep`)"}
    lines = ["| method | MultiMNIST left / right | Δm% ↓ | paper (MultiMNIST, 100 epochs) | MultiFashion left / right | Δm% ↓ |",
             "|---|---|---:|---|---|---:|",
             _row(["single-task", f"**{mm.single_left_right(std=True)}**", "0", PAPER_MULTIMNIST["single_task"],
                   f"**{mf.single_left_right(std=True)}**", "0"])]
    for m, label in names.items():
        lines.append(_row([label, mm.left_right(m, std=True), _mean_std(mm.delta_m(m), 1.0), PAPER_MULTIMNIST[m],
                           mf.left_right(m, std=True), _mean_std(mf.delta_m(m), 1.0)]))
    return lines


@table("seeds", "bench/bench_seeds.json", "bench/bench_seeds_multimnist.json")
def seeds() -> list[str]:
    lines = ["| config | method | seeds mode | wall speedup | steady speedup |", "|---|---|---|---:|---:|"]
    toy = _json("bench/bench_seeds.json")
    for r in toy["rows"]:
        if r["config"] == "toy":
            lines.append(_row([f"toy MLP, N = {r['steps']}", DISPLAY.get(r["method"], r["method"]).split(" (")[0],
                               r.get("mode", "vmap"), f"{r['speedup_wall_2N']:.2f}×", f"{r['speedup_steady']:.2f}×"]))
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in _json("bench/bench_seeds_multimnist.json")["rows"]:
        by_method[r["method"]].append(r)
    for method, rs in by_method.items():
        lines.append(_row([f"Multi-LeNet, N = {rs[0]['steps']}", DISPLAY.get(method, method).split(" (")[0],
                           " / ".join(r["mode"] for r in rs), " / ".join(f"{r['speedup_wall_2N']:.2f}×" for r in rs),
                           " / ".join(f"{r['speedup_steady']:.2f}×" for r in rs)]))
    return lines


def _variants(rel: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in _json(rel):
        out[r["variant"]].append(r)
    return out


def _score(rs: list[dict], split: str, task: str) -> np.ndarray:
    key = "f1" if "f1" in rs[0][split][task] else "accuracy"
    return np.array([r[split][task][key] for r in rs])


def _bold_best(cells: list[str], values: list[float]) -> list[str]:
    best = int(np.argmax(values))
    return [f"**{c}**" if i == best else c for i, c in enumerate(cells)]


def _hierarchical(rel: str, task: str, labels: dict[str, str], paper: dict[str, str], aux: str | None,
                  head: str) -> list[str]:
    runs = _variants(rel)
    order = list(labels)
    dev = [_mean_std(_score(runs[v], "validation", task)) for v in order]
    test = [_mean_std(_score(runs[v], "test", task)) for v in order]
    dev = _bold_best(dev, [_score(runs[v], "validation", task).mean() for v in order])
    test = _bold_best(test, [_score(runs[v], "test", task).mean() for v in order])
    lines = [head, "|---|---:|---:|---|---|"]
    for i, v in enumerate(order):
        rs = runs[v]
        pos = "–" if aux not in rs[0]["depths"] else \
            f"{_pct(_score(rs, 'validation', aux).mean())} / {_pct(_score(rs, 'test', aux).mean())}"
        lines.append(_row([labels[v], dev[i], test[i], pos, paper.get(v, "")]).replace(" |  |", " | |"))
    return lines


@table("hierarchical_sg", "hierarchical/sg.json")
def hierarchical_sg() -> list[str]:
    return _hierarchical(
        "hierarchical/sg.json", "chunk",
        {"single": "chunking alone (layer 3)", "top": "POS and chunking both at layer 3",
         "hier": "POS at layer 1, chunking at layer 3"},
        {"single": "single-task (Hashimoto et al.): 95.02", "hier": "95.56 (S&G)"}, "pos",
        "| variant | chunk F1 dev | chunk F1 test | POS acc dev / test | paper (test, pretrained embeddings) |")


@table("hierarchical_sg_30epochs", "hierarchical/sg_30epochs_seed0.json", "hierarchical/sg_crf_30epochs_seed0.json")
def hierarchical_sg_30epochs() -> list[str]:
    soft, crf = _variants("hierarchical/sg_30epochs_seed0.json"), _variants("hierarchical/sg_crf_30epochs_seed0.json")
    labels = {"single": "chunking alone", "top": "both at layer 3", "hier": "POS at 1, chunking at 3"}
    cells = {(v, i): f"{_pct(_score(runs[v], 'validation', 'chunk').mean())} / {_pct(_score(runs[v], 'test', 'chunk').mean())}"
             for v in labels for i, runs in enumerate((soft, crf))}
    best = max(cells, key=lambda c: _score((soft, crf)[c[1]][c[0]], "test", "chunk").mean())
    cells[best] = f"**{cells[best]}**"
    lines = ["| variant | softmax heads | CRF on chunking (`--config.crf_tasks=\"('chunk',)\"`) |", "|---|---|---|"]
    lines += [_row([label, cells[(v, 0)], cells[(v, 1)]]) for v, label in labels.items()]
    return lines


@table("hierarchical_jmt", "hierarchical/jmt.json")
def hierarchical_jmt() -> list[str]:
    return _hierarchical(
        "hierarchical/jmt.json", "chunk",
        {"single": "chunking alone (layer 2)", "top": "POS and chunking both at layer 2",
         "hier": "POS at layer 1, chunking at 2, label embeddings (JMT)"},
        {"single": "single-task chunking, test: 95.02", "top": "96.52 / 97.62 (all at the top)", "hier": "97.80 / 97.90"},
        "pos", "| variant | chunk F1 dev | chunk F1 test | POS acc dev / test | paper (dev, pretrained embeddings) |")


@table("hierarchical_conll03", "hierarchical/conll03.json")
def hierarchical_conll03() -> list[str]:
    runs = _variants("hierarchical/conll03.json")
    labels = {"single": "NER alone", "hier": "POS 1, chunk 2, NER 3", "top": "all three at layer 3"}
    order = list(labels)
    dev = _bold_best([_mean_std(_score(runs[v], "validation", "ner")) for v in order],
                     [_score(runs[v], "validation", "ner").mean() for v in order])
    test = _bold_best([_mean_std(_score(runs[v], "test", "ner")) for v in order],
                      [_score(runs[v], "test", "ner").mean() for v in order])
    lines = ["| variant | NER F1 dev | NER F1 test | chunk F1 test | POS acc test |", "|---|---:|---:|---:|---:|"]
    for i, v in enumerate(order):
        rs = runs[v]
        aux = ["–" if t not in rs[0]["depths"] else _mean_std(_score(rs, "test", t)) for t in ("chunk", "pos")]
        lines.append(_row([labels[v], dev[i], test[i], *aux]))
    return lines


# ----------------------------------------------------------------------------- README


MARKER = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.S)


def render(text: str) -> str:
    """``text`` with every marked table replaced by its rendering; unknown names raise."""

    def replace(m: re.Match) -> str:
        name = m.group("name")
        if name not in TABLES:
            raise UnknownTableError(f"README marks a table {name!r} that readme_tables does not know; known: "
                                    f"{', '.join(TABLES)}. Fix: correct the marker's name, or register the table")
        try:
            rows = TABLES[name]()
        except TableError as e:
            raise TableError(f"table {name!r}: {e}") from e
        except FileNotFoundError as e:
            raise TableError(f"table {name!r}: its results file {e.filename} does not exist. Fix: run the experiment "
                             f"that writes it, or restore it (git checkout {e.filename})") from e
        except (OSError, KeyError, IndexError, ValueError, TypeError) as e:
            what = f"lacks the column or key {e}" if isinstance(e, KeyError) else f"cannot be read ({type(e).__name__}: {e})"
            raise TableError(f"table {name!r}: its results file ({', '.join(SOURCES[name])}) {what}. Fix: regenerate it "
                             "with the experiment that writes it, or restore it from git") from e
        return m.group(1) + "\n".join(rows) + "\n" + m.group(4)

    opened = re.findall(r"<!-- table:([\w-]+) -->", text)
    closed = set(re.findall(r"<!-- /table:([\w-]+) -->", text))
    unclosed = [n for n in opened if n not in closed]
    if unclosed:
        raise TableError(f"README has <!-- table:{unclosed[0]} --> without its closing <!-- /table:{unclosed[0]} -->, "
                         "so the table would be left as it is. Fix: add the closing marker after the table")
    return MARKER.sub(replace, text)


def marked(text: str) -> list[str]:
    return [m.group("name") for m in MARKER.finditer(text)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 (and print a diff) if README.md differs")
    parser.add_argument("--readme", default=str(README))
    args = parser.parse_args(argv)
    path = Path(args.readme)
    try:
        text = path.read_text()
        new = render(text)
    except OSError as e:
        print(f"error: cannot read {path} ({e.strerror}). Fix: pass --readme PATH", file=sys.stderr)
        return 2
    except (TableError, UnknownTableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = sorted(set(TABLES) - set(marked(text)))
    if missing:
        print(f"tables not marked in {path.name}: {', '.join(missing)} (add <!-- table:NAME --> and "
              "<!-- /table:NAME --> where each goes)", file=sys.stderr)
    if args.check:
        if missing and path.resolve() == README.resolve():
            return 1  # a table the README should show is not checked at all
        if new != text:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), "README.md",
                                                       "rendered from results/"))
            return 1
        return 0
    if new != text:
        path.write_text(new)
        print(f"updated {', '.join(marked(text))} in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
