r"""Batch preparation of the file-backed vision datasets at full size: can the input pipeline feed a GPU?

NYUv2 at 288x384 (generated data in the exact format, ``jmtl.data.fake_vision``), read per example from
``.npy`` files (memory-mapped), with and without LibMTL's scale-crop/flip augmentation:

* ``plain`` / ``augment``: one batch prepared on the calling thread (``prefetch=0``), rows timed in
  interleaved rounds (``time_round_robin``);
* ``augment, threaded``: the iterator as training uses it (``read_threads`` batches prepared in
  parallel, prefetched), seconds per batch over ``--stream`` consecutive batches.

    python -m experiments.bench.vision_data [--batch 8] [--n 32] [--repeats 10] [--stream 24]

Writes ``results/bench/vision_data.{json,md}`` (``--out`` to change). The comparison point is the
train step: a SegNet step at batch 8 on a GPU takes tens of ms (``results/gpu/`` when measured), so
a batch must be ready in less than that.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from experiments.bench.common import RESULTS, spread, time_round_robin, write_outputs
from jmtl import data as data_lib
from jmtl.data import fake_vision


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n", type=int, default=32, help="generated training examples")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--stream", type=int, default=24, help="batches timed from the threaded iterator")
    p.add_argument("--out", default=str(RESULTS / "vision_data"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fake_vision.write_nyuv2(Path(tmp), n=args.n, n_val=1)
        cache = Path(tmp) / "cache"
        plain = data_lib.load("nyuv2", data_dir=tmp, cache_dir=cache)
        aug = data_lib.load("nyuv2", data_dir=tmp, cache_dir=cache, augment=True)
        its = {
            "plain": plain.train_iterator(args.batch, 0, prefetch=0),
            "augment": aug.train_iterator(args.batch, 0, prefetch=0),
        }
        samples = time_round_robin({k: (lambda it=it: next(it)) for k, it in its.items()}, args.repeats, warmup=1)
        threaded = aug.train_iterator(args.batch, 0)
        for _ in range(2):
            next(threaded)
        t0 = time.perf_counter()
        for _ in range(args.stream):
            next(threaded)
        stream_s = (time.perf_counter() - t0) / args.stream
    rows = {k: spread(v) for k, v in samples.items()}
    rows["augment, threaded"] = {"median_ms": stream_s * 1e3}
    result = {
        "batch": args.batch,
        "n": args.n,
        "repeats": args.repeats,
        "stream": args.stream,
        "read_threads": aug.read_threads,
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    lines = [
        f"# NYUv2 batch preparation (288x384, batch {args.batch}, files memory-mapped)",
        "",
        f"{args.repeats} interleaved rounds; threaded: {aug.read_threads} read threads, "
        f"{args.stream} consecutive batches.",
        "",
        "| pipeline | ms per batch (median) | ms per example |",
        "|---|---|---|",
    ]
    for k, r in rows.items():
        lines.append(f"| {k} | {r['median_ms']:.1f} | {r['median_ms'] / args.batch:.2f} |")
    write_outputs(args.out, result, lines)
    return result


if __name__ == "__main__":
    main()
