"""Pick the fastest *measured* settings for the hardware a run finds, and say what was picked.

The recipes and ``python -m avssl.bench`` call :func:`pick` once and print
:meth:`SpeedSettings.describe`, so every log states its precision, memory format, compilation
and loader settings, and why. Each rule below cites a measurement in ``benchmarks/README.md``:

- **mixed precision**: bf16 autocast on a CUDA GPU that supports it (H100, r3d18 3x16x112^2
  forward+backward: 492 clips/s bf16 vs 338 fp32, 1.45x); fp32 on CPU (2-core Xeon, batch 2:
  bf16 autocast gives 0.95-1.03x CPU time for the 3D CNNs and 2x *slower* for the transformers; 2-core AMD
  EPYC with AVX2 only: 4-28x slower, emulated); fp32, unmeasured, on any other device (MPS).
  ``accelerate launch --mixed_precision bf16|fp16`` (``ACCELERATE_MIXED_PRECISION``) wins over
  the rule; its ``no`` does not, because ``accelerate launch`` writes ``no`` also when nothing was
  asked for: force fp32 with the recipes' ``--run.mixed_precision=no``.
- **channels-last-3d**: off. On CPU it is 1.0-1.7x *slower* per step (r3d18, i3d_r50_tiny,
  audio_resnet18_tiny); not measured on a GPU yet, so not switched on there either.
- **torch.compile**: off. On CPU compiling took 88-124 s for steady steps within 1% (r3d18) or
  13% (vivit_fe_tiny) of eager; not measured on a GPU yet.
- **loaders**: persistent workers whenever there are workers (no re-fork per epoch), pinned
  memory only when batches go to a GPU (pinning costs CPU time for nothing otherwise).
- **CPU threads**: ``accelerate launch`` exports ``OMP_NUM_THREADS=1`` unless given
  ``--num_cpu_threads_per_process``; a run that finds exactly that uses its share of the cores
  (cores / processes on this machine) instead. On 2 cores (AMD EPYC) ``accelerate launch
  recipes/pretrain_sync.py --optim.steps=30`` took 1.85 min with 2 threads and 2.78 min with 1
  (the step alone: 3.3 vs 5.6 s). Any other setting is left alone.
- **decoder threads** (per PyAV decoder; decord always uses 1): 1 in each DataLoader worker;
  without workers, this process's share of the cores (cores / local processes). FFmpeg by
  itself gives every decoder cores + 1 threads, and each clip opens a fresh decoder, so the
  threads start, fill and drain for a few dozen frames. On 2 cores (AMD EPYC), with 1 or 2
  workers, 2 or 3 threads per decoder came within 3% of 1 thread's clips/s (320x240 and 1080p)
  for 2-14% more CPU per clip, CPU the training process needs; without workers 2 threads gave
  up to 6% more clips/s (1080p; 0% at 320x240) for 8-11% more CPU, and there the decoding
  blocks the training step. :func:`worker_init` hands the value to each DataLoader worker
  (fork and spawn alike), :func:`apply_threads` to this process.

Every "off" can be forced on (``"on"``), e.g. to measure it on new hardware.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Literal

import torch

from avssl.data import decoding
from avssl.errors import ConfigError

Choice = Literal["auto", "on", "off"]
PRECISIONS = ("auto", "no", "bf16", "fp16")


@dataclass(frozen=True)
class SpeedSettings:
    """What a run uses. ``mixed_precision`` is accelerate's value (``no``, ``bf16``, ``fp16``)."""

    device: str
    mixed_precision: str
    channels_last: bool
    compile: bool
    pin_memory: bool
    persistent_workers: bool
    threads: int = 0  # torch intra-op threads (CPU work)
    decoder_threads: int = 0  # threads per PyAV decoder in each decoding process (0: FFmpeg's)
    why: dict = field(default_factory=dict)  # setting -> reason, for the log

    def describe(self) -> str:
        """One log line: ``speed settings on cuda: bf16 (reason); ...``."""
        parts = [f"precision {self.mixed_precision if self.mixed_precision != 'no' else 'fp32'}",
                 f"channels-last {'on' if self.channels_last else 'off'}",
                 f"torch.compile {'on' if self.compile else 'off'}",
                 f"pinned memory {'on' if self.pin_memory else 'off'}",
                 f"persistent workers {'on' if self.persistent_workers else 'off'}",
                 f"{self.threads} CPU thread(s)",
                 f"{self.decoder_threads or 'auto'} decoder thread(s)"]
        reasons = [f"{p} ({self.why[k]})" if k in self.why else p
                   for p, k in zip(parts, ("precision", "channels_last", "compile", "pin_memory",
                                           "persistent_workers", "threads", "decoder_threads"))]
        return f"speed settings on {self.device}: " + "; ".join(reasons)


