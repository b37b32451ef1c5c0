"""Tests for avssl.data.decoding on tiny files written by write_av itself.

Every clip has 50 frames; frame k is a flat grey of brightness 5k, so a decoded frame's index is
round(mean / 5). Audio (22050 Hz stereo, to exercise resampling) has a click on channel 0 at
CLICK0_S and on channel 1 at CLICK1_S.
"""
from __future__ import annotations

import math
import os
import platform
import signal
import threading
import time

import numpy as np
import pytest
import torch

from avssl.data import decoding
from avssl.data.decoding import MediaInfo, decode_audio, decode_video, probe, write_av
from avssl.errors import DecodeError, DecodeTimeout, NoAudioError

T = 50
SR = 22050
CLICK0_S, CLICK1_S = 0.5, 1.3
BACKENDS = ["pyav"] + (["decord"] if decoding._HAS_DECORD else [])


def _video(h: int = 48, w: int = 64) -> np.ndarray:
    v = np.zeros((T, 3, h, w), np.uint8)
    for k in range(T):
        v[k] = 5 * k
    return v


def _audio(seconds: float = 2.0) -> np.ndarray:
    a = np.zeros((2, int(seconds * SR)), np.float32)
    a[0, round(CLICK0_S * SR)] = 0.9
    a[1, round(CLICK1_S * SR)] = 0.9
    return a


def _ids(frames: torch.Tensor) -> list[int]:
    """Frame indices encoded as brightness in a decoded uint8 (T, 3, H, W) clip."""
    return (frames.float().mean(dim=(1, 2, 3)) / 5).round().int().tolist()


def _expected_ids(start: float, end: float, fps: float, native: float) -> list[int]:
    """The spec, restated: frame shown at t = last frame i with i / native <= t + 1 ms."""
    n = round((end - start) * fps)
    ts = [start + k / fps for k in range(n)]
    # rounded before the floor: (1.0 + 1e-3) * 30000 / 1001 is 30 up to float error
    return [min(max(math.floor(round((t + 1e-3) * native, 9)), 0), T - 1) for t in ts]


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("media")
    files = {}
    for ext in (".mp4", ".avi"):
        for fps in (25, 29.97):
            files[f"{ext}@{fps}"] = p = str(root / f"clip_{fps}{ext}")
            write_av(p, _video(), fps, _audio(), SR)
    files["silent"] = p = str(root / "silent.mp4")
    write_av(p, _video(), 25)
    return files


# ------------------------------------------------------------------------------------ write/probe


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
@pytest.mark.parametrize("fps", [25, 29.97])
def test_probe_reports_what_was_written(media, ext, fps):
    info = probe(media[f"{ext}@{fps}"])
    assert isinstance(info, MediaInfo)
    assert info.fps == pytest.approx(30000 / 1001 if fps == 29.97 else 25.0, abs=1e-6)
    assert info.num_frames == T
    assert info.duration_s == pytest.approx(T / info.fps, abs=1e-3)
    assert (info.height, info.width) == (48, 64)
    assert info.has_audio and info.sample_rate == SR and info.audio_channels == 2


def test_file_written_without_audio_has_no_audio_stream(media):
    info = probe(media["silent"])
    assert not info.has_audio and info.sample_rate is None and info.audio_channels == 0
    assert info.num_frames == T


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_write_av_round_trip_is_high_quality(tmp_path, ext):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    base = np.stack([(xx * 4) % 256, (yy * 4) % 256, ((xx + yy) * 2) % 256]).astype(float)
    video = np.stack([base + 3 * k + rng.normal(0, 10, (1, 64, 64)) for k in range(12)])
    video = np.clip(video, 0, 255).astype(np.uint8)
    path = tmp_path / f"q{ext}"
    write_av(path, torch.from_numpy(video), 25)
    got = decode_video(path, 0, 12 / 25, backend="pyav").numpy().astype(float)
    psnr = 10 * np.log10(255 ** 2 / np.mean((got - video) ** 2))
    assert psnr > 30


