r"""The leaderboard: every weighting scheme × seeds × benchmarks under one protocol per benchmark,
with bootstrap intervals, paired differences from equal weighting and ranks with ties (the library
side of ``experiments/leaderboard.py``, which only defines the flags).

A *benchmark* (:class:`Benchmark`, registered in :data:`BENCHMARKS` by :func:`register`) is a
config factory plus the baseline its Δm% is measured against. Its protocol is the config: the same
budget (steps or epochs), batch, optimizer and **one learning rate for every scheme**, model
selection on the validation split only (each seed's best-validation evaluation; the train loop's
rule). Only ``config.weighting`` changes between the cells of a benchmark.

The cells reuse the ablation driver (:mod:`jmtl.drivers.ablation`): a cell is one scheme with its S
seeds trained together in one compiled program (``config.num_seeds``, a ``vmap`` over seeds) in
``WORKDIR/<benchmark>/cells/<cell>``; a cell with a ``summary.json`` is finished and never rerun; an
interrupted one resumes from its checkpoint. Each cell records its protocol in ``protocol.json``
(the cell's config less what does not change results, and a SHA-256 fingerprint of it) before it
trains: a rerun whose protocol differs for a cell already started is refused before any work,
naming what changed, so cells of two protocols are never ranked side by side.

Statistics (all over seeds; S seeds per cell, paired by seed value):

* Δm% per seed against the seed-mean baseline (:func:`jmtl.metrics.mtl.delta_m`).
* The main interval: 95 % Student-t interval of the seed mean (:func:`t_interval`),
  ``mean ± t(0.975, S-1)·s/√S``. Beside it, the 95 % percentile bootstrap interval
  (:func:`bootstrap_ci`: ``B`` resamples of the S values with replacement, the 2.5 and 97.5
  percentiles of the resampled means), which with S = 5 seeds is about ``mean ± 1.75·s/√5`` against
  the t interval's ``± 2.78·s/√5`` and covers the true mean about 85 % of the time, not 95 %
  (tests/test_leaderboard_stats.py simulates both). Ranks, ties and verdicts use the main interval only.
* Paired difference from equal weighting: ``d_s = Δm(scheme, s) - Δm(equal, s)`` over the seeds
  both cells have, with the same two intervals (:func:`paired_difference`); its verdict
  (:func:`verdict`) is *better* / *worse* when the main interval lies wholly below / above 0.
* Rank with ties (:func:`rank_with_ties`): ``rank = 1 + #{schemes whose whole interval lies below
  this scheme's interval}`` (lower Δm% is better). Two schemes whose intervals overlap never order
  each other, so they tie unless a third scheme separates from one of them and not the other.
* What the board shows (:func:`summarize`, :func:`overall_summary`): counts of better / worse /
  no different from equal weighting, the best and worst means, the means' spread against the
  typical interval width, and the separations chance alone would give; computed, never written by hand.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import resource
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from jmtl import weighting
from jmtl.drivers import ablation
from jmtl.errors import GridMismatchError
from jmtl.metrics import mtl as mtl_metrics
from jmtl.training import config_schema
from jmtl.training.cli import suggest

EQUAL = "equal"
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
PROTOCOL_FILE = "protocol.json"
COST_FILE = "cost.json"
FAILED_DIR = "failed_attempts"
INTERVAL_RULE = (
    "The main interval (ranks, ties and verdicts use it) is the Student-t interval mean ± t(0.975, S−1)·s/√S over "
    "the S seeds (s: the seeds' standard deviation; t(0.975, 4) = 2.78 for 5 seeds): it covers the true mean 95 % of "
    "the time when the seed values are normal. The 95 % percentile bootstrap interval is shown beside it: with 5 "
    "seeds it is about mean ± 1.75·s/√5 and covers only about 85 % of the time (a simulation in "
    "tests/test_leaderboard_stats.py checks both), so it is not used for any verdict."
)
TIE_RULE = (
    "rank = 1 + the number of schemes whose whole 95 % Student-t interval of Δm% lies below (is better than) this "
    "scheme's interval; schemes whose intervals overlap never order each other, so they share a rank unless "
    "a third scheme separates from one of them and not the other."
)


# ----------------------------------------------------------------------------- benchmarks


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark of the board: its protocol (a config) and the baseline of its Δm%.

    Attributes:
      name: the registry key (``--benchmarks`` value).
      config: () -> the protocol's ``ConfigDict``: budget, batch, optimizer, the one learning rate,
        evaluation cadence (selection on validation). Its ``weighting`` is replaced per cell.
      description: one line for the board (what the data and the budget are).
      baseline: ``"single_task"`` (one model per task, the ablation driver's single-task cells) or
        ``"config"`` (one cell trained from ``baseline_config``, e.g. School's independent heads,
        whose per-task metrics are the single-task references).
      baseline_config: () -> the baseline cell's config (``baseline="config"`` only).
      arch: ``config.model.arch`` of the scheme cells.
      baseline_name: the baseline cell is ``baseline__<baseline_name>`` (``baseline="config"`` only).
      method_overrides: ``{scheme: {dotted config field: value}}`` set on that scheme's cell only,
        where the protocol needs a scheme-specific setting to run at all (School's full-batch MOML
        reads the whole validation split as its meta batch: ``weighting.meta_batch_size=-1``).
    """

    name: str
    config: Callable[[], object]
    description: str
    baseline: str = "single_task"
    baseline_config: Callable[[], object] | None = None
    arch: str = "hps"
    baseline_name: str = "reference"
    method_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


BENCHMARKS: dict[str, Benchmark] = {}


