"""Transformer building blocks shared by the ViViT, audio ViT and (later) MBT fusion encoders.

Everything works on token tensors ``(B, N, D)``. A tokenizer turns a video ``(B, C, T, H, W)`` or
a spectrogram ``(B, 1, F, T)`` into patch tokens plus learned positional embeddings, which are
interpolated over their grid when the input size differs from the size the model was built for.
A fusion model can run several token streams through their own :class:`Block` stacks, layer by
layer, and concatenate bottleneck tokens in between.
"""
from __future__ import annotations

import math
import os
import pickle
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth

from avssl.errors import ConfigError

ATTN_IMPLS = ("sdpa", "naive")
STEMS = ("patch", "conv")


def check_video_batch(x: torch.Tensor, channels: int, name: str) -> None:
    """ConfigError unless ``x`` is a (B, ``channels``, T, H, W) batch; names the data layout
    mistake (clips stacked as the datasets give them, (B, T, C, H, W)) instead of failing
    later with advice about clip sizes."""
    if x.ndim != 5 or x.shape[1] != channels:
        raise ConfigError(f"{name} expects a video batch (B, C={channels}, T, H, W), got "
                          f"{tuple(x.shape)}; clips stacked as datasets give them, (B, T, C, H, "
                          f"W), go through avssl.data.transforms.to_encoder_layout first")


def _check_stem(stem: str, patch: tuple[int, ...]) -> None:
    if stem not in STEMS:
        raise ConfigError(f"stem must be one of {STEMS}, got {stem!r}")
    if stem == "conv" and any(p % 4 for p in patch[-2:]):
        raise ConfigError(f"the conv stem downsamples by 4 before the patch projection, so the "
                          f"spatial patch size must be a multiple of 4, got {patch}")


