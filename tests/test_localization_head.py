"""Tests of the ActionFormer-style localization head, its target assignment, losses, NMS,
decoding and training (synthetic feature sequences with and without signal)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avssl.bench.localization.head import (LocalizationHead, assign_targets, decode,
                                           default_regression_ranges, iou_loss_1d,
                                           level_lengths, loss, seconds_to_units)
from avssl.bench.localization.nms import nms_1d, segment_iou, soft_nms_1d
from avssl.bench.localization.train import predict, train_localizer
from avssl.errors import ConfigError, DataError

torch.set_num_threads(1)

C, K = 16, 3


# ---------------------------------------------------------------- shapes and masks

@pytest.mark.parametrize("arch", ["conv", "transformer"])
def test_level_shapes_follow_ceil_halving(arch):
    head = LocalizationHead(C, K, dim=16, levels=4, arch=arch)
    for t in (1, 5, 8, 37):
        out = head(torch.randn(2, C, t), torch.ones(2, t, dtype=torch.bool))
        assert len(out) == 4
        for level, (cls, reg, mask) in enumerate(out):
            t_l = math.ceil(t / 2 ** level)
            assert cls.shape == (2, K, t_l) and reg.shape == (2, 2, t_l)
            assert mask.shape == (2, t_l) and bool(mask.all())
            assert bool((reg >= 0).all())


@pytest.mark.parametrize("arch", ["conv", "transformer"])
def test_padding_does_not_change_valid_outputs(arch):
    torch.manual_seed(0)
    head = LocalizationHead(C, K, dim=16, levels=3, arch=arch, attn_window=5).eval()
    short = torch.randn(1, C, 13)
    padded = torch.cat([short, 100 * torch.randn(1, C, 10)], dim=2)  # junk in the padding
    mask = torch.zeros(1, 23, dtype=torch.bool)
    mask[0, :13] = True
    ref = head(short)
    out = head(padded, mask)
    for (c0, r0, m0), (c1, r1, m1) in zip(ref, out):
        t_l = c0.shape[-1]
        assert m1[0, :t_l].all() and not m1[0, t_l:].any()
        torch.testing.assert_close(c1[..., :t_l], c0, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(r1[..., :t_l], r0, atol=1e-4, rtol=1e-4)


def test_initial_scores_start_near_the_prior():
    torch.manual_seed(0)
    head = LocalizationHead(C, K, dim=16)
    cls = head(torch.randn(2, C, 40))[0][0]
    assert abs(cls.sigmoid().mean().item() - 0.01) < 0.005


def test_decode_never_emits_segments_from_padded_points():
    t, valid = 16, 8
    lengths = level_lengths(t, 2)
    outputs = []
    for level, n in enumerate(lengths):
        cls = torch.full((1, K, n), -20.0)
        reg = torch.ones(1, 2, n)
        mask = torch.arange(n)[None] * 2 ** level < valid
        cls[..., ~mask[0]] = 20.0  # confident garbage, but padded
        outputs.append((cls, reg, mask))
    segs = decode(outputs, 1.0, 0.0, nms="hard")[0]
    assert segs == []
    # the same garbage on valid points does come out, so the test above can fail
    outputs[0][0][0, 1, 2] = 20.0
    segs = decode(outputs, 1.0, 0.0, nms="hard")[0]
    assert len(segs) == 1 and segs[0]["label"] == 1
    assert segs[0]["start"] == pytest.approx(1.0) and segs[0]["end"] == pytest.approx(3.0)


def test_decode_maps_units_to_seconds_and_clips_to_duration():
    # one level, a single confident point at index 4 with distances (2, 10) in units
    cls = torch.full((1, K, 10), -20.0)
    cls[0, 2, 4] = 5.0
    reg = torch.zeros(1, 2, 10)
    reg[0, :, 4] = torch.tensor([2.0, 10.0])
    outputs = [(cls, reg, torch.ones(1, 10, dtype=torch.bool))]
    stride_s, window_s = 0.5, 2.0
    seg = decode(outputs, stride_s, window_s, nms="soft")[0][0]
    assert seg["label"] == 2 and seg["score"] == pytest.approx(torch.sigmoid(torch.tensor(5.0)))
    assert seg["start"] == pytest.approx((4 - 2) * stride_s + window_s / 2)
    assert seg["end"] == pytest.approx((4 + 10) * stride_s + window_s / 2)
    clipped = decode(outputs, stride_s, window_s, duration_s=[6.0])[0][0]
    assert clipped["end"] == pytest.approx(6.0) and clipped["start"] == pytest.approx(seg["start"])


# ---------------------------------------------------------------- target assignment

def test_assignment_prefers_the_shortest_containing_segment():
    wide = [(0.0, math.inf)]
    segments = [(1.0, 9.0, 0), (3.0, 6.0, 1)]  # feature units (stride_s=1, window_s=0)
    cls_t, reg_t = assign_targets(segments, K, [12], regression_ranges=wide, center_radius=100)
    expected = {2: (0, 1, 7), 3: (0, 2, 6), 4: (1, 1, 2), 5: (1, 2, 1), 6: (0, 5, 3),
                7: (0, 6, 2), 8: (0, 7, 1)}  # point -> (class, left, right); strict insideness
    for p in range(12):
        if p in expected:
            c, left, right = expected[p]
            assert cls_t[p].tolist() == [float(i == c) for i in range(K)], p
            assert reg_t[p].tolist() == [left, right], p
        else:
            assert cls_t[p].sum() == 0, p


def test_assignment_uses_regression_ranges_and_centre_sampling():
    # levels of stride 1 and 2, ranges (0, 4) and (4, inf); segment [0, 12] centred at 6
    assert default_regression_ranges(2) == [(0.0, 4.0), (4.0, math.inf)]
    cls_t, reg_t = assign_targets([(0.0, 12.0, 2)], K, [16, 8])
    # level 0: centre region (4.5, 7.5) holds points 5, 6, 7, but they reach 7, 6, 7 > 4
    assert cls_t[:16].sum() == 0
    # level 1 (stride 2): centre region (3, 9) holds positions 4, 6, 8 = indices 2, 3, 4
    pos = cls_t[16:, 2].nonzero().squeeze(1).tolist()
    assert pos == [2, 3, 4] and cls_t[16:, :2].sum() == 0
    assert reg_t[16 + 2].tolist() == [2.0, 4.0]  # (4 - 0, 12 - 4) / 2
    assert reg_t[16 + 3].tolist() == [3.0, 3.0]
    assert reg_t[16 + 4].tolist() == [4.0, 2.0]


def test_assignment_in_seconds_matches_feature_units():
    stride_s, window_s = 0.5, 1.0
    secs = [(2.0, 9.5, 1), (4.0, 5.5, 0)]
    units = [(seconds_to_units(s, stride_s, window_s), seconds_to_units(e, stride_s, window_s),
              c) for s, e, c in secs]
    assert units[0][:2] == (3.0, 18.0)
    a = assign_targets(secs, K, [32, 16, 8], stride_s=stride_s, window_s=window_s)
    b = assign_targets(units, K, [32, 16, 8])
    assert a[0].sum() > 0
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


def test_assignment_rejects_bad_classes():
    with pytest.raises(DataError, match="num_classes"):
        assign_targets([(0.0, 5.0, K)], K, [8])


# ---------------------------------------------------------------- losses

def test_iou_losses_by_hand():
    pred = torch.tensor([[1.0, 3.0], [1.0, 1.0], [2.0, 5.0]])
    target = torch.tensor([[2.0, 2.0], [3.0, 3.0], [2.0, 5.0]])
    # row 0: inter 1+2=3, union 4+4-3=5, IoU 0.6, enclosing 2+3=5, centre gap 0.5*(2-0)=1
    # row 1: inter 2, union 6, IoU 1/3, enclosing 6 = union, same centre
    torch.testing.assert_close(iou_loss_1d(pred, target, "iou"), torch.tensor([0.4, 2 / 3, 0.]))
    torch.testing.assert_close(iou_loss_1d(pred, target, "giou"), torch.tensor([0.4, 2 / 3, 0.]))
    torch.testing.assert_close(iou_loss_1d(pred, target, "diou"),
                               torch.tensor([0.4 + (1 / 5) ** 2, 2 / 3, 0.]))
    # both segments contain the shared point, so enclosing == union and GIoU == IoU here;
    # touching segments pred (0, 1) vs target (3, 0): inter 0, union 4 -> loss 1
    p2, t2 = torch.tensor([[0.0, 1.0]]), torch.tensor([[3.0, 0.0]])
    assert iou_loss_1d(p2, t2, "giou").item() == pytest.approx(1.0)
    # DIoU: centres at +0.5 and -1.5, gap 2 over enclosing 4
    assert iou_loss_1d(p2, t2, "diou").item() == pytest.approx(1.0 + (2 / 4) ** 2)


def test_loss_normalises_by_positives_and_backpropagates():
    torch.manual_seed(0)
    head = LocalizationHead(C, K, dim=16, levels=2)
    x = torch.randn(2, C, 20)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 12:] = False
    lengths = level_lengths(20, 2)
    targets = [assign_targets(s, K, lengths) for s in ([(2.0, 9.0, 0)], [(1.0, 4.0, 2)])]
    cls_t = torch.stack([t[0] for t in targets])
    reg_t = torch.stack([t[1] for t in targets])
    out = loss(head(x, mask), cls_t, reg_t)
    assert int(out["num_pos"]) == int((cls_t.sum(-1) > 0).sum()) > 0
    assert out["loss"].item() == pytest.approx(out["cls"].item() + out["reg"].item(), rel=1e-5)
    out["loss"].backward()
    assert head.reg_head.out.weight.grad.abs().sum() > 0
    # no positives at all: finite loss, zero regression term
    empty = loss(head(x, mask), torch.zeros_like(cls_t), torch.zeros_like(reg_t))
    assert torch.isfinite(empty["loss"]) and empty["reg"].item() == 0.0


# ---------------------------------------------------------------- NMS

def _brute_iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def _random_segments(n, seed):
    g = torch.Generator().manual_seed(seed)
    start = torch.rand(n, generator=g) * 20
    segs = torch.stack([start, start + 0.5 + torch.rand(n, generator=g) * 6], 1)
    return segs, torch.rand(n, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_segment_iou_matches_brute_force():
    segs, _, _ = _random_segments(15, 1)
    got = segment_iou(segs, segs)
    want = torch.tensor([[_brute_iou(a, b) for b in segs.tolist()] for a in segs.tolist()])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_nms_matches_brute_force(seed):
    segs, scores, labels = _random_segments(40, seed)
    order = sorted(range(40), key=lambda i: -scores[i].item())
    kept = []
    for i in order:
        if all(labels[i] != labels[j] or _brute_iou(segs[i].tolist(), segs[j].tolist()) <= 0.4
               for j in kept):
            kept.append(i)
    assert nms_1d(segs, scores, 0.4, labels).tolist() == kept
    assert len(kept) < 40  # the threshold actually suppressed something


@pytest.mark.parametrize("seed", [0, 1])
def test_soft_nms_matches_brute_force(seed):
    segs, scores, labels = _random_segments(30, seed)
    sigma, min_score = 0.5, 0.05
    cur = {i: scores[i].item() for i in range(30) if scores[i].item() >= min_score}
    keep, kept_scores = [], []
    while cur:
        i = max(cur, key=cur.get)
        keep.append(i)
        kept_scores.append(cur.pop(i))
        for j in list(cur):
            if labels[j] == labels[i]:
                iou = _brute_iou(segs[i].tolist(), segs[j].tolist())
                cur[j] *= math.exp(-iou ** 2 / sigma)
                if cur[j] < min_score:
                    del cur[j]
    idx, sc = soft_nms_1d(segs, scores, sigma, min_score, labels)
    assert idx.tolist() == keep
    torch.testing.assert_close(sc, torch.tensor(kept_scores))
    assert any(abs(a - scores[i].item()) > 1e-3 for i, a in zip(keep, kept_scores))  # decayed
    top, _ = soft_nms_1d(segs, scores, sigma, min_score, labels, max_keep=5)
    assert top.tolist() == keep[:5]


# ---------------------------------------------------------------- training and prediction

def _synthetic_videos(n: int, seed: int, signal: bool) -> list[dict]:
    """C=16 features at stride 1 s, window 1 s (feature t centred at t + 0.5 s); inside a segment
    of class c the features are a class vector + noise, elsewhere pure noise."""
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(1234).normal(size=(K, C)) * 1.5
    videos = []
    for _ in range(n):
        t_len = int(rng.integers(64, 129))
        x = rng.normal(size=(C, t_len)).astype(np.float32)
        segments, t = [], int(rng.integers(0, 8))
        while True:
            length = int(rng.integers(4, 24))
            if t + length > t_len:
                break
            c = int(rng.integers(K))
            if signal:
                x[:, t:t + length] += protos[c][:, None]
            # features t .. t+length-1 are centred inside [t, t + length] seconds
            segments.append((float(t), float(t + length), c))
            t += length + int(rng.integers(4, 20))
        videos.append({"x": x, "segments": segments, "duration_s": float(t_len)})
    return videos


def _tiou(a, b):
    return _brute_iou((a[0], a[1]), (b[0], b[1]))


def _map_at(gt_videos, preds, thresh=0.5):
    """ActivityNet-style mAP: per class, predictions by score, greedy match to unmatched GT of
    highest tIoU >= thresh, all-point interpolated AP; mean over classes."""
    aps = []
    for c in range(K):
        gts = {v: [s for s in g["segments"] if s[2] == c] for v, g in enumerate(gt_videos)}
        n_gt = sum(len(s) for s in gts.values())
        dets = sorted(((p["score"], v, p) for v, ps in enumerate(preds) for p in ps
                       if p["label"] == c), key=lambda d: -d[0])
        used = {v: [False] * len(s) for v, s in gts.items()}
        tp = []
        for _, v, p in dets:
            best, best_j = thresh, -1
            for j, g in enumerate(gts[v]):
                iou = _tiou((p["start"], p["end"]), g)
                if not used[v][j] and iou >= best:
                    best, best_j = iou, j
            tp.append(best_j >= 0)
            if best_j >= 0:
                used[v][best_j] = True
        tp = np.array(tp, dtype=float)
        rec = np.cumsum(tp) / max(n_gt, 1)
        prec = np.cumsum(tp) / np.arange(1, len(tp) + 1)
        mprec = np.concatenate([[0], prec, [0]])
        mrec = np.concatenate([[0], rec, [1]])
        for i in range(len(mprec) - 2, -1, -1):
            mprec[i] = max(mprec[i], mprec[i + 1])
        idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
        aps.append(float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])))
    return float(np.mean(aps))


def test_map_helper_on_hand_cases():
    gt = [{"segments": [(0.0, 10.0, 0), (20.0, 30.0, 1), (40.0, 50.0, 2)]}]
    perfect = [[{"start": s, "end": e, "label": c, "score": 1.0} for s, e, c in gt[0]["segments"]]]
    assert _map_at(gt, perfect) == pytest.approx(1.0)
    wrong_first = [perfect[0] + [{"start": 60.0, "end": 70.0, "label": 0, "score": 2.0}]]
    assert _map_at(gt, wrong_first) == pytest.approx((0.5 + 1.0 + 1.0) / 3)  # FP, then TP
    dup_low = [perfect[0] + [{"start": 0.0, "end": 10.0, "label": 0, "score": 0.5}]]
    assert _map_at(gt, dup_low) == pytest.approx(1.0)  # FP after full recall costs nothing
    none_for_2 = [perfect[0][:2]]
    assert _map_at(gt, none_for_2) == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def trained():
    train = _synthetic_videos(24, 0, signal=True)
    test = _synthetic_videos(8, 1, signal=True)
    head = train_localizer(train, K, stride_s=1.0, window_s=1.0, epochs=30, dim=64,
                           progress=False)
    return head, test, predict(head, test, stride_s=1.0, window_s=1.0)


def test_trained_head_localizes_actions(trained):
    _, test, preds = trained
    hits, total = 0, 0
    for video, ps in zip(test, preds):
        assert all(0.0 <= p["start"] <= p["end"] <= video["duration_s"] for p in ps)
        for s, e, c in video["segments"]:
            overlapping = [p for p in ps if p["label"] == c and _tiou((p["start"], p["end"]),
                                                                       (s, e)) > 0]
            top = max(overlapping, key=lambda p: p["score"], default=None)
            total += 1
            hits += top is not None and _tiou((top["start"], top["end"]), (s, e)) > 0.5
    assert hits / total > 0.7, (hits, total)
    assert _map_at(test, preds) > 0.6


def test_random_features_localize_clearly_worse(trained):
    _, test, preds = trained
    noise_train = _synthetic_videos(24, 0, signal=False)
    noise_test = _synthetic_videos(8, 1, signal=False)
    head = train_localizer(noise_train, K, stride_s=1.0, window_s=1.0, epochs=30, dim=64,
                           progress=False)
    noise_map = _map_at(noise_test, predict(head, noise_test, stride_s=1.0, window_s=1.0))
    assert noise_map < _map_at(test, preds) - 0.3


def test_training_is_deterministic_for_a_seed_and_leaves_global_rng_alone():
    videos = _synthetic_videos(6, 3, signal=True)
    before = torch.random.get_rng_state()
    a = train_localizer(videos, K, stride_s=1.0, window_s=1.0, epochs=2, batch_size=4, dim=16,
                        progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = train_localizer(videos, K, stride_s=1.0, window_s=1.0, epochs=2, batch_size=4, dim=16,
                        progress=False)
    c = train_localizer(videos, K, stride_s=1.0, window_s=1.0, epochs=2, batch_size=4, dim=16,
                        progress=False, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_bad_inputs_raise_one_line_errors():
    videos = _synthetic_videos(2, 0, signal=True)
    with pytest.raises(ConfigError, match="arch"):
        LocalizationHead(C, K, arch="lstm")
    with pytest.raises(DataError, match="at least one"):
        train_localizer([], K, stride_s=1.0, window_s=1.0)
    mixed = [videos[0], {**videos[1], "x": videos[1]["x"][:8]}]
    with pytest.raises(DataError, match="feature dimension"):
        train_localizer(mixed, K, stride_s=1.0, window_s=1.0, progress=False)
    with pytest.raises(DataError, match="num_classes"):
        train_localizer(videos, 2, stride_s=1.0, window_s=1.0, epochs=1, progress=False)
    with pytest.raises(ConfigError, match="stride_s"):
        train_localizer(videos, K, stride_s=0.0, window_s=1.0)
    head = LocalizationHead(C, K, dim=16)
    with pytest.raises(DataError, match="feature dimension 16"):
        predict(head, [{"x": np.zeros((8, 10), np.float32)}], stride_s=1.0, window_s=1.0)
