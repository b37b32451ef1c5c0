"""MUSIC loader, seeded split and synthetic writer (issue 10, data part)."""
from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from avssl.data.datasets.layout import YOUTUBE_ID
from avssl.data.datasets.music import (MUSIC_SPLIT_VERSION, MusicSplit, make_split, music,
                                       read_split)
from avssl.data.synthetic import LAYOUTS, WorldConfig, write_layout
from avssl.data.synthetic.solo import (DISTRACTOR_LOOKS, INSTRUMENT_SPECS, INSTRUMENTS,
                                       render_solo)
from avssl.errors import ConfigError, DataError

MUSIC_11 = ["accordion", "acoustic_guitar", "cello", "clarinet", "erhu", "flute", "saxophone",
            "trumpet", "tuba", "violin", "xylophone"]
TINY = WorldConfig(size=32)
PER_CLASS = 3  # the smallest count that gives every instrument one val and one test video
DURATION = 1.0


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_layout("music", tmp_path_factory.mktemp("music") / "m",
                        clips_per_class=PER_CLASS, seed=3, cfg=TINY, duration_s=DURATION)


@pytest.fixture
def copy(tree, tmp_path) -> Path:
    """A private copy of the tree (without its split files) to damage."""
    dst = tmp_path / "copy"
    shutil.copytree(tree, dst, ignore=shutil.ignore_patterns("splits"))
    return dst


def truth(root: Path) -> dict:
    return json.loads((root / "ground_truth.json").read_text())


# ---------------------------------------------------------------- writer


def test_writer_lays_out_the_music_format(tree):
    assert "music" in LAYOUTS.names()
    solo = json.loads((tree / "MUSIC_solo_videos.json").read_text())["videos"]
    assert sorted(solo) == MUSIC_11 == INSTRUMENTS
    ids = [i for v in solo.values() for i in v]
    assert all(len(v) == PER_CLASS for v in solo.values()) and len(set(ids)) == len(ids)
    assert all(YOUTUBE_ID.match(i) for i in ids) and any(i.startswith("-") for i in ids)
    clips = truth(tree)["clips"]
    assert len(clips) == len(ids)
    for c in clips:
        assert (tree / "solo" / c["instrument"] / f"{c['video_id']}.mp4").is_file()
        assert c["video_id"] in solo[c["instrument"]]
        assert INSTRUMENTS[c["label"]] == c["instrument"]
        assert {"seed", "index"} <= set(c) and c["seed"] == 3
    assert len({c["index"] for c in clips}) == len(clips)
    duets = json.loads((tree / "MUSIC_duet_videos.json").read_text())["videos"]
    assert duets and all(len(k.split(" ")) == 2 and set(k.split(" ")) <= set(MUSIC_11)
                         for k in duets)
    assert not set(i for v in duets.values() for i in v) & set(ids)


def test_written_files_decode_with_audio_at_the_world_rate(tree):
    from avssl.data.decoding import decode_audio, probe

    c = truth(tree)["clips"][0]
    path = tree / c["path"]
    info = probe(path)
    assert info.has_audio and info.sample_rate == TINY.sample_rate
    assert abs(info.duration_s - DURATION) < 0.1 and (info.width, info.height) == (32, 32)
    audio = decode_audio(path, 0.0, DURATION, sample_rate=TINY.sample_rate)
    clean = render_solo(c["seed"], c["index"], c["instrument"],
                        cfg=WorldConfig(size=32, duration_s=DURATION))["audio"][0]
    n = min(audio.shape[-1], len(clean))
    corr = np.corrcoef(audio.reshape(-1)[:n].numpy(), clean[:n])[0, 1]
    assert corr > 0.9  # the file holds this clip's audio (AAC-coded)