def test_write_av_rejects_odd_size_and_leaves_nothing(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_av(tmp_path / "odd.mp4", np.zeros((2, 3, 63, 64), np.uint8), 25)
    assert os.listdir(tmp_path) == []


def test_write_av_is_atomic_on_failure(tmp_path):
    path = tmp_path / "keep.mp4"
    write_av(path, _video(), 25)
    before = path.read_bytes()
    with pytest.raises(Exception):
        write_av(path, _video(), 25, video_codec="no_such_codec")
    assert path.read_bytes() == before  # old file intact, no temp file left behind
    assert os.listdir(tmp_path) == ["keep.mp4"]


# ------------------------------------------------------------------------------------ video


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key", [".mp4@25", ".avi@29.97", ".avi@25", ".mp4@29.97"])
def test_decode_video_window_picks_frames_by_time(media, key, backend):
    native = 30000 / 1001 if key.endswith("29.97") else 25.0
    x = decode_video(media[key], 0.5, 1.0, backend=backend)
    assert x.dtype == torch.uint8 and x.shape == (round(0.5 * native), 3, 48, 64)
    assert _ids(x) == _expected_ids(0.5, 1.0, native, native)
    y = decode_video(media[key], 0.31, 1.11, fps=10, backend=backend)
    assert _ids(y) == _expected_ids(0.31, 1.11, 10, native)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key", [".mp4@29.97", ".avi@29.97"])
def test_frame_on_screen_exactly_at_the_tolerance_edge(media, key, backend):
    """29.97 fps frame 30 has pts 1.001 s: at t = 1.0 it is on screen (<= t + 1 ms). decord's
    float32 timestamps (1.0010000467) used to pick frame 29 there."""
    x = decode_video(media[key], 0.0, 1.2, fps=25, backend=backend)
    assert _ids(x) == _expected_ids(0.0, 1.2, 25, 30000 / 1001) and _ids(x)[25] == 30


def test_clip_lengths_do_not_depend_on_the_start(media):
    """A 0.5 s window at 25 fps is 12.5 frames: end - start's float error used to round it to 12
    or 13 by start time, and clips of one length did not batch."""
    rng = np.random.default_rng(0)
    starts = rng.uniform(0, 1.4, 300)
    assert {decoding.num_samples(s, s + 0.5, 25) for s in starts} == {12}
    assert {decoding.num_samples(s, s + 0.5, 11025) for s in starts} == {5512}
    s = next(s for s in starts if round((s + 0.5 - s) * 25) == 13)  # such starts exist
    assert len(decode_video(media[".mp4@25"], s, s + 0.5, fps=25)) == 12
    assert decode_audio(media[".mp4@25"], s, s + 0.5, sample_rate=11025).shape[1] == 5512


@pytest.mark.skipif(platform.machine() != "x86_64",
                    reason="decord is a dependency on x86_64 only (no wheels elsewhere)")
def test_decord_frames_are_on_the_files_clock_when_the_video_starts_late(tmp_path):
    """An H.264 .mp4 without an edit list starts its video after 0 (B-frame delay, 0.08 s):
    PyAV and the audio use the file's clock; decord counted from the stream's start and
    returned frames 2 frames early."""
    import av
    from fractions import Fraction

    path = str(tmp_path / "late.mp4")
    with av.open(path, "w", options={"use_editlist": "0"}) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for k in range(T):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 5 * k, np.uint8), format="rgb24")
            f.pts, f.time_base = k, Fraction(1, 25)
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    with av.open(path) as c:
        vs = c.streams.video[0]
        start = float(vs.start_time * vs.time_base)
    assert start > 0  # the case under test: the video stream starts late
    got = {b: _ids(decode_video(path, 1.0, 1.4, fps=25, backend=b)) for b in BACKENDS}
    first = round((1.0 - start) * 25)  # frame k is on screen from start + k / 25
    assert got["decord"] == got["pyav"] == list(range(first, first + 10))


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_video_clamps_outside_the_file(media, backend):
    x = decode_video(media[".mp4@25"], -0.2, 0.2, fps=25, backend=backend)
    assert _ids(x)[:5] == [0] * 5 and _ids(x)[5:] == [0, 1, 2, 3, 4]
    y = decode_video(media[".avi@25"], 1.8, 2.6, fps=10, backend=backend)
    assert _ids(y) == [45, 47, 49, 49, 49, 49, 49, 49]


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_video_resizes(media, backend):
    short = decode_video(media[".mp4@25"], 0, 0.2, size=24, backend=backend)
    assert short.shape == (5, 3, 24, 32)  # 48x64 -> short side 24
    exact = decode_video(media[".mp4@25"], 0, 0.2, size=(16, 20), backend=backend)
    assert exact.shape == (5, 3, 16, 20) and exact.dtype == torch.uint8
    assert _ids(exact) == [0, 1, 2, 3, 4]  # flat frames keep their brightness


