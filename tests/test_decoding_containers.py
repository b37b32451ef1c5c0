"""Decoding files that real downloads give and write_av does not: Matroska/WebM (millisecond
timestamps, no per-stream length), audio that outlasts the video, and streams whose first
timestamp is not 0 (cuts made with ``-copyts``).

Frame k of every file here is a flat grey of brightness 2k, so a decoded frame's index is
round(mean / 2).
"""
from __future__ import annotations

import io
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from avssl.data import decoding
from avssl.data.decoding import decode_audio, decode_video, probe

BACKENDS = ["pyav"] + (["decord"] if decoding._HAS_DECORD else [])
TONE_HZ = 220.0


def _tone(n: int, sr: int, t0: float = 0.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * TONE_HZ * (np.arange(n) / sr + t0))).astype(np.float32)


class _Pipe(io.RawIOBase):
    """A write-only, unseekable sink: what a muxer writing to a pipe sees."""

    def __init__(self):
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.data += bytes(b)
        return len(b)


def _write(path, *, video_s: float, audio_s: float, fps: int = 25, sr: int = 16000,
           offset_s: float = 0.0, acodec: str = "aac", streamed: bool = False) -> None:
    """An H.264 video of ``video_s`` s and a mono tone of ``audio_s`` s, both starting at
    ``offset_s`` on the file's clock (what ``ffmpeg -copyts -ss`` leaves behind).
    ``streamed``: muxed into a pipe, as a live recording is, so Matroska cannot go back to write
    any length (no Duration, no DURATION tags, no cues)."""
    import av

    rate = Fraction(fps)
    pipe = _Pipe() if streamed else None
    fmt = {".mkv": "matroska", ".webm": "webm"}.get(path.suffix) if streamed else None
    with av.open(pipe if streamed else str(path), "w", format=fmt) as c:
        vs = c.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        ast = c.add_stream(acodec, rate=sr)
        ast.layout = "mono"
        for k in range(round(video_s * fps)):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 2 * k % 256, np.uint8), format="rgb24")
            f.pts, f.time_base = k + round(offset_s * fps), 1 / rate
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
        x = _tone(round(audio_s * sr), sr, offset_s)[None]
        a0 = round(offset_s * sr)
        for i in range(0, x.shape[1], 1024):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, i:i + 1024]), format="fltp",
                                            layout="mono")
            fr.sample_rate, fr.pts, fr.time_base = sr, a0 + i, Fraction(1, sr)
            for p in ast.encode(fr):
                c.mux(p)
        for p in ast.encode(None):
            c.mux(p)
    if streamed:
        path.write_bytes(bytes(pipe.data))


def _ids(frames: torch.Tensor) -> list[int]:
    return (frames.float().mean(dim=(1, 2, 3)) / 2).round().int().tolist()


@pytest.mark.parametrize("sr", [44100, 48000])
def test_aac_in_mkv_is_continuous_across_its_millisecond_timestamps(tmp_path, sr):
    """Matroska rounds each 1024-sample AAC frame's time to 1 ms; placing frames at those rounded
    times overwrote or zero-filled up to 22 samples at every frame boundary (mean error 0.11
    against the written tone). Laid end to end, the frames give the tone back as in an mp4."""
    path = tmp_path / "tone.mkv"
    _write(path, video_s=2.0, audio_s=2.0, sr=sr)
    got = decode_audio(path, 0.5, 1.5, sample_rate=sr)[0].numpy()
    # After a seek the first frame's own time is known to +-0.5 ms only (the container's
    # resolution, harmless for sync): allow one lag inside that, the same for the whole window.
    half_ms = sr // 2000 + 1
    errs = [np.abs(got - _tone(len(got), sr, 0.5 + lag / sr))[half_ms:-half_ms]
            for lag in range(-half_ms, half_ms + 1)]
    err = min(errs, key=np.mean)
    assert err.mean() < 0.02, err.mean()  # AAC's own coding error is about 0.007
    assert err.max() < 0.2, err.max()


