"""Benchmark tasks: small declarative specs in one flat registry, one file per task.

A :class:`Task` says what a benchmark is (its data, splits, protocols, metric, version); the
harness (:mod:`avssl.bench.run`) does the work. ``kind`` picks the pipeline:

- ``classification``: ``load(root, split, train, **dataset_kwargs)`` returns a labelled
  :class:`~avssl.data.datasets.ClipDataset`; features of train and test videos feed the protocols
  ``linear``, ``knn``, ``fewshot``, ``retrieval`` (class-match video retrieval) or ``finetune``.
- ``sync`` / ``retrieval``: ``load(root, split, **kw)`` returns videos with sound; the model's
  video and audio embeddings are compared (:mod:`avssl.bench.tasks.av`).
- ``localization``: ``load(root, subset)`` returns untrimmed videos with segments; sliding-window
  features train a temporal localization head (:mod:`avssl.bench.tasks.localization`).
- anything else (``detection``, ``separation``): the task brings its own pipeline in ``run``:
  ``run(task, model, args, root, modality) -> {"metrics": {...}, "used": int, "expected": int,
  "manifest": str}`` (metrics in percent / dB, ``task.metric`` among them; ``args`` is the
  :class:`~avssl.bench.run.BenchArgs`).

``version`` goes into every leaderboard row and the feature cache key: bump it whenever a change
alters the numbers (data selection, views, metric definition).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from avssl.registry import Registry


@dataclass(frozen=True)
class Task:
    name: str
    summary: str                        # one line for --list
    data: str                           # expected layout and where it comes from
    kind: str                           # classification | sync | retrieval
    version: str
    protocols: tuple[str, ...]
    metric: str                         # primary metric of the default protocol
    load: Callable
    splits: tuple[str, ...] = ("1",)
    modality: str = "video"             # default features: video | audio | av
    views: str = "10x3"                 # default test views (clips x crops)
    layout: str | None = None           # synthetic stand-in layout
    default_root: Callable[[], str] | None = None   # data when --data-root is not given
    higher_is_better: bool = True
    run: Callable | None = None         # own pipeline for kinds the harness has no branch for
    # video ids -> the source video of each clip (N,), or None: the linear probe then holds out
    # whole sources, as clips cut from one video leak into each other (UCF101's groups)
    groups: Callable | None = None

    @property
    def default_protocol(self) -> str:
        return self.protocols[0]

    def stand_in(self) -> str:
        if self.layout is None:
            return ""
        return (f"make a synthetic stand-in with `python -m avssl.data.synthetic --layout "
                f"{self.layout} --out DIR` and pass --data-root DIR")


TASKS: Registry = Registry("task")

# Task modules register themselves on import (like the encoder zoo).
from avssl.bench.tasks import av, classification, localization  # noqa: E402,F401
from avssl.bench.tasks import ava, music  # noqa: E402,F401

__all__ = ["TASKS", "Task"]
