from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import avssl.data.manifest as manifest
from avssl.data.datasets import build_dataset, ucf101
from avssl.data.synthetic import WorldConfig, write_layout
from avssl.errors import ConfigError, DataError

torch.set_num_threads(1)

CFG = WorldConfig(size=32, duration_s=1.0, max_actors=2, max_distractors=1)
KW = dict(clip_s=0.4, fps=10, size=16, progress=False)


@pytest.fixture(scope="session")
def ucf(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ucf101")
    write_layout("ucf101", root, clips_per_class=4, seed=0, cfg=CFG)
    return root


@pytest.fixture(scope="session")
def truth(ucf) -> dict[str, dict]:
    """Ground truth of the writer by list path (``Class/v_..avi``)."""
    clips = json.loads((ucf / "ground_truth.json").read_text())["clips"]
    return {c["list_path"]: c for c in clips}


def _rel(path: str) -> str:
    return Path(path).relative_to(Path(path).parents[1]).as_posix()


def _copy_with_lists(ucf: Path, dst: Path, edit) -> Path:
    """A root sharing ``ucf``'s videos, with every list file rewritten by ``edit(name, lines)``."""
    dst.mkdir()
    os.symlink(ucf / "UCF-101", dst / "UCF-101")
    (dst / "ucfTrainTestlist").mkdir()
    for f in (ucf / "ucfTrainTestlist").iterdir():
        lines = f.read_bytes().decode().splitlines()
        (dst / "ucfTrainTestlist" / f.name).write_bytes(edit(f.name, lines).encode())
    return dst


def test_labels_come_from_classind_not_sorted_folders(ucf, truth):
    lists = ucf / "ucfTrainTestlist"
    assert b"\r\n" in (lists / "trainlist01.txt").read_bytes()  # the real CRLF lines
    order = [line.split()[1] for line in (lists / "classInd.txt").read_text().splitlines()]
    folders = sorted(p.name for p in (ucf / "UCF-101").iterdir())
    assert folders != order  # Python's sorted() disagrees with classInd (JumpingJack/JumpRope)
    for train in (True, False):
        ds = ucf101(ucf, split=1, train=train, mode="eval", **KW)
        assert ds.class_names == order and ds.num_classes == len(order)
        for rec in ds.records:
            rel = _rel(rec.path)
            assert rec.label == truth[rel]["label"] == order.index(rel.split("/")[0])
            assert "\r" not in rec.path
        # at least one video would get another id from sorted folder names
        assert any(folders.index(r.extra["class_folder"]) != r.label for r in ds.records)


def test_test_lists_with_and_without_labels_agree(ucf, tmp_path):
    def add_labels(name, lines):  # derived copies append "<label>" to testlist lines
        if not name.startswith("testlist"):
            return "\r\n".join(lines) + "\r\n"
        classes = [l.split()[1] for l in (ucf / "ucfTrainTestlist/classInd.txt").read_text()
                   .splitlines()]
        return "".join(f"{l} {classes.index(l.split('/')[0]) + 1}\r\n" for l in lines)

    def lf_only(name, lines):
        return "\n".join(lines) + "\n"

    labelled = _copy_with_lists(ucf, tmp_path / "labelled", add_labels)
    assert len((labelled / "ucfTrainTestlist/testlist02.txt").read_text().split("\n")[0]
               .split()) == 2
    lf = _copy_with_lists(ucf, tmp_path / "lf", lf_only)
    for split in (1, 2, 3):
        plain = ucf101(ucf, split=split, train=False, **KW)
        for other_root in (labelled, lf):
            other = ucf101(other_root, split=split, train=False, **KW)
            assert other.video_ids == plain.video_ids and other.labels == plain.labels
        assert plain.mode == "eval" and len(set(plain.labels)) == len(plain.class_names)


def test_train_labels_come_from_the_folder_when_a_copy_renumbers_them(ucf, tmp_path, caplog):
    """A derived train list with 0-based labels shifted every label by one (one became -1)."""
    def zero_based(name, lines):
        if not name.startswith("trainlist"):
            return "\r\n".join(lines) + "\r\n"
        return "".join(f"{l.split()[0]} {int(l.split()[1]) - 1}\r\n" for l in lines)

    def words(name, lines):
        if not name.startswith("trainlist"):
            return "\r\n".join(lines) + "\r\n"
        return "".join(f"{l.split()[0]} {l.split('/')[0]}\r\n" for l in lines)

    official = ucf101(ucf, split=1, train=True, mode="eval", **KW)
    shifted = ucf101(_copy_with_lists(ucf, tmp_path / "zero", zero_based), split=1, train=True,
                     mode="eval", **KW)
    assert shifted.labels == official.labels and min(shifted.labels) == 0
    assert "carry a label that differs from their folder's classInd id" in caplog.text
    with pytest.raises(DataError, match=r"trainlist01.txt: expected '<Class>/<file>.avi' "
                                        r"optionally followed by its classInd.txt id"):
        ucf101(_copy_with_lists(ucf, tmp_path / "words", words), split=1, train=True, **KW)


def test_handstand_pushups_case_mismatch_loads(ucf):
    ds = ucf101(ucf, split=1, train=True, mode="eval", **KW)
    assert ds.missing == [] and ds.num_used == ds.num_listed
    label = ds.class_names.index("HandstandPushups")
    idx = [i for i, r in enumerate(ds.records) if r.label == label]
    assert idx and all("v_HandStandPushups_" in ds.records[i].path for i in idx)
    sample = ds[idx[0]]
    assert sample["label"] == label and sample["video"].shape == (4, 3, 16, 16)
    assert sample["video_id"].startswith("v_HandStandPushups_g")


def test_group_wise_splits(ucf, truth):
    for k in (1, 2, 3):
        train = ucf101(ucf, split=k, train=True, **KW)
        test = ucf101(ucf, split=k, train=False, **KW)
        g_train = {r.extra["group"] for r in train.records}
        g_test = {r.extra["group"] for r in test.records}
        assert g_test <= set(range(7 * k - 6, 7 * k + 1)) and g_test
        assert not g_train & g_test
        assert {22, 23, 24, 25} & g_train and not {22, 23, 24, 25} & g_test
        assert set(train.video_ids) | set(test.video_ids) == {Path(p).stem for p in truth}
        assert len(train) + len(test) == len(truth)
    with pytest.raises(ConfigError, match="split"):
        ucf101(ucf, split=4)


def test_mixed_frame_rates_sample_by_time(ucf, truth):
    ds = ucf101(ucf, split=1, train=True, **KW)
    rates = {round(truth[_rel(r.path)]["fps"], 2) for r in ds.records}
    assert rates == {25.0, 29.97}
    loader = torch.utils.data.DataLoader(ds, batch_size=len(ds), num_workers=0)
    batch = next(iter(loader))  # mixed-fps videos collate: same T at the target fps
    assert batch["video"].shape == (len(ds), 4, 3, 16, 16)
    assert (batch["fps"] == 10).all()


def test_video_without_audio_and_the_audio_subset(ucf, truth, tmp_path, monkeypatch):
    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "cache"))
    full = ucf101(ucf, split=1, train=True, mode="eval", **KW)
    silent = [i for i, r in enumerate(full.records) if not truth[_rel(r.path)]["has_audio"]]
    assert silent
    s = full[silent[0]]  # loads as video, with silence
    assert s["has_audio"] is False and s["video"].shape[0] == 4 and not s["audio"].any()

    av = build_dataset("ucf101-av", ucf, split=1, train=True, **KW)
    sound_classes = [c for c in full.class_names
                     if all(t["has_audio"] for t in truth.values() if t["class_name"] == c)]
    assert av.class_names == sound_classes  # classInd order, silent classes gone
    assert 0 < len(sound_classes) < len(full.class_names)
    assert sorted(set(av.labels)) == list(range(len(sound_classes)))
    for rec in av.records:
        t = truth[_rel(rec.path)]
        assert t["has_audio"] and av.class_names[rec.label] == t["class_name"]
    assert {full.video_ids[i] for i in silent}.isdisjoint(av.video_ids)
    assert av[0]["has_audio"] is True and av[0]["audio"].abs().max() > 0
    assert len(list((tmp_path / "cache" / "manifests").glob("*.csv"))) == 1

    def no_scan(*a, **k):
        raise AssertionError("the cached manifest should be reused")

    monkeypatch.setattr(manifest, "scan", no_scan)
    again = ucf101(ucf, split=1, train=False, audio_subset=True, **KW)
    assert again.class_names == av.class_names and again.name == "ucf101-av"


