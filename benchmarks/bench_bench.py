"""``python -m avssl.bench --task synthetic``: first run vs the run that reads cached features.

    python benchmarks/bench_bench.py --quick     # a 14-class x 2-clip tree, 32 px, no workers
    python benchmarks/bench_bench.py             # the task's default data and settings

Runs :func:`avssl.bench.run.run_bench` twice in this process with the same arguments
(``leaderboard=None``: no row is written) under a fresh temporary ``$AVSSL_CACHE``, after one
untimed run without the feature cache (it pays the imports and, without ``--data-root`` /
``--quick``, writes the synthetic world's tree into the cache): the first timed run extracts
features, the second loads the cached ``.npz`` features and only fits the protocol.
Reports both wall times, their CPU times and the speed-up; both runs must give the same metric.
Prints a markdown table, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import cli, cpu_name, nonnegative_int  # benchmarks/common.py


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None, help="a UCF101-format tree (default: the task's "
                   "own synthetic tree; quick: a small one written here)")
    p.add_argument("--protocol", default="linear", help="bench protocol (default linear)")
    p.add_argument("--num-workers", type=nonnegative_int, default=None, help="DataLoader workers "
                   "(default 2, quick 0)")
    p.add_argument("--quick", action="store_true", help="14 classes x 2 clips at 32 px")
    args = p.parse_args(argv)
    if args.data_root and not Path(args.data_root).is_dir():
        p.error(f"--data-root {args.data_root} is not a folder; write one with "
                f"`python -m avssl.data.synthetic --layout ucf101 --out DIR`")

    tmp = tempfile.TemporaryDirectory(prefix="avssl-bench-cache-")
    os.environ["AVSSL_CACHE"] = tmp.name  # read by avssl.cache.cache_dir at every call
    from avssl.bench.run import BenchArgs, run_bench

    kw: dict = {"task": "synthetic", "protocol": args.protocol, "leaderboard": None,
                "data_root": args.data_root}
    if args.quick:
        from avssl.data.synthetic import WorldConfig, write_layout

        if not args.data_root:
            root = Path(tmp.name) / "ucf"
            t0 = time.perf_counter()
            write_layout("ucf101", root, clips_per_class=2, seed=3,
                         cfg=WorldConfig(size=32, duration_s=2.0), workers=2)
            print(f"wrote the quick tree in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            kw["data_root"] = str(root)
        kw.update(fps=4.0, size=32, crop=32, batch_size=8, views="1x1")
    kw["num_workers"] = args.num_workers if args.num_workers is not None else (0 if args.quick else 2)

    # untimed, without the cache: the process's first run_bench also pays lazy imports and
    # first-call set-up (about 0.4 s here), which would be charged to "first" and inflate the
    # speed-up the cache gives
    run_bench(BenchArgs(**kw, cache=False))
    runs = []
    for label in ("first", "cached"):
        w0, c0 = time.perf_counter(), time.process_time()
        out = run_bench(BenchArgs(**kw))
        runs.append({"run": label, "wall_s": round(time.perf_counter() - w0, 2),
                     "cpu_s": round(time.process_time() - c0, 2), "metric": out["metric"],
                     "value": round(float(out["value"]), 4)})
        print(runs[-1], file=sys.stderr, flush=True)
    cached_files = len(list(Path(tmp.name, "features").rglob("*.npz")))
    tmp.cleanup()
    speedup = runs[0]["wall_s"] / max(runs[1]["wall_s"], 1e-6)
    print("| run | wall (s) | main-process CPU (s) | metric |\n|---|---:|---:|---|")
    for r in runs:
        print(f"| {r['run']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['metric']} = {r['value']} |")
    print(json.dumps({"bench": "bench_cache", "date": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "hardware": cpu_name(), "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2), "quick": args.quick,
        "protocol": args.protocol, "cached_feature_files": cached_files,
        "speedup": round(speedup, 2), "same_metric": runs[0]["value"] == runs[1]["value"],
        "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
