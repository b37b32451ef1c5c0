"""Reading and writing audio-visual media files: the ONLY module that imports codec libraries.

Everything above this layer speaks tensors and seconds:

- :func:`probe` -> :class:`MediaInfo` (duration, fps, frames, size, audio), and proves the file
  decodes at its start and near its end (so a truncated file is caught here, not mid-epoch);
- :func:`decode_video` -> uint8 ``(T, 3, H, W)`` for a window ``[start_s, end_s)`` at any fps;
- :func:`decode_audio` -> float32 ``(C, S)`` for the same window at any sample rate;
- :func:`write_av` writes a video (and optional audio) file; the synthetic world uses it.

Times are presentation timestamps in seconds, so audio time 0 is video time 0 (encoder priming
delays are undone by the containers' timestamps / edit lists). Every failure of a codec library
becomes :class:`~avssl.errors.DecodeError` naming the file, and every public read runs under a
per-file time limit (:class:`~avssl.errors.DecodeTimeout`).

Decoders are opened lazily in the calling process; nothing here holds an open reader inside an
object that could be pickled into a DataLoader worker. How many threads each decoder may use is a
per-process setting (:func:`set_decoder_threads`): DataLoader workers get theirs from
``avssl.speed.worker_init``, under fork and spawn alike.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
import signal
import threading
import uuid
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, TypeVar

import av
import numpy as np
import torch
import torch.nn.functional as F

from avssl.errors import AvsslError, DecodeError, DecodeTimeout, NoAudioError

try:  # decord is optional: fast random access where it installs, PyAV everywhere
    import decord

    _HAS_DECORD = True
except Exception:  # pragma: no cover - depends on the platform
    decord = None
    _HAS_DECORD = False

R = TypeVar("R")

_PTS_TOL_S = 1e-3  # a frame whose pts is within 1 ms after t still counts as shown at t
_BACKENDS = ("auto", "decord", "pyav")
_threads: int | None = None  # set_decoder_threads; None: each codec's default


def set_decoder_threads(n: int | None) -> None:
    """Threads per PyAV decoder opened from now on in THIS process (video and audio streams):
    ``n >= 1`` exactly n, ``0`` FFmpeg's automatic count (cores + 1 on 2 cores), ``None`` the
    default (the automatic count). decord readers always use 1 (see
    :func:`_decode_video_decord`). A DataLoader worker is its own process: see
    ``avssl.speed.worker_init``; ``avssl.speed.pick`` says what to use and why."""
    global _threads
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"set_decoder_threads: need an int >= 0 or None, got {n!r}")
    _threads = n


def decoder_threads() -> int | None:
    """This process's :func:`set_decoder_threads` value (None: never set)."""
    return _threads