def test_audio_subset_keeps_undecodable_files_for_evaluation_to_report(ucf, truth, tmp_path,
                                                                       monkeypatch):
    """A broken file probes as silent; the audio subset must not drop it quietly: evaluation
    stops naming it, and skip_bad counts it as listed but unused."""
    import shutil

    from avssl.errors import DataError

    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ucf"
    shutil.copytree(ucf, root)
    test_list = (root / "ucfTrainTestlist" / "testlist01.txt").read_text().split()
    victim = next(p for p in test_list if p.endswith(".avi") and truth[p]["has_audio"])
    (root / "UCF-101" / victim).write_bytes(b"not a video" * 100)

    with pytest.raises(DataError, match=Path(victim).name):
        ucf101(root, split=1, train=False, audio_subset=True, **KW)
    ds = ucf101(root, split=1, train=False, audio_subset=True, skip_bad=True, **KW)
    assert ds.num_listed == ds.num_used + 1
    assert Path(victim).name not in {Path(r.path).name for r in ds.records}

    # the user repairs the file (a half-finished copy, say): the probe cache sees the change
    shutil.copyfile(ucf / "UCF-101" / victim, root / "UCF-101" / victim)
    ds = ucf101(root, split=1, train=False, audio_subset=True, **KW)
    assert ds.num_listed == ds.num_used and Path(victim).name in {
        Path(r.path).name for r in ds.records}


