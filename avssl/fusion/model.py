"""Shared two-stream fusion model: a video ViT and an audio ViT stepped layer by layer.

Both streams are ViT-like modules with ``.tokenizer`` (:class:`VideoTokenizer` /
:class:`AudioTokenizer`), ``.cls_token`` (1, 1, D) and ``.transformer`` (``.blocks`` ModuleList
of L blocks and ``.norm``), e.g. ``vit_video_*`` and ``audio_vit_*``, of the same width D and
depth L. Subclasses decide how the streams exchange information (:meth:`FusionModel.fuse`); this
class embeds the inputs, applies each stream's final norm, classifies and reconstructs.

``forward(video (B, 3, T, H, W), logmel (B, 1, F, T), *, video_mask=None, audio_mask=None)``
returns a dict:

- ``"video_cls"``, ``"audio_cls"``: (B, D) CLS outputs after each stream's final norm;
- ``"fused"``: (B, 2D) = concat(video_cls, audio_cls); ``"logits"``: (B, num_classes) from
  ``head="linear"``: a linear classifier on ``fused``, or ``head="product"``: an MLP on
  [video_cls; audio_cls; video_cls * audio_cls] (D -> D -> num_classes), which can read the
  streams' agreement directly;
- with ``contrast_dim`` > 0: ``"video_embed"``, ``"audio_embed"`` (B, contrast_dim): each
  stream's CLS token after the isolated layers (< ``fusion_layer``, i.e. before any exchange),
  through LayerNorm + Linear, for a contrastive term across the batch (CAV-MAE's contrastive
  half). The CLS, not the mean patch token: the fused CLS outputs then start from features that
  already match across modalities, and the pair classifier learned within the default run
  only this way (the mean-token variant learned the contrast, the classifier stayed at
  chance). With ``embed_logmel`` (B, 1, F', T') given, ``"audio_embed"`` comes from that
  spectrogram instead (e.g. each row's in-sync audio, while ``logmel`` is the pair to
  classify), through the audio stream's isolated layers alone;
- ``"video_tokens"`` (B, Nv, D), ``"audio_tokens"`` (B, Na, D): final patch tokens (no CLS);
- with masks (bool (B, Nv) / (B, Na), True = replace the token by a learned mask token plus its
  positional embedding, SimMIM-style, after zeroing the masked patches' input pixels, so a
  conv stem cannot carry them into visible tokens; needs ``recon=True`` and non-overlapping
  patches): ``"recon_pred"``,
  ``"recon_target"``, ``"recon_mask"``, each a dict keyed by the masked modalities
  (``"video"``, ``"audio"``) holding (B, N, P) predicted patches from ``recon_head_*`` (a linear
  decoder), (B, N, P) target patches (:func:`patchify_video` / :func:`patchify_audio` of the
  input) and the (B, N) mask — the format :class:`~avssl.objectives.fusion.FusionObjective`
  takes.

The streams stay plain encoders: ``model.video.state_dict()`` loads into
``build_encoder("vit_video_tiny")`` (same sizes) for benchmarking, and a stream's own forward is
its unimodal use. Parameters that a forward does not use would break DistributedDataParallel,
so the mask tokens and decoders exist only with ``recon=True`` (then pass both masks).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from avssl.encoders.layers import interpolate_pos_embed
from avssl.errors import ConfigError

HEADS = ("linear", "product")


def patchify_video(x: torch.Tensor, tubelet: tuple[int, int, int]) -> torch.Tensor:
    """Video (B, C, T, H, W) -> tubelet patches (B, T'·H'·W', C·t·p·q), tokens in the
    tokenizer's (t, h, w) row-major order; a remainder that does not fill a tubelet is cropped
    (as the tokenizer's strided convolution does)."""
    t, p, q = tubelet
    B, C, T, H, W = x.shape
    nt, nh, nw = T // t, H // p, W // q
    x = x[:, :, : nt * t, : nh * p, : nw * q].reshape(B, C, nt, t, nh, p, nw, q)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, nt * nh * nw, C * t * p * q)


def patchify_audio(x: torch.Tensor, patch: int, stride: int | None = None) -> torch.Tensor:
    """Spectrogram (B, C, F, T) -> patches (B, F'·T', C·patch²) in the tokenizer's (f, t)
    row-major order, with the tokenizer's stride (overlapping patches when stride < patch)."""
    return F.unfold(x, kernel_size=patch, stride=stride or patch).transpose(1, 2)


def _patch_size(tokenizer: nn.Module) -> tuple[int, ...]:
    """A tokenizer's patch extent per input axis: (t, p, q) for video, (p, p) for audio."""
    if hasattr(tokenizer, "tubelet"):
        return tuple(tokenizer.tubelet)
    return (tokenizer.patch, tokenizer.patch)


def _pixel_mask(mask: torch.Tensor, grid: tuple[int, ...], patch: tuple[int, ...],
                size: tuple[int, ...]) -> torch.Tensor:
    """Token mask (B, prod(grid)) of non-overlapping patches -> input mask (B, *size), True on
    the pixels of masked patches (a remainder no token covers stays False)."""
    m = mask.reshape(mask.shape[0], *grid)
    for axis, k in enumerate(patch):
        m = m.repeat_interleave(k, dim=axis + 1)
    pad = []
    for axis in reversed(range(len(grid))):
        pad += [0, size[axis] - m.shape[axis + 1]]
    return F.pad(m, pad, value=False)


def _check_stream(stream: nn.Module, name: str) -> None:
    for attr in ("tokenizer", "cls_token", "transformer"):
        if not hasattr(stream, attr):
            raise ConfigError(f"the {name} stream {type(stream).__name__} is not a ViT stream "
                              f"(no .{attr}); use vit_video_* for video and audio_vit_* for audio")


class FusionModel(nn.Module):
    """Base of the fusion variants: ``forward`` runs the isolated layers (< ``fusion_layer``),
    ``fuse`` the rest (the variants differ only there)."""

    def __init__(
        self,
        video: nn.Module,
        audio: nn.Module,
        fusion_layer: int,
        num_classes: int = 3,
        recon: bool = False,
        head: str = "linear",
        contrast_dim: int = 0,
    ):
        super().__init__()
        _check_stream(video, "video")
        _check_stream(audio, "audio")
        dv, da = video.cls_token.shape[-1], audio.cls_token.shape[-1]
        lv, la = len(video.transformer.blocks), len(audio.transformer.blocks)
        if (dv, lv) != (da, la):
            raise ConfigError(f"fusion needs streams of equal width and depth, got video D={dv}, "
                              f"L={lv} and audio D={da}, L={la}; build the audio encoder with "
                              f"dim={dv}, depth={lv}")
        if not 0 <= fusion_layer <= lv:
            raise ConfigError(f"fusion_layer must be in [0, depth={lv}], got {fusion_layer}")
        self.video, self.audio = video, audio
        self.embed_dim, self.depth, self.fusion_layer = dv, lv, fusion_layer
        if head not in HEADS:
            raise ConfigError(f"fusion head must be one of {', '.join(HEADS)}, got {head!r}")
        if contrast_dim < 0:
            raise ConfigError(f"contrast_dim must be >= 0 (0: no embeddings), got {contrast_dim}")
        if contrast_dim and fusion_layer == 0:  # the embeddings read the CLS after layer L_f-1
            raise ConfigError("contrastive embeddings (contrast_dim > 0) need fusion_layer >= 1: "
                              "with no isolated layer the CLS they read is the same learned "
                              "vector for every clip; use contrast_dim=0 or fusion_layer >= 1")
        self.head = head
        if head == "linear":
            self.classifier = nn.Linear(2 * dv, num_classes)
        else:  # a linear map of [v; a] cannot compute their agreement; v * a can
            self.classifier = nn.Sequential(nn.Linear(3 * dv, dv), nn.GELU(),
                                            nn.Linear(dv, num_classes))
        for m in self.classifier.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.contrast_dim = contrast_dim
        if contrast_dim:  # created only when used: an unused parameter breaks DDP
            self.contrast_video = nn.Sequential(nn.LayerNorm(dv), nn.Linear(dv, contrast_dim))
            self.contrast_audio = nn.Sequential(nn.LayerNorm(dv), nn.Linear(dv, contrast_dim))
        self.recon = recon
        if recon:
            vt, at = video.tokenizer, audio.tokenizer
            if at.stride != at.patch:  # a visible patch would show part of a masked one
                raise ConfigError(f"masked reconstruction needs non-overlapping audio patches, "
                                  f"got patch {at.patch} with stride {at.stride}; build the "
                                  f"audio encoder with patch_stride={at.patch}")
            self.mask_token_video = nn.Parameter(torch.zeros(1, 1, dv))
            self.mask_token_audio = nn.Parameter(torch.zeros(1, 1, dv))
            self.recon_head_video = nn.Linear(dv, vt.in_chans * math.prod(vt.tubelet))
            self.recon_head_audio = nn.Linear(dv, at.in_chans * at.patch ** 2)
            for p in (self.mask_token_video, self.mask_token_audio):
                nn.init.trunc_normal_(p, std=0.02)

    def layers(self, start: int = 0):
        """(video block, audio block) pairs of layers ``start`` .. L-1."""
        pairs = zip(self.video.transformer.blocks, self.audio.transformer.blocks)
        return list(pairs)[start:]

    def fuse(self, xv: torch.Tensor, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layers ``fusion_layer`` .. L-1 on the isolated streams' outputs: (B, 1+Nv, D),
        (B, 1+Na, D) -> same shapes. The base class never exchanges information (late fusion)."""
        for bv, ba in self.layers(self.fusion_layer):
            xv, xa = bv(xv), ba(xa)
        return xv, xa

    def _embed(self, stream: nn.Module, x: torch.Tensor, mask: torch.Tensor | None,
               mask_token: torch.Tensor | None, name: str) -> torch.Tensor:
        """Input -> [CLS; tokens] (B, 1+N, D), masked tokens replaced by mask token + pos.

        The masked patches' pixels are zeroed before the tokenizer as well: a conv stem reaches
        across patch borders (3x3 convs, a temporal conv, GroupNorm over the clip), so the
        visible tokens would otherwise carry what the masked ones must reconstruct.
        """
        if mask is not None:
            if mask_token is None:
                raise ConfigError(f"{name}_mask given but the fusion model has no mask tokens; "
                                  "build it with recon=True")
            grid = stream.tokenizer.grid_for(tuple(x.shape[2:]))
            if mask.shape != (x.shape[0], math.prod(grid)):
                raise ConfigError(f"{name}_mask must be bool (B, N) = "
                                  f"{(x.shape[0], math.prod(grid))}, got {tuple(mask.shape)}")
            x = x * ~_pixel_mask(mask.bool(), grid, _patch_size(stream.tokenizer),
                                 x.shape[2:])[:, None]
        tokens, grid = stream.tokenizer(x)
        if mask is not None:
            tok = stream.tokenizer
            pos = interpolate_pos_embed(tok.pos_embed, tok.grid, grid)
            tokens = torch.where(mask.bool()[..., None], mask_token + pos, tokens)
        cls = stream.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def forward(self, video: torch.Tensor, logmel: torch.Tensor, *,
                video_mask: torch.Tensor | None = None,
                audio_mask: torch.Tensor | None = None,
                embed_logmel: torch.Tensor | None = None) -> dict:
        xv = self._embed(self.video, video, video_mask,
                         getattr(self, "mask_token_video", None), "video")
        xa = self._embed(self.audio, logmel, audio_mask,
                         getattr(self, "mask_token_audio", None), "audio")
        for bv, ba in self.layers()[: self.fusion_layer]:  # isolated: no exchange before L_f
            xv, xa = bv(xv), ba(xa)
        out = {}
        if self.contrast_dim:  # each stream's own view of its input, before any exchange
            out["video_embed"] = self.contrast_video(xv[:, 0])
            if embed_logmel is None:
                out["audio_embed"] = self.contrast_audio(xa[:, 0])
            else:
                ya = self._embed(self.audio, embed_logmel, None, None, "audio")
                for _, ba in self.layers()[: self.fusion_layer]:
                    ya = ba(ya)
                out["audio_embed"] = self.contrast_audio(ya[:, 0])
        elif embed_logmel is not None:
            raise ConfigError("embed_logmel given but the fusion model has no contrastive "
                              "embeddings; build it with contrast_dim > 0")
        xv, xa = self.fuse(xv, xa)
        xv, xa = self.video.transformer.norm(xv), self.audio.transformer.norm(xa)
        v, a = xv[:, 0], xa[:, 0]
        fused = torch.cat([v, a], dim=-1)
        logits = self.classifier(fused if self.head == "linear" else
                                 torch.cat([v, a, v * a], dim=-1))
        out.update({"video_cls": v, "audio_cls": a, "fused": fused, "logits": logits,
                    "video_tokens": xv[:, 1:], "audio_tokens": xa[:, 1:]})
        if video_mask is not None or audio_mask is not None:
            pred, target, mask = {}, {}, {}
            if video_mask is not None:
                pred["video"] = self.recon_head_video(xv[:, 1:])
                target["video"] = patchify_video(video, self.video.tokenizer.tubelet).detach()
                mask["video"] = video_mask.bool()
            if audio_mask is not None:
                tok = self.audio.tokenizer
                pred["audio"] = self.recon_head_audio(xa[:, 1:])
                target["audio"] = patchify_audio(logmel, tok.patch, tok.stride).detach()
                mask["audio"] = audio_mask.bool()
            out.update(recon_pred=pred, recon_target=target, recon_mask=mask)
        return out