def test_streamed_mkv_without_any_length_is_measured_from_its_packets(tmp_path):
    """A Matroska file muxed into a pipe (a live recording, ``ffmpeg -f matroska pipe:``)
    records no length; it was probed as 0 s long, so every clip, train or eval, was its first
    second."""
    from avssl.data.datasets import ClipDataset, VideoRecord

    path = tmp_path / "live.mkv"
    _write(path, video_s=3.0, audio_s=2.0, streamed=True)
    info = probe(path)
    assert info.duration_s == pytest.approx(3.0, abs=0.05)
    assert info.num_frames == 75
    assert info.audio_end_s == pytest.approx(2.0, abs=0.07)  # + the last AAC frame's padding
    ds = ClipDataset([VideoRecord(str(path), "live")], mode="eval", num_clips=3, clip_s=1.0,
                     fps=5, audio=False, progress=False)
    assert [ds[i]["clip_start_s"] for i in range(3)] == pytest.approx([0.0, 1.0, 2.0], abs=0.05)
    got = _ids(ds[2]["video"])  # frames 50..74: the file's last second, not its first
    assert all(abs(g - k) <= 1 for g, k in zip(got, [50, 55, 60, 65, 70])), got


def test_mkv_whose_audio_outlasts_the_video_is_the_videos_length(tmp_path):
    """Matroska has no per-stream duration: the container's length is the audio's here, and the
    probe called the file truncated ("claims 6.06 s of video")."""
    path = tmp_path / "long_audio.mkv"
    _write(path, video_s=4.0, audio_s=6.0)
    info = probe(path)
    assert info.duration_s == pytest.approx(4.0, abs=0.05)
    assert info.num_frames == 100


def test_mkv_cut_with_copyts_is_not_truncated_and_its_audio_ends_on_time(tmp_path):
    """ffmpeg's Matroska muxer tags each track with its END time (00:00:13 for 3 s starting at
    10 s): read as a length, the probe claimed 13 s of video and rejected the file as truncated,
    and put the audio's end at 22 s, so sync clips were allowed past it into silence."""
    path = tmp_path / "late.mkv"
    _write(path, video_s=3.0, audio_s=2.0, offset_s=10.0)
    info = probe(path)
    assert info.start_s == pytest.approx(10.0, abs=1e-3)
    assert (info.duration_s, info.num_frames) == (pytest.approx(3.0, abs=0.05), 75)
    assert info.audio_end_s == pytest.approx(12.0, abs=0.07)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_window_wholly_before_the_first_frame_gives_the_first_frame(tmp_path, backend):
    """decode_video's contract: times before the first frame give the first frame (PyAV raised
    "no video frame decodes" when no frame fell inside the window)."""
    path = tmp_path / "v.mp4"
    _write(path, video_s=2.0, audio_s=2.0)
    assert _ids(decode_video(path, -1.0, -0.5, fps=10, backend=backend)) == [0] * 5


def test_clips_start_at_the_videos_first_timestamp(tmp_path):
    """A video cut with -copyts starts at 10 s on its clock; windows drawn from 0 gave every clip
    the first frame frozen and silence."""
    from avssl.data.datasets.folder import folder_dataset
    from avssl.data.manifest import read_manifest, scan, write_manifest

    root = tmp_path / "videos"
    root.mkdir()
    _write(root / "late.mp4", video_s=4.0, audio_s=4.0, offset_s=10.0)
    assert probe(root / "late.mp4").start_s == pytest.approx(10.0, abs=1e-3)

    manifest = tmp_path / "m.csv"
    write_manifest(scan(root, progress=False), manifest, root=root)
    assert read_manifest(manifest)["start_s"].tolist() == pytest.approx([10.0], abs=1e-3)
    # a manifest written before the start_s / audio_end_s columns: the file is probed for them
    # (read as 0, every clip was the first frame, silent)
    old = tmp_path / "old.csv"
    lines = manifest.read_text().splitlines()
    old.write_text("\n".join(",".join(line.split(",")[:-2]) for line in lines) + "\n")
    assert lines[0].endswith(",start_s,audio_end_s") and "start_s" not in old.read_text()
    for src in (root, manifest, old):
        ds = folder_dataset(src, mode="eval", num_clips=3, clip_s=1.0, fps=10, size=None,
                            progress=False)
        starts = []
        for i in range(3):
            s = ds[i]
            ids = _ids(s["video"]) if s["video"].dtype == torch.uint8 else None
            starts.append(s["clip_start_s"])
            if ids is not None:  # frame k is on screen from 10 + k / 25
                assert ids[0] == math.floor((s["clip_start_s"] - 10.0 + 1e-3) * 25)
            assert float(s["audio"].abs().max()) > 0.1  # the tone, not silence before the file
        assert min(starts) >= 10.0 and max(starts) + 1.0 <= 14.0 + 1e-6, starts


