"""AVA v2.2 parsers (CSV rows, label maps, exclusions) and the keyframe loader ``ava()``."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from avssl.data import decoding
from avssl.data.datasets.ava import (
    AVA_CUT_S,
    UNCUT_MIN_S,
    AVARow,
    ava,
    read_exclusions,
    read_labelmap,
    read_rows,
)
from avssl.errors import ConfigError, DataError

torch.set_num_threads(1)

MAP_60 = '''item {
  name: "bend/bow (at the waist)"
  id: 1
}
item {
  name: "crouch/kneel"
  id: 3
}
item { name: "run/jog" id: 5 }
'''
MAP_80 = '''label {
  name: "bend/bow (at the waist)"
  label_id: 1
  label_type: PERSON_MOVEMENT
}
label {
  name: "crawl"
  label_id: 2
  label_type: PERSON_MOVEMENT
}
label {
  name: "crouch/kneel"
  label_id: 3
  label_type: PERSON_MOVEMENT
}
'''


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -------------------------------------------------------------------------------- parsers
def test_read_rows_groundtruth_accepts_8_7_and_2_columns(tmp_path):
    p = write(tmp_path / "gt.csv", "\ufeffvidA,0902,0.1,0.2,0.5,0.6,12,3\r\n\r\n"
                                   "vidA,0903,0.1,0.2,0.5,0.6,80\r\nvidB,1798\r\n")
    rows = read_rows(p)
    assert rows == [AVARow("vidA", 902, (0.1, 0.2, 0.5, 0.6), 12, 3, None),
                    AVARow("vidA", 903, (0.1, 0.2, 0.5, 0.6), 80, None, None),
                    AVARow("vidB", 1798, None, None, None, None)]
    assert rows[0].key == ("vidA", 902)


def test_read_rows_proposals_and_detections(tmp_path):
    p = write(tmp_path / "p.csv", "v,0902,0.1,0.1,0.3,0.4,,0.93\nv,0903,0.1,0.1,0.3,0.4,80,0.5\n")
    assert [(r.action_id, r.score) for r in read_rows(p, kind="proposals")] == [(None, 0.93),
                                                                                (80, 0.5)]
    d = write(tmp_path / "d.csv", "v,0902,0.1,0.1,0.3,0.4,7,0.25\nv,0902,0.3,0.1,0.1,0.4,7\n")
    rows = read_rows(d, kind="detections")
    assert rows[0] == AVARow("v", 902, (0.1, 0.1, 0.3, 0.4), 7, None, 0.25)
    assert rows[1].score is None and rows[1].box == (0.3, 0.1, 0.1, 0.4)  # kept as written
    with pytest.raises(ConfigError, match="kind must be one of"):
        read_rows(d, kind="boxes")


@pytest.mark.parametrize("kind, line, why", [
    ("groundtruth", "v,0902,0.1,0.1,0.3,0.4", "8 columns"),
    ("groundtruth", "video_id,timestamp,x1,y1,x2,y2,action_id,person_id", "no header row"),
    ("groundtruth", "v,09x2,0.1,0.1,0.3,0.4,1,0", "8 columns"),
    ("groundtruth", "v,0902.5,0.1,0.1,0.3,0.4,1,0", "8 columns"),
    ("groundtruth", "v,0902,0.1,0.1,0.3,0.4,,0", "8 columns"),
    ("groundtruth", "v,0902,10,10,300,400,1,0", "normalised to \\[0, 1\\]"),
    ("groundtruth", "v,0902,0.5,0.1,0.3,0.4,1,0", "x1 <= x2"),
    ("proposals", "v,0902,0.1,0.1,0.3,0.4,,", "8 columns"),
    ("detections", "v,0902,0.1,0.1,0.3,0.4,1,nan", "finite"),
    ("detections", "v,0902,0.1,0.1,0.3,0.4,1,0.5,9", "8 columns"),
])
def test_read_rows_errors_name_file_line_and_format(tmp_path, kind, line, why):
    p = write(tmp_path / "x.csv", f"v,0901,0.1,0.1,0.3,0.4,1,0\n\n{line}\n")
    with pytest.raises(DataError, match=rf"x\.csv:3: expected video_id,timestamp.*{why}"):
        read_rows(p, kind=kind)


def test_read_rows_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_rows(tmp_path / "nope.csv")


def test_read_labelmap_both_styles(tmp_path):
    assert read_labelmap(write(tmp_path / "a.pbtxt", MAP_60)) == (
        [1, 3, 5], ["bend/bow (at the waist)", "crouch/kneel", "run/jog"])
    assert read_labelmap(write(tmp_path / "b.pbtxt", MAP_80)) == (
        [1, 2, 3], ["bend/bow (at the waist)", "crawl", "crouch/kneel"])


def test_read_labelmap_skips_commented_out_classes(tmp_path):
    """'#' starts a protobuf-text comment: a class commented out of the map is not a class (it
    would otherwise count, with AP 0, in the mean), and '#' inside a quoted name is text."""
    text = ('# AVA v2.2, edited\nitem { name: "a #1" id: 1 }  # kept\n'
            '# item {\n#   name: "dropped"\n#   id: 2\n# }\n'
            'item {\n  name: "b"\n  # id: 9\n  id: 3\n}\nitem { name: "c" }\n')
    with pytest.raises(DataError, match=r"b\.pbtxt:12: expected"):  # line numbers kept
        read_labelmap(write(tmp_path / "b.pbtxt", text))
    assert read_labelmap(write(tmp_path / "b.pbtxt", text.rsplit("item", 1)[0])) == (
        [1, 3], ["a #1", "b"])


@pytest.mark.parametrize("text, why", [
    ('item {\n  name: "a"\n  id: 1\n}\nitem {\n  name: "b"\n}\n', r"b\.pbtxt:5: expected"),
    ('item { name: "a" id: 1 }\nitem { name: "b" id: 1 }\n', r"b\.pbtxt:2: class ids must be"),
    ('item { name: "a" id: 0 }\n', "unique integers >= 1"),
    ("just text\n", "found none"),
])
def test_read_labelmap_errors(tmp_path, text, why):
    with pytest.raises(DataError, match=why):
        read_labelmap(write(tmp_path / "b.pbtxt", text))


def test_read_exclusions(tmp_path):
    p = write(tmp_path / "e.csv", "vidA,0902\r\nvidB,1798\n\n")
    assert read_exclusions(p) == {("vidA", 902), ("vidB", 1798)}
    write(p, "vidA,0902\nvidA,0903,1\n")
    with pytest.raises(DataError, match=r"e\.csv:2: expected video_id,timestamp"):
        read_exclusions(p)


# --------------------------------------------------------------------------------- loader
GT_TRAIN = """\
vidA,0902,0.1,0.1,0.4,0.5,1,0
vidA,0902,0.1,0.1,0.4,0.5,3,0
vidA,0902,0.1,0.1,0.4,0.5,2,0
vidA,0902,0.5,0.2,0.9,0.9,5,1
vidA,0902,0.6,0.6,0.7,0.7,2,2
vidA,0903,0.2,0.2,0.3,0.3,2,0
vidA,0904,0.1,0.1,0.4,0.5,1,0
vidA,0905
vidB,0902,0.0,0.0,1.0,1.0,3,0
ghost,0902,0.0,0.0,1.0,1.0,3,0
"""
PROPOSALS = """\
vidA,0902,0.1,0.1,0.4,0.5,,0.95
vidA,0902,0.5,0.2,0.9,0.9,,0.8
vidA,0902,0.6,0.6,0.7,0.7,,0.79
vidA,0905,0.3,0.3,0.6,0.6,,0.99
vidA,0999,0.3,0.3,0.6,0.6,,0.99
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    r = tmp_path_factory.mktemp("ava")
    ann = r / "annotations"
    write(ann / "ava_train_v2.2.csv", GT_TRAIN)
    write(ann / "ava_val_v2.2.csv", GT_TRAIN)
    write(ann / "ava_action_list_v2.2_for_activitynet_2019.pbtxt", MAP_60)
    write(ann / "ava_action_list_v2.2.pbtxt", MAP_80)
    write(ann / "ava_train_excluded_timestamps_v2.2.csv", "vidA,0904\n")
    write(ann / "ava_val_predicted_boxes.csv", PROPOSALS)
    (r / "videos_15min").mkdir()
    frames = torch.full((4, 3, 16, 16), 100, dtype=torch.uint8)
    decoding.write_av(r / "videos_15min" / "vidA.mp4", frames, 30)
    (r / "videos_15min" / "vidB.mkv").write_bytes(b"not a video")
    return r


