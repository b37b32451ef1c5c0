"""``VideoRecord`` and ``ClipDataset``: the one dataset class every loader builds from records.

A loader (UCF101, HMDB51, Kinetics, ...) only parses its index files into a list of
:class:`VideoRecord`; :class:`ClipDataset` does clip sampling, decoding, transforms and the failure
behaviour of DESIGN.md, so every source behaves the same way.

Sample dict (DESIGN.md contract) returned by ``ds[i]``:

- ``video`` (unless ``video=False``: audio-only items decode no frames): uint8 ``(T, C, H, W)``
  (or whatever ``video_transform`` returns); with ``fps=None``
  each video keeps its own frame rate, so ``T`` differs between videos of different rates and
  such items cannot be batched: pass ``fps`` to batch them;
- ``audio``: float32 ``(1, S)`` with ``S = round(clip_s * sample_rate)`` when ``audio=True``
  (silence when the file has no audio stream), plus ``has_audio`` (bool);
- ``fps`` (float), ``sample_rate`` (int), ``clip_start_s`` (float), ``video_id`` (str),
  ``index`` (the item index asked for), ``video_index`` (the record actually loaded: differs from
  the item in train mode when a bad file was substituted);
- ``label``: int, or a float32 multi-hot ``(num_classes,)`` for multi-label records; absent when
  unknown (e.g. Kinetics test);
- eval mode adds ``clip_index``;
- with ``audio_shift=(min_s, max_s)`` (sync pretraining): ``audio_shift`` float32 (1, S), the
  same video's audio shifted by |shift| in [min_s, max_s] s (inside the file), ``shift_s`` and
  ``hard_valid`` (False, with silence, when no such window fits or the file has no sound).

Modes:

- ``train``: one item per video, one random window per item drawn from
  ``np.random.default_rng([seed, epoch, index, attempt])`` (call :meth:`ClipDataset.set_epoch`),
  so samples are identical for a seed whatever the number of DataLoader workers.
- ``eval``: one item per (video, clip): ``len == num_videos * num_clips`` with uniform windows.

Transforms are callables ``transform(tensor, generator) -> tensor`` (see
:mod:`avssl.data.transforms`); a one-argument callable or an ``nn.Module`` is called without the
generator. The generator is a ``torch.Generator`` seeded from the item's rng, so random crops and
flips are reproducible too.

Failure behaviour (DESIGN.md): missing files are dropped at construction and reported
(``found N of M listed videos``). A file that fails to decode in train mode is logged, added to the
quarantine (persisted; skipped unopened on later epochs and runs, which keep it in the index so
that the data order never depends on the quarantine) and replaced by another index drawn from
the item's rng, at most ``max_retries`` times. In eval mode it raises :class:`DataError` naming the
file, unless ``skip_bad=True``: then every file is probed up front (or its manifest row is used)
and bad ones are dropped; ``num_listed``, ``num_used``, ``missing``, ``bad`` and
``invalid_rows`` (rows of the source list a loader could not turn into a record: a damaged id or
time, an unknown label; listed videos too) report what was used. Decoders are opened only inside
``__getitem__`` (i.e. in DataLoader workers).
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from avssl.data import decoding
from avssl.data.clips import random_window, shifted_window, uniform_windows
from avssl.errors import ConfigError, DataError, DecodeError, NoAudioError

log = logging.getLogger(__name__)

MODES = ("train", "eval")


@dataclass
class VideoRecord:
    """One listed video. ``path`` is absolute (or relative to the working directory).

    ``extra`` carries per-source facts: ``group`` (UCF101), ``split``, and, when known from a
    manifest, ``duration_s``, ``fps``, ``has_audio``, ``decodable``, ``error`` (saves a probe).
    """

    path: str
    video_id: str
    label: int | list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def takes_generator(fn: Callable | None) -> str | None:
    """How a transform takes the item's generator: ``"keyword"`` (a parameter named
    ``generator``), ``"positional"`` (a second positional parameter without a default, as in
    ``fn(x, gen)``) or None (``fn(x)``). A defaulted second parameter is a setting, not the
    generator: ``normalize(x, mean=...)`` or ``partial(random_hflip, p=1.0)`` must not get it."""
    if fn is None or isinstance(fn, torch.nn.Module):  # torchvision transforms take *inputs
        return None
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.name == "generator" and p.kind != p.POSITIONAL_ONLY for p in params):
        return "keyword"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) >= 2 and positional[1].default is inspect.Parameter.empty:
        return "positional"
    return None


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A torch generator seeded from ``rng``: the item's transforms draw from it."""
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


