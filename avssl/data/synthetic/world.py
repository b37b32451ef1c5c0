"""The synthetic audio-visual world: clips and untrimmed videos as pure functions of (seed, index).

A clip shows 1-3 sounding *actors* (shapes) and up to a few silent *distractors* moving on a
noisy, jittering background. Each actor performs one action of :data:`ACTIONS`; its timbre follows
its shape, its pitch its colour, and every visual event (impact, reversal, flash, ...) is also a
sound onset on the exact audio sample of that frame. Rendering is vectorised numpy: a 2 s, 64x64,
25 fps clip with 16 kHz audio takes about 10 ms on one core.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from avssl.errors import ConfigError
from avssl.data.synthetic.motion import ACTIONS, PERIODIC, Track, action_track
from avssl.data.synthetic.sound import (COLOURS, EVENT_S, PITCHES, SHAPES, TIMBRES,
                                        event_kernel, hum, place_events)

PULSE_DECAY_FRAMES = 1.5  # an event brightens its actor on that frame, fading over a few frames
PULSE_HOLD_S = 0.12  # ... after holding full brightness this long, so that a clip decoded at a
# lower frame rate (8 fps for pretraining samples every ~3rd frame of 25) still sees the flash
PULSE_GAIN = 0.8
EDGE_PX = 2.0  # antialiased edge width: soft edges survive yuv420p chroma subsampling
CHUNK_FRAMES = 256  # long videos are drawn in chunks to bound memory


@dataclass(frozen=True)
class WorldConfig:
    """Rendering settings. ``size`` is H = W (even, for yuv420p video); ``noise`` is the std of the
    per-frame pixel noise (in [0, 1] units); ``jitter`` the camera shake in pixels (+-);
    ``audio_noise`` the std of the background audio noise."""

    size: int = 64
    fps: float = 25.0
    duration_s: float = 2.0
    sample_rate: int = 16000
    min_actors: int = 1
    max_actors: int = 3
    max_distractors: int = 2
    noise: float = 0.02
    jitter: int = 1
    audio_noise: float = 0.003

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 2:
            raise ConfigError(f"WorldConfig.size must be an even number >= 16, got {self.size}")
        if not (0 < self.fps < math.inf and 0 < self.duration_s < math.inf
                and self.sample_rate > 0):  # (`not <` also refuses nan)
            raise ConfigError("WorldConfig fps, duration_s and sample_rate must be finite and "
                              f"> 0, got {self.fps}, {self.duration_s}, {self.sample_rate}")
        if round(self.duration_s * self.fps) < 1:
            raise ConfigError(f"WorldConfig.duration_s {self.duration_s} is under one frame at "
                              f"{self.fps} fps")
        if not 1 <= self.min_actors <= self.max_actors <= len(COLOURS):
            raise ConfigError(f"WorldConfig needs 1 <= min_actors <= max_actors <= "
                              f"{len(COLOURS)}, got {self.min_actors}, {self.max_actors}")
        if self.max_distractors < 0 or self.jitter < 0 or self.noise < 0 or self.audio_noise < 0:
            raise ConfigError("WorldConfig max_distractors, jitter, noise and audio_noise must "
                              "be >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Actor:
    shape: str
    colour: int
    action: int
    track: Track
    sounding: bool
    accents: frozenset = frozenset()  # event frames that are accents, not action events


# ---------------------------------------------------------------- drawing


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, rad: np.ndarray) -> np.ndarray:
    """Signed distance in pixels to ``shape`` of half size ``rad``; dx (N,1,W), dy (N,H,1),
    rad (N,1,1) -> (N,H,W). Every shape fits its box ``centre +- rad``."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - rad
    if shape == "ring":
        return np.abs(np.sqrt(dx * dx + dy * dy) - 0.7 * rad) - 0.3 * rad
    if shape == "square":
        return np.maximum(ax, ay) - 0.9 * rad
    if shape == "diamond":
        return (ax + ay - rad) * 0.7071
    if shape == "cross":
        w = 0.35 * rad
        return np.minimum(np.maximum(ax - rad, ay - w), np.maximum(ax - w, ay - rad))
    if shape == "triangle":  # apex at the top, base at the bottom of the box
        return np.maximum(dy - rad, (2 * ax - dy - rad) * 0.4472)
    raise ValueError(f"unknown shape {shape!r}")


