"""Anchor-free multi-scale temporal localization head, in the spirit of ActionFormer.

ActionFormer (Zhang, Wu & Li, ECCV 2022): every time step of every level of a temporal feature
pyramid predicts, per class, the probability that an action is happening there, and the
distances to that action's start and end. Training assigns each point the shortest ground-truth
segment that contains it near its centre ("centre sampling") and whose size suits the level
("regression range"); the loss is a sigmoid focal loss plus a 1D DIoU loss on positives.

**Time mapping.** A video is a feature sequence ``x`` (C, T): feature ``t`` describes the window
``[t * stride_s, t * stride_s + window_s]`` seconds, so it sits at its centre,
``t * stride_s + window_s / 2``. Inside the model time is measured in *feature units*
``u = (seconds - window_s / 2) / stride_s`` (:func:`seconds_to_units`). Level ``l`` has stride
``2**l``: its ``i``-th point sits at ``u = i * 2**l`` (max-pooling with kernel 3, stride 2,
padding 1 keeps each output centred on an input), has length ``T_l = ceil(T / 2**l)``, and
regresses distances in units of ``2**l``.
"""
from __future__ import annotations

import math
import numbers
from typing import Literal, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from avssl.bench.localization.nms import nms_1d, soft_nms_1d
from avssl.errors import ConfigError, DataError

Outputs = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

# Prior probability of "action" at initialisation (RetinaNet / ActionFormer): almost every point
# is background, so starting near 0.01 keeps the focal loss from being swamped at step 0.
PRIOR_PROB = 0.01
# ActionFormer's centre-sampling radius, in units of the level's stride.
CENTER_RADIUS = 1.5


def seconds_to_units(t: Union[float, torch.Tensor], stride_s: float, window_s: float):
    """Seconds -> feature units (feature ``t`` is centred at ``t * stride_s + window_s / 2``)."""
    return (t - window_s / 2) / stride_s


def units_to_seconds(u: Union[float, torch.Tensor], stride_s: float, window_s: float):
    """Feature units -> seconds; the inverse of :func:`seconds_to_units`."""
    return u * stride_s + window_s / 2


