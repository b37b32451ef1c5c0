from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from avssl.data import decoding
from avssl.data.datasets import (
    DATASETS,
    ClipDataset,
    SyntheticClips,
    VideoRecord,
    build_dataset,
    folder_dataset,
)
from avssl.data.manifest import Quarantine, scan, write_manifest
from avssl.data.synthetic import WorldConfig, render_clip
from avssl.data.transforms import VideoPipeline
from avssl.errors import ConfigError, DataError, UnknownNameError

torch.set_num_threads(1)

FPS, DUR, SR = 25, 1.2, 16000
GOOD = ["a.mp4", "b.mp4", "c.mp4", "sub/d.mp4", "sub/silent.avi"]
BAD = ["truncated.mp4", "zero.mp4"]


def _clip(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1.2 s 32x32 clip whose brightness ramps with time and whose tone depends on ``k``."""
    t = int(DUR * FPS)
    ramp = torch.linspace(20, 230, t).round().to(torch.uint8)
    video = ramp.view(t, 1, 1, 1).expand(t, 3, 32, 32).clone()
    video[:, k % 3, :8, :8] = 255
    s = torch.arange(int(DUR * SR)) / SR
    audio = (0.3 * torch.sin(2 * torch.pi * (220 + 110 * k) * s)).unsqueeze(0)
    return video, audio


@pytest.fixture(scope="session")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    for k, rel in enumerate(GOOD + ["truncated.mp4"]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        video, audio = _clip(k)
        decoding.write_av(root / rel, video, FPS, None if "silent" in rel else audio, SR)
    data = (root / "truncated.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "zero.mp4").write_bytes(b"")
    return root


@pytest.fixture(scope="session")
def good_tree(tmp_path_factory, tree) -> Path:
    root = tmp_path_factory.mktemp("good")
    for rel in GOOD:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((tree / rel).read_bytes())
    return root


KW = dict(clip_s=0.4, fps=10, size=16, progress=False)


def test_missing_files_reported_not_fatal(tree, caplog):
    records = [VideoRecord(str(tree / r), r) for r in GOOD[:2]]
    records.append(VideoRecord(str(tree / "gone.mp4"), "gone"))
    with caplog.at_level(logging.INFO):
        ds = ClipDataset(records, **KW)
    assert (ds.num_listed, ds.num_used, len(ds)) == (3, 2, 2)
    assert ds.missing == [str(tree / "gone.mp4")]
    assert "found 2 of 3 listed videos" in caplog.text
    assert "2 of 3" in ds.report()
    with pytest.raises(DataError, match="none of the 1 listed"):
        ClipDataset([VideoRecord(str(tree / "gone.mp4"), "gone")], **KW)


def test_train_substitutes_bad_files_and_quarantines_them(tree, tmp_path, caplog, monkeypatch):
    qfile = tmp_path / "quarantine.jsonl"
    ds = folder_dataset(tree, mode="train", quarantine=qfile, **KW)
    early = folder_dataset(tree, mode="train", quarantine=qfile, **KW)  # e.g. another worker
    assert ds.num_used == len(GOOD) + len(BAD)
    bad_paths = {str(tree / b) for b in BAD}
    with caplog.at_level(logging.WARNING):
        samples = [ds[i] for i in range(len(ds))]
    for i, s in enumerate(samples):
        path = ds.records[s["video_index"]].path
        assert path not in bad_paths
        assert s["video"].shape == (4, 3, 16, 16) and s["audio"].shape == (1, int(0.4 * SR))
        if ds.records[i].path in bad_paths:
            assert s["video_index"] != i  # substituted by another video
        else:
            assert s["video_index"] == i
    assert Quarantine(qfile).paths() == bad_paths  # persisted
    # An object made before the files were quarantined sees the additions and skips them
    # without opening them again.
    opened = []
    probe = decoding.probe
    monkeypatch.setattr(decoding, "probe", lambda p, **k: (opened.append(p), probe(p, **k))[1])
    for i, rec in enumerate(early.records):
        if rec.path in bad_paths:
            assert early[i]["video_index"] != i
    assert not bad_paths & set(opened)
    assert "truncated.mp4" in caplog.text and "zero.mp4" in caplog.text
    # A new dataset object (a later run, or a resumed one) substitutes the quarantined files
    # without opening them, and keeps them in its index: the same items as the first object
    # (a resumed run dropping them trained on other samples than the straight run).
    opened.clear()
    again = folder_dataset(tree, mode="train", quarantine=str(qfile), **KW)
    assert (again.num_used, again.num_quarantined) == (len(GOOD) + len(BAD), len(BAD))
    assert again.report().endswith(f", {len(BAD)} quarantined)")
    for i in range(len(again)):
        assert torch.equal(again[i]["video"], samples[i]["video"])
    assert not bad_paths & set(opened)


def test_train_substitution_is_bounded(tree, tmp_path):
    records = [VideoRecord(str(tree / b), b) for b in BAD]
    ds = ClipDataset(records, mode="train", max_retries=3, **KW)
    with pytest.raises(DataError, match="failed to decode"):
        ds[0]


def test_eval_raises_naming_the_bad_file(tree):
    ds = folder_dataset(tree, mode="eval", **KW)
    for i, rec in enumerate(ds.records):
        if os.path.basename(rec.path) in BAD:
            with pytest.raises(DataError, match=os.path.basename(rec.path)) as err:
                ds[i]
            assert "skip_bad=True" in str(err.value)
        else:
            assert ds[i]["video"].shape[0] == 4


def test_eval_skip_bad_reports_used_vs_listed(tree):
    ds = folder_dataset(tree, mode="eval", skip_bad=True, num_clips=3, **KW)
    assert (ds.num_listed, ds.num_used, len(ds)) == (7, 5, 15)
    assert {p for p, _ in ds.bad} == {str(tree / b) for b in BAD}
    assert all(reason for _, reason in ds.bad)
    assert "using 5 of 7" in ds.report()
    # Uniform windows: first clip at 0, last one ends at the end of the file.
    starts = [ds[i]["clip_start_s"] for i in range(3)]
    assert [ds[i]["clip_index"] for i in range(3)] == [0, 1, 2]
    assert starts[0] == 0.0 and starts[2] == pytest.approx(DUR - 0.4, abs=0.05)
    assert starts[0] < starts[1] < starts[2]


def test_eval_frames_match_the_window(good_tree):
    ds = folder_dataset(good_tree, mode="eval", num_clips=2, clip_s=0.4, fps=25, progress=False)
    s = ds[1]  # second clip of the first video: ends at the end of the file
    brightness = s["video"][:, 1, 16:, 16:].float().mean(dim=(1, 2))
    ramp = torch.linspace(20, 230, int(DUR * FPS))
    first = round(s["clip_start_s"] * FPS)
    assert torch.allclose(brightness, ramp[first:first + 10], atol=6)


def test_video_without_audio_loads_with_silence(good_tree):
    ds = folder_dataset(good_tree, mode="eval", **KW)
    by_id = {ds.records[i].video_id: ds[i] for i in range(len(ds))}
    silent = by_id["sub/silent"]
    assert silent["has_audio"] is False and silent["video"].shape == (4, 3, 16, 16)
    assert silent["audio"].shape == (1, int(0.4 * SR)) and not silent["audio"].any()
    assert by_id["a"]["has_audio"] is True and by_id["a"]["audio"].abs().max() > 0.1
    # require_audio drops it once files are probed up front.
    ds = folder_dataset(good_tree, mode="eval", skip_bad=True, require_audio=True, **KW)
    assert "sub/silent" not in ds.video_ids and ds.num_used == len(GOOD) - 1


def test_manifest_folder_drops_bad_rows_and_skips_probing(tree, tmp_path, monkeypatch):
    csv = tmp_path / "manifest.csv"
    write_manifest(scan(tree, progress=False), csv)
    ds = folder_dataset(csv, root=tree, mode="eval", **KW)
    assert (ds.num_listed, ds.num_used) == (7, 5)
    assert {Path(p).name for p, _ in ds.bad} == set(BAD)

    def no_probe(*a, **k):
        raise AssertionError("durations come from the manifest")

    monkeypatch.setattr(decoding, "probe", no_probe)
    s = [ds[i] for i in range(len(ds))]
    assert [x["has_audio"] for x in s].count(False) == 1


def test_manifest_rows_without_media_fields_are_probed(good_tree, tmp_path):
    """A hand-made manifest (paths and flags, media fields left empty) gave NaN durations:
    train items crashed in the window draw, eval items asked the decoder for [nan, nan)."""
    df = scan(good_tree, progress=False)
    df[["duration_s", "fps", "start_s", "audio_end_s"]] = float("nan")
    csv = tmp_path / "by_hand.csv"
    write_manifest(df, csv, root=good_tree)
    eval_kw = dict(KW, num_clips=2)
    want = [x["clip_start_s"] for x in folder_dataset(good_tree, mode="eval", **eval_kw)]
    ds = folder_dataset(csv, mode="eval", **eval_kw)
    assert [x["clip_start_s"] for x in ds] == pytest.approx(want)
    assert want[1] == pytest.approx(DUR - 0.4)  # the last view ends at the file's end
    train = folder_dataset(csv, mode="train", skip_bad=False, **KW)
    s = train[0]
    assert 0 <= s["clip_start_s"] <= DUR - 0.4 and s["fps"] == 10


def _batches(root: Path, seed: int, workers: int, epoch: int = 0) -> list[dict]:
    ds = folder_dataset(root, mode="train", seed=seed, video_transform=VideoPipeline(size=12),
                        **KW)
    ds.set_epoch(epoch)
    # Decode in the parent first: the parent's cached decord readers must not freeze the forked
    # workers (a decord destructor run in a child used to wait forever for threads it lacks).
    ds[0]
    loader = DataLoader(ds, batch_size=2, num_workers=workers, shuffle=False)
    return list(loader)


def _same(a: list[dict], b: list[dict]) -> bool:
    return all(torch.equal(x["video"], y["video"]) and torch.equal(x["audio"], y["audio"])
               and torch.equal(x["clip_start_s"], y["clip_start_s"]) for x, y in zip(a, b))


def test_dataloader_two_workers_is_deterministic(good_tree):
    run1 = _batches(good_tree, seed=0, workers=2)
    run2 = _batches(good_tree, seed=0, workers=2)
    assert len(run1) == 3 and _same(run1, run2)
    assert _same(run1, _batches(good_tree, seed=0, workers=0))  # whatever the worker count
    other = _batches(good_tree, seed=1, workers=2)
    assert not torch.equal(torch.cat([b["clip_start_s"] for b in run1]),
                           torch.cat([b["clip_start_s"] for b in other]))
    assert not _same(run1, _batches(good_tree, seed=0, workers=0, epoch=1))


def test_registry_and_layout_errors(tmp_path):
    assert {"folder", "ucf101", "ucf101-av", "hmdb51", "kinetics", "vggsound", "audioset",
            "synthetic"} <= set(DATASETS.names())
    with pytest.raises(UnknownNameError, match="ucf101"):
        build_dataset("ucf-101", tmp_path)
    for name in ["ucf101", "ucf101-av", "hmdb51", "kinetics", "vggsound", "audioset"]:
        with pytest.raises(DataError, match=r"python -m avssl.data.synthetic --layout"):
            build_dataset(name, tmp_path / "nowhere")
        with pytest.raises(DataError, match=r"expected"):
            build_dataset(name, tmp_path)  # exists but empty


def test_synthetic_clips_collate_with_ground_truth():
    cfg = WorldConfig(size=32, duration_s=0.4, max_actors=3)
    ds = SyntheticClips(4, seed=3, cfg=cfg)
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch["video"].shape == (4, 10, 3, 32, 32) and batch["video"].dtype == torch.uint8
    assert batch["audio"].shape == (4, 1, 6400) and batch["stems"].shape == (4, 3, 6400)
    assert batch["boxes"].shape == (4, 10, 3, 4)
    for i in range(4):
        ref = render_clip(3, i, cfg=cfg)
        n = len(ref["actor_actions"])
        s = ds[i]
        assert s["num_actors"] == n and s["label"] == ref["label"]
        assert np.array_equal(s["stems"][:n].numpy(), ref["stems"])
        assert not s["stems"][n:].any() and (s["actor_actions"][n:] == -1).all()
        assert np.array_equal(s["video"].numpy(), ref["video"])
    test = build_dataset("synthetic", None, split="test", num_clips=2, cfg=cfg)
    assert test.mode == "eval" and test[0]["video_id"] != ds[0]["video_id"]


# ---------------------------------------------------------------- index formats on synthetic trees

from avssl.data.datasets import audioset, hmdb51, kinetics, vggsound  # noqa: E402
from avssl.data.synthetic import write_layout  # noqa: E402

SMALL = WorldConfig(size=32, duration_s=1.0, max_actors=2, max_distractors=1)


def _layout(tmp_path_factory, name: str, n: int) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp(name)
    write_layout(name, root, clips_per_class=n, seed=1, cfg=SMALL)
    import json

    return root, json.loads((root / "ground_truth.json").read_text())


@pytest.fixture(scope="session")
def hmdb(tmp_path_factory):
    return _layout(tmp_path_factory, "hmdb51", 6)


@pytest.fixture(scope="session")
def kin(tmp_path_factory):
    return _layout(tmp_path_factory, "kinetics", 4)


def test_hmdb51_splits_labels_and_special_names(hmdb, tmp_path):
    root, truth = hmdb
    by_file = {c["file"]: c for c in truth["clips"]}
    assert any(c[f"split{k}"] == 0 for c in truth["clips"] for k in (1, 2, 3))
    assert (next((root / "testTrainMulti_7030_splits").iterdir()).read_text()
            .splitlines()[0].endswith(" "))
    for k in (1, 2, 3):
        for train, mark in ((True, 1), (False, 2)):
            ds = hmdb51(root, split=k, train=train, **KW)
            names = {Path(r.path).name for r in ds.records}
            assert names == {f for f, c in by_file.items() if c[f"split{k}"] == mark}
            assert ds.class_names == sorted(truth["classes"]) and ds.missing == []
            for r in ds.records:
                assert ds.class_names[r.label] == by_file[Path(r.path).name]["class_name"]
            assert ds.mode == ("train" if train else "eval")
    ds = hmdb51(root, split=1, train=True, mode="eval", **KW)
    from avssl.bench.tasks.classification import hmdb51_groups

    sources = hmdb51_groups(ds.video_ids)  # the linear probe holds out whole movies
    assert sources is not None and all(not s.endswith("_med") for s in sources)
    odd = next(i for i, r in enumerate(ds.records) if set("!()&") & set(Path(r.path).name))
    assert ds[odd]["video"].shape == (4, 3, 16, 16)
    # class folders directly under root (no hmdb51/ level) give the same records
    flat = tmp_path / "flat"
    flat.mkdir()
    os.symlink(root / "testTrainMulti_7030_splits", flat / "testTrainMulti_7030_splits")
    for d in (root / "hmdb51").iterdir():
        os.symlink(d, flat / d.name)
    again = hmdb51(flat, split=1, train=True, mode="eval", **KW)
    assert again.video_ids == ds.video_ids and again.labels == ds.labels and not again.missing
    # a partial extraction that lost one class's split-2 file: an error, not 50 shifted labels
    part = tmp_path / "part"
    (part / "testTrainMulti_7030_splits").mkdir(parents=True)
    os.symlink(root / "hmdb51", part / "hmdb51")
    split_files = sorted((root / "testTrainMulti_7030_splits").iterdir())
    lost = next(f for f in split_files if f.name.endswith("_test_split2.txt"))
    for f in split_files:
        if f != lost:
            os.symlink(f, part / "testTrainMulti_7030_splits" / f.name)
    assert hmdb51(part, split=1, train=True, mode="eval", **KW).labels == ds.labels
    with pytest.raises(DataError, match=re.escape(f"lacks {lost.name}")):
        hmdb51(part, split=2, train=True, **KW)


def test_kinetics_quoted_labels_missing_rows_and_test(kin, tmp_path):
    root, truth = kin
    by_id = {c["youtube_id"]: c for c in truth["clips"]}
    train = kinetics(root, "train", **KW)
    assert "rock, paper, scissors" in train.class_names
    assert train.class_names == sorted(truth["classes"])
    assert (train.num_listed, train.num_used) == (len(by_id) // 2 + 2, len(by_id) // 2)
    assert {Path(p).name for p in train.missing} == {Path(m).name for m in truth["missing"]}
    assert train.invalid_rows == 0 and train.mode == "train"
    for r in train.records:
        assert train.class_names[r.label] == by_id[r.extra["youtube_id"]]["class_name"]
    val = kinetics(root, "val", **KW)
    assert val.mode == "eval" and len(val) == len(truth["classes"]) and not val.missing
    test = kinetics(root, "test", **KW)
    assert all(r.label is None for r in test.records) and not test.missing
    assert "label" not in test[0] and test[0]["video"].shape == (4, 3, 16, 16)
    # a copy with val.csv instead of validate.csv and two spreadsheet-damaged ids
    copy = tmp_path / "k"
    copy.mkdir()
    for d in ("train", "val", "test"):
        os.symlink(root / d, copy / d)
    (copy / "val.csv").write_text((root / "validate.csv").read_text())
    rows = (root / "train.csv").read_text()
    damaged = ('"zumba",1.23E+05,12,22,train\n"zumba",-abc,1,11,train\n'
               '"zumba",abcdefghijk,inf,11,train\n')  # int(float("inf")) raised OverflowError
    (copy / "train.csv").write_text(rows + damaged)
    damaged_train = kinetics(copy, "train", **KW)
    assert damaged_train.invalid_rows == 3
    assert damaged_train.num_listed == train.num_listed + 3  # dropped rows are listed videos
    assert damaged_train.report().endswith(", 3 invalid rows)")  # the count adds up
    assert kinetics(copy, "validate", **KW).video_ids == val.video_ids
    # a val row whose label train.csv never names is dropped, and counted as listed
    (copy / "val.csv").write_text((root / "validate.csv").read_text() + "skydiving,abcdefghijk,1,11,val\n")
    odd = kinetics(copy, "val", **KW)
    assert (odd.invalid_rows, odd.num_listed) == (1, val.num_listed + 1)
    # ... and when every row is dropped, the error counts them instead of "0 listed videos"
    (copy / "val.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                  "skydiving,abcdefghijk,1,11,val\n")
    with pytest.raises(DataError, match=r"none of the 1 listed videos .*1 invalid rows"):
        kinetics(copy, "val", **KW)
    # the real files' form: multi-word labels quoted, no label column in test.csv
    assert any(line.startswith('"') and " " in line.split(",")[0]
               for line in (root / "train.csv").read_text().splitlines())
    assert (root / "test.csv").read_text().splitlines()[0] == "youtube_id,time_start,time_end,split"
    # copies that keep the label column empty in test.csv read the same
    (copy / "test.csv").write_text("label,youtube_id,time_start,time_end,split\n" + "".join(
        f",{line}\n" for line in (root / "test.csv").read_text().splitlines()[1:]))
    assert kinetics(copy, "test", **KW).video_ids == test.video_ids


def test_audio_only_items_decode_no_frames(tmp_path_factory, monkeypatch):
    from avssl.data import decoding

    root, _ = _layout(tmp_path_factory, "vggsound", 2)
    both = vggsound(root, "test", mode="eval", num_clips=2, **KW)
    refs = [both[i] for i in range(len(both))]
    calls = []
    real = decoding.decode_video
    monkeypatch.setattr(decoding, "decode_video", lambda *a, **k: calls.append(a) or real(*a, **k))
    audio = vggsound(root, "test", mode="eval", num_clips=2, video=False, **KW)
    for i in range(len(audio)):
        item, ref = audio[i], refs[i]
        assert "video" not in item and torch.equal(item["audio"], ref["audio"])
        assert item["clip_start_s"] == ref["clip_start_s"] and item["label"] == ref["label"]
    assert calls == []
    with pytest.raises(ConfigError, match="video=True or audio=True"):
        vggsound(root, "test", video=False, audio=False, **KW)


def test_vggsound_labels_with_commas(tmp_path_factory):
    root, truth = _layout(tmp_path_factory, "vggsound", 2)
    by_id = {c["youtube_id"]: c for c in truth["clips"]}
    assert any(line.startswith("-") for line in (root / "vggsound.csv").read_text().splitlines())
    for split in ("train", "test"):
        ds = vggsound(root, split, **KW)
        assert ds.class_names == sorted(truth["classes"]) and not ds.missing
        assert {r.extra["youtube_id"] for r in ds.records} == {
            y for y, c in by_id.items() if c["split"] == split}
        for r in ds.records:
            assert ds.class_names[r.label] == by_id[r.extra["youtube_id"]]["class_name"]
    assert "people eating, crunchy" in ds.class_names
    assert ds[0]["label"] == ds.records[0].label
    # a spreadsheet-damaged id is dropped and still counted as a listed video
    text = (root / "vggsound.csv").read_text()
    # (and so is a row with an infinite time, and a truncated row without a split, which
    # belongs to neither list and counts in both)
    (root / "vggsound.csv").write_text(text + "1.23E+05,12,dog barking,test\n"
                                       "abcdefghijk,inf,dog barking,test\n"
                                       "abcdefghijk,12,dog barking\n")
    try:
        damaged = vggsound(root, "test", **KW)
        train = vggsound(root, "train", **KW)
    finally:
        (root / "vggsound.csv").write_text(text)
    assert (damaged.invalid_rows, damaged.num_listed) == (3, ds.num_listed + 3)
    assert train.invalid_rows == 1 and train.num_used == train.num_listed - 1


def test_audioset_multi_hot_labels(tmp_path_factory):
    root, truth = _layout(tmp_path_factory, "audioset", 2)
    by_id = {c["youtube_id"]: c for c in truth["clips"]}
    ds = audioset(root, "balanced_train", **KW)
    assert ds.num_classes == len(truth["classes"]) and ds.class_names == truth["classes"]
    assert not ds.missing and ds.num_used == len(truth["classes"]) and ds.mode == "train"
    assert any(len(by_id[r.extra["youtube_id"]]["labels"]) > 1 for r in ds.records)
    for r in ds.records:
        assert r.label == by_id[r.extra["youtube_id"]]["labels"]
    s = ds[0]
    hot = torch.zeros(ds.num_classes)
    hot[ds.records[0].label] = 1
    assert s["label"].dtype == torch.float32 and torch.equal(s["label"], hot)
    ev = audioset(root, "eval", **KW)
    assert ev.mode == "eval" and not set(ev.video_ids) & set(ds.video_ids)
    segments = root / "eval_segments.csv"
    rows = segments.read_text()
    mid = (root / "class_labels_indices.csv").read_text().splitlines()[1].split(",")[1]
    segments.write_text(rows + "".join(f'abcdefghijk, {t}, "{mid}"\n'
                                       for t in ("nan, 10.000", "0.000, inf")))
    try:  # non-finite times are invalid rows (nan and inf crashed the int() of the file name)
        damaged = audioset(root, "eval", **KW)
    finally:
        segments.write_text(rows)
    assert (damaged.invalid_rows, damaged.num_listed) == (2, ev.num_listed + 2)
    classes = root / "class_labels_indices.csv"
    text = classes.read_text()
    lines = text.splitlines()
    classes.write_text("\n".join([lines[0], "1.0" + lines[1][lines[1].index(","):], *lines[2:]]))
    try:
        with pytest.raises(DataError, match="expected integer indices in the column 'index'"):
            audioset(root, "eval", **KW)
    finally:
        classes.write_text(text)


def test_audioset_whole_video_files_are_sampled_inside_the_labelled_segment(tmp_path_factory):
    """Y<ytid>.mp4 / <ytid>.mp4 are whole videos: clips come from the row's start..end. (The
    segment start was stored as the file's first timestamp, which the probe then overwrote, so
    clips came from anywhere in the video.)"""
    root, _ = _layout(tmp_path_factory, "audioset", 1)
    csv = root / "balanced_train_segments.csv"
    lines = csv.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    ytid, start, _, mids = [f.strip() for f in lines[row].split(",", 3)]
    clip = next(root.rglob(f"{ytid}_*.mp4"))
    clip.rename(clip.with_name(f"Y{ytid}.mp4"))  # a 1 s "video" whose labelled part is 0.2-0.8 s
    lines[row] = f"{ytid}, 0.200, 0.800, {mids}"
    csv.write_text("\n".join(lines) + "\n")
    ds = audioset(root, "balanced_train", mode="eval", **{**KW, "num_clips": 3})
    vi = next(i for i, r in enumerate(ds.records) if r.extra["youtube_id"] == ytid)
    starts = [ds[vi * 3 + c]["clip_start_s"] for c in range(3)]
    assert starts == pytest.approx([0.2, 0.3, 0.4], abs=1e-6)
    assert ds.records[vi].extra["segment_start_s"] == 0.2


def test_index_files_with_a_bom_parse_and_damaged_csvs_name_file_and_format(tmp_path):
    """Spreadsheet-saved copies start with a BOM; an unquoted comma in a label breaks the column
    count: the first parses as the clean file, the second is a one-line DataError."""
    from avssl.data.datasets.audioset import read_segments
    from avssl.data.datasets.kinetics import read_kinetics_csv
    from avssl.data.datasets.layout import read_lines

    bom = "\ufeff"
    segments = ('# Segments csv created Sun Mar  5 10:54:31 2017\n'
                '# num_ytids=2, num_segs=2, num_unique_labels=3, num_positive_labels=3\n'
                '# YTID, start_seconds, end_seconds, positive_labels\n'
                '--ZhevVpy1s, 50.000, 60.000, "/m/012xff"\n'
                '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n')
    (tmp_path / "seg.csv").write_text(bom + segments, encoding="utf-8")
    df = read_segments(tmp_path / "seg.csv")
    assert list(df["ytid"]) == ["--ZhevVpy1s", "--PJHxphWEs"]
    assert df["mids"][1] == "/m/09x0r,/t/dd00088"
    (tmp_path / "bad_seg.csv").write_text(segments.replace('"', ""))
    with pytest.raises(DataError, match=r"bad_seg\.csv: not a readable CSV.*YTID, start, end"):
        read_segments(tmp_path / "bad_seg.csv")

    kin = ("label,youtube_id,time_start,time_end,split\r\n"
           '"rock, paper, scissors",-AbCdEfGhIj,10,20,train\r\n')
    (tmp_path / "train.csv").write_text(bom + kin, encoding="utf-8", newline="")
    df = read_kinetics_csv(tmp_path / "train.csv")
    assert list(df.columns[:2]) == ["label", "youtube_id"] and df["label"][0] == "rock, paper, scissors"
    (tmp_path / "bad.csv").write_text(kin.replace('"', ""))
    with pytest.raises(DataError, match=r"bad\.csv: not a readable CSV.*label,youtube_id"):
        read_kinetics_csv(tmp_path / "bad.csv")

    (tmp_path / "vgg").mkdir()
    (tmp_path / "vgg" / "vggsound.csv").write_text("---g-f_I2yQ,1,people marching,test\n"
                                                  "--0PQM4-hqg,30,rock, paper,train\n")
    with pytest.raises(DataError, match=r"vggsound\.csv: not a readable CSV.*ytid,start_seconds"):
        vggsound(tmp_path / "vgg", "train", **KW)

    (tmp_path / "classInd.txt").write_text(bom + "1 ApplyEyeMakeup\r\n2 ApplyLipstick\r\n")
    assert read_lines(tmp_path / "classInd.txt") == ["1 ApplyEyeMakeup", "2 ApplyLipstick"]


def test_audio_shift_gives_the_same_videos_audio_shifted(tmp_path):
    """The hard sync negative is this video's audio at start + shift_s, |shift_s| in range."""
    clip = render_clip(0, 5, cfg=WorldConfig(duration_s=3.0, size=32))
    long_path, short_path = tmp_path / "long.mp4", tmp_path / "short.mp4"
    decoding.write_av(long_path, clip["video"], 25.0, clip["audio"], 16000)
    decoding.write_av(short_path, clip["video"][:20], 25.0, clip["audio"][:, :12800], 16000)
    ds = ClipDataset([VideoRecord(str(long_path), "long"), VideoRecord(str(short_path), "short")],
                     clip_s=1.0, fps=10, size=16, audio_shift=(0.8, 1.5), progress=False)
    shifts = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        s = ds[0]
        assert s["hard_valid"] and 0.8 - 1e-6 <= abs(s["shift_s"]) <= 1.5 + 1e-6
        start = s["clip_start_s"] + s["shift_s"]
        assert 0 <= start <= 2.0 + 1e-6  # the shifted window stays inside the 3 s file
        ref = decoding.decode_audio(long_path, start, start + 1.0, sample_rate=16000)
        assert torch.allclose(s["audio_shift"], ref)
        assert not torch.allclose(s["audio_shift"], s["audio"], atol=1e-3)
        shifts.append(s["shift_s"])
    assert len(set(round(x, 3) for x in shifts)) > 1  # drawn per epoch, not fixed
    short = ds[1]  # 0.8 s: no 1 s window fits, let alone a shifted one
    assert short["hard_valid"] is False and not short["audio_shift"].any()
    with pytest.raises(ConfigError, match="audio_shift"):
        ClipDataset([VideoRecord(str(long_path), "long")], audio=False, audio_shift=(0.5, 1.0))


