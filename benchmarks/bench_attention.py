"""ViViT attention: ``scaled_dot_product_attention`` vs naive softmax(QK^T)V, as tokens grow.

    python benchmarks/bench_attention.py --quick                 # CPU smoke run
    python benchmarks/bench_attention.py                         # CPU: 196..1568 tokens
    python benchmarks/bench_attention.py --device cuda --dtype bf16 --tokens 196,392,784,1568,3136

The layer measured is the encoders' own :class:`avssl.encoders.layers.Attention` (qkv projection,
attention, output projection) at ViViT-Base width (768, 12 heads), built twice with the same
weights: ``attn_impl="sdpa"`` (``F.scaled_dot_product_attention``: flash / memory-efficient
kernels on GPU, a fused flash kernel on CPU) and ``attn_impl="naive"`` (materialises the
``(B, heads, N, N)`` score matrix). One step = forward + backward of ``out.pow(2).mean()`` on
``x (B, N, 768)``; median of the timed steps. Both outputs and input gradients are compared
(max abs difference, reported and checked against ``--atol``).

Peak memory: CUDA ``torch.cuda.max_memory_allocated`` during the steps minus the memory held
before them; CPU: rise of a forked child's peak RSS (``ru_maxrss``) over the steps. 196 tokens =
one 224^2 frame of 16^2 patches; 3136 = 16 such frames (the joint space-time attention ViViT's
factorised models avoid). Prints a markdown table, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

from avssl.encoders.layers import Attention

from common import (  # benchmarks/common.py
    cli, cpu_name, in_child, in_process, nonnegative_int, positive_float, positive_int)

DIM, HEADS = 768, 12


def agreement(n: int, batch: int, device: str, dtype: torch.dtype) -> float:
    """Max abs difference of outputs and input gradients between SDPA and naive (same weights)."""
    torch.manual_seed(0)
    sdpa = Attention(DIM, HEADS, attn_impl="sdpa").to(device)
    naive = Attention(DIM, HEADS, attn_impl="naive").to(device)
    naive.load_state_dict(sdpa.state_dict())
    diffs = []
    x = torch.randn(batch, n, DIM, device=device)
    grads, outs = [], []
    for layer in (sdpa, naive):
        xi = x.clone().requires_grad_(True)
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            out = layer(xi)
        out.float().pow(2).mean().backward()
        outs.append(out.float())
        grads.append(xi.grad)
    diffs.append((outs[0] - outs[1]).abs().max().item())
    # gradients of a mean over B*N*D values are tiny: compare them relative to their scale
    diffs.append(((grads[0] - grads[1]).abs().max() / grads[1].abs().max()).item())
    return max(diffs)


def measure(impl: str, n: int, batch: int, warmup: int, steps: int, device: str, dtype_name: str,
            threads: int | None) -> dict:
    """Time forward+backward of one Attention layer on (batch, n, 768) tokens; one result row."""
    if threads:
        torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    torch.manual_seed(0)
    layer = Attention(DIM, HEADS, attn_impl=impl).to(device)
    x = torch.randn(batch, n, DIM, device=device, requires_grad=True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            out = layer(x)
        out.float().pow(2).mean().backward()
        layer.zero_grad(set_to_none=True)
        x.grad = None
        sync()
        return time.perf_counter() - start

    if device == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(warmup):
        step()
    times = [step() for _ in range(steps)]
    if device == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    ms = 1000 * statistics.median(times)
    return {"impl": impl, "tokens": n, "batch": batch, "dtype": dtype_name, "step_ms": round(ms, 3),
            "peak_mem_mb": round(peak_mb, 1)}


def _tokens(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts, e.g. "
                                         f"196,784,3136, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=_tokens, default=None,
                   help="token counts N (default CPU 196,392,784,1568; CUDA up to 3136; quick "
                        "64,196,392)")
    p.add_argument("--batch", type=positive_int, default=None, help="clips (default CPU 1, CUDA 8)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--steps", type=positive_int, default=None, help="timed steps (default 5, quick 3)")
    p.add_argument("--warmup", type=nonnegative_int, default=1, help="untimed steps (default 1)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads (default 1: oversubscribed threads on a shared machine make "
                        "timings erratic)")
    p.add_argument("--atol", type=positive_float, default=None,
                   help="allowed SDPA vs naive difference (default 1e-4 fp32, 3e-2 bf16)")
    p.add_argument("--quick", action="store_true", help="small token counts, few steps")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA GPU; run on a GPU machine or drop --device")
    for flag in ("batch", "steps", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1")
    cuda = args.device == "cuda"
    tokens = args.tokens or ([64, 196, 392] if args.quick else
                             [196, 392, 784, 1568, 3136] if cuda else [196, 392, 784, 1568])
    batch = args.batch or (8 if cuda else 1)
    steps = args.steps or (3 if args.quick else 5)
    threads = args.threads or (None if cuda else 1)
    atol = args.atol or (1e-4 if args.dtype == "fp32" else 3e-2)

    rows = []
    for n in tokens:
        for impl in ("sdpa", "naive"):
            job = (impl, n, batch, args.warmup, steps, args.device, args.dtype, threads)
            run_row = in_process if cuda else in_child
            rows.append(run_row(measure, *job, label={"impl": job[0], "tokens": job[1]}))
            print(f"{rows[-1]}", file=sys.stderr, flush=True)
    # after the forked measurements: the parent's first torch op may start its thread pool
    if threads:
        torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    diff = agreement(min(tokens), 2, args.device, dtype)

    by = {(r["impl"], r["tokens"]): r for r in rows if "error" not in r}
    lines = ["| tokens | SDPA ms | naive ms | naive / SDPA time | SDPA peak MB | naive peak MB |",
             "|---:|---:|---:|---:|---:|---:|"]
    speedup = {}
    for n in tokens:
        s, v = by.get(("sdpa", n)), by.get(("naive", n))
        if s is None or v is None:
            lines.append(f"| {n} | error | error | | | |")
            continue
        speedup[n] = round(v["step_ms"] / s["step_ms"], 3)
        lines.append(f"| {n} | {s['step_ms']:.1f} | {v['step_ms']:.1f} | {speedup[n]:.2f} | "
                     f"{s['peak_mem_mb']:.0f} | {v['peak_mem_mb']:.0f} |")
    print("\n".join(lines))
    print(json.dumps({
        "bench": "attention", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": args.device, "hardware": torch.cuda.get_device_name() if cuda else cpu_name(),
        "cores": os.cpu_count(), "threads": threads or torch.get_num_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
        "dim": DIM, "heads": HEADS, "batch": batch, "dtype": args.dtype, "steps": steps,
        "max_abs_diff": diff, "atol": atol, "agree": diff <= atol,
        "naive_over_sdpa_time": speedup, "results": rows,
    }))
    return 0 if diff <= atol and all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(cli(main))