def test_groundtruth_keyframes_merge_rows_into_persons(root):
    s = ava(root, "train")
    assert s.class_ids == [1, 3, 5] and s.class_names[1] == "crouch/kneel"  # the 60-class file
    assert [(k.video_id, k.timestamp) for k in s.keyframes] == [("vidA", 902), ("vidB", 902)]
    k = s.keyframes[0]
    # persons: rows of (person 0, box) merge; person 2 has only action 2, absent from the map
    np.testing.assert_allclose(k.boxes, [[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.9, 0.9]])
    np.testing.assert_array_equal(k.labels, [[1, 1, 0], [0, 0, 1]])
    assert k.boxes.dtype == k.labels.dtype == k.scores.dtype == np.float32
    np.testing.assert_array_equal(k.scores, [1, 1])
    assert k.time_s == 902 - AVA_CUT_S == 2.0 and k.path.endswith("vidA.mp4")
    assert s.keyframes[1].path.endswith("vidB.mkv")
    # ghost has no file: listed 3 videos, used 2; records label = video id (manifest hashing)
    assert (s.num_listed, s.num_used, s.missing) == (3, 2, ["ghost"])
    assert [(Path(r.path).name, r.label) for r in s.records] == [("vidA.mp4", "vidA"),
                                                                 ("vidB.mkv", "vidB")]
    assert s.exclusions_csv.endswith("ava_train_excluded_timestamps_v2.2.csv")
    assert s.groundtruth_csv.endswith("ava_train_v2.2.csv") and s.labelmap.endswith(".pbtxt")


