"""The AVA RoI detector (avssl.bench.detection): map adapter, RoIAlign head, training, scoring."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from avssl.bench.detection import (RoIActionHead, feature_map, predict, rois_from_boxes,
                                   train_head)
from avssl.encoders import build_encoder
from avssl.errors import ConfigError, DataError

GRID = 4  # map cells per side


def ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """Brute-force average precision: mean over positives of the precision at their rank."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order] > 0
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def cell_box(row: int, col: int, cells: int = 1) -> list[float]:
    """Normalised box covering ``cells`` x ``cells`` map cells from (row, col)."""
    return [col / GRID, row / GRID, (col + cells) / GRID, (row + cells) / GRID]


def toy_data(n: int, seed: int, channels: int = 12, classes: int = 4):
    """Maps of noise where each keyframe has two boxes on distinct cells; box j's class set is
    written into channel patterns at its cell only, so only the right location tells it."""
    rng = np.random.default_rng(seed)
    patterns = np.random.default_rng(99).normal(size=(classes, channels)).astype(np.float32)
    maps = rng.normal(size=(n, channels, GRID, GRID)).astype(np.float32)
    boxes, labels = [], []
    for i in range(n):
        cells = rng.choice(GRID * GRID, size=2, replace=False)
        bs, ls = [], []
        for c in cells:
            r, q = divmod(int(c), GRID)
            lab = (rng.random(classes) < 0.4).astype(np.float32)
            maps[i, :, r, q] += 2.5 * (lab @ patterns)
            bs.append(cell_box(r, q))
            ls.append(lab)
        boxes.append(np.array(bs, np.float32))
        labels.append(np.array(ls, np.float32))
    return maps, boxes, labels


def test_rois_from_boxes_prefix_batch_index():
    rois = rois_from_boxes([np.zeros((2, 4)), np.zeros((0, 4)), np.ones((1, 4))])
    assert rois.shape == (3, 5)
    assert rois[:, 0].tolist() == [0.0, 0.0, 2.0]
    assert rois[2, 1:].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_head_pools_the_box_location():
    head = RoIActionHead(1, 3, resolution=7, dropout=0.0)
    maps = torch.zeros(1, 1, GRID, GRID)
    maps[0, 0, 1, 2] = 5.0
    rois = rois_from_boxes([np.array([cell_box(1, 2), cell_box(3, 0), cell_box(0, 0, 4)])])
    pooled = head.pool(maps, rois)[:, 0]
    assert pooled[0] == pytest.approx(5.0, abs=1e-4)  # the hot cell's box
    assert pooled[1] == pytest.approx(0.0, abs=1e-4)  # a cell far away
    assert pooled[2] > 2.0  # the whole frame holds it too (spread over a 7x7 bin's samples)
    logits = head(maps, rois)
    assert logits.shape == (3, 3)


def test_head_standardises_with_training_stats():
    head = RoIActionHead(2, 1, dropout=0.0)
    maps = torch.stack([torch.full((GRID, GRID), 10.0), torch.full((GRID, GRID), -3.0)])[None]
    maps = maps + torch.randn(4, 2, GRID, GRID)
    head.set_input_stats(maps)
    assert torch.allclose(head.mean, maps.mean(dim=(0, 2, 3)), atol=1e-4)
    pooled = head.pool(maps, rois_from_boxes([np.array([cell_box(0, 0, 4)])]))
    assert pooled.abs().max() < 5  # standardised, not raw values of ~10


def test_feature_map_layouts():
    enc = build_encoder("i3d_r18_tiny").eval()
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        m = feature_map(enc, x)
    assert m.ndim == 5 and m.shape[:2] == (1, enc.embed_dim) and m.shape[-2:] == (2, 2)

    class PerFrame(nn.Module):  # (B, T, C, h, w), like the late-fusion baselines
        feature_layout = "BTCHW"

        def forward_features(self, x):
            return x.transpose(1, 2)[:, :, :, ::8, ::8]

    class Tokens(nn.Module):  # (B, N, D) tokens without a grid, like MViT
        def forward_features(self, x):
            return torch.zeros(x.shape[0], 17, 32)

    class Grid(nn.Module):
        def forward_features(self, x):
            return {"cls": torch.zeros(1, 5), "map": torch.ones(1, 5, 2, 3, 3)}

    per_frame = feature_map(PerFrame(), x)
    assert per_frame.shape == (1, 3, 8, 8, 8)
    assert torch.equal(per_frame, x[:, :, :, ::8, ::8])
    assert feature_map(Grid(), x).shape == (1, 5, 2, 3, 3)
    with pytest.raises(ConfigError, match="spatial feature map"):
        feature_map(Tokens(), x)


