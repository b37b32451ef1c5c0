"""Plain video ViT with joint space-time attention (ViViT model 1; Arnab et al., ICCV 2021).

The clip ``(B, 3, T, H, W)`` is cut into tubelets (:class:`VideoTokenizer`), a CLS token is
prepended and every block attends over all T'·H'·W' tokens at once. This is the video stream of
MBT (Nagrani et al., "Attention Bottlenecks for Multimodal Fusion", 2021), built like
:class:`~avssl.encoders.audio_vit.AudioViT` (``.tokenizer``, ``.cls_token``, ``.transformer``
with ``.blocks`` and ``.norm``) so :mod:`avssl.fusion` can step both streams layer by layer; a
stream trained inside a fusion model loads into the registered encoder of the same size.

=========  =====  ======  ======  ==============================================
variant    D      depth   heads   built for (C, T, H, W), tubelet
=========  =====  ======  ======  ==============================================
tiny       96     4       4       3x8x64x64, 2x16x16 (64 tokens: cheap on CPU)
small      384    12      6       3x16x224x224, 2x16x16 (1568 tokens)
base       768    12      12      3x16x224x224, 2x16x16 (ViT-B)
=========  =====  ======  ======  ==============================================

Builders take keyword args: ``pretrained_path``, ``num_frames``, ``img_size``, ``tubelet``,
``dim``, ``depth``, ``num_heads`` (to match an audio stream's size in a fusion model),
``drop_path``, ``attn_impl``, ``stem`` (``"patch"``, or ``"conv"``: a convolutional stem, see
:func:`~avssl.encoders.layers.conv_stem`, which tiny streams trained from scratch need to learn
on a CPU budget). Other clip sizes work at run time (positional embeddings are
interpolated trilinearly).
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

from avssl.encoders import register_encoder
from avssl.encoders.layers import Transformer, VideoTokenizer, init_vit_weights, load_pretrained

_SIZES = {
    "tiny": dict(dim=96, depth=4, num_heads=4, num_frames=8, img_size=64),
    "small": dict(dim=384, depth=12, num_heads=6, num_frames=16, img_size=224),
    "base": dict(dim=768, depth=12, num_heads=12, num_frames=16, img_size=224),
}


class VideoViT(nn.Module):
    """CLS-token ViT over tubelets with joint space-time attention. (B, 3, T, H, W) -> (B, D)."""

    modality = "video"

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        clip_size: tuple[int, int, int],
        tubelet: tuple[int, int, int] = (2, 16, 16),
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        attn_impl: str = "sdpa",
        stem: str = "patch",
    ):
        super().__init__()
        self.embed_dim = dim
        self.example_input_shape = (3, *clip_size)
        self.tokenizer = VideoTokenizer(dim, clip_size, tubelet, stem=stem)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.transformer = Transformer(dim, depth, num_heads, mlp_ratio,
                                       drop_path=drop_path, attn_impl=attn_impl)
        self.apply(init_vit_weights)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` (B, 3, T, H, W) -> dict after the final norm:

        - ``"cls"``: (B, D) CLS output;
        - ``"map"``: (B, D, T', H', W') tubelet tokens on their grid.
        """
        tokens, (t, h, w) = self.tokenizer(x)
        B = x.shape[0]
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)
        tokens = self.transformer(tokens)
        grid = tokens[:, 1:].reshape(B, t, h, w, self.embed_dim).permute(0, 4, 1, 2, 3)
        return {"cls": tokens[:, 0], "map": grid}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["cls"]


def _build(size: str, pretrained_path: str | None = None, num_frames: int | None = None,
           img_size: int | None = None, tubelet: tuple[int, int, int] = (2, 16, 16),
           dim: int | None = None, depth: int | None = None, num_heads: int | None = None,
           drop_path: float = 0.0, attn_impl: str = "sdpa", stem: str = "patch") -> VideoViT:
    cfg = _SIZES[size]
    s = img_size or cfg["img_size"]
    model = VideoViT(dim or cfg["dim"], depth or cfg["depth"], num_heads or cfg["num_heads"],
                     (num_frames or cfg["num_frames"], s, s), tuple(tubelet),
                     drop_path=drop_path, attn_impl=attn_impl, stem=stem)
    return load_pretrained(model, pretrained_path)


def _without_size(fn) -> inspect.Signature:
    sig = inspect.signature(fn)
    return sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "size"])


def _register(size: str) -> None:
    def builder(**kwargs) -> VideoViT:
        return _build(size, **kwargs)

    builder.__doc__ = f"Joint space-time video ViT (ViViT model 1), {size} size."
    # build_encoder checks kwargs against the signature: show _build's, not **kwargs, so a
    # misspelt argument is a one-line ConfigError instead of a TypeError from _build
    builder.__signature__ = _without_size(_build)
    register_encoder(f"vit_video_{size}", "video")(builder)


for _size in _SIZES:
    _register(_size)
