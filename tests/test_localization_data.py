"""THUMOS14 / ActivityNet-1.3 parsers, loaders and synthetic writers (issue 8, data part)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from avssl.data.datasets import DATASETS, build_dataset
from avssl.data.datasets.activitynet import read_activitynet
from avssl.data.datasets.thumos14 import (THUMOS14_CLASS_NAMES, THUMOS14_CLASSES,
                                          read_thumos14_annotations)
from avssl.data.synthetic import ACTIONS, WorldConfig
from avssl.data.synthetic.layouts import (ACTIVITYNET_CLASSES, THUMOS14_ACTION_CLASSES,
                                          THUMOS14_ALL_CLASSES, write_layout)
from avssl.errors import ConfigError, DataError

TINY = WorldConfig(size=32)
SHORT = dict(min_duration_s=8.0, max_duration_s=12.0)
ROUND = 0.05 + 1e-6  # THUMOS txt keeps 1 decimal


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loc")
    return {name: write_layout(name, root / name, clips_per_class=1, seed=5, cfg=TINY,
                               workers=1, **SHORT)
            for name in ("thumos14", "activitynet")}


def truth(root: Path) -> dict:
    return json.loads((root / "ground_truth.json").read_text())


def as_tuples(segments: list[dict], key: str = "video") -> list[tuple]:
    return sorted((s[key], s["label"], s["start"], s["end"]) for s in segments)


def assert_close(got: list[tuple], want: list[tuple], tol: float) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g[:2] == w[:2]
        assert abs(g[2] - w[2]) <= tol and abs(g[3] - w[3]) <= tol, (g, w)


def test_class_tables_agree():
    ids = [i for i, _ in THUMOS14_CLASSES]
    assert len(ids) == 20 and ids == sorted(ids) and ids[0] == 7 and ids[-1] == 97
    assert THUMOS14_CLASS_NAMES == THUMOS14_ALL_CLASSES
    assert len(set(THUMOS14_ACTION_CLASSES)) == len(ACTIONS)
    assert {"thumos14", "activitynet"} <= set(DATASETS.names())


@pytest.mark.parametrize("subset,suffix", [("validation", "val"), ("test", "test")])
def test_thumos14_annotations_match_ground_truth(trees, subset, suffix):
    root = trees["thumos14"]
    clips = [c for c in truth(root)["clips"] if c["subset"] == subset]
    assert len(clips) == 2 and all(8.0 <= c["duration_s"] <= 12.0 for c in clips)
    folder = root / "annotations" / subset
    assert sorted(p.name for p in folder.glob(f"*_{suffix}.txt")) == sorted(
        [f"{c}_{suffix}.txt" for c in THUMOS14_ALL_CLASSES] + [f"Ambiguous_{suffix}.txt"])
    got = read_thumos14_annotations(folder, subset)
    want = [(c["video_id"], THUMOS14_ACTION_CLASSES[s["action_index"]], s["start"], s["end"])
            for c in clips for s in c["segments"]]
    assert want and all(w[1] == s["label"] for w, s in zip(
        want, [s for c in clips for s in c["segments"]]))
    assert_close(as_tuples(got["segments"]), sorted(want), ROUND)
    amb = sorted((c["video_id"], a["start"], a["end"]) for c in clips for a in c["ambiguous"])
    got_amb = sorted((a["video"], a["start"], a["end"]) for a in got["ambiguous"])
    assert len(got_amb) == len(amb) >= 1  # the first video of each subset has one
    assert all(g[0] == w[0] and abs(g[1] - w[1]) <= ROUND for g, w in zip(got_amb, amb))
    assert got["classes"] == THUMOS14_CLASS_NAMES
    assert got["videos"] == sorted(c["video_id"] for c in clips)
    # the two spaces of the real format
    line = next(l for p in sorted(folder.glob(f"*_{suffix}.txt")) for l in p.read_text().split("\n")
                if l)
    assert "  " in line and line.split("  ")[0].startswith(f"video_{subset}_")


def test_thumos14_loader(trees):
    root = trees["thumos14"]
    clips = {c["video_id"]: c for c in truth(root)["clips"]}
    ds = build_dataset("thumos14", root, subset="validation")
    assert len(ds) == ds.num_used == ds.num_listed == 2 and ds.missing == []
    assert ds.class_names == THUMOS14_CLASS_NAMES
    for rec in ds:
        c = clips[rec.video_id]
        assert c["subset"] == "validation" and os.path.isabs(rec.path)
        assert Path(rec.path) == (root / c["path"]).resolve()
        assert [(ds.class_names[k]) for _, _, k in rec.segments] == [
            THUMOS14_ACTION_CLASSES[s["action_index"]] for s in c["segments"]]
        assert abs(rec.duration_s - c["duration_s"]) < 0.1  # probed from the file
    assert ds.report() == "thumos14: using 2 of 2 listed videos (0 missing, 0 undecodable)"


def test_activitynet_json_matches_ground_truth(trees):
    root = trees["activitynet"]
    t = truth(root)
    data = json.loads((root / "activity_net.v1-3.min.json").read_text())
    assert data["version"] == "VERSION 1.3" and data["taxonomy"]
    for subset in ("training", "validation", "testing"):
        clips = [c for c in t["clips"] if c["subset"] == subset]
        got = read_activitynet(root / "activity_net.v1-3.min.json", subset)
        assert got["videos"] == sorted(c["video_id"] for c in clips)
        assert all(len(v) == 11 for v in got["videos"])
        assert got["ambiguous"] == []
        want = [] if subset == "testing" else [
            (c["video_id"], ACTIVITYNET_CLASSES[s["action_index"]], s["start"], s["end"])
            for c in clips for s in c["segments"]]
        assert as_tuples(got["segments"]) == sorted(want)
        assert got["durations"] == {c["video_id"]: c["duration_s"] for c in clips}
        # classes come from the whole database, so every subset shares one index
        assert got["classes"] == sorted({ACTIVITYNET_CLASSES[s["action_index"]]
                                         for c in t["clips"] if c["subset"] != "testing"
                                         for s in c["segments"]})
    ds = build_dataset("activitynet", root, subset="validation")
    assert len(ds) == 2 and ds.missing == []
    for rec in ds:
        c = next(c for c in t["clips"] if c["video_id"] == rec.video_id)
        assert Path(rec.path).name == f"v_{rec.video_id}.mp4"
        assert rec.duration_s == c["duration_s"]  # from the JSON, no probe
        assert [(s, e, ds.class_names[k]) for s, e, k in rec.segments] == [
            (s["start"], s["end"], ACTIVITYNET_CLASSES[s["action_index"]]) for s in c["segments"]]


def test_same_ground_truth_in_both_formats(trees):
    """One seed renders the same videos in both layouts: THUMOS validation/test are ActivityNet
    training/validation, so the txt files and the JSON must give the same segments."""
    to_action = {name: ACTIONS[k] for k, name in enumerate(THUMOS14_ACTION_CLASSES)}
    to_action.update({name: ACTIONS[k] for k, name in enumerate(ACTIVITYNET_CLASSES)})
    th_clips = {c["video_id"]: c["index"] for c in truth(trees["thumos14"])["clips"]}
    an_clips = {c["video_id"]: c["index"] for c in truth(trees["activitynet"])["clips"]}
    for th_sub, an_sub in (("validation", "training"), ("test", "validation")):
        th = read_thumos14_annotations(trees["thumos14"] / "annotations" / th_sub, th_sub)
        an = read_activitynet(trees["activitynet"] / "activity_net.v1-3.min.json", an_sub)
        th_rows = sorted((th_clips[s["video"]], to_action[s["label"]], s["start"], s["end"])
                         for s in th["segments"])
        an_rows = sorted((an_clips[s["video"]], to_action[s["label"]], s["start"], s["end"])
                         for s in an["segments"])
        assert th_rows and {r[0] for r in th_rows} == {r[0] for r in an_rows}
        assert_close(th_rows, an_rows, ROUND)


def test_thumos14_text_liberalities(tmp_path):
    folder = tmp_path / "ann"
    folder.mkdir()
    (folder / "HighJump_test.txt").write_bytes(
        b"\xef\xbb\xbfvideo_test_0000004  0.2 1.1\r\n\r\nvideo_test_0000004\t3.5   4.75  \r\n"
        b"   \r\nvideo_test_0000007 10 12.5\r\n")
    (folder / "Diving_test.txt").write_text("video_test_0000009  1.0 2.0\n\n")
    (folder / "Ambiguous_test.txt").write_text("video_test_0000011 5.0 6.0\r\n")
    got = read_thumos14_annotations(folder, "test")
    assert as_tuples(got["segments"]) == [
        ("video_test_0000004", "HighJump", 0.2, 1.1), ("video_test_0000004", "HighJump", 3.5, 4.75),
        ("video_test_0000007", "HighJump", 10.0, 12.5), ("video_test_0000009", "Diving", 1.0, 2.0)]
    assert got["ambiguous"] == [{"video": "video_test_0000011", "start": 5.0, "end": 6.0}]
    # video_test_0000011 is only in Ambiguous_test.txt: the official protocol evaluates the
    # videos with segments in the class files, Ambiguous only marks regions to ignore
    assert got["videos"] == ["video_test_0000004", "video_test_0000007", "video_test_0000009"]
    # a segment written end-first still counts, read as [min, max] like the official kit's
    # overlap; dropping it would shrink the ground-truth count and inflate AP
    (folder / "Diving_test.txt").write_text("video_test_0000009  5.0 1.0\n")
    assert as_tuples(read_thumos14_annotations(folder, "test")["segments"])[-1] == (
        "video_test_0000009", "Diving", 1.0, 5.0)
    (folder / "Diving_test.txt").write_text("video_test_0000009  1.0 2.0\n\n")
    # the validation files are named _val; asking for them finds none here
    with pytest.raises(DataError, match="_val.txt per class"):
        read_thumos14_annotations(folder, "validation")
    (folder / "Diving_test.txt").write_text("video_test_0000009  1.0 2.0\nvideo_test_0000009 1.0\n")
    with pytest.raises(DataError, match=r"Diving_test\.txt:2:"):
        read_thumos14_annotations(folder, "test")
    for bad in ("1.0 two", "nan 5.0", "1.0 inf"):  # float() reads nan/inf; no segment is
        # endless, and an unmatchable one would only lower AP
        (folder / "Diving_test.txt").write_text(f"video_test_0000009  {bad}\n")
        with pytest.raises(DataError, match=r"Diving_test\.txt:1:"):
            read_thumos14_annotations(folder, "test")
    with pytest.raises(ConfigError, match="subset"):
        read_thumos14_annotations(folder, "train")


def test_missing_annotations_say_how_to_fix(tmp_path):
    for call in (lambda: read_thumos14_annotations(tmp_path / "nope", "test"),
                 lambda: read_thumos14_annotations(tmp_path, "test"),
                 lambda: build_dataset("thumos14", tmp_path, subset="test")):
        with pytest.raises(DataError) as info:
            call()
        msg = str(info.value)
        assert "\n" not in msg and "_test.txt" in msg
        assert "python -m avssl.data.synthetic --layout thumos14 --out DIR" in msg
    with pytest.raises(DataError, match="--layout activitynet"):
        build_dataset("activitynet", tmp_path)
    with pytest.raises(DataError, match="--layout activitynet"):
        read_activitynet(tmp_path / "activity_net.v1-3.min.json")
    (tmp_path / "bad.json").write_text('{"version": "VERSION 1.3"}')
    with pytest.raises(DataError, match="database"):
        read_activitynet(tmp_path / "bad.json")
    for bad in ("NaN", "Infinity"):  # what Python's json writes for non-finite floats
        (tmp_path / "bad.json").write_text(
            '{"database": {"v1": {"subset": "validation", "duration": 9.0, "annotations": '
            f'[{{"segment": [1.0, {bad}], "label": "Diving"}}]}}}}}}')
        with pytest.raises(DataError, match="malformed database entry 'v1'"):
            read_activitynet(tmp_path / "bad.json")


def test_listed_video_without_file_is_counted_missing(trees, tmp_path):
    th = tmp_path / "th"
    shutil.copytree(trees["thumos14"] / "annotations", th / "annotations")
    (th / "videos").symlink_to(trees["thumos14"] / "videos")
    with open(th / "annotations" / "test" / "Shotput_test.txt", "a") as fh:
        fh.write("video_test_0009999  1.0 2.0\n")
    ds = build_dataset("thumos14", th, subset="test")
    assert (ds.num_listed, ds.num_used, ds.missing) == (3, 2, ["video_test_0009999"])
    assert "video_test_0009999" not in ds.video_ids and "1 missing" in ds.report()

    an = tmp_path / "an"
    (an / "videos").mkdir(parents=True)
    data = json.loads((trees["activitynet"] / "activity_net.v1-3.min.json").read_text())
    val = sorted(v for v, e in data["database"].items() if e["subset"] == "validation")
    for vid in val:  # the other naming found in the wild: <id>.mp4 without "v_"
        os.symlink(trees["activitynet"] / "videos" / f"v_{vid}.mp4", an / "videos" / f"{vid}.mp4")
    data["database"]["-gone_00000"] = {"subset": "validation", "duration": 9.0, "url": "",
                                       "annotations": [{"segment": [1, 2],
                                                        "label": "Brand New Label"}]}
    (an / "activity_net.v1-3.min.json").write_text(json.dumps(data))
    ds = build_dataset("activitynet", an, subset="validation")
    assert (ds.num_listed, ds.num_used, ds.missing) == (3, 2, ["-gone_00000"])
    assert sorted(ds.video_ids) == val and "Brand New Label" in ds.class_names
    with pytest.raises(ConfigError, match="subset"):
        build_dataset("activitynet", an, subset="valid")


def test_thumos14_video_only_in_ambiguous_is_not_evaluated(trees, tmp_path):
    """Ambiguous_test.txt marks regions to ignore; a video it alone names (here one with a file)
    must not join the test set, where every prediction on it would be a false positive."""
    th = tmp_path / "th"
    shutil.copytree(trees["thumos14"] / "annotations", th / "annotations")
    (th / "videos").symlink_to(trees["thumos14"] / "videos")
    other = build_dataset("thumos14", th, subset="validation").video_ids[0]
    with open(th / "annotations" / "test" / "Ambiguous_test.txt", "a") as fh:
        fh.write(f"{other}  1.0 2.0\n")
    ds = build_dataset("thumos14", th, subset="test")
    assert other not in ds.video_ids and ds.num_listed == ds.num_used == 2


def _with_truncated_video(src: Path, dst: Path, video_id: str) -> Path:
    """Copy of the tree ``src`` whose file for ``video_id`` is cut to its first 2,000 bytes."""
    shutil.copytree(src, dst)
    path = next(p for p in (dst / "videos").iterdir() if p.stem in (video_id, f"v_{video_id}"))
    path.write_bytes(path.read_bytes()[:2000])
    return path


@pytest.mark.parametrize("name,subset", [("thumos14", "test"), ("activitynet", "validation")])
def test_skip_bad_drops_undecodable_untrimmed_videos(trees, tmp_path, name, subset):
    vid = build_dataset(name, trees[name], subset=subset).video_ids[0]
    bad = _with_truncated_video(trees[name], tmp_path / name, vid)
    ds = build_dataset(name, tmp_path / name, subset=subset, skip_bad=True)
    assert (ds.num_listed, ds.num_used, ds.missing) == (2, 1, [])
    assert [Path(p).resolve() for p, _ in ds.bad] == [bad.resolve()] and vid not in ds.video_ids
    assert ds.report().endswith("(0 missing, 1 undecodable)")
    assert all(r.known_duration_s for r in ds)  # probed once, up front
    # without skip_bad the file stays listed (and the bench's decoder names it)
    assert vid in build_dataset(name, tmp_path / name, subset=subset).video_ids


def test_writer_checks_duration_range(tmp_path):
    with pytest.raises(ConfigError, match="min_duration_s"):
        write_layout("thumos14", tmp_path, clips_per_class=1, cfg=TINY, min_duration_s=2.0,
                     max_duration_s=3.0)
    with pytest.raises(ConfigError, match="max_duration_s"):
        write_layout("activitynet", tmp_path, clips_per_class=1, cfg=TINY, min_duration_s=9.0,
                     max_duration_s=8.0)