def test_persistent_workers_see_set_epoch(good_tree):
    """Workers keep their dataset copy across epochs; the epoch must still reach them."""
    ds = folder_dataset(good_tree, mode="train", seed=0, video_transform=VideoPipeline(size=12),
                        **KW)
    loader = DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True)
    list(loader)  # epoch 0 starts the workers
    ds.set_epoch(1)
    again = list(loader)
    assert _same(again, _batches(good_tree, seed=0, workers=0, epoch=1))
    assert not _same(again, _batches(good_tree, seed=0, workers=0, epoch=0))


def test_manifest_in_another_folder_finds_every_video(tree, tmp_path):
    """Relative manifest paths are relative to the manifest's folder (scan's CLI writes them so);
    absolute paths are kept; bad rows are still dropped."""
    from avssl.data.manifest import read_manifest

    csv = tmp_path / "lists" / "manifest.csv"
    write_manifest(scan(tree, progress=False), csv, root=tree)
    assert all(p.startswith("../") for p in read_manifest(csv)["path"])
    ds = folder_dataset(csv, mode="eval", **KW)
    assert (ds.num_listed, ds.num_used, ds.missing) == (7, 5, [])
    assert sorted(Path(r.path).relative_to(tree).as_posix() for r in ds.records) == GOOD
    df = scan(tree, progress=False)
    df["path"] = [str(tree / p) for p in df["path"]]  # a hand-made list of absolute paths
    write_manifest(df, tmp_path / "abs.csv")
    ds = folder_dataset(tmp_path / "abs.csv", mode="eval", **KW)
    assert (ds.num_listed, ds.num_used, ds.missing) == (7, 5, [])


