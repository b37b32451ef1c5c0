"""Training-step throughput and peak memory: fp32 eager vs bf16 autocast vs channels-last vs compile.

    python benchmarks/bench_training.py --quick                  # CPU smoke run (~1 min; more with emulated bf16)
    python benchmarks/bench_training.py --device cuda            # paper sizes, batch 8
    python benchmarks/bench_training.py --batch 1 --video-input 3x8x112x112   # CPU, smaller clips

One step = forward, a scalar loss on the output, backward, ``AdamW.step()``, ``zero_grad``, on a
fixed random input of the model's ``example_input_shape`` (``--video-input`` / ``--audio-input``
override it). ``--warmup`` untimed steps, then ``--steps`` timed ones; the reported step time is
their median (clips/s = batch / median step).

Models (``--names``): our ``r3d18``, ``i3d_r50``, ``vivit_fe_base``, ``audio_resnet18`` and the
MBT model (``mbt``: bottleneck fusion of ``vit_video_base`` + ``audio_vit_base``, 4 bottleneck
tokens from layer 8, as in the paper; ``mbt_tiny``: the ``pretrain_mbt`` recipe's default streams),
and the references built by torchvision in the same run: ``torchvision.r3d_18`` (same architecture
as ``r3d18``; ours must not be slower) and ``torchvision.resnet18`` with a 1-channel stem (the
architecture of ``audio_resnet18``). ``i3d_r50``, the ViViT and MBT have no torchvision twin.

Variants (``--variants``):

* ``fp32``: eager float32;
* ``bf16``: ``torch.autocast(bfloat16)`` (also measured on CPU);
* ``channels_last``: fp32 with model and input in ``channels_last_3d`` (5-D video) or
  ``channels_last`` (4-D spectrograms) memory format; CNNs only (a transformer's only conv is its
  patch embedding, so it is skipped there);
* ``compile``: ``torch.compile(model)`` in fp32; the first warm-up step compiles (forward and
  backward graphs), its extra time over a steady step is reported as ``compile_s``.

Peak memory: CUDA ``torch.cuda.max_memory_allocated`` over the timed steps (weights, grads,
AdamW state, activations), each (model, variant) in this process. CPU: every (model, variant)
runs in a forked child and the figure is the rise of its peak RSS (``getrusage`` ``ru_maxrss``)
above its level after building the model, optimizer and input: gradients, AdamW state,
activations and workspace. Model FLOPs per step = 3 x forward FLOPs (``FlopCounterMode``, batch
1) x batch; on CUDA MFU = model FLOP/s over a bf16 matmul peak measured here (8192^3, median).
Prints a markdown table, then one JSON line.
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
from torch import nn

from common import (  # benchmarks/common.py
    cli, cpu_name, in_child, in_process, nonnegative_int, positive_int, tf32_state)

VARIANTS = ("fp32", "bf16", "channels_last", "compile")
TV_R3D, TV_RESNET = "torchvision.r3d_18", "torchvision.resnet18"
REFERENCES = {"r3d18": TV_R3D, "audio_resnet18": TV_RESNET}
DEFAULT = ["r3d18", TV_R3D, "i3d_r50", "vivit_fe_base", "audio_resnet18", TV_RESNET, "mbt"]
# --quick: tiny variants; r3d18 has none, so it and its reference run on small clips instead.
QUICK = ["r3d18", TV_R3D, "i3d_r50_tiny", "vivit_fe_tiny", "audio_resnet18_tiny", "mbt_tiny"]
QUICK_VIDEO = {"r3d18": (3, 8, 32, 32), TV_R3D: (3, 8, 32, 32)}
CNNS = ("r3d18", TV_R3D, "i3d", "audio_resnet", TV_RESNET)  # name prefixes: channels_last applies
MBT = {"mbt": ("vit_video_base", "audio_vit_base", 8), "mbt_tiny": ("vit_video_tiny",
                                                                    "audio_vit_tiny", 2)}


class MBTStep(nn.Module):
    """The MBT model on ``(video (B, 3, T, H, W), logmel (B, 1, F, T))`` -> pair logits (B, 3)."""

    def __init__(self, name: str):
        super().__init__()
        from avssl.fusion import build_fusion

        video, audio, layer = MBT[name]
        self.net = build_fusion("bottleneck", video_encoder=video, audio_encoder=audio,
                                num_classes=3, num_bottlenecks=4, fusion_layer=layer)
        self.shapes = (self.net.video.example_input_shape, self.net.audio.example_input_shape)

    def forward(self, video: torch.Tensor, logmel: torch.Tensor) -> torch.Tensor:
        return self.net(video, logmel)["logits"]


def build(name: str) -> tuple[nn.Module, list[tuple[int, ...]], str]:
    """``(model, input shapes without batch, modality of the first input)``."""
    if name in MBT:
        m = MBTStep(name)
        return m, list(m.shapes), "av"
    if name == TV_R3D:
        from torchvision.models.video import r3d_18

        return r3d_18(weights=None), [(3, 16, 112, 112)], "video"
    if name == TV_RESNET:
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # log-mel has one channel
        return net, [(1, 128, 1000)], "audio"
    from avssl.encoders import build_encoder

    m = build_encoder(name)
    return m, [tuple(m.example_input_shape)], m.modality


def forward_flops(model: nn.Module, inputs: list[torch.Tensor]) -> float:
    """FLOPs of one forward on the batch-1 slices of ``inputs`` (matmuls, convs, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    from avssl.encoders import cost  # its rules count the CPU SDPA kernel, which torch does not

    counter = FlopCounterMode(display=False, custom_mapping=getattr(cost, "_EXTRA_FLOP_RULES", {}))
    model.eval()
    with torch.no_grad(), counter:
        model(*[x[:1] for x in inputs])
    model.train()
    return float(counter.get_total_flops())


def measure(name: str, variant: str, batch: int, warmup: int, steps: int, device: str,
            video_input: tuple | None, audio_input: tuple | None, threads: int | None) -> dict:
    """Time ``steps`` training steps of ``name`` in ``variant`` after ``warmup``; one result row."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, shapes, modality = build(name)
    if video_input and modality in ("video", "av"):
        shapes[0] = video_input
    if audio_input and modality in ("audio", "av"):
        shapes[-1] = audio_input
    model = model.to(device).train()
    inputs = [torch.randn(batch, *s, device=device) for s in shapes]
    flops = 3 * forward_flops(model, inputs) * batch  # backward ~ 2x forward
    if variant == "channels_last":
        fmt = torch.channels_last_3d if len(shapes[0]) == 4 else torch.channels_last
        model = model.to(memory_format=fmt)
        inputs = [x.contiguous(memory_format=fmt) for x in inputs]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    run = torch.compile(model) if variant == "compile" else model
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=variant == "bf16")
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step() -> float:
        start = time.perf_counter()
        with autocast:
            out = run(*inputs)
        out.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        return time.perf_counter() - start

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    warm = [step() for _ in range(warmup)]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cpu0 = time.process_time()
    times = [step() for _ in range(steps)]
    cpu_s = (time.process_time() - cpu0) / steps
    step_s = statistics.median(times)
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is in KiB on Linux
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    row = {
        "name": name, "variant": variant, "input": " + ".join("x".join(map(str, s)) for s in shapes),
        "batch": batch, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "clips_per_s": round(batch / step_s, 3), "step_ms": round(1000 * step_s, 2),
        "cpu_ms_per_step": round(1000 * cpu_s, 1),
        "peak_mem_mb": round(peak_mb, 1), "gflop_per_step": round(flops / 1e9, 3),
        "tflops": round(flops / step_s / 1e12, 4),
    }
    if variant == "compile":  # compilation happens in the first call (forward + backward)
        row["compile_s"] = round(warm[0] - step_s, 2)
    return row


def matmul_peak_tflops(n: int = 8192, iters: int = 20) -> float:
    """Measured bf16 matmul throughput on the current CUDA device (median of ``iters``)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * n**3 / statistics.median(times) / 1e12


def skip_reason(name: str, variant: str) -> str | None:
    if variant == "channels_last" and not name.startswith(CNNS):
        return "transformer: no conv layers to reorder"
    return None


def format_table(rows: list[dict], cuda: bool) -> str:
    head = "| model | variant | input | batch | clips/s | step (ms) | CPU ms/step | peak mem (MB) | TFLOP/s | compile (s) |"
    lines = [head + (" MFU |" if cuda else ""), "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
             + ("---:|" if cuda else "")]
    for r in rows:
        if "error" in r or "skipped" in r:
            why = f"error: {r['error']}" if "error" in r else f"skipped ({r['skipped']})"
            lines.append(f"| {r['name']} | {r['variant']} | {why} |" + " |" * (7 + cuda))
            continue
        line = (f"| {r['name']} | {r['variant']} | {r['input']} | {r['batch']} | "
                f"{r['clips_per_s']:.2f} | {r['step_ms']:.1f} | {r['cpu_ms_per_step']:.0f} | "
                f"{r['peak_mem_mb']:.0f} | {r['tflops']:.3f} | {r.get('compile_s', '')} |")
        lines.append(line + (f" {r['mfu']:.3f} |" if cuda else ""))
    return "\n".join(lines)


def _shape(text: str | None) -> tuple | None:
    if text is None:
        return None
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) not in (3, 4) or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"expected CxTxHxW (video) or 1xFxT (audio), e.g. "
                                         f"3x16x112x112, got {text!r}")
    return shape


