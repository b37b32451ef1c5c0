"""Masked-token reconstruction (MAE / CAV-MAE style).

Papers: He et al., "Masked Autoencoders Are Scalable Vision Learners" (MAE, CVPR 2022) — MSE on
masked patches only, optional per-patch normalised targets; Gong et al., "Contrastive
Audio-Visual Masked Autoencoder" (CAV-MAE, ICLR 2023) — the same on audio and video tokens.

- :func:`random_token_mask` draws which tokens to hide: bool (B, N), True = masked, exactly
  ``round(ratio * N)`` per row, uniformly at random (MAE's shuffle: argsort of uniform noise).
- :func:`masked_reconstruction_loss` compares predicted patches with target patches, both
  (B, N, P) with P pixels per patch, on the masked tokens only.
"""
from __future__ import annotations

import torch

from avssl.errors import ConfigError


def random_token_mask(
    B: int,
    N: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Bool (B, N) mask with ``round(ratio * N)`` True entries per row at random positions.

    ``generator`` (a CPU ``torch.Generator``) makes the draw reproducible; the result is moved
    to ``device``.
    """
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"mask ratio must be in [0, 1), got {ratio}")
    n_mask = int(round(ratio * N))
    noise = torch.rand(B, N, generator=generator)
    rank = noise.argsort(dim=1).argsort(dim=1)  # rank of each token's noise within its row
    return (rank < n_mask).to(device) if device is not None else rank < n_mask


def masked_reconstruction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    norm_pix: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Mean squared error over masked tokens only.

    ``pred``, ``target`` (B, N, P); ``mask`` bool (B, N), True = masked (counted). The loss is
    the mean over masked tokens of the mean over P of (pred - target)². ``norm_pix=True``
    normalises each target patch to zero mean, unit variance over P first (MAE). Unmasked
    predictions get exactly zero gradient. With no masked token the loss is 0 (still connected
    to ``pred``'s graph, so backward works).
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ConfigError(f"reconstruction pred and target must both be (B, N, P), got "
                          f"{tuple(pred.shape)} and {tuple(target.shape)}")
    if mask.shape != pred.shape[:2]:
        raise ConfigError(f"reconstruction mask must be (B, N) = {tuple(pred.shape[:2])}, got "
                          f"{tuple(mask.shape)}")
    target = target.detach().float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True, unbiased=True)
        target = (target - mean) / (var + eps).sqrt()
    per_token = (pred.float() - target).pow(2).mean(dim=-1)  # (B, N)
    mask = mask.bool()
    # Selecting (not multiplying by the mask) keeps NaN/inf in unmasked predictions out.
    return per_token[mask].sum() / mask.sum().clamp_min(1)