def test_labelmap_argument_selects_the_classes(root):
    s = ava(root, "train", labelmap=str(root / "annotations/ava_action_list_v2.2.pbtxt"))
    assert s.class_ids == [1, 2, 3]
    by_key = {(k.video_id, k.timestamp): k for k in s.keyframes}
    assert ("vidA", 903) in by_key  # its only action (2) is in the 80-class map
    # person 1's only action (5) is not in this map; person 2's (2) is
    np.testing.assert_array_equal(by_key[("vidA", 902)].labels, [[1, 1, 1], [0, 1, 0]])
    assert ("vidA", 904) not in by_key  # excluded timestamp


def test_proposals_cover_every_listed_keyframe_above_the_threshold(root):
    s = ava(root, "val", boxes="proposals", score_threshold=0.8)
    keys = [(k.video_id, k.timestamp) for k in s.keyframes]
    # val has no exclusions file: 0904 stays; 0905 (2-column row) is a keyframe; 0999 is not
    assert keys == [("vidA", 902), ("vidA", 903), ("vidA", 904), ("vidA", 905), ("vidB", 902)]
    k = s.keyframes[0]
    np.testing.assert_allclose(k.scores, [0.95, 0.8])  # >= threshold, 0.79 dropped
    assert k.labels.shape == (2, 3) and not k.labels.any()
    assert s.keyframes[1].boxes.shape == (0, 4) and s.keyframes[3].boxes.shape == (1, 4)
    assert len(ava(root, "val", boxes="proposals", score_threshold=0.5).keyframes[0].boxes) == 3


def linked(root: Path, tmp_path: Path, annotations: dict[str, str]) -> Path:
    """A tree with ``root``'s videos and label maps and the given annotation files."""
    r = tmp_path / "linked"
    (r / "annotations").mkdir(parents=True)
    os.symlink(root / "videos_15min", r / "videos_15min")
    for name in ("ava_action_list_v2.2_for_activitynet_2019.pbtxt", "ava_action_list_v2.2.pbtxt"):
        os.symlink(root / "annotations" / name, r / "annotations" / name)
    for name, text in annotations.items():
        write(r / "annotations" / name, text)
    return r


def test_proposals_repeated_per_action_row_are_one_box_with_the_highest_score(root, tmp_path):
    """A proposals file with a row per (box, action), as the ground truth has, lists a box several
    times: it is one proposal (scored once by the detector, one detection per class in the
    evaluator), with the highest of its scores, in order of first appearance."""
    r = linked(root, tmp_path, {"ava_val_v2.2.csv": "vidA,0902,0.1,0.1,0.4,0.5,1,0\n",
                                "ava_val_predicted_boxes.csv": """\
vidA,0902,0.5,0.2,0.9,0.9,80,0.85
vidA,0902,0.1,0.1,0.4,0.5,12,0.9
vidA,0902,0.5,0.2,0.9,0.9,74,0.95
vidA,0902,0.1,0.1,0.4,0.5,80,0.6
vidA,0902,0.5,0.2,0.9,0.9,,0.9
"""})
    k = ava(r, "val", boxes="proposals", score_threshold=0.5).keyframes[0]
    np.testing.assert_allclose(k.boxes, [[0.5, 0.2, 0.9, 0.9], [0.1, 0.1, 0.4, 0.5]])
    np.testing.assert_allclose(k.scores, [0.95, 0.9])
    assert k.labels.shape == (2, 3)