def test_auto_backend_falls_back_to_pyav(media, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("decord cannot read this")

    monkeypatch.setattr(decoding, "_decode_video_decord", broken)
    monkeypatch.setattr(decoding, "_HAS_DECORD", True)
    x = decode_video(media[".avi@25"], 0.5, 1.0, backend="auto")
    assert _ids(x) == _expected_ids(0.5, 1.0, 25, 25)
    with pytest.raises(DecodeError, match="decord cannot read"):
        decode_video(media[".avi@25"], 0.5, 1.0, backend="decord")


@pytest.mark.skipif(platform.machine() != "x86_64",
                    reason="decord is a dependency on x86_64 only (no wheels elsewhere)")
def test_rewritten_file_is_not_served_from_a_stale_reader(tmp_path):
    path = tmp_path / "v.mp4"
    write_av(path, _video(), 25)
    assert _ids(decode_video(path, 0, 0.08, backend="decord")) == [0, 1]
    time.sleep(0.01)  # distinct mtime
    write_av(path, _video()[10:], 25)
    assert _ids(decode_video(path, 0, 0.08, backend="decord")) == [10, 11]


# ------------------------------------------------------------------------------------ audio


@pytest.mark.parametrize("key", [".mp4@25", ".avi@29.97"])
@pytest.mark.parametrize("sr", [16000, SR])
def test_decode_audio_click_lands_on_time(media, key, sr):
    start, end = 0.3123, 1.4567
    a = decode_audio(media[key], start, end, sample_rate=sr, mono=False)
    assert a.dtype == torch.float32 and a.shape == (2, round((end - start) * sr))
    for ch, t in ((0, CLICK0_S), (1, CLICK1_S)):
        assert abs(int(a[ch].abs().argmax()) - (t - start) * sr) <= 3
    assert float(a.abs().max()) <= 1.0


def test_decode_audio_mono_averages_channels(media):
    stereo = decode_audio(media[".mp4@25"], 0.4, 0.6, mono=False)
    mono = decode_audio(media[".mp4@25"], 0.4, 0.6, mono=True)
    assert mono.shape == (1, 3200)
    torch.testing.assert_close(mono[0], stereo.mean(dim=0), atol=1e-5, rtol=0)


def test_decode_audio_pads_with_zeros_outside_the_file(media):
    a = decode_audio(media[".avi@25"], -0.5, 0.6, sample_rate=16000)
    assert a.shape == (1, 17600)
    assert float(a[:, :7900].abs().max()) == 0.0  # before 0 and before the click: silence
    assert abs(int(a.abs().argmax()) - 16000) <= 3
    tail = decode_audio(media[".avi@25"], 1.9, 3.0, sample_rate=16000)
    assert tail.shape == (1, 17600) and float(tail[:, 3200:].abs().max()) == 0.0


def test_missing_audio_raises_or_gives_silence(media):
    with pytest.raises(NoAudioError, match="silent.mp4"):
        decode_audio(media["silent"], 0, 1)
    z = decode_audio(media["silent"], 0, 1, sample_rate=8000, if_missing="silence")
    assert z.shape == (1, 8000) and float(z.abs().max()) == 0.0


# ------------------------------------------------------------------------------------ bad files


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory, media) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad")
    files = {"zero": str(root / "zero.mp4"), "missing": str(root / "missing.mp4"),
             "text": str(root / "notes.mp4")}
    open(files["zero"], "wb").close()
    with open(files["text"], "w") as f:
        f.write("not a video\n" * 100)
    for ext in (".mp4", ".avi"):
        data = open(media[f"{ext}@25"], "rb").read()
        files[f"cut{ext}"] = p = str(root / f"cut{ext}")
        with open(p, "wb") as f:
            f.write(data[: int(0.6 * len(data))])
    return files


@pytest.mark.parametrize("kind", ["zero", "missing", "text", "cut.mp4", "cut.avi"])
def test_probe_rejects_bad_files_naming_them(bad_files, kind):
    with pytest.raises(DecodeError) as err:
        probe(bad_files[kind])
    assert err.value.path == bad_files[kind] and bad_files[kind] in str(err.value)
    assert "\n" not in str(err.value)
    if kind == "missing":
        assert "no such file" in str(err.value)


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_decode_truncated_mp4_raises_decode_error(bad_files, backend):
    with pytest.raises(DecodeError, match="cut.mp4"):
        decode_video(bad_files["cut.mp4"], 0, 1, backend=backend)
    with pytest.raises(DecodeError, match="cut.mp4"):
        decode_audio(bad_files["cut.mp4"], 0, 1)


# ------------------------------------------------------------------------------------ watchdog


def _slow(*args, **kwargs):
    time.sleep(3)
    raise AssertionError("the watchdog should have stopped this")


