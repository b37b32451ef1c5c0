"""The synthetic world: determinism, ground truth, audio-visual sync, speed, and the writers'
on-disk layouts with every real-dataset gotcha."""
from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avssl.errors import AvsslError, ConfigError, DataError
from avssl.data.synthetic import (ACTIONS, AUDIOSET_CLASSES, HMDB51_CLASSES, KINETICS_CLASSES,
                                  UCF101_CLASSES, VGGSOUND_CLASSES, WorldConfig, render_clip,
                                  render_long, write_layout)
from avssl.data.synthetic.__main__ import main as cli_main

SOLO = WorldConfig(max_actors=1, max_distractors=0, jitter=0)  # one actor, nothing in the way
TINY = WorldConfig(size=32, duration_s=0.4)  # for writers: real files, tiny and quick


def onsets_s(x: np.ndarray, sr: int, hi: float = 0.1, lo: float = 0.05) -> np.ndarray:
    """Times (s) where the 2-ms RMS envelope of x rises through ``hi`` after being below ``lo``
    for the preceding 20 ms: sound-event onsets over the quiet hum."""
    w = int(0.002 * sr)
    env = np.sqrt(np.convolve(x.astype(np.float64) ** 2, np.ones(w) / w, mode="full")[w - 1:])
    quiet = int(0.02 * sr)
    out = []
    for n in np.flatnonzero((env[1:] >= hi) & (env[:-1] < hi)) + 1:
        if n >= quiet and env[n - quiet:n - w].max(initial=0.0) < lo:
            out.append(n / sr)
    return np.array(out)


def box_brightness(video: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(T,) mean pixel value inside each frame's box (normalised x1, y1, x2, y2)."""
    t, _, h, w = video.shape
    out = np.empty(t)
    for k in range(t):
        x1, y1, x2, y2 = boxes[k]
        r0, r1 = int(round(y1 * h)), max(int(round(y2 * h)), int(round(y1 * h)) + 1)
        c0, c1 = int(round(x1 * w)), max(int(round(x2 * w)), int(round(x1 * w)) + 1)
        out[k] = video[k, :, r0:r1, c0:c1].astype(np.float64).mean()
    return out


def angular_direction(boxes: np.ndarray) -> float:
    """Mean signed angular step of the box centre around its mean, in image coordinates
    (y down): > 0 turns clockwise on screen."""
    c = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)
    v = c - c.mean(0)
    ang = np.unwrap(np.arctan2(v[:, 1], v[:, 0]))
    return float(np.diff(ang).mean())


# ---------------------------------------------------------------- renderer


def test_sample_contract_shapes_and_ranges():
    cfg = WorldConfig()
    for index in range(6):
        s = render_clip(7, index, cfg=cfg)
        t, n = round(cfg.duration_s * cfg.fps), round(cfg.duration_s * cfg.sample_rate)
        a = len(s["actor_actions"])
        assert s["video"].dtype == np.uint8 and s["video"].shape == (t, 3, cfg.size, cfg.size)
        assert s["audio"].dtype == np.float32 and s["audio"].shape == (1, n)
        assert s["stems"].shape == (a, n) and s["noise"].shape == (1, n)
        assert s["boxes"].shape == (t, a, 4) and s["visible"].shape == (t, a)
        assert cfg.min_actors <= a <= cfg.max_actors
        assert s["distractor_boxes"].shape[:2] == (t, len(s["distractor_actions"]))
        assert np.abs(s["audio"]).max() <= 0.9
        assert s["boxes"].min() >= 0.0 and s["boxes"].max() <= 1.0
        assert (s["boxes"][..., 2] > s["boxes"][..., 0]).all()
        assert (s["boxes"][..., 3] > s["boxes"][..., 1]).all()
        assert s["label"] == index % len(ACTIONS) == s["actor_actions"][0]
        assert len(set(s["actor_actions"].tolist())) == a  # the other actors do other actions
        assert s["video_id"] == f"synth_7_{index:06d}"
        assert s["offset_s"] == 0.0 and s["clip_start_s"] == 0.0 and s["fps"] == cfg.fps