def test_writer_is_deterministic(tree, tmp_path):
    again = write_layout("music", tmp_path / "again", clips_per_class=PER_CLASS, seed=3,
                         cfg=TINY, duration_s=DURATION, workers=2)
    for name in ("MUSIC_solo_videos.json", "MUSIC_duet_videos.json", "ground_truth.json"):
        assert (again / name).read_text() == (tree / name).read_text(), name
    other = write_layout("music", tmp_path / "other", clips_per_class=1, seed=4, cfg=TINY,
                         duration_s=DURATION)
    a = json.loads((tree / "MUSIC_solo_videos.json").read_text())["videos"]
    b = json.loads((other / "MUSIC_solo_videos.json").read_text())["videos"]
    assert not {i for v in a.values() for i in v} & {i for v in b.values() for i in v}


def test_instruments_have_distinct_looks_and_voices():
    looks = {(s.shape, s.colour) for s in INSTRUMENT_SPECS}
    voices = {(s.timbre, s.pitch) for s in INSTRUMENT_SPECS}
    assert len(looks) == len(voices) == len({s.pitch for s in INSTRUMENT_SPECS}) == 11
    assert not looks & set(DISTRACTOR_LOOKS)
    pitches = sorted(s.pitch for s in INSTRUMENT_SPECS)
    assert min(b / a for a, b in zip(pitches, pitches[1:])) > 2 ** (2.5 / 12)  # > 2.5 semitones


def test_render_solo_is_pure_and_plays_throughout():
    cfg = WorldConfig(size=32, duration_s=3.0)
    a = render_solo(1, 5, "violin", cfg=cfg)
    b = render_solo(1, 5, "violin", cfg=cfg)
    for k in ("video", "audio", "stems", "boxes"):
        assert np.array_equal(a[k], b[k]), k
    assert not np.array_equal(a["audio"], render_solo(1, 6, "violin", cfg=cfg)["audio"])
    assert np.allclose(a["audio"], a["stems"].sum(0) + a["noise"], atol=1e-6)
    assert a["stems"].shape == (1, 3 * cfg.sample_rate) and a["boxes"].shape[1] == 1
    assert a["visible"].all() and a["label"] == INSTRUMENTS.index("violin")
    # sounding in every quarter second, with events spread over the clip
    quarter = a["stems"][0].reshape(12, -1)
    assert (np.sqrt((quarter ** 2).mean(1)) > 5 * cfg.audio_noise).all()
    times = [e["time_s"] for e in a["events"]]
    assert len(times) >= 3 and min(times) < 1.0 and max(times) > 2.0
    with pytest.raises(ConfigError, match="piano"):
        render_solo(0, 0, "piano")


