"""Solo performances for the synthetic MUSIC stand-in: one sounding "instrument" per video.

Each of the 11 MUSIC-11 instruments is an actor with a fixed look (a (shape, colour) pair no other
instrument has) and its own voice (a timbre and a base pitch no other instrument has), so what an
instrument sounds like can be told from what it looks like: visually-guided separation is
learnable. The world's own shape -> timbre and colour -> pitch tables give only 6 voices; the
instruments here use the same 6 waveforms with 11 distinct pitches (2.9 octaves, 3-5 semitones
apart), and instruments that share a waveform sit at least 3 places apart in pitch.

An instrument plays throughout its video: a sustained note in its own register that follows its
motion (louder when it moves faster, bent up a little when it is higher) plus a note at every
visual event (periodic
impacts / reversals / orbit tops of its motion, and aperiodic accents that flash its body), each on
the exact audio sample of its frame. Silent distractors (smaller, with looks no instrument has)
move too. A video is a pure function of ``(seed, index, instrument)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from avssl.errors import ConfigError
from avssl.data.synthetic.motion import ACTIONS, Track, action_track
from avssl.data.synthetic.sound import (COLOURS, EVENT_S, HUM_LEVEL, SHAPES, event_kernel,
                                        place_events, timbre_wave)
from avssl.data.synthetic.world import (WorldConfig, _Actor, _background, _boxes, _draw, _mix,
                                        _shake, _speed, _with_accents)


@dataclass(frozen=True)
class Instrument:
    """Look (``shape`` in SHAPES, ``colour`` index into COLOURS) and voice (``timbre`` a
    :func:`~avssl.data.synthetic.sound.timbre_wave` name, ``pitch`` of its notes in Hz)."""

    name: str
    shape: str
    colour: int
    timbre: str
    pitch: float


# MUSIC-11 names, sorted (label k = INSTRUMENTS[k]). Voices by register, low to high: tuba 131,
# cello 175, acoustic_guitar 220, saxophone 262, clarinet 311, trumpet 370, accordion 440,
# erhu 523, violin 659, xylophone 784, flute 988 Hz.
_VOICES: dict[str, tuple[str, float]] = {
    "accordion": ("square", 440.0),
    "acoustic_guitar": ("fm", 220.0),
    "cello": ("saw", 175.0),
    "clarinet": ("triangle", 311.0),  # odd harmonics, like the real one
    "erhu": ("fm", 523.0),
    "flute": ("noise", 988.0),  # breathy
    "saxophone": ("square", 262.0),
    "trumpet": ("saw", 370.0),
    "tuba": ("triangle", 131.0),
    "violin": ("saw", 659.0),
    "xylophone": ("sine", 784.0),
}
INSTRUMENTS: list[str] = sorted(_VOICES)


def _look(k: int) -> tuple[str, int]:
    """(shape, colour) of instrument k: the 6 diagonal pairs, then 5 off-diagonal ones, so every
    shape and every colour is used by at most two instruments and no pair twice."""
    s = k % len(SHAPES)
    c = (k + k // len(SHAPES)) % len(COLOURS)
    return SHAPES[s], c


INSTRUMENT_SPECS: list[Instrument] = [
    Instrument(name, *_look(k), *_VOICES[name]) for k, name in enumerate(INSTRUMENTS)]
_INSTRUMENT_LOOKS = {(i.shape, i.colour) for i in INSTRUMENT_SPECS}
assert len(_INSTRUMENT_LOOKS) == len(INSTRUMENTS)
# distractors never look like an instrument, so a silent look stays silent everywhere
DISTRACTOR_LOOKS: list[tuple[str, int]] = [
    (s, c) for s in SHAPES for c in range(len(COLOURS)) if (s, c) not in _INSTRUMENT_LOOKS]

# motions that keep the performer visible and sounding the whole clip (no "flash": it hides the
# actor most of the time; no bounded slides: they stop half-way)
PLAYING: list[str] = ["orbit_cw", "orbit_ccw", "bounce", "zigzag", "wobble"]
SUSTAIN_LEVEL = 3.0 * HUM_LEVEL  # instruments sustain notes: louder than the world's hum
VIBRATO_SEMITONES = 0.5  # the sustained note bends this much up / down with the height


def sustain(inst: Instrument, speed: np.ndarray, height: np.ndarray, vis: np.ndarray,
            frame_t: np.ndarray, sample_t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(S,) float32 sustained note at the instrument's pitch that follows its motion.

    Like the world's hum (louder when faster), but it stays in the instrument's own register: the
    height only bends it by +-VIBRATO_SEMITONES, where the hum spans an octave and would cover the
    neighbouring instruments. speed, height, vis: (N,) per frame at frame_t (s); sample_t (S,).
    """
    amp_f = SUSTAIN_LEVEL * (0.25 + 0.75 * np.clip(speed / 0.6, 0.0, 1.0)) * (0.3 + 0.7 * vis)
    freq_f = inst.pitch * 2.0 ** (VIBRATO_SEMITONES / 6.0 * (height - 0.5))
    amp = np.interp(sample_t, frame_t, amp_f)
    freq = np.interp(sample_t, frame_t, freq_f)
    dt = sample_t[1] - sample_t[0] if len(sample_t) > 1 else 1.0
    phase = 2 * np.pi * (np.cumsum(freq) * dt + rng.uniform())
    return (amp * timbre_wave(inst.timbre, phase, rng)).astype(np.float32)