def apply_transform(fn: Callable, x: torch.Tensor, gen: torch.Generator,
                    with_generator: str | None) -> torch.Tensor:
    """``fn`` applied to ``x``, given ``gen`` the way :func:`takes_generator` found."""
    if with_generator == "keyword":
        return fn(x, generator=gen)
    return fn(x, gen) if with_generator else fn(x)


def clip_span(duration: float, extra: dict, *, needs_sound: bool) -> tuple[float, float]:
    """(seconds clip windows may cover, where they begin on the file's clock).

    The video's ``duration`` from its first timestamp (``extra["start_s"]``), or only its labelled
    ``extra["segment_s"] = (start, end)`` (seconds from that timestamp) when given; for clips that
    need their sound only as far as the audio goes (``extra["audio_end_s"]``), as audio past its
    end is silence: a silent positive, and a "hard negative" equal to it, taught nothing.
    """
    origin = float(extra.get("start_s") or 0.0)
    segment = extra.get("segment_s")
    if segment is not None:  # a labelled (start, end) of a longer file, from its first timestamp
        s0, s1 = float(segment[0]), float(segment[1])
        duration, origin = max(0.0, min(duration - s0, s1 - s0)), origin + s0
    audio_end = extra.get("audio_end_s")
    if needs_sound and audio_end is not None:
        duration = max(0.0, min(duration, float(audio_end) - origin))
    return duration, origin


