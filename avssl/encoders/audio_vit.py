"""Spectrogram transformers, AST-style (Gong et al., "AST: Audio Spectrogram Transformer", 2021).

Input: log-mel ``(B, 1, F, T)`` (F mel bins, T frames). The spectrogram is cut into
``patch`` x ``patch`` patches with stride ``patch_stride`` (AST overlaps them with stride 10;
the default 16 gives non-overlapping patches, as MBT and CAV-MAE use, at about 1/2.4 the
tokens), a CLS token is prepended, and a ViT runs over the sequence; the clip embedding is the
CLS output after the final norm. Other spectrogram lengths work at run time: the (f, t)
positional embeddings are interpolated bilinearly.

=========  =====  ======  ======  ======================================
variant    D      depth   heads   built for (1, F, T)
=========  =====  ======  ======  ======================================
tiny       64     2       4       1x64x96 (patch 16)
small      384    12      6       1x128x1024 (patch 16, ~10 s at 10 ms hop)
base       768    12      12      1x128x1024 (patch 16)
=========  =====  ======  ======  ======================================
"""
from __future__ import annotations

import torch
from torch import nn

from avssl.encoders import register_encoder
from avssl.encoders.layers import AudioTokenizer, Transformer, init_vit_weights, load_pretrained

_SIZES = {
    "tiny": dict(dim=64, depth=2, heads=4, n_mels=64, num_frames=96),
    "small": dict(dim=384, depth=12, heads=6, n_mels=128, num_frames=1024),
    "base": dict(dim=768, depth=12, heads=12, n_mels=128, num_frames=1024),
}


class AudioViT(nn.Module):
    """CLS-token ViT on spectrogram patches. ``forward(x)`` (B, 1, F, T) -> (B, D)."""

    modality = "audio"

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        spec_size: tuple[int, int],
        patch: int = 16,
        patch_stride: int = 16,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        attn_impl: str = "sdpa",
        stem: str = "patch",
    ):
        super().__init__()
        self.embed_dim = dim
        self.example_input_shape = (1, *spec_size)
        self.tokenizer = AudioTokenizer(dim, spec_size, patch, patch_stride, stem=stem)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.transformer = Transformer(dim, depth, num_heads, mlp_ratio,
                                       drop_path=drop_path, attn_impl=attn_impl)
        self.apply(init_vit_weights)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` (B, 1, F, T) -> dict after the final norm:

        - ``"cls"``: (B, D) CLS output;
        - ``"map"``: (B, D, F', T') patch tokens on their (frequency, time) grid.
        """
        tokens, (f, t) = self.tokenizer(x)
        B = x.shape[0]
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)
        tokens = self.transformer(tokens)
        patch_map = tokens[:, 1:].reshape(B, f, t, self.embed_dim).permute(0, 3, 1, 2)
        return {"cls": tokens[:, 0], "map": patch_map}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["cls"]


def _build(size: str, pretrained_path: str | None = None, n_mels: int | None = None,
           num_frames: int | None = None, patch: int = 16, patch_stride: int = 16,
           drop_path: float = 0.0, attn_impl: str = "sdpa", dim: int | None = None,
           depth: int | None = None, num_heads: int | None = None,
           stem: str = "patch") -> AudioViT:
    cfg = _SIZES[size]
    spec = (n_mels or cfg["n_mels"], num_frames or cfg["num_frames"])
    model = AudioViT(dim or cfg["dim"], depth or cfg["depth"], num_heads or cfg["heads"], spec,
                     patch, patch_stride, drop_path=drop_path, attn_impl=attn_impl, stem=stem)
    return load_pretrained(model, pretrained_path)


def _register(size: str) -> None:
    # Keyword args: pretrained_path, n_mels, num_frames (spectrogram frames), patch,
    # patch_stride (10 = AST's overlapping patches), drop_path, attn_impl, and dim / depth /
    # num_heads (to match the video stream's size in a fusion model), stem ("patch" | "conv":
    # avssl.encoders.layers.conv_stem, needs patch_stride == patch).
    def builder(*, pretrained_path: str | None = None, n_mels: int | None = None,
                num_frames: int | None = None, patch: int = 16, patch_stride: int = 16,
                drop_path: float = 0.0, attn_impl: str = "sdpa", dim: int | None = None,
                depth: int | None = None, num_heads: int | None = None,
                stem: str = "patch") -> AudioViT:
        return _build(size, pretrained_path, n_mels, num_frames, patch, patch_stride, drop_path,
                      attn_impl, dim, depth, num_heads, stem)

    builder.__doc__ = f"AST-style spectrogram ViT, {size} size (see module docstring)."
    register_encoder(f"audio_vit_{size}", "audio")(builder)


for _size in _SIZES:
    _register(_size)
