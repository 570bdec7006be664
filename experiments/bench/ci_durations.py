"""CI time: per-test durations of the suite (or some files), optionally paired against another commit.

Runs ``python -m pytest -q -p no:cacheprovider --junitxml=...`` on the given tests and reads each test's
time (setup + call + teardown) from the JUnit XML. With ``--before REF`` the same tests also run on
commit ``REF`` (checked out into a temporary ``git worktree``), alternating before / after ``--rounds``
times in one process tree, so both sides see the same machine load; the table gives each test's median
over the rounds and the after/before ratio. ``user+sys`` of the pytest processes (their children
included) is reported too: on this shared 2-core machine wall time swings with the other jobs, CPU time
much less.

    python -m experiments.bench.ci_durations tests/test_examples.py [--before HEAD~1] [--rounds 1]

Writes results/bench/<name>.json and .md (``--name``, default ci_time). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from experiments.bench.common import RESULTS, ROOT, provenance, write_outputs


def run_pytest(tree: Path, tests: list[str], extra: list[str]) -> dict:
    """One pytest run in ``tree``: ``{"wall_s", "cpu_s", "exit", "tests": {nodeid: seconds}}``.

    The CPU time is that process tree's own (``os.wait4`` on the pytest process), so two runs may go
    on at the same time (``--concurrent``) without counting each other's time."""
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        log = Path(tmp) / "stdout.txt"
        t0 = time.time()
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *extra, *tests],
                cwd=tree,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.time() - t0
        stdout = log.read_text()
        durations = {}
        if xml.exists():
            for case in ET.parse(xml).getroot().iter("testcase"):
                nodeid = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
                durations[nodeid] = float(case.get("time", 0.0))
    tail = stdout.strip().splitlines()[-1:] if stdout.strip() else [""]
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "exit": proc.returncode,
        "summary": tail[0],
        "tests": durations,
    }


def _median_tests(runs: list[dict]) -> dict[str, float]:
    names = sorted({n for r in runs for n in r["tests"]})
    return {n: float(np.median([r["tests"][n] for r in runs if n in r["tests"]])) for n in names}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tests", nargs="*", default=["tests"], help="pytest paths / node ids (default: tests)")
    parser.add_argument("--before", default=None, help="a commit to pair against (run alternately)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per side (alternating before / after)")
    parser.add_argument(
        "--concurrent",
        action="store_true",
        help="run before and after at the same time (both under the same load; CPU times stay per run)",
    )
    parser.add_argument("--top", type=int, default=40, help="rows of the slowest tests in the table")
    parser.add_argument("--pytest_args", default="", help="extra pytest arguments, one string")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--name", default="ci_time")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: give 1 or more")
    prov = provenance()  # commit and dirty flag at the start
    extra = args.pytest_args.split()
    worktree = None
    if args.before is not None:
        worktree = Path(tempfile.mkdtemp(prefix="jmtl_ci_before_")) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.before], cwd=ROOT, check=True)
    runs = {"after": [], "before": []}
    try:
        for _ in range(args.rounds):
            if worktree is not None and args.concurrent:
                with concurrent.futures.ThreadPoolExecutor(2) as pool:
                    b = pool.submit(run_pytest, worktree, args.tests, extra)
                    a = pool.submit(run_pytest, ROOT, args.tests, extra)
                    runs["before"].append(b.result())
                    runs["after"].append(a.result())
                continue
            if worktree is not None:
                runs["before"].append(run_pytest(worktree, args.tests, extra))
            runs["after"].append(run_pytest(ROOT, args.tests, extra))
    finally:
        if worktree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT, check=False)
            shutil.rmtree(worktree.parent, ignore_errors=True)
    after = _median_tests(runs["after"])
    before = _median_tests(runs["before"]) if runs["before"] else {}
    slowest = sorted(after, key=lambda n: -max(after[n], before.get(n, 0.0)))[: args.top]
    record = {
        "tests": args.tests,
        "before_commit": args.before,
        "rounds": args.rounds,
        "concurrent": args.concurrent,
        "runs": runs,
        "median_seconds_after": after,
        "median_seconds_before": before,
        "cpus": os.cpu_count(),
    }
    end = provenance()
    prov.update(date=end["date"], load_average_end=end["load_average_end"])

    def total(side, key):
        return float(np.median([r[key] for r in runs[side]])) if runs[side] else float("nan")

    lines = [
        "# CI time: per-test durations",
        "",
        f"`{prov['command']}`: pytest on `{' '.join(args.tests)}`, {args.rounds} run(s) per side"
        + (
            f", {'at the same time as' if args.concurrent else 'alternating with'} commit `{args.before}`"
            " (a temporary git worktree)"
            if args.before
            else ""
        )
        + f". Medians over the runs; a test's time is setup + call + teardown (JUnit XML). {os.cpu_count()} cores,"
        " shared with other jobs: wall times swing with the load; user+sys (CPU time of pytest and its"
        " subprocesses) is steadier.",
        "",
        "| | wall s | user+sys s | exit | pytest says |",
        "|---|---:|---:|---:|---|",
    ]
    for side in ("before", "after"):
        for r in runs[side]:
            lines.append(f"| {side} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['exit']} | {r['summary']} |")
    lines += ["", f"Slowest {len(slowest)} tests (median seconds):", ""]
    if before:
        lines += ["| test | before | after | after / before |", "|---|---:|---:|---:|"]
        for n in slowest:
            b, a = before.get(n), after[n]
            ratio = f"{a / b:.2f}" if b else "–"
            lines.append(
                f"| `{n}` | {b:.1f} | {a:.1f} | {ratio} |" if b is not None else f"| `{n}` | – | {a:.1f} | – |"
            )
        lines.append(f"| total (wall, median) | {total('before', 'wall_s'):.0f} | {total('after', 'wall_s'):.0f} | |")
    else:
        lines += ["| test | seconds |", "|---|---:|"]
        lines += [f"| `{n}` | {after[n]:.1f} |" for n in slowest]
    write_outputs(Path(args.out) / args.name, record, lines, prov)
    return 0 if all(r["exit"] == 0 for side in runs.values() for r in side) else 1


if __name__ == "__main__":
    sys.exit(main())
