"""The synthetic AVA v2.2 writer (``--layout ava``): formats, labels, proposals, determinism."""
from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from avssl.data.synthetic import LAYOUTS, WorldConfig
from avssl.data.synthetic.__main__ import main as synthetic_main
from avssl.data.synthetic.ava_layout import (AVA_CLASSES, AVA_EVAL_IDS, LISTEN_ID,
                                             POSE_OF_ACTION, TALK_ID, TALK_WINDOW_S, WATCH_ID,
                                             keyframe_labels)
from avssl.data.synthetic.layouts import write_layout
from avssl.errors import ConfigError

TINY = WorldConfig(size=32)
KPV = 2


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_layout("ava", tmp_path_factory.mktemp("ava") / "a", clips_per_class=1, seed=3,
                        cfg=TINY, keyframes_per_video=KPV)


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return [r for r in csv.reader(fh) if r]


def truth(root: Path) -> dict:
    return json.loads((root / "ground_truth.json").read_text())


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_registered_and_cli(tmp_path):
    assert "ava" in LAYOUTS.names()
    rc = synthetic_main(["--layout", "ava", "--out", str(tmp_path / "cli"), "--clips-per-class",
                         "1", "--size", "16"])
    assert rc == 0
    assert (tmp_path / "cli" / "annotations" / "ava_val_v2.2.csv").is_file()


def test_both_label_maps_are_the_real_ones(tree):
    full = (tree / "annotations" / "ava_action_list_v2.2.pbtxt").read_text()
    blocks = re.findall(r'label \{\s*name: "([^"]+)"\s*label_id: (\d+)\s*label_type: (\w+)\s*\}',
                        full)
    assert len(blocks) == 80 and [int(b[1]) for b in blocks] == list(range(1, 81))
    assert blocks[0][:2] == ("bend/bow (at the waist)", "1")
    assert blocks[78][:2] == ("talk to (e.g., self, a person, a group)", "79")
    assert {b[2] for b in blocks} == {"PERSON_MOVEMENT", "OBJECT_MANIPULATION",
                                      "PERSON_INTERACTION"}
    sixty = (tree / "annotations" / "ava_action_list_v2.2_for_activitynet_2019.pbtxt").read_text()
    items = re.findall(r'item \{\s*name: "([^"]+)"\s*id: (\d+)\s*\}', sixty)
    assert len(items) == 60
    ids = [int(i) for _, i in items]
    assert ids == AVA_EVAL_IDS and 2 not in ids and 16 not in ids and 80 in ids
    names80 = {int(i): n for n, i, _ in blocks}
    assert all(names80[int(i)] == n for n, i in items)


def test_ground_truth_rows_and_multi_label_persons(tree):
    t = truth(tree)
    assert t["layout"] == "ava" and len(t["classes"]) == 60
    for split in ("train", "val"):
        gt = rows(tree / "annotations" / f"ava_{split}_v2.2.csv")
        full = [r for r in gt if len(r) == 8]
        short = [r for r in gt if len(r) == 2]
        assert len(full) + len(short) == len(gt) and len(short) >= 1
        for r in full:
            assert re.fullmatch(r"0\d{3}", r[1]) and 902 <= int(r[1]) < 902 + KPV
            x1, y1, x2, y2 = map(float, r[2:6])
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            assert int(r[6]) in AVA_EVAL_IDS
        persons: dict[tuple, set[int]] = {}
        for r in full:
            persons.setdefault((r[0], r[1], r[7], tuple(r[2:6])), set()).add(int(r[6]))
        # every person has exactly one pose and at least two actions when someone else is there
        for acts in persons.values():
            assert len(acts & set(POSE_OF_ACTION)) == 1
        assert max(len(a) for a in persons.values()) >= 3
        # 2-column rows: exactly the keyframes with nobody visible (the empty video's, and any
        # where every actor is blinked off)
        nobody = {(c["video_id"], f"{kf['timestamp']:04d}") for c in t["clips"]
                  if c["split"] == split for kf in c["keyframes"] if not kf["persons"]}
        assert {tuple(r) for r in short} == nobody
        assert any(c["empty"] and c["split"] == split for c in t["clips"])
    # rows agree with ground_truth.json
    clip = next(c for c in t["clips"] if c["split"] == "train" and not c["empty"]
                and any(kf["persons"] for kf in c["keyframes"]))
    kf = next(k for k in clip["keyframes"] if k["persons"])
    want = {(p["person_id"], a) for p in kf["persons"] for a in p["actions"]}
    got = {(int(r[7]), int(r[6])) for r in rows(tree / "annotations" / "ava_train_v2.2.csv")
           if r[0] == clip["video_id"] and int(r[1]) == kf["timestamp"] and len(r) == 8}
    assert got == want


