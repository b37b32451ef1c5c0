"""Encoder training-step speed: forward + backward clips/s and peak memory per encoder.

CPU (default): every ``*_tiny`` encoder at its ``example_input_shape``::

    python benchmarks/bench_encoders.py --quick

GPU, bf16 autocast: ``r3d18`` at 3x16x112x112, torchvision's own ``r3d_18`` (the reference,
measured in the same run; ours must not be slower) and ``vivit_fe_base`` at 3x16x224x224::

    python benchmarks/bench_encoders.py --device cuda --dtype bf16

One step = forward, a scalar loss on the (B, D) output, backward (no optimizer update); the
reported time is the median step (clips/s = batch / median step time). Peak
memory: on CUDA ``torch.cuda.max_memory_allocated`` over the timed steps (weights, gradients,
activations); on CPU each encoder runs in a fresh process and the figure is how far the
process's peak RSS rose above its level after building the model and the input (activations,
gradients and workspace). Prints a markdown table, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

from common import (  # benchmarks/common.py
    cli, cpu_name, dims, in_child, nonnegative_int, positive_int)

REFERENCE = "torchvision.r3d_18"  # torchvision's builder itself, not our wrapper
GPU_DEFAULT = [("r3d18", (3, 16, 112, 112)), (REFERENCE, (3, 16, 112, 112)),
               ("vivit_fe_base", (3, 16, 224, 224))]


def _build(name: str, attn_impl: str | None) -> torch.nn.Module:
    if name == REFERENCE:
        from torchvision.models.video import r3d_18

        return r3d_18(weights=None)
    from avssl.encoders import build_encoder

    kwargs = {"attn_impl": attn_impl} if attn_impl else {}
    return build_encoder(name, **kwargs)


def _shape(name: str, model: torch.nn.Module, override: tuple[int, ...] | None) -> tuple:
    if override is not None:
        return override
    return tuple(getattr(model, "example_input_shape", (3, 16, 112, 112)))


def measure(name: str, shape: tuple[int, ...] | None, batch: int, warmup: int, iters: int,
            device: str, dtype: str, attn_impl: str | None = None,
            threads: int | None = None) -> dict:
    """Time ``iters`` forward+backward steps after ``warmup``; returns one result row."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = _build(name, attn_impl).to(device).train()
    shape = _shape(name, model, shape)
    x = torch.randn(batch, *shape, device=device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bf16")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step() -> None:
        with autocast:
            out = model(x)
        out.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)  # robust to other processes stealing the CPU
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return {
        "name": name,
        "input": "x".join(map(str, shape)),
        "batch": batch,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "clips_per_s": round(batch / step_s, 2),
        "step_ms": round(1000 * step_s, 2),
        "peak_mem_mb": round(peak_mb, 1),
    }


def format_table(rows: list[dict]) -> str:
    lines = ["| encoder | input (C x T x H x W) | batch | params (M) | clips/s | step (ms) | "
             "peak mem (MB) |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | error: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['name']} | {r['input']} | {r['batch']} | {r['params_m']:.2f} | "
                     f"{r['clips_per_s']:.1f} | {r['step_ms']:.1f} | {r['peak_mem_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", default=None,
                   help=f"comma-separated encoders (and/or {REFERENCE}); default: all *_tiny on "
                        "CPU, r3d18 + reference + vivit_fe_base on CUDA")
    p.add_argument("--input", type=dims, default=None,
                   help="one input shape for all, e.g. 3x16x112x112")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--batch", type=positive_int, default=None, help="clips per step (CPU 2, CUDA 8)")
    p.add_argument("--iters", type=positive_int, default=None, help="timed steps (default 20, quick 5)")
    p.add_argument("--warmup", type=nonnegative_int, default=None, help="untimed steps (default 3, quick 2)")
    p.add_argument("--attn-impl", default=None, choices=["sdpa", "naive"],
                   help="pass attn_impl to the (transformer) encoders")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads (default: torch's); 1 is steadier on a busy machine")
    p.add_argument("--quick", action="store_true", help="fewer steps")
    args = p.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is visible; run on a GPU machine or drop "
              "--device", file=sys.stderr)
        return 2
    override = args.input
    if args.names:
        plan = [(n.strip(), override) for n in args.names.split(",") if n.strip()]
    elif args.device == "cuda":
        plan = [(n, override or s) for n, s in GPU_DEFAULT]
    else:
        from avssl.encoders import list_encoders

        plan = [(n, override) for n in list_encoders() if n.endswith("_tiny")]
    batch = args.batch or (8 if args.device == "cuda" else 2)
    iters = args.iters or (5 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True

    rows = []
    for name, shape in plan:
        job = (name, shape, batch, warmup, iters, args.device, args.dtype, args.attn_impl,
               args.threads)
        rows.append(in_child(measure, *job, label={"name": job[0]}, start="spawn") if args.device == "cpu" else measure(*job))
        print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)

    hw = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": args.device,
            "hardware": hw, "threads": args.threads or torch.get_num_threads(), "dtype": args.dtype,
            "torch": torch.__version__, "command": " ".join(["python", *sys.argv])}
    by_name = {r["name"]: r for r in rows if "error" not in r}
    if "r3d18" in by_name and REFERENCE in by_name:
        meta["r3d18_vs_torchvision"] = round(
            by_name["r3d18"]["clips_per_s"] / by_name[REFERENCE]["clips_per_s"], 3)
    print(format_table(rows))
    print(json.dumps({**meta, "results": rows}))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(cli(main))