def _threaded(stream: av.VideoStream | av.AudioStream) -> None:
    """Let ``stream``'s decoder use this process's thread setting (before its first decode)."""
    stream.thread_type = "AUTO"
    if _threads:  # 0 / None: FFmpeg's automatic count
        stream.codec_context.thread_count = _threads


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` learns about one media file."""

    path: str
    duration_s: float  # duration of the video stream (container duration as fallback)
    fps: float  # average frame rate of the video stream
    num_frames: int
    width: int
    height: int
    has_audio: bool
    sample_rate: int | None  # native audio rate; None without audio
    audio_channels: int  # 0 without audio
    start_s: float = 0.0  # first video timestamp on the file's clock (windows start here)
    audio_end_s: float | None = None  # where the audio stream ends on that clock; None: unknown


# --------------------------------------------------------------------------- watchdog + errors


def _run_with_timeout(fn: Callable[[], R], timeout_s: float, path: str) -> R:
    """Run ``fn()``; raise :class:`DecodeTimeout` if it takes longer than ``timeout_s``.

    In a process's main thread a SIGALRM timer interrupts the work (PyAV and decord return to
    Python between frames, where the handler runs). Elsewhere, signals cannot be used, so the
    work runs in a daemon thread that is abandoned on timeout (it cannot be killed, but it no
    longer blocks the caller).
    """
    if timeout_s is None or timeout_s <= 0 or math.isinf(timeout_s):
        return fn()
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _run_with_alarm(fn, timeout_s, path)
    return _run_in_thread(fn, timeout_s, path)


class _Alarm(BaseException):
    """Raised by our SIGALRM handler; a BaseException so codec code's ``except Exception``
    blocks cannot swallow it."""


def _run_with_alarm(fn: Callable[[], R], timeout_s: float, path: str) -> R:
    def on_alarm(signum: int, frame: Any) -> None:
        raise _Alarm()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    prev_delay, _ = signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        try:
            return fn()
        finally:  # inside the outer try: an alarm firing right here is still caught below
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Alarm:
        raise DecodeTimeout(path, f"took longer than the {timeout_s:g} s time limit") from None
    finally:
        signal.signal(signal.SIGALRM, previous)
        if prev_delay > 0:  # someone else's timer was running: give it back (approximately)
            signal.setitimer(signal.ITIMER_REAL, prev_delay)


def _run_in_thread(fn: Callable[[], R], timeout_s: float, path: str) -> R:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    worker = threading.Thread(target=target, name=f"avssl-decode:{os.path.basename(path)}",
                              daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise DecodeTimeout(path, f"took longer than the {timeout_s:g} s time limit")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _guarded(path: str, timeout_s: float, fn: Callable[[], R]) -> R:
    """Check the file exists, run ``fn`` under the watchdog, turn codec errors into DecodeError."""
    if not os.path.exists(path):
        raise DecodeError(path, "no such file")
    if os.path.isdir(path):
        raise DecodeError(path, "is a directory, expected a media file")
    if os.path.getsize(path) == 0:
        raise DecodeError(path, "file is empty (0 bytes)")

    def work() -> R:
        try:
            return fn()
        except (AvsslError, _Alarm, KeyboardInterrupt, MemoryError):
            raise
        except av.error.FFmpegError as e:  # its str() repeats the path; keep the reason only
            raise DecodeError(path, f"{e.strerror or type(e).__name__} ({type(e).__name__})") from e
        except Exception as e:  # decord.DECORDError, OSError, ...
            raise DecodeError(path, f"{type(e).__name__}: {e}") from e

    return _run_with_timeout(work, timeout_s, path)


# --------------------------------------------------------------------------- probe


def probe(path: str | os.PathLike, *, timeout_s: float = 30.0) -> MediaInfo:
    """Describe a media file and check that it decodes at its start and near its end.

    Raises :class:`DecodeError` for a missing, empty, truncated or non-video file.
    """
    p = os.fspath(path)
    return _guarded(p, timeout_s, lambda: _probe(p))


def _probe(path: str) -> MediaInfo:
    with av.open(path) as container:
        if not container.streams.video:
            raise DecodeError(path, "no video stream")
        vs = container.streams.video[0]
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        if not rate:
            raise DecodeError(path, "video stream has no frame rate")
        fps = float(rate)
        from_container = False
        tagged = _tag_seconds(vs.metadata.get("DURATION"))  # Matroska / WebM per-stream end
        if vs.duration is not None and vs.time_base is not None:
            duration = float(vs.duration * vs.time_base)
        elif tagged is not None:
            duration = _tag_length(tagged, _stream_start_s(vs))
        elif container.duration is not None:
            # the longest stream's length: audio often outlasts the video by a few frames
            duration, from_container = container.duration / av.time_base, True
        else:
            duration = 0.0
        num_frames = int(vs.frames) if vs.frames else int(round(duration * fps))
        if duration <= 0 and num_frames > 0:
            duration = num_frames / fps

        has_audio = bool(container.streams.audio)
        sample_rate = channels = audio_end = None
        if has_audio:
            audio_end = _audio_end_s(container.streams.audio[0])
            acc = container.streams.audio[0].codec_context
            sample_rate = int(acc.sample_rate) or None
            channels = int(acc.layout.nb_channels) if acc.layout is not None else int(acc.channels)

        width, height = int(vs.codec_context.width), int(vs.codec_context.height)
        first = _first_frame_time(container, vs)
        if first is None:
            raise DecodeError(path, "no decodable video frame")
        origin = _stream_start_s(vs)
        if duration <= 0:
            # A streamed Matroska/WebM (browser MediaRecorder, `ffmpeg -f webm pipe:`) records no
            # length anywhere: measured as 0 s, every clip window was the file's first seconds.
            ends = _packet_ends(container, vs, 1.0 / fps)
            duration = max(0.0, ends.get(vs.index, origin) - origin)
            num_frames = int(round(duration * fps))
            if has_audio and audio_end is None:
                audio_end = ends.get(container.streams.audio[0].index)
        if not width or not height:
            raise DecodeError(path, "video stream has no frame size")
        # Prove the end decodes: a truncated file often keeps a header claiming the full length
        # (AVI: the frame count in its header; the duration is then re-estimated from packets).
        claimed = max(duration, (vs.frames or 0) / fps)
        last = _last_frame_time(container, vs, origin + claimed)
        if from_container and last is not None:  # the container's length is not the video's
            duration = claimed = min(claimed, last - origin + 1.0 / fps)
            num_frames = int(vs.frames) if vs.frames else int(round(duration * fps))
        if last is None or last - origin < claimed - 3.0 / fps - 0.05:
            got = "none" if last is None else f"the last at {last:.2f} s"
            raise DecodeError(path, f"truncated: the header claims {claimed:.2f} s of video but "
                                    f"frames near the end do not decode ({got})")
    return MediaInfo(path=path, duration_s=duration, fps=fps, num_frames=num_frames,
                     width=width, height=height, has_audio=has_audio,
                     sample_rate=sample_rate if has_audio else None,
                     audio_channels=int(channels or 0) if has_audio else 0, start_s=origin,
                     audio_end_s=audio_end)


def _audio_end_s(ast: av.AudioStream) -> float | None:
    """End of the audio stream on the file's clock, from its own length (or, in Matroska, its
    DURATION tag); None when the container does not say."""
    start = float(ast.start_time * ast.time_base) if ast.start_time is not None else 0.0
    if ast.duration is not None and ast.time_base is not None:
        return start + float(ast.duration * ast.time_base)
    tagged = _tag_seconds(ast.metadata.get("DURATION"))
    return None if tagged is None else start + _tag_length(tagged, start)


def _tag_length(tag_s: float, start_s: float) -> float:
    """A Matroska track's length from its DURATION tag and first timestamp. ffmpeg's muxer (which
    yt-dlp also uses) tags the track's END on the file's clock, which is its length
    only when it starts at 0: a 3 s cut made with ``-copyts -ss 10`` is tagged 00:00:13, and was
    probed as 13 s long, so as truncated. A tag not past the start can only be a length."""
    return tag_s - start_s if tag_s > start_s else tag_s


def _packet_ends(container: av.container.InputContainer, vs: av.VideoStream,
                 frame_s: float) -> dict[int, float]:
    """Stream index -> end of its last packet (pts + duration) in seconds on the file's clock,
    read from the packets (not decoded) from the current position on; a video packet without a
    duration lasts ``frame_s``. For files whose headers record no length."""
    ends: dict[int, float] = {}
    for packet in container.demux():
        if packet.pts is None or packet.time_base is None:
            continue
        length = float((packet.duration or 0) * packet.time_base)
        if packet.stream.index == vs.index and length <= 0:
            length = frame_s
        end = float(packet.pts * packet.time_base) + length
        ends[packet.stream.index] = max(ends.get(packet.stream.index, end), end)
    return ends


def _tag_seconds(tag: str | None) -> float | None:
    """'00:00:04.000000000' (a Matroska DURATION tag) -> 4.0; None when absent or unreadable."""
    try:
        h, m, sec = str(tag).strip().split(":")
        value = int(h) * 3600 + int(m) * 60 + float(sec)
    except (ValueError, AttributeError):
        return None
    return value if value > 0 else None


def _stream_start_s(vs: av.VideoStream | None) -> float:
    """The video stream's first timestamp in seconds (0 when unset or without video): the
    origin of every window, as players and annotations count time from the first frame."""
    if vs is None or vs.start_time is None or vs.time_base is None:
        return 0.0
    return float(vs.start_time * vs.time_base)


def _frame_time(frame: av.VideoFrame) -> float | None:
    return None if frame.pts is None else float(frame.pts * frame.time_base)


def _first_frame_time(container: av.container.InputContainer, vs: av.VideoStream) -> float | None:
    for frame in container.decode(vs):
        t = _frame_time(frame)
        return 0.0 if t is None else t
    return None


def _last_frame_time(container: av.container.InputContainer, vs: av.VideoStream,
                     duration: float) -> float | None:
    """Time of the last frame that decodes, after seeking ~1 s before the claimed end."""
    target = max(0.0, duration - 1.0)
    container.seek(int(target / vs.time_base), stream=vs, backward=True, any_frame=False)
    last = None
    try:
        for frame in container.decode(vs):
            t = _frame_time(frame)
            if t is not None:
                last = t if last is None else max(last, t)
    except av.error.FFmpegError:
        pass  # a broken tail shows up as a too-early ``last``
    return last


# --------------------------------------------------------------------------- video


def decode_video(path: str | os.PathLike, start_s: float, end_s: float, *,
                 fps: float | None = None, size: int | tuple[int, int] | None = None,
                 backend: str = "auto", timeout_s: float = 30.0) -> torch.Tensor:
    """Frames of the window ``[start_s, end_s)`` as uint8 ``(T, 3, H, W)``.

    ``T = round((end_s - start_s) * fps)`` (``fps=None``: the file's native rate); frame k is
    the one on screen at ``t_k = start_s + k / fps`` (last frame with pts <= t_k + 1 ms). Times
    before the first frame give the first frame, times after the last give the last.
    ``size``: None keeps the native size, an int resizes the short side, ``(H, W)`` resizes
    exactly (bilinear, antialiased). ``backend``: "auto" (decord if it can, else PyAV),
    "decord" or "pyav".
    """
    p = os.fspath(path)
    if backend not in _BACKENDS:
        raise ValueError(f"decode_video: backend must be one of {_BACKENDS}, got {backend!r}")
    if not end_s > start_s:
        raise ValueError(f"decode_video: need end_s > start_s, got [{start_s}, {end_s})")
    if fps is not None and not fps > 0:
        raise ValueError(f"decode_video: fps must be positive or None, got {fps}")

    def work() -> torch.Tensor:
        use_decord = backend == "decord" or (backend == "auto" and _HAS_DECORD)
        if backend == "decord" and not _HAS_DECORD:
            raise DecodeError(p, "backend 'decord' requested but decord is not installed; "
                                 "use backend='pyav' or 'auto'")
        frames = None
        if use_decord:
            try:
                frames = _decode_video_decord(p, start_s, end_s, fps)
            except (_Alarm, KeyboardInterrupt):
                raise
            except Exception:
                if backend == "decord":
                    raise  # decord cannot read this file: "auto" falls back to PyAV below
        if frames is None:
            frames = _decode_video_pyav(p, start_s, end_s, fps)
        return _resize(torch.from_numpy(frames).permute(0, 3, 1, 2), size)

    return _guarded(p, timeout_s, work)


def num_samples(start_s: float, end_s: float, rate: float) -> int:
    """Frames or audio samples in the window: ``round((end_s - start_s) * rate)``, with the
    window's length first rounded to a nanosecond. ``end_s - start_s`` carries float error
    (0.5000000000000004 for a 0.5 s clip at some starts), which flipped x.5 counts, so clips
    of one length came out 12 or 13 frames long and would not batch together."""
    return max(0, int(round(round(end_s - start_s, 9) * rate)))


def _sample_times(start_s: float, end_s: float, fps: float) -> np.ndarray:
    return start_s + np.arange(num_samples(start_s, end_s, fps), dtype=np.float64) / fps


@functools.lru_cache(maxsize=4096)
def _video_start_s(path: str, mtime_ns: int, size: int) -> float:
    """The video stream's start time in seconds (PyAV; 0 when unset). decord numbers its
    timestamps from it, while PyAV and the audio use the file's clock: an H.264 .mp4 without an
    edit list starts its video at 0.08 s, and decord's frames were that much early. Cached per
    file version (``mtime_ns``, ``size``)."""
    with av.open(path) as container:
        vs = container.streams.video[0]
        if vs.start_time is None or vs.time_base is None:
            return 0.0
        return float(vs.start_time * vs.time_base)


def _pick(pts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the last frame whose pts <= t (+ tolerance) for each t; clamped to the file."""
    idx = np.searchsorted(pts, times + _PTS_TOL_S, side="right") - 1
    return np.clip(idx, 0, len(pts) - 1)


def _decode_video_decord(path: str, start_s: float, end_s: float,
                         fps: float | None) -> np.ndarray:
    """Open a decord reader, fetch the window's frames, drop the reader.

    Readers are deliberately not cached: an open reader keeps decoding ahead in background
    threads (caching 4 cost 70-90 ms of CPU per random clip against ~24 ms for open + read +
    close, benchmarks/README.md), and a reader inherited by a forked DataLoader worker deadlocks
    in its destructor there. One thread whatever :func:`set_decoder_threads` says: decord's
    automatic count measured no faster without workers (33 vs 31 clips/s at 320x240 on 2 cores)
    and 21% slower with 2 workers (43 vs 54 clips/s, benchmarks/README.md section 1).
    """
    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    if len(reader) == 0:
        raise DecodeError(path, "no video frames")
    # decord gives float32 seconds from the stream's start: put them on the file's clock and
    # round to microseconds (1.001 s in float32 is 1.0010000467, past the 1 ms tolerance tie)
    st = os.stat(path)
    pts = np.round(reader.get_frame_timestamp(np.arange(len(reader)))[:, 0].astype(np.float64)
                   + _video_start_s(path, st.st_mtime_ns, st.st_size), 6)
    times = _sample_times(start_s, end_s, fps or float(reader.get_avg_fps()))
    idx = _pick(pts, times)
    uniq, inverse = np.unique(idx, return_inverse=True)  # fetch each frame once
    if len(uniq) == 0:
        h, w = reader[0].shape[:2]
        return np.zeros((0, h, w, 3), np.uint8)
    return reader.get_batch(uniq.tolist()).asnumpy()[inverse]


def _decode_video_pyav(path: str, start_s: float, end_s: float,
                       fps: float | None) -> np.ndarray:
    """Seek to the keyframe before ``start_s`` and decode forward, keeping the frame on screen
    at each sample time; memory holds only the output plus one frame."""
    with av.open(path) as container:
        if not container.streams.video:
            raise DecodeError(path, "no video stream")
        vs = container.streams.video[0]
        _threaded(vs)
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        times = _sample_times(start_s, end_s, fps or float(rate))
        h, w = vs.codec_context.height, vs.codec_context.width
        out = np.zeros((len(times), h, w, 3), np.uint8)
        if len(times) == 0:
            return out
        frames = _seek_frames(container, vs, start_s, times[0])
        k, prev, prev_rgb = 0, None, None
        for n, frame in enumerate(frames):
            t = _frame_time(frame)
            t = n / float(rate) if t is None else t
            while k < len(times) and times[k] + _PTS_TOL_S < t:
                # t_k precedes this frame: the previous one is on screen (or, before the very
                # first frame, this one stands in)
                if prev_rgb is None:
                    prev_rgb = (prev or frame).to_ndarray(format="rgb24")
                out[k] = prev_rgb
                k += 1
            if k == len(times):
                if prev is None:  # the window lies wholly before the first frame
                    prev = frame
                break
            prev, prev_rgb = frame, None
        if prev is None:
            raise DecodeError(path, f"no video frame decodes at or after {start_s:.3f} s")
        if k < len(times):  # past the last frame: hold it
            out[k:] = prev_rgb if prev_rgb is not None else prev.to_ndarray(format="rgb24")
    return out


def _seek_frames(container, vs, start_s: float, first_t: float):
    """Decoded frames of ``vs`` from the keyframe on screen at or before ``first_t``.

    Seeking goes by decode order: in an mp4 with B-frames and no edit list a keyframe is
    decoded ~2 frames before it is shown, so a window starting in that gap landed on it and its
    first frames were the keyframe instead of the frames on screen (decord was right). When the
    first frame after a seek is shown later than ``first_t``, seek earlier (0.5, 1, 2 ... s)
    and decode forward from there."""
    back = 0.0
    while True:
        target = start_s - back
        if target > 0:
            container.seek(int(target / vs.time_base), stream=vs, backward=True, any_frame=False)
        elif back > 0:  # back to the file's first frame
            container.seek(vs.start_time or 0, stream=vs, backward=True, any_frame=False)
        frames = container.decode(vs)
        first = next(frames, None)
        t = None if first is None else _frame_time(first)
        if target <= 0 or t is None or t <= first_t + _PTS_TOL_S:
            return frames if first is None else itertools.chain([first], frames)
        back = 0.5 if back == 0 else 2 * back


def _resize(video: torch.Tensor, size: int | tuple[int, int] | None) -> torch.Tensor:
    """uint8 ``(T, 3, H, W)`` -> uint8 ``(T, 3, H', W')``; int = short side, tuple = exact."""
    if size is None or video.shape[0] == 0:
        return video.contiguous()
    h, w = video.shape[-2:]
    if isinstance(size, int):
        scale = size / min(h, w)
        new = (size, max(1, round(w * scale))) if h <= w else (max(1, round(h * scale)), size)
    else:
        new = (int(size[0]), int(size[1]))
    if new == (h, w):
        return video.contiguous()
    x = F.interpolate(video.float(), size=new, mode="bilinear", align_corners=False,
                      antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- audio


def decode_audio(path: str | os.PathLike, start_s: float, end_s: float, *,
                 sample_rate: int = 16000, mono: bool = True, if_missing: str = "error",
                 timeout_s: float = 30.0) -> torch.Tensor:
    """Audio of the window ``[start_s, end_s)`` as float32 ``(C, S)`` in [-1, 1].

    ``S = round((end_s - start_s) * sample_rate)`` exactly; sample j is the audio at
    ``start_s + j / sample_rate`` (zeros before 0 and past the end). ``mono`` averages the
    channels to ``(1, S)``. Without an audio stream: ``if_missing="error"`` raises
    :class:`NoAudioError`, ``"silence"`` returns zeros ``(1, S)``.
    """
    p = os.fspath(path)
    if if_missing not in ("error", "silence"):
        raise ValueError(f"decode_audio: if_missing must be 'error' or 'silence', got "
                         f"{if_missing!r}")
    if not end_s > start_s:
        raise ValueError(f"decode_audio: need end_s > start_s, got [{start_s}, {end_s})")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"decode_audio: sample_rate must be a positive int, got {sample_rate}")
    return _guarded(p, timeout_s,
                    lambda: _decode_audio(p, start_s, end_s, int(sample_rate), mono, if_missing))


_RESAMPLE_PAD_S = 0.05  # context decoded on each side so the resampling filter has no edges


def _decode_audio(path: str, start_s: float, end_s: float, sr: int, mono: bool,
                  if_missing: str) -> torch.Tensor:
    n_out = num_samples(start_s, end_s, sr)
    with av.open(path) as container:
        if not container.streams.audio:
            if if_missing == "silence":
                return torch.zeros(1, n_out)
            raise NoAudioError(path, "no audio stream; pass if_missing='silence' to get zeros")
        ast = container.streams.audio[0]
        _threaded(ast)
        native = int(ast.codec_context.sample_rate)
        channels = max(1, int(ast.codec_context.layout.nb_channels))  # 0: layout undeclared
        pad = _RESAMPLE_PAD_S if native != sr else 0.0
        # Native-rate buffer [a0, a0 + n_in) starting on a time both rates share (multiples of
        # 1/gcd), so the resampled buffer's samples fall exactly on the output grid.
        g = math.gcd(native, sr)
        t0 = math.floor((start_s - pad) * g) / g
        a0 = round(t0 * native)
        n_in = int(math.ceil((end_s + pad - t0) * native)) + 1
        buf = np.zeros((channels, n_in), np.float32)
        if end_s > 0:
            # pre-roll: AAC/MP3 frames depend on the previous frame (overlap, bit reservoir)
            _fill_audio(container, ast, buf, a0, native, max(0.0, t0 - 0.2))
    x = torch.from_numpy(buf)
    if mono:
        x = x.mean(dim=0, keepdim=True)
    if native != sr:
        import torchaudio.functional as AF  # lazy: only needed when rates differ

        x = AF.resample(x, native, sr)
    j0 = int(round((start_s - t0) * sr))
    out = x[:, j0:j0 + n_out]
    if out.shape[1] < n_out:  # resampler rounding at the very end
        out = F.pad(out, (0, n_out - out.shape[1]))
    return out.clamp_(-1.0, 1.0).contiguous()


def _fill_audio(container: av.container.InputContainer, ast: av.AudioStream, buf: np.ndarray,
                a0: int, native: int, seek_s: float) -> None:
    """Decode frames overlapping native samples ``[a0, a0 + len)`` into ``buf`` by their pts."""
    n_in = buf.shape[1]
    if seek_s > 0:
        container.seek(int(seek_s / ast.time_base), stream=ast, backward=True, any_frame=False)
    pos = None  # running sample index: frames are contiguous unless their pts really jumps
    # A coarse time base (Matroska/WebM: 1 ms) rounds each frame's pts; placing every frame at
    # its rounded pts dropped or zero-filled up to half a tick of samples at each frame boundary.
    slack = int(math.ceil(float(ast.time_base) * native)) + 1 if ast.time_base else 1
    for frame in container.decode(ast):
        if frame.pts is not None:
            at = int(round(float(frame.pts * frame.time_base) * native))
            if pos is None or abs(at - pos) > slack:
                pos = at
        elif pos is None:
            pos = 0
        data = _frame_samples(frame)
        lo, hi = pos - a0, pos - a0 + data.shape[1]
        pos += data.shape[1]
        if hi <= 0:
            continue
        if lo >= n_in:
            break
        s0, s1 = max(lo, 0), min(hi, n_in)
        if data.shape[0] != buf.shape[0]:  # layout changed mid-stream (broadcast TS: 5.1 <->
            data = data.mean(axis=0, keepdims=True)  # stereo): every channel gets the frame's mix
        buf[:, s0:s1] = data[:, s0 - lo:s1 - lo]


def _frame_samples(frame: av.AudioFrame) -> np.ndarray:
    """float32 ``(C, n)`` in [-1, 1] from any sample format (planar or packed, int or float)."""
    x = frame.to_ndarray()
    c = frame.layout.nb_channels
    if not frame.format.is_planar:  # packed: (1, n * C) interleaved
        x = x.reshape(-1, c).T
    if np.issubdtype(x.dtype, np.integer):
        if x.dtype == np.uint8:
            x = (x.astype(np.float32) - 128.0) / 128.0
        else:
            x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
    return x.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- write


def _as_fraction(fps: float) -> Fraction:
    """29.97 -> 30000/1001 (the NTSC rates), 25.0 -> 25, other rates to within 1e-6."""
    for ntsc in (24000, 30000, 48000, 60000, 120000):
        if abs(fps - ntsc / 1001) < 5e-3:
            return Fraction(ntsc, 1001)
    return Fraction(fps).limit_denominator(1001)


def _video_encoder(path: str, ext: str, override: str | None) -> str:
    if override:
        return override
    if ext == ".avi":
        return "mpeg4"
    for name in ("libx264", "h264", "libopenh264"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise DecodeError(path, "this PyAV build has no H.264 encoder; write .avi (mpeg4) "
                            "instead or install a PyAV build with libx264")


def write_av(path: str | os.PathLike, video: torch.Tensor | np.ndarray, fps: float,
             audio: torch.Tensor | np.ndarray | None = None, sample_rate: int = 16000, *,
             video_codec: str | None = None, audio_codec: str | None = None,
             crf_or_quality: int | None = None) -> None:
    """Write ``video`` (uint8 ``(T, 3, H, W)``) and optional ``audio`` (float ``(C, S)``) to
    ``path``; the container follows the extension (``.mp4``: H.264 + AAC, ``.avi``: MPEG-4 +
    MP3). ``audio=None`` writes a file without an audio stream. ``crf_or_quality`` is x264's CRF
    (default 18) or MPEG-4's qscale (default 2). Written atomically via a temp file.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in _FORMATS:
        raise ValueError(f"write_av: unsupported extension {ext!r} in {path}; use .mp4 or .avi")
    frames = video.detach().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"write_av: video must be (T, 3, H, W), got shape {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise ValueError(f"write_av: video must be uint8, got {frames.dtype}")
    t, _, h, w = frames.shape
    if t == 0:
        raise ValueError("write_av: video has no frames")
    if h % 2 or w % 2:
        raise ValueError(f"write_av: H and W must be even for yuv420p, got {h}x{w}")
    samples = None
    if audio is not None:
        samples = (audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor)
                   else np.asarray(audio))
        if samples.ndim == 1:
            samples = samples[None]
        if samples.ndim != 2 or samples.shape[0] not in (1, 2):
            raise ValueError(f"write_av: audio must be (C, S) with C in (1, 2), got "
                             f"{tuple(samples.shape)}")
        samples = np.ascontiguousarray(np.clip(samples, -1.0, 1.0), dtype=np.float32)

    vcodec = _video_encoder(path, ext, video_codec)
    acodec = audio_codec or ("libmp3lame" if ext == ".avi" else "aac")
    rate = _as_fraction(float(fps))
    fmt = _FORMATS[ext]
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp{ext}")
    try:
        with av.open(tmp, mode="w", format=fmt) as container:
            vs = container.add_stream(vcodec, rate=rate)
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            vs.codec_context.gop_size = max(1, round(2 * float(rate)))  # cheap seeks: 2 s GOPs
            q = crf_or_quality
            if vcodec in ("libx264", "h264"):
                # rc-lookahead=0: x264's threaded lookahead makes output bytes vary run to run;
                # without it the same clip always encodes to the same file (and PSNR rises)
                vs.options = {"crf": str(18 if q is None else q), "preset": "veryfast",
                              "x264-params": "rc-lookahead=0"}
            elif vcodec == "mpeg4":
                # ffmpeg's "-q:v N": fixed quantiser N (lambda = N * FF_QP2LAMBDA)
                vs.codec_context.qscale = True
                vs.codec_context.global_quality = (2 if q is None else q) * 118
            audio_writer = None
            if samples is not None:
                audio_writer = _AudioWriter(container, acodec, samples, int(sample_rate),
                                            edit_lists=fmt != "avi")
            for k in range(t):
                frame = av.VideoFrame.from_ndarray(
                    np.ascontiguousarray(frames[k].transpose(1, 2, 0)), format="rgb24")
                frame.pts = k
                frame.time_base = 1 / rate
                for packet in vs.encode(frame):
                    container.mux(packet)
                if audio_writer is not None:  # interleave so the muxer need not buffer
                    audio_writer.write_until((k + 1) / rate)
            for packet in vs.encode(None):
                container.mux(packet)
            if audio_writer is not None:
                audio_writer.finish()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


_FORMATS = {".mp4": "mp4", ".mov": "mov", ".avi": "avi"}


@functools.lru_cache(maxsize=None)
def _encoder_delay(codec: str, sample_rate: int, layout: str) -> int:
    """Priming samples the audio encoder puts before the signal (AAC 1024, LAME 1105)."""
    ctx = av.codec.CodecContext.create(codec, "w")
    ctx.sample_rate, ctx.layout = sample_rate, layout
    ctx.format = ctx.codec.audio_formats[0].name
    n = ctx.frame_size or 1152
    frame = av.AudioFrame(format=ctx.format.name, layout=layout, samples=max(n, 1152))
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
    pts = [p.pts for p in ctx.encode(frame)] + [p.pts for p in ctx.encode(None)]
    pts = [p for p in pts if p is not None]
    return max(0, -min(pts)) if pts else 0


class _AudioWriter:
    """Encodes float32 ``(C, S)`` audio so that decoded sample n plays at time n / rate.

    Containers with edit lists (mp4) hide the encoder's priming delay themselves. AVI cannot,
    so there the input is advanced by the delay and starts at pts = delay: the decoder's first
    ``delay`` samples are then priming silence and every later sample lands at its true time
    (the first ~70 ms of audio are lost, which beats a constant AV offset).
    """

    def __init__(self, container: av.container.OutputContainer, codec: str,
                 samples: np.ndarray, sample_rate: int, *, edit_lists: bool):
        self.container, self.rate = container, sample_rate
        self.layout = "mono" if samples.shape[0] == 1 else "stereo"
        self.stream = container.add_stream(codec, rate=sample_rate)
        self.stream.layout = self.layout
        self.stream.bit_rate = 96000 * samples.shape[0]
        self.offset = 0 if edit_lists else _encoder_delay(codec, sample_rate, self.layout)
        self.samples = samples
        self.pos = self.offset  # next input sample to encode
        self.chunk = 4096

    def write_until(self, t: Fraction | float) -> None:
        stop = min(self.samples.shape[1], int(math.ceil(float(t) * self.rate)))
        while self.pos < stop:
            end = min(self.pos + self.chunk, self.samples.shape[1])
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(self.samples[:, self.pos:end]), format="fltp",
                layout=self.layout)
            frame.sample_rate, frame.time_base = self.rate, Fraction(1, self.rate)
            frame.pts = self.pos  # PyAV re-frames to the encoder's frame size and converts format
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.pos = end

    def finish(self) -> None:
        self.write_until(self.samples.shape[1] / self.rate)
        for packet in self.stream.encode(None):
            self.container.mux(packet)