@pytest.mark.parametrize("ts", ["0002", "0899", "1800"])
def test_keyframes_outside_the_annotated_segment_are_refused(root, tmp_path, ts):
    """AVA keyframes are 0902..1798 s of the movie, read at ts - 900 s in the 15-min cut; 0002
    used to be read at -898 s, i.e. silently at the video's first frame."""
    r = linked(root, tmp_path, {"ava_train_v2.2.csv": f"vidA,0902,0.1,0.1,0.4,0.5,1,0\n"
                                                      f"vidA,{ts},0.1,0.1,0.4,0.5,1,0\n"})
    with pytest.raises(DataError, match=rf"ava_train_v2.2.csv: 1 row.*outside 900..1799 s "
                                        rf"\(e.g. vidA,{ts}\); expected .*0902..1798") as err:
        ava(r, "train")
    assert "\n" not in str(err.value)


def test_used_groundtruth_keeps_the_rows_of_used_videos_verbatim(root):
    """What the bench scores detections against: the ground-truth lines of the videos used, in
    file order, so videos missing on disk (ghost) or left out as undecodable (vidB) are not
    counted as missed."""
    lines = (root / "annotations/ava_train_v2.2.csv").read_text().splitlines()
    s = ava(root, "train")
    assert s.video_ids == ["vidA", "vidB"]
    assert s.used_groundtruth() == [l for l in lines if not l.startswith("ghost,")]
    assert ava(root, "train", skip_bad=True).used_groundtruth() == [
        l for l in lines if l.startswith("vidA,")]


def test_skip_bad_probes_and_drops_undecodable_videos(root):
    s = ava(root, "train", skip_bad=True)
    assert s.num_used == 1 and [p for p, _ in s.bad][0].endswith("vidB.mkv")
    assert {k.video_id for k in s.keyframes} == {"vidA"} and "1 undecodable" in s.report()


def test_full_movies_outside_videos_15min_are_read_at_their_own_timestamp(root, tmp_path):
    """The official trainval/ download holds full movies: keyframe 902 is at 902 s there, not at
    2 s as in a 15-min cut. Without videos_15min/ the loader probes lengths to tell them apart."""
    r = tmp_path / "raw"
    (r / "trainval").mkdir(parents=True)
    os.symlink(root / "annotations", r / "annotations")
    long = torch.full((UNCUT_MIN_S + 10, 3, 16, 16), 90, dtype=torch.uint8)  # 1 fps, 970 s
    decoding.write_av(r / "trainval" / "vidA.mp4", long, 1)
    decoding.write_av(r / "trainval" / "vidB.mp4", long[:4], 30)  # a 15-min cut kept here
    s = ava(r, "train")
    times = {(k.video_id, k.timestamp): k.time_s for k in s.keyframes}
    assert times == {("vidA", 902): 902.0, ("vidB", 902): 2.0}
    # inside videos_15min/ files are trusted to be cuts (no probing)
    assert {k.time_s for k in ava(root, "train").keyframes} == {2.0}


def test_loader_errors(root, tmp_path):
    with pytest.raises(DataError, match="python -m avssl.data.synthetic --layout ava --out DIR"):
        ava(tmp_path / "missing")
    with pytest.raises(DataError, match="ava_train_v2.2.csv"):
        ava(tmp_path)
    with pytest.raises(DataError, match="ava_train_predicted_boxes.csv"):
        ava(root, "train", boxes="proposals")
    with pytest.raises(ConfigError, match="split must be one of train, val"):
        ava(root, "test")
    with pytest.raises(ConfigError, match="boxes must be"):
        ava(root, boxes="detections")
    bare = tmp_path / "bare"
    write(bare / "annotations/ava_train_v2.2.csv", "x,0902,0.1,0.1,0.2,0.2,1,0\n")
    write(bare / "annotations/ava_action_list_v2.2.pbtxt", MAP_80)
    with pytest.raises(DataError, match="none of the 1 videos"):
        ava(bare)