def _pulse(f: np.ndarray, events: np.ndarray, hold: float = 0.0) -> np.ndarray:
    """(N,) brightening from each event frame: full for ``hold`` frames, then decaying; half a
    frame of tolerance before."""
    if len(events) == 0:
        return np.zeros_like(f)
    lag = f[:, None] - events[None, :].astype(np.float64)
    p = np.where(lag >= -0.5, np.exp(-np.clip(lag - hold, 0.0, None) / PULSE_DECAY_FRAMES), 0.0)
    return p.max(axis=1)


def _background(rng: np.random.Generator, cfg: WorldConfig) -> np.ndarray:
    """(3, H + 2j, W + 2j) float32 static texture: smooth gratings + fixed grain, muted colours."""
    n = cfg.size + 2 * cfg.jitter
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / cfg.size
    pattern = np.zeros((n, n), np.float32)
    for _ in range(3):
        kx, ky = rng.uniform(-12, 12, size=2)
        pattern += rng.uniform(0.03, 0.07) * np.sin(kx * xx + ky * yy + rng.uniform(0, 2 * np.pi))
    grain = rng.standard_normal((n, n), dtype=np.float32) * 0.02
    tint = rng.uniform(0.3, 0.5, size=3).astype(np.float32)
    scale = rng.uniform(0.7, 1.3, size=3).astype(np.float32)
    return tint[:, None, None] + scale[:, None, None] * pattern[None] + grain[None]


def _shake(rng: np.random.Generator, n: int, jitter: int) -> np.ndarray:
    """(n, 2) integer camera offsets (x, y) in [-jitter, jitter]: a clipped random walk."""
    if jitter == 0:
        return np.zeros((n, 2), np.int64)
    steps = rng.choice(np.array([-1, 0, 0, 1]), size=(n, 2))
    walk = np.cumsum(steps, axis=0) + rng.integers(-jitter, jitter + 1, size=2)
    # reflect into range so the walk keeps moving instead of sticking to the limits
    period = 4 * jitter
    walk = np.mod(walk + jitter, period)
    return np.where(walk > 2 * jitter, period - walk, walk) - jitter


def _draw(bg: np.ndarray, shake: np.ndarray, noise: np.ndarray, actors: list[_Actor],
          sl: slice, f: np.ndarray, cfg: WorldConfig) -> np.ndarray:
    """uint8 (N, 3, H, W) frames ``sl`` of the actors' tracks. f: (N,) frame times of the slice;
    shake: (N, 2); noise: (N, H, W) float32 pixel noise shared by the channels."""
    size, j = cfg.size, cfg.jitter
    # camera shake moves the whole scene by (sx, sy): crop the padded background accordingly
    rows = (np.arange(size)[None, :] + j - shake[:, 1:2])  # (N, H)
    cols = (np.arange(size)[None, :] + j - shake[:, 0:1])  # (N, W)
    img = bg[:, rows[:, :, None], cols[:, None, :]]  # (3, N, H, W)
    img = np.ascontiguousarray(img.transpose(1, 0, 2, 3))
    img += noise[:, None]
    grid = np.arange(size, dtype=np.float32) + 0.5
    for actor in actors:  # drawn in order: later actors occlude earlier ones
        t = actor.track
        cx = (t.cx[sl] * size + shake[:, 0]).astype(np.float32)
        cy = (t.cy[sl] * size + shake[:, 1]).astype(np.float32)
        rad = (t.rad[sl] * size).astype(np.float32)
        vis = t.vis[sl].astype(np.float32)
        # only the rows/cols the actor ever touches in this slice
        y0 = max(0, int(np.floor((cy - rad).min())) - 2)
        y1 = min(size, int(np.ceil((cy + rad).max())) + 3)
        x0 = max(0, int(np.floor((cx - rad).min())) - 2)
        x1 = min(size, int(np.ceil((cx + rad).max())) + 3)
        if y0 >= y1 or x0 >= x1 or not vis.any():
            continue
        dx = grid[None, None, x0:x1] - cx[:, None, None]
        dy = grid[None, y0:y1, None] - cy[:, None, None]
        sd = _signed_distance(actor.shape, dx, dy, rad[:, None, None])
        alpha = np.clip(0.5 - sd / EDGE_PX, 0.0, 1.0) * vis[:, None, None]
        pulse = _pulse(f, t.events, max(0, round(PULSE_HOLD_S * cfg.fps) - 1)).astype(np.float32)
        base = COLOURS[actor.colour]
        colour = base[None, :] + (1.0 - base[None, :]) * (PULSE_GAIN * pulse[:, None])  # (N, 3)
        region = img[:, :, y0:y1, x0:x1]
        region += alpha[:, None] * (colour[:, :, None, None] - region)
    np.clip(img, 0.0, 1.0, out=img)
    return (img * 255.0 + 0.5).astype(np.uint8)