class ClipDataset(Dataset):
    """Clips (video + aligned audio) from a list of :class:`VideoRecord` (see module docstring)."""

    def __init__(
        self,
        records: Sequence[VideoRecord],
        *,
        mode: str = "train",
        clip_s: float = 1.0,
        fps: float | None = None,
        size: int | tuple[int, int] | None = None,
        sample_rate: int = 16000,
        num_clips: int = 1,
        audio: bool = True,
        video: bool = True,
        require_audio: bool = False,
        video_transform: Callable | None = None,
        audio_transform: Callable | None = None,
        quarantine: Any = None,
        skip_bad: bool = False,
        max_retries: int = 10,
        seed: int = 0,
        backend: str = "auto",
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        timeout_s: float = 30.0,
        progress: bool = True,
        name: str = "dataset",
        audio_shift: tuple[float, float] | None = None,
        invalid_rows: int = 0,
    ):
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not clip_s > 0:
            raise ConfigError(f"clip_s must be > 0 seconds, got {clip_s}")
        if num_clips < 1 or max_retries < 0:
            raise ConfigError(
                f"need num_clips >= 1 and max_retries >= 0, got {num_clips} and {max_retries}"
            )
        self.name = name
        self.mode = mode
        self.clip_s = float(clip_s)
        self.fps = None if fps is None else float(fps)
        self.size = size
        self.sample_rate = int(sample_rate)
        self.num_clips = int(num_clips) if mode == "eval" else 1
        if not (video or audio):
            raise ConfigError("a dataset needs video=True or audio=True (it would load nothing)")
        self.audio = audio
        self.video = video  # False: audio-only items, no video decoded (e.g. audio features)
        self.require_audio = require_audio
        if audio_shift is not None and not (audio and 0 <= audio_shift[0] <= audio_shift[1]):
            raise ConfigError(f"audio_shift needs audio=True and 0 <= min <= max seconds, got "
                              f"{audio_shift}")
        self.audio_shift = audio_shift
        self.video_transform = video_transform
        self.audio_transform = audio_transform
        self._vt_gen = takes_generator(video_transform)
        self._at_gen = takes_generator(audio_transform)
        self.skip_bad = skip_bad
        self.max_retries = int(max_retries)
        self.seed = int(seed)
        # In shared memory: DataLoader workers (persistent ones too) hold a copy of this dataset,
        # and must see set_epoch() calls made in the parent after they started.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.backend = backend
        self.timeout_s = timeout_s
        self.class_names = list(class_names) if class_names is not None else None
        if num_classes is None and self.class_names is not None:
            num_classes = len(self.class_names)
        self.num_classes = num_classes
        self.quarantine = self._open_quarantine(quarantine)

        # Private copies: probing below fills ``extra`` and must not touch the caller's records.
        records = [dataclasses.replace(r, path=os.path.abspath(r.path), extra=dict(r.extra))
                   for r in records]
        self.invalid_rows = int(invalid_rows)
        self.num_listed = len(records) + self.invalid_rows
        self.missing: list[str] = [r.path for r in records if not os.path.isfile(r.path)]
        self.bad: list[tuple[str, str]] = []
        if self.missing:
            records = [r for r in records if os.path.isfile(r.path)]
            shown = ", ".join(self.missing[:3]) + (", ..." if len(self.missing) > 3 else "")
            log.warning("%s: found %d of %d listed videos (missing: %s)",
                        name, len(records), self.num_listed - self.invalid_rows, shown)
        else:
            log.info("%s: found %d of %d listed videos", name, len(records),
                     self.num_listed - self.invalid_rows)
        self.num_quarantined = 0
        if mode == "train" and self.quarantine is not None:
            # Quarantined files stay in the index and are substituted, unopened, when drawn:
            # dropping them here made the data order depend on the quarantine, so a resumed run
            # (whose quarantine file survives) trained on other samples than the straight run.
            quarantined = self.quarantine.paths()  # absolute paths, like ours
            self.num_quarantined = sum(r.path in quarantined for r in records)
            if self.num_quarantined:
                log.warning("%s: %d listed videos are quarantined in %s; each is replaced by "
                            "another video when drawn", name, self.num_quarantined,
                            self.quarantine.path)
        known_bad = [r for r in records if r.extra.get("decodable") is False]  # from a manifest
        if known_bad:
            first = known_bad[0]
            why = first.extra.get("error") or "see its manifest row"
            if mode == "eval" and not skip_bad:
                raise DataError(
                    f"{name}: {first.path} is not decodable ({why}); pass skip_bad=True "
                    f"(--skip-bad on the bench command line) to drop unreadable videos and "
                    f"report videos used vs listed"
                )
            self.bad += [(r.path, str(r.extra.get("error") or "undecodable")) for r in known_bad]
            records = [r for r in records if r.extra.get("decodable") is not False]
        if skip_bad:
            records = self._drop_bad(records, progress)
        if self.bad:
            log.warning("%s: skipping %d undecodable videos: %s", name, len(self.bad),
                        "; ".join(f"{p} ({why})" for p, why in self.bad[:3]))
        if require_audio:
            records = [r for r in records if r.extra.get("has_audio") is not False]
        if any(isinstance(r.label, (list, tuple)) for r in records) and self.num_classes is None:
            raise ConfigError(f"{name}: multi-label records need num_classes (or class_names)")
        if not records:
            raise DataError(
                f"{name}: none of the {self.num_listed} listed videos is usable "
                f"({self._why_unused()}); check the data root"
            )
        self.records = records
        # path -> (duration_s, fps, has_audio, start_s, audio_end_s), per process
        self._media_cache: dict[str, tuple[float, float, bool | None, float, float | None]] = {}
        self._bad_here: set[str] = set()  # bad paths seen by this process (saves re-reading)

    # ------------------------------------------------------------------ bookkeeping

    @staticmethod
    def _open_quarantine(quarantine: Any) -> Any:
        if quarantine is None or hasattr(quarantine, "add"):
            return quarantine
        from avssl.data.manifest import Quarantine  # only needed when a path is given

        return Quarantine(quarantine)

    def _drop_bad(self, records: list[VideoRecord], progress: bool) -> list[VideoRecord]:
        """Probe every file whose manifest row is not known and drop the ones that do not decode."""
        kept = []
        for r in tqdm(records, desc=f"checking {self.name}", unit="video",
                      disable=not progress, leave=False):
            if "duration_s" not in r.extra:
                try:
                    info = decoding.probe(r.path, timeout_s=self.timeout_s)
                except DecodeError as err:
                    self.bad.append((r.path, err.reason))
                    continue
                r.extra.update(duration_s=info.duration_s, fps=info.fps, has_audio=info.has_audio,
                               start_s=info.start_s, audio_end_s=info.audio_end_s)
            kept.append(r)
        return kept

    @property
    def num_used(self) -> int:
        """Videos this dataset draws from (listed minus missing, bad and excluded ones)."""
        return len(self.records)

    def report(self) -> str:
        """One line for logs and leaderboard rows: videos used vs listed and why not."""
        return (f"{self.name}: using {self.num_used} of {self.num_listed} listed videos "
                f"({self._why_unused()})")

    def _why_unused(self) -> str:
        invalid = f", {self.invalid_rows} invalid rows" if self.invalid_rows else ""
        held = f", {self.num_quarantined} quarantined" if self.num_quarantined else ""
        return f"{len(self.missing)} missing, {len(self.bad)} undecodable{invalid}{held}"

    @property
    def labels(self) -> list[Any]:
        """The label of every used video, in record order."""
        return [r.label for r in self.records]

    @property
    def video_ids(self) -> list[str]:
        return [r.video_id for r in self.records]

    def set_epoch(self, epoch: int) -> None:
        """Change the train-mode windows; call before each epoch (like DistributedSampler)."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __len__(self) -> int:
        return len(self.records) * self.num_clips

    # ------------------------------------------------------------------ loading

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        if self.mode == "train":
            return self._train_item(int(index))
        return self._eval_item(int(index))

    def _train_item(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, index])  # substitutes
        vi, tried, last = index, set(), ""
        for attempt in range(self.max_retries + 1):
            path = self.records[vi].path
            if not self._known_bad(path):
                # A fresh stream per attempt: the window does not depend on how earlier attempts
                # failed, so a file quarantined in an earlier run leaves the same samples behind.
                item_rng = np.random.default_rng([self.seed, self.epoch, index, attempt])
                try:
                    span, origin = self._span(self.records[vi])
                    start, _ = random_window(span, self.clip_s, item_rng)
                    start += origin
                    return self._load(vi, start, item_rng, index)
                except DecodeError as err:
                    self._mark_bad(path, err)
                    last = f"{path} ({err.reason})"
            tried.add(vi)
            vi = self._substitute(rng, tried)
            if vi is None:
                break
        raise DataError(
            f"{self.name}: item {index} and {len(tried) - 1} substitutes failed to decode "
            f"(last: {last or 'quarantined'}); scan the data with "
            f"`python -m avssl.data.manifest scan DIR` or raise max_retries"
        )

    def _eval_item(self, index: int) -> dict[str, Any]:
        vi, ci = divmod(index, self.num_clips)
        rec = self.records[vi]
        try:
            span, origin = self._span(rec)
            start, _ = uniform_windows(span, self.clip_s, self.num_clips)[ci]
            start += origin
            sample = self._load(vi, start, np.random.default_rng([self.seed, index]), index)
        except DecodeError as err:
            raise DataError(
                f"{self.name}: cannot decode {rec.path} ({err.reason}); pass skip_bad=True "
                f"(--skip-bad on the bench command line) to drop unreadable videos and report "
                f"videos used vs listed"
            ) from err
        sample["clip_index"] = ci
        return sample

    def _substitute(self, rng: np.random.Generator, tried: set[int]) -> int | None:
        n = len(self.records)
        if len(tried) >= n:
            return None
        while True:  # terminates: at least one index is untried
            j = int(rng.integers(n))
            if j not in tried:
                return j

    def _known_bad(self, path: str) -> bool:
        if path in self._bad_here:
            return True
        return self.quarantine is not None and path in self.quarantine

    def _mark_bad(self, path: str, err: DecodeError) -> None:
        self._bad_here.add(path)
        if isinstance(err, NoAudioError):  # require_audio and no audio: not a broken file
            log.info("%s: %s has no audio stream; substituting another video", self.name, path)
            return
        log.warning("%s: bad video %s (%s); substituting another sample", self.name, path,
                    err.reason)
        if self.quarantine is not None:
            self.quarantine.add(path, err.reason)

    def _media(self, rec: VideoRecord) -> tuple[float, float, bool | None]:
        """(duration_s, native fps, has_audio or None); one probe per file and process."""
        ex = rec.extra
        # without start_s (a manifest written before that column) the file is probed once: read
        # as 0, every clip of a file whose first timestamp is 10 s was its first frame, silent
        if "duration_s" in ex and "fps" in ex and "start_s" in ex:
            return float(ex["duration_s"]), float(ex["fps"]), ex.get("has_audio")
        if rec.path not in self._media_cache:
            info = decoding.probe(rec.path, timeout_s=self.timeout_s)
            self._media_cache[rec.path] = (info.duration_s, info.fps, info.has_audio,
                                           info.start_s, info.audio_end_s)
        duration, fps, has_audio, start, audio_end = self._media_cache[rec.path]
        # every record of the file (AudioSet lists one video's segments as several records)
        rec.extra.update(start_s=start, audio_end_s=audio_end)
        return duration, fps, has_audio

    def _span(self, rec: VideoRecord) -> tuple[float, float]:
        """:func:`clip_span` of ``rec``; sync pairs and ``require_audio`` clips need sound."""
        return clip_span(self._media(rec)[0], rec.extra,
                         needs_sound=self.audio_shift is not None or self.require_audio)

    def _label(self, label: Any) -> Any:
        if isinstance(label, (list, tuple)):
            hot = torch.zeros(self.num_classes, dtype=torch.float32)
            hot[list(label)] = 1.0
            return hot
        return label

    def _load(self, vi: int, start: float, rng: np.random.Generator, index: int) -> dict[str, Any]:
        rec = self.records[vi]
        _, native_fps, has_audio = self._media(rec)
        end = start + self.clip_s
        gen = torch_generator(rng)
        sample: dict[str, Any] = {
            "fps": self.fps or float(native_fps),
            "sample_rate": self.sample_rate,
            "clip_start_s": float(start),
            "video_id": rec.video_id,
            "index": index,
            "video_index": vi,
        }
        if self.video:
            video = decoding.decode_video(rec.path, start, end, fps=self.fps, size=self.size,
                                          backend=self.backend, timeout_s=self.timeout_s)
            if self.video_transform is not None:
                video = apply_transform(self.video_transform, video, gen, self._vt_gen)
            sample["video"] = video
        if self.audio:
            audio, has_audio = self._audio(rec, start, end, has_audio)
            if self.audio_transform is not None:
                audio = apply_transform(self.audio_transform, audio, gen, self._at_gen)
            sample["audio"] = audio
            sample["has_audio"] = has_audio
            if self.audio_shift is not None:
                sample.update(self._shifted_audio(rec, start, has_audio, rng, gen))
        if rec.label is not None:
            sample["label"] = self._label(rec.label)
        return sample

    def _shifted_audio(self, rec: VideoRecord, start: float, has_audio: bool,
                       rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
        """The hard sync negative: this video's audio shifted by |shift| in ``audio_shift``.

        ``hard_valid`` is False (and the audio silent) when no shifted window fits in the file
        or the file has no sound; the objective then uses easy negatives only for that row.
        """
        duration, origin = self._span(rec)
        shifted = shifted_window(start - origin, self.clip_s, duration, *self.audio_shift, rng)
        shifted = None if shifted is None else shifted + origin
        if shifted is None or not has_audio:
            audio = torch.zeros(1, decoding.num_samples(0.0, self.clip_s, self.sample_rate),
                                dtype=torch.float32)
            valid, shifted = False, start
        else:
            audio, _ = self._audio(rec, shifted, shifted + self.clip_s, has_audio)
            valid = True
        if self.audio_transform is not None:
            audio = apply_transform(self.audio_transform, audio, gen, self._at_gen)
        return {"audio_shift": audio, "hard_valid": valid, "shift_s": float(shifted - start)}

    def _audio(self, rec: VideoRecord, start: float, end: float,
               has_audio: bool | None) -> tuple[torch.Tensor, bool]:
        num = decoding.num_samples(start, end, self.sample_rate)
        if has_audio is not False:
            try:
                wav = decoding.decode_audio(rec.path, start, end, sample_rate=self.sample_rate,
                                            mono=True, if_missing="error",
                                            timeout_s=self.timeout_s)
                return wav, True
            except NoAudioError:
                if self.require_audio:
                    raise
        elif self.require_audio:
            raise NoAudioError(rec.path, "no audio stream (require_audio=True)")
        # A video without sound is normal (half of UCF101): silence, flagged.
        return torch.zeros(1, num, dtype=torch.float32), False
