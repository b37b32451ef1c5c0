"""Manifest scan / CSV round trip / CLI, and the process-safe quarantine list."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avssl.data import manifest as M
from avssl.errors import DataError

# torch and the codecs are imported inside the fixtures: worker processes spawned by the pool
# test import this module, and should start fast.

HEADER = ("path,duration_s,fps,num_frames,width,height,has_audio,sample_rate,decodable,error,"
          "start_s,audio_end_s")


def _clip(frames: int, h: int = 32, w: int = 48, seed: int = 0):
    import torch

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (1, 3, h, w), dtype=np.uint8)
    video = np.repeat(base, frames, axis=0)
    video[:, 0] = (np.arange(frames) * 9 % 256).astype(np.uint8)[:, None, None]  # moving content
    return torch.from_numpy(video)


def _tone(seconds: float, sr: int):
    import torch

    t = torch.arange(int(seconds * sr)) / sr
    return (0.3 * torch.sin(2 * math.pi * 440 * t)).unsqueeze(0).float()


@pytest.fixture(scope="session")
def media_root(tmp_path_factory) -> Path:
    """good.mp4 (25 fps, 1 s, audio), sub/Good.AVI (mpeg4+mp3), silent.mp4, empty.mp4, cut.mp4,
    plus files the scan must ignore (notes.txt, .hidden.mp4)."""
    from avssl.data.decoding import write_av

    root = tmp_path_factory.mktemp("media")
    (root / "sub").mkdir()
    write_av(root / "good.mp4", _clip(25), 25, _tone(1.0, 16000), 16000)
    write_av(root / "sub" / "Good.AVI", _clip(30, seed=1), 30, _tone(1.0, 22050), 22050)
    write_av(root / "silent.mp4", _clip(20, h=24, w=40, seed=2), 20, None)
    (root / "empty.mp4").write_bytes(b"")
    write_av(root / "full.mp4", _clip(50, seed=3), 25, _tone(2.0, 16000), 16000)
    data = (root / "full.mp4").read_bytes()
    (root / "full.mp4").unlink()
    (root / "cut.mp4").write_bytes(data[: len(data) // 3])  # truncated: header ok, frames missing
    (root / "notes.txt").write_text("not a video")
    (root / ".hidden.mp4").write_bytes(b"junk")
    return root


@pytest.fixture(scope="session")
def scanned(media_root) -> pd.DataFrame:
    return M.scan(media_root, progress=False)


def test_scan_columns_and_sorted_relative_paths(scanned):
    assert tuple(scanned.columns) == M.COLUMNS
    assert list(scanned["path"]) == ["cut.mp4", "empty.mp4", "good.mp4", "silent.mp4", "sub/Good.AVI"]


def test_scan_good_files(scanned):
    rows = scanned.set_index("path")
    good = rows.loc["good.mp4"]
    assert bool(good.decodable) and bool(good.has_audio) and good.error == ""
    assert (good.width, good.height, good.sample_rate) == (48, 32, 16000)
    assert good.fps == pytest.approx(25.0)
    assert good.duration_s == pytest.approx(1.0, abs=0.05)
    assert abs(int(good.num_frames) - 25) <= 1
    avi = rows.loc["sub/Good.AVI"]
    assert bool(avi.decodable) and bool(avi.has_audio) and avi.sample_rate == 22050
    assert avi.fps == pytest.approx(30.0)


def test_scan_file_without_audio(scanned):
    silent = scanned.set_index("path").loc["silent.mp4"]
    assert bool(silent.decodable) and not bool(silent.has_audio)
    assert pd.isna(silent.sample_rate)
    assert (silent.width, silent.height) == (40, 24)


@pytest.mark.parametrize("name", ["empty.mp4", "cut.mp4"])
def test_scan_flags_bad_files_with_reason(scanned, name):
    row = scanned.set_index("path").loc[name]
    assert not bool(row.decodable) and not bool(row.has_audio)
    assert row.error and "\n" not in row.error
    assert pd.isna(row.duration_s) and pd.isna(row.width)


def test_write_read_roundtrip_and_exact_csv(scanned, tmp_path):
    out = tmp_path / "deep" / "m.csv"
    M.write_manifest(scanned, out)
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == HEADER
    silent = next(line for line in lines if line.startswith("silent.mp4,"))
    fields = silent.split(",")
    assert fields[6] == "false" and fields[7] == "" and fields[8] == "true" and fields[9] == ""
    assert all(line.split(",")[8] in ("true", "false") for line in lines[1:])
    back = M.read_manifest(out)
    pd.testing.assert_frame_equal(back, scanned)
    assert [p.name for p in out.parent.iterdir()] == ["m.csv"]  # no temp file left behind


def test_scan_with_two_workers_gives_same_csv(media_root, scanned, tmp_path):
    two = M.scan(media_root, workers=2, progress=False)
    M.write_manifest(scanned, tmp_path / "one.csv")
    M.write_manifest(two, tmp_path / "two.csv")
    assert (tmp_path / "one.csv").read_bytes() == (tmp_path / "two.csv").read_bytes()


def _fake_probe_row(root: str, rel: str, timeout_s: float) -> dict:
    """Stands in for a decoder that kills its process on one file (runs in a spawned worker)."""
    if "crash" in rel:
        os._exit(3)
    row = {c: None for c in M.COLUMNS}
    row.update(path=rel, has_audio=False, decodable=True, error="")
    return row


def test_pool_survives_a_decoder_that_kills_its_process():
    from tqdm import tqdm

    rels = ["a.mp4", "b.mp4", "c_crash.mp4", "d.mp4", "e.mp4"]
    with tqdm(disable=True) as bar:
        rows = M._probe_in_pool("/nowhere", rels, 2, 1.0, bar, probe_row=_fake_probe_row)
    by_path = {r["path"]: r for r in rows}
    assert sorted(by_path) == rels and len(rows) == len(rels)
    assert not by_path["c_crash.mp4"]["decodable"] and "crashed" in by_path["c_crash.mp4"]["error"]
    assert all(by_path[p]["decodable"] for p in rels if p != "c_crash.mp4")


def test_scan_explicit_paths(media_root):
    df = M.scan(media_root, paths=["silent.mp4", media_root / "good.mp4"], progress=False)
    assert list(df["path"]) == ["good.mp4", "silent.mp4"]
    with pytest.raises(DataError, match="not inside"):
        M.scan(media_root, paths=["/elsewhere/x.mp4"], progress=False)


def test_scan_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        M.scan(tmp_path / "nope")


def test_read_manifest_rejects_wrong_header_and_values(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,duration,fps\nx.mp4,1.0,25\n")
    with pytest.raises(DataError, match="expected exactly " + HEADER):
        M.read_manifest(bad)
    bad.write_text(HEADER + "\nx.mp4,1.0,25,25,32,32,maybe,,true,,0,\n")
    with pytest.raises(DataError, match="has_audio must be true or false"):
        M.read_manifest(bad)
    bad.write_text(HEADER + "\nx.mp4,long,25,25,32,32,false,,true,,0,\n")
    with pytest.raises(DataError, match="duration_s must be a number"):
        M.read_manifest(bad)
    with pytest.raises(DataError, match="not found"):
        M.read_manifest(tmp_path / "missing.csv")


def test_read_manifest_accepts_the_ten_columns_from_before_start_s(scanned, tmp_path):
    new = tmp_path / "new.csv"
    M.write_manifest(scanned, new)
    old = tmp_path / "old.csv"
    old.write_text("\n".join(line.rsplit(",", 2)[0] for line in new.read_text().splitlines()) + "\n")
    back = M.read_manifest(old)
    added = ["start_s", "audio_end_s"]
    assert list(back.columns) == list(M.COLUMNS) and back[added].isna().all().all()
    pd.testing.assert_frame_equal(back.drop(columns=added), scanned.drop(columns=added))
    sounding = scanned[scanned["has_audio"]]
    assert len(sounding) and (sounding["audio_end_s"] > 0).all()


def test_cli_scan_writes_manifest_and_summary(media_root, tmp_path):
    out = tmp_path / "cli.csv"
    r = subprocess.run(
        [sys.executable, "-m", "avssl.data.manifest", "scan", str(media_root), "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert out.read_text().splitlines()[0] == HEADER
    assert "5 files, 3 decodable, 2 with audio" in r.stdout
    assert "cut.mp4" in r.stdout and "empty.mp4" in r.stdout
    assert len(M.read_manifest(out)) == 5


def test_cli_missing_dir_is_one_line_error(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "avssl.data.manifest", "scan", str(tmp_path / "nope"), "--out", str(tmp_path / "o.csv")],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.csv").exists()


# ----------------------------------------------------------------------------------- quarantine
def test_quarantine_add_contains_and_persists(tmp_path):
    qpath = tmp_path / "q" / "quarantine.jsonl"
    q = M.Quarantine(qpath)
    assert "a.mp4" not in q and q.paths() == set()
    q.add(tmp_path / "a.mp4", "truncated:\nno frames")
    q.add(str(tmp_path / "a.mp4"), "again")
    assert str(tmp_path / "a.mp4") in q and (tmp_path / "a.mp4") in q
    assert str(tmp_path / "b.mp4") not in q
    entries = M.Quarantine(qpath).entries()  # a fresh object reads the persisted file
    assert [e["reason"] for e in entries] == ["truncated: no frames", "again"]
    assert set(entries[0]) == {"path", "reason", "time"}
    assert len(M.Quarantine(qpath)) == 1
    lines = qpath.read_text().splitlines()
    assert [json.loads(line)["path"] for line in lines] == [str(tmp_path / "a.mp4")] * 2


def test_quarantine_sees_other_objects_additions(tmp_path):
    qpath = tmp_path / "q.jsonl"
    reader, writer = M.Quarantine(qpath), M.Quarantine(qpath)
    assert reader.paths() == set()
    writer.add(tmp_path / "x.mp4", "bad")
    assert str(tmp_path / "x.mp4") in reader  # re-read without reconstructing
    with open(qpath, "ab") as f:
        f.write(b"not json\n")  # a damaged line is skipped, later lines still count
    writer.add(tmp_path / "y.mp4", "bad")
    assert reader.paths() == {str(tmp_path / "x.mp4"), str(tmp_path / "y.mp4")}


def test_quarantine_from_two_processes(tmp_path):
    qpath = tmp_path / "shared.jsonl"
    script = textwrap.dedent(
        """
        import sys
        from avssl.data.manifest import Quarantine
        q = Quarantine(sys.argv[1])
        tag = sys.argv[2]
        for i in range(200):
            q.add(f"/data/{tag}/{i:04d}.mp4", "reason " + "x" * 300)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(qpath), tag]) for tag in ("a", "b")]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    lines = qpath.read_bytes().splitlines()
    assert len(lines) == 400
    entries = [json.loads(line) for line in lines]  # no interleaved or torn line
    assert all(e["reason"] == "reason " + "x" * 300 for e in entries)
    expected = {f"/data/{t}/{i:04d}.mp4" for t in "ab" for i in range(200)}
    assert M.Quarantine(qpath).paths() == expected