def _boxes(track: Track, shake: np.ndarray, size: int) -> np.ndarray:
    """(N, 4) float32 normalised x1, y1, x2, y2 clipped to [0, 1] (shake included)."""
    cx = track.cx + shake[:, 0] / size
    cy = track.cy + shake[:, 1] / size
    box = np.stack([cx - track.rad, cy - track.rad, cx + track.rad, cy + track.rad], axis=1)
    return np.clip(box, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------- planning


def _check_seed(seed: int, index: int) -> None:
    if seed < 0 or index < 0:
        raise ConfigError(f"synthetic seed and index must be >= 0, got seed={seed} index={index}")


# Bump when rendering changes, so caches of written worlds (synthetic/cache.py) are rebuilt.
WORLD_VERSION = 4
ACCENT_GAP_S = (0.25, 0.6)  # min gap, mean extra gap (exponential) between accents


def _with_accents(track: Track, rng: np.random.Generator, f: np.ndarray, fps: float,
                  pad: int) -> tuple[Track, frozenset]:
    """Add aperiodic accents to a sounding actor's events (a flash of its body + a sound).

    Action events are periodic (bounces, orbits, flashes at a fixed period), so audio shifted by
    about a period looks in sync: on its own the world would not teach synchronisation. Accents
    come at random gaps, drawn as one sequence from frame -pad onwards, so every window of the
    same clip sees the same accents.
    """
    hi, times, t = float(f.max()), [], -pad / fps
    while True:
        t += ACCENT_GAP_S[0] + rng.exponential(ACCENT_GAP_S[1])
        if t * fps > hi:
            break
        times.append(int(round(t * fps)))
    # keep accents apart from action events, so each event stays a separate flash and sound
    act = track.events.astype(np.int64)
    apart = max(3, int(math.ceil(PULSE_HOLD_S * fps)) + 2)  # its flash must end first
    def visible(e: int) -> bool:  # an accent on an invisible actor would be a sound unseen
        k = int(round(e - f[0]))
        return not 0 <= k < len(f) or (track.vis[k] > 0.5 and track.vis[max(k - 1, 0)] > 0.5)

    accents = np.array([e for e in times if e >= f.min() - pad and visible(e)
                        and (len(act) == 0 or np.abs(act - e).min() >= apart)], dtype=np.int64)
    events = np.unique(np.concatenate([track.events.astype(np.int64), accents]))
    own = frozenset(accents.tolist()) - frozenset(track.events.astype(np.int64).tolist())
    return Track(track.cx, track.cy, track.rad, track.vis, events, track.kind), own


def _pick_actors(rng: np.random.Generator, cfg: WorldConfig, label: int
                 ) -> tuple[list[tuple[str, int, int, float]], list[tuple[str, int, int, float]]]:
    """(shape, colour, action, half size) of the sounding actors and of the distractors."""
    n_act = int(rng.integers(cfg.min_actors, cfg.max_actors + 1))
    n_dis = int(rng.integers(0, cfg.max_distractors + 1))
    others = [a for a in range(len(ACTIONS)) if a != label]
    actions = [label] + [int(a) for a in rng.permutation(others)[: n_act - 1]]
    colours = rng.permutation(len(COLOURS))[:n_act]  # distinct pitches among sounding actors
    shapes = rng.integers(0, len(SHAPES), size=n_act)
    # actor 0 (the clip's action) is drawn larger, so "the" action of a clip is salient
    sizes = [rng.uniform(0.11, 0.15)] + [rng.uniform(0.08, 0.12) for _ in range(n_act - 1)]
    sounding = [(SHAPES[int(s)], int(c), a, float(r))
                for s, c, a, r in zip(shapes, colours, actions, sizes)]
    distractors = [(SHAPES[int(rng.integers(len(SHAPES)))], int(rng.integers(len(COLOURS))),
                    int(rng.integers(len(ACTIONS))), float(rng.uniform(0.06, 0.1)))
                   for _ in range(n_dis)]
    return sounding, distractors


def _speed(track: Track, fps: float) -> np.ndarray:
    """(N,) speed in frame-widths per second (centre motion plus size change)."""
    if len(track.cx) < 2:
        return np.zeros_like(track.cx)
    d = np.hypot(np.gradient(track.cx), np.gradient(track.cy)) + 2 * np.abs(np.gradient(track.rad))
    return d * fps


def _stem(actor: _Actor, f: np.ndarray, fps: float, start_s: float, n_samples: int,
          sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """(S,) float32 isolated audio of one sounding actor over the window starting at start_s."""
    shape_i = SHAPES.index(actor.shape)
    timbre, pitch = TIMBRES[shape_i], PITCHES[actor.colour]
    t = actor.track
    sample_t = start_s + np.arange(n_samples) / sample_rate
    out = hum(timbre, pitch, _speed(t, fps), 1.0 - t.cy, t.vis, f / fps, sample_t, rng)
    onsets = np.round((t.events / fps - start_s) * sample_rate).astype(np.int64)
    kernel = event_kernel(timbre, pitch, sample_rate, rng)
    out += place_events(kernel, onsets, np.ones(len(onsets)), n_samples)
    return out


def _mix(stems: np.ndarray, rng: np.random.Generator, level: float
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mixture (1, S), stems (A, S), noise (1, S)), all scaled so |mixture| <= 0.9."""
    noise = (rng.standard_normal((1, stems.shape[1]), dtype=np.float32) * level)
    mixture = stems.sum(axis=0, keepdims=True) + noise
    peak = float(np.abs(mixture).max()) if mixture.size else 0.0
    if peak > 0.9:
        gain = np.float32(0.9 / peak * 0.999)
        stems, noise = stems * gain, noise * gain
        mixture = stems.sum(axis=0, keepdims=True) + noise
    return mixture.astype(np.float32), stems.astype(np.float32), noise.astype(np.float32)


# ---------------------------------------------------------------- public


def render_clip(seed: int, index: int, *, cfg: WorldConfig = WorldConfig(),
                label: int | None = None, start_s: float = 0.0) -> dict[str, Any]:
    """Render clip ``index`` of world ``seed``: the window ``[start_s, start_s + duration_s)``.

    The motion, the events and the accents of a (seed, index) pair do not depend on ``start_s``,
    so windows of the same clip line up in time; their waveforms are not equal sample for sample
    (the noise, the hum's starting phase and the mixture's peak scaling are drawn per window).
    Returns numpy arrays (default_collate turns them
    into tensors), with A sounding actors, D distractors, T = round(duration_s * fps),
    S = round(duration_s * sample_rate):

    - ``video`` uint8 (T, 3, H, W); ``audio`` float32 (1, S) mixture, peak <= 0.9;
      ``stems`` float32 (A, S) isolated audio per sounding actor; ``noise`` float32 (1, S)
      background noise: ``audio == stems.sum(0) + noise``;
    - ``boxes`` float32 (T, A, 4) normalised x1, y1, x2, y2 per sounding actor and frame (also when
      the actor is blinked off: see ``visible`` bool (T, A)); ``actor_actions`` int64 (A,);
      ``actor_shapes`` list[str]; ``distractor_boxes`` (T, D, 4), ``distractor_actions`` (D,);
    - ``label`` int, the action of actor 0 (default ``index % len(ACTIONS)``, so N * K clips are
      balanced); the other actors do other actions;
    - ``events``: list of ``{"time_s", "frame", "actor", "kind"}`` for the sounding actors' events
      in the clip, time in seconds from the clip's first frame: the visual event is on that frame
      (the frame at ``time_s``, or within half a frame of it when ``start_s`` is off the frame
      grid) and the sound onset on sample ``round(time_s * sample_rate)``;
    - ``fps``, ``sample_rate``, ``clip_start_s``, ``video_id`` (``synth_<seed>_<index:06d>``),
      ``offset_s`` = 0.0 (true audio offset), ``seed``, ``index``.
    """
    _check_seed(seed, index)
    label = index % len(ACTIONS) if label is None else int(label)
    if not 0 <= label < len(ACTIONS):
        raise ConfigError(f"label must be in [0, {len(ACTIONS)}), got {label}")
    fps, sr, size = float(cfg.fps), int(cfg.sample_rate), cfg.size
    n_frames = int(round(cfg.duration_s * fps))
    n_samples = int(round(cfg.duration_s * sr))
    nominal = cfg.duration_s * fps  # bounded actions play over [0, nominal] frames

    plan = np.random.default_rng([seed, index])
    # noise differs per window; the plan does not
    noise_rng = np.random.default_rng([seed, index, 1, int(round(start_s * 1e6)) % 2**32])
    bg = _background(plan, cfg)
    sounding, distractors = _pick_actors(plan, cfg, label)
    # one frame of margin each side, for speeds at the edges
    f_ext = start_s * fps + np.arange(-1, n_frames + 1, dtype=np.float64)
    pad = int(math.ceil(EVENT_S * fps)) + 1  # events this far back still ring into the window
    actors = []
    for (shape, colour, action, r), is_sounding in (
            [(d, False) for d in distractors] + [(s, True) for s in sounding]):
        track = action_track(ACTIONS[action], plan, f_ext, n_frames=nominal, fps=fps, r=r,
                             pad=pad)
        accents = frozenset()
        if is_sounding:
            track, accents = _with_accents(
                track, np.random.default_rng([seed, index, 7, len(actors)]), f_ext, fps, pad)
        actors.append(_Actor(shape, colour, action, track, is_sounding, accents))
    sound_actors = [a for a in actors if a.sounding]

    stems = np.stack([_stem(a, f_ext, fps, start_s, n_samples, sr, noise_rng)
                      for a in sound_actors])
    audio, stems, noise = _mix(stems, noise_rng, cfg.audio_noise)

    inner = slice(1, n_frames + 1)
    f = f_ext[inner]
    shake = _shake(noise_rng, n_frames, cfg.jitter)
    pix_noise = noise_rng.standard_normal((n_frames, size, size), dtype=np.float32) * cfg.noise
    draw_order = [a for a in actors if not a.sounding] + sound_actors[::-1]  # actor 0 on top
    video = _draw(bg, shake, pix_noise, draw_order, inner, f, cfg)

    def crop(t: Track) -> Track:
        return Track(t.cx[inner], t.cy[inner], t.rad[inner], t.vis[inner], t.events, t.kind)

    def boxes_of(group: list[_Actor]) -> np.ndarray:
        if not group:
            return np.zeros((n_frames, 0, 4), np.float32)
        return np.stack([_boxes(crop(a.track), shake, size) for a in group], axis=1)

    first = start_s * fps
    events = []
    for i, a in enumerate(sound_actors):
        for e in a.track.events.tolist():
            # the frame that shows the event: _pulse lights frames from half a frame before it
            # (k is whole when start_s is on the frame grid; then frame == k)
            frame = int(math.ceil(e - first - 0.5 - 1e-6))
            if 0 <= frame <= n_frames - 1:
                kind = "accent" if e in a.accents else a.track.kind
                events.append({"time_s": e / fps - start_s, "frame": frame,
                               "actor": i, "kind": kind})
    events.sort(key=lambda ev: (ev["time_s"], ev["actor"]))

    return {
        "video": video,
        "audio": audio,
        "stems": stems,
        "noise": noise,
        "boxes": boxes_of(sound_actors),
        "visible": np.stack([crop(a.track).vis > 0.5 for a in sound_actors], axis=1),
        "actor_actions": np.array([a.action for a in sound_actors], dtype=np.int64),
        "actor_shapes": [a.shape for a in sound_actors],
        "distractor_boxes": boxes_of([a for a in actors if not a.sounding]),
        "distractor_actions": np.array([a.action for a in actors if not a.sounding], np.int64),
        "label": label,
        "events": events,
        "fps": fps,
        "sample_rate": sr,
        "clip_start_s": float(start_s),
        "video_id": f"synth_{seed}_{index:06d}",
        "offset_s": 0.0,
        "seed": seed,
        "index": index,
    }


def _plan_segments(rng: np.random.Generator, duration_s: float, fps: float,
                   min_seg_s: float, max_seg_s: float) -> list[tuple[int, int, int]]:
    """(start_frame, end_frame, label) of action segments with background gaps between them."""
    segs: list[tuple[int, int, int]] = []
    t = rng.uniform(0.5, 3.0)
    while True:
        length = rng.uniform(min_seg_s, max_seg_s)
        if t + length > duration_s - 0.5:
            break
        a, b = int(round(t * fps)), int(round((t + length) * fps))
        segs.append((a, b, int(rng.integers(len(ACTIONS)))))
        t += length + rng.uniform(1.0, 5.0)
    return segs


def render_long(seed: int, index: int, *, duration_s: float = 60.0,
                cfg: WorldConfig = WorldConfig(), min_seg_s: float = 2.0,
                max_seg_s: float = 8.0) -> dict[str, Any]:
    """Render an untrimmed video: one sounding performer doing a sequence of action segments with
    background (the performer idle and quiet) between them, plus silent distractors doing periodic
    actions throughout. ``cfg.duration_s`` is ignored in favour of ``duration_s``.

    Returns the keys of :func:`render_clip` for one sounding actor (A = 1; no ``label`` or
    ``actor_actions``) plus ``segments``: list of ``(start_s, end_s, label)`` on frame times and
    ``frame_labels`` int64 (T,) with -1 for background. Events come only from segments.
    """
    _check_seed(seed, index)
    fps, sr, size = float(cfg.fps), int(cfg.sample_rate), cfg.size
    if duration_s < max(4.0, min_seg_s + 1.5):
        raise ConfigError(f"render_long needs duration_s >= {max(4.0, min_seg_s + 1.5)} s to "
                          f"hold one action segment, got {duration_s}")
    n_frames = int(round(duration_s * fps))
    n_samples = int(round(duration_s * sr))
    plan = np.random.default_rng([seed, index, 2])
    noise_rng = np.random.default_rng([seed, index, 3])
    bg = _background(plan, cfg)
    segs = _plan_segments(plan, duration_s, fps, min_seg_s, min(max_seg_s, duration_s - 2.0))
    if not segs:  # short videos: one segment in the middle
        a = int(round(0.5 * fps))
        segs = [(a, min(n_frames - a, a + int(round(min_seg_s * fps))),
                 int(plan.integers(len(ACTIONS))))]
    shape, colour = SHAPES[int(plan.integers(len(SHAPES)))], int(plan.integers(len(COLOURS)))
    r = float(plan.uniform(0.11, 0.15))

    f_ext = np.arange(-1, n_frames + 1, dtype=np.float64)
    cx, cy = np.full_like(f_ext, np.nan), np.full_like(f_ext, np.nan)
    rad, vis = np.full_like(f_ext, r), np.ones_like(f_ext)
    events, frame_labels = [], np.full(n_frames, -1, np.int64)
    for a, b, lab in segs:
        local = np.arange(b - a, dtype=np.float64)
        tr = action_track(ACTIONS[lab], plan, local, n_frames=b - a - 1, fps=fps, r=r)
        sl = slice(a + 1, b + 1)  # f_ext[i] is frame i - 1
        cx[sl], cy[sl], rad[sl], vis[sl] = tr.cx, tr.cy, tr.rad, tr.vis
        events += [(a + int(e), tr.kind) for e in tr.events.tolist() if 0 <= e < b - a]
        frame_labels[a:b] = lab
    # idle: hold the pose of the next segment's start (or of the last segment's end)
    known = ~np.isnan(cx)
    idx = np.where(known, np.arange(len(cx)), len(cx))
    nxt = np.minimum.accumulate(idx[::-1])[::-1]
    last = np.maximum.accumulate(np.where(known, np.arange(len(cx)), -1))
    src = np.where(nxt < len(cx), nxt, last)
    idle = ~known
    cx, cy, rad = cx[src], cy[src], np.where(idle, r, rad[src])
    ev_frames = np.array([e for e, _ in events], dtype=np.int64)
    performer = _Actor(shape, colour, segs[0][2], Track(cx, cy, rad, vis, ev_frames, "mixed"), True)

    distractors = []
    for _ in range(int(plan.integers(0, cfg.max_distractors + 1))):
        act = PERIODIC[int(plan.integers(len(PERIODIC)))]
        tr = action_track(act, plan, f_ext, n_frames=n_frames, fps=fps,
                          r=float(plan.uniform(0.06, 0.1)))
        distractors.append(_Actor(SHAPES[int(plan.integers(len(SHAPES)))],
                                  int(plan.integers(len(COLOURS))), ACTIONS.index(act), tr, False))

    stem = _stem(performer, f_ext, fps, 0.0, n_samples, sr, noise_rng)
    audio, stems, noise = _mix(stem[None], noise_rng, cfg.audio_noise)

    shake = _shake(noise_rng, n_frames, cfg.jitter)
    video = np.empty((n_frames, 3, size, size), np.uint8)
    for c0 in range(0, n_frames, CHUNK_FRAMES):
        c1 = min(n_frames, c0 + CHUNK_FRAMES)
        pix = noise_rng.standard_normal((c1 - c0, size, size), dtype=np.float32) * cfg.noise
        video[c0:c1] = _draw(bg, shake[c0:c1], pix, distractors + [performer],
                             slice(c0 + 1, c1 + 1), f_ext[c0 + 1:c1 + 1], cfg)

    inner = slice(1, n_frames + 1)
    perf = Track(cx[inner], cy[inner], rad[inner], vis[inner], ev_frames, "mixed")
    dis_boxes = [_boxes(Track(d.track.cx[inner], d.track.cy[inner], d.track.rad[inner],
                              d.track.vis[inner], d.track.events, d.track.kind), shake, size)
                 for d in distractors]
    return {
        "video": video,
        "audio": audio,
        "stems": stems,
        "noise": noise,
        "boxes": _boxes(perf, shake, size)[:, None],
        "visible": (perf.vis > 0.5)[:, None],
        "actor_shapes": [shape],
        "distractor_boxes": (np.stack(dis_boxes, axis=1) if dis_boxes
                             else np.zeros((n_frames, 0, 4), np.float32)),
        "distractor_actions": np.array([d.action for d in distractors], np.int64),
        "segments": [(a / fps, b / fps, lab) for a, b, lab in segs],
        "frame_labels": frame_labels,
        "events": [{"time_s": e / fps, "frame": e, "actor": 0, "kind": k} for e, k in events],
        "fps": fps,
        "sample_rate": sr,
        "clip_start_s": 0.0,
        "video_id": f"synth_long_{seed}_{index:06d}",
        "offset_s": 0.0,
        "seed": seed,
        "index": index,
    }
