"""Decoding throughput: clips/s for 16-frame 112x112 training clips, raw decode vs full pipeline.

    python benchmarks/bench_decoding.py            # full run (numbers in benchmarks/README.md)
    python benchmarks/bench_decoding.py --quick    # a short smoke run
    python benchmarks/bench_decoding.py --data DIR # your own videos instead of generated ones
    python benchmarks/bench_decoding.py --source 1080p --workers 1 2  # 16x224^2 from 1080p
    python benchmarks/bench_decoding.py --decoder-threads 1 0 --workers 0 1 2 --modes raw

Without ``--data`` it writes 8 videos of 10 s, 320x240, 25 fps (H.264 + AAC, ``write_av``'s
defaults) into a temporary folder and crops 112^2; ``--source 1080p`` writes 4 videos of 4 s at
1920x1080 instead and crops 224^2 (``--size`` overrides the crop). For every backend (decord, PyAV) and DataLoader worker count
(1, 2; 0 decodes in this process) and ``--decoder-threads`` value it measures, on the same random
16-frame windows at native fps:

* ``raw``:  ``decode_video`` only (uint8 ``(16, 3, 240, 320)``), batches of 8 left as lists;
* ``full``: the training path users run: ``ClipDataset`` (train mode, no audio) + ``VideoPipeline``
  (random resized crop 112, flip, normalise) + default collate -> float ``(8, 16, 3, 112, 112)``.

``--decoder-threads N ...`` sets ``decoding.set_decoder_threads`` in the decoding processes (0:
FFmpeg's automatic count; not given: the library default); ``--modes raw`` skips the pipeline.
It prints a table and one JSON line. Target: ``full`` keeps >= 80% of raw decord throughput.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from avssl.data import decoding
from avssl.data.clips import random_window
from avssl.data.datasets.base import ClipDataset, VideoRecord, clip_span
from avssl.data.manifest import find_videos
from avssl.data.transforms import VideoPipeline
from common import cli, nonnegative_int, positive_int  # benchmarks/common.py

CLIP_FRAMES = 16
BATCH = 8
SEED = 0


def make_videos(folder: Path, n: int, seconds: float, fps: int = 25, h: int = 240, w: int = 320) -> list[Path]:
    """``n`` videos of panning smooth texture + a moving square + a tone (cheap to generate)."""
    paths = []
    t_frames = int(seconds * fps)
    for i in range(n):
        rng = np.random.default_rng(i)
        small = torch.from_numpy(rng.random((1, 3, h // 8, 2 * w // 8), dtype=np.float32))
        texture = torch.nn.functional.interpolate(small, size=(h, 2 * w), mode="bilinear")[0]
        texture = (texture * 200 + 28).to(torch.uint8)  # (3, h, 2w)
        frames = torch.empty(t_frames, 3, h, w, dtype=torch.uint8)
        for k in range(t_frames):
            x0 = (k * 2) % w  # pan right 2 px/frame
            frames[k] = texture[:, :, x0 : x0 + w]
            y, x = int((h - 40) * (0.5 + 0.5 * math.sin(k / 9 + i))), (k * 5) % (w - 40)
            frames[k, :, y : y + 40, x : x + 40] = 255
        sr = 16000
        t = torch.arange(int(seconds * sr)) / sr
        audio = (0.2 * torch.sin(2 * math.pi * (220 + 40 * i) * t)).unsqueeze(0)
        path = folder / f"bench_{i:02d}.mp4"
        decoding.write_av(path, frames, fps, audio, sr)
        paths.append(path)
    return paths


class RawClips(Dataset):
    """decode_video only, on the same windows ClipDataset draws for (seed, epoch 0, index)."""

    def __init__(self, records: list[VideoRecord], clip_s: float, fps: float, backend: str):
        self.records, self.clip_s, self.fps, self.backend = records, clip_s, fps, backend

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor:
        rec = self.records[index]
        rng = np.random.default_rng([SEED, 0, index, 0])
        span, origin = clip_span(rec.extra["duration_s"], rec.extra, needs_sound=False)
        start, end = random_window(span, self.clip_s, rng)
        return decoding.decode_video(rec.path, origin + start, origin + end, fps=self.fps,
                                     backend=self.backend)


def records_of(paths: list[Path], infos: list) -> list[VideoRecord]:
    """One record per video with everything ``ClipDataset`` would otherwise probe the file for
    (in every worker, inside the timed batches once a folder has more videos than the warm-up
    reads), as a manifest gives it in training."""
    return [VideoRecord(str(p), p.stem, extra={"duration_s": i.duration_s, "fps": i.fps,
                                                "has_audio": i.has_audio, "start_s": i.start_s,
                                                "audio_end_s": i.audio_end_s})
            for p, i in zip(paths, infos)]


def _as_list(batch: list) -> list:
    return batch


def measure(loader: DataLoader, warmup: int, timed: int) -> tuple[float, float]:
    """``(clips/s, CPU ms/clip)`` over one finite pass of ``loader``.

    clips/s is wall-clock over batches ``warmup .. warmup + timed``; the pass holds more batches
    after them, so the workers' prefetch queues are as full when the timing stops as when it
    starts (a pass that ended with the timing would count queued batches for free). CPU ms/clip
    is the CPU time of the workers (all their threads; reaped when the pass ends) plus this
    process, over every clip of the pass: unlike wall-clock time it barely moves when other
    programs load the machine.
    """
    cpu0 = _cpu_s()
    n, t0, t1 = 0, 0.0, 0.0
    for i, batch in enumerate(loader):
        if i == warmup:
            t0 = time.perf_counter()
        if warmup < i <= warmup + timed:  # clips received after t0
            n += len(batch) if isinstance(batch, list) else batch["video"].shape[0]
            t1 = time.perf_counter()
    total = len(loader.dataset)  # the pass is over: the workers have exited
    return n / (t1 - t0), 1000.0 * (_cpu_s() - cpu0) / total


def _cpu_s() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# --source: (videos, seconds, height, width, crop size)
SOURCES = {"320x240": (8, 10.0, 240, 320, 112), "1080p": (4, 4.0, 1080, 1920, 224)}


def _worker_threads(threads: int | None, worker_id: int) -> None:
    decoding.set_decoder_threads(threads)


def build(mode: str, backend: str, workers: int, records: list[VideoRecord], clip_s: float,
          fps: float, size: int = 112, threads: int | None = None) -> DataLoader:
    """The loader of one measurement; ``threads``: decoder threads in the decoding processes
    (None: the library default), set in this process too (it decodes when ``workers`` is 0)."""
    decoding.set_decoder_threads(threads)
    init = functools.partial(_worker_threads, threads)  # a worker is its own process
    if mode == "raw":
        ds = RawClips(records, clip_s, fps, backend)
        return DataLoader(ds, batch_size=BATCH, num_workers=workers, collate_fn=_as_list,
                          worker_init_fn=init)
    ds = ClipDataset(
        records, mode="train", clip_s=clip_s, fps=fps, audio=False, backend=backend, seed=SEED,
        video_transform=VideoPipeline(mode="train", size=size), progress=False, name="bench",
    )
    return DataLoader(ds, batch_size=BATCH, num_workers=workers, worker_init_fn=init)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="folder of videos to read instead of generated ones")
    ap.add_argument("--quick", action="store_true", help="short run: 3 batches, 1 repeat")
    ap.add_argument("--batches", type=positive_int, help="timed batches per measurement (default 20, quick 3)")
    ap.add_argument("--repeats", type=positive_int, help="repeats per setting, median reported (default 3, quick 1)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="DataLoader worker counts to measure, e.g. --workers 0 1 2 4 (0: decode "
                         "in this process)")
    ap.add_argument("--decoder-threads", type=nonnegative_int, nargs="+", default=[None],
                    help="threads per decoder to measure, e.g. 1 2 0 (0: FFmpeg's automatic "
                         "count; default: the library default)")
    ap.add_argument("--modes", nargs="+", default=["raw", "full"], choices=["raw", "full"],
                    help="raw decode_video and/or the full pipeline (default both)")
    ap.add_argument("--source", choices=sorted(SOURCES), default="320x240",
                    help="generated videos: 8 x 10 s 320x240 (crop 112) or 4 x 4 s 1080p (crop 224)")
    ap.add_argument("--size", type=positive_int, default=None, help="crop size (default: the source's)")
    ap.add_argument("--backends", nargs="+", default=["decord", "pyav"], choices=["decord", "pyav"])
    args = ap.parse_args(argv)
    if min(args.workers) < 0:
        ap.error("--workers must all be >= 0")
    n_videos, seconds, height, width, default_size = SOURCES[args.source]
    size = args.size or default_size
    batches = args.batches or (3 if args.quick else 20)
    repeats = args.repeats or (1 if args.quick else 3)

    tmp = None
    if args.data:
        paths = [Path(args.data) / p for p in find_videos(args.data)]
    else:
        tmp = tempfile.TemporaryDirectory(prefix="avssl-bench-")
        t0 = time.perf_counter()
        paths = make_videos(Path(tmp.name), n=n_videos, seconds=seconds, h=height, w=width)
        print(f"generated {len(paths)} videos in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if not paths:
        print(f"error: no videos found under {args.data}", file=sys.stderr)
        return 2
    infos = [decoding.probe(p) for p in paths]
    # one frame rate for every clip (the most common one): a folder of mixed rates (UCF101 has
    # 25 and 29.97 fps) is resampled to it, as the recipes and the bench do, so clips batch
    fps = statistics.mode(i.fps for i in infos)
    clip_s = CLIP_FRAMES / fps
    base = records_of(paths, infos)

    results = []
    for backend in args.backends:
        for workers in args.workers:
            # One finite pass per measurement: warm-up batches (worker start-up), the timed ones,
            # then a queue's worth more (see measure). Each index draws its own window, so the
            # records just cycle over the videos.
            warmup, tail = 2 * workers, 2 * workers + 1
            items = (warmup + batches + 1 + tail) * BATCH
            records = [base[k % len(base)] for k in range(items)]
            runs: dict[tuple, list[tuple[float, float]]] = {
                (t, m): [] for t in args.decoder_threads for m in args.modes}
            for _ in range(repeats):  # alternate the settings so machine-load drift hits all
                for threads, mode in runs:
                    loader = build(mode, backend, workers, records, clip_s, fps, size, threads)
                    runs[threads, mode].append(measure(loader, warmup, batches))
            for (threads, mode), values in runs.items():
                results.append({
                    "backend": backend, "workers": workers, "decoder_threads": threads,
                    "mode": mode,
                    "clips_per_s": round(statistics.median(v[0] for v in values), 2),
                    "cpu_ms_per_clip": round(statistics.median(v[1] for v in values), 2),
                    "runs_clips_per_s": [round(v[0], 2) for v in values],
                })
    decoding.set_decoder_threads(None)

    def get(backend: str, workers: int, threads: int | None, mode: str, key: str) -> float | None:
        return next((r[key] for r in results if (r["backend"], r["workers"], r["decoder_threads"],
                                                  r["mode"]) == (backend, workers, threads, mode)),
                    None)

    def cell(x: float | None, width: int, fmt: str = ".1f") -> str:
        return f"{'-' if x is None else format(x, fmt):>{width}}"

    print(f"{'backend':8} {'workers':>7} {'threads':>7} {'raw clips/s':>11} {'full clips/s':>12} "
          f"{'full/raw':>8} {'full/raw decord':>15} {'raw CPU ms':>10} {'full CPU ms':>11} "
          f"{'CPU raw/full':>12}")
    ratios, cpu_ratios = {}, {}
    for backend in args.backends:
        for workers in args.workers:
            for threads in args.decoder_threads:
                raw, full = (get(backend, workers, threads, m, "clips_per_s")
                             for m in ("raw", "full"))
                craw, cfull = (get(backend, workers, threads, m, "cpu_ms_per_clip")
                               for m in ("raw", "full"))
                # against raw decord decoding; without a decord run there is no reference (null
                # in the JSON line: NaN is not JSON)
                ref = get("decord", workers, threads, "raw", "clips_per_s")
                key = f"{backend}/{workers}" + ("" if threads is None else f"/t{threads}")
                both = raw is not None and full is not None
                ratios[key] = None if ref is None or full is None else round(full / ref, 3)
                cpu_ratios[key] = round(craw / cfull, 3) if both else None
                label = "default" if threads is None else "auto" if threads == 0 else threads
                print(f"{backend:8} {workers:>7} {label:>7} {cell(raw, 11)} {cell(full, 12)} "
                      f"{cell(full / raw if both else None, 8, '.2f')} "
                      f"{cell(ratios[key], 15, '.2f')} {cell(craw, 10)} {cell(cfull, 11)} "
                      f"{cell(cpu_ratios[key], 12, '.2f')}")
    target = [v >= 0.8 for k, v in ratios.items() if k.startswith("decord/") and v is not None]
    summary = {
        "bench": "decoding", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]) if argv is None else f"main({argv!r})",
        "clip": f"{CLIP_FRAMES}x{size}x{size}", "batch": BATCH,
        "videos": len(paths), "source": args.data or
        f"generated {n_videos} x {seconds:g} s {width}x{height} 25 fps h264+aac",
        "batches": batches, "repeats": repeats, "cpu": cpu_model(), "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
        "results": results, "full_over_raw_decord": ratios, "cpu_raw_over_full": cpu_ratios,
        "target_met": all(target) if target else None,
    }
    print(json.dumps(summary))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(cli(main))