def test_label_can_be_forced_and_is_checked():
    assert render_clip(0, 5, label=2)["label"] == 2
    with pytest.raises(ConfigError):
        render_clip(0, 5, label=len(ACTIONS))
    with pytest.raises(ConfigError):
        render_clip(-1, 0)
    with pytest.raises(ConfigError):
        WorldConfig(size=63)
    with pytest.raises(ConfigError):
        WorldConfig(min_actors=3, max_actors=2)


def test_deterministic_in_seed_and_index():
    a, b = render_clip(3, 11), render_clip(3, 11)
    for key in ("video", "audio", "stems", "noise", "boxes", "actor_actions"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["events"] == b["events"]
    other = render_clip(3, 12)
    assert not np.array_equal(a["video"], other["video"])
    reseeded = render_clip(4, 11)
    assert not np.array_equal(a["video"], reseeded["video"])
    assert not np.allclose(a["audio"], reseeded["audio"])


def test_at_least_ten_classes_with_direction_and_order_pairs():
    assert len(ACTIONS) >= 10 and len(set(ACTIONS)) == len(ACTIONS)
    for pair in [("orbit_cw", "orbit_ccw"), ("slide_left_to_right", "slide_right_to_left"),
                 ("grow", "shrink"), ("approach_then_retreat", "retreat_then_approach")]:
        assert set(pair) <= set(ACTIONS)


def test_mixture_is_stems_plus_noise():
    for index in range(5):
        s = render_clip(1, index)
        np.testing.assert_allclose(s["audio"], s["stems"].sum(0, keepdims=True) + s["noise"],
                                   atol=1e-6)
        assert (np.abs(s["stems"]).max(axis=1) > 0.05).all()  # every sounding actor sounds


def test_orbit_direction_needs_motion_not_single_frames():
    cw, ccw = ACTIONS.index("orbit_cw"), ACTIONS.index("orbit_ccw")
    clips = {lab: [render_clip(5, i, label=lab) for i in range(40)] for lab in (cw, ccw)}
    # motion tells them apart, always; time-reversing a cw clip gives ccw motion
    for s in clips[cw]:
        assert angular_direction(s["boxes"][:, 0]) > 0
        assert angular_direction(s["boxes"][::-1, 0]) < 0
    for s in clips[ccw]:
        assert angular_direction(s["boxes"][:, 0]) < 0
    # ... but per-frame statistics (actor position, size, brightness) have the same law
    def stats(lab: int) -> np.ndarray:
        rows = []
        for s in clips[lab]:
            b = s["boxes"][:, 0]
            rows.append(np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2,
                                  b[:, 2] - b[:, 0], s["video"].mean(axis=(1, 2, 3)) / 255], 1))
        return np.concatenate(rows)
    a, b = stats(cw), stats(ccw)
    spread = np.concatenate([a, b]).std(0)
    assert (np.abs(a.mean(0) - b.mean(0)) < 0.3 * spread).all()
    assert (np.abs(a.std(0) - b.std(0)) < 0.3 * spread).all()


@pytest.mark.parametrize("label", range(len(ACTIONS)))
def test_sound_onsets_match_visual_events(label):
    s = render_clip(2, label, cfg=SOLO)
    fps, sr = s["fps"], s["sample_rate"]
    events = [e for e in s["events"] if e["actor"] == 0]
    assert events, f"{ACTIONS[label]} made no event"
    for e in events:
        assert abs(e["time_s"] - e["frame"] / fps) < 1e-9  # events sit on frames
    # visual: the actor brightens (or appears) exactly on its event frames
    light = box_brightness(s["video"], s["boxes"][:, 0])
    rises = set((np.flatnonzero(np.diff(light) > 20) + 1).tolist())
    assert rises == {e["frame"] for e in events if e["frame"] >= 1}
    # geometric events, read from the boxes
    cy = (s["boxes"][:, 0, 1] + s["boxes"][:, 0, 3]) / 2
    inner = [e["frame"] for e in events
             if 1 <= e["frame"] < len(cy) - 1 and e["kind"] != "accent"]  # accents are random
    if ACTIONS[label] == "bounce":  # impacts: lowest point of the path
        assert all(cy[f] >= max(cy[f - 1], cy[f + 1]) for f in inner)
    if ACTIONS[label].startswith("orbit"):  # passing the top of the circle
        assert all(cy[f] <= min(cy[f - 1], cy[f + 1]) for f in inner)
    # audio: each event's sound starts on its frame's time (to a few samples)
    heard = onsets_s(s["stems"][0], sr)
    seen = np.array([e["time_s"] for e in events if e["time_s"] >= 0.03])
    assert len(heard) == len(seen)
    assert np.abs(heard - seen).max() < 0.003 < 1 / fps


