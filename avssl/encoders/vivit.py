"""ViViT video transformers (Arnab et al., "ViViT: A Video Vision Transformer", ICCV 2021).

Two of the paper's factorised models, both on tubelet tokens (:class:`VideoTokenizer`):

- ``vivit_fe_*`` — model 2, *factorised encoder*: a spatial transformer runs on the tokens of
  each temporal index separately (with its own CLS token per time step); a temporal transformer
  then runs over the T' per-time CLS tokens (plus a temporal CLS token, whose output is the
  clip embedding).
- ``vivit_fsa_*`` — model 3, *factorised self-attention* (TimeSformer's "divided attention"):
  inside every block, spatial attention among the tokens of one time index, then temporal
  attention among the tokens at one spatial location, then the MLP. No CLS token; the clip
  embedding is the mean of the final tokens.

Input: normalised video ``(B, 3, T, H, W)``. Sizes:

=========  =====  ===============================  ======  ====================
variant    D      depth (fe: spatial + temporal)   heads   built for (C,T,H,W)
=========  =====  ===============================  ======  ====================
tiny       64     fe 2 + 1, fsa 2                  4       3x8x32x32, tubelet 2x8x8
small      384    fe 12 + 4, fsa 12                6       3x32x224x224, tubelet 2x16x16
base       768    fe 12 + 4, fsa 12                12      3x32x224x224, tubelet 2x16x16
=========  =====  ===============================  ======  ====================

32 frames at 224² is the paper's Kinetics setting; pass ``num_frames=16`` to build for 16-frame
clips. Any other clip size also works at run time: positional embeddings are interpolated
(trilinear over (t, h, w); linear over t for the temporal transformer).
"""
from __future__ import annotations

import inspect

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from avssl.encoders import register_encoder
from avssl.encoders.layers import (
    Attention,
    Mlp,
    Transformer,
    VideoTokenizer,
    drop_path_rates,
    init_vit_weights,
    interpolate_pos_embed,
    load_pretrained,
)

_SIZES = {  # dim, heads, fe spatial depth, fe temporal depth, fsa depth
    "tiny": dict(dim=64, heads=4, depth_s=2, depth_t=1, depth=2),
    "small": dict(dim=384, heads=6, depth_s=12, depth_t=4, depth=12),
    "base": dict(dim=768, heads=12, depth_s=12, depth_t=4, depth=12),
}
_CLIPS = {  # default (num_frames, img_size, tubelet)
    "tiny": (8, 32, (2, 8, 8)),
    "small": (32, 224, (2, 16, 16)),
    "base": (32, 224, (2, 16, 16)),
}


