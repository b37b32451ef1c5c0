"""Helpers every benchmark script shares: the hardware name and measuring in a child process.

The scripts run as ``python benchmarks/bench_*.py``, so this folder is on ``sys.path`` and they
import this module as ``common``.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import queue as queue_mod
import platform
import sys
from typing import Any, Callable


def _number(kind: type, low: float, what: str) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value >= low or (kind is float and value != value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


# argparse types: a bad value is argparse's one-line usage error, not a traceback, and 0 is
# refused where it means nothing (the scripts read "not given" as None, never as 0)
positive_int = _number(int, 1, "an integer >= 1")
nonnegative_int = _number(int, 0, "an integer >= 0")
positive_float = _number(float, 1e-300, "a number > 0")


def dims(text: str) -> tuple[int, ...]:
    """argparse type of an input shape without the batch, e.g. ``3x16x112x112``."""
    try:
        shape = tuple(int(t) for t in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected a shape like 3x16x112x112, got {text!r}")
    return shape


def cli(main: Callable[[], int]) -> int:
    """``main()``'s exit code; an avssl error (a bad name, an unknown protocol) is printed as
    one ``error: ...`` line with exit code 2, as the avssl commands do."""
    from avssl.errors import AvsslError

    try:
        return main()
    except AvsslError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tf32_state() -> dict:
    """Whether "fp32" work on a CUDA GPU ran in TF32 (10-bit mantissa inputs): torch's defaults
    let cuDNN's convolutions use it and keep matmuls in full fp32, so a GPU "fp32" row of a 3D CNN
    is TF32 for its convolutions. Recorded beside such rows rather than changed."""
    import torch

    return {"cudnn_conv_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def _error_row(label: dict, e: Exception) -> dict:
    return {**label, "error": " ".join(f"{type(e).__name__}: {e}".split())[:200]}


def _child(queue, fn: Callable[..., dict], label: dict, args: tuple) -> None:
    try:
        queue.put(fn(*args))
    except Exception as e:  # e.g. out of memory on one row: report it and go on with the others
        queue.put(_error_row(label, e))


def in_process(fn: Callable[..., dict], *args: Any, label: dict) -> dict:
    """``fn(*args)`` here (the CUDA path: a forked child cannot use the parent's CUDA context);
    an exception (out of memory, a compile failure) becomes an error row, as in a child, so the
    rows already measured are still printed."""
    try:
        return fn(*args)
    except Exception as e:
        return _error_row(label, e)


def in_child(fn: Callable[..., dict], *args: Any, label: dict, start: str = "fork") -> dict:
    """``fn(*args)`` in a fresh process, so its peak RSS is this row's alone; an exception comes
    back as ``{**label, "error": ...}``. ``fork`` inherits the imports (spawn re-imports torch,
    seconds a row) and is safe only while the parent has run no torch op (no OpenMP pool)."""
    ctx = mp.get_context(start)
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, label, args))
    proc.start()
    while True:  # a child killed by a signal (the OOM killer's SIGKILL) never sends its row
        try:
            row = queue.get(timeout=1.0)
            break
        except queue_mod.Empty:
            if not proc.is_alive():
                try:
                    row = queue.get(timeout=1.0)  # sent just before exiting
                except queue_mod.Empty:
                    row = {**label, "error": f"child process died (exit code {proc.exitcode}; "
                                             f"-9 is SIGKILL, e.g. out of memory)"}
                break
    proc.join()
    return row