def test_labels_follow_the_world():
    boxes = np.tile(np.array([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.8, 0.8], [0, 0, .2, .2]],
                             np.float32), (90, 1, 1))
    visible = np.ones((90, 3), bool)
    visible[:, 2] = False  # actor 2 blinked off: not a person at this keyframe
    events = [{"time_s": 2.0 + TALK_WINDOW_S / 2, "actor": 0},
              {"time_s": 2.0 + 3 * TALK_WINDOW_S, "actor": 1}]
    persons = keyframe_labels(boxes, visible, np.array([8, 0, 3]), events, 2.0, 30.0)
    assert [p["person_id"] for p in persons] == [0, 1]
    assert persons[0]["actions"] == sorted([POSE_OF_ACTION[8], TALK_ID, WATCH_ID])
    assert persons[1]["actions"] == sorted([POSE_OF_ACTION[0], LISTEN_ID, WATCH_ID])
    alone = keyframe_labels(boxes[:, :1], visible[:, :1], np.array([5]), [], 2.0, 30.0)
    assert alone[0]["actions"] == [POSE_OF_ACTION[5]]


def test_proposals_cover_persons_and_add_false_positives(tree):
    t = truth(tree)
    for split in ("train", "val"):
        props = rows(tree / "annotations" / f"ava_{split}_predicted_boxes.csv")
        assert all(len(r) == 8 and r[6] == "" for r in props)
        scores = np.array([float(r[7]) for r in props])
        assert (scores < 0.8).any() and (scores >= 0.8).any() and scores.max() <= 1.0
        by_key: dict[tuple, list] = {}
        for r in props:
            by_key.setdefault((r[0], int(r[1])), []).append((list(map(float, r[2:6])),
                                                             float(r[7])))
        n_fp = 0
        for c in (c for c in t["clips"] if c["split"] == split):
            for kf in c["keyframes"]:
                kept = [b for b, s in by_key[(c["video_id"], kf["timestamp"])] if s >= 0.8]
                for p in kf["persons"]:  # every person has a proposal above the cut at IoU > 0.5
                    assert max(_iou(p["box"], b) for b in kept) > 0.5
                n_fp += len(kept) - len(kf["persons"])
                assert len(kept) == len(kf["persons"]) + len(kf["distractors"])
        assert n_fp >= 1


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def test_exclusions_and_videos(tree):
    from avssl.data.decoding import decode_video, probe

    t = truth(tree)
    for split in ("train", "val"):
        excl = rows(tree / "annotations" / f"ava_{split}_excluded_timestamps_v2.2.csv")
        assert [tuple(r) for r in excl] == [(v, f"{ts:04d}") for v, ts in t["exclusions"][split]]
    assert sum(len(v) for v in t["exclusions"].values()) >= 1
    clip = next(c for c in t["clips"] if not c["empty"])
    path = tree / clip["path"]
    assert path.parent.name == "videos_15min" and path.stem == clip["video_id"]
    info = probe(str(path))
    assert abs(info.fps - 30.0) < 0.01 and info.has_audio
    assert info.duration_s >= 2 + KPV  # keyframe 902 + k is at 2 + k s in the cut file
    frames = decode_video(str(path), 2.0, 2.5, fps=2)
    assert frames.shape[-2:] == (32, 32)


def test_deterministic_and_seeded(tmp_path):
    kw = dict(clips_per_class=1, cfg=WorldConfig(size=16), keyframes_per_video=1)
    a = write_layout("ava", tmp_path / "a", seed=1, workers=1, **kw)
    b = write_layout("ava", tmp_path / "b", seed=1, workers=2, **kw)
    c = write_layout("ava", tmp_path / "c", seed=2, workers=1, **kw)
    da, db = digest(a), digest(b)
    assert da == db
    ann = "annotations/ava_train_v2.2.csv"
    assert digest(c)[ann] != da[ann]


def test_bad_options(tmp_path):
    with pytest.raises(ConfigError):
        write_layout("ava", tmp_path / "x", clips_per_class=1, keyframes_per_video=0)
    with pytest.raises(ConfigError):
        write_layout("ava", tmp_path / "y", clips_per_class=0)
