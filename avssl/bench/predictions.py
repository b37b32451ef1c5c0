"""Write a bench run's raw outputs in the file formats of ``python -m avssl.eval``.

``python -m avssl.bench ... --save-predictions DIR`` writes what the metrics were computed from,
so anyone can recompute them with the standalone evaluators (or their own code):

- classification tasks: ``DIR/predictions.csv`` (``id,<class_0>,...``: the test videos' scores)
  and ``DIR/labels.csv`` (``id,label``) -> ``python -m avssl.eval classification``;
- ``av-sync``: ``DIR/scores.csv`` (``clip_id,candidate,offset_s,score``) -> ``... eval sync``;
- ``av-retrieval``: ``DIR/queries.npy`` (video embeddings) and ``DIR/gallery.npy`` (audio
  embeddings of the same clips, row i pairs with row i) -> ``... eval retrieval``.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np


def _dir(path: str | os.PathLike) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_classification(path, ids: Sequence[str], scores: np.ndarray, labels: np.ndarray,
                         class_names: Sequence[str]) -> None:
    out = _dir(path)
    with open(out / "predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", *class_names])
        for vid, row in zip(ids, scores):
            w.writerow([vid, *(repr(float(v)) for v in row)])
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label"])
        w.writerows([vid, class_names[int(y)]] for vid, y in zip(ids, labels))


def write_sync(path, ids: Sequence[str], scores: np.ndarray, easy: np.ndarray,
               grid: Sequence[float], hard_offsets: Sequence[float]) -> None:
    """``scores`` (N, G + 1): the grid candidates then the hard negative; ``easy`` (N,)."""
    g = len(grid)
    zero = list(grid).index(0.0)
    with open(_dir(path) / "scores.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "candidate", "offset_s", "score"])
        for i, vid in enumerate(ids):
            w.writerow([vid, "sync", 0.0, repr(float(scores[i, zero]))])
            w.writerow([vid, "hard", hard_offsets[i], repr(float(scores[i, g]))])
            if np.isfinite(easy[i]):  # NaN: no other video to draw an easy negative from
                w.writerow([vid, "easy", "", repr(float(easy[i]))])
            for j, o in enumerate(grid):
                w.writerow([vid, "grid", o, repr(float(scores[i, j]))])


def write_retrieval(path, queries: np.ndarray, gallery: np.ndarray) -> None:
    out = _dir(path)
    np.save(out / "queries.npy", queries.astype(np.float32))
    np.save(out / "gallery.npy", gallery.astype(np.float32))
