"""Stopping a DataLoader's worker processes when an error ends its iteration.

When a worker raises (a truncated video) or the loop body does, the exception's traceback keeps
the loader's iterator alive (it is ``self`` in torch's frames, or the loader that owns it with
persistent workers is a local of the caller's frame). The workers then outlive the error until
the garbage collector breaks that cycle, and torch's shutdown run from inside the collector waits
about 20 s on worker joins (torch 2.11, 2 workers), in whatever code happens to run then: the
next notebook cell, the next benchmark, the next test. Shutting the workers down where the error
is caught takes milliseconds.
"""
from __future__ import annotations

from typing import Any


def stop_workers(*loaders: Any) -> None:
    """Shut down the worker processes behind each of ``loaders`` now.

    Each is a DataLoader iterator (``iter(loader)``) or a DataLoader with persistent workers
    (also one that accelerate prepared), whose iterator it keeps; anything else (a loader without
    workers, an accelerate generator) is left alone. Safe to call twice."""
    for obj in loaders:
        it = getattr(obj, "_iterator", None) or obj
        # torch's own shutdown (what the iterator's __del__ calls); no public API exists for it
        shutdown = getattr(it, "_shutdown_workers", None)
        if callable(shutdown):
            shutdown()
