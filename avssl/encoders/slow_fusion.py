"""Slow fusion (Karpathy et al., CVPR 2014): a 3D CNN that builds slowly in space AND in time.

Each conv sees a few frames (small temporal kernel, "valid" in time), so the temporal receptive
field grows layer by layer until the top layers see the whole clip — unlike late fusion (time
only at the end) and early fusion (all time at the first layer); see the lecture's comparison
table of receptive fields.

- ``slow_fusion``: the paper's slow-fusion column (their single-frame AlexNet-style trunk), input
  3x10x170x170. conv1 96 4x11x11 stride 2x3x3 (10 frames -> 4 positions), conv2 256 2x5x5
  stride 2 in time (-> 2), conv3 384 2x3x3 stride 2 in time (-> 1: sees all 10 frames), conv4
  384, conv5 256, 1x2x2 max pools after conv1, conv2, conv5. BatchNorm replaces the paper's
  local response normalisation, and global average pooling replaces its fc6/fc7, so any clip of
  >= 10 frames works; embed 256.
- ``slow_fusion_tiny``: the lecture table's 3D CNN, input 3x20x64x64: Conv3D(3x3x3, 3->12),
  Pool3D(4x4x4), Conv3D(3x3x3, 12->24), global average pool; embed 24 (receptive field grows
  3 -> 6 -> 14 in T, H and W).

Input ``(B, 3, T, H, W)`` float (normalised).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from avssl.encoders import register_encoder
from avssl.encoders.layers import check_video_batch, load_pretrained
from avssl.errors import ConfigError


@dataclass(frozen=True)
class ConvSpec:
    """One conv -> BN -> ReLU (-> max pool) layer; kernels/strides/pads are (t, h, w)."""

    out_channels: int
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int] = (1, 1, 1)
    padding: tuple[int, int, int] = (0, 0, 0)
    pool: tuple[int, int, int] | None = None  # max-pool kernel = stride after the layer


class SlowFusion(nn.Module):
    """A stack of :class:`ConvSpec` layers then global average pooling.

    ``forward_features``: ``(B, 3, T, H, W)`` -> last map ``(B, C, T', H', W')``;
    ``forward``: mean over (T', H', W') -> ``(B, C)``.
    """

    modality = "video"

    def __init__(self, layers: Sequence[ConvSpec], example_input_shape: tuple[int, ...],
                 in_channels: int = 3):
        super().__init__()
        blocks = []
        cin = self.in_channels = in_channels
        for spec in layers:
            mods: list[nn.Module] = [
                nn.Conv3d(cin, spec.out_channels, spec.kernel, spec.stride, spec.padding,
                          bias=False),
                nn.BatchNorm3d(spec.out_channels),
                nn.ReLU(inplace=True),
            ]
            if spec.pool is not None:
                mods.append(nn.MaxPool3d(spec.pool, spec.pool))
            blocks.append(nn.Sequential(*mods))
            cin = spec.out_channels
        self.layers = nn.Sequential(*blocks)
        self.specs = tuple(layers)
        self.embed_dim = cin
        self.example_input_shape = example_input_shape
        self.min_frames = self._min_frames()

    def _min_frames(self) -> int:
        """Smallest T for which every layer still has >= 1 output frame (walk the stack back)."""
        t = 1
        for spec in reversed(self.specs):
            if spec.pool is not None:
                t = t * spec.pool[0]
            t = (t - 1) * spec.stride[0] + spec.kernel[0] - 2 * spec.padding[0]
            t = max(t, 1)
        return t

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_video_batch(x, self.in_channels, "slow fusion")
        if x.shape[2] < self.min_frames:
            raise ConfigError(f"slow fusion needs clips of >= {self.min_frames} frames, got "
                              f"{x.shape[2]}; sample longer clips")
        return self.layers(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3, 4))


# Karpathy et al. 2014, Sec. 2.1 / Fig. 1 ("Slow Fusion"), trunk C(96,11,3)-N-P-C(256,5,1)-N-P-
# C(384,3,1)-C(384,3,1)-C(256,3,1)-P with 2x2 pools; temporal extents 4, 2, 2 at stride 2.
_KARPATHY = (
    ConvSpec(96, (4, 11, 11), (2, 3, 3), (0, 0, 0), pool=(1, 2, 2)),
    ConvSpec(256, (2, 5, 5), (2, 1, 1), (0, 2, 2), pool=(1, 2, 2)),
    ConvSpec(384, (2, 3, 3), (2, 1, 1), (0, 1, 1)),
    ConvSpec(384, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ConvSpec(256, (1, 3, 3), (1, 1, 1), (0, 1, 1), pool=(1, 2, 2)),
)

# The lecture table's "3D CNN" row: 3x20x64x64 -> 12x20x64x64 -> pool 4 -> 24x5x16x16 -> pool.
_LECTURE = (
    ConvSpec(12, (3, 3, 3), padding=(1, 1, 1), pool=(4, 4, 4)),
    ConvSpec(24, (3, 3, 3), padding=(1, 1, 1)),
)


@register_encoder("slow_fusion", "video")
def slow_fusion(*, pretrained_path: str | None = None) -> SlowFusion:
    """Karpathy et al. 2014 slow fusion at 3x10x170x170 (>= 10 frames), embed 256."""
    return load_pretrained(SlowFusion(_KARPATHY, (3, 10, 170, 170)), pretrained_path)


@register_encoder("slow_fusion_tiny", "video")
def slow_fusion_tiny(*, pretrained_path: str | None = None) -> SlowFusion:
    """The lecture's two-layer 3D CNN at 3x20x64x64 (>= 4 frames), embed 24."""
    return load_pretrained(SlowFusion(_LECTURE, (3, 20, 64, 64)), pretrained_path)
