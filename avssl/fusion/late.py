"""Late fusion: the two streams never exchange tokens; only their CLS outputs are concatenated
(``fused`` (B, 2D)) and classified. The no-fusion baseline of MBT's ablations (Nagrani et al.,
NeurIPS 2021). Shapes and outputs: :mod:`avssl.fusion.model`.
"""
from __future__ import annotations

from torch import nn

from avssl.fusion.model import FusionModel


class LateFusion(FusionModel):
    """Fully separate streams; CLS concatenation into a linear classifier."""

    def __init__(self, video: nn.Module, audio: nn.Module, num_classes: int = 3,
                 recon: bool = False, head: str = "linear", contrast_dim: int = 0):
        # fusion_layer == depth: every layer runs isolated (the contrastive embeddings, if any,
        # come from the last layer's tokens).
        depth = len(getattr(getattr(video, "transformer", None), "blocks", ()))
        super().__init__(video, audio, depth, num_classes, recon, head, contrast_dim)
