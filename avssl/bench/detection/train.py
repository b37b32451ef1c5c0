"""Train the RoI head on ground-truth boxes (binary cross-entropy) and score proposals.

Training is seeded and deterministic on CPU: minibatches of keyframes come from a seeded
generator and dropout runs under a forked, seeded RNG, so the global RNG is left as it was.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from avssl.bench.detection.head import RoIActionHead, map_stats, roi_max, rois_from_boxes
from avssl.errors import ConfigError, DataError


def train_head(maps: np.ndarray, boxes: Sequence[np.ndarray], labels: Sequence[np.ndarray], *,
               resolution: int = 7, **kw) -> RoIActionHead:
    """Fit a :class:`RoIActionHead` on whole maps: float32 (N, C, H', W') per keyframe, with
    boxes[i] (P_i, 4) normalised ground-truth boxes of keyframe i and labels[i] (P_i, K) multi-hot
    (``kw``: :func:`fit_head`'s options). Same result as :func:`fit_head` on their
    :func:`roi_max` features."""
    if len(maps) == 0 or len(maps) != len(boxes) or len(boxes) != len(labels):
        raise DataError(f"train_head needs one map, box set and label set per keyframe, got "
                        f"{len(maps)}, {len(boxes)}, {len(labels)}")
    mean, std = map_stats(maps)
    feats = [roi_max(torch.as_tensor(np.asarray(maps[i:i + 1]), dtype=torch.float32),
                     rois_from_boxes([boxes[i]]), resolution) for i in range(len(maps))]
    return fit_head(feats, labels, mean, std, resolution=resolution, **kw)


def fit_head(features: Sequence[np.ndarray | torch.Tensor], labels: Sequence[np.ndarray],
             mean: torch.Tensor, std: torch.Tensor, *, epochs: int = 40, batch_size: int = 16,
             lr: float = 1e-3, weight_decay: float = 1e-4, dropout: float = 0.5,
             resolution: int = 7, seed: int = 0, device: str | torch.device = "cpu",
             progress: bool = False) -> RoIActionHead:
    """Fit a :class:`RoIActionHead` with AdamW (cosine decay) and per-class BCE on RoI features.

    features[i]: (P_i, C) raw :func:`roi_max` features of keyframe i's ground-truth boxes;
    labels[i]: (P_i, K) multi-hot; mean, std: (C,) statistics of the training maps (inputs are
    standardised with them). Each step takes ``batch_size`` keyframes and all of their boxes;
    ``epochs`` passes over the keyframes. Returns the head in eval mode, with ``epoch_losses``
    (mean training BCE of each epoch).
    """
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"train_head needs epochs >= 1 and batch_size >= 1, got {epochs}, "
                          f"{batch_size}")
    if len(features) == 0 or len(features) != len(labels):
        raise DataError(f"train_head needs one feature set and label set per keyframe, got "
                        f"{len(features)}, {len(labels)}")
    keep = [i for i in range(len(features)) if len(features[i])]
    if not keep:
        raise DataError("train_head: no ground-truth person boxes to train on")
    num_classes = int(labels[keep[0]].shape[1])
    xs = [torch.as_tensor(np.asarray(features[i]), dtype=torch.float32) for i in keep]
    ys = [torch.as_tensor(np.asarray(labels[i], np.float32)) for i in keep]
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        head = RoIActionHead(xs[0].shape[1], num_classes, resolution=resolution, dropout=dropout)
        head.set_stats(mean, std)
        head.to(device).train()
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
        per_epoch = math.ceil(len(keep) / batch_size)
        steps = max(1, epochs * per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        gen = torch.Generator().manual_seed(seed)
        loss_fn = nn.BCEWithLogitsLoss()
        epoch_losses: list[float] = []
        bar = tqdm(total=steps, desc="ava head", unit="step", disable=not progress, leave=False)
        for _ in range(epochs):
            order = torch.randperm(len(keep), generator=gen).tolist()
            total = 0.0
            for b in range(0, len(order), batch_size):
                idx = order[b:b + batch_size]
                logits = head.classify(torch.cat([xs[i] for i in idx]).to(device))
                loss = loss_fn(logits, torch.cat([ys[i] for i in idx]).to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update()
                total += loss.item() * len(idx)
            epoch_losses.append(total / len(keep))
        bar.close()
    head.epoch_losses = epoch_losses  # type: ignore[attr-defined]  (mean BCE per epoch)
    return head.eval()


@torch.no_grad()
def predict_features(head: RoIActionHead, features: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Sigmoid scores per keyframe ``[(P_i, K)]`` from raw :func:`roi_max` features (P_i, C)."""
    head = head.eval()
    device = head.mean.device
    k = head.proj.out_features
    return [np.zeros((0, k), np.float32) if len(f) == 0 else
            torch.sigmoid(head.classify(torch.as_tensor(np.asarray(f), dtype=torch.float32)
                                        .to(device))).float().cpu().numpy()
            for f in features]


@torch.no_grad()
def predict(head: RoIActionHead, maps: np.ndarray, boxes: Sequence[np.ndarray], *,
            batch_size: int = 64) -> list[np.ndarray]:
    """Sigmoid scores per keyframe: ``[(P_i, K)]`` float32 for boxes[i] (P_i may be 0)."""
    head = head.eval()
    device = head.mean.device
    out: list[np.ndarray] = []
    k = head.proj.out_features
    for b in range(0, len(maps), batch_size):
        chunk = list(boxes[b:b + batch_size])
        rois = rois_from_boxes(chunk).to(device)
        if len(rois) == 0:
            out += [np.zeros((0, k), np.float32) for _ in chunk]
            continue
        x = torch.as_tensor(np.asarray(maps[b:b + batch_size]), dtype=torch.float32).to(device)
        scores = torch.sigmoid(head(x, rois)).float().cpu().numpy()
        sizes = np.cumsum([0] + [len(c) for c in chunk])
        out += [scores[sizes[i]:sizes[i + 1]] for i in range(len(chunk))]
    return out