class VivitFE(nn.Module):
    """ViViT model 2 (factorised encoder). ``forward(x)`` (B, 3, T, H, W) -> (B, D)."""

    modality = "video"

    def __init__(
        self,
        dim: int,
        depth_spatial: int,
        depth_temporal: int,
        num_heads: int,
        clip_size: tuple[int, int, int],
        tubelet: tuple[int, int, int],
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        attn_impl: str = "sdpa",
    ):
        super().__init__()
        self.embed_dim = dim
        self.example_input_shape = (3, *clip_size)
        self.tokenizer = VideoTokenizer(dim, clip_size, tubelet)
        self.spatial_cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.spatial = Transformer(dim, depth_spatial, num_heads, mlp_ratio,
                                   drop_path=drop_path, attn_impl=attn_impl)
        self.temporal_cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.temporal_pos = nn.Parameter(torch.zeros(1, self.tokenizer.grid[0], dim))
        self.temporal = Transformer(dim, depth_temporal, num_heads, mlp_ratio,
                                    drop_path=drop_path, attn_impl=attn_impl)
        for p in (self.spatial_cls, self.temporal_cls, self.temporal_pos):
            nn.init.trunc_normal_(p, std=0.02)
        self.apply(init_vit_weights)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` (B, 3, T, H, W) -> dict:

        - ``"map"``: (B, D, T', H', W') spatial-transformer patch tokens (after its final norm);
        - ``"temporal"``: (B, 1 + T', D) temporal-transformer output, temporal CLS first.
        """
        tokens, (t, h, w) = self.tokenizer(x)
        B, D = x.shape[0], self.embed_dim
        tokens = tokens.reshape(B * t, h * w, D)
        tokens = torch.cat([self.spatial_cls.expand(B * t, -1, -1), tokens], dim=1)
        tokens = self.spatial(tokens).reshape(B, t, 1 + h * w, D)
        frame_cls = tokens[:, :, 0] + interpolate_pos_embed(
            self.temporal_pos, (self.tokenizer.grid[0],), (t,))
        seq = torch.cat([self.temporal_cls.expand(B, -1, -1), frame_cls], dim=1)
        patch_map = tokens[:, :, 1:].reshape(B, t, h, w, D).permute(0, 4, 1, 2, 3)
        return {"map": patch_map, "temporal": self.temporal(seq)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["temporal"][:, 0]


class FactorisedBlock(nn.Module):
    """Divided space-time block on (B, T', S, D): spatial attn, temporal attn, MLP (pre-norm)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, attn_impl: str = "sdpa"):
        super().__init__()
        self.norm_s = nn.LayerNorm(dim, eps=1e-6)
        self.attn_s = Attention(dim, num_heads, attn_impl=attn_impl)
        self.norm_t = nn.LayerNorm(dim, eps=1e-6)
        self.attn_t = Attention(dim, num_heads, attn_impl=attn_impl)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, S, D = x.shape
        xs = self.attn_s(self.norm_s(x).reshape(B * T, S, D)).reshape(B, T, S, D)
        x = x + self.drop_path(xs)
        xt = self.norm_t(x).transpose(1, 2).reshape(B * S, T, D)
        x = x + self.drop_path(self.attn_t(xt).reshape(B, S, T, D).transpose(1, 2))
        return x + self.drop_path(self.mlp(self.norm_mlp(x)))


class VivitFSA(nn.Module):
    """ViViT model 3 (factorised self-attention). ``forward(x)`` (B, 3, T, H, W) -> (B, D)."""

    modality = "video"

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        clip_size: tuple[int, int, int],
        tubelet: tuple[int, int, int],
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        attn_impl: str = "sdpa",
    ):
        super().__init__()
        self.embed_dim = dim
        self.example_input_shape = (3, *clip_size)
        self.tokenizer = VideoTokenizer(dim, clip_size, tubelet)
        rates = drop_path_rates(drop_path, depth)
        self.blocks = nn.ModuleList(
            FactorisedBlock(dim, num_heads, mlp_ratio, r, attn_impl) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(init_vit_weights)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` (B, 3, T, H, W) -> ``{"map": (B, D, T', H', W')}`` final tokens after the norm."""
        tokens, (t, h, w) = self.tokenizer(x)
        B, D = x.shape[0], self.embed_dim
        tokens = tokens.reshape(B, t, h * w, D)
        for blk in self.blocks:
            tokens = blk(tokens)
        tokens = self.norm(tokens)
        return {"map": tokens.reshape(B, t, h, w, D).permute(0, 4, 1, 2, 3)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)["map"].mean(dim=(2, 3, 4))


def _clip(size: str, num_frames: int | None, img_size: int | None, tubelet):
    t, s, tub = _CLIPS[size]
    return (num_frames or t, img_size or s, img_size or s), tuple(tubelet or tub)


def _fe(size: str, pretrained_path: str | None = None, num_frames: int | None = None,
        img_size: int | None = None, tubelet: tuple[int, int, int] | None = None,
        drop_path: float = 0.0, attn_impl: str = "sdpa") -> VivitFE:
    cfg = _SIZES[size]
    clip, tub = _clip(size, num_frames, img_size, tubelet)
    model = VivitFE(cfg["dim"], cfg["depth_s"], cfg["depth_t"], cfg["heads"], clip, tub,
                    drop_path=drop_path, attn_impl=attn_impl)
    return load_pretrained(model, pretrained_path)


def _fsa(size: str, pretrained_path: str | None = None, num_frames: int | None = None,
         img_size: int | None = None, tubelet: tuple[int, int, int] | None = None,
         drop_path: float = 0.0, attn_impl: str = "sdpa") -> VivitFSA:
    cfg = _SIZES[size]
    clip, tub = _clip(size, num_frames, img_size, tubelet)
    model = VivitFSA(cfg["dim"], cfg["depth"], cfg["heads"], clip, tub,
                     drop_path=drop_path, attn_impl=attn_impl)
    return load_pretrained(model, pretrained_path)


def _without_size(fn) -> inspect.Signature:
    sig = inspect.signature(fn)
    return sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "size"])


def _register(size: str) -> None:
    # Builders take keyword args only: pretrained_path, num_frames, img_size, tubelet,
    # drop_path, attn_impl ("sdpa" | "naive").
    def fe(**kwargs) -> VivitFE:
        return _fe(size, **kwargs)

    def fsa(**kwargs) -> VivitFSA:
        return _fsa(size, **kwargs)

    fe.__doc__ = f"ViViT factorised encoder, {size} size (see module docstring)."
    fsa.__doc__ = f"ViViT factorised self-attention, {size} size (see module docstring)."
    # build_encoder checks kwargs against the signature: show the real ones, not **kwargs
    fe.__signature__, fsa.__signature__ = _without_size(_fe), _without_size(_fsa)
    register_encoder(f"vivit_fe_{size}", "video")(fe)
    register_encoder(f"vivit_fsa_{size}", "video")(fsa)


for _size in _SIZES:
    _register(_size)
