"""Audio-visual synchronisation metrics from per-clip candidate scores (all in percent).

For each clip a model scores its video against candidate audio tracks (higher = more likely in
sync). Ties count against the model: a clip is correct only when the right candidate scores
*strictly* higher than the competitors, so constant scores give 0.

- ``acc_hard``: percent of clips (with a sync and at least one hard row) whose in-sync score is
  strictly greater than every hard negative's (the same clip's audio, shifted); chance is 50
  with one hard negative. ``num_hard`` clips.
- ``acc_easy``: the same against easy negatives (another clip's audio). ``num_easy`` clips.
- ``offset_acc``: offset classification on a grid of shifts: percent of clips whose true grid
  offset has strictly the highest score. ``offset_acc_1`` (±1-class accuracy): percent whose
  best score among the grid points within one grid step of the true one is strictly greater
  than the best score of all other grid points. ``num_offset`` clips, ``grid`` (sorted offsets,
  seconds).

Each block appears only when its candidates exist. File format (``python -m avssl.eval sync
--scores S.csv``), one row per (clip, candidate)::

    clip_id,candidate,offset_s,score[,true_offset_s]

``candidate`` is ``sync`` (the in-sync pair; at most one per clip), ``hard`` (the clip's audio
shifted by ``offset_s``), ``easy`` (another clip's audio; ``offset_s`` unused, may be empty) or
``grid`` (the clip's audio at ``offset_s``, one row per grid point; every clip with grid rows
must use the same grid, which contains the true offset: 0.0, or the clip's ``true_offset_s``
when that optional column is filled in on any of its rows; rows of one clip must agree).
"""
from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from avssl.errors import ConfigError, DataError
from avssl.eval import EVALUATORS

CANDIDATES = ("sync", "hard", "easy", "grid")
# offsets are written as decimal text; two offsets closer than this are the same grid point
_OFFSET_ATOL = 1e-6


def _float_array(x: Any, name: str, ndim: tuple[int, ...], n: int | None = None) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, possibly on a GPU
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1 and 2 in ndim and 1 not in ndim:
        a = a[:, None]  # one negative per clip given as (N,)
    if a.ndim not in ndim or (n is not None and a.shape[0] != n):
        want = " or ".join({1: "(N,)", 2: "(N, K)"}[d] for d in ndim)
        raise ConfigError(f"{name}: expected shape {want} with N = {n}, got {tuple(a.shape)}")
    if np.isinf(a).any():
        raise ConfigError(f"{name}: expected finite scores (NaN marks a missing one), got inf")
    return a


def _beats(sync: np.ndarray, neg: np.ndarray) -> tuple[float, int] | None:
    """(percent of clips whose sync beats all their negatives, clips counted) or None."""
    valid = ~np.isnan(sync) & ~np.isnan(neg).all(axis=1)
    if not valid.any():
        return None
    best_neg = np.nanmax(neg[valid], axis=1)
    return float(100.0 * np.mean(sync[valid] > best_neg)), int(valid.sum())