def test_transforms_get_the_generator_only_where_they_take_one(good_tree):
    """A defaulted second parameter is a setting (normalize's mean, random_hflip's p), not the
    generator: those transforms used to receive it positionally and crash."""
    import functools

    from avssl.data import transforms as T
    from avssl.data.datasets.base import takes_generator

    assert takes_generator(T.normalize) is None
    assert takes_generator(T.to_float) is None
    assert takes_generator(functools.partial(T.random_hflip, p=1.0)) == "keyword"
    assert takes_generator(lambda x, g: x) == "positional"
    assert takes_generator(VideoPipeline("eval", size=16)) == "keyword"
    plain = folder_dataset(good_tree, mode="eval", **KW)[0]["video"]
    norm = folder_dataset(good_tree, mode="eval", video_transform=T.normalize, **KW)[0]["video"]
    torch.testing.assert_close(norm, T.normalize(plain))
    flipped = folder_dataset(good_tree, mode="eval", **KW,
                             video_transform=functools.partial(T.random_hflip, p=1.0))[0]
    assert torch.equal(flipped["video"], plain.flip(-1))
    seen = []
    folder_dataset(good_tree, mode="eval", **KW,
                   audio_transform=lambda a, g: seen.append(g) or a)[0]
    assert len(seen) == 1 and isinstance(seen[0], torch.Generator)
