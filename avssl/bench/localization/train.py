"""Train a :class:`LocalizationHead` on per-video feature sequences and predict segments.

ActionFormer's recipe, shrunk: AdamW, linear warm-up then cosine decay (per step), gradient
clipping at norm 1, videos of different lengths padded within a batch (with a mask). Training
is a deterministic function of ``seed`` on CPU: model initialisation and shuffling draw from a
forked RNG, so the caller's global RNG state is left untouched.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from avssl.bench.localization.head import (LocalizationHead, assign_targets, decode,
                                           level_lengths, loss)
from avssl.errors import AvsslError, ConfigError, DataError

WARMUP_FRACTION = 0.1
CLIP_NORM = 1.0
WEIGHT_DECAY = 0.05  # ActionFormer's value


def _check_videos(videos: Sequence[dict], what: str, in_dim: Optional[int] = None) -> int:
    """Validate ``[{"x": (C, T), ...}]``; return C."""
    if len(videos) == 0:
        raise DataError(f"expected at least one {what} video, got none; check the split")
    dims = set()
    for i, v in enumerate(videos):
        x = np.asarray(v["x"]) if "x" in v else None
        if x is None or x.ndim != 2 or x.shape[1] == 0:
            raise DataError(f"expected {what} video {i} to have features 'x' of shape (C, T) "
                            f"with T >= 1, got {None if x is None else x.shape}")
        if not np.isfinite(x).all():
            raise DataError(f"{what} video {i} has non-finite features; check the encoder")
        dims.add(x.shape[0])
    if len(dims) != 1 or (in_dim is not None and dims != {in_dim}):
        raise DataError(f"expected every {what} video to have the same feature dimension"
                        f"{'' if in_dim is None else f' {in_dim}'}, got {sorted(dims)}")
    return dims.pop()


def pad_batch(xs: Sequence[np.ndarray], device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (C, T_i) arrays into zero-padded x (B, C, max T) float32 and mask (B, max T)."""
    t = max(x.shape[1] for x in xs)
    out = torch.zeros(len(xs), xs[0].shape[0], t)
    mask = torch.zeros(len(xs), t, dtype=torch.bool)
    for i, x in enumerate(xs):
        out[i, :, :x.shape[1]] = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        mask[i, :x.shape[1]] = True
    return out.to(device), mask.to(device)


def _batch_targets(videos: Sequence[dict], t: int, head: LocalizationHead, stride_s: float,
                   window_s: float) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = level_lengths(t, head.levels)
    cls_t, reg_t = zip(*(assign_targets(v["segments"], head.num_classes, lengths,
                                        stride_s=stride_s, window_s=window_s) for v in videos))
    return torch.stack(cls_t), torch.stack(reg_t)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_localizer(train: Sequence[dict], num_classes: int, *, stride_s: float, window_s: float,
                    epochs: int = 30, lr: float = 1e-3, batch_size: int = 8, seed: int = 0,
                    device="cpu", progress: bool = True, **head_kw) -> LocalizationHead:
    """Fit a :class:`LocalizationHead` (``head_kw`` go to its constructor); return it in eval mode.

    ``train``: ``[{"x": (C, T) float, "segments": [(start_s, end_s, class_index)],
    "duration_s": float}]``, where feature ``t`` covers ``[t * stride_s, t * stride_s +
    window_s]`` seconds. A non-finite loss or gradient stops training before the update.
    """
    if stride_s <= 0 or window_s < 0:
        raise ConfigError(f"expected stride_s > 0 and window_s >= 0, got {stride_s}, {window_s}")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError(f"expected epochs >= 1, batch_size >= 1, lr > 0, got {epochs}, "
                          f"{batch_size}, {lr}")
    in_dim = _check_videos(train, "training")
    for i, v in enumerate(train):
        if "segments" not in v:
            raise DataError(f"expected training video {i} to have 'segments' "
                            f"[(start_s, end_s, class_index)]")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        head = LocalizationHead(in_dim, num_classes, **head_kw).to(device)
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
        steps_per_epoch = math.ceil(len(train) / batch_size)
        total = epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, total, max(1, round(WARMUP_FRACTION * total))))
        gen = torch.Generator().manual_seed(seed)
        head.train()
        bar = tqdm(total=total, desc="localization head", unit="step", disable=not progress)
        step = 0
        for _ in range(epochs):
            order = torch.randperm(len(train), generator=gen).tolist()
            for b in range(0, len(order), batch_size):
                videos = [train[i] for i in order[b:b + batch_size]]
                x, mask = pad_batch([v["x"] for v in videos], device)
                cls_t, reg_t = _batch_targets(videos, x.shape[-1], head, stride_s, window_s)
                out = loss(head(x, mask), cls_t.to(device), reg_t.to(device))
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(head.parameters(), CLIP_NORM)
                if not (torch.isfinite(out["loss"]) and torch.isfinite(grad_norm)):
                    raise AvsslError(f"non-finite loss or gradient at step {step} "
                                     f"(loss={out['loss'].item():.4g}); stopped before the "
                                     f"optimizer update (check the features or lower lr)")
                opt.step()
                sched.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{out['loss'].item():.3f}", pos=int(out["num_pos"]))
        bar.close()
    return head.eval()


@torch.no_grad()
def predict(head: LocalizationHead, videos: Sequence[dict], *, stride_s: float, window_s: float,
            batch_size: int = 8, **decode_kw) -> list[list[dict]]:
    """Segments per video: ``[[{"start", "end", "label", "score"}]]`` in seconds, clipped to
    ``[0, duration_s]`` (``videos``: ``[{"x": (C, T), "duration_s": float}]``; without
    ``duration_s`` only the start is clipped at 0). ``decode_kw`` go to :func:`decode`.
    """
    if stride_s <= 0 or window_s < 0:
        raise ConfigError(f"expected stride_s > 0 and window_s >= 0, got {stride_s}, {window_s}")
    _check_videos(videos, "evaluation", head.in_dim)
    was_training = head.training
    head.eval()
    device = next(head.parameters()).device
    results: list[list[dict]] = []
    for b in range(0, len(videos), batch_size):
        chunk = videos[b:b + batch_size]
        x, mask = pad_batch([v["x"] for v in chunk], device)
        results += decode(head(x, mask), stride_s, window_s,
                          duration_s=[v.get("duration_s") for v in chunk], **decode_kw)
    head.train(was_training)
    return results
