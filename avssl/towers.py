"""``AVTowers``: a video and an audio encoder with projection heads into one embedding space.

The model of ``recipes/pretrain_sync.py``; the bench rebuilds it from a checkpoint (components
``video``, ``audio``, ``video_proj``, ``audio_proj`` and the recipe's ``model`` config) to score
sync and cross-modal retrieval, so it lives in the library rather than in the recipe.
"""
from __future__ import annotations

import torch
from torch import nn

from avssl.errors import AvsslError


# An encoder's ``forward_features`` layout (its ``feature_layout`` attribute; default BCTHW for
# video, BCFT for audio) -> the (B, C, T) series the bins pool. Layouts without a time axis
# (e.g. BCHW of early fusion) are absent: such towers cannot be binned.
_TO_BCT = {
    "BCTHW": lambda m: m.mean(dim=(3, 4)),
    "BTCHW": lambda m: m.mean(dim=(3, 4)).transpose(1, 2),
    "BTC": lambda m: m.transpose(1, 2),
    "BCFT": lambda m: m.mean(dim=2),
}


def _layout(tower: nn.Module) -> str | None:
    modality = getattr(tower, "modality", "video")
    return getattr(tower, "feature_layout", "BCTHW" if modality == "video" else "BCFT")


def _check_binnable(tower: nn.Module) -> None:
    """AvsslError unless ``tower``'s declared features have a time axis of its embedding (its
    ``feature_layout`` is one the bins read, and it does not declare ``time_series = False``)."""
    layout = _layout(tower)
    if layout not in _TO_BCT or not getattr(tower, "time_series", True):
        raise AvsslError(f"{type(tower).__name__} gives no time series of its embedding to bin "
                         f"(feature layout {layout}); use --model.temporal_bins=0 with it")


def projection(dim: int, out: int) -> nn.Module:
    """The two-layer MLP head of SimCLR / AVTS: Linear(dim, dim) -> ReLU -> Linear(dim, out)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, out))


class AVTowers(nn.Module):
    """Video and audio towers + projection heads -> embeddings for sync and correspondence.

    With ``temporal_bins`` = K > 0 each tower's last feature map keeps its time axis: video
    (B, C, T', H', W') is averaged over space (the ViViT factorised encoder's temporal tokens
    are used as they are), audio (B, C, F', T'') over frequency, both pooled to K time bins and
    flattened (B, C*K) before the projection, so the embeddings say *when*
    things happen (a time-pooled embedding barely changes when the audio is shifted).
    """

    def __init__(self, video: nn.Module, audio: nn.Module, proj_dim: int, temporal_bins: int = 0):
        super().__init__()
        if temporal_bins:  # refused here, not at the first forward, so callers can fall back
            for tower in (video, audio):
                _check_binnable(tower)
        self.video, self.audio, self.bins = video, audio, temporal_bins
        k = max(1, temporal_bins)
        self.video_proj = projection(video.embed_dim * k, proj_dim)
        self.audio_proj = projection(audio.embed_dim * k, proj_dim)

    def _series(self, tower: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if not self.bins:
            return tower(x)
        maps = tower.forward_features(x)
        if isinstance(maps, dict):
            if "temporal" in maps:  # ViViT factorised encoder: the temporal transformer's frame
                # tokens (B, 1 + T', D), CLS first; its spatial "map" would skip that transformer
                series = maps["temporal"][:, 1:].transpose(1, 2)
                return nn.functional.adaptive_avg_pool1d(series, self.bins).flatten(1)
            maps = maps.get("map")  # other ViT-style encoders return {"cls", "map"}
        # the time axis comes from the encoder's declared layout, never from the tensor's rank:
        # 2D-trunk video baselines give (B, T, C, ...) maps, or maps without a time axis at all
        layout = _layout(tower)
        to_bct = _TO_BCT.get(layout)
        series = to_bct(maps) if (to_bct is not None and isinstance(maps, torch.Tensor)
                                  and maps.ndim == len(layout)) else None
        if series is None or series.shape[1] != tower.embed_dim:
            shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
            raise AvsslError(f"{type(tower).__name__} gives no time series of its {tower.embed_dim}"
                             f"-d embedding to bin (feature map {shape}, layout {layout}); use "
                             f"--model.temporal_bins=0 with it")
        return nn.functional.adaptive_avg_pool1d(series, self.bins).flatten(1)

    def embed_video(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, C, T, H, W) -> (B, proj_dim)."""
        return self.video_proj(self._series(self.video, video))

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """log-mel (B, 1, F, frames) -> (B, proj_dim)."""
        return self.audio_proj(self._series(self.audio, mel))

    def forward(self, video: torch.Tensor, mel: torch.Tensor, mel_shift: torch.Tensor,
                hard_valid: torch.Tensor | None = None) -> dict:
        """video (B, C, T, H, W); mel, mel_shift (B, 1, F, frames) -> three (B, proj_dim).

        hard_valid: optional bool (B,), False where ``mel_shift`` is a silent placeholder (no
        shifted window fitted): those rows skip the audio tower, so they do not enter its
        BatchNorm batch statistics, and their ``audio_shift`` embedding is zero (the objective
        masks them out)."""
        n = len(mel)
        if hard_valid is not None and not bool(hard_valid.all()):
            keep = hard_valid.to(mel_shift.device).bool()
            a = self.embed_audio(torch.cat([mel, mel_shift[keep]]))
            shift = a.new_zeros(n, a.shape[1]).index_copy(0, keep.nonzero().squeeze(1), a[n:])
            return {"video": self.embed_video(video), "audio": a[:n], "audio_shift": shift}
        a = self.embed_audio(torch.cat([mel, mel_shift]))
        return {"video": self.embed_video(video), "audio": a[:n], "audio_shift": a[n:]}