def test_feature_map_follows_the_declared_layout_when_channels_equal_frames():
    """The map's layout comes from the encoder's feature_layout (default BCTHW), not from the
    shape: guessing "axis 1 == the clip's frame count means per-frame" read a 3D CNN with as many
    channels as frames as (B, T, C, ...) (c3d_tiny on 32 frames gave a 4-channel map) and left
    per-frame maps with C == T untransposed (late_fusion_pool_tiny averaged over channels)."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32, 32)
    c3d = build_encoder("c3d_tiny").eval()  # 32 channels, stride 8 in time
    pool = build_encoder("late_fusion_pool_tiny", num_frames=32).eval()  # 32-channel trunk
    fc = build_encoder("late_fusion_fc_tiny", num_frames=32).eval()
    with torch.no_grad():
        raw = c3d.forward_features(x)
        assert raw.shape[1] == x.shape[2] != raw.shape[2]
        assert torch.equal(feature_map(c3d, x), raw)
        for enc in (pool, fc):  # (B, T, C, h, w) with T == C
            raw = enc.forward_features(x)
            assert raw.shape[1] == raw.shape[2] == x.shape[2]
            assert torch.equal(feature_map(enc, x), raw.transpose(1, 2))


def test_head_learns_labels_at_box_locations():
    maps, boxes, labels = toy_data(96, seed=0)
    head = train_head(maps, boxes, labels, epochs=25, batch_size=16, lr=1e-2, seed=0)
    assert head.epoch_losses[-1] < 0.6 * head.epoch_losses[0]
    t_maps, t_boxes, t_labels = toy_data(48, seed=1)
    scores = np.concatenate(predict(head, t_maps, t_boxes))
    y = np.concatenate(t_labels)
    m = np.nanmean([ap(scores[:, k], y[:, k]) for k in range(y.shape[1])])
    assert m > 0.9
    # the same maps with each keyframe's two boxes swapped: the head must look where the box is
    swapped = [b[::-1].copy() for b in t_boxes]
    s2 = np.concatenate(predict(head, t_maps, swapped))
    m2 = np.nanmean([ap(s2[:, k], y[:, k]) for k in range(y.shape[1])])
    assert m2 < m - 0.25


def test_training_is_seeded_and_leaves_global_rng_alone():
    maps, boxes, labels = toy_data(24, seed=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = train_head(maps, boxes, labels, epochs=3, batch_size=8, seed=5)
    after = torch.rand(1)
    b = train_head(maps, boxes, labels, epochs=3, batch_size=8, seed=5)
    c = train_head(maps, boxes, labels, epochs=3, batch_size=8, seed=6)
    assert torch.equal(before, after)
    assert torch.equal(a.proj.weight, b.proj.weight)
    assert not torch.equal(a.proj.weight, c.proj.weight)


def test_predict_keeps_keyframes_without_boxes():
    maps, boxes, labels = toy_data(6, seed=4)
    head = train_head(maps, boxes, labels, epochs=1, batch_size=4)
    boxes = [boxes[0], np.zeros((0, 4), np.float32), boxes[2]]
    out = predict(head, maps[:3], boxes, batch_size=2)
    assert [o.shape for o in out] == [(2, 4), (0, 4), (2, 4)]
    assert all(((o >= 0) & (o <= 1)).all() for o in out)
    alone = predict(head, maps[2:3], boxes[2:3])[0]
    np.testing.assert_allclose(out[2], alone, rtol=1e-5, atol=1e-6)


def test_train_head_rejects_bad_input():
    maps, boxes, labels = toy_data(4, seed=5)
    with pytest.raises(DataError):
        train_head(maps, boxes[:3], labels, epochs=1)
    with pytest.raises(DataError, match="no ground-truth"):
        train_head(maps, [np.zeros((0, 4), np.float32)] * 4,
                   [np.zeros((0, 4), np.float32)] * 4, epochs=1)
    with pytest.raises(ConfigError):
        train_head(maps, boxes, labels, epochs=0)


def test_a_classification_head_keeps_the_encoders_declared_layout():
    """build_encoder(..., num_classes=K) wraps the encoder; its forward_features is the
    encoder's, so the wrapper must declare the same layout or a per-frame map is read as BCTHW."""
    x = torch.randn(1, 3, 8, 32, 32)
    enc = build_encoder("late_fusion_pool_tiny", num_frames=8, num_classes=5).eval()
    assert (enc.feature_layout, getattr(enc, "time_series", True)) == \
        (enc.encoder.feature_layout, getattr(enc.encoder, "time_series", True))
    with torch.no_grad():
        torch.testing.assert_close(feature_map(enc, x), feature_map(enc.encoder, x))