def test_sound_identifies_the_instrument_across_videos():
    """Learnability proxy: the average magnitude spectrum of one video of each instrument is by
    far the closest (cosine) template to other videos of the same instrument (other motions)."""
    cfg = WorldConfig(size=16, duration_s=2.0, max_distractors=0)

    def profile(index: int, inst: str) -> np.ndarray:
        x = render_solo(0, index, inst, cfg=cfg)["stems"][0]
        frames = x[: len(x) // 512 * 512].reshape(-1, 512) * np.hanning(512)
        p = np.abs(np.fft.rfft(frames, axis=1)).mean(0)
        return p / np.linalg.norm(p)

    templates = np.stack([profile(0, name) for name in INSTRUMENTS])
    for k, name in enumerate(INSTRUMENTS):
        for index in (7 + k, 30 + k):
            sim = templates @ profile(index, name)
            assert int(sim.argmax()) == k, name
            assert sim[k] > 0.9 and np.delete(sim, k).max() < 0.7, (name, sim)


# ---------------------------------------------------------------- split


def test_make_split_counts_and_stability():
    videos = {"a": [f"a{i:02d}" for i in range(20)], "b": ["b0", "b1", "b2"], "c": ["c0", "c1"]}
    rows = make_split(videos, seed=0)
    count = {(i, s): sum(1 for _, ii, ss in rows if (ii, ss) == (i, s))
             for i in videos for s in ("train", "val", "test")}
    assert (count["a", "val"], count["a", "test"], count["a", "train"]) == (2, 2, 16)
    assert (count["b", "val"], count["b", "test"], count["b", "train"]) == (1, 1, 1)
    assert (count["c", "train"], count["c", "val"], count["c", "test"]) == (2, 0, 0)
    assert sorted(v for v, _, _ in rows) == sorted(i for v in videos.values() for i in v)
    # order-free in the JSON, stable when another instrument is added, seeded
    shuffled = {k: v[::-1] for k, v in reversed(list(videos.items()))}
    assert make_split(shuffled, seed=0) == rows
    more = make_split({**videos, "aa": ["x0", "x1", "x2", "x3"]}, seed=0)
    assert [r for r in more if r[1] != "aa"] == rows
    assert make_split(videos, seed=1) != rows


def test_loader_splits_partition_the_json(tree):
    solo = json.loads((tree / "MUSIC_solo_videos.json").read_text())["videos"]
    gt = {c["video_id"]: c for c in truth(tree)["clips"]}
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        s = music(tree, split, seed=0)
        assert isinstance(s, MusicSplit) and s.split == split and s.instruments == MUSIC_11
        assert s.num_listed == s.num_used == len(s.records) == len(MUSIC_11)  # 1 per instrument
        assert sorted(r.instrument for r in s.records) == MUSIC_11
        for r in s.records:
            assert r.video_id not in seen
            seen[r.video_id] = split
            assert s.instruments[r.label] == r.instrument == gt[r.video_id]["instrument"]
            assert Path(r.path).is_absolute() and Path(r.path) == tree / gt[r.video_id]["path"]
            assert abs(r.duration_s - DURATION) < 0.1 and r.has_audio
    assert sorted(seen) == sorted(i for v in solo.values() for i in v)


def test_split_file_is_written_versioned_and_honoured(copy):
    first = music(copy, "train", seed=0)
    path = Path(first.split_file)
    assert path.parent == copy / "splits" and path.is_file()
    meta, rows = read_split(path)
    import hashlib

    sha = hashlib.sha256((copy / "MUSIC_solo_videos.json").read_bytes()).hexdigest()
    assert meta["version"] == MUSIC_SPLIT_VERSION and meta["seed"] == "0"
    assert meta["json_sha256"] == sha and meta["index"] == "solo"
    assert rows == make_split(json.loads((copy / "MUSIC_solo_videos.json").read_text())["videos"])
    # an existing (published) split file is read, not recomputed
    moved = next(r for r in rows if r[2] == "train")
    text = path.read_text().replace(f"{moved[0]},{moved[1]},train",
                                    f"{moved[0]},{moved[1]},test")
    path.write_text(text)
    assert moved[0] in {r.video_id for r in music(copy, "test", seed=0).records}
    assert moved[0] not in {r.video_id for r in music(copy, "train", seed=0).records}
    other = music(copy, "train", seed=1)
    assert other.split_file != first.split_file and Path(other.split_file).is_file()
    # an explicit split file is used as is
    given = copy / "published.csv"
    shutil.copy(path, given)
    assert music(copy, "test", split_file=given).split_file == str(given)
    with pytest.raises(DataError, match="does not exist"):
        music(copy, "test", split_file=copy / "nope.csv")
    path.write_text("video_id,instrument,split\nabc,cello,holdout\n")
    with pytest.raises(DataError, match=r"music_solo_seed0_v1\.csv:2"):
        music(copy, "train", seed=0)


def test_split_goes_to_the_cache_when_root_is_read_only(copy, tmp_path, monkeypatch):
    # the package exports the function ``music``, which shadows the module attribute
    mod = importlib.import_module("avssl.data.datasets.music")

    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mod.os, "access", lambda *a, **k: False)
    s = music(copy, "val", seed=0)
    assert Path(s.split_file).is_relative_to(tmp_path / "cache" / "music")
    assert not (copy / "splits").exists()
    assert music(copy, "val", seed=0).records == s.records  # found again in the cache