def conv_stem(in_chans: int, dim: int, patch: tuple[int, ...]) -> nn.Sequential:
    """Convolutional stem (Xiao et al., "Early Convolutions Help Transformers See Better",
    NeurIPS 2021) that replaces the patchify convolution with the same output grid.

    Two 3x3 convolutions of stride 2 (GroupNorm + ReLU; GroupNorm, not BatchNorm, so a
    multi-process run computes what one process does), then a convolution of kernel = stride =
    ``patch / 4`` in the last two dims. ``patch`` is (p, q) for spectrograms or (t, p, q) for
    video, where the time axis is not downsampled by the stem (the second conv mixes 3 frames)
    and the last conv takes t frames. Input (B, C, [T,] H, W) cropped to multiples of ``patch``
    -> (B, dim, [T/t,] H/p, W/q). From scratch it learns much faster than a patch projection:
    tiny MBT streams on the synthetic world learned cross-modal retrieval only with it.
    """
    c1, c2 = max(16, dim // 4), max(32, dim // 2)
    if c1 % 8 or c2 % 8:
        raise ConfigError(f"the conv stem's GroupNorm(8) needs dim / 4 and dim / 2 divisible by "
                          f"8 (dim a multiple of 32, or <= 64), got dim={dim}")
    if len(patch) == 3:
        t, p, q = patch
        return nn.Sequential(
            nn.Conv3d(in_chans, c1, (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False),
            nn.GroupNorm(8, c1), nn.ReLU(inplace=True),
            nn.Conv3d(c1, c2, 3, (1, 2, 2), 1, bias=False), nn.GroupNorm(8, c2),
            nn.ReLU(inplace=True),
            nn.Conv3d(c2, dim, (t, p // 4, q // 4), (t, p // 4, q // 4)))
    p, q = patch
    return nn.Sequential(
        nn.Conv2d(in_chans, c1, 3, 2, 1, bias=False), nn.GroupNorm(8, c1), nn.ReLU(inplace=True),
        nn.Conv2d(c1, c2, 3, 2, 1, bias=False), nn.GroupNorm(8, c2), nn.ReLU(inplace=True),
        nn.Conv2d(c2, dim, (p // 4, q // 4), (p // 4, q // 4)))


def _check_attn_impl(attn_impl: str) -> None:
    if attn_impl not in ATTN_IMPLS:
        raise ConfigError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")


class Attention(nn.Module):
    """Multi-head self-attention on ``(B, N, D)`` tokens.

    ``attn_impl="sdpa"`` calls :func:`torch.nn.functional.scaled_dot_product_attention` (flash /
    memory-efficient kernels on GPU); ``"naive"`` materialises the ``(B, heads, N, N)`` attention
    matrix, which the benchmarks use as the reference for speed and memory.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        attn_impl: str = "sdpa",
    ):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"embed dim {dim} must be divisible by num_heads {num_heads}")
        _check_attn_impl(attn_impl)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_impl = attn_impl
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, N, D) -> (B, N, D).

        ``attn_mask``: bool, broadcastable to (B, heads, N, N), True = may attend.
        """
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        drop = self.attn_drop if self.training else 0.0
        if self.attn_impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            weights = scores.softmax(dim=-1)
            if attn_mask is not None:  # a query with every key masked attends to nothing (zeros,
                # as SDPA gives) instead of softmax(-inf, ...) = NaN
                weights = torch.where(attn_mask.any(dim=-1, keepdim=True), weights, 0.0)
            out = F.dropout(weights, p=drop) @ v
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, D)))


class Mlp(nn.Module):
    """Two linear layers with GELU: ``(..., D) -> (..., D)``."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``; (B, N, D)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_impl: str = "sdpa",
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop, attn_impl)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        # Stochastic depth drops a whole residual branch per sample during training.
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attn_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Transformer(nn.Module):
    """A stack of :class:`Block` plus a final LayerNorm: ``(B, N, D) -> (B, N, D)``.

    ``blocks`` is a plain ``ModuleList`` so a fusion model can step through layers itself.
    ``drop_path`` rises linearly from 0 to the given rate over depth, as in ViT / DeiT.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        attn_impl: str = "sdpa",
    ):
        super().__init__()
        rates = drop_path_rates(drop_path, depth)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, True, drop, attn_drop, r, attn_impl) for r in rates
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def drop_path_rates(drop_path: float, depth: int) -> list[float]:
    """Stochastic-depth rate per block, rising linearly from 0 to ``drop_path`` (ViT / DeiT)."""
    return [drop_path * i / max(depth - 1, 1) for i in range(depth)]


def interpolate_pos_embed(
    pos: torch.Tensor, src_grid: tuple[int, ...], dst_grid: tuple[int, ...]
) -> torch.Tensor:
    """Resample grid positional embeddings to another grid.

    ``pos`` (1, prod(src_grid), D) laid out row-major over ``src_grid`` (1, 2 or 3 dims, e.g.
    (t, h, w) for video, (f, t) for spectrograms) -> (1, prod(dst_grid), D), by linear /
    bilinear / trilinear interpolation (``align_corners=False``). Returns ``pos`` itself when
    the grids are equal, so a model at its built size sees its exact embeddings.
    """
    src_grid, dst_grid = tuple(src_grid), tuple(dst_grid)
    if len(src_grid) != len(dst_grid) or not 1 <= len(src_grid) <= 3:
        raise ValueError(f"grids must both have 1-3 dims, got {src_grid} and {dst_grid}")
    if pos.shape[1] != math.prod(src_grid):
        raise ValueError(f"pos embed has {pos.shape[1]} tokens, grid {src_grid} needs "
                         f"{math.prod(src_grid)}")
    if src_grid == dst_grid:
        return pos
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(src_grid)]
    D = pos.shape[-1]
    grid = pos.reshape(1, *src_grid, D).movedim(-1, 1)  # (1, D, *src_grid)
    grid = F.interpolate(grid.float(), size=dst_grid, mode=mode, align_corners=False)
    return grid.movedim(1, -1).reshape(1, math.prod(dst_grid), D).to(pos.dtype)


class VideoTokenizer(nn.Module):
    """Tubelet embedding + learned (t, h, w) positional embedding.

    A Conv3d with kernel = stride = ``tubelet`` (t, p, p) maps ``(B, C, T, H, W)`` to tokens
    ``(B, T'·H'·W', D)`` ordered (t, h, w) row-major, with T' = T // t, H' = H // p, W' = W // p
    (a remainder is cropped by the convolution). Positional embeddings are built for the grid
    of ``clip_size`` (T, H, W) and trilinearly interpolated for other clip sizes.
    ``stem="conv"`` replaces the Conv3d by :func:`conv_stem` (same grid).
    """

    def __init__(
        self,
        dim: int,
        clip_size: tuple[int, int, int],
        tubelet: tuple[int, int, int] = (2, 16, 16),
        in_chans: int = 3,
        stem: str = "patch",
    ):
        super().__init__()
        self.tubelet = tuple(tubelet)
        self.in_chans, self.stem = in_chans, stem
        _check_stem(stem, self.tubelet)
        self.grid = self.grid_for(clip_size)
        if min(self.grid) < 1:
            raise ConfigError(f"clip size {clip_size} is smaller than the tubelet {tubelet}")
        self.proj = (conv_stem(in_chans, dim, self.tubelet) if stem == "conv" else
                     nn.Conv3d(in_chans, dim, kernel_size=self.tubelet, stride=self.tubelet))
        self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.grid), dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def grid_for(self, clip_size: tuple[int, int, int]) -> tuple[int, int, int]:
        """Token grid (T', H', W') for a clip of size (T, H, W)."""
        return tuple(s // k for s, k in zip(clip_size, self.tubelet))  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """``x`` (B, C, T, H, W) -> tokens (B, T'·H'·W', D) + pos embed, grid (T', H', W')."""
        if x.ndim != 5:
            raise ConfigError(f"expected a video batch (B, C, T, H, W), got {tuple(x.shape)}")
        grid = self.grid_for(x.shape[2:])
        if min(grid) < 1:
            raise ConfigError(f"clip {tuple(x.shape[2:])} is smaller than the tubelet "
                              f"{self.tubelet}; use at least that many frames / pixels")
        if self.stem == "conv":  # the patch projection crops a remainder; the stem must too
            x = x[:, :, : grid[0] * self.tubelet[0], : grid[1] * self.tubelet[1],
                  : grid[2] * self.tubelet[2]]
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        return tokens + interpolate_pos_embed(self.pos_embed, self.grid, grid), grid


class AudioTokenizer(nn.Module):
    """Spectrogram patch embedding + learned (f, t) positional embedding (AST-style).

    A Conv2d with kernel ``patch`` and stride ``stride`` (< patch gives AST's overlapping
    patches) maps a log-mel ``(B, 1, F, T)`` to tokens ``(B, F'·T', D)`` ordered (f, t)
    row-major, F' = (F - patch) // stride + 1 (same for T'). Positional embeddings are built for
    ``spec_size`` (F, T) and bilinearly interpolated for other lengths.
    ``stem="conv"`` replaces the Conv2d by :func:`conv_stem` (same grid; needs stride = patch).
    """

    def __init__(
        self,
        dim: int,
        spec_size: tuple[int, int],
        patch: int = 16,
        stride: int = 16,
        in_chans: int = 1,
        stem: str = "patch",
    ):
        super().__init__()
        self.patch, self.stride = patch, stride
        self.in_chans, self.stem = in_chans, stem
        _check_stem(stem, (patch, patch))
        if stem == "conv" and stride != patch:
            raise ConfigError(f"the conv stem makes non-overlapping patches: patch_stride must "
                              f"equal patch ({patch}), got {stride}")
        self.grid = self.grid_for(spec_size)
        if min(self.grid) < 1:
            raise ConfigError(f"spectrogram size {spec_size} is smaller than the patch {patch}")
        self.proj = (conv_stem(in_chans, dim, (patch, patch)) if stem == "conv" else
                     nn.Conv2d(in_chans, dim, kernel_size=patch, stride=stride))
        self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.grid), dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def grid_for(self, spec_size: tuple[int, int]) -> tuple[int, int]:
        """Token grid (F', T') for a spectrogram of size (F, T)."""
        return tuple((s - self.patch) // self.stride + 1 for s in spec_size)  # type: ignore

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """``x`` (B, 1, F, T) -> tokens (B, F'·T', D) with pos embed, and grid (F', T')."""
        if x.ndim != 4:
            raise ConfigError(f"expected a log-mel batch (B, 1, F, T), got {tuple(x.shape)}")
        grid = self.grid_for(x.shape[2:])
        if min(grid) < 1:
            raise ConfigError(f"spectrogram {tuple(x.shape[2:])} is smaller than the patch "
                              f"{self.patch}; use at least {self.patch} mel bins and frames")
        if self.stem == "conv":
            x = x[:, :, : grid[0] * self.patch, : grid[1] * self.patch]
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        return tokens + interpolate_pos_embed(self.pos_embed, self.grid, grid), grid


def init_vit_weights(module: nn.Module) -> None:
    """ViT initialisation (truncated normal 0.02 for linears, unit LayerNorm); use ``.apply``."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# Keys a training script's checkpoint wraps the state dict in ({"state_dict": ..., "epoch": 3}).
_WRAPPERS = ("state_dict", "model", "model_state", "model_state_dict")


def non_float_for_float(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of ``state`` holding integer (or bool) tensors where ``model`` has floating-point
    ones: ``load_state_dict`` would cast them silently, so callers refuse such a file."""
    own = model.state_dict()
    return [k for k, v in state.items() if k in own and own[k].is_floating_point()
            and not v.is_floating_point()]


def load_pretrained(model: nn.Module, path: str | None, *,
                    drop_head: tuple[str, ...] = ()) -> nn.Module:
    """Load a local ``.safetensors`` or torch state-dict file into ``model`` (strict); no downloads.

    Torch files are read with ``weights_only=True`` so a stranger's checkpoint never runs code.
    A state dict wrapped as ``{"state_dict" | "model" | "model_state": ...}`` is unwrapped and a
    ``"module."`` prefix (DistributedDataParallel) stripped. Keys under the ``drop_head``
    prefixes (a classifier the encoder leaves out, e.g. torchvision's ``"fc."``) are dropped.
    A file that is not a state dict of tensors, or whose tensors do not fit ``model`` (names,
    shapes, integer tensors for float ones), is a one-line ConfigError. ``path=None``: no-op.
    """
    if path is None:
        return model
    state = _unwrap(_read_state(path), path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(tuple(drop_head))}
    ints = non_float_for_float(model, state)
    if ints:
        raise ConfigError(f"{path}: {len(ints)} tensor(s) are {state[ints[0]].dtype} where "
                          f"{type(model).__name__} has floating point weights (e.g. {ints[0]}); "
                          "a quantized or foreign checkpoint? pass float weights")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        first = str(e).strip().splitlines()[-1].strip()
        raise ConfigError(f"{path} does not fit {type(model).__name__}: {first}; build the "
                          "variant (and sizes) the weights were saved from") from None
    if missing or unexpected:
        raise ConfigError(f"{path} does not match {type(model).__name__}: missing keys "
                          f"{list(missing)[:5]}, unexpected keys {list(unexpected)[:5]}; "
                          "build the variant the weights were saved from")
    return model


def _read_state(path: str) -> object:
    """The object stored in ``path``: safetensors (by name or content) or a torch file read with
    ``weights_only=True``; a damaged, truncated or foreign file is a one-line ConfigError."""
    # a path, never a number: os.path.isfile(5) and open(5) take file descriptor 5, so a
    # `"pretrained_path": 5` in a stranger's meta.json read (and closed) an open file
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise ConfigError(f"pretrained_path {path!r} is not a file; pass a local .safetensors "
                          "or .pt state dict (nothing is downloaded)")
    expected = "expected a .safetensors file or a torch state dict (.pt / .pth)"
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte header length, then the JSON header; torch files are zip / pickle
    if str(path).endswith(".safetensors") or head[8:9] == b"{":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise ConfigError(f"{path} is damaged or not safetensors ({_one_line(e)}); "
                              f"{expected}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # the weights-only unpickler met a non-tensor class
        raise ConfigError(f"{path} holds pickled objects other than tensors, which loading "
                          f"could execute; {expected} (save model.state_dict())") from None
    except Exception as e:  # truncated zip, foreign bytes: torch raises many types
        raise ConfigError(f"{path} is damaged or not a torch file ({type(e).__name__}: "
                          f"{_one_line(e)[:120]}); {expected}") from None


def _unwrap(state: object, path: str) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint's wrapper dict; ConfigError unless it maps
    names to tensors."""
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = [state[k] for k in _WRAPPERS if isinstance(state.get(k), dict)]
        if not inner:
            break
        state = inner[0]
    if not isinstance(state, dict) or not state:
        what = "an empty dict" if isinstance(state, dict) else type(state).__name__
        raise ConfigError(f"{path} holds {what}, not a state dict; expected {{name: tensor}}, "
                          f"optionally under one of {list(_WRAPPERS)}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(f"{path}: {len(bad)} of its entries are not tensors (e.g. {bad[0]!r}: "
                          f"{type(state[bad[0]]).__name__}); expected a state dict {{name: "
                          f"tensor}}, optionally under one of {list(_WRAPPERS)}")
    return state


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
