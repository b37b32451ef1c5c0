"""How actors sound: timbre follows shape, pitch follows colour, events ring, motion hums.

Each sounding actor's stem is a quiet continuous *hum* whose loudness follows its speed and whose
pitch follows its height (so audio carries motion), plus a short decaying tone at each visual event
whose onset is the event's exact sample (so audio-visual synchrony is learnable to the sample).
"""
from __future__ import annotations

import numpy as np

SHAPES: list[str] = ["circle", "square", "triangle", "ring", "cross", "diamond"]
# timbre of each shape, same order as SHAPES
TIMBRES: list[str] = ["sine", "square", "saw", "fm", "noise", "triangle"]
# RGB in [0, 1]; actors stand out from the muted background
COLOURS: np.ndarray = np.array([
    # clearly distinct hues but not fully saturated: yuv420p halves chroma resolution, and
    # saturated edges would dominate the codec error
    [0.84, 0.24, 0.24],  # red
    [0.24, 0.76, 0.28],  # green
    [0.28, 0.39, 0.88],  # blue
    [0.88, 0.80, 0.20],  # yellow
    [0.84, 0.28, 0.84],  # magenta
    [0.20, 0.84, 0.84],  # cyan
], dtype=np.float32)
# pitch (Hz) of each colour's event tone; the hum sits an octave lower
PITCHES: list[float] = [330.0, 392.0, 494.0, 587.0, 698.0, 880.0]

EVENT_S = 0.15  # event tone length
EVENT_DECAY_S = 0.035
HUM_LEVEL = 0.04
EVENT_LEVEL = 0.5
NOISE_SMOOTH = 4  # box-filter width (samples) of the noise timbre


def timbre_wave(timbre: str, phase: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Periodic waveform of ``timbre`` at ``phase`` (radians), values in about [-1, 1]."""
    if timbre == "sine":
        return np.sin(phase)
    if timbre == "square":
        return np.tanh(4.0 * np.sin(phase))
    if timbre == "saw":
        return 0.6 * (np.sin(phase) - np.sin(2 * phase) / 2 + np.sin(3 * phase) / 3)
    if timbre == "fm":
        return np.sin(phase + 1.5 * np.sin(2 * phase))
    if timbre == "triangle":
        return (2 / np.pi) * np.arcsin(np.sin(phase))
    if timbre == "noise":  # noise amplitude-modulated at the pitch: pitched, but breathy
        # box-filtered (low-passed): lossy codecs keep a band-limited noise nearly intact
        white = rng.standard_normal(len(phase) + NOISE_SMOOTH - 1)
        c = np.concatenate([[0.0], np.cumsum(white)])
        noise = (c[NOISE_SMOOTH:] - c[:-NOISE_SMOOTH]) / np.sqrt(NOISE_SMOOTH)
        return 0.5 * noise * (0.6 + 0.4 * np.sin(phase))
    raise ValueError(f"unknown timbre {timbre!r}")


def event_kernel(timbre: str, pitch: float, sample_rate: int,
                 rng: np.random.Generator) -> np.ndarray:
    """(L,) float32 decaying tone that starts at full level on its first sample."""
    t = np.arange(int(round(EVENT_S * sample_rate)), dtype=np.float64) / sample_rate
    env = np.exp(-t / EVENT_DECAY_S)
    env[-64:] *= np.linspace(1.0, 0.0, 64)  # no click at the end
    # sin(phase + pi/2) starts at its peak, so the onset is one sharp sample
    wave = timbre_wave(timbre, 2 * np.pi * pitch * t + np.pi / 2, rng)
    return (EVENT_LEVEL * env * wave).astype(np.float32)


def hum(timbre: str, pitch: float, speed: np.ndarray, height: np.ndarray, vis: np.ndarray,
        frame_t: np.ndarray, sample_t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(S,) float32 continuous tone that follows motion.

    speed, height, vis: (N,) per frame at times frame_t (s): speed in frame-widths per second,
    height = 1 - cy. sample_t: (S,) audio sample times (s). Louder when faster; higher when higher.
    """
    amp_f = HUM_LEVEL * (0.25 + 0.75 * np.clip(speed / 0.6, 0.0, 1.0)) * (0.3 + 0.7 * vis)
    freq_f = 0.5 * pitch * 2.0 ** (height - 0.5)
    amp = np.interp(sample_t, frame_t, amp_f)
    freq = np.interp(sample_t, frame_t, freq_f)
    dt = sample_t[1] - sample_t[0] if len(sample_t) > 1 else 1.0
    phase = 2 * np.pi * (np.cumsum(freq) * dt + rng.uniform())
    return (amp * timbre_wave(timbre, phase, rng)).astype(np.float32)


def place_events(kernel: np.ndarray, onsets: np.ndarray, gains: np.ndarray,
                 n_samples: int) -> np.ndarray:
    """(S,) float32 with ``kernel * gain`` starting at each onset sample (onsets may be < 0)."""
    out = np.zeros(n_samples, dtype=np.float32)
    length = len(kernel)
    for onset, gain in zip(onsets.tolist(), gains.tolist()):
        a, b = max(onset, 0), min(onset + length, n_samples)
        if a < b:
            out[a:b] += gain * kernel[a - onset:b - onset]
    return out