# ---------------------------------------------------------------- failures


def test_missing_files_are_dropped_and_counted(copy):
    victim = music(copy, "test").records[0]
    Path(victim.path).unlink()
    s = music(copy, "test")
    assert s.num_listed == 11 and s.num_used == 10 and len(s.records) == 10
    assert s.missing == [f"{victim.instrument}/{victim.video_id}"]
    assert "10 of 11" in s.report()


def test_files_are_also_found_outside_solo(copy):
    shutil.move(str(copy / "solo" / "cello"), str(copy / "cello"))  # root/<instrument>/<id>
    flute = copy / "solo" / "flute"
    for p in flute.glob("*.mp4"):
        p.rename(copy / f"{p.stem}.mkv")  # flat under root, another container extension
    s = music(copy, "train")
    assert s.num_used == s.num_listed
    found = {r.instrument: Path(r.path) for r in s.records}
    assert found["cello"].parent == copy / "cello"
    assert found["flute"].parent == copy and found["flute"].suffix == ".mkv"


def test_undecodable_file_stops_unless_skip_bad(copy):
    victim = music(copy, "val").records[0]
    Path(victim.path).write_bytes(Path(victim.path).read_bytes()[:300])
    with pytest.raises(DataError, match=victim.video_id) as e:
        music(copy, "val")
    assert "skip_bad=True" in str(e.value)
    s = music(copy, "val", skip_bad=True)
    assert s.num_used == 10 and s.num_listed == 11 and s.bad[0][0] == victim.path


@pytest.mark.parametrize("content", ["{not json", '{"videos": ["a", "b"]}', '{"database": {}}'])
def test_bad_json_names_the_layout_and_the_stand_in(copy, content):
    (copy / "MUSIC_solo_videos.json").write_text(content)
    with pytest.raises(DataError) as e:
        music(copy, "train")
    msg = str(e.value)
    assert "MUSIC_solo_videos.json" in msg and "--layout music" in msg and "\n" not in msg


def test_missing_root_index_or_files_are_data_errors(copy, tmp_path):
    for root in (tmp_path / "nowhere", tmp_path):
        with pytest.raises(DataError, match="--layout music"):
            music(root, "train")
    with pytest.raises(DataError, match="none of the"):  # duet ids are listed, never written
        music(copy, "train", index="duet")
    with pytest.raises(ConfigError):
        music(copy, "validation")
    with pytest.raises(ConfigError):
        music(copy, "train", index="trio")
    # MUSIC-21's solo index is read when the MUSIC-11 one is absent
    (copy / "MUSIC_solo_videos.json").rename(copy / "MUSIC21_solo_videos.json")
    assert music(copy, "test").num_used == 11


def test_small_instruments_leave_val_and_test_empty(tmp_path):
    root = write_layout("music", tmp_path / "m", clips_per_class=2, seed=0, cfg=TINY,
                        duration_s=0.4)
    assert music(root, "train").num_used == 22
    with pytest.raises(DataError, match="empty"):
        music(root, "val")


def _write_cut(path: Path, *, offset_s: float, video_s: float, audio_s: float, fps: int = 10,
               sr: int = 11025) -> None:
    """A 32x32 H.264 video of ``video_s`` s and a 440 Hz tone of ``audio_s`` s (AAC), both
    starting at ``offset_s`` on the file's clock, as ``ffmpeg -copyts -ss`` cuts leave them."""
    import av
    from fractions import Fraction

    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=Fraction(fps))
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        ast = c.add_stream("aac", rate=sr)
        ast.layout = "mono"
        for k in range(round(video_s * fps)):
            f = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 8 * k % 256, np.uint8),
                                           format="rgb24")
            f.pts, f.time_base = k + round(offset_s * fps), Fraction(1, fps)
            c.mux(vs.encode(f))
        c.mux(vs.encode(None))
        tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(round(audio_s * sr)) / sr))
        tone = tone.astype(np.float32)[None]
        for i in range(0, tone.shape[1], 1024):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, i:i + 1024]),
                                            format="fltp", layout="mono")
            fr.sample_rate, fr.pts = sr, round(offset_s * sr) + i
            fr.time_base = Fraction(1, sr)
            c.mux(ast.encode(fr))
        c.mux(ast.encode(None))


