"""Action classes of the synthetic world: one motion pattern each, evaluated at any times.

An action is a function of continuous time measured in *frames* (``f = t * fps``) so that its
visual events (impacts, reversals, flashes, ...) fall exactly on integer frames, where the audio
renderer puts the matching sound onsets. Parameters are drawn from the generator *before* the
trajectory is evaluated and never depend on which times are asked for, so any window of the same
actor (``render_clip(..., start_s=...)``) shows the same motion.

Coordinates are normalised to [0, 1] with y pointing down (image convention): an angle that grows
turns clockwise on screen. Bounded actions (slides, grow/shrink, approach/retreat) play over the
nominal span ``[0, n_frames]`` and hold their end pose outside it; periodic ones run forever.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Several pairs differ only in direction or temporal order, so one frame cannot tell them apart:
# orbit_cw/orbit_ccw, slide_left_to_right/slide_right_to_left, slide_up/slide_down, grow/shrink
# (exact time reversals of each other) and approach_then_retreat/retreat_then_approach (order).
ACTIONS: list[str] = [
    "orbit_cw",
    "orbit_ccw",
    "slide_left_to_right",
    "slide_right_to_left",
    "slide_up",
    "slide_down",
    "grow",
    "shrink",
    "bounce",
    "zigzag",
    "flash",
    "wobble",
    "approach_then_retreat",
    "retreat_then_approach",
]

# Actions that repeat forever: distractors and background actors of long videos use these.
PERIODIC: list[str] = ["orbit_cw", "orbit_ccw", "bounce", "zigzag", "flash", "wobble"]

# The kind of visual event each action makes (written into a clip's ``events``).
EVENT_KIND: dict[str, str] = {
    "orbit_cw": "top", "orbit_ccw": "top",
    "slide_left_to_right": "step", "slide_right_to_left": "step",
    "slide_up": "step", "slide_down": "step",
    "grow": "step", "shrink": "step",
    "bounce": "impact", "zigzag": "reversal", "flash": "flash", "wobble": "reversal",
    "approach_then_retreat": "turn", "retreat_then_approach": "turn",
}

GROW = 1.3  # largest size factor an actor reaches (grow, shrink, approach/retreat)
SMALL = 0.55  # smallest size factor


@dataclass
class Track:
    """One actor's motion sampled at N times (frames ``f``, shape (N,)).

    cx, cy: (N,) centre, normalised; rad: (N,) half size, normalised; vis: (N,) opacity in [0, 1];
    events: (E,) integer frames of visual events (may lie a little before the first sample, so a
    sound that started earlier still rings into the window); kind: the event kind.
    """

    cx: np.ndarray
    cy: np.ndarray
    rad: np.ndarray
    vis: np.ndarray
    events: np.ndarray
    kind: str


def _period(rng: np.random.Generator, lo_s: float, hi_s: float, fps: float) -> int:
    return max(4, int(round(rng.uniform(lo_s, hi_s) * fps)))


def _lattice(e0: int, period: int, f: np.ndarray, pad: int) -> np.ndarray:
    """Integer frames ``e0 + m * period`` inside ``[f.min() - pad, f.max()]``."""
    lo, hi = float(f.min()) - pad, float(f.max())
    m = np.arange(np.ceil((lo - e0) / period), np.floor((hi - e0) / period) + 1)
    return (e0 + m * period).astype(np.int64)


def _in_span(events: np.ndarray, n_frames: float) -> np.ndarray:
    return events[(events >= 0) & (events <= n_frames)]


def _ramp(f: np.ndarray, n_frames: float) -> np.ndarray:
    """0 -> 1 over the nominal span, held outside it."""
    return np.clip(f / max(n_frames, 1.0), 0.0, 1.0)


def _triangle(u: np.ndarray) -> np.ndarray:
    """1 at even u, 0 at odd u, linear between: reversals at every integer."""
    return np.abs(np.mod(u, 2.0) - 1.0)


def action_track(action: str, rng: np.random.Generator, f: np.ndarray, *, n_frames: float,
                 fps: float, r: float, pad: int = 0) -> Track:
    """Draw the parameters of ``action`` for an actor of half size ``r`` and evaluate them.

    f: (N,) times in frames from the action's start; n_frames: nominal length of the action in
    frames (bounded actions play over it); pad: also list events up to ``pad`` frames before f.
    """
    ones = np.ones_like(f)
    big = r * GROW  # every action keeps its largest extent inside the frame
    lo, hi = big + 0.02, 1.0 - big - 0.02
    kind = EVENT_KIND[action]

    if action in ("orbit_cw", "orbit_ccw"):
        radius = rng.uniform(0.12, min(0.22, (hi - lo) / 2))
        ox, oy = rng.uniform(lo + radius, hi - radius, size=2)
        period = _period(rng, 1.0, 2.0, fps)
        e0 = int(rng.integers(0, period))  # random start phase: any frame occurs in both classes
        sign = 1.0 if action == "orbit_cw" else -1.0
        theta = -np.pi / 2 + sign * 2 * np.pi * (f - e0) / period  # -pi/2 = top of the circle
        return Track(ox + radius * np.cos(theta), oy + radius * np.sin(theta), r * ones, ones,
                     _lattice(e0, period, f, pad), kind)

    if action.startswith("slide_"):
        length = rng.uniform(0.35, 0.6) * (hi - lo)
        a_end = rng.uniform(lo + length, hi)  # drawn so that the reversed action has the same law
        a0 = rng.uniform(lo, hi - length)
        other = rng.uniform(lo, hi)
        period = _period(rng, 0.3, 0.6, fps)
        e0 = int(rng.integers(0, period))
        ramp = _ramp(f, n_frames)
        forward = action in ("slide_left_to_right", "slide_down")
        a = a0 + length * ramp if forward else a_end - length * ramp
        cx, cy = (a, other * ones) if action in ("slide_left_to_right", "slide_right_to_left") \
            else (other * ones, a)
        return Track(cx, cy, r * ones, ones, _in_span(_lattice(e0, period, f, pad), n_frames), kind)

    if action in ("grow", "shrink", "approach_then_retreat", "retreat_then_approach"):
        cx, cy = rng.uniform(lo, hi, size=2)
        ramp = _ramp(f, n_frames)
        if action in ("grow", "shrink"):
            period = _period(rng, 0.3, 0.6, fps)
            e0 = int(rng.integers(0, period))
            s = SMALL + (GROW - SMALL) * (ramp if action == "grow" else 1.0 - ramp)
            events = _in_span(_lattice(e0, period, f, pad), n_frames)
        else:
            turn = int(round(rng.uniform(0.35, 0.65) * n_frames))  # an integer frame: the event
            up = action == "approach_then_retreat"
            fc = np.clip(f, 0.0, max(n_frames, 1.0))
            first = np.clip(fc / max(turn, 1), 0.0, 1.0)
            second = np.clip((fc - turn) / max(n_frames - turn, 1.0), 0.0, 1.0)
            tri = np.where(fc <= turn, first, 1.0 - second)  # 0 -> 1 at the turn -> 0
            s = SMALL + (GROW - SMALL) * (tri if up else 1.0 - tri)
            lo_f = float(f.min()) - pad
            events = np.array([turn] if lo_f <= turn <= float(f.max()) else [], dtype=np.int64)
        return Track(cx * ones, cy * ones, r * s, ones, events, kind)

    if action == "bounce":
        height = rng.uniform(0.25, 0.45) * (hi - lo)
        floor = rng.uniform(lo + height, hi)
        x0 = rng.uniform(lo, hi)
        drift = rng.uniform(-0.15, 0.15) * (hi - lo)
        x0 = np.clip(x0, lo + max(0.0, -drift), hi - max(0.0, drift))
        period = _period(rng, 0.4, 0.8, fps)
        e0 = int(rng.integers(0, period))
        cy = floor - height * np.abs(np.sin(np.pi * (f - e0) / period))  # impacts at e0 + m*P
        return Track(x0 + drift * _ramp(f, n_frames), cy, r * ones, ones,
                     _lattice(e0, period, f, pad), kind)

    if action in ("zigzag", "wobble"):
        if action == "zigzag":
            width = rng.uniform(0.4, 0.8) * (hi - lo)
            period = _period(rng, 0.3, 0.6, fps)
            dy = rng.uniform(0.2, 0.4) * (hi - lo)
        else:
            width = rng.uniform(0.05, 0.09)
            period = _period(rng, 0.2, 0.32, fps)
            dy = 0.0
        xl = rng.uniform(lo, hi - width)
        y0 = rng.uniform(lo, hi - dy)
        e0 = int(rng.integers(0, period))
        cx = xl + width * _triangle((f - e0) / period)
        cy = y0 + dy * _ramp(f, n_frames)
        return Track(cx, cy, r * ones, ones, _lattice(e0, period, f, pad), kind)

    if action == "flash":
        cx, cy = rng.uniform(lo, hi, size=2)
        period = _period(rng, 0.4, 0.8, fps)
        on = max(2, period // 3)
        e0 = int(rng.integers(0, period))
        # half-frame tolerance: a frame time that rounds to an onset frame shows the flash
        vis = (np.mod(f - e0 + 0.5, period) < on + 0.5).astype(np.float64)
        return Track(cx * ones, cy * ones, r * ones, vis, _lattice(e0, period, f, pad), kind)

    raise ValueError(f"unknown action {action!r}")