def sync_metrics_from_arrays(sync: Any, hard: Any = None, easy: Any = None,
                             grid_scores: Any = None, grid_offsets: Any = None,
                             true_offsets: Any = None) -> dict:
    """Sync metrics (module docstring) from score arrays; NaN marks a missing score.

    ``sync`` (N,) in-sync scores; ``hard`` (N, H) and ``easy`` (N, E) negative scores (a 1-D
    array is one negative per clip); ``grid_scores`` (N, G) scores at ``grid_offsets`` (G,)
    seconds (any order, distinct); ``true_offsets`` (N,) the true offset of each clip, on the
    grid (default 0). A clip whose sync score or whose every negative is NaN is left out of that
    block; a clip whose grid row is all NaN is left out of the offset block.
    """
    s = _float_array(sync, "sync", (1,))
    n = len(s)
    out: dict = {}
    for key, neg in (("hard", hard), ("easy", easy)):
        if neg is not None:
            res = _beats(s, _float_array(neg, key, (2,), n))
            if res is not None:
                out[f"acc_{key}"], out[f"num_{key}"] = res
    if grid_scores is None:
        return out

    g = _float_array(grid_scores, "grid_scores", (2,), n)
    if grid_offsets is None:
        raise ConfigError("grid_scores need grid_offsets (G,): the shift in seconds of each column")
    offsets = _float_array(grid_offsets, "grid_offsets", (1,))
    if offsets.shape != (g.shape[1],) or np.isnan(offsets).any():
        raise ConfigError(f"grid_offsets: expected {g.shape[1]} finite offsets (one per "
                          f"grid_scores column), got shape {tuple(offsets.shape)}")
    order = np.argsort(offsets, kind="stable")
    offsets, g = offsets[order], g[:, order]
    if len(offsets) > 1 and np.diff(offsets).min() <= _OFFSET_ATOL:
        raise ConfigError(f"grid_offsets must be distinct, got {offsets.tolist()}")
    t_off = np.zeros(n) if true_offsets is None else _float_array(true_offsets, "true_offsets",
                                                                   (1,), n)
    has = ~np.isnan(g).all(axis=1)
    partial = has & np.isnan(g).any(axis=1)
    if partial.any():
        raise ConfigError(f"grid_scores: row {int(np.argmax(partial))} has some NaN scores; a "
                          f"clip needs a score at every grid offset (or none)")
    if not has.any():
        return out
    dist = np.abs(t_off[has, None] - offsets[None, :])
    true = dist.argmin(axis=1)
    off_grid = dist[np.arange(len(true)), true] > _OFFSET_ATOL
    if off_grid.any():
        bad = np.flatnonzero(has)[np.argmax(off_grid)]
        raise ConfigError(f"true offset {t_off[bad]:g} s of clip {bad} is not on the grid "
                          f"{offsets.tolist()}")
    g = g[has]
    rows = np.arange(len(g))
    cols = np.arange(g.shape[1])[None, :]
    others = np.where(cols == true[:, None], -np.inf, g).max(axis=1)
    near = np.abs(cols - true[:, None]) <= 1
    best_near = np.where(near, g, -np.inf).max(axis=1)
    best_far = np.where(near, -np.inf, g).max(axis=1)
    out.update(offset_acc=float(100.0 * np.mean(g[rows, true] > others)),
               offset_acc_1=float(100.0 * np.mean(best_near > best_far)),
               num_offset=int(len(g)), grid=[float(o) for o in offsets])
    return out


# ------------------------------------------------------------------------------------- rows
def _numbers(col, what: str, allow_empty: bool) -> np.ndarray:
    import pandas as pd

    text = col.astype(str).str.strip()
    # empty: a blank CSV cell, or None / NaN in rows given as dicts
    empty = (col.isna() | (text == "") | (text.str.lower() == "nan")).to_numpy()
    vals = pd.to_numeric(text.mask(empty), errors="coerce").to_numpy(np.float64)
    bad = (np.isnan(vals) & (~empty | (not allow_empty))) | np.isinf(vals)
    if bad.any():
        raise DataError(f"sync scores: {what} must be a finite number, got "
                        f"{text.iloc[int(np.argmax(bad))]!r} in row {int(np.argmax(bad)) + 1}")
    return vals


