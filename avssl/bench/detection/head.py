"""The SlowFast AVA head on a time-pooled map: RoIAlign -> spatial max -> dropout -> linear.

Feichtenhofer et al., "SlowFast Networks for Video Recognition" (ICCV 2019), Sec. 5: the
detector's boxes are pooled from the last feature map with RoIAlign (7x7), max-pooled over
space, and a per-class sigmoid classifier scores the actions (multi-label). Here the map is
frozen and standardised per channel with the training maps' statistics, so one learning rate
suits every encoder.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torchvision.ops import roi_align


def rois_from_boxes(boxes: Sequence[np.ndarray | torch.Tensor]) -> torch.Tensor:
    """Per-keyframe boxes ``[(P_i, 4)]`` (normalised x1, y1, x2, y2) -> ``(sum P_i, 5)`` float32
    rows ``(keyframe index in the batch, x1, y1, x2, y2)``, torchvision's RoI format."""
    rows = []
    for i, b in enumerate(boxes):
        b = torch.as_tensor(np.asarray(b, np.float32) if not isinstance(b, torch.Tensor) else b,
                            dtype=torch.float32).reshape(-1, 4)
        rows.append(torch.cat([torch.full((len(b), 1), float(i)), b], dim=1))
    return torch.cat(rows) if rows else torch.zeros(0, 5)


def map_stats(maps: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (unbiased) std over every cell of (N, C, H', W') maps."""
    x = torch.as_tensor(np.asarray(maps), dtype=torch.float32)
    x = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    return x.mean(1).float(), x.std(1).float()


def roi_max(maps: torch.Tensor, rois: torch.Tensor, resolution: int = 7) -> torch.Tensor:
    """(B, C, H', W') maps, (R, 5) rois -> (R, C): RoIAlign (``resolution`` x ``resolution``,
    boxes normalised to the frame, ``aligned=True``) then the max over its cells, on raw maps.

    Standardising a channel (x - m) / s with s > 0 commutes with both steps (RoIAlign averages
    bilinear samples inside the map; the max is monotone), so these raw features, standardised
    afterwards, equal pooling a standardised map: the bench caches them instead of whole maps."""
    h, w = maps.shape[-2:]
    scale = rois.new_tensor([1.0, w, h, w, h])
    pooled = roi_align(maps, rois * scale, output_size=int(resolution), spatial_scale=1.0,
                       sampling_ratio=0, aligned=True)
    return pooled.amax(dim=(2, 3))


class RoIActionHead(nn.Module):
    """``forward(maps, rois) -> logits``: maps ``(B, C, H', W')``, rois ``(R, 5)`` from
    :func:`rois_from_boxes` (boxes normalised to the frame) -> ``(R, num_classes)`` logits
    (apply a sigmoid for per-class scores).

    Boxes are scaled to map cells and aligned with ``aligned=True`` (pixel centres at +0.5, as
    Detectron2 and SlowFast do); ``resolution`` is RoIAlign's output size before the max.
    """

    def __init__(self, in_channels: int, num_classes: int, *, resolution: int = 7,
                 dropout: float = 0.5):
        super().__init__()
        self.resolution = int(resolution)
        self.register_buffer("mean", torch.zeros(in_channels))
        self.register_buffer("std", torch.ones(in_channels))
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(in_channels, num_classes)

    def set_input_stats(self, maps: torch.Tensor) -> None:
        """Standardise inputs with the per-channel mean / std of ``maps`` (B, C, H', W')."""
        self.set_stats(*map_stats(maps))

    @torch.no_grad()
    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel statistics of the training maps, given directly (C,) each."""
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def pool(self, maps: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """(B, C, H', W'), (R, 5) -> (R, C) standardised RoI features."""
        return self.standardise(roi_max(maps, rois, self.resolution))

    def standardise(self, raw: torch.Tensor) -> torch.Tensor:
        """(R, C) raw :func:`roi_max` features -> (R, C) with the training maps' statistics."""
        return (raw - self.mean) / self.std

    def classify(self, raw: torch.Tensor) -> torch.Tensor:
        """(R, C) raw :func:`roi_max` features -> (R, num_classes) logits."""
        return self.proj(self.dropout(self.standardise(raw)))

    def forward(self, maps: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return self.classify(roi_max(maps, rois, self.resolution))
