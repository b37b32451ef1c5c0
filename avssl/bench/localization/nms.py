"""Non-maximum suppression for 1D segments, per class.

Hard NMS maps each segment ``[start, end]`` to the box ``(start, 0, end, 1)``, whose 2D IoU with
another such box is exactly the 1D temporal IoU, and calls ``torchvision.ops.batched_nms``.
Gaussian Soft-NMS (Bodla et al., ICCV 2017; the variant ActionFormer uses) has no torchvision
op, so it is written with torch ops: one vectorised decay per selected segment.
"""
from __future__ import annotations

from typing import Optional

import torch
from torchvision.ops import batched_nms


def segment_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise temporal IoU of ``a`` (N, 2) and ``b`` (M, 2) ``[start, end]`` -> (N, M).

    A pair with zero union (two empty segments) has IoU 0.
    """
    inter = (torch.minimum(a[:, None, 1], b[None, :, 1])
             - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp_min(0)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def _labels(segs: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
    if labels is None:
        return torch.zeros(len(segs), dtype=torch.long, device=segs.device)
    return labels.to(device=segs.device, dtype=torch.long)


def nms_1d(segs: torch.Tensor, scores: torch.Tensor, iou_thresh: float,
           labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Hard NMS: indices (K,) of the kept segments, by decreasing score.

    ``segs`` (N, 2) ``[start, end]``, ``scores`` (N,), optional ``labels`` (N,) int: segments of
    different labels never suppress each other. A segment is dropped when its IoU with a kept,
    higher-scoring one is strictly greater than ``iou_thresh`` (torchvision's rule).
    """
    segs = segs.float()
    zeros, ones = torch.zeros_like(segs[:, 0]), torch.ones_like(segs[:, 0])
    boxes = torch.stack([segs[:, 0], zeros, segs[:, 1], ones], dim=1)
    return batched_nms(boxes, scores.float(), _labels(segs, labels), iou_thresh)


def soft_nms_1d(segs: torch.Tensor, scores: torch.Tensor, sigma: float = 0.5,
                min_score: float = 1e-3, labels: Optional[torch.Tensor] = None,
                max_keep: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian Soft-NMS: ``(indices (K,), decayed scores (K,))`` in selection order.

    Repeatedly select the remaining segment with the highest (decayed) score; every other
    remaining segment of the same label is decayed by ``exp(-iou² / sigma)`` and dropped once its
    score falls below ``min_score``. Selected scores are non-increasing, so stopping after
    ``max_keep`` selections gives the same top ``max_keep`` as running to the end.
    ``segs`` (N, 2), ``scores`` (N,), optional ``labels`` (N,) int.
    """
    if sigma <= 0:
        raise ValueError(f"soft_nms_1d expects sigma > 0, got {sigma}")
    segs, cur = segs.float(), scores.float().clone()
    lab = _labels(segs, labels)
    n = len(segs)
    limit = n if max_keep is None else min(n, max_keep)
    alive = cur >= min_score
    keep, kept_scores = [], []
    # Same-label mask as a 0/1 factor: IoU across labels counts as 0, i.e. no decay.
    while len(keep) < limit and bool(alive.any()):
        i = int(torch.where(alive, cur, cur.new_tensor(-float("inf"))).argmax())
        keep.append(i)
        kept_scores.append(cur[i])
        alive[i] = False
        iou = segment_iou(segs[i:i + 1], segs)[0] * (lab == lab[i])
        cur = torch.where(alive, cur * torch.exp(-(iou * iou) / sigma), cur)
        alive &= cur >= min_score
    idx = torch.tensor(keep, dtype=torch.long, device=segs.device)
    return idx, (torch.stack(kept_scores) if kept_scores else cur.new_zeros(0))