def test_watchdog_times_out_in_main_thread_and_restores_handler(media, monkeypatch):
    monkeypatch.setattr(decoding, "_probe", _slow)
    sentinel = lambda signum, frame: None  # noqa: E731
    old = signal.signal(signal.SIGALRM, sentinel)
    try:
        t0 = time.monotonic()
        with pytest.raises(DecodeTimeout, match="time limit"):
            probe(media[".mp4@25"], timeout_s=0.2)
        assert time.monotonic() - t0 < 1.5
        assert signal.getsignal(signal.SIGALRM) is sentinel
        assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    finally:
        signal.signal(signal.SIGALRM, old)


def test_watchdog_times_out_off_the_main_thread(media, monkeypatch):
    monkeypatch.setattr(decoding, "_decode_audio", _slow)
    result: dict[str, BaseException | float] = {}

    def worker():
        t0 = time.monotonic()
        try:
            decode_audio(media[".mp4@25"], 0, 1, timeout_s=0.2)
        except BaseException as e:  # handed to the main thread's asserts
            result["error"] = e
        result["elapsed"] = time.monotonic() - t0

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(5)
    assert isinstance(result.get("error"), DecodeTimeout)
    assert result["elapsed"] < 1.5


def test_fast_calls_pass_through_the_watchdog_from_a_thread(media):
    out: list[torch.Tensor] = []
    thread = threading.Thread(target=lambda: out.append(
        decode_video(media[".mp4@25"], 0.5, 0.62, backend="pyav", timeout_s=10)))
    thread.start()
    thread.join(10)
    assert len(out) == 1 and _ids(out[0]) == [12, 13, 14]


def test_audio_frames_whose_layout_changes_mid_stream_fill_every_channel():
    """Broadcast recordings switch 5.1 <-> stereo mid-stream: a stereo frame in a stream declared
    5.1 raised a broadcast error (2 rows into 6); now each channel gets the frame's mean."""
    from fractions import Fraction

    import av

    from avssl.data.decoding import _fill_audio

    def frame(values, layout, pts):
        f = av.AudioFrame.from_ndarray(np.asarray(values, np.float32), format="fltp",
                                       layout=layout)
        f.sample_rate, f.pts, f.time_base = 100, pts, Fraction(1, 100)
        return f

    six = np.arange(6, dtype=np.float32)[:, None].repeat(10, 1) / 10  # channel c holds c / 10
    frames = [frame(six, "5.1", 0), frame([[0.2] * 10, [0.6] * 10], "stereo", 10),
              frame([[0.3] * 10], "mono", 20)]

    class Container:
        def decode(self, stream):
            return iter(frames)

    class Stream:
        time_base = Fraction(1, 100)

    buf = np.zeros((6, 30), np.float32)
    _fill_audio(Container(), Stream(), buf, 0, 100, 0.0)
    np.testing.assert_allclose(buf[:, :10], six)  # the declared layout: channel by channel
    np.testing.assert_allclose(buf[:, 10:20], 0.4)  # stereo: its mix in all six
    np.testing.assert_allclose(buf[:, 20:], 0.3)


@pytest.fixture
def reset_threads():
    yield
    decoding.set_decoder_threads(None)


def test_decoder_threads_reach_pyav_and_keep_the_frames(media, monkeypatch, reset_threads):
    """set_decoder_threads sets the thread count of every PyAV stream opened afterwards (video
    and audio); the decoded frames and samples do not depend on it. None keeps FFmpeg's own
    automatic count, as before the setting existed."""
    seen = []
    real = decoding._threaded

    def spy(stream):
        real(stream)
        seen.append((stream.type, stream.codec_context.thread_count))

    monkeypatch.setattr(decoding, "_threaded", spy)
    results = {}
    for n in (None, 1, 2):
        decoding.set_decoder_threads(n)
        seen.clear()
        results[n] = (decode_video(media[".mp4@25"], 0.3, 1.1, fps=10, backend="pyav"),
                      decode_audio(media[".mp4@25"], 0.3, 1.1, sample_rate=16000))
        assert [kind for kind, _ in seen] == ["video", "audio"]
        assert all(count == (n or 0) for _, count in seen), (n, seen)  # 0: FFmpeg decides
    for n in (1, 2):
        assert torch.equal(results[n][0], results[None][0])
        assert torch.equal(results[n][1], results[None][1])
    assert decoding.decoder_threads() == 2


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_decoder_threads_refuse_bad_values(bad):
    with pytest.raises(ValueError, match="set_decoder_threads: need an int >= 0 or None"):
        decoding.set_decoder_threads(bad)