def register(benchmark: Benchmark, overwrite: bool = False) -> Benchmark:
    """Adds ``benchmark`` to :data:`BENCHMARKS` (a name already taken raises unless ``overwrite``)."""
    if benchmark.baseline not in ("single_task", "config"):
        raise ValueError(
            f"benchmark {benchmark.name}: baseline must be 'single_task' or 'config', got {benchmark.baseline!r}"
        )
    if benchmark.baseline == "config" and benchmark.baseline_config is None:
        raise ValueError(f"benchmark {benchmark.name}: baseline='config' needs baseline_config")
    if benchmark.name in BENCHMARKS and not overwrite:
        raise ValueError(f"benchmark {benchmark.name!r} is registered already; pass overwrite=True to replace it")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def parse_benchmarks(spec: str | Sequence[str], registry: Mapping[str, Benchmark] | None = None) -> list[str]:
    """``'all'`` or a comma list of registered benchmark names; an unknown name raises, naming the valid ones."""
    registry = BENCHMARKS if registry is None else registry
    names = (
        list(registry) if spec == "all" else [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    )
    names = [n for n in names if n]
    unknown = [n for n in names if n not in registry]
    if unknown or not names:
        hint = suggest(unknown[0], list(registry)) if unknown else ""
        raise ValueError(f"unknown benchmark(s) {unknown or names}{hint}; valid: {', '.join(registry)}")
    return names


def parse_methods(spec: str) -> list[str]:
    """``'all'`` (every registered scheme) or a comma list, in the order given; ``equal`` always comes
    first (the paired differences need it)."""
    methods = ablation.parse_methods(spec)
    return [EQUAL, *(m for m in methods if m != EQUAL)]


# ----------------------------------------------------------------------------- cells and protocol


def cells_of(benchmark: Benchmark, methods: Sequence[str], seeds: int) -> tuple[list, list]:
    """``(baseline cells, scheme cells)``, each ``[(cell name, config)]``; every cell trains its
    ``seeds`` seeds in one program."""
    config = benchmark.config()
    config_schema.validate_config(config)
    names = [t.name for t in ablation.task_list(config)]
    cells = ablation.grid(config, list(methods), [benchmark.arch], names, seeds, benchmark.baseline == "single_task")
    base = [(n, c) for n, c in cells if n.startswith(ablation.SINGLE)]
    schemes = [(n, c) for n, c in cells if not n.startswith(ablation.SINGLE)]
    for n, c in schemes:
        for dotted, value in benchmark.method_overrides.get(c.weighting.name, {}).items():
            *path, last = dotted.split(".")
            node = c
            for part in path:
                node = node[part]
            if last not in node:
                raise KeyError(f"benchmark {benchmark.name}: method_overrides names {dotted!r}, which the config lacks")
            node[last] = value
        if benchmark.method_overrides.get(c.weighting.name):
            config_schema.validate_config(c)
    if benchmark.baseline == "config":
        c = ablation._copy(benchmark.baseline_config())
        c.weighting = config_schema.method_config(EQUAL)
        c.num_seeds = seeds
        config_schema.validate_config(c)
        base = [(f"baseline__{benchmark.baseline_name}", c)]
    return base, schemes


def protocol_key(config) -> dict:
    """What a cell's results depend on: its config less where data is read from and how progress
    shows (:data:`jmtl.drivers.ablation._NOT_COMPARED`)."""
    return ablation.grid_key(config, int(config.num_seeds), None)["config"]


def fingerprint(key: Mapping) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_protocols(bench_dir: Path, cells: Sequence[tuple[str, object]]) -> None:
    """Refuses (``GridMismatchError``) when a cell already started in ``bench_dir`` under another
    protocol, naming the cell and what changed; a started cell without a protocol record is refused too.
    A cell whose last attempt failed is not checked: it holds no result, and :func:`train_cell`
    retries it from scratch under this run's protocol."""
    for name, config in cells:
        cell_dir = bench_dir / "cells" / name
        path = cell_dir / PROTOCOL_FILE
        if failed(bench_dir, name):
            continue  # no result to protect: its attempt is set aside and the cell retried under this protocol
        if not path.exists():
            if cell_dir.exists() and any(cell_dir.iterdir()):
                raise GridMismatchError(
                    f"{cell_dir} holds a cell without a {PROTOCOL_FILE}, so its protocol is unknown and it cannot be "
                    "ranked beside this run's cells. Fix: remove that folder, or use a new --workdir"
                )
            continue
        saved = json.loads(path.read_text())
        key = protocol_key(config)
        if saved.get("fingerprint") != fingerprint(key):
            diff = config_schema.differences(saved.get("key", {}), key)
            shown = "; ".join(diff[:5]) + (f"; and {len(diff) - 5} more" if len(diff) > 5 else "")
            raise GridMismatchError(
                f"cell {name} in {bench_dir} was trained under another protocol ({shown or 'fingerprint differs'}); "
                "mixing them would rank cells of two protocols side by side. Fix: use a new --workdir (and --archive) for this "
                "protocol, or rerun with the old settings"
            )


def write_protocol(bench_dir: Path, name: str, config) -> None:
    cell_dir = bench_dir / "cells" / name
    cell_dir.mkdir(parents=True, exist_ok=True)
    key = protocol_key(config)
    (cell_dir / PROTOCOL_FILE).write_text(json.dumps({"fingerprint": fingerprint(key), "key": key}, indent=2))


def finished(bench_dir: Path, name: str) -> bool:
    dirs = ablation.program_dirs(bench_dir, name)
    return bool(dirs) and all((d / "summary.json").exists() for d in dirs)


# What a finished cell is on record as: enough to rank it, check its protocol and name its code and
# cost, without its checkpoints or logs. See :func:`archive` / :func:`restore`. ``summary.json`` is
# archived cut to what the board reads (:func:`board_summary`): a School cell's full summary is ~0.4 MB.
ARCHIVED_FILES = (PROTOCOL_FILE, COST_FILE, "code.jsonl", "config.json", "summary.json", "resumes.jsonl")


def board_summary(summary: Mapping) -> dict:
    """The part of a program's ``summary.json`` the board reads: each seed's best-validation step,
    score and test metrics, and the run's steps and wall time (idempotent)."""
    return {
        "archived": "the leaderboard's cut of summary.json (jmtl.drivers.leaderboard.board_summary)",
        "steps": summary.get("steps"),
        "wall_time_s": summary.get("wall_time_s"),
        "seeds": [
            {
                "seed": e["seed"],
                "best_validation": {k: e["best_validation"].get(k) for k in ("step", "score", "test")},
            }
            for e in summary["seeds"]
        ],
    }


def _copy_record_file(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.name == "summary.json":
        dest.write_text(json.dumps(board_summary(json.loads(src.read_text())), separators=(",", ":")) + "\n")
    else:
        dest.write_bytes(src.read_bytes())


def _archived_files(bench_dir: Path, name: str) -> list[Path]:
    """The record files of a finished cell, relative to ``bench_dir`` (its own and its programs')."""
    cell_dir = bench_dir / "cells" / name
    out = []
    for d in dict.fromkeys([cell_dir, *ablation.program_dirs(bench_dir, name)]):
        out += [(d / f).relative_to(bench_dir) for f in ARCHIVED_FILES if (d / f).is_file()]
    return out


def archive(
    workdir: str | Path, archive_dir: str | Path, benchmark_names: Sequence[str], cells: Sequence[str] | None = None
) -> list[str]:
    """Copies the record files (:data:`ARCHIVED_FILES`) of every finished cell of ``workdir`` into
    ``archive_dir`` (same layout, ``<benchmark>/cells/<cell>/...``), where :func:`restore` finds them on
    another machine: a board whose workdir is lost (a new machine, a cleaned ``/tmp``) is rendered and
    extended from the archive without retraining its cells. ``summary.json`` is archived as
    :func:`board_summary` cuts it. A cell already archived is left as it is when its results are the
    same and refused (``GridMismatchError``) when they differ: one cell, two results. ``cells``: only
    these cells (default every cell; the run archives each cell as it finishes, then checks all at the
    end). Returns the cells archived now, as ``benchmark/cell``."""
    workdir, archive_dir = Path(workdir), Path(archive_dir)
    added = []
    for b in benchmark_names:
        bench_dir = workdir / b
        for cell_dir in sorted((bench_dir / "cells").glob("*")) if (bench_dir / "cells").is_dir() else []:
            name = cell_dir.name
            if (cells is not None and name not in cells) or not finished(bench_dir, name):
                continue
            files = _archived_files(bench_dir, name)
            _check_same_cell(bench_dir, archive_dir / b, name)
            if (archive_dir / b / "cells" / name).exists():
                continue
            for rel in files:
                _copy_record_file(bench_dir / rel, archive_dir / b / rel)
            added.append(f"{b}/{name}")
    return added


def _check_same_cell(bench_dir: Path, archived_bench: Path, name: str) -> None:
    """Refuses when ``name`` is finished both in ``bench_dir`` and in the archive with different results."""
    if not (archived_bench / "cells" / name).exists():
        return

    def results(root: Path) -> dict:
        files = [r for r in _archived_files(root, name) if r.name == "summary.json"]
        return {str(r): board_summary(json.loads((root / r).read_text())) for r in files}

    mine, theirs = results(bench_dir), results(archived_bench)
    differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if differ:
        raise GridMismatchError(
            f"cell {name} is finished both in {bench_dir} and in the archive {archived_bench} with different results "
            f"({', '.join(differ)}); one cell cannot hold two results. Fix: keep one (remove the workdir's cell "
            "folder to use the archived one, or the archived folder to replace it), or use another --archive"
        )


def restore(archive_dir: str | Path, workdir: str | Path, benchmark_names: Sequence[str]) -> list[str]:
    """Copies every archived cell (:func:`archive`) that ``workdir`` lacks into it, so the cell counts as
    finished (its ``summary.json``) and is never retrained; its protocol is checked like any other cell's.
    A cell that the workdir has too is left there when finished with the same results, and refused
    (``GridMismatchError``) when its results differ or when the workdir holds an unfinished or failed
    attempt of it (training it again would give the cell a second result). Returns the cells restored,
    as ``benchmark/cell``."""
    workdir, archive_dir = Path(workdir), Path(archive_dir)
    restored = []
    for b in benchmark_names:
        src = archive_dir / b
        if not (src / "cells").is_dir():
            continue
        for cell_dir in sorted((src / "cells").glob("*")):
            name = cell_dir.name
            if not finished(src, name):
                continue
            target = workdir / b / "cells" / name
            if target.exists():
                if not finished(workdir / b, name):
                    raise GridMismatchError(
                        f"cell {name} is finished in the archive {src} but {target} holds an unfinished or failed "
                        "attempt of it. Fix: remove that folder (the archived result is then used), or use another "
                        "--archive"
                    )
                _check_same_cell(workdir / b, src, name)
                continue
            for rel in _archived_files(src, name):
                _copy_record_file(src / rel, workdir / b / rel)
            restored.append(f"{b}/{name}")
    return restored


def _first_line(path: Path) -> str:
    return (path.read_text().splitlines() or ["(empty error.txt)"])[0]


def failed(bench_dir: Path, name: str) -> bool:
    """Whether the cell's last attempt ended in an error (``error.txt``) and it is not finished."""
    return (bench_dir / "cells" / name / "error.txt").exists() and not finished(bench_dir, name)


def set_aside_failed(bench_dir: Path, name: str) -> Path:
    """Moves a failed cell's folder (its error, partial logs, checkpoints, cost and code record) to
    ``BENCH/failed_attempts/<cell>/attempt_<k>`` so that its retry starts from scratch: resuming
    the failed attempt's checkpoint would mix steps trained by the code that failed with the fixed
    code's, and its logs and cost with the retry's. Returns the new folder."""
    dest_root = bench_dir / FAILED_DIR / name
    k = 1 + sum(1 for d in dest_root.glob("attempt_*") if d.is_dir()) if dest_root.exists() else 1
    dest = dest_root / f"attempt_{k}"
    dest_root.mkdir(parents=True, exist_ok=True)
    (bench_dir / "cells" / name).rename(dest)
    return dest


def train_cell(bench_dir: Path, name: str, config, on_start: Callable[[Path], object] | None = None) -> dict | None:
    """Trains one cell (resuming it if interrupted; nothing if finished); records its wall and CPU
    seconds (this process's user + system time) in ``cost.json``. ``on_start(cell_dir)`` runs first
    (the script records the code the cell starts from: ``code.jsonl``). A cell whose last attempt
    ended in an error is retried from scratch (:func:`set_aside_failed`; printed as ``retried``).
    Returns the error, if any."""
    if finished(bench_dir, name):
        return None
    if failed(bench_dir, name):
        error = _first_line(bench_dir / "cells" / name / "error.txt")
        dest = set_aside_failed(bench_dir, name)
        print(f"retried {bench_dir.name}/{name} from scratch: its last attempt failed ({error[:200]}); kept in {dest}")
    write_protocol(bench_dir, name, config)
    if on_start is not None:
        on_start(bench_dir / "cells" / name)
    wall0, cpu0 = time.perf_counter(), _cpu_s()
    errors = ablation.run_grid([(name, config)], bench_dir)
    cost_path = bench_dir / "cells" / name / COST_FILE
    prev = json.loads(cost_path.read_text()) if cost_path.exists() else {"wall_s": 0.0, "cpu_s": 0.0, "sessions": 0}
    cost = {
        "wall_s": prev["wall_s"] + time.perf_counter() - wall0,
        "cpu_s": prev["cpu_s"] + _cpu_s() - cpu0,
        "sessions": prev["sessions"] + 1,
    }
    cost_path.write_text(json.dumps(cost))
    return errors.get(name)


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ----------------------------------------------------------------------------- statistics


def bootstrap_ci(
    values: Sequence[float], confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the sample mean and its percentile bootstrap interval (Efron &
    Tibshirani 1993, Ch. 13): ``resamples`` draws of ``n`` values with replacement, the
    ``(1 - confidence)/2`` and ``(1 + confidence)/2`` quantiles of the resampled means (numpy's
    linear interpolation). Fixed ``seed``: the board is reproducible.

    Args:
      values: the per-seed values (at least 2).
      confidence: the interval's coverage (default 0.95).
      resamples: bootstrap draws B (default 10 000).
      seed: the resampling RNG's seed.
    """
    x = np.asarray(values, np.float64)
    if x.ndim != 1 or len(x) < 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"bootstrap_ci needs >= 2 finite values, got {x.tolist()}. Fix: run more seeds (--seeds)")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(resamples, len(x)))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(x.mean()), float(low), float(high)


@functools.lru_cache(maxsize=256)  # the board asks for the same few (p, df) hundreds of times
def t_quantile(p: float, df: int) -> float:
    r"""The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom, in float64
    without scipy (a core-library dependency the board does not need).

    With :math:`x = \sqrt{\nu}\tan\theta` the t density becomes a power of the cosine:

    .. math:: F(x) = \tfrac12 + \frac{\Gamma(\frac{\nu+1}{2})}{\sqrt{\pi}\,\Gamma(\frac{\nu}{2})}
              \int_0^{\arctan(x/\sqrt{\nu})} \cos^{\nu-1}\theta \, d\theta ,

    a smooth integrand on a bounded interval, which 64-point Gauss-Legendre integrates to float64
    precision; the quantile is found by bisection on the angle. (ν = 1: F = ½ + θ/π, the Cauchy
    distribution; ν = 2: F = ½ + ½ sin θ: the closed forms the tests check it against.)

    Args:
      p: the probability, in (0, 1).
      df: the degrees of freedom ν (an integer >= 1; n - 1 for an interval over n seeds).
    """
    if not 0.0 < p < 1.0 or int(df) != df or df < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and an integer df >= 1, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    nu = float(df)
    const = math.exp(math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2)) / math.sqrt(math.pi)
    nodes, weights = np.polynomial.legendre.leggauss(64)

    def half_cdf(phi: float) -> float:  # F(sqrt(nu) tan(phi)) - 1/2
        theta = 0.5 * phi * (nodes + 1.0)
        return const * 0.5 * phi * float(np.sum(weights * np.cos(theta) ** (nu - 1)))

    lo, hi = 0.0, math.pi / 2
    for _ in range(80):  # the angle's bracket halves each step: 2^-80 of pi/2 is below float64 spacing
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if half_cdf(mid) < p - 0.5 else (lo, mid)
    return math.sqrt(nu) * math.tan(0.5 * (lo + hi))


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    r"""``(mean, low, high)``: the sample mean and its Student-t interval
    :math:`\bar x \pm t_{(1+c)/2,\,n-1}\, s/\sqrt{n}` (``s`` the sample standard deviation, ddof 1).

    The board's main interval. Exact coverage when the per-seed values are normal, and close to it
    for the mildly skewed values of a seed spread; the percentile bootstrap (:func:`bootstrap_ci`)
    is about :math:`\bar x \pm 1.96\, s\sqrt{(n-1)/n}/\sqrt{n}` and so covers well under ``c`` at
    n = 5 (about 85 % for a nominal 95 %: tests/test_leaderboard_stats.py simulates both).

    Args:
      values: the per-seed values (at least 2, finite).
      confidence: the interval's coverage (default 0.95).
    """
    x = np.asarray(values, np.float64)
    if x.ndim != 1 or len(x) < 2 or not np.all(np.isfinite(x)):
        raise ValueError(f"t_interval needs >= 2 finite values, got {x.tolist()}. Fix: run more seeds (--seeds)")
    mean = float(x.mean())
    half = t_quantile((1.0 + confidence) / 2.0, len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return mean, mean - half, mean + half


def paired_difference(
    scheme: Mapping[int, float],
    reference: Mapping[int, float],
    interval: Callable[..., tuple[float, float, float]] | None = None,
    **kwargs,
) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)`` of ``scheme[s] - reference[s]`` over the seeds ``s`` both have (a
    paired comparison: each seed's shared randomness cancels), with ``interval``'s interval
    (default :func:`t_interval`, the board's main one: a paired t interval; pass
    :func:`bootstrap_ci` for the percentile bootstrap). ``kwargs`` go to ``interval``."""
    common = sorted(set(scheme) & set(reference))
    if len(common) < 2:
        raise ValueError(
            f"paired_difference needs >= 2 seeds present in both cells, got {common}. Fix: finish both cells' seeds"
        )
    d = [scheme[s] - reference[s] for s in common]
    return (*(interval or t_interval)(d, **kwargs), len(common))


def rank_with_ties(intervals: Mapping[str, tuple[float, float]]) -> dict[str, int]:
    """``{name: rank}`` from ``{name: (low, high)}`` intervals of a lower-is-better quantity: rank =
    1 + the number of entries whose ``high`` is strictly below this entry's ``low`` (see :data:`TIE_RULE`)."""
    return {n: 1 + sum(1 for m, (_, hi) in intervals.items() if m != n and hi < lo) for n, (lo, _) in intervals.items()}


# ----------------------------------------------------------------------------- results


def _seed_metrics(bench_dir: Path, name: str, tasks) -> dict[int, list[float]] | None:
    """``{seed: [main metric per task (None if the cell lacks it)]}`` at each seed's best-validation
    evaluation, or None while the cell is unfinished."""
    if not finished(bench_dir, name):
        return None
    out = {}
    for d in ablation.program_dirs(bench_dir, name):
        summary = json.loads((d / "summary.json").read_text())
        for entry in summary["seeds"]:
            test = entry["best_validation"].get("test", {})
            out[int(entry["seed"])] = [test.get(t.name, {}).get(t.main_metric.name) for t in tasks]
    return out


def cell_record(bench_dir: Path, name: str) -> dict:
    """Provenance of one cell: its protocol fingerprint, the code it ran under, cost and steps."""
    cell_dir = bench_dir / "cells" / name
    rec = {"cell": name}
    if (cell_dir / PROTOCOL_FILE).exists():
        rec["fingerprint"] = json.loads((cell_dir / PROTOCOL_FILE).read_text())["fingerprint"]
    if (cell_dir / COST_FILE).exists():
        rec.update(json.loads((cell_dir / COST_FILE).read_text()))
    dirs = ablation.program_dirs(bench_dir, name)
    codes = []
    for d in dirs:
        if (d / "code.jsonl").exists():
            codes += [json.loads(x) for x in (d / "code.jsonl").read_text().splitlines() if x.strip()]
    if codes:
        commits = {c.get("git_commit") for c in codes}
        rec["git_commit"] = commits.pop() if len(commits) == 1 else "mixed"
        rec["git_dirty"] = any(c.get("git_dirty") for c in codes)
    for d in dirs:
        if (d / "summary.json").exists():
            s = json.loads((d / "summary.json").read_text())
            rec.update(steps=s.get("steps"), train_wall_s=s.get("wall_time_s"))
    if (cell_dir / "error.txt").exists():
        rec["error"] = _first_line(cell_dir / "error.txt")
    attempts = sorted(
        (bench_dir / FAILED_DIR / name).glob("attempt_*/error.txt"), key=lambda a: int(a.parent.name.split("_")[1])
    )
    if attempts:  # earlier attempts that failed and were retried: their errors stay on record
        rec["failed_attempts"] = [_first_line(a) for a in attempts]
    return rec


def benchmark_results(bench_dir: Path, benchmark: Benchmark, methods: Sequence[str], seeds: int) -> dict:
    """The board's entries for one benchmark from its finished cells (nothing trains here)."""
    config = benchmark.config()
    tasks = ablation.task_list(config)
    base_cells, scheme_cells = cells_of(benchmark, methods, seeds)
    check_protocols(bench_dir, base_cells + scheme_cells)
    hib = [t.main_metric.higher_is_better for t in tasks]
    # The baseline per task: the seed mean of the cell that trains that task alone.
    baseline, missing = [], []
    for k, t in enumerate(tasks):
        vals = []
        for name, _ in base_cells:
            m = _seed_metrics(bench_dir, name, tasks)
            if m:
                vals += [v[k] for v in m.values() if v[k] is not None]
        baseline.append(float(np.mean(vals)) if vals else None)
    missing += [n for n, _ in base_cells if not finished(bench_dir, n)]
    per_seed: dict[str, dict[int, float]] = {}
    for name, _ in scheme_cells:
        m = _seed_metrics(bench_dir, name, tasks)
        if m is None:
            missing.append(name)
            continue
        if any(b is None for b in baseline):
            continue
        per_seed[name.split("__", 1)[1]] = {s: mtl_metrics.delta_m(v, baseline, hib) for s, v in m.items()}
    entries = ranked_entries(per_seed)
    cells = [cell_record(bench_dir, n) for n, _ in base_cells + scheme_cells if (bench_dir / "cells" / n).exists()]
    failed = [c["cell"] for c in cells if c.get("error") and c["cell"] in missing]
    result = {
        "description": benchmark.description,
        "protocol": protocol_summary(config, seeds),
        "tasks": [{"name": t.name, "metric": t.main_metric.name, "higher_is_better": h} for t, h in zip(tasks, hib)],
        "baseline": benchmark.baseline,
        "entries": entries,
        "missing": missing,
        "failed": failed,
        "cells": cells,
    }
    result["summary"] = summarize(benchmark.name, result)
    return result


def ranked_entries(per_seed: Mapping[str, Mapping[int, float]]) -> dict[str, dict]:
    """Every scheme's :func:`entry` from its per-seed Δm% (``{scheme: {seed: value}}``), each with
    its rank among them (:func:`rank_with_ties`)."""
    entries = {method: entry(vals, per_seed.get(EQUAL)) for method, vals in per_seed.items()}
    ranks = rank_with_ties({m: tuple(e["ci"]) for m, e in entries.items()})
    for m, e in entries.items():
        e["rank"] = ranks[m]
    return entries


def entry(values: Mapping[int, float], equal: Mapping[int, float] | None) -> dict:
    """One scheme's board entry from its per-seed Δm% (``{seed: value}``) and equal weighting's:
    the seed mean with its main (Student-t) and percentile-bootstrap intervals, and the paired
    difference from equal weighting with both intervals."""
    mean, lo, hi = t_interval(list(values.values()))
    _, blo, bhi = bootstrap_ci(list(values.values()))
    e = {
        "delta_m": mean,
        "ci": [lo, hi],
        "ci_bootstrap": [blo, bhi],
        "sd": float(np.std(list(values.values()), ddof=1)),
        "seeds": sorted(values),
        "per_seed": {str(s): v for s, v in values.items()},
    }
    if equal is not None:
        dm, dlo, dhi, n = paired_difference(values, equal)
        _, dblo, dbhi, _ = paired_difference(values, equal, interval=bootstrap_ci)
        e.update(
            vs_equal=dm,
            vs_equal_ci=[dlo, dhi],
            vs_equal_ci_bootstrap=[dblo, dbhi],
            vs_equal_seeds=n,
            vs_equal_verdict=verdict([dlo, dhi]),
        )
    return e


def verdict(ci: Sequence[float]) -> str:
    """``"better"`` (the paired interval of Δm%(scheme) − Δm%(equal) lies wholly below 0: lower
    Δm% is better), ``"worse"`` (wholly above 0) or ``"tie"`` (it contains 0: no difference from
    equal weighting beyond seed noise)."""
    return "better" if ci[1] < 0 else "worse" if ci[0] > 0 else "tie"


NO_WINNER = "no scheme beats equal weighting beyond noise"


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}{'' if k == 1 else 's'}"


def _are(k: int) -> str:
    return "is" if k == 1 else "are"


def _names(methods: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(f"`{m}`" for m in methods[:limit])
    return shown + (f" and {len(methods) - limit} more" if len(methods) > limit else "")


def summarize(name: str, result: Mapping) -> dict:
    """What one benchmark's board shows, in plain words computed from its entries.

    Counts the schemes (equal weighting excluded) whose paired 95 % interval against equal weighting
    lies wholly below 0 (better), wholly above 0 (worse) or contains 0 (no difference beyond seed
    noise); names the best and worst seed means; compares the spread of the schemes' mean Δm% with
    the median width of one scheme's interval (a spread within one width is seed noise); and says
    how many separations chance alone would give (at 95 %, 2.5 % of schemes no different from equal
    fall wholly below 0 and 2.5 % wholly above). When no scheme is better, the text says exactly
    :data:`NO_WINNER`.

    Args:
      name: the benchmark's name (the sentences start with it).
      result: the benchmark's part of the board record (``entries``, ``missing``).

    Returns:
      ``{"better", "worse", "tie": [schemes], "best", "worst", "spread", "median_ci_width",
      "headline": one sentence, "text": [sentences]}``; only ``headline`` and ``text`` while equal
      weighting's cell is unfinished.
    """
    entries = result["entries"]
    missing = list(result.get("missing", []))
    todo = f"{_n(len(missing), 'cell')} {_are(len(missing))} missing, so this may change." if missing else ""
    if EQUAL not in entries:
        what = (
            "no finished cells yet" if not entries else "equal weighting's cell is not finished, so nothing is compared"
        )
        text = f"{name}: {what}."
        return {"headline": text, "text": [text] + ([todo] if todo else [])}
    others = {m: e for m, e in entries.items() if m != EQUAL}
    by = {
        v: sorted((m for m, e in others.items() if e["vs_equal_verdict"] == v), key=lambda m: others[m]["vs_equal"])
        for v in ("better", "worse", "tie")
    }
    nb, nw, nt, n = len(by["better"]), len(by["worse"]), len(by["tie"]), len(others)
    means = {m: e["delta_m"] for m, e in entries.items()}
    best, worst = min(means, key=means.get), max(means, key=means.get)
    spread = means[worst] - means[best]
    width = float(np.median([e["ci"][1] - e["ci"][0] for e in entries.values()]))
    if nb:
        head = (
            f"{name}: {nb} of {_n(n, 'scheme')} beat{'s' if nb == 1 else ''} equal weighting beyond noise "
            f"({_names(by['better'])}); {nw} {_are(nw)} worse and {nt} {_are(nt)} no different."
        )
    elif n:
        head = (
            f"{name}: {NO_WINNER}; {nw} of {_n(n, 'scheme')} {_are(nw)} worse than it and {nt} {_are(nt)} no different."
        )
    else:
        head = f"{name}: only equal weighting has finished, so {NO_WINNER} yet."
    e_best, e_worst = entries[best], entries[worst]
    text = [head]
    if n:
        text.append(
            f"Paired 95 % intervals of Δm%(scheme) − Δm%(equal): {nb} wholly below 0 (better)"
            + (f": {_names(by['better'])}" if nb else "")
            + f"; {nw} wholly above 0 (worse)"
            + (f": {_names(by['worse'])}" if nw else "")
            + f"; {nt} contain 0 (no difference beyond seed noise)."
        )
        text.append(
            f"Lowest mean Δm%: `{best}` {_f(e_best['delta_m'])} {_ci(e_best['ci'])}; "
            f"highest: `{worst}` {_f(e_worst['delta_m'])} {_ci(e_worst['ci'])}."
        )
        if width > 0:
            text.append(
                f"The schemes' mean Δm% span {spread:.2f} points, {spread / width:.1f}× the median width of one "
                f"scheme's 95 % interval ({width:.2f})"
                + (
                    ": the means differ by less than one scheme's seed-to-seed uncertainty (the paired intervals "
                    "above remove the part the seeds share)."
                    if spread <= width
                    else "."
                )
            )
        else:
            text.append(f"The schemes' mean Δm% span {spread:.2f} points (every interval has zero width).")
    if n >= 2:
        text.append(
            f"Chance alone: with {n} schemes compared at 95 %, about {0.025 * n:.2g} would fall wholly below 0 "
            f"and {0.025 * n:.2g} wholly above even if none differed from equal weighting."
        )
    if todo:
        text.append(todo)
    return {
        **by,
        "best": best,
        "worst": worst,
        "spread": spread,
        "median_ci_width": width,
        "headline": head,
        "text": text,
    }


def overall_summary(record: Mapping) -> str:
    """One sentence over every benchmark on the board: which schemes beat equal weighting beyond
    noise where, or :data:`NO_WINNER` on any benchmark."""
    done = {b: r["summary"] for b, r in record["benchmarks"].items() if "better" in r.get("summary", {})}
    if not done:
        return "No benchmark has equal weighting and another scheme finished yet."
    wins: dict[str, list[str]] = {}
    for b, s in done.items():
        for m in s["better"]:
            wins.setdefault(m, []).append(b)
    if not wins:
        where = {1: "the one benchmark", 2: "both benchmarks"}.get(len(done), f"all {len(done)} benchmarks")
        return f"On {where} on the board, {NO_WINNER}."
    every = [m for m, bs in wins.items() if len(bs) == len(done)]
    # Schemes that win on the same benchmarks share one clause (most benchmarks first).
    groups: dict[tuple[str, ...], list[str]] = {}
    for m, bs in wins.items():
        groups.setdefault(tuple(bs), []).append(m)
    parts = "; ".join(
        f"{', '.join(f'`{m}`' for m in ms)} on {', '.join(bs)}"
        for bs, ms in sorted(groups.items(), key=lambda kv: -len(kv[0]))
    )
    if len(done) == 1:
        tail = ""
    elif every:
        tail = f" Only {_names(every)} beat{'s' if len(every) == 1 else ''} it on every benchmark."
    else:
        tail = " No scheme beats it on every benchmark."
    return f"Schemes that beat equal weighting beyond noise ({_n(len(done), 'benchmark')} on the board): {parts}.{tail}"


def protocol_summary(config, seeds: int) -> dict:
    budget = f"{config.num_steps} steps" if config.num_steps > 0 else f"{config.num_epochs} epoch(s)"
    return {
        "budget": budget,
        "batch_size": int(config.batch_size),
        "optimizer": str(config.optimizer.name),
        "learning_rate": float(config.optimizer.learning_rate),
        "eval_every_steps": int(config.eval_every_steps),
        "seeds": list(range(int(config.seed), int(config.seed) + seeds)),
        "selection": "each seed's best evaluation on the validation split (the train loop's rule); test read there",
        "fingerprint": fingerprint(protocol_key(config)),
    }


# ----------------------------------------------------------------------------- plan


def plan(
    workdir: Path,
    benchmarks: Sequence[Benchmark],
    methods: Sequence[str],
    seeds: int,
    pilot_steps: int = 6,
    measure: Callable[[Benchmark, str, int], dict] | None = None,
) -> dict:
    """Cells × measured seconds per cell, per benchmark: for each requirement class among
    ``methods`` (losses / gramian / jacobian / bilevel), a pilot cell of its first scheme trains
    ``pilot_steps`` steps (with every seed, in ``WORKDIR/pilot``) and its seconds per step (the
    second half, compilation excluded) and fixed cost (compilation, data, evaluation) are scaled to
    the benchmark's budget. Finished cells count their recorded cost instead, and a class with
    finished cells in the benchmark is estimated by their median cost (no pilot)."""
    measure = measure or (lambda b, m, s: _pilot(workdir, b, m, s, pilot_steps))
    out = {"benchmarks": {}, "pilot_steps": pilot_steps}
    total_todo = total_done = 0.0
    for b in benchmarks:
        bench_dir = workdir / b.name
        base_cells, scheme_cells = cells_of(b, methods, seeds)
        check_protocols(bench_dir, base_cells + scheme_cells)
        config = b.config()
        steps = _budget_steps(config)
        costs, rows = {}, []
        classes = {}
        for name, _ in base_cells + scheme_cells:
            method = EQUAL if name.startswith((ablation.SINGLE, "baseline")) else name.split("__", 1)[1]
            classes[name] = weighting.get(method.removesuffix(ablation.REP)).requires
        # A class with finished cells here is measured by them (their median CPU seconds): no pilot.
        done_cost: dict = {}
        for name, _ in base_cells + scheme_cells:
            if finished(bench_dir, name) and "cpu_s" in (rec := cell_record(bench_dir, name)):
                done_cost.setdefault(classes[name], []).append(rec["cpu_s"])
        for name, c in base_cells + scheme_cells:
            cls = classes[name]
            if finished(bench_dir, name):
                rec = cell_record(bench_dir, name)
                rows.append(
                    {
                        "cell": name,
                        "class": str(cls),
                        "seconds": rec.get("cpu_s", rec.get("train_wall_s", 0.0)),
                        "done": True,
                    }
                )
                total_done += rows[-1]["seconds"] or 0.0
                continue
            if cls not in costs and cls in done_cost:
                costs[cls] = {"method": "finished cells", "cell_s": float(np.median(done_cost[cls]))}
            elif cls not in costs:
                first = next(
                    m
                    for n, m in ((n, n.split("__", 1)[1]) for n, _ in scheme_cells)
                    if weighting.get(m.removesuffix(ablation.REP)).requires == cls
                )
                costs[cls] = measure(b, first, seeds)
            p = costs[cls]
            est = p["cell_s"] if "cell_s" in p else p["fixed_s"] + p["s_per_step"] * steps
            rows.append({"cell": name, "class": str(cls), "seconds": est, "done": False})
            total_todo += est
        out["benchmarks"][b.name] = {
            "budget_steps": steps,
            "pilots": {str(k): v for k, v in costs.items()},
            "cells": rows,
            "todo_s": sum(r["seconds"] for r in rows if not r["done"]),
            "done_s": sum(r["seconds"] or 0.0 for r in rows if r["done"]),
        }
    out["todo_cpu_hours"] = total_todo / 3600.0
    out["done_cpu_hours"] = total_done / 3600.0
    return out


def _budget_steps(config) -> int:
    """A benchmark's budget in steps (its protocol fixes ``num_steps``: the same for every scheme)."""
    if config.num_steps <= 0:
        raise ValueError(
            f"a leaderboard benchmark fixes its budget in steps; {config.dataset.name}'s config has num_steps="
            f"{config.num_steps}. Fix: set num_steps in the benchmark's config factory"
        )
    return int(config.num_steps)


def _pilot(workdir: Path, b: Benchmark, method: str, seeds: int, pilot_steps: int) -> dict:
    """Trains ``method`` on ``b`` for ``pilot_steps`` steps with ``seeds`` seeds; returns its
    seconds per step (second half of the steps: compilation excluded), fixed seconds and CPU seconds."""
    _, scheme_cells = cells_of(b, [method], seeds)
    name, c = next((n, c) for n, c in scheme_cells if n.endswith("__" + method))
    c.num_steps, c.eval_every_steps = pilot_steps, max(1, pilot_steps // 2)
    run_dir = workdir / "pilot" / b.name / name
    summary_path = run_dir / "summary.json"
    cpu0, wall0 = _cpu_s(), time.perf_counter()
    if not summary_path.exists():
        ablation.train(c, str(run_dir))
    cpu, wall = _cpu_s() - cpu0, time.perf_counter() - wall0
    s = json.loads(summary_path.read_text())
    intervals = s.get("train_time_per_eval_s") or [s["wall_time_s"]]
    per_step = intervals[-1] / max(1, pilot_steps - pilot_steps // 2)
    # CPU seconds scale like wall seconds on this machine (the ratio measured on the pilot itself).
    ratio = (cpu / wall) if wall > 0 and cpu > 0 else 1.0
    fixed = max(0.0, s["wall_time_s"] - per_step * pilot_steps)
    return {"method": method, "s_per_step": per_step * ratio, "fixed_s": fixed * ratio, "cpu_per_wall": ratio}


# ----------------------------------------------------------------------------- run


def run(
    workdir: str | Path,
    benchmark_names: Sequence[str],
    methods: Sequence[str],
    seeds: int,
    *,
    registry: Mapping[str, Benchmark] | None = None,
    report_only: bool = False,
    deadline: float | None = None,
    on_cell_start: Callable[[Path], object] | None = None,
    archive_dir: str | Path | None = None,
) -> dict:
    """Trains every unfinished cell (benchmarks in the given order, cells in ``methods`` order,
    baselines first), then returns the board's record. Everything checkable is checked before the
    first cell trains. ``deadline`` (a ``time.time()``): start no cell after it. ``on_cell_start``:
    see :func:`train_cell`. ``archive_dir``: cells archived there are restored into ``workdir`` first
    (:func:`restore`) and every finished cell is archived there after each cell and at the end
    (:func:`archive`), so the board survives the loss of ``workdir``."""
    registry = BENCHMARKS if registry is None else registry
    workdir = Path(workdir)
    check_options(seeds)
    benchmarks = [registry[n] for n in parse_benchmarks(list(benchmark_names), registry)]
    methods = parse_methods(",".join(methods))
    if archive_dir is not None:
        back = restore(archive_dir, workdir, [b.name for b in benchmarks])
        if back:
            print(f"restored {len(back)} finished cells from {archive_dir}")
    todo = []
    for b in benchmarks:  # every benchmark's cells and protocols checked before any trains
        base, schemes = cells_of(b, methods, seeds)
        check_protocols(workdir / b.name, base + schemes)
        todo.append((b, base + schemes))
    if not report_only:
        for b, cells in todo:
            bench_dir = workdir / b.name
            with ablation.grid_lock(bench_dir):
                for name, c in cells:
                    if deadline is not None and time.time() > deadline and not finished(bench_dir, name):
                        break
                    train_cell(bench_dir, name, c, on_cell_start)
                    if archive_dir is not None:
                        archive(workdir, archive_dir, [b.name], cells=[name])
    if archive_dir is not None:
        archive(workdir, archive_dir, [b.name for b in benchmarks])
    record = board(workdir, benchmarks, methods, seeds)
    record["not_on_board"] = {n: registry[n].description for n in registry if n not in record["benchmarks"]}
    return record


def check_options(seeds: int) -> None:
    if seeds < 2:
        raise ValueError(f"--seeds must be >= 2 for a bootstrap interval over seeds (5 or more advised), got {seeds}")


def board(workdir: Path, benchmarks: Sequence[Benchmark], methods: Sequence[str], seeds: int) -> dict:
    results = {b.name: benchmark_results(workdir / b.name, b, methods, seeds) for b in benchmarks}
    cpu = sum(c.get("cpu_s", 0.0) for r in results.values() for c in r["cells"])
    wall = sum(c.get("wall_s", 0.0) for r in results.values() for c in r["cells"])
    return {
        "methods": list(methods),
        "seeds": seeds,
        "confidence": CONFIDENCE,
        "interval": "student_t",
        "interval_rule": INTERVAL_RULE,
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "tie_rule": TIE_RULE,
        "benchmarks": results,
        "cpu_hours": cpu / 3600.0,
        "wall_hours": wall / 3600.0,
        "overall": overall_summary({"benchmarks": results}),
    }


def carry_over(record: dict, previous: Mapping) -> list[str]:
    """Keeps, in ``record``, each benchmark of ``previous`` (the board this one replaces) that ``record``
    does not hold: its section as rendered there (entries, intervals, cells and their provenance),
    marked ``carried_over`` with the commit and date of that render, never re-ranked against new cells
    (a benchmark is either wholly read from cells or wholly carried). Then recomputes the totals and
    the overall sentence. Returns the benchmarks carried."""
    prov = previous.get("provenance", {})
    carried = []
    for name, section in previous.get("benchmarks", {}).items():
        if name in record["benchmarks"]:
            continue
        section = dict(section)
        section.setdefault(
            "carried_over",
            {"git_commit": prov.get("git_commit"), "date": prov.get("date"), "command": prov.get("command")},
        )
        record["benchmarks"][name] = section
        carried.append(name)
    if carried:  # the replaced board's order first, then the benchmarks new to this one
        order = [n for n in previous["benchmarks"] if n in record["benchmarks"]]
        order += [n for n in record["benchmarks"] if n not in order]
        record["benchmarks"] = {n: record["benchmarks"][n] for n in order}
        cells = [c for r in record["benchmarks"].values() for c in r["cells"]]
        record["cpu_hours"] = sum(c.get("cpu_s", 0.0) for c in cells) / 3600.0
        record["wall_hours"] = sum(c.get("wall_s", 0.0) for c in cells) / 3600.0
        record["overall"] = overall_summary(record)
        for name in carried:
            record.get("not_on_board", {}).pop(name, None)
    return carried


def board_cells(record: Mapping) -> list[str]:
    """The finished (benchmark/scheme) entries of a board record: what a rewrite must not lose."""
    return [f"{b}/{m}" for b, r in record["benchmarks"].items() for m in r["entries"]]


# ----------------------------------------------------------------------------- rendering


def _f(x: float, d: int = 2) -> str:
    return f"{x:+.{d}f}"


def _ci(ci: Sequence[float], d: int = 2) -> str:
    return f"[{_f(ci[0], d)}, {_f(ci[1], d)}]"


def _verdict_text(v: str) -> str:
    return {"better": "**better**", "worse": "**worse**", "tie": "tie"}[v]


def markdown(record: Mapping) -> list[str]:
    """The board as markdown lines (the provenance block is appended by the writer)."""
    lines = [
        "# Leaderboard: every weighting scheme under one protocol per benchmark",
        "",
        f"Δm% (lower is better) against the single-task references: the seed mean with its {int(record['confidence'] * 100)} % "
        "interval over seeds. *vs equal*: the paired difference Δm%(scheme, seed) − Δm%(equal, seed) over the same "
        "seeds, with its interval; *verdict*: **better** / **worse** when that interval lies wholly below / above 0, "
        "*tie* when it contains 0 (no difference from equal weighting beyond seed noise).",
        "",
        f"**Intervals.** {record['interval_rule']} The percentile bootstrap ({record['bootstrap_resamples']} "
        "resamples) is in the JSON file beside each interval (`ci_bootstrap`, `vs_equal_ci_bootstrap`).",
        "",
        f"**What the board shows.** {record['overall']}",
        "",
        f"**Tie rule.** {record['tie_rule']}",
        "",
        "**Protocol.** Per benchmark: the same budget, batch, optimizer and **one learning rate for all schemes** "
        "(the benchmark's, not tuned per scheme); model selection on the validation split only. Each cell's "
        "protocol fingerprint is listed under *Cells*; cells of different protocols are refused, never mixed.",
        "",
        f"Total CPU time of the cells on the board: {record['cpu_hours']:.2f} CPU hours "
        f"({record['wall_hours']:.2f} wall hours): the training process's user+system time while each cell trained "
        "(a run killed mid-cell does not add the part it ran; wall ≫ CPU on a shared, loaded machine).",
        "",
    ]
    if record.get("not_on_board"):
        lines += [
            "**Registered benchmarks not on this board** (not run yet; every cell of each is missing): "
            + "; ".join(f"`{n}` ({d})" for n, d in record["not_on_board"].items()),
            "",
        ]
    for name, r in record["benchmarks"].items():
        p = r["protocol"]
        co = r.get("carried_over")
        lines += [
            f"## {name}",
            "",
            r["description"],
            "",
            *(
                [
                    f"*Carried over unchanged from the board rendered at `{str(co.get('git_commit'))[:7]}` on "
                    f"{str(co.get('date'))[:10]}: this render did not read its cells.*",
                    "",
                ]
                if co
                else []
            ),
            f"- protocol `{p['fingerprint']}`: {p['budget']}, batch {p['batch_size']}, {p['optimizer']} lr "
            f"{p['learning_rate']:g} (all schemes), evaluation every {p['eval_every_steps']} steps (<= 0: each epoch), "
            f"seeds {p['seeds']}; selection: {p['selection']}",
            f"- Δm% over the tasks' main metrics: {', '.join(t['name'] + ' ' + t['metric'] for t in r['tasks'][:4])}"
            + (f", ... ({len(r['tasks'])} tasks)" if len(r["tasks"]) > 4 else "")
            + f"; baseline: {'single-task models' if r['baseline'] == 'single_task' else 'independent per-task models (no shared parameters)'}",
            "",
        ]
        entries = sorted(r["entries"].items(), key=lambda kv: (kv[1]["rank"], kv[1]["delta_m"]))
        if entries:
            lines += ["**What the board shows.** " + " ".join(r["summary"]["text"]), ""]
            lines += [
                "| rank | scheme | Δm% | 95 % t CI | 95 % bootstrap | vs equal (paired) | 95 % t CI | verdict | seeds |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for m, e in entries:
                vs = (
                    ("—", "—", "—")
                    if "vs_equal" not in e
                    else (_f(e["vs_equal"]), _ci(e["vs_equal_ci"]), _verdict_text(e["vs_equal_verdict"]))
                )
                lines.append(
                    f"| {e['rank']} | `{m}` | {_f(e['delta_m'])} | {_ci(e['ci'])} | {_ci(e['ci_bootstrap'])} "
                    f"| {vs[0]} | {vs[1]} | {vs[2]} | {len(e['seeds'])} |"
                )
        else:
            lines += ["No finished cells yet.", "", "**What the board shows.** " + " ".join(r["summary"]["text"])]
        failed = set(r.get("failed", []))
        if r["missing"]:
            not_run = [m for m in r["missing"] if m not in failed]
            lines += [
                "",
                f"**Missing cells ({len(r['missing'])})**: "
                + (f"not run yet or unfinished: {', '.join(f'`{m}`' for m in not_run)}" if not_run else "")
                + ("; " if not_run and failed else "")
                + (
                    f"ended in an error (retried, from scratch, on the next run): {', '.join(f'`{m}`' for m in r['missing'] if m in failed)}"
                    if failed
                    else ""
                ),
            ]
        lines += [
            "",
            "<details><summary>Cells (provenance per cell)</summary>",
            "",
            "| cell | fingerprint | commit | CPU s | steps |",
            "|---|---|---|---|---|",
        ]
        for c in r["cells"]:
            commit = (c.get("git_commit") or "unknown")[:10] + (" (dirty)" if c.get("git_dirty") else "")
            cpu = f"{c['cpu_s']:.0f}" if "cpu_s" in c else "—"
            lines.append(
                f"| `{c['cell']}` | `{c.get('fingerprint', '—')}` | {commit} | {cpu} | {c.get('steps', '—')} |"
                + (f" error: {c['error'][:120]}" if c.get("error") else "")
                + (
                    f" earlier failed attempt(s), retried from scratch: {len(c['failed_attempts'])}"
                    if c.get("failed_attempts")
                    else ""
                )
            )
        lines += ["", "</details>", ""]
    return lines


VERDICT_COLORS = {"better": "tab:green", "worse": "tab:red", "tie": "tab:blue"}


def plot(record: Mapping, path: Path) -> None:
    """One panel per benchmark: each scheme's Δm% with its main (Student-t) 95 % interval, coloured
    by its paired verdict against equal weighting (whose interval is shaded)."""
    plt = ablation.plt
    names = [n for n, r in record["benchmarks"].items() if r["entries"]]
    if not names:
        return
    fig, axes = plt.subplots(
        1,
        len(names),
        figsize=(5 * len(names), 0.3 * max(max(len(record["benchmarks"][n]["entries"]) for n in names), 4) + 1.5),
        squeeze=False,
    )
    for ax, name in zip(axes[0], names):
        entries = sorted(record["benchmarks"][name]["entries"].items(), key=lambda kv: kv[1]["delta_m"])
        y = np.arange(len(entries))
        for i, (m, e) in enumerate(entries):
            color = "black" if m == EQUAL else VERDICT_COLORS[e.get("vs_equal_verdict", "tie")]
            ax.errorbar(
                e["delta_m"],
                i,
                xerr=[[e["delta_m"] - e["ci"][0]], [e["ci"][1] - e["delta_m"]]],
                fmt="o",
                color=color,
                ms=4,
                capsize=2,
            )
        if EQUAL in dict(entries):
            eq = dict(entries)[EQUAL]
            ax.axvspan(eq["ci"][0], eq["ci"][1], color="grey", alpha=0.2, lw=0)
        ax.set_yticks(y, [m for m, _ in entries], fontsize=7)
        ax.set(
            title=name,
            xlabel="Δm% (lower is better), 95 % Student-t CI over seeds\n"
            "paired vs equal (black): green better, red worse, blue tie",
        )
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def use_xla_cache(setting: str, workdir: Path) -> None:
    """Turns on XLA's persistent compilation cache before the first cell compiles (the compiled programs
    are looked up by a hash of their HLO and compile options: the numbers do not change).

    Args:
      setting: ``'auto'`` (``<workdir>/xla_cache``), ``''`` (off) or a folder (``--xla_cache``).
      workdir: the board's folder of cells.

    A cache the user set in ``JAX_COMPILATION_CACHE_DIR`` wins.
    """
    if not setting or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    folder = workdir / "xla_cache" if setting == "auto" else Path(setting).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
