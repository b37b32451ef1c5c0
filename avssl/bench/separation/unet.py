"""The Sound of Pixels separator: an audio U-Net whose K feature maps are mixed by visual weights.

Zhao et al. 2018: a U-Net on the log-magnitude, log-frequency mixture spectrogram (1 x 256 x 256)
gives K feature maps ``A_k`` (SoP: 7 down / up blocks, K = 32); the source's video gives a pooled
embedding, here from any registered video encoder (frozen by default, trained too by the
``finetune`` protocol), mapped by a linear layer to K weights ``w_k``; the source's mask is
``sigmoid(sum_k w_k A_k + b)``. One U-Net pass serves every source of a mixture; only the
visual weights differ between them.
"""
from __future__ import annotations

import torch
from torch import nn

from avssl.errors import ConfigError


def _down(cin: int, cout: int, norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def _up(cin: int, cout: int, last: bool) -> nn.Sequential:
    # upsample + 3x3 conv (as the SoP code) rather than a transposed conv: no checkerboard
    layers: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                               nn.Conv2d(cin, cout, 3, padding=1, bias=last)]
    if not last:
        layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """(B, 1, F, T) log-magnitude -> (B, out_channels, F, T) feature maps (no activation).

    ``depth`` down blocks (4x4 stride-2 conv, BatchNorm, LeakyReLU) halve F and T; ``depth``
    up blocks (2x upsample, 3x3 conv, BatchNorm, ReLU) with skip connections restore them.
    Widths: ``width * 2**i`` capped at ``8 * width``. F and T must be divisible by
    ``2**depth``. SoP's network is ``depth=7, width=64, out_channels=32``.
    """

    def __init__(self, out_channels: int = 16, depth: int = 5, width: int = 16):
        super().__init__()
        if depth < 1 or width < 1 or out_channels < 1:
            raise ConfigError(f"UNet needs depth, width and out_channels >= 1, got {depth}, "
                              f"{width}, {out_channels}")
        self.depth, self.out_channels = depth, out_channels
        chans = [min(width * 2 ** i, 8 * width) for i in range(depth)]
        self.bn0 = nn.BatchNorm2d(1)  # the log-magnitude's scale differs between datasets
        self.downs = nn.ModuleList(
            _down(1 if i == 0 else chans[i - 1], chans[i], norm=0 < i < depth - 1)
            for i in range(depth))
        ups = []
        for i in range(depth):
            cin = chans[i] if i == depth - 1 else 2 * chans[i]
            ups.append(_up(cin, out_channels if i == 0 else chans[i - 1], last=i == 0))
        self.ups = nn.ModuleList(ups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, t = x.shape[-2:]
        step = 2 ** self.depth
        if f % step or t % step:
            raise ConfigError(f"UNet of depth {self.depth} needs a spectrogram whose size is "
                              f"divisible by {step}, got {f} x {t}; change depth or the window")
        skips = []
        h = self.bn0(x)
        for down in self.downs:
            h = down(h)
            skips.append(h)
        h = skips.pop()
        for i in range(self.depth - 1, -1, -1):
            h = self.ups[i](h)
            if i > 0:
                h = torch.cat([h, skips.pop()], dim=1)
        return h


class Separator(nn.Module):
    """Visually conditioned mask predictor.

    ``audio_features(log_mag)``: (B, 1, F, T) -> (B, K, F, T). ``visual_weights(cond)``: cond is a
    pooled embedding (B, D) when ``encoder`` is None, else a video clip (B, C, T, H, W) that the
    encoder embeds -> (B, K). ``mask_logits(feats, weights)`` -> (B, 1, F, T) logits of
    ``sigmoid(sum_k w_k A_k + b)``. The embedding is layer-normalised first, so frozen encoders
    whose features have very different scales train with the same learning rate.
    """

    def __init__(self, embed_dim: int, channels: int = 16, depth: int = 5, width: int = 16,
                 encoder: nn.Module | None = None):
        super().__init__()
        self.unet = UNet(channels, depth, width)
        self.encoder = encoder
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, channels)
        self.bias = nn.Parameter(torch.zeros(1))

    def audio_features(self, log_mag: torch.Tensor) -> torch.Tensor:
        return self.unet(log_mag)

    def visual_weights(self, cond: torch.Tensor) -> torch.Tensor:
        emb = cond if self.encoder is None else self.encoder(cond)
        return self.head(self.norm(emb))

    def mask_logits(self, feats: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bkft,bk->bft", feats, weights).unsqueeze(1) + self.bias

    def forward(self, log_mag: torch.Tensor, conds: list[torch.Tensor]) -> torch.Tensor:
        """(B, 1, F, T) mixture and one condition per source -> logits (B, N, F, T)."""
        feats = self.audio_features(log_mag)
        return torch.cat([self.mask_logits(feats, self.visual_weights(c)) for c in conds], 1)
