"""Sliding-window features of untrimmed videos (temporal localization).

Feature ``t`` of a video covers ``[t * stride_s, t * stride_s + window_s)`` with ``window_s`` the
model's clip length, for ``t = 0 .. T-1``, ``T = max(1, floor((duration - window_s) / stride_s)
+ 1)``. Windows are decoded in chunks of consecutive windows (one decoder call per chunk rather
than one per window, and never a whole long video in memory), transformed like the bench's
clips, encoded, and returned per video as float32 ``(D, T)``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from avssl.bench import features as F
from avssl.data import decoding
from avssl.errors import DataError, DecodeError


def num_windows(duration_s: float, window_s: float, stride_s: float) -> int:
    return max(1, int(math.floor((duration_s - window_s) / stride_s + 1e-9)) + 1)


class WindowChunks(Dataset):
    """Item = up to ``chunk`` consecutive windows of one video.

    ``videos``: records with ``path`` and ``duration_s``. Returns ``video`` (chunk, C, T, H, W)
    and/or ``audio`` (chunk, 1, F, frames) zero-padded past the video's last window, and ``n``.
    """

    def __init__(self, videos: Sequence[Any], spec, stride_s: float, modality: str,
                 chunk: int = 16, timeout_s: float = 60.0):
        self.videos, self.spec, self.stride_s = list(videos), spec, float(stride_s)
        self.modality, self.chunk, self.timeout_s = modality, int(chunk), timeout_s
        self.vt, self.at = spec.video_transform(1), spec.audio_transform()
        self.items: list[tuple[int, int, int]] = []  # (video, first window, count)
        self.counts = []
        for vi, v in enumerate(self.videos):
            try:
                duration = float(v.duration_s)  # probes a file whose duration is not annotated
            except DecodeError as err:
                raise DataError(_cannot_decode(v.path, err)) from err
            n = num_windows(duration, spec.clip_s, self.stride_s)
            self.counts.append(n)
            self.items += [(vi, t, min(self.chunk, n - t)) for t in range(0, n, self.chunk)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        vi, t0, n = self.items[index]
        v, spec = self.videos[vi], self.spec
        start = t0 * self.stride_s
        end = (t0 + n - 1) * self.stride_s + spec.clip_s
        out: dict[str, Any] = {"n": n}
        try:
            if self.modality in ("video", "av"):
                frames = decoding.decode_video(v.path, start, end, fps=spec.fps, size=spec.size,
                                               timeout_s=self.timeout_s)
                per = max(1, round(spec.clip_s * spec.fps))
                clips = []
                for k in range(n):
                    a = round(k * self.stride_s * spec.fps)
                    clip = frames[a:a + per]
                    if len(clip) < per:  # the file ended early: repeat its last frame
                        clip = torch.cat([clip, clip[-1:].expand(per - len(clip), *clip.shape[1:])])
                    clips.append(self.vt(clip))
                out["video"] = _pad(torch.stack(clips), self.chunk)
            if self.modality in ("audio", "av"):
                wav = decoding.decode_audio(v.path, start, end, sample_rate=spec.sample_rate,
                                            if_missing="silence", timeout_s=self.timeout_s)
                per = round(spec.clip_s * spec.sample_rate)
                wins = [wav[:, round(k * self.stride_s * spec.sample_rate):][:, :per]
                        for k in range(n)]
                out["audio"] = _pad(torch.stack([self.at(w) for w in wins]), self.chunk)
        except DecodeError as err:
            raise DataError(_cannot_decode(v.path, err)) from err
        return out


def _cannot_decode(path: str, err: DecodeError) -> str:
    return (f"cannot decode {path} ({err.reason}); pass --skip-bad to leave undecodable videos "
            f"out and report videos used vs expected")


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    if len(x) == size:
        return x
    return torch.cat([x, x.new_zeros(size - len(x), *x.shape[1:])])


def window_features(model, videos, *, stride_s: float, modality: str, batch_size: int = 1,
                    num_workers: int = 0, chunk: int = 16, desc: str = "windows",
                    skip_bad: bool = False) -> list[np.ndarray | None]:
    """Per video float32 (D, T) sliding-window features (see module docstring); with
    ``skip_bad``, None for a video that failed to decode part-way (its other chunks are not
    enough to localize in it)."""
    device = F.state().device
    towers = {m: model.encoder_for(m).to(device).eval()
              for m in (("video", "audio") if modality == "av" else (modality,))}
    ds = WindowChunks(videos, model.spec, stride_s, modality, chunk=chunk)

    def fn(batch):
        feats = []
        for m, enc in towers.items():
            x = batch[m]  # (B, chunk, ...)
            y = enc(x.flatten(0, 1).to(device)).reshape(x.shape[0], x.shape[1], -1)
            feats.append(y)
        return torch.cat(feats, dim=-1)  # (B, chunk, D)

    failed: list[tuple[int, str]] | None = [] if skip_bad else None
    out = F.map_items(ds, fn, batch_size=batch_size, num_workers=num_workers, desc=desc,
                      failed=failed)
    broken = {ds.items[i][0] for i, _ in failed or []}
    per_video: list[list[np.ndarray]] = [[] for _ in ds.videos]
    for (vi, _, n), arr in zip(ds.items, out):
        per_video[vi].append(arr[:n])
    return [None if vi in broken else np.concatenate(p).T.copy()
            for vi, p in enumerate(per_video)]