def _device_type(device) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def _choice(name: str, value: str, default: bool, why_default: str,
            why: dict) -> bool:
    if value not in ("auto", "on", "off"):
        raise ConfigError(f"{name} must be auto, on or off, got {value!r}")
    if value == "auto":
        why[name] = why_default
        return default
    why[name] = "asked for"
    return value == "on"


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _local_processes(env) -> int:
    """Processes on this machine (accelerate launch's LOCAL_WORLD_SIZE; 1 without it)."""
    return max(1, int(env.get("LOCAL_WORLD_SIZE", "1") or 1))


def _threads(threads: int, why: dict, env=None) -> int:
    """Torch intra-op threads: ``threads`` if > 0, else the rule in the module docstring."""
    env = os.environ if env is None else env
    if threads < 0:
        raise ConfigError(f"threads must be >= 0 (0: auto), got {threads}")
    if threads > 0:
        why["threads"] = "asked for"
        return threads
    share = max(1, _cores() // _local_processes(env))
    # accelerate launch always exports its dynamo settings; OMP_NUM_THREADS=1 is its default
    if env.get("OMP_NUM_THREADS") == "1" and "ACCELERATE_DYNAMO_BACKEND" in env and share > 1:
        why["threads"] = ("cores / local processes, not accelerate launch's default of 1: "
                          "measured 1.5x faster on 2 cores")
        return share
    why["threads"] = "OMP_NUM_THREADS" if "OMP_NUM_THREADS" in env else "torch default"
    return torch.get_num_threads()


def _decoder_threads(decoder_threads: int, num_workers: int, why: dict, env=None) -> int:
    """Threads per decoder: ``decoder_threads`` if > 0, else the rule in the module docstring."""
    env = os.environ if env is None else env
    if decoder_threads < 0:
        raise ConfigError(f"decoder_threads must be >= 0 (0: auto), got {decoder_threads}")
    if decoder_threads > 0:
        why["decoder_threads"] = "asked for"
        return decoder_threads
    if num_workers > 0:
        why["decoder_threads"] = ("per worker: more measured within 3% of its clips/s for 2-14% "
                                  "more CPU a clip on 2 cores")
        return 1
    local, cores = _local_processes(env), _cores()
    why["decoder_threads"] = (f"{cores} core(s) / {local} process(es), no workers: 2 measured up "
                              f"to 6% more clips/s than 1 on 2 cores")
    return max(1, cores // local)


def apply_threads(settings: SpeedSettings) -> None:
    """Set torch's intra-op thread count to ``settings.threads`` and the decoder threads of this
    process (process-wide; idempotent). DataLoader workers need :func:`worker_init` too."""
    if settings.threads > 0 and torch.get_num_threads() != settings.threads:
        torch.set_num_threads(settings.threads)
    decoding.set_decoder_threads(settings.decoder_threads)


def _init_worker(decoder_threads: int, worker_id: int) -> None:
    decoding.set_decoder_threads(decoder_threads)


def worker_init(settings: SpeedSettings):
    """A DataLoader ``worker_init_fn`` that gives each worker's decoders
    ``settings.decoder_threads``: a spawned worker starts from a fresh interpreter, so the
    value must travel with the loader (a picklable partial), not sit in the parent's module."""
    return functools.partial(_init_worker, settings.decoder_threads)


def pick(device=None, *, mixed_precision: str = "auto", channels_last: Choice = "auto",
         compile: Choice = "auto", num_workers: int = 0, threads: int = 0,
         decoder_threads: int = 0) -> SpeedSettings:
    """The settings for ``device`` (a torch device or its name; None: CUDA if present).

    ``mixed_precision``: ``auto`` (the measured rule, unless ``accelerate launch
    --mixed_precision`` set one), or ``no`` / ``bf16`` / ``fp16`` to force it. ``threads``: 0
    for the rule, or a count to force; ``decoder_threads`` likewise (threads per decoder in each
    of the ``num_workers`` DataLoader workers, or in this process without workers). Nothing is
    applied here: see :func:`apply_threads`, :func:`worker_init` and :func:`prepare_module`."""
    kind = _device_type(device)
    why: dict[str, str] = {}
    if mixed_precision not in PRECISIONS:
        raise ConfigError(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got "
                          f"{mixed_precision!r}")
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "")
    if mixed_precision == "auto" and launched not in ("", "no", "bf16", "fp16"):
        raise ConfigError(f"accelerate launch --mixed_precision {launched} is not supported by "
                          f"avssl; use bf16, fp16 or no")
    if mixed_precision != "auto":
        precision, why["precision"] = mixed_precision, "asked for"
    elif launched in ("bf16", "fp16"):
        precision, why["precision"] = launched, "from accelerate launch"
    elif kind == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False):
        precision, why["precision"] = "bf16", "measured 1.45x fp32 on an H100"
    elif kind == "cuda":  # (the default including_emulation=True says yes on V100 / T4 too,
        # where bf16 is emulated: emulated bf16 measured 4-28x slower than fp32 on a CPU)
        precision, why["precision"] = "no", "this GPU has no native bf16"
    elif kind == "cpu":
        precision, why["precision"] = "no", "bf16 autocast measured no faster on cpu"
    else:  # mps, xpu, ...: fp32, the safe default; nothing was measured there
        precision, why["precision"] = "no", f"unmeasured on {kind}"
    if precision == "fp16" and kind == "cpu":
        raise ConfigError("mixed_precision fp16 needs a GPU; use bf16 or no on a CPU")
    # the log states the evidence for this device: the CPU measurements say nothing of a GPU
    cpu = kind == "cpu"
    last = _choice("channels_last", channels_last, False,
                   "measured slower on CPU" if cpu else f"unmeasured on {kind}", why)
    comp = _choice("compile", compile, False,
                   "88-124 s of compiling for no measured gain" if cpu else
                   f"unmeasured on {kind}; on CPU 88-124 s of compiling for no gain", why)
    dynamo = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "NO").upper()
    if dynamo not in ("", "NO"):  # Accelerator.prepare compiles the model itself
        comp, why["compile"] = True, f"accelerate launch --dynamo_backend {dynamo.lower()}"
    pin = kind == "cuda"
    why["pin_memory"] = ("batches go to a GPU" if pin else "no GPU" if cpu else
                         f"pinning speeds up copies to CUDA only, not to {kind}")
    persistent = num_workers > 0
    why["persistent_workers"] = (f"{num_workers} worker(s)" if persistent else "no workers")
    n_threads = _threads(threads, why)
    n_decoder = _decoder_threads(decoder_threads, num_workers, why)
    return SpeedSettings(str(kind), precision, last, comp, pin, persistent, n_threads, n_decoder,
                         why)


def prepare_module(module: torch.nn.Module, settings: SpeedSettings) -> torch.nn.Module:
    """Apply the memory format and compilation of ``settings`` to ``module`` (returned).

    channels-last-3d converts only the 5-D parameters (video convolutions): a convolution whose
    weight is channels-last runs and returns channels-last, so the inputs need no conversion."""
    if settings.channels_last:
        for p in module.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
    if settings.compile and not settings.why.get("compile", "").startswith("accelerate launch"):
        module.compile()  # in place: state_dict keys (and so checkpoints) stay the same
    return module

