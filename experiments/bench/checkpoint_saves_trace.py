"""What grows per checkpoint save: Python objects, threads, the C heap, or only RSS.

One fresh interpreter saves with ``Checkpointer.save`` (the state and meta of
``checkpoint_saves_rss``: a packed state of 12 arrays, a ~30 KB meta JSON, ``max_to_keep=2``): 50
warm-up saves, then ``--blocks`` blocks of ``--block`` saves. At each block boundary, after a full
``gc.collect()``, it records:

- Python objects: ``len(gc.get_objects())`` (by type: the types whose count grew), and pymalloc's
  live blocks ``sys.getallocatedblocks()`` (every small Python object, tracked by gc or not);
- threads (``threading.active_count()``) and the process's OS threads (``/proc/self/status``);
- glibc's heap in use (``mallinfo2().uordblks``, all arenas: native allocations and Python objects over
  512 bytes) and its arena count;
- RSS (``VmRSS``; ``Checkpointer.save`` already trims the heap after each save).

Then windows of ``--traced`` saves each run under a fresh ``tracemalloc`` (25 frames): the traced bytes
still held at a window's end, and the snapshot diff's largest entries with their innermost frames. Growth is reported per save, per block, so warm-up (caches that
fill once) is told from a steady slope. Without the full collections, CPython collects its oldest
generation only when the objects promoted since the last full collection exceed a quarter of those in
it (a sawtooth, not a leak); ``--no-collect`` records the count of full collections instead.

    python -m experiments.bench.checkpoint_saves_trace [--blocks 4] [--block 150] [--traced 25,100]

Writes results/bench/checkpoint_saves_trace.json and .md. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import collections
import gc
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np

from experiments.bench.common import RESULTS, provenance, write_outputs
from experiments.bench.process_stats import heap_in_use_kib, rss_kib, status_field


def _sample(collect: bool) -> dict:
    from jmtl.runs import checkpoint

    if collect:
        gc.collect()
    objs = collections.Counter(type(o).__name__ for o in gc.get_objects())
    return {
        "rss_kib": rss_kib(),
        "heap_in_use_kib": round(heap_in_use_kib(), 1),
        "pymalloc_blocks": sys.getallocatedblocks(),
        "gc_objects": sum(objs.values()),
        "by_type": objs,
        "threads": threading.active_count(),
        "os_threads": status_field("Threads"),
        "malloc_arenas": checkpoint.malloc_arena_count(),
        "full_collections": gc.get_stats()[2]["collections"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--block", type=int, default=150, help="saves per block")
    parser.add_argument(
        "--traced",
        default="25,100",
        help="comma-separated saves of the tracemalloc'd windows after the blocks ('': none)",
    )
    parser.add_argument("--no-collect", dest="collect", action="store_false", help="no gc.collect() at boundaries")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--name", default="checkpoint_saves_trace")
    args = parser.parse_args(argv)
    args.traced = [int(n) for n in args.traced.split(",") if n.strip()]
    # Before ``provenance`` runs jax (its backend's threads take glibc's arenas): as a program that
    # imports jmtl first, the arena cap comes in time.
    from jmtl.runs import checkpoint

    prov = provenance()
    directory = Path(tempfile.mkdtemp(prefix="jmtl_ckpt_trace_"))
    blocks, top = [], []
    try:
        ck = checkpoint.Checkpointer(directory / "ck")
        state = {
            "params": {f"w{i}": np.full((100, 50), i, np.float32) for i in range(10)},
            "step": np.zeros((), np.int32),
            "rng": np.zeros((2,), np.uint32),
        }
        meta = {"config": {f"k{j}": {"a": list(range(20)), "s": "x" * 30} for j in range(300)}}
        step = 0
        for _ in range(50):
            ck.save(step, state, {**meta, "i": step})
            step += 1
        gc.collect()  # what the warm-up left is not counted
        prev = _sample(args.collect)
        if not args.collect:  # unreachable objects go to gc.garbage instead of being freed: counted below
            gc.set_debug(gc.DEBUG_SAVEALL)
        for b in range(args.blocks):
            t0 = time.perf_counter()
            for _ in range(args.block):
                ck.save(step, state, {**meta, "i": step})
                step += 1
            seconds = time.perf_counter() - t0
            cur = _sample(args.collect)
            grew = cur["by_type"].copy()
            grew.subtract(prev["by_type"])
            n = args.block
            blocks.append(
                {
                    "block": b + 1,
                    "saves": f"{step - n}..{step - 1}",
                    "s_per_save": round(seconds / n, 4),
                    **{
                        f"{k}_per_save": round((cur[k] - prev[k]) / n, 3)
                        for k in ("rss_kib", "heap_in_use_kib", "pymalloc_blocks", "gc_objects")
                    },
                    "types_grown": {k: v for k, v in grew.most_common(5) if v > 0},
                    **{k: cur[k] for k in ("threads", "os_threads", "malloc_arenas", "full_collections", "rss_kib")},
                }
            )
            print(blocks[-1], flush=True)
            prev = cur
        full = None
        if not args.collect:
            before = sys.getallocatedblocks()
            gc.collect()
            gc.set_debug(0)
            full = {
                "pymalloc_blocks_freed_per_save": round(
                    (before - sys.getallocatedblocks()) / (args.blocks * args.block), 2
                ),
                "cyclic_garbage_objects": len(gc.garbage),
                "cyclic_garbage_types": dict(
                    collections.Counter(type(o).__qualname__ for o in gc.garbage).most_common(6)
                ),
            }
            gc.garbage.clear()
            print(full, flush=True)
        windows = []
        for n in args.traced:  # each window traced afresh: a total that stays as the window grows is a one-off
            tracemalloc.start(25)
            gc.collect()
            s0 = tracemalloc.take_snapshot()
            for _ in range(n):
                ck.save(step, state, {**meta, "i": step})
                step += 1
            gc.collect()
            s1 = tracemalloc.take_snapshot()
            tracemalloc.stop()
            keep = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
            stats = s1.filter_traces(keep).compare_to(s0.filter_traces(keep), "traceback")
            total = sum(s.size_diff for s in stats)
            top = [
                {
                    "bytes_per_save": round(s.size_diff / n, 1),
                    "blocks_per_save": round(s.count_diff / n, 2),
                    "frames": [f"{Path(f.filename).name}:{f.lineno}" for f in list(s.traceback)[::-1][:5]],
                }
                for s in stats[:6]
            ]
            windows.append({"saves": n, "bytes_kept": total, "bytes_per_save": round(total / n, 1), "top": top})
            print({k: v for k, v in windows[-1].items() if k != "top"}, flush=True)
        ck.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    end = provenance()
    prov.update(date=end["date"], load_average_end=end["load_average_end"])
    lines = [
        "# What grows per checkpoint save (`Checkpointer.save` alone)",
        "",
        f"`{prov['command']}`: 50 warm-up saves, then {args.blocks} blocks of {args.block} saves "
        f"({'a full `gc.collect()` before each reading' if args.collect else 'no forced collection'}); "
        "growth per save within each block. pymalloc blocks: every small Python object (gc-tracked or not); "
        "heap in use: glibc `mallinfo2().uordblks` (native and large Python allocations).",
        "",
        "| block | saves | s / save | RSS KiB / save | heap in use KiB / save | pymalloc blocks / save | "
        "gc objects / save | types grown | threads (Python, OS) | arenas | full collections |",
        "|---:|---|---:|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in blocks:
        lines.append(
            f"| {r['block']} | {r['saves']} | {r['s_per_save']:.3f} | {r['rss_kib_per_save']:+.3f} | "
            f"{r['heap_in_use_kib_per_save']:+.3f} | {r['pymalloc_blocks_per_save']:+.3f} | "
            f"{r['gc_objects_per_save']:+.3f} | {', '.join(f'{k} +{v}' for k, v in r['types_grown'].items()) or '-'} | "
            f"{r['threads']}, {r['os_threads']} | {r['malloc_arenas']} | {r['full_collections']} |"
        )
    if full is not None:
        lines += [
            "",
            f"At the end, one full `gc.collect()` freed {full['pymalloc_blocks_freed_per_save']:+.2f} pymalloc blocks "
            f"per save of the blocks; unreachable objects in reference cycles over all the blocks "
            f"(`gc.DEBUG_SAVEALL`): {full['cyclic_garbage_objects']} ({full['cyclic_garbage_types'] or 'none'}).",
        ]
    if windows:
        longest = max(windows, key=lambda w: w["saves"])
        lines += [
            "",
            "tracemalloc (25 frames), each window started afresh after the blocks: traced bytes still held at its "
            "end. A total that stays the same as the window grows is a one-off (caches and free lists refilled "
            "under tracing), not growth per save.",
            "",
            "| window (saves) | traced bytes kept | per save |",
            "|---:|---:|---:|",
        ]
        lines += [f"| {w['saves']} | {w['bytes_kept']:+d} | {w['bytes_per_save']:+.1f} |" for w in windows]
        lines += [
            "",
            f"The largest entries of the {longest['saves']}-save window (innermost frames first):",
            "",
            "| bytes / save | blocks / save | where |",
            "|---:|---:|---|",
        ]
        lines += [
            f"| {t['bytes_per_save']:+.1f} | {t['blocks_per_save']:+.2f} | {' < '.join(t['frames'])} |"
            for t in longest["top"]
        ]
    write_outputs(
        Path(args.out) / args.name,
        {"blocks": blocks, "traced": windows, "collect": args.collect, "full_collection_at_end": full},
        lines,
        prov,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
