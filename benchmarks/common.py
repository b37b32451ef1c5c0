"""Helpers every benchmark script shares: the hardware name and measuring in a child process.

The scripts run as ``python benchmarks/bench_*.py``, so this folder is on ``sys.path`` and they
import this module as ``common``.
"""
from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import platform
from typing import Any, Callable


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