def _list(choices: tuple[str, ...] | None):
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if choices and s not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of "
                                             f"{','.join(choices or ())}, got {text!r}")
        return items
    return parse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", type=_list(None), default=None,
                   help=f"comma-separated models (encoders, mbt, mbt_tiny, {TV_R3D}, {TV_RESNET})")
    p.add_argument("--variants", type=_list(VARIANTS), default=None,
                   help="comma-separated subset of " + ",".join(VARIANTS) + " (default: all; "
                        "quick: fp32,bf16,channels_last)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=positive_int, default=None, help="clips per step (default CPU 2, CUDA 8)")
    p.add_argument("--steps", type=positive_int, default=None, help="timed steps (default 10, quick 3)")
    p.add_argument("--warmup", type=nonnegative_int, default=None, help="untimed steps (default 3, quick 1)")
    p.add_argument("--video-input", type=_shape, default=None, help="video input, e.g. 3x8x112x112")
    p.add_argument("--audio-input", type=_shape, default=None, help="audio input, e.g. 1x128x500")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads per run (default 1 on CPU: on this shared 2-core machine "
                        "2 OpenMP threads made small steps up to 60x slower; CUDA: torch's)")
    p.add_argument("--quick", action="store_true", help="tiny models / small clips, few steps")
    args = p.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA GPU; run on a GPU machine or drop --device")
    threads = args.threads or (1 if args.device == "cpu" else None)
    for flag in ("batch", "steps", "threads"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1")
    names = args.names or (QUICK if args.quick else DEFAULT)
    variants = args.variants or (["fp32", "bf16", "channels_last"] if args.quick else list(VARIANTS))
    if "compile" in variants and args.warmup == 0:
        p.error("--variants compile needs --warmup >= 1 (the first step compiles)")
    batch = args.batch or (8 if args.device == "cuda" else 2)
    steps = args.steps or (3 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    if "compile" in variants:
        warmup = max(warmup, 2)  # step 1 compiles, step 2 is the first steady one
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
    from avssl.encoders import ENCODERS, _load_all

    _load_all()
    for n in names:  # unknown names fail here, with suggestions, before any measurement
        if n not in MBT and n not in (TV_R3D, TV_RESNET):
            ENCODERS.get(n)

    rows = []
    for name in names:
        vin = args.video_input or (QUICK_VIDEO.get(name) if args.quick else None)
        for variant in variants:
            reason = skip_reason(name, variant)
            if reason:
                rows.append({"name": name, "variant": variant, "skipped": reason})
                continue
            job = (name, variant, batch, warmup, steps, args.device, vin, args.audio_input,
                   threads)
            run_row = in_child if args.device == "cpu" else in_process
            rows.append(run_row(measure, *job, label={"name": job[0], "variant": job[1]}))
            if args.device == "cuda":
                torch.cuda.empty_cache()
                torch._dynamo.reset()
            print(f"{name} {variant}: {rows[-1]}", file=sys.stderr, flush=True)

    meta = {"bench": "training", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": args.device, "hardware": torch.cuda.get_device_name() if args.device == "cuda"
            else cpu_name(), "cores": os.cpu_count(), "threads": threads or torch.get_num_threads(),
            "load_avg_1m": round(os.getloadavg()[0], 2), "torch": torch.__version__,
            "batch": batch, "warmup": warmup, "steps": steps,
            "command": " ".join(["python", *sys.argv]) if argv is None else "main(" + repr(argv) + ")"}
    if args.device == "cuda":
        meta["tf32"] = tf32_state()
        peak = matmul_peak_tflops()
        meta["bf16_matmul_peak_tflops"] = round(peak, 1)
        for r in rows:
            if "tflops" in r:
                r["mfu"] = round(r["tflops"] / peak, 4)
    ok = {(r["name"], r["variant"]): r for r in rows if "clips_per_s" in r}
    meta["ours_over_reference"] = {
        f"{ours}/{v}": round(ok[ours, v]["clips_per_s"] / ok[ref, v]["clips_per_s"], 3)
        for ours, ref in REFERENCES.items() for v in variants if (ours, v) in ok and (ref, v) in ok}
    print(format_table(rows, args.device == "cuda"))
    print(json.dumps({**meta, "results": rows}))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(cli(main))