def test_windows_start_with_the_video_and_stay_where_its_sound_is(copy):
    """A cut whose clock starts at 5 s, with 10 s of video and 7 s of sound: windows placed over
    [0, duration) began before the video (silence) and the test window ran past the audio."""
    from avssl.bench.separation.windows import WINDOW_S, record_starts
    from avssl.data.decoding import decode_audio

    victim = music(copy, "train").records[0]
    _write_cut(Path(victim.path), offset_s=5.0, video_s=10.0, audio_s=7.0)
    rec = next(r for r in music(copy, "train").records if r.video_id == victim.video_id)
    assert rec.start_s == pytest.approx(5.0, abs=1e-3)
    assert rec.audio_end_s == pytest.approx(12.0, abs=0.05)
    train = record_starts(rec, "train", max_windows=4)
    test = record_starts(rec, "test")
    assert len(train) == 2 and train[0] == pytest.approx(5.0, abs=1e-3)
    assert test == [pytest.approx(5.0 + (rec.audio_end_s - 5.0 - WINDOW_S) / 2)]
    for start in train + test:
        assert 5.0 - 1e-6 <= start and start + WINDOW_S <= rec.audio_end_s + 1e-6
        wav = decode_audio(rec.path, start, start + WINDOW_S, sample_rate=11025)[0]
        quarter = int(0.25 * 11025)  # sound from the window's first to its last quarter second
        for part in (wav[:quarter], wav[-quarter:]):
            assert float(part.pow(2).mean().sqrt()) > 0.2, start


def test_a_video_in_two_splits_is_an_error_naming_its_file(copy):
    s = music(copy, "test")
    _, rows = read_split(s.split_file)
    vid, inst, _ = next(r for r in rows if r[2] == "test")
    with open(s.split_file, "a") as fh:  # a hand-edited (or merged) split file
        fh.write(f"{vid},{inst},train\n")
    path = str(copy / "solo" / inst / f"{vid}.mp4")
    for split in ("train", "test"):  # neither side may load it: train on it, then score it
        with pytest.raises(DataError, match="both the test and the train split") as e:
            music(copy, split)
        assert path in str(e.value) and "\n" not in str(e.value)


def test_an_id_under_two_instruments_in_the_json_takes_one_split(copy):
    """A YouTube id listed under two instruments (the split is drawn per instrument) gets the
    split of its first instrument under both: drawn independently it could be trained on under
    one instrument and scored under the other."""
    index = copy / "MUSIC_solo_videos.json"
    videos = json.loads(index.read_text())["videos"]
    vid = next(v for v, i, s in make_split(videos) if i == "cello" and s == "test")
    # list it under a later instrument too, in place of a video that instrument's own draw
    # makes train (make_split of that instrument alone: no other instrument to agree with)
    edits = ((i, {**videos, i: [vid if v == other else v for v in videos[i]]})
             for i in sorted(videos) if i > "cello" for other in videos[i])
    inst, edited = next((i, e) for i, e in edits
                        if {s for v, _, s in make_split({i: e[i]}) if v == vid} == {"train"})
    assert {s for v, _, s in make_split(edited) if v == vid} == {"test"}
    index.write_text(json.dumps({"videos": edited}))
    found = {split: [r.instrument for r in music(copy, split).records if r.video_id == vid]
             for split in ("train", "val", "test")}
    assert found["train"] == found["val"] == [] and "cello" in found["test"]