def default_regression_ranges(levels: int) -> list[tuple[float, float]]:
    """ActionFormer's ranges in feature units: (0, 4), (4, 8), (8, 16), ..., last up to inf.

    A point of level ``l`` learns a segment only when the larger of its two distances to the
    segment's ends lies in ``ranges[l]`` (closed interval), so short actions go to fine levels
    and long ones to coarse levels.
    """
    ranges = [(0.0 if l == 0 else 2.0 ** (l + 1), 2.0 ** (l + 2)) for l in range(levels)]
    ranges[-1] = (ranges[-1][0], math.inf)
    return ranges


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of (B, C, T) at every time step (padding stays local)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class ConvBlock(nn.Module):
    """Residual ``x + ReLU(norm(conv(x)))``, zeroed at padded steps. (B, D, T) -> (B, D, T)."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.norm = ChannelNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[:, None].to(x.dtype)
        return (x + F.relu(self.norm(self.conv(x) * m))) * m


class LocalAttentionBlock(nn.Module):
    """Pre-norm transformer block whose self-attention sees only ``window`` neighbouring steps
    (ActionFormer's local attention) and never padded ones. (B, D, T) -> (B, D, T)."""

    def __init__(self, dim: int, window: int, heads: int = 4):
        super().__init__()
        self.window, self.heads = window, heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, _, t = x.shape
        pos = torch.arange(t, device=x.device)
        band = (pos[:, None] - pos[None, :]).abs() <= self.window // 2
        # (B, T, T) allowed pairs; the diagonal is always allowed so a padded query (whose band
        # may hold only padding) still has one key and no row of the softmax is all -inf.
        allowed = band[None] & mask[:, None, :]
        allowed = allowed | torch.eye(t, dtype=torch.bool, device=x.device)[None]
        attn_mask = (~allowed).repeat_interleave(self.heads, dim=0)
        h = x.transpose(1, 2)
        q = self.norm1(h)
        h = h + self.attn(q, q, q, attn_mask=attn_mask, need_weights=False)[0]
        h = h + self.mlp(self.norm2(h))
        return h.transpose(1, 2) * mask[:, None].to(x.dtype)


class Scale(nn.Module):
    """A learnable scalar per level (FCOS / ActionFormer) so one shared regression head can
    output distances of different magnitudes at different levels."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class PredictionHead(nn.Module):
    """``layers`` x (conv, norm, ReLU) then a conv to ``out`` channels, masked. Shared by all
    levels. (B, D, T_l) -> (B, out, T_l)."""

    def __init__(self, dim: int, out: int, kernel: int, layers: int = 2):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
                                   for _ in range(layers))
        self.norms = nn.ModuleList(ChannelNorm(dim) for _ in range(layers))
        self.out = nn.Conv1d(dim, out, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[:, None].to(x.dtype)
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x) * m)) * m
        return self.out(x) * m


class LocalizationHead(nn.Module):
    """Projection -> temporal feature pyramid -> shared classification and regression heads.

    ``forward(x (B, in_dim, T), mask (B, T) bool)`` returns one ``(cls, reg, mask_l)`` per level
    ``l = 0 .. levels-1``: ``cls`` (B, num_classes, T_l) logits (sigmoid, not softmax: classes
    may overlap), ``reg`` (B, 2, T_l) >= 0 distances to start and end in units of the level's
    stride ``2**l``, ``mask_l`` (B, T_l) bool valid steps, with ``T_l = ceil(T / 2**l)``.
    Padded steps are zeroed throughout, so they never influence valid ones.

    ``arch="conv"``: residual conv blocks; ``arch="transformer"``: local-window self-attention
    blocks (window ``attn_window`` steps at every level, so coarser levels see further).
    """

    def __init__(self, in_dim: int, num_classes: int, *, dim: int = 128, levels: int = 4,
                 layers_per_level: int = 1, kernel: int = 3,
                 arch: Literal["conv", "transformer"] = "conv", attn_window: int = 9,
                 heads: int = 4):
        super().__init__()
        if arch not in ("conv", "transformer"):
            raise ConfigError(f"unknown localization head arch {arch!r}; expected 'conv' or "
                              f"'transformer'")
        if levels < 1 or kernel < 1 or kernel % 2 == 0 or num_classes < 1:
            raise ConfigError(f"expected levels >= 1, an odd kernel and num_classes >= 1, got "
                              f"levels={levels}, kernel={kernel}, num_classes={num_classes}")
        self.in_dim, self.num_classes, self.levels = in_dim, num_classes, levels
        self.proj = nn.Conv1d(in_dim, dim, kernel, padding=kernel // 2)
        self.proj_norm = ChannelNorm(dim)

        def block() -> nn.Module:
            return (ConvBlock(dim, kernel) if arch == "conv"
                    else LocalAttentionBlock(dim, attn_window, heads))

        self.blocks = nn.ModuleList(nn.ModuleList(block() for _ in range(layers_per_level))
                                    for _ in range(levels))
        self.cls_head = PredictionHead(dim, num_classes, kernel)
        self.reg_head = PredictionHead(dim, 2, kernel)
        self.scales = nn.ModuleList(Scale() for _ in range(levels))
        nn.init.constant_(self.cls_head.out.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> Outputs:
        if x.ndim != 3 or x.shape[1] != self.in_dim:
            raise DataError(f"expected features of shape (B, {self.in_dim}, T), got "
                            f"{tuple(x.shape)}")
        if mask is None:
            mask = torch.ones(x.shape[0], x.shape[2], dtype=torch.bool, device=x.device)
        mask = mask.bool()
        m = mask[:, None].to(x.dtype)
        h = F.relu(self.proj_norm(self.proj(x * m) * m)) * m
        outputs = []
        for level, blocks in enumerate(self.blocks):
            if level > 0:
                # -inf at padded steps so a padded video pools exactly like an unpadded one
                h = F.max_pool1d(h.masked_fill(~mask[:, None], -math.inf), 3, stride=2,
                                 padding=1)
                mask = mask[:, ::2]  # step i of the coarser level sits on step 2i of this one
                h = h.masked_fill(~mask[:, None], 0.0)
            for blk in blocks:
                h = blk(h, mask)
            cls = self.cls_head(h, mask)
            reg = F.relu(self.scales[level](self.reg_head(h, mask)))
            outputs.append((cls, reg, mask))
        return outputs


def level_lengths(t: int, levels: int) -> list[int]:
    """``[ceil(t / 2**l) for l in range(levels)]``: the step count of every pyramid level."""
    return [-(-t // 2 ** l) for l in range(levels)]


def point_grid(lengths: Sequence[int],
               regression_ranges: Optional[Sequence[tuple[float, float]]] = None,
               device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """All points of all levels, concatenated: (P, 4) ``[position, range_lo, range_hi, stride]``
    in feature units, ``P = sum(lengths)``."""
    ranges = regression_ranges or default_regression_ranges(len(lengths))
    if len(ranges) != len(lengths):
        raise ConfigError(f"expected one regression range per level ({len(lengths)}), got "
                          f"{len(ranges)}")
    rows = []
    for level, (n, (lo, hi)) in enumerate(zip(lengths, ranges)):
        stride = 2.0 ** level
        pos = torch.arange(n, dtype=torch.float32, device=device) * stride
        rows.append(torch.stack([pos, torch.full_like(pos, lo), torch.full_like(pos, hi),
                                 torch.full_like(pos, stride)], dim=1))
    return torch.cat(rows)


def _as_segments(segments, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    seg = torch.as_tensor(segments, dtype=torch.float64).reshape(-1, 3)
    bounds, labels = seg[:, :2].float(), seg[:, 2].long()
    if len(seg) and (labels.min() < 0 or labels.max() >= num_classes
                     or bool((seg[:, 2] != seg[:, 2].round()).any())):
        raise DataError(f"expected integer segment classes in [0, {num_classes}), got "
                        f"{seg[:, 2].tolist()}; is num_classes right?")
    if len(seg) and bool((bounds[:, 1] < bounds[:, 0]).any()):
        raise DataError("expected segments with start <= end, got "
                        f"{[tuple(r) for r in bounds[bounds[:, 1] < bounds[:, 0]].tolist()]}")
    return bounds, labels


def assign_targets(segments, num_classes: int, lengths: Sequence[int], *,
                   stride_s: float = 1.0, window_s: float = 0.0,
                   regression_ranges: Optional[Sequence[tuple[float, float]]] = None,
                   center_radius: float = CENTER_RADIUS) -> tuple[torch.Tensor, torch.Tensor]:
    """ActionFormer's label assignment for one video.

    ``segments``: ``[(start_s, end_s, class_index)]`` (N, 3) in seconds (with the default
    ``stride_s=1, window_s=0`` seconds *are* feature units); ``lengths``: steps per level (see
    :func:`level_lengths`). A point at position ``p`` with stride ``s`` is positive for a segment
    ``[a, b]`` when it lies strictly inside both ``[a, b]`` and the centre region
    ``centre ± center_radius * s``, and when ``max(p - a, b - p)`` is in the level's regression
    range. Among such segments it takes the shortest (ties: all of the equally short ones).

    Returns ``cls_targets`` (P, num_classes) 0/1 and ``reg_targets`` (P, 2): the distances
    ``(p - a, b - p)`` to the assigned segment in units of ``s`` (meaningful on positives only).
    """
    pts = point_grid(lengths, regression_ranges)
    bounds, labels = _as_segments(segments, num_classes)
    n_pts = len(pts)
    if len(bounds) == 0:
        return torch.zeros(n_pts, num_classes), torch.zeros(n_pts, 2)
    gt = seconds_to_units(bounds, stride_s, window_s)  # (N, 2) feature units
    p, lo, hi, stride = (pts[:, i:i + 1] for i in range(4))  # each (P, 1)
    left, right = p - gt[None, :, 0], gt[None, :, 1] - p  # (P, N)
    centre = gt.mean(1)[None]
    c_left = p - torch.maximum(centre - center_radius * stride, gt[None, :, 0])
    c_right = torch.minimum(centre + center_radius * stride, gt[None, :, 1]) - p
    inside = torch.minimum(c_left, c_right) > 0
    reach = torch.maximum(left, right)
    in_range = (reach >= lo) & (reach <= hi)
    lens = (gt[:, 1] - gt[:, 0])[None].expand(n_pts, -1).masked_fill(~(inside & in_range),
                                                                     math.inf)
    min_len, idx = lens.min(dim=1)
    chosen = (lens <= min_len[:, None] + 1e-3) & torch.isfinite(lens)  # (P, N)
    cls_t = (chosen.float() @ F.one_hot(labels, num_classes).float()).clamp(max=1.0)
    rows = torch.arange(n_pts)
    reg_t = torch.stack([left[rows, idx], right[rows, idx]], dim=1) / stride
    return cls_t, reg_t


def flatten_outputs(outputs: Outputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate the levels: cls (B, P, K), reg (B, P, 2), mask (B, P)."""
    cls = torch.cat([c.transpose(1, 2) for c, _, _ in outputs], dim=1)
    reg = torch.cat([r.transpose(1, 2) for _, r, _ in outputs], dim=1)
    mask = torch.cat([m for _, _, m in outputs], dim=1)
    return cls, reg, mask


def iou_loss_1d(pred: torch.Tensor, target: torch.Tensor,
                kind: Literal["iou", "giou", "diou"] = "diou", eps: float = 1e-8) -> torch.Tensor:
    """1D IoU losses between segments given as distances from one shared point.

    ``pred``, ``target`` (N, 2) = ``(left, right) >= 0``. ``iou`` -> ``1 - IoU``; ``giou`` adds
    ``(enclosing - union) / enclosing``; ``diou`` adds ``(centre distance / enclosing)²``
    (Zheng et al., AAAI 2020; ActionFormer's ``ctr_diou_loss_1d``). Returns (N,).
    """
    lp, rp = pred[:, 0], pred[:, 1]
    lg, rg = target[:, 0], target[:, 1]
    inter = torch.minimum(lp, lg) + torch.minimum(rp, rg)
    union = (lp + rp) + (lg + rg) - inter
    iou = inter / union.clamp_min(eps)
    if kind == "iou":
        return 1 - iou
    enclosing = torch.maximum(lp, lg) + torch.maximum(rp, rg)
    if kind == "giou":
        return 1 - iou + (enclosing - union) / enclosing.clamp_min(eps)
    if kind == "diou":
        rho = 0.5 * ((rp - lp) - (rg - lg))
        return 1 - iou + (rho / enclosing.clamp_min(eps)) ** 2
    raise ConfigError(f"unknown IoU loss {kind!r}; expected 'iou', 'giou' or 'diou'")


def loss(outputs: Outputs, cls_targets: torch.Tensor, reg_targets: torch.Tensor, *,
         iou_kind: Literal["iou", "giou", "diou"] = "diou", reg_weight: float = 1.0,
         alpha: float = 0.25, gamma: float = 2.0) -> dict[str, torch.Tensor]:
    """Sigmoid focal loss over valid points + ``reg_weight`` x 1D IoU loss over positives, both
    summed and divided by the number of positive points (at least 1).

    ``outputs`` from :class:`LocalizationHead`; ``cls_targets`` (B, P, K) and ``reg_targets``
    (B, P, 2) from :func:`assign_targets` (padded videos' extra points are masked out anyway).
    Returns ``{"loss", "cls", "reg", "num_pos"}``.
    """
    cls, reg, mask = flatten_outputs(outputs)
    if cls_targets.shape != cls.shape or reg_targets.shape != reg.shape:
        raise DataError(f"expected targets of shapes {tuple(cls.shape)} and {tuple(reg.shape)}, "
                        f"got {tuple(cls_targets.shape)} and {tuple(reg_targets.shape)}")
    pos = (cls_targets.sum(-1) > 0) & mask
    norm = pos.sum().clamp_min(1).to(cls.dtype)
    cls_loss = sigmoid_focal_loss(cls[mask], cls_targets[mask].to(cls.dtype), alpha=alpha,
                                  gamma=gamma, reduction="sum") / norm
    if bool(pos.any()):
        reg_loss = iou_loss_1d(reg[pos], reg_targets[pos].to(reg.dtype), iou_kind).sum() / norm
    else:  # keep the graph connected so DDP / optimizers see every parameter
        reg_loss = reg.sum() * 0
    return {"loss": cls_loss + reg_weight * reg_loss, "cls": cls_loss, "reg": reg_loss,
            "num_pos": pos.sum()}


@torch.no_grad()
def decode(outputs: Outputs, stride_s: float, window_s: float, *, score_thresh: float = 0.001,
           pre_nms_topk: int = 2000, nms: Literal["soft", "hard"] = "soft",
           iou_thresh: float = 0.5, sigma: float = 0.5, max_segments: int = 200,
           duration_s: Union[None, float, Sequence[Optional[float]]] = None,
           min_length_s: float = 0.0) -> list[list[dict]]:
    """Turn head outputs into scored segments in seconds, per video.

    Per video: sigmoid scores of every valid (point, class) pair above ``score_thresh``, the
    ``pre_nms_topk`` best, their segments ``[p - left * s, p + right * s]`` mapped to seconds
    (module docstring), clipped to ``[0, duration_s]`` when a duration is given (one float, or
    one per video), segments not longer than ``min_length_s`` dropped, then per-class Soft-NMS
    (``sigma``; scores decay) or hard NMS (``iou_thresh``), keeping ``max_segments``.
    Returns ``[[{"start", "end", "label": int, "score"}, ...] per video]``, by decreasing score.
    """
    if nms not in ("soft", "hard"):
        raise ConfigError(f"unknown nms {nms!r}; expected 'soft' or 'hard'")
    cls, reg, mask = flatten_outputs(outputs)
    b, _, k = cls.shape
    if duration_s is None or isinstance(duration_s, numbers.Real):
        durations = [duration_s] * b
    else:
        durations = list(duration_s)
        if len(durations) != b:
            raise DataError(f"expected one duration per video ({b}), got {len(durations)}")
    pts = point_grid([c.shape[-1] for c, _, _ in outputs], device=cls.device)
    pos, stride = pts[:, 0], pts[:, 3]
    results = []
    for v in range(b):
        probs = cls[v].sigmoid() * mask[v, :, None]  # (P, K); padded points score 0
        flat = probs.flatten()
        cand = torch.nonzero(flat > score_thresh).squeeze(1)
        if len(cand) > pre_nms_topk:
            cand = cand[flat[cand].topk(pre_nms_topk).indices]
        scores, point, label = flat[cand], cand // k, cand % k
        start = units_to_seconds(pos[point] - reg[v, point, 0] * stride[point], stride_s,
                                 window_s)
        end = units_to_seconds(pos[point] + reg[v, point, 1] * stride[point], stride_s, window_s)
        start = start.clamp_min(0)
        if durations[v] is not None:
            start, end = start.clamp(max=durations[v]), end.clamp(0, durations[v])
        ok = (end - start) > min_length_s
        segs, scores, label = torch.stack([start, end], 1)[ok], scores[ok], label[ok]
        if nms == "soft":
            keep, scores = soft_nms_1d(segs, scores, sigma, min_score=score_thresh,
                                       labels=label, max_keep=max_segments)
        else:
            keep = nms_1d(segs, scores, iou_thresh, labels=label)[:max_segments]
            scores = scores[keep]
        segs, label = segs[keep], label[keep]
        results.append([{"start": float(s), "end": float(e), "label": int(c), "score": float(p)}
                        for (s, e), c, p in zip(segs.tolist(), label.tolist(), scores.tolist())])
    return results
