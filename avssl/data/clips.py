"""Clip windows in seconds: random (train), uniform multi-clip (test), and sync negatives.

Every function here works in **seconds**, never frame indices, so videos with different frame
rates (UCF101 mixes 25 and 29.97 fps) stay aligned with their audio: the decoder turns a window
``[start_s, end_s)`` into frames at any target fps and into audio samples at any sample rate, and
audio decoded for the same window is aligned with the video by construction.

Windows may reach past the end of a short file; the decoder then repeats the last frame and
zero-pads the audio, so callers never need a special case for clips shorter than ``clip_s``.
All randomness comes from an explicit ``numpy.random.Generator``.
"""
from __future__ import annotations

import numpy as np

# Float slack for "inside the file" checks: durations from containers are rounded to ~1 ms.
_EPS = 1e-9


def _check_clip(clip_s: float) -> None:
    if not clip_s > 0:
        raise ValueError(f"clip_s must be > 0 seconds, got {clip_s}")


def random_window(duration_s: float, clip_s: float,
                  rng: np.random.Generator) -> tuple[float, float]:
    """A window of ``clip_s`` seconds drawn uniformly inside ``[0, duration_s]``.

    Returns ``(start_s, end_s)`` with ``end_s - start_s == clip_s``. A file shorter than the clip
    gives ``(0, clip_s)`` (the decoder pads the tail).
    """
    _check_clip(clip_s)
    slack = float(duration_s) - clip_s
    if slack <= 0:
        return 0.0, float(clip_s)
    start = float(rng.uniform(0.0, slack))
    return start, start + clip_s


def uniform_windows(duration_s: float, clip_s: float, num_clips: int) -> list[tuple[float, float]]:
    """``num_clips`` evenly spaced windows for multi-clip testing.

    The first starts at 0 and the last ends at ``duration_s`` (one clip is centred), as in the
    SlowFast/PySlowFast multi-view test. Windows overlap when the file is short; a file shorter than
    ``clip_s`` gives ``num_clips`` copies of ``(0, clip_s)``.
    """
    _check_clip(clip_s)
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    slack = max(float(duration_s) - clip_s, 0.0)
    if num_clips == 1:
        starts = [slack / 2]
    else:
        starts = np.linspace(0.0, slack, num_clips).tolist()
    return [(float(s), float(s) + clip_s) for s in starts]


def shifted_window(
    start_s: float,
    clip_s: float,
    duration_s: float,
    min_shift_s: float,
    max_shift_s: float,
    rng: np.random.Generator,
) -> float | None:
    """A start for the SAME video's audio, shifted from ``start_s`` by ``|shift|`` in [min, max].

    This is the "hard" synchronisation negative (Owens & Efros, Multisensory: audio shifted by at
    least ~2 s). The shifted window stays inside the file, ``[0, duration_s - clip_s]``; both signs
    are tried and the result is uniform over the union of the feasible intervals. Returns ``None``
    when no shift fits (short file): the caller then falls back to another video's audio ("easy"
    negative, see :func:`other_index`).
    """
    _check_clip(clip_s)
    if not 0 <= min_shift_s <= max_shift_s:
        raise ValueError(
            f"need 0 <= min_shift_s <= max_shift_s, got min={min_shift_s}, max={max_shift_s}"
        )
    hi = float(duration_s) - clip_s
    if hi < -_EPS:
        return None
    hi = max(hi, 0.0)
    intervals = []
    for lo_s, hi_s in ((start_s + min_shift_s, start_s + max_shift_s),
                       (start_s - max_shift_s, start_s - min_shift_s)):
        lo_c, hi_c = max(lo_s, 0.0), min(hi_s, hi)
        if lo_c <= hi_c + _EPS:
            intervals.append((lo_c, max(lo_c, hi_c)))
    if not intervals:
        return None
    lengths = np.array([b - a for a, b in intervals])
    # Uniform over the union; degenerate (single-point) intervals get equal odds.
    total = lengths.sum()
    p = lengths / total if total > 0 else np.full(len(intervals), 1 / len(intervals))
    lo_c, hi_c = intervals[int(rng.choice(len(intervals), p=p))]
    start = float(rng.uniform(lo_c, hi_c)) if hi_c > lo_c else lo_c
    return min(max(start, 0.0), hi)


def other_index(index: int, n: int, rng: np.random.Generator) -> int:
    """An index drawn uniformly from ``range(n)`` minus ``index`` (another video's audio)."""
    if n < 2:
        raise ValueError(f"need at least 2 items to pick another one, got n={n}")
    j = int(rng.integers(n - 1))
    return j + (j >= index)