def instrument_stem(inst: Instrument, track: Track, f: np.ndarray, fps: float, n_samples: int,
                    sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """(S,) float32 audio of ``inst`` following ``track`` (sampled at frames ``f``), from time 0:
    its sustained note plus a note at each event."""
    sample_t = np.arange(n_samples) / sample_rate
    out = sustain(inst, _speed(track, fps), 1.0 - track.cy, track.vis, f / fps, sample_t, rng)
    onsets = np.round(track.events / fps * sample_rate).astype(np.int64)
    kernel = event_kernel(inst.timbre, inst.pitch, sample_rate, rng)
    return out + place_events(kernel, onsets, np.ones(len(onsets)), n_samples)


def instrument_index(instrument: int | str) -> int:
    if isinstance(instrument, str):
        if instrument not in INSTRUMENTS:
            raise ConfigError(f"unknown instrument {instrument!r}; expected one of "
                              f"{', '.join(INSTRUMENTS)}")
        return INSTRUMENTS.index(instrument)
    if not 0 <= int(instrument) < len(INSTRUMENTS):
        raise ConfigError(f"instrument index must be in [0, {len(INSTRUMENTS)}), got {instrument}")
    return int(instrument)


def render_solo(seed: int, index: int, instrument: int | str, *,
                cfg: WorldConfig = WorldConfig()) -> dict[str, Any]:
    """Render solo video ``index`` of world ``seed`` in which ``instrument`` plays alone.

    T = round(duration_s * fps), S = round(duration_s * sample_rate), D distractors. Returns
    ``video`` uint8 (T, 3, H, W); ``audio`` float32 (1, S) (peak <= 0.9); ``stems`` (1, S) the
    instrument alone and ``noise`` (1, S), ``audio == stems.sum(0) + noise``; ``boxes`` (T, 1, 4)
    and ``visible`` (T, 1) of the instrument; ``distractor_boxes`` (T, D, 4); ``events`` (list of
    ``{"time_s", "frame", "kind"}``); ``label`` (index into INSTRUMENTS), ``instrument``,
    ``action`` (its motion), ``fps``, ``sample_rate``, ``seed``, ``index``.
    """
    if seed < 0 or index < 0:
        raise ConfigError(f"synthetic seed and index must be >= 0, got seed={seed} index={index}")
    label = instrument_index(instrument)
    inst = INSTRUMENT_SPECS[label]
    fps, sr, size = float(cfg.fps), int(cfg.sample_rate), cfg.size
    n_frames = int(round(cfg.duration_s * fps))
    n_samples = int(round(cfg.duration_s * sr))
    # streams apart from render_clip's ([seed, index], [seed, index, 1..3, 7]) ones
    plan = np.random.default_rng([seed, index, 10, label])
    noise_rng = np.random.default_rng([seed, index, 11, label])
    bg = _background(plan, cfg)
    f_ext = np.arange(-1, n_frames + 1, dtype=np.float64)  # one frame of margin for speeds
    pad = int(math.ceil(EVENT_S * fps)) + 1  # events this far back still ring into the clip

    distractors = []
    for _ in range(int(plan.integers(0, cfg.max_distractors + 1))):
        shape, colour = DISTRACTOR_LOOKS[int(plan.integers(len(DISTRACTOR_LOOKS)))]
        action = ACTIONS[int(plan.integers(len(ACTIONS)))]
        tr = action_track(action, plan, f_ext, n_frames=n_frames, fps=fps,
                          r=float(plan.uniform(0.06, 0.1)), pad=pad)
        distractors.append(_Actor(shape, colour, ACTIONS.index(action), tr, False))
    action = PLAYING[int(plan.integers(len(PLAYING)))]
    track = action_track(action, plan, f_ext, n_frames=n_frames, fps=fps,
                         r=float(plan.uniform(0.12, 0.15)), pad=pad)
    track, accents = _with_accents(track, np.random.default_rng([seed, index, 12, label]),
                                   f_ext, fps, pad)
    player = _Actor(inst.shape, inst.colour, ACTIONS.index(action), track, True, accents)

    stem = instrument_stem(inst, track, f_ext, fps, n_samples, sr, noise_rng)
    audio, stems, noise = _mix(stem[None], noise_rng, cfg.audio_noise)

    inner = slice(1, n_frames + 1)
    shake = _shake(noise_rng, n_frames, cfg.jitter)
    pix = noise_rng.standard_normal((n_frames, size, size), dtype=np.float32) * cfg.noise
    video = _draw(bg, shake, pix, distractors + [player], inner, f_ext[inner], cfg)

    def crop(t: Track) -> Track:
        return Track(t.cx[inner], t.cy[inner], t.rad[inner], t.vis[inner], t.events, t.kind)

    events = [{"time_s": e / fps, "frame": int(e),
               "kind": "accent" if e in accents else track.kind}
              for e in track.events.tolist() if 0 <= e <= n_frames - 1]
    dis_boxes = [_boxes(crop(d.track), shake, size) for d in distractors]
    return {
        "video": video,
        "audio": audio,
        "stems": stems,
        "noise": noise,
        "boxes": _boxes(crop(track), shake, size)[:, None],
        "visible": (crop(track).vis > 0.5)[:, None],
        "distractor_boxes": (np.stack(dis_boxes, axis=1) if dis_boxes
                             else np.zeros((n_frames, 0, 4), np.float32)),
        "events": events,
        "label": label,
        "instrument": inst.name,
        "action": action,
        "fps": fps,
        "sample_rate": sr,
        "clip_start_s": 0.0,
        "video_id": f"synth_solo_{seed}_{index:06d}",
        "offset_s": 0.0,
        "seed": seed,
        "index": index,
    }