# ------------------------------------------------------------- paths relative to the manifest
@pytest.fixture(scope="module")
def synth_tree(tmp_path_factory) -> Path:
    """A tiny synthetic ``folder`` layout: 14 clips, some in more/, some without audio."""
    from avssl.data.synthetic import WorldConfig, write_layout

    root = tmp_path_factory.mktemp("scanpaths") / "data" / "videos"
    return write_layout("folder", root, clips_per_class=1, seed=2,
                        cfg=WorldConfig(size=16, duration_s=0.4, max_actors=1, max_distractors=0))


@pytest.mark.parametrize("where", ["elsewhere/deep/manifest.csv", "manifest.csv",
                                   "data/videos/manifest.csv", "data/videos/more/m.csv"])
def test_cli_manifest_written_anywhere_loads_every_video(synth_tree, tmp_path, where):
    """The scan command's manifest works wherever --out is (paths relative to the CSV's folder)."""
    from avssl.data.datasets import folder_dataset

    out = synth_tree.parent.parent / where
    r = subprocess.run([sys.executable, "-m", "avssl.data.manifest", "scan", str(synth_tree),
                        "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    try:
        ds = folder_dataset(out, mode="eval", clip_s=0.2, fps=5, size=16, progress=False)
        videos = sorted(p.relative_to(synth_tree).as_posix() for p in synth_tree.rglob("*.mp4"))
        assert len(videos) == 14
        assert ds.missing == [] and ds.num_listed == ds.num_used == 14
        assert sorted(Path(r.path).relative_to(synth_tree).as_posix() for r in ds.records) == videos
        paths = list(M.read_manifest(out)["path"])
        assert not any(os.path.isabs(p) for p in paths)  # relative, so the pair can move together
        assert ds[0]["video"].shape[0] == 1
    finally:
        out.unlink()


def test_manifest_and_tree_moved_together_still_load(synth_tree, tmp_path):
    """Paths are relative to the manifest's folder, so a project folder holding both can move; a
    path with no relative form (another drive on Windows) is written absolute and read as is."""
    import shutil

    from avssl.data.datasets import folder_dataset

    videos = tmp_path / "proj" / "videos"
    shutil.copytree(synth_tree, videos)
    out = tmp_path / "proj" / "lists" / "m.csv"
    M.write_manifest(M.scan(videos, progress=False), out, root=videos)
    assert all(p.startswith("../videos/") for p in M.read_manifest(out)["path"])
    (tmp_path / "proj").rename(tmp_path / "moved")
    ds = folder_dataset(tmp_path / "moved" / "lists" / "m.csv", mode="eval", clip_s=0.2, fps=5,
                        size=16, progress=False)
    assert ds.num_used == 14
    assert all(Path(r.path).is_relative_to(tmp_path / "moved" / "videos") for r in ds.records)

    def no_relpath(*a, **k):
        raise ValueError("path is on mount 'C:', start on mount 'D:'")

    real = os.path.relpath
    try:
        os.path.relpath = no_relpath
        written = M.relative_to_manifest(["a/b.mp4", "/x/y.mp4"], synth_tree, out)
    finally:
        os.path.relpath = real
    assert written == [Path(os.path.realpath(synth_tree), "a/b.mp4").as_posix(), "/x/y.mp4"]
    assert M.resolve_paths(written, out) == [os.path.normpath(p) for p in written]


def test_old_manifest_relative_to_scanned_folder_gets_a_clear_error(synth_tree, tmp_path):
    from avssl.data.datasets import folder_dataset

    out = tmp_path / "old.csv"
    M.write_manifest(M.scan(synth_tree, progress=False), out)  # paths relative to synth_tree
    with pytest.raises(DataError, match="none of the 14 listed videos exists.*scan DIR --out"):
        folder_dataset(out, mode="eval", clip_s=0.2, fps=5, size=16, progress=False)
    ds = folder_dataset(out, root=synth_tree, mode="eval", clip_s=0.2, fps=5, size=16,
                        progress=False)
    assert ds.num_used == 14


def test_manifest_out_must_be_a_file(scanned, tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        M.write_manifest(scanned, tmp_path)


def test_scan_cli_refuses_an_unwritable_out_before_scanning(tmp_path, monkeypatch, capsys):
    """--out under a file (or any folder that cannot be written) was a traceback, and only after
    the whole scan; now a one-line error before any file is probed."""
    (tmp_path / "videos").mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")

    def no_scan(*a, **k):
        raise AssertionError("scanned before checking --out")

    monkeypatch.setattr(M, "scan", no_scan)
    rc = M.main(["scan", str(tmp_path / "videos"), "--out", str(blocker / "manifest.csv")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert err.startswith("error: cannot write the manifest") and "writable folder" in err
    assert blocker.read_text() == "not a folder"
    assert sorted(os.listdir(tmp_path)) == ["a-file", "videos"]
