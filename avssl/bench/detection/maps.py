"""Temporally pooled feature maps of clips centred on keyframes: what the RoI head pools from.

Keyframe ``i`` gives the clip ``[time_s - clip_s / 2, time_s + clip_s / 2)`` at ``spec.fps``,
resized to a ``size x size`` square (the whole frame: boxes are normalised to it, so no crop may
cut a person off) and normalised like ``spec.video_transform``; the encoder's
``forward_features`` map ``(C, T', H', W')`` is averaged over ``T'`` -> float32 ``(C, H', W')``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from avssl.bench import features as F
from avssl.bench.detection.head import roi_max, rois_from_boxes
from avssl.data import decoding
from avssl.errors import ConfigError, DataError, DecodeError


def detection_size(spec) -> int:
    """Side of the square clips the detector sees: twice the model's crop, so that stride-32
    encoders (ResNets, I3D) still give maps of >= 4x4 cells to align boxes on (a 56 px crop
    alone gives 2x2, where every person covers most of the map)."""
    return 2 * int(spec.crop)


def feature_map(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``encoder.forward_features(x)`` as a spatio-temporal map ``(B, C, T', H', W')``.

    Accepted outputs: a tensor ``(B, C, T', H', W')`` (3D CNNs), per-frame maps
    ``(B, T, C, H', W')`` from an encoder that declares ``feature_layout = "BTCHW"`` (the
    attribute :mod:`avssl.towers` reads; an undeclared 5D map is ``BCTHW``), a 2D map
    ``(B, C, H', W')`` (T' = 1), or a dict with ``"map"`` (token encoders that expose their grid)
    or with several 4D/5D stream maps of one size (concatenated over channels). Anything else
    (pooled vectors, tokens without a grid) raises :class:`ConfigError`.
    """
    out = encoder.forward_features(x)
    name = type(encoder).__name__
    if isinstance(out, dict):
        if "map" in out:
            out = out["map"]
        else:
            maps = [v if v.ndim == 5 else v[:, :, None] for v in out.values()
                    if isinstance(v, torch.Tensor) and v.ndim in (4, 5)]
            if not maps or len(maps) != len(out) or len({m.shape[2:] for m in maps}) != 1:
                raise ConfigError(
                    f"the AVA detector needs a spatial feature map, but {name}.forward_features "
                    f"returns {sorted(out)} without a 'map' entry; use an encoder whose "
                    f"forward_features gives (B, C, T', H', W') or {{'map': ...}}")
            out = torch.cat(maps, dim=1)
    if not isinstance(out, torch.Tensor) or out.ndim not in (4, 5):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"the AVA detector needs a spatial feature map, but {name}.forward_features returns "
            f"{shape} (tokens or pooled features without their grid); use a CNN video encoder "
            f"(i3d_*, r3d18, c3d, ...) or a token encoder that exposes its grid as 'map'")
    if out.ndim == 4:
        return out[:, :, None]
    # the declared layout, not the shape: a guess from "axis 1 has the clip's frame count" took
    # a 3D CNN whose channels equal the frame count for per-frame maps (and the reverse)
    if getattr(encoder, "feature_layout", "BCTHW") == "BTCHW":
        out = out.transpose(1, 2)
    return out


class KeyframeClips(Dataset):
    """Item ``i``: ``{"video": (C, T, size, size)}`` float, the clip centred on keyframe ``i``.

    ``keyframes``: objects with ``path`` and ``time_s``; ``spec``: the bench's
    :class:`~avssl.bench.model.InputSpec` (clip length, fps, normalisation).
    """

    def __init__(self, keyframes: Sequence[Any], spec, size: int, timeout_s: float = 60.0):
        self.keyframes, self.spec, self.size = list(keyframes), spec, int(size)
        self.timeout_s = timeout_s
        # spec.video_transform at this size: the clip is already size x size, so its resize and
        # centre crop keep the whole frame and only the normalisation and layout remain
        self.transform = dataclasses.replace(spec.video_transform(1), size=self.size,
                                             short_side=self.size)

    def __len__(self) -> int:
        return len(self.keyframes)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        kf, spec = self.keyframes[index], self.spec
        start = float(kf.time_s) - spec.clip_s / 2
        try:
            frames = decoding.decode_video(kf.path, start, start + spec.clip_s, fps=spec.fps,
                                           size=(self.size, self.size), timeout_s=self.timeout_s)
        except DecodeError as err:
            raise DataError(f"cannot decode {kf.path} at {kf.time_s:g} s ({err.reason}); pass "
                            f"--skip-bad to leave undecodable videos out") from err
        return {"video": self.transform(frames), "index": index}