def test_av_sync_clips_start_at_the_videos_first_timestamp(tmp_path):
    from avssl.bench.tasks.av import AVClips
    from avssl.data.datasets.base import VideoRecord

    path = tmp_path / "late.mp4"
    _write(path, video_s=6.0, audio_s=6.0, offset_s=10.0)
    clips = AVClips([VideoRecord(str(path), "late", None, {})], clip_s=1.0, fps=10, size=32,
                    sample_rate=16000, video_transform=lambda v: v, audio_transform=lambda a: a,
                    grid=(-1.0, 0.0, 1.0), hard=None)
    start = clips.items[0][1]
    assert 11.0 <= start <= 14.0  # room for +-1 s of audio inside [10, 16)
    item = clips[0]
    assert float(item["mels"].abs().amax(dim=(1, 2)).min()) > 0.1  # every candidate has the tone


def test_folder_dataset_follows_linked_folders_like_the_manifest_scan(tmp_path):
    from avssl.data.datasets.folder import folder_dataset
    from avssl.data.datasets.layout import index_video_files
    from avssl.data.manifest import find_videos

    elsewhere = tmp_path / "other_disk"
    elsewhere.mkdir()
    _write(elsewhere / "a.mp4", video_s=1.0, audio_s=1.0)
    root = tmp_path / "root"
    root.mkdir()
    _write(root / "b.mp4", video_s=1.0, audio_s=1.0)
    (root / "part1").symlink_to(elsewhere, target_is_directory=True)
    assert find_videos(root) == ["b.mp4", "part1/a.mp4"]
    assert sorted(index_video_files(root)) == ["a", "b"]
    ds = folder_dataset(root, clip_s=0.5, fps=10, progress=False)
    assert sorted(r.video_id for r in ds.records) == ["b", "part1/a"]


def test_sync_pairs_stay_where_the_audio_is(tmp_path):
    """4 s of video with 2 s of sound: windows drawn over the video gave silent positives and
    silent "hard negatives" (equal inputs the loss must push apart) marked valid."""
    from avssl.data.datasets.folder import folder_dataset
    from avssl.data.manifest import scan, write_manifest

    root = tmp_path / "videos"
    root.mkdir()
    for k in range(3):
        _write(root / f"short_audio_{k}.mp4", video_s=4.0, audio_s=2.0)
    info = probe(root / "short_audio_0.mp4")
    assert info.duration_s == pytest.approx(4.0, abs=0.05)
    assert info.audio_end_s == pytest.approx(2.0, abs=0.05)
    manifest = tmp_path / "m.csv"
    write_manifest(scan(root, progress=False), manifest, root=root)
    for src in (root, manifest):
        ds = folder_dataset(src, mode="train", clip_s=0.5, fps=10, size=None,
                            audio_shift=(0.5, 1.0), progress=False)
        valid = 0
        for epoch in range(4):
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                s = ds[i]
                assert s["clip_start_s"] + 0.5 <= info.audio_end_s + 1e-6
                assert float(s["audio"].abs().amax()) > 0.1  # the positive has its sound
                if s["hard_valid"]:
                    valid += 1
                    assert float(s["audio_shift"].abs().amax()) > 0.1
        assert valid > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_window_just_before_a_keyframe_starts_on_the_frame_on_screen(tmp_path, backend):
    """An mp4 with B-frames and no edit list decodes each keyframe ~2 frames before it is
    shown; PyAV's seek goes by decode order, so a window starting in that gap began with the
    keyframe instead of the frame on screen (up to 2 frames out of step with its audio)."""
    import av

    path = tmp_path / "bframes.mp4"
    rate = Fraction(25)
    with av.open(str(path), "w", options={"use_editlist": "0"}) as c:
        vs = c.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        vs.codec_context.gop_size = 16
        vs.options = {"bframes": "2", "x264-params": "scenecut=0"}
        for k in range(75):
            # brightness 3k (not 2k: a flat grey comes back within +-1, so 2k + 1 was ambiguous)
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 3 * k, np.uint8), format="rgb24")
            f.pts, f.time_base = k, 1 / rate
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode(None):
            c.mux(p)
    with av.open(str(path)) as c:
        frames = [(float(f.pts * f.time_base), f.key_frame) for f in c.decode(c.streams.video[0])]
    pts = np.array(sorted(t for t, _ in frames))
    keys = sorted(t for t, key in frames if key and t > pts[0])  # (the first one is at 0.08 s)
    assert len(keys) >= 3
    for key in keys:
        for start in key - np.arange(0.005, 0.12, 0.01):
            got = decode_video(str(path), float(start), float(start) + 0.05, backend=backend)
            expected = int(np.searchsorted(pts, start + 1e-3, side="right") - 1)
            assert round(got[0].float().mean().item() / 3) == expected, (key, start)
