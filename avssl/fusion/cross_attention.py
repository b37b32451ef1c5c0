"""Vanilla cross-attention fusion, MBT's ablation baseline (Nagrani et al., NeurIPS 2021, §3.2
"vanilla self-attention" restricted to layers from L_f on, i.e. mid fusion without bottleneck).

Layers l < ``fusion_layer``: each stream runs its own block on its own tokens (isolated). From
``fusion_layer`` on, every token attends to the tokens of both modalities: stream m runs its own
block on the concatenation [x_m; x_other] and keeps the outputs of its own tokens, so each
modality keeps its own weights (the streams stay loadable as plain encoders) while attention is
full and pairwise across the Nv + Na tokens. Costs about twice a late-fusion layer.

Shapes and outputs: :mod:`avssl.fusion.model`.
"""
from __future__ import annotations

import torch
from torch import nn

from avssl.fusion.model import FusionModel


class CrossAttentionFusion(FusionModel):
    """Full pairwise attention over both streams' tokens from layer ``fusion_layer`` on."""

    def __init__(self, video: nn.Module, audio: nn.Module, fusion_layer: int = 2,
                 num_classes: int = 3, recon: bool = False, head: str = "linear",
                 contrast_dim: int = 0):
        super().__init__(video, audio, fusion_layer, num_classes, recon, head, contrast_dim)

    def fuse(self, xv: torch.Tensor, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layers L_f .. L-1: (B, 1+Nv, D), (B, 1+Na, D) -> same shapes."""
        nv, na = xv.shape[1], xa.shape[1]
        for bv, ba in self.layers(self.fusion_layer):
            # both from this layer's inputs, so the update is symmetric
            xv, xa = bv(torch.cat([xv, xa], 1))[:, :nv], ba(torch.cat([xa, xv], 1))[:, :na]
        return xv, xa
