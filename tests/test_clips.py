from __future__ import annotations

import numpy as np
import pytest

from avssl.data.clips import other_index, random_window, shifted_window, uniform_windows


def _cases(n: int, seed: int = 0):
    """(duration, clip) pairs incl. short files, duration == clip, and long files."""
    rng = np.random.default_rng(seed)
    fixed = [(1.0, 1.0), (0.3, 1.0), (0.0, 0.5), (10.0, 0.04), (2.0, 1.999)]
    rand = [(float(rng.uniform(0, 12)), float(rng.uniform(0.05, 4))) for _ in range(n)]
    return fixed + rand


def test_random_window_bounds_and_length():
    rng = np.random.default_rng(1)
    for duration, clip in _cases(300):
        start, end = random_window(duration, clip, rng)
        assert end - start == pytest.approx(clip)
        if duration <= clip:
            assert (start, end) == (0.0, clip)
        else:
            assert 0.0 <= start and end <= duration + 1e-9


def test_random_window_is_uniform_and_seeded():
    starts = [random_window(5.0, 1.0, np.random.default_rng([7, i]))[0] for i in range(2000)]
    assert min(starts) < 0.1 and max(starts) > 3.9  # covers both edges of [0, 4]
    assert abs(np.mean(starts) - 2.0) < 0.15
    again = [random_window(5.0, 1.0, np.random.default_rng([7, i]))[0] for i in range(2000)]
    assert starts == again


@pytest.mark.parametrize("num_clips", [1, 2, 3, 10])
def test_uniform_windows_cover_file(num_clips):
    duration, clip = 9.0, 2.0
    wins = uniform_windows(duration, clip, num_clips)
    assert len(wins) == num_clips
    assert all(e - s == pytest.approx(clip) for s, e in wins)
    starts = [s for s, _ in wins]
    if num_clips == 1:
        assert starts[0] + clip / 2 == pytest.approx(duration / 2)  # centred
    else:
        assert starts[0] == 0.0 and wins[-1][1] == pytest.approx(duration)
        assert np.allclose(np.diff(starts), (duration - clip) / (num_clips - 1))


def test_uniform_windows_short_file_and_bad_args():
    assert uniform_windows(0.5, 1.0, 3) == [(0.0, 1.0)] * 3
    assert uniform_windows(1.0, 1.0, 2) == [(0.0, 1.0)] * 2
    with pytest.raises(ValueError):
        uniform_windows(5.0, 1.0, 0)
    with pytest.raises(ValueError):
        random_window(5.0, 0.0, np.random.default_rng(0))


def test_shifted_window_respects_bounds():
    rng = np.random.default_rng(3)
    found = none = 0
    for duration, clip in _cases(400, seed=3):
        start = random_window(duration, clip, rng)[0]
        lo = float(rng.uniform(0, 3))
        hi = lo + float(rng.uniform(0, 3))
        out = shifted_window(start, clip, duration, lo, hi, rng)
        if out is None:
            none += 1
            # Impossible means: neither sign leaves room inside [0, duration - clip].
            top = duration - clip
            assert top < 0 or (start + lo > top + 1e-9 and start - lo < -1e-9)
            continue
        found += 1
        assert 0.0 <= out <= max(duration - clip, 0.0) + 1e-9
        assert lo - 1e-9 <= abs(out - start) <= hi + 1e-9
    assert found > 50 and none > 5  # both branches exercised


def test_shifted_window_uses_both_signs_and_edges():
    rng = np.random.default_rng(0)
    shifts = [shifted_window(4.0, 1.0, 9.0, 2.0, 3.0, rng) - 4.0 for _ in range(400)]
    assert any(s < 0 for s in shifts) and any(s > 0 for s in shifts)
    # Only the negative side fits near the end, only the positive side near the start.
    assert all(shifted_window(7.5, 1.0, 8.5, 2.0, 3.0, rng) <= 5.5 for _ in range(50))
    assert all(shifted_window(0.0, 1.0, 8.5, 2.0, 3.0, rng) >= 2.0 for _ in range(50))
    # duration == clip: the only window is the original one -> no shifted negative exists.
    assert shifted_window(0.0, 1.0, 1.0, 0.5, 2.0, rng) is None
    assert shifted_window(0.0, 1.0, 3.0, 2.0, 2.0, rng) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        shifted_window(0.0, 1.0, 3.0, 2.0, 1.0, rng)


def test_other_index():
    rng = np.random.default_rng(0)
    for n in (2, 3, 17):
        seen = set()
        for _ in range(300):
            i = int(rng.integers(n))
            j = other_index(i, n, rng)
            assert j != i and 0 <= j < n
            seen.add(j)
        assert seen == set(range(n))
    with pytest.raises(ValueError):
        other_index(0, 1, rng)