def test_audio_subset_keeps_a_class_whose_videos_all_fail(ucf, truth, tmp_path, monkeypatch):
    """With every file of a sound class broken nothing says the class has sound; dropping it
    made its videos vanish from the count (evaluation ran on one class fewer, silently)."""
    import shutil

    from avssl.errors import DataError

    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "ucf"
    shutil.copytree(ucf, root)
    good = ucf101(root, split=1, train=False, audio_subset=True, **KW)
    victim = good.class_names[-1]
    for f in (root / "UCF-101" / victim).iterdir():
        f.write_bytes(b"")
    with pytest.raises(DataError, match=f"{victim}.*not decodable"):
        ucf101(root, split=1, train=False, audio_subset=True, **KW)
    ds = ucf101(root, split=1, train=False, audio_subset=True, skip_bad=True, **KW)
    assert ds.class_names == good.class_names
    assert ds.num_listed == good.num_listed == ds.num_used + good.labels.count(
        len(good.class_names) - 1)


def test_audio_subset_keeps_the_first_timestamp_and_the_audio_end(tmp_path):
    """ucf101-av records carried only duration and fps from the probe table: a video cut with
    -copyts (first timestamp 10 s) or with audio ending early was sampled from time 0 and past
    its sound, unlike the same file through a folder or manifest."""
    from avssl.data.datasets.base import VideoRecord
    from avssl.data.datasets.ucf101 import _audio_subset

    row = {"decodable": True, "has_audio": True, "error": float("nan"), "duration_s": 3.0,
           "fps": 25.0, "start_s": 10.0, "audio_end_s": 12.0}
    rec = VideoRecord(str(tmp_path / "A" / "v.avi"), "v", 0, {})
    _, (out,) = _audio_subset(["A"], {"A/v.avi": row}, [rec], tmp_path)
    assert {k: out.extra[k] for k in ("duration_s", "fps", "start_s", "audio_end_s")} == \
        {"duration_s": 3.0, "fps": 25.0, "start_s": 10.0, "audio_end_s": 12.0}
