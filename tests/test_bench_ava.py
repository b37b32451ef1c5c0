"""Task ``ava`` end to end on a tiny synthetic AVA tree: bench mAP == the standalone evaluator's."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from avssl.bench.run import BenchArgs, run_bench
from avssl.bench.tasks import TASKS
from avssl.data.synthetic import WorldConfig
from avssl.data.synthetic.layouts import write_layout
from avssl.errors import ConfigError, DataError
from avssl.eval.__main__ import main as eval_main

# crop 32 -> 64 px detection clips: 2x2 maps from the stride-32 default encoder, fast enough
FAST = dict(crop=32, epochs=3, num_workers=0, batch_size=8)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_layout("ava", tmp_path_factory.mktemp("ava") / "ava", clips_per_class=1, seed=4,
                        cfg=WorldConfig(size=32), keyframes_per_video=1)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ava-cache")  # shared: the second run must hit it


@pytest.fixture(autouse=True)
def cache(cache_root, monkeypatch):
    monkeypatch.setenv("AVSSL_CACHE", str(cache_root))


@pytest.fixture(scope="module")
def first(tree, cache_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AVSSL_CACHE", str(cache_root))
        res = run_bench(BenchArgs(task="ava", data_root=str(tree), leaderboard=str(out / "lb"),
                                  save_predictions=str(out / "pred"), **FAST))
    return res, out


def test_task_spec():
    t = TASKS.get("ava")
    assert (t.kind, t.metric, t.protocols, t.splits, t.views, t.layout) == (
        "detection", "mAP", ("roi-linear",), ("val",), "1x1", "ava")
    assert t.run is not None


def test_bench_writes_official_detections_and_eval_agrees(first, tree, capsys):
    res, out = first
    m = res["metrics"]
    assert res["metric"] == "mAP" and 0.0 <= res["value"] <= 100.0
    truth = json.loads((tree / "ground_truth.json").read_text())
    assert res["videos_used"] == res["videos_expected"] == len(truth["clips"])
    with open(out / "pred" / "detections.csv", newline="") as fh:
        det = [r for r in csv.reader(fh) if r]
    assert all(len(r) == 8 for r in det)
    # one row per (proposal >= 0.8, evaluated class) of every val keyframe
    assert len(det) == 60 * m["proposals"] and m["proposals"] > 0
    assert all(0.0 <= float(r[7]) <= 1.0 for r in det)
    props = [r for r in csv.reader(open(tree / "annotations" / "ava_val_predicted_boxes.csv"))
             if r and float(r[7]) >= 0.8]
    assert {tuple(r[:2]) for r in det} <= {tuple(r[:2]) for r in props}
    ann = tree / "annotations"
    capsys.readouterr()
    rc = eval_main(["ava", "--groundtruth", str(ann / "ava_val_v2.2.csv"),
                    "--detections", str(out / "pred" / "detections.csv"),
                    "--labelmap", str(ann / "ava_action_list_v2.2_for_activitynet_2019.pbtxt"),
                    "--exclusions", str(ann / "ava_val_excluded_timestamps_v2.2.csv")])
    assert rc == 0
    cli = json.loads(capsys.readouterr().out)
    assert 100.0 * cli["mAP"] == pytest.approx(res["value"], abs=1e-9)
    rows = list(csv.DictReader(open(out / "lb" / "ava.csv")))
    assert len(rows) == 1 and rows[0]["metric"] == "mAP"
    # the detector sees 2 * crop = 64 px clips; the row's GMACs are counted at that size
    from avssl.bench.model import resolve_model
    from avssl.encoders.cost import count_cost

    model = resolve_model(spec_overrides={"crop": FAST["crop"]})
    frames = round(model.spec.clip_s * model.spec.fps)
    want = count_cost(model.video, (3, frames, 64, 64))["gmacs"]
    assert float(rows[0]["gmacs_per_clip"]) == pytest.approx(want, abs=1e-4)
    assert float(rows[0]["value"]) == pytest.approx(res["value"], abs=1e-6)


def test_videos_not_used_are_not_scored_and_saved_groundtruth_reproduces_the_bench(
        tree, tmp_path, capsys):
    """A val video missing on disk used to leave its ground truth in the scoring, every box of it
    a miss (here 7.14 instead of 20.00 mAP); the bench scores only the used videos' ground truth
    and saves it as groundtruth.csv, so the standalone evaluator gives its number back."""
    from avssl.eval.ava import evaluate_ava

    ann = tree / "annotations"
    gt_lines = (ann / "ava_val_v2.2.csv").read_text().splitlines()
    counts: dict[str, int] = {}
    for line in gt_lines:
        counts[line.split(",")[0]] = counts.get(line.split(",")[0], 0) + 1
    gone = max(counts, key=counts.get)  # the val video with the most ground-truth rows
    root = tmp_path / "ava"
    (root / "videos_15min").mkdir(parents=True)
    os.symlink(ann, root / "annotations")
    for video in (tree / "videos_15min").iterdir():
        if video.stem != gone:
            os.symlink(video, root / "videos_15min" / video.name)
    res = run_bench(BenchArgs(task="ava", data_root=str(root), leaderboard=None,
                              save_predictions=str(tmp_path / "pred"), **FAST))
    train = len({line.split(",")[0] for line in (ann / "ava_train_v2.2.csv").read_text().split()})
    assert (res["videos_used"], res["videos_expected"]) == (train + len(counts) - 1,
                                                            train + len(counts))
    saved = (tmp_path / "pred" / "groundtruth.csv").read_text().splitlines()
    assert saved == [line for line in gt_lines if not line.startswith(gone + ",")]
    labelmap = str(ann / "ava_action_list_v2.2_for_activitynet_2019.pbtxt")
    exclusions = str(ann / "ava_val_excluded_timestamps_v2.2.csv")
    capsys.readouterr()
    assert eval_main(["ava", "--groundtruth", str(tmp_path / "pred" / "groundtruth.csv"),
                      "--detections", str(tmp_path / "pred" / "detections.csv"),
                      "--labelmap", labelmap, "--exclusions", exclusions]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert 100.0 * cli["mAP"] == pytest.approx(res["value"], abs=1e-9)
    everything = evaluate_ava(ann / "ava_val_v2.2.csv", tmp_path / "pred" / "detections.csv",
                              labelmap, exclusions)
    assert 100.0 * everything["mAP"] < res["value"] - 1.0  # the missing boxes would cost this


def test_second_run_reuses_cache_and_repeats_numbers(first, tree, monkeypatch):
    from avssl.bench import detection

    def boom(*a, **k):
        raise AssertionError("features were recomputed despite the cache")

    monkeypatch.setattr(detection, "keyframe_roi_features", boom)
    again = run_bench(BenchArgs(task="ava", data_root=str(tree), leaderboard=None, **FAST))
    assert again["value"] == first[0]["value"]
    pc1, pc2 = first[0]["metrics"]["per_class"], again["metrics"]["per_class"]
    assert pc1 == pc2 and any(v is not None for v in pc1.values())


def test_missing_data_names_the_stand_in(tmp_path):
    with pytest.raises(DataError, match="--layout ava"):
        run_bench(BenchArgs(task="ava", data_root=str(tmp_path / "nothing"), leaderboard=None))


def test_audio_modality_is_refused(tree):
    with pytest.raises(ConfigError, match="modality video"):
        run_bench(BenchArgs(task="ava", data_root=str(tree), leaderboard=None, modality="audio",
                            **FAST))


def test_detections_csv_helper_orders_rows():
    from avssl.bench.tasks.ava import detection_rows

    class KF:
        video_id, timestamp = "vid", 902
        boxes = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)

    lines = detection_rows([KF()], [np.array([[0.25, 0.75]], np.float32)], [12, 80])
    assert lines == ["vid,0902,0.1,0.2,0.3,0.4,12,0.25", "vid,0902,0.1,0.2,0.3,0.4,80,0.75"]


def test_cached_roi_features_train_the_head_that_whole_maps_train(tree):
    """The bench caches RoI features and channel sums instead of maps (issue 9: a real AVA
    split's maps are tens of GB); the head trained on them scores proposals like the head trained
    on the maps themselves, and the statistics match the maps'."""
    import torch

    from avssl.bench.detection import (detection_size, fit_head, keyframe_maps,
                                       keyframe_roi_features, map_stats, predict,
                                       predict_features, roi_max, rois_from_boxes,
                                       stats_from_sums, train_head)
    from avssl.bench.model import resolve_model
    from avssl.data.datasets.ava import ava

    model = resolve_model(None, None, None, encoder_kwargs={}, seed=0,
                          spec_overrides={"clip_s": None, "fps": None, "size": None, "crop": 32})
    split = ava(str(tree), "train", boxes="groundtruth")
    size = detection_size(model.spec)
    maps = keyframe_maps(model, split.keyframes, size=size)
    roi = keyframe_roi_features(model, split.keyframes, size=size, batch_size=3)
    assert roi["counts"].tolist() == [len(kf.boxes) for kf in split.keyframes]
    manual = torch.cat([roi_max(torch.from_numpy(maps[i:i + 1]), rois_from_boxes([kf.boxes]))
                        for i, kf in enumerate(split.keyframes)])
    np.testing.assert_allclose(roi["features"], manual.numpy(), rtol=1e-5, atol=1e-5)
    mean, std = stats_from_sums(roi["sums"], float(roi["cells"]))
    ref_mean, ref_std = map_stats(maps)
    np.testing.assert_allclose(mean, ref_mean.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std, ref_std.numpy(), rtol=1e-4, atol=1e-5)
    assert roi["features"].nbytes < maps.nbytes

    labels = [kf.labels for kf in split.keyframes]
    by_maps = train_head(maps, [kf.boxes for kf in split.keyframes], labels, epochs=3, seed=1)
    rows = np.split(roi["features"], np.cumsum(roi["counts"])[:-1])
    by_feats = fit_head(rows, labels, torch.from_numpy(mean), torch.from_numpy(std), epochs=3,
                        seed=1)
    a = np.concatenate(predict(by_maps, maps, [kf.boxes for kf in split.keyframes]))
    b = np.concatenate(predict_features(by_feats, rows))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_roi_feature_statistics_survive_bf16_autocast(tree, monkeypatch):
    """On a bf16 GPU the bench extracts under bf16 autocast; the per-keyframe channel sums must
    still be float32, or E[x^2] - mean^2 cancels to a zero std for a channel whose mean is large
    against its spread (here mean 8, std ~0.2: bf16 sums of squares lose the spread entirely)."""
    import torch
    from torch import nn

    from avssl.bench.detection import detection_size, keyframe_roi_features, stats_from_sums
    from avssl.bench.model import resolve_model
    from avssl.data.datasets.ava import ava

    class Offset(nn.Module):  # a map with a large mean and a small, input-dependent spread
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(3, 4, (1, 8, 8), stride=(1, 8, 8))

        def forward_features(self, x):
            y = self.conv(x)
            return 8.0 + 0.2 * torch.tanh(y)

    model = resolve_model(None, None, None, encoder_kwargs={}, seed=0,
                          spec_overrides={"clip_s": None, "fps": None, "size": None, "crop": 32})
    enc = Offset().eval()
    monkeypatch.setattr(model, "encoder_for", lambda modality: enc)
    split = ava(str(tree), "train", boxes="groundtruth")
    size = detection_size(model.spec)
    stats = {}
    for precision in ("no", "bf16"):
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", precision)
        roi = keyframe_roi_features(model, split.keyframes, size=size, batch_size=3)
        stats[precision] = stats_from_sums(roi["sums"], float(roi["cells"]))
    mean32, std32 = stats["no"]
    mean16, std16 = stats["bf16"]
    assert std32.min() > 0.01
    np.testing.assert_allclose(mean16, mean32, rtol=1e-2)
    np.testing.assert_allclose(std16, std32, rtol=0.1)