def sync_metrics(rows: Any) -> dict:
    """Sync metrics (module docstring) of score rows: a pandas DataFrame, or an iterable of
    dicts, with columns ``clip_id, candidate, offset_s, score`` and optional ``true_offset_s``.
    Adds ``num_clips`` (distinct clip ids)."""
    import pandas as pd

    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    missing = [c for c in ("clip_id", "candidate", "offset_s", "score") if c not in df.columns]
    if missing or df.empty:
        raise DataError(f"sync scores: expected columns clip_id,candidate,offset_s,score"
                        f"[,true_offset_s] and at least one row, got columns {list(df.columns)} "
                        f"and {len(df)} rows")
    clip = df["clip_id"].astype(str).str.strip().to_numpy()
    cand = df["candidate"].astype(str).str.strip().str.lower().to_numpy()
    unknown = sorted(set(cand) - set(CANDIDATES))
    if unknown:
        raise DataError(f"sync scores: unknown candidate(s) {', '.join(unknown[:3])}; expected "
                        f"one of {', '.join(CANDIDATES)}")
    score = _numbers(df["score"], "score", allow_empty=False)
    offset = _numbers(df["offset_s"], "offset_s", allow_empty=True)
    true_col = (_numbers(df["true_offset_s"], "true_offset_s", allow_empty=True)
                if "true_offset_s" in df.columns else np.full(len(df), np.nan))

    clips = list(dict.fromkeys(clip))
    index = {c: i for i, c in enumerate(clips)}
    n = len(clips)
    sync = np.full(n, np.nan)
    lists: dict[str, list[list[float]]] = {"hard": [[] for _ in clips],
                                           "easy": [[] for _ in clips]}
    grid: dict[int, dict[float, float]] = {}
    true_off = np.zeros(n)
    true_seen: dict[int, float] = {}
    for c, k, s, o, t in zip(clip, cand, score, offset, true_col):
        i = index[c]
        # the true offset belongs to the clip, so it counts on whichever of its rows carries it
        # (e.g. only the sync row), not only on grid rows
        if not np.isnan(t):
            if i in true_seen and abs(true_seen[i] - t) > _OFFSET_ATOL:
                raise DataError(f"sync scores: clip {c} has conflicting true_offset_s values "
                                f"{true_seen[i]:g} and {t:g}")
            true_seen[i] = true_off[i] = t
        if k == "sync":
            if not np.isnan(sync[i]):
                raise DataError(f"sync scores: clip {c} has more than one sync row")
            sync[i] = s
        elif k in lists:
            lists[k][i].append(s)
        else:
            if np.isnan(o):
                raise DataError(f"sync scores: grid row of clip {c} needs an offset_s")
            points = grid.setdefault(i, {})
            if any(abs(o - p) <= _OFFSET_ATOL for p in points):
                raise DataError(f"sync scores: clip {c} has two grid rows at offset {o:g} s")
            points[float(o)] = s

    def padded(kind: str) -> np.ndarray | None:
        width = max(len(v) for v in lists[kind])
        if width == 0:
            return None
        out = np.full((n, width), np.nan)
        for i, v in enumerate(lists[kind]):
            out[i, :len(v)] = v
        return out

    grid_scores = grid_offsets = None
    if grid:
        first = min(grid)
        grid_offsets = np.array(sorted(grid[first]))
        grid_scores = np.full((n, len(grid_offsets)), np.nan)
        for i, points in grid.items():
            offs = np.array(sorted(points))
            if len(offs) != len(grid_offsets) or np.abs(offs - grid_offsets).max() > _OFFSET_ATOL:
                raise DataError(f"sync scores: clip {clips[i]} has grid offsets {offs.tolist()} "
                                f"but clip {clips[first]} has {grid_offsets.tolist()}; every "
                                f"clip must use the same grid")
            grid_scores[i] = [points[o] for o in offs]
            if np.abs(grid_offsets - true_off[i]).min() > _OFFSET_ATOL:
                raise DataError(f"sync scores: the true offset {true_off[i]:g} s of clip "
                                f"{clips[i]} is not on its grid {grid_offsets.tolist()}")
    out = sync_metrics_from_arrays(sync, padded("hard"), padded("easy"), grid_scores,
                                   grid_offsets, true_off)
    out["num_clips"] = n
    return out


def evaluate_sync_file(path: str | os.PathLike) -> dict:
    """:func:`sync_metrics` of a ``scores.csv`` file (format in the module docstring)."""
    from avssl.csvfiles import read_text_csv

    if not os.path.isfile(path):
        raise DataError(f"sync scores file {path} not found")
    df = read_text_csv(path, "the header clip_id,candidate,offset_s,score",
                       what="sync scores file")
    df.columns = [str(c).strip() for c in df.columns]
    try:
        return sync_metrics(df)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None


def _run(args: argparse.Namespace) -> dict:
    return evaluate_sync_file(args.scores)


@EVALUATORS.register("sync")
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Subcommand ``sync``: sync accuracy vs hard / easy negatives and offset accuracy."""
    p = subparsers.add_parser(
        "sync", help="hard/easy-negative sync accuracy, offset accuracy",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores", required=True, metavar="S.csv",
                   help="clip_id,candidate,offset_s,score[,true_offset_s]")
    p.set_defaults(run=_run)
    return p