@pytest.mark.parametrize("label", [ACTIONS.index("flash"), ACTIONS.index("bounce")])
def test_event_frames_are_the_flashing_frames_off_the_frame_grid(label):
    """A window starting 0.75 frame after a frame: each event shows on the frame within half a
    frame of it (the flash's half-frame tolerance), not on the next one."""
    s = render_clip(2, label, cfg=SOLO, start_s=0.03)
    events = [e for e in s["events"] if e["actor"] == 0]
    assert events
    fps = s["fps"]
    assert all(abs(e["time_s"] * fps - e["frame"]) <= 0.5 for e in events)
    light = box_brightness(s["video"], s["boxes"][:, 0])
    rises = set((np.flatnonzero(np.diff(light) > 20) + 1).tolist())
    assert rises == {e["frame"] for e in events if e["frame"] >= 1}


def test_durations_under_one_frame_are_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match="duration_s 0.02 is under one frame at 25.0 fps"):
        WorldConfig(duration_s=0.02)
    with pytest.raises(ConfigError, match="under one frame"):
        write_layout("music", tmp_path / "m", clips_per_class=1, cfg=TINY, duration_s=0.02)
    # an explicit --duration 0 is refused, not silently replaced by the 2 s default
    assert cli_main(["--layout", "folder", "--out", str(tmp_path / "f"), "--clips-per-class",
                     "1", "--size", "32", "--duration", "0"]) == 2
    assert "must be finite and > 0" in capsys.readouterr().err and not (tmp_path / "f").exists()
    # nan / inf durations and an --out that cannot be created were tracebacks
    for opts in (["--duration", "nan"], ["--duration", "inf"]):
        assert cli_main(["--layout", "folder", "--out", str(tmp_path / "f"), "--size", "32",
                         *opts]) == 2
        assert "must be finite and > 0" in capsys.readouterr().err
    assert cli_main(["--layout", "thumos14", "--out", str(tmp_path / "t"), "--size", "32",
                     "--max-duration", "inf"]) == 2
    assert "max_duration_s < inf" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert cli_main(["--layout", "folder", "--out", str(tmp_path / "afile" / "sub"), "--size",
                     "32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot create --out") and len(err.strip().splitlines()) == 1
    assert (tmp_path / "afile").read_text() == ""


def test_windows_of_the_same_clip_line_up():
    cfg = WorldConfig(jitter=0)
    whole = render_clip(9, 8, cfg=cfg)  # bounce
    later = render_clip(9, 8, cfg=cfg, start_s=0.4)
    shift = round(0.4 * cfg.fps)
    np.testing.assert_allclose(later["boxes"][:-shift], whole["boxes"][shift:], atol=1e-6)
    assert later["clip_start_s"] == 0.4
    times = {round(e["time_s"] + 0.4, 6) for e in later["events"]}
    assert {round(e["time_s"], 6) for e in whole["events"] if e["time_s"] >= 0.4} <= times


def test_render_long_segments_and_background():
    cfg = WorldConfig(size=32)
    s = render_long(4, 0, duration_s=30.0, cfg=cfg)
    t = round(30.0 * cfg.fps)
    assert s["video"].shape == (t, 3, 32, 32) and s["audio"].shape == (1, 30 * cfg.sample_rate)
    segs = s["segments"]
    assert len(segs) >= 2
    for (a0, a1, lab), nxt in zip(segs, segs[1:] + [(30.0, 30.0, 0)]):
        assert 0.0 <= a0 < a1 <= nxt[0] and 0 <= lab < len(ACTIONS)
    expect = np.full(t, -1)
    for a0, a1, lab in segs:
        expect[round(a0 * cfg.fps):round(a1 * cfg.fps)] = lab
    np.testing.assert_array_equal(s["frame_labels"], expect)
    # events only inside segments; the background is quiet (hum only)
    assert all(s["frame_labels"][e["frame"]] >= 0 for e in s["events"])
    stem, sr = s["stems"][0], cfg.sample_rate
    quiet = np.ones(len(stem), bool)
    for a0, a1, _ in segs:
        quiet[int(a0 * sr):int((a1 + 0.2) * sr)] = False
    assert np.abs(stem[quiet]).max() < 0.1 < np.abs(stem[~quiet]).max()
    np.testing.assert_array_equal(render_long(4, 0, duration_s=30.0, cfg=cfg)["video"], s["video"])


# ---------------------------------------------------------------- writers


@pytest.fixture(scope="session")
def layouts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    return {name: write_layout(name, root / name, clips_per_class=4, seed=0, cfg=TINY)
            for name in ("ucf101", "hmdb51", "kinetics", "vggsound", "audioset", "folder")}


def truth(root: Path) -> dict:
    return json.loads((root / "ground_truth.json").read_text())


def test_ucf101_layout(layouts):
    root = layouts["ucf101"]
    lists = root / "ucfTrainTestlist"
    for f in lists.iterdir():  # every list is CRLF throughout
        raw = f.read_bytes()
        assert raw.endswith(b"\r\n") and raw.count(b"\n") == raw.count(b"\r\n"), f.name
    class_ind = [ln.split() for ln in (lists / "classInd.txt").read_text().splitlines()]
    names = [n for _, n in class_ind]
    assert names == UCF101_CLASSES
    assert [int(i) for i, _ in class_ind] == list(range(1, len(names) + 1))
    assert names == sorted(names, key=str.lower) and names != sorted(names)
    assert names.index("JumpingJack") < names.index("JumpRope")
    # folder and lists say HandstandPushups, the files say HandStandPushups
    hsp = sorted(p.name for p in (root / "UCF-101" / "HandstandPushups").iterdir())
    assert hsp and all(re.fullmatch(r"v_HandStandPushups_g\d\d_c\d\d\.avi", n) for n in hsp)
    clips = truth(root)["clips"]
    listed_all = set()
    for k in (1, 2, 3):
        train = [ln.split() for ln in (lists / f"trainlist0{k}.txt").read_text().splitlines()]
        test = [ln.split() for ln in (lists / f"testlist0{k}.txt").read_text().splitlines()]
        assert all(len(x) == 2 for x in train) and all(len(x) == 1 for x in test)
        for path, lab in train:  # labels are classInd's 1-based index of the path's folder
            assert names[int(lab) - 1] == path.split("/")[0]
        group = {p: int(re.search(r"_g(\d\d)_", p).group(1)) for p, *_ in train + test}
        assert all(7 * k - 6 <= group[p] <= 7 * k for p, in test)
        assert not any(7 * k - 6 <= group[p] <= 7 * k for p, _ in train)
        for cls in names:  # every split has train and test videos of every class
            assert any(p.startswith(cls + "/") for p, in test)
            assert any(p.startswith(cls + "/") for p, _ in train)
        assert any(p.startswith("HandstandPushups/v_HandStandPushups_") for p, in test)
        listed = {p for p, *_ in train + test}
        assert len(listed) == len(clips)
        listed_all |= listed
    assert all((root / "UCF-101" / p).is_file() for p in listed_all)
    fps = {round(c["fps"], 2) for c in clips}
    assert fps == {25.0, 29.97}
    with_audio = {c["class_name"] for c in clips if c["has_audio"]}
    assert 0.3 < len(with_audio) / len(names) < 0.7
    assert all(c["label"] == names.index(c["class_name"]) for c in clips)


def test_ucf101_files_match_their_ground_truth(layouts):
    from avssl.data.decoding import probe

    root = layouts["ucf101"]
    clips = truth(root)["clips"]
    picks = [next(c for c in clips if round(c["fps"], 2) == f and c["has_audio"] == a)
             for f in (25.0, 29.97) for a in (True, False)]
    for c in picks:
        info = probe(root / c["path"])
        assert info.has_audio == c["has_audio"]
        assert abs(info.fps - c["fps"]) < 0.01
        assert info.num_frames == c["num_frames"] and info.width == TINY.size


def test_ucf101_labelled_test_lists(tmp_path):
    root = write_layout("ucf101", tmp_path / "u", clips_per_class=3, cfg=TINY,
                        labelled_test_lists=True)
    lists = root / "ucfTrainTestlist"
    names = [ln.split()[1] for ln in (lists / "classInd.txt").read_text().splitlines()]
    lines = (lists / "testlist01.txt").read_bytes().split(b"\r\n")[:-1]
    assert len(lines) == len(names)
    for ln in lines:
        path, lab = ln.decode().split()
        assert names[int(lab) - 1] == path.split("/")[0]
    with pytest.raises(ConfigError):
        write_layout("kinetics", tmp_path / "k", cfg=TINY, labelled_test_lists=True)
    # three clips per class, the fewest accepted, fill every split's train and test list
    for k in (1, 2, 3):
        for kind in ("train", "test"):
            assert (lists / f"{kind}list0{k}.txt").read_text().count("\n") >= len(names)
    for layout, n, message in (("ucf101", 1, "split 1 needs a second one to train on"),
                               ("kinetics", 2, "one train, one validate and one test clip")):
        with pytest.raises(ConfigError, match=f"clips_per_class must be >= {n + 1} .*{message}"
                                              f".*got {n}"):
            write_layout(layout, tmp_path / layout, clips_per_class=n, cfg=TINY)
        assert not (tmp_path / layout).exists()
    # two clips: splits 1 and 2 load; split 3 has no test clip, and the loader says so
    from avssl.data.datasets import ucf101

    two = write_layout("ucf101", tmp_path / "two", clips_per_class=2, cfg=TINY)
    assert len(ucf101(two, 1, True, progress=False)) == len(names)
    with pytest.raises(DataError, match=r"testlist03.txt lists no videos; use another split"):
        ucf101(two, 3, False, progress=False)


def test_hmdb51_layout(layouts):
    root = layouts["hmdb51"]
    names = sorted(p.name for p in (root / "hmdb51").rglob("*.avi"))
    joined = "".join(names)
    assert all(ch in joined for ch in "!()&")
    splits = sorted((root / "testTrainMulti_7030_splits").iterdir())
    assert len(splits) == 3 * len(HMDB51_CLASSES)
    for f in splits:
        cls, k = re.fullmatch(r"(.+)_test_split([123])\.txt", f.name).groups()
        lines = f.read_text().splitlines()
        assert all(re.fullmatch(r"\S+\.avi [012] ", ln) for ln in lines)  # trailing space
        ids = [int(ln.split()[1]) for ln in lines]
        assert 1 in ids and 2 in ids
        assert all((root / "hmdb51" / cls / ln.split()[0]).is_file() for ln in lines)


def test_kinetics_layout(layouts):
    root = layouts["kinetics"]
    tables = {}
    for name in ("train", "validate", "test"):
        text = (root / f"{name}.csv").read_text()
        rows = list(csv.DictReader(io.StringIO(text)))
        columns = ["youtube_id", "time_start", "time_end", "split"]  # test: no labels released
        assert list(rows[0]) == (columns if name == "test" else ["label", *columns])
        tables[name] = rows
    assert '"rock, paper, scissors"' in (root / "train.csv").read_text()
    assert {r["label"] for r in tables["train"]} == set(KINETICS_CLASSES)
    ids = [r["youtube_id"] for t in tables.values() for r in t]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{11}", y) for y in ids)
    assert any(y.startswith("-") for y in ids) and len(set(ids)) == len(ids)
    found = 0
    for name, folder in (("train", "train"), ("validate", "val"), ("test", "test")):
        for r in tables[name]:
            s, e = int(r["time_start"]), int(r["time_end"])
            assert e == s + 10
            fname = f"{r['youtube_id']}_{s:06d}_{e:06d}.mp4"
            path = root / folder / fname if name == "test" else root / folder / r["label"] / fname
            found += path.is_file()
    listed = sum(len(t) for t in tables.values())
    assert listed - found == len(truth(root)["missing"]) == 2


def test_vggsound_layout(layouts):
    root = layouts["vggsound"]
    text = (root / "vggsound.csv").read_text()
    rows = list(csv.reader(io.StringIO(text)))
    assert all(len(r) == 4 for r in rows) and not rows[0][1].isalpha()  # no header
    assert '"people eating, crunchy"' in text
    assert {r[2] for r in rows} == set(VGGSOUND_CLASSES) and {r[3] for r in rows} == {"train",
                                                                                    "test"}
    assert all((root / "video" / f"{y}_{int(s):06d}.mp4").is_file() for y, s, _, _ in rows)


def test_audioset_layout(layouts):
    import pandas as pd

    root = layouts["audioset"]
    index = pd.read_csv(root / "class_labels_indices.csv")
    assert list(index.columns) == ["index", "mid", "display_name"]
    assert list(index.display_name) == [n for _, n in AUDIOSET_CLASSES]
    mid_to_index = dict(zip(index.mid, index["index"]))
    gt = {c["youtube_id"]: c for c in truth(root)["clips"]}
    multi = 0
    for name in ("balanced_train_segments.csv", "eval_segments.csv"):
        lines = (root / name).read_text().splitlines()
        assert all(ln.startswith("#") for ln in lines[:3]) and not lines[3].startswith("#")
        df = pd.read_csv(root / name, skiprows=3, header=None, skipinitialspace=True,
                         names=["ytid", "start", "end", "labels"])
        for r in df.itertuples():
            labels = sorted(mid_to_index[m] for m in r.labels.split(","))
            c = gt[r.ytid]
            assert labels == sorted(set(c["actor_actions"]))  # all sounding actors' actions
            multi += len(labels) > 1
            assert (root / "video" / f"{r.ytid}_{int(r.start):06d}.mp4").is_file()
    assert multi > 0


def test_folder_layout(layouts):
    root = layouts["folder"]
    top = list(root.glob("*.mp4"))
    sub = list(root.glob("*/*.mp4"))
    assert top and sub and len(top) + len(sub) == 4 * len(ACTIONS)
    clips = truth(root)["clips"]
    assert {c["has_audio"] for c in clips} == {True, False}


def test_writer_is_deterministic_and_worker_independent(layouts, tmp_path):
    # .avi (MPEG-4 + MP3) encodes are byte-stable: same seed -> same bytes, any worker count
    first = layouts["ucf101"]
    again = write_layout("ucf101", tmp_path / "ucf101", clips_per_class=4, seed=0, cfg=TINY,
                         workers=2)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_mp4_writer_is_deterministic_in_content(layouts, tmp_path):
    from avssl.data.decoding import decode_audio, decode_video

    def psnr(x, y) -> float:
        mse = ((x.double() - y.double()) ** 2).mean().item()
        return 10 * np.log10(255 ** 2 / max(mse, 1e-9))

    # libx264's lookahead is not bit-exact from run to run, so compare what decodes: two
    # encodes of the same clip agree far better than two different clips do
    first = layouts["folder"]
    again = write_layout("folder", tmp_path / "folder", clips_per_class=1, seed=0, cfg=TINY,
                         workers=2)
    clips = truth(again)["clips"]
    assert clips == truth(first)["clips"][:len(clips)]
    decoded = [decode_video(first / c["path"], 0, TINY.duration_s) for c in clips[:4]]
    for c, va in zip(clips[:4], decoded):
        vb = decode_video(again / c["path"], 0, TINY.duration_s)
        assert psnr(va, vb) > 25.0 > 20.0 > psnr(va, decoded[(clips.index(c) + 1) % 4])
        if c["has_audio"]:
            a = decode_audio(first / c["path"], 0, TINY.duration_s)
            assert (a - decode_audio(again / c["path"], 0, TINY.duration_s)).abs().max() < 1e-6


def test_unknown_layout_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(AvsslError):
        write_layout("ucf", tmp_path)
    assert cli_main(["--layout", "ucf", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "ucf101" in err and "\n" not in err
    proc = subprocess.run([sys.executable, "-m", "avssl.data.synthetic", "--layout", "nope",
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown synthetic layout")


def test_sounding_actors_have_aperiodic_accents():
    """Sync needs events that a time shift cannot line up again: accents at random gaps, the
    same in every window of a clip."""
    from avssl.data.synthetic import WorldConfig, render_clip

    cfg = WorldConfig(duration_s=4.0, size=32)
    gaps = []
    for index in range(6):
        s = render_clip(0, index, cfg=cfg)
        acc = [e["time_s"] for e in s["events"] if e["kind"] == "accent" and e["actor"] == 0]
        gaps += np.diff(acc).tolist()
        later = render_clip(0, index, cfg=cfg, start_s=2.0)  # the window [2, 6) of that clip
        acc_later = [e["time_s"] + 2.0 for e in later["events"]
                     if e["kind"] == "accent" and e["actor"] == 0 and e["time_s"] < 2.0]
        assert np.allclose(acc_later, [t for t in acc if t >= 2.0])
    assert len(gaps) >= 4 and np.std(gaps) > 0.2 and min(gaps) >= 0.24


# ---------------------------------------------------------------- output folder safety
def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_writer_never_writes_into_a_users_folder(tmp_path):
    """A non-empty --out that avssl did not write is refused, --overwrite or not; nothing in it
    changes (the user's README.txt used to be overwritten)."""
    out = tmp_path / "myvideos"
    out.mkdir()
    (out / "README.txt").write_text("notes\n")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="not empty .*README.txt.* not written by avssl"):
            write_layout("folder", out, clips_per_class=1, cfg=TINY, overwrite=overwrite)
    assert _snapshot(out) == {"README.txt": b"notes\n"}
    for extra in ([], ["--overwrite"]):
        proc = subprocess.run([sys.executable, "-m", "avssl.data.synthetic", "--layout", "folder",
                               "--out", str(out), "--clips-per-class", "1", "--size", "32",
                               "--duration", "0.4", *extra], capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ")
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert _snapshot(out) == {"README.txt": b"notes\n"}
    with pytest.raises(ConfigError, match="is a file"):
        write_layout("folder", out / "README.txt", clips_per_class=1, cfg=TINY)


def test_writer_same_options_keep_other_options_need_overwrite(tmp_path, capsys):
    out = tmp_path / "tree"
    write_layout("folder", out, clips_per_class=1, seed=0, cfg=TINY)
    first = _snapshot(out)
    assert ".avssl-synthetic.json" in first and "README.txt" in first
    # the same options again: the tree is left as it is (same files, not even rewritten)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert cli_main(["--layout", "folder", "--out", str(out), "--clips-per-class", "1",
                     "--size", "32", "--duration", "0.4"]) == 0
    assert "left it as it is" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes
    # other options would mix two worlds: refused, and nothing changes
    with pytest.raises(ConfigError, match="other options .*seed 0 there, 1 now.*--overwrite"):
        write_layout("folder", out, clips_per_class=1, seed=1, cfg=TINY)
    with pytest.raises(ConfigError, match="layout folder there, ucf101 now"):
        write_layout("ucf101", out, clips_per_class=2, cfg=TINY)
    assert _snapshot(out) == first
    # --overwrite replaces the avssl tree cleanly: exactly what a fresh write gives
    assert cli_main(["--layout", "ucf101", "--out", str(out), "--clips-per-class", "2",
                     "--size", "32", "--duration", "0.4", "--overwrite"]) == 0
    fresh = write_layout("ucf101", tmp_path / "fresh", clips_per_class=2, cfg=TINY)
    assert _snapshot(out) == _snapshot(fresh)
    # ... but never when a user's file sits in it
    (out / "UCF-101" / "mine.txt").write_text("mine")
    with pytest.raises(ConfigError, match="other file.*mine.txt"):
        write_layout("folder", out, clips_per_class=1, cfg=TINY, overwrite=True)
    assert (out / "UCF-101" / "mine.txt").read_text() == "mine"


def test_writer_unfinished_tree_needs_overwrite_and_bad_options_leave_no_trace(tmp_path):
    out = tmp_path / "tree"
    write_layout("folder", out, clips_per_class=1, cfg=TINY)
    marker = out / ".avssl-synthetic.json"
    state = json.loads(marker.read_text())
    state["complete"] = False  # as if the write had been killed half-way
    del state["files"]
    marker.write_text(json.dumps(state))
    (out / "ground_truth.json").unlink()
    with pytest.raises(ConfigError, match="unfinished"):
        write_layout("folder", out, clips_per_class=1, cfg=TINY)
    write_layout("folder", out, clips_per_class=1, cfg=TINY, overwrite=True)
    assert _snapshot(out) == _snapshot(write_layout("folder", tmp_path / "fresh",
                                                    clips_per_class=1, cfg=TINY))
    # options refused by the writer itself leave neither a folder nor a marker behind
    with pytest.raises(ConfigError, match="clips_per_class"):
        write_layout("folder", tmp_path / "new", clips_per_class=0, cfg=TINY)
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="clips_per_class"):
        write_layout("folder", empty, clips_per_class=0, cfg=TINY)
    assert list(empty.iterdir()) == []


def test_cached_synthetic_tree_and_manifest_still_work(tmp_path, monkeypatch):
    """The cache writes into a fresh temporary folder renamed into place; a second call reuses it,
    and its manifest (paths relative to its own folder) loads every clip."""
    from avssl.data.datasets import folder_dataset
    from avssl.data.synthetic.cache import synthetic_folder, synthetic_tree

    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "cache"))
    csv_path = synthetic_folder(14, seed=3, cfg=TINY, workers=1)
    assert csv_path.is_file() and not list(csv_path.parent.parent.glob(".tmp-*"))
    before = _snapshot(csv_path.parent)
    assert synthetic_folder(14, seed=3, cfg=TINY, workers=1) == csv_path
    assert _snapshot(csv_path.parent) == before
    ds = folder_dataset(csv_path, mode="eval", clip_s=0.2, fps=5, size=16, progress=False)
    assert ds.num_listed == ds.num_used == 14
    tree = synthetic_tree("ucf101", 2, seed=3, cfg=TINY, workers=1)
    assert (tree / "ground_truth.json").is_file()


def test_a_failed_probe_is_never_cached(tmp_path, monkeypatch):
    """A probe that failed once (a crashed worker process) used to be written into the cached
    manifest as undecodable, and every later run refused the whole tree."""
    from avssl.data import manifest
    from avssl.data.synthetic.cache import synthetic_folder

    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "cache"))
    real_scan = manifest.scan

    def crashed(root, **kw):
        table = real_scan(root, **kw)
        table.loc[0, "decodable"], table.loc[0, "error"] = False, "probe worker crashed"
        return table

    monkeypatch.setattr(manifest, "scan", crashed)
    with pytest.raises(AvsslError, match=r"failed for 1 of 14 files .*probe worker crashed.*"
                                         r"nothing was cached, run again"):
        synthetic_folder(14, seed=3, cfg=TINY, workers=1)
    assert list((tmp_path / "cache" / "synthetic").iterdir()) == []
    monkeypatch.setattr(manifest, "scan", real_scan)
    assert synthetic_folder(14, seed=3, cfg=TINY, workers=1).is_file()