def keyframe_maps(model, keyframes: Sequence[Any], *, size: int, batch_size: int = 8,
                  num_workers: int = 0, desc: str = "keyframe maps") -> np.ndarray:
    """float32 ``(N, C, H', W')``: the time-averaged feature map of every keyframe's clip,
    extracted with :func:`~avssl.bench.features.map_items` (sharded exactly over processes)."""
    device = F.state().device
    encoder = model.encoder_for("video").to(device).eval()
    ds = KeyframeClips(keyframes, model.spec, size)
    if len(ds) == 0:
        raise DataError("no keyframes to extract features from")

    def fn(batch):
        return feature_map(encoder, batch["video"].to(device)).mean(dim=2)

    return F.map_items(ds, fn, batch_size=batch_size, num_workers=num_workers, desc=desc)


def keyframe_roi_features(model, keyframes: Sequence[Any], *, size: int, resolution: int = 7,
                          batch_size: int = 8, num_workers: int = 0,
                          desc: str = "keyframe RoI features",
                          skip_bad: bool = False) -> dict[str, np.ndarray]:
    """RoI features of every keyframe's boxes instead of whole maps (a real AVA split's maps are
    tens of GB; these are ~10x smaller). Returns float32 arrays:

    - ``features`` (sum P_i, C): :func:`~avssl.bench.detection.head.roi_max` of ``kf.boxes`` on
      the time-averaged map of each keyframe's clip, keyframe after keyframe;
    - ``counts`` (N,) int64: P_i per keyframe;
    - ``sums`` (2, C) float64: per-channel sum and sum of squares over every map cell, and
      ``cells`` () the number of cells, for the training maps' mean and std;
    - ``ok`` (N,) bool: False for every keyframe of a video that failed to decode part-way
      (``skip_bad``; without it such a video stops the run). Those keyframes have no features,
      count 0 and are not in ``sums``: the numbers of a split without that video.
    """
    device = F.state().device
    encoder = model.encoder_for("video").to(device).eval()
    ds = KeyframeClips(keyframes, model.spec, size)
    if len(ds) == 0:
        raise DataError("no keyframes to extract features from")
    boxes = [np.asarray(kf.boxes, np.float32).reshape(-1, 4) for kf in ds.keyframes]
    width = max(1, max(len(b) for b in boxes))  # map_items needs one shape per item: pad

    def fn(batch):
        # float32 whatever the autocast: the sums of squares feed E[x^2] - mean^2, which bf16
        # rounding (8-bit mantissa) cancels to a zero std when a channel's mean >> its std
        maps = feature_map(encoder, batch["video"].to(device)).float().mean(dim=2)  # (B,C,H',W')
        b, c = maps.shape[:2]
        out = maps.new_full((b, width + 3, c), float("nan"))
        for j, i in enumerate(batch["index"].tolist()):
            feats = roi_max(maps[j:j + 1], rois_from_boxes([boxes[i]]).to(device), resolution)
            out[j, :len(feats)] = feats
        out[:, width] = maps.sum(dim=(2, 3))
        out[:, width + 1] = maps.square().sum(dim=(2, 3))
        out[:, width + 2] = float(maps.shape[2] * maps.shape[3])
        return out

    failed: list[tuple[int, str]] | None = [] if skip_bad else None
    items = F.map_items(ds, fn, batch_size=batch_size, num_workers=num_workers, desc=desc,
                        failed=failed)
    broken = {ds.keyframes[i].path for i, _ in failed or []}
    ok = np.array([kf.path not in broken for kf in ds.keyframes], bool)
    counts = np.array([len(b) if k else 0 for b, k in zip(boxes, ok)], np.int64)
    feats = np.concatenate([items[i, :n] for i, n in enumerate(counts)])
    sums = items[ok, width:width + 2].astype(np.float64).sum(axis=0)
    return {"features": feats.astype(np.float32), "counts": counts, "sums": sums,
            "cells": np.float64(items[ok, width + 2, 0].astype(np.float64).sum()), "ok": ok}


def stats_from_sums(sums: np.ndarray, cells: float) -> tuple[np.ndarray, np.ndarray]:
    """(C,) mean and unbiased std from :func:`keyframe_roi_features`' ``sums`` and ``cells``."""
    mean = sums[0] / cells
    var = (sums[1] - cells * mean ** 2) / max(cells - 1.0, 1.0)
    return mean.astype(np.float32), np.sqrt(np.clip(var, 0.0, None)).astype(np.float32)
