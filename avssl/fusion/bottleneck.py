"""Attention-bottleneck fusion (MBT; Nagrani et al., "Attention Bottlenecks for Multimodal
Fusion", NeurIPS 2021).

Two ViT streams of equal width D and depth L (video ``vit_video_*``, audio ``audio_vit_*``).
Layers l < ``fusion_layer`` (L_f): each stream runs its own block on its own [CLS; tokens] —
the streams are isolated. From L_f on, ``num_bottlenecks`` tokens z (B, nb, D), initialised from
a learned (1, nb, D) parameter at L_f, are appended to each stream: stream m runs its block on
[x_m; z] and keeps its own updated copy z_m; then z = (z_video + z_audio) / 2 after every layer.
So information crosses between the modalities only through nb tokens, and
``fusion_layer == L`` means no exchange at all (= late fusion).

Shapes and outputs: :mod:`avssl.fusion.model` (``forward(video (B, 3, T, H, W), logmel
(B, 1, F, T), *, video_mask, audio_mask) -> dict`` with video_cls, audio_cls, fused, logits,
video_tokens, audio_tokens and, with masks, recon_pred / recon_target / recon_mask).
"""
from __future__ import annotations

import torch
from torch import nn

from avssl.errors import ConfigError
from avssl.fusion.model import FusionModel


class BottleneckFusion(FusionModel):
    """MBT mid fusion through ``num_bottlenecks`` shared tokens from layer ``fusion_layer``."""

    def __init__(
        self,
        video: nn.Module,
        audio: nn.Module,
        num_bottlenecks: int = 4,
        fusion_layer: int = 2,
        num_classes: int = 3,
        recon: bool = False,
        head: str = "linear",
        contrast_dim: int = 0,
    ):
        super().__init__(video, audio, fusion_layer, num_classes, recon, head, contrast_dim)
        if num_bottlenecks < 1:
            raise ConfigError(f"num_bottlenecks must be >= 1, got {num_bottlenecks}; "
                              "for no exchange use fusion_layer=depth or the 'late' fusion")
        self.num_bottlenecks = num_bottlenecks
        # Created only when some layer uses it: an unused parameter breaks DDP.
        if fusion_layer < self.depth:
            self.bottleneck = nn.Parameter(torch.zeros(1, num_bottlenecks, self.embed_dim))
            nn.init.normal_(self.bottleneck, std=0.02)

    def fuse(self, xv: torch.Tensor, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layers L_f .. L-1: (B, 1+Nv, D), (B, 1+Na, D) -> same shapes."""
        nv, na = xv.shape[1], xa.shape[1]
        layers = self.layers(self.fusion_layer)
        if layers:
            z = self.bottleneck.expand(xv.shape[0], -1, -1)
        for bv, ba in layers:
            yv = bv(torch.cat([xv, z], dim=1))
            ya = ba(torch.cat([xa, z], dim=1))
            xv, xa = yv[:, :nv], ya[:, :na]
            z = (yv[:, nv:] + ya[:, na:]) / 2
        return xv, xa
