"""Audio windows of MUSIC videos with the visual input of each, decoded once into a bank.

A window is ``(video, start_s)``: ``WINDOW`` samples of mono audio at 11,025 Hz from
``start_s`` (zeros past the end of a short file), and the video clip of the model's
``spec.clip_s`` at ``spec.fps`` centred in the window, preprocessed by
``spec.video_transform(1)`` (resize, centre crop, normalise; layout (C, T, H, W)).

Training windows: up to ``max_windows`` starts per video spread evenly over it, at least
``stride_s`` apart (the candidates that mix-and-separate draws from); test windows: one per video,
centred. "It" is the part with sound, on the file's clock (:func:`record_starts`): from the
video's first timestamp to the end of its audio when that ends first, so no window starts before
the video, nor runs past the audio where the sound is long enough. :func:`window_bank` decodes
them with :func:`avssl.bench.features.map_items` (sharded over processes, in order) and, with a
frozen encoder, embeds the clips there and then, so a bank holds (N, D) embeddings instead of
clips; banks are cached in :class:`FeatureCache`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from avssl.bench import features as F
from avssl.bench.separation.spectrogram import SAMPLE_RATE, WINDOW
from avssl.bench.separation.train import WindowBank
from avssl.data import decoding
from avssl.data.datasets.base import clip_span
from avssl.errors import DataError, DecodeError

WINDOW_S = WINDOW / SAMPLE_RATE


def train_starts(duration_s: float, max_windows: int = 4, stride_s: float = 1.0) -> list[float]:
    """Up to ``max_windows`` window starts spread evenly over ``[0, duration - WINDOW_S]``."""
    room = max(0.0, duration_s - WINDOW_S)
    n = min(max_windows, 1 + int(math.floor(room / stride_s + 1e-9)))
    return [float(s) for s in np.linspace(0.0, room, n)] if n > 1 else [0.0]


def test_start(duration_s: float) -> float:
    """The centred window of a video (0 when the video is shorter than a window)."""
    return max(0.0, (duration_s - WINDOW_S) / 2)


def record_starts(rec: Any, part: str, max_windows: int = 4, stride_s: float = 1.0
                  ) -> list[float]:
    """Window starts of a video record (``duration_s``, ``start_s``, ``audio_end_s``) on its
    file's clock: :func:`train_starts` (``part="train"``) or :func:`test_start` (otherwise) over
    its span with sound. A window past the audio's end would be a silent source to separate."""
    span, origin = clip_span(rec.duration_s, {"start_s": rec.start_s,
                                              "audio_end_s": rec.audio_end_s}, needs_sound=True)
    starts = train_starts(span, max_windows, stride_s) if part == "train" else [test_start(span)]
    return [origin + s for s in starts]


class Windows(Dataset):
    """Item ``i`` = window ``items[i] = (record, start_s)``: ``audio`` (WINDOW,) float32 and
    ``video`` (C, T, H, W) float (see module docstring)."""

    def __init__(self, items: Sequence[tuple[Any, float]], spec, timeout_s: float = 60.0):
        self.items, self.spec, self.timeout_s = list(items), spec, timeout_s
        self.vt = spec.video_transform(1)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rec, start = self.items[i]
        spec = self.spec
        try:
            wav = decoding.decode_audio(rec.path, start, start + WINDOW_S, sample_rate=SAMPLE_RATE,
                                        if_missing="silence", timeout_s=self.timeout_s)[0]
            c0 = start + max(0.0, (WINDOW_S - spec.clip_s) / 2)
            frames = decoding.decode_video(rec.path, c0, c0 + spec.clip_s, fps=spec.fps,
                                           size=spec.size, timeout_s=self.timeout_s)
        except DecodeError as err:
            raise DataError(f"cannot decode {rec.path} ({err.reason}); pass --skip-bad to drop "
                            f"unreadable videos") from err
        wav = torch.nn.functional.pad(wav[:WINDOW], (0, max(0, WINDOW - len(wav))))
        return {"audio": wav.float(), "video": self.vt(frames).float()}


def window_bank(items: Sequence[tuple[Any, float]], spec, *, encoder: torch.nn.Module | None,
                groups: Sequence[int], batch_size: int, num_workers: int,
                desc: str, failed: list[tuple[int, str]] | None = None) -> WindowBank:
    """Decode ``items`` into a :class:`WindowBank`; ``encoder`` (frozen) -> ``cond`` are its
    pooled embeddings (N, D), ``None`` -> ``cond`` are the clips (N, C, T, H, W). ``failed``:
    as in :func:`~avssl.bench.features.map_items` (the failed windows' rows are NaN)."""
    ds = Windows(items, spec)
    device = F.state().device
    enc = None if encoder is None else encoder.to(device).eval()
    clip_shape: list[int] = []

    def fn(batch):
        video = batch["video"]
        clip_shape[:] = video.shape[1:]
        cond = video.flatten(1) if enc is None else enc(video.to(device)).cpu()
        # one array per item so map_items can shard and gather it: [cond | audio]
        return torch.cat([cond.float(), batch["audio"]], dim=1)

    out = F.map_items(ds, fn, batch_size=batch_size, num_workers=num_workers, desc=desc,
                      failed=failed)
    cond, audio = out[:, :-WINDOW], out[:, -WINDOW:]
    if enc is None:
        if not clip_shape:  # another process decoded every batch: rebuild the shape
            lost = {i for i, _ in failed or []}
            clip_shape[:] = ds[next(i for i in range(len(ds)) if i not in lost)]["video"].shape
        cond = cond.reshape(len(cond), *clip_shape)
    return WindowBank(torch.from_numpy(np.ascontiguousarray(audio)),
                      torch.from_numpy(np.ascontiguousarray(cond)),
                      np.asarray(groups, np.int64))
