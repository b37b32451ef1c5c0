"""Audio-visual fusion models for ablation (MBT, Nagrani et al., NeurIPS 2021).

- ``bottleneck``: :class:`~.bottleneck.BottleneckFusion` — the streams exchange information
  only through ``num_bottlenecks`` shared tokens from ``fusion_layer`` on (MBT);
- ``cross_attention``: :class:`~.cross_attention.CrossAttentionFusion` — every token attends to
  both streams' tokens from ``fusion_layer`` on;
- ``late``: :class:`~.late.LateFusion` — no exchange; the CLS outputs are concatenated.

All take a video ViT stream and an audio ViT stream of equal width and depth and share the
interface of :class:`~.model.FusionModel`: ``model(video (B, 3, T, H, W), logmel (B, 1, F, T),
*, video_mask=None, audio_mask=None) -> {"video_cls", "audio_cls", "fused", "logits",
"video_tokens", "audio_tokens"[, "recon_pred", "recon_target", "recon_mask"]}``.

``build_fusion("bottleneck", video_encoder="vit_video_tiny", audio_encoder="audio_vit_tiny",
num_bottlenecks=4, fusion_layer=2)`` builds the streams from registered names (with
``video_kwargs`` / ``audio_kwargs``) or takes ready modules. An audio stream given by name is
built at the video stream's ``dim``, ``depth`` and ``num_heads`` unless ``audio_kwargs`` set
them, because MBT needs equal sizes. After pretraining, ``model.video.state_dict()`` loads into
``build_encoder("vit_video_tiny")`` (with the same kwargs) for benchmarking.
"""
from __future__ import annotations

from torch import nn

from avssl.encoders import build_encoder
from avssl.errors import ConfigError
from avssl.fusion.bottleneck import BottleneckFusion
from avssl.fusion.cross_attention import CrossAttentionFusion
from avssl.fusion.late import LateFusion
from avssl.fusion.model import FusionModel, patchify_audio, patchify_video
from avssl.registry import Registry

FUSIONS: Registry = Registry("fusion")
FUSIONS.add("bottleneck", BottleneckFusion)
FUSIONS.add("cross_attention", CrossAttentionFusion)
FUSIONS.add("late", LateFusion)

__all__ = ["FUSIONS", "BottleneckFusion", "CrossAttentionFusion", "LateFusion", "FusionModel",
           "build_fusion", "patchify_audio", "patchify_video"]


def _stream_size(stream: nn.Module) -> dict:
    blocks = stream.transformer.blocks
    return {"dim": stream.embed_dim, "depth": len(blocks), "num_heads": blocks[0].attn.num_heads}


def build_fusion(
    name: str,
    video_encoder: str | nn.Module = "vit_video_tiny",
    audio_encoder: str | nn.Module = "audio_vit_tiny",
    video_kwargs: dict | None = None,
    audio_kwargs: dict | None = None,
    **kwargs,
) -> FusionModel:
    """Build a registered fusion model over two ViT streams (names + kwargs, or modules)."""
    cls = FUSIONS.get(name)
    if isinstance(video_encoder, nn.Module):
        video = video_encoder
    else:
        video = build_encoder(video_encoder, **(video_kwargs or {}))
    if isinstance(audio_encoder, nn.Module):
        audio = audio_encoder
    else:
        if not hasattr(video, "transformer"):
            raise ConfigError(f"fusion needs a ViT video stream (vit_video_*), got "
                              f"{type(video).__name__}")
        audio = build_encoder(audio_encoder, **{**_stream_size(video), **(audio_kwargs or {})})
    try:
        return cls(video, audio, **kwargs)
    except TypeError as e:
        raise ConfigError(f"fusion {name!r}: {e}") from None
