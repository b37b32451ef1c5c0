"""MUSIC (Zhao et al., "The Sound of Pixels", 2018): solo / duet instrument videos from YouTube.

Expected layout (synthetic stand-in: ``python -m avssl.data.synthetic --layout music --out DIR``)::

    root/MUSIC_solo_videos.json       {"videos": {instrument: [youtube ids]}}
                                      (MUSIC21_solo_videos.json, the 21-instrument list, also read)
    root/MUSIC_duet_videos.json       {"videos": {"<a> <b>": [ids]}}  (index="duet")
    root/solo/<instrument>/<id>.mp4   (or root/<instrument>/<id>.mp4; .mp4 / .mkv / .webm / any
                                      VIDEO_EXTENSIONS; as a last resort any file named <id>.*
                                      anywhere under root)
    root/duet/<a> <b>/<id>.mp4        (or "<a>_<b>", as some download scripts name the folders)

MUSIC has no official split, so avssl fixes one (:data:`MUSIC_SPLIT_VERSION`): per instrument, a
seeded permutation of its sorted ids gives 10 % val, 10 % test and the rest train, with at least
one val and one test video per instrument that has >= 3 (fewer: all train). The split is computed
from the JSON (not from the files found), so a missing download never moves a video to another
split. It is written as CSV (``video_id,instrument,split`` after a ``#`` line giving the version,
seed, index and the JSON's sha256) to ``root/splits/music_<index>_seed<seed>_v<version>.csv`` when
``root`` is writable, else to ``avssl.cache.cache_dir("music", "splits", <json sha256[:16]>)``;
an existing file in either place is read, never recomputed, so a published split is honoured
(drop one into ``root/splits/`` under that name, or pass ``split_file=``).

An id listed under two instruments gets one split (:func:`make_split`); a video that a split file
still puts in two splits (hand-edited, or written before that rule) stops the load with an error
naming it: it would be trained on and scored.

Listed videos whose file is missing are dropped and counted (``num_listed`` vs ``num_used``).
Every used file is probed (duration, audio stream); an undecodable file stops the load with an
error naming it unless ``skip_bad=True``, which drops it and lists it in ``bad``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from avssl.cache import cache_dir
from avssl.data.datasets.layout import VIDEO_EXTENSIONS, abs_root, index_video_files, layout_error
from avssl.errors import ConfigError, DataError, DecodeError

log = logging.getLogger(__name__)

MUSIC_SPLIT_VERSION = "1"
SPLITS = ("train", "val", "test")
INDEX_FILES = {"solo": ("MUSIC_solo_videos.json", "MUSIC21_solo_videos.json"),
               "duet": ("MUSIC_duet_videos.json",)}
_EXPECTED = {"solo": "MUSIC_solo_videos.json (or MUSIC21_solo_videos.json) and "
                     "solo/<instrument>/<id>.mp4",
             "duet": "MUSIC_duet_videos.json and duet/<instrument pair>/<id>.mp4"}
_HEADER = ("video_id", "instrument", "split")
_PROBE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class MusicVideo:
    """One video: ``label`` indexes :attr:`MusicSplit.instruments`; ``path`` is absolute;
    ``instrument`` is ``"<a> <b>"`` for a duet. ``start_s``: the video's first timestamp on the
    file's clock (clips of a cut made with ``-copyts`` start there, not at 0); ``audio_end_s``:
    where its audio stream ends on that clock (None: unknown), often before the video ends."""

    video_id: str
    instrument: str
    label: int
    path: str
    duration_s: float
    has_audio: bool
    start_s: float = 0.0
    audio_end_s: float | None = None


@dataclass
class MusicSplit:
    """The videos of one split. ``instruments``: every key of the JSON, sorted (labels index it);
    ``split_file``: the CSV the split was read from or written to; ``num_listed``: videos of this
    split in the split file; ``num_used``: those found and decodable; ``missing`` (listed, no file:
    ``instrument/id``) and ``bad`` (``(path, reason)``, undecodable, with ``skip_bad=True``)."""

    records: list[MusicVideo]
    instruments: list[str]
    split: str
    split_file: str
    num_listed: int
    num_used: int
    missing: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def report(self) -> str:
        """One line for logs and leaderboard rows: videos used vs listed and why not."""
        return (f"music {self.split}: using {self.num_used} of {self.num_listed} listed videos "
                f"({len(self.missing)} missing, {len(self.bad)} undecodable)")


# ---------------------------------------------------------------- index JSON


def find_index_file(root: Path, index: str = "solo") -> Path:
    """The index JSON of ``index`` ("solo" or "duet") under ``root``; DataError if none."""
    if index not in INDEX_FILES:
        raise ConfigError(f"music: index must be 'solo' or 'duet', got {index!r}")
    for name in INDEX_FILES[index]:
        if (root / name).is_file():
            return root / name
    raise layout_error("music", "music", root, _EXPECTED[index])


def read_music_json(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{instrument: [ids]}`` from a MUSIC JSON (ids deduplicated, order kept); DataError naming
    the file and the expected shape when it is not ``{"videos": {name: [ids]}}``."""
    path = Path(path)
    expected = ('{"videos": {instrument: [youtube ids]}}; regenerate a stand-in with '
                '`python -m avssl.data.synthetic --layout music --out DIR`')
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"music: cannot read {path} ({type(e).__name__}: "
                        f"{' '.join(str(e).split())}); expected {expected}") from None
    videos = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos, dict) or not videos or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(i, str) for i in v)
            for k, v in videos.items()):
        raise DataError(f"music: {path} is not a MUSIC index; expected {expected}")
    return {k.strip(): list(dict.fromkeys(i.strip() for i in v if i.strip()))
            for k, v in videos.items()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- split


def _instrument_seed(instrument: str) -> int:
    """A stable integer per instrument name: adding an instrument never reshuffles the others."""
    return int.from_bytes(hashlib.sha256(instrument.encode("utf-8")).digest()[:4], "little")


def make_split(videos: dict[str, list[str]], seed: int = 0) -> list[tuple[str, str, str]]:
    """``(video_id, instrument, split)`` rows, instruments and ids sorted.

    Per instrument with n ids: a permutation of the sorted ids drawn from
    ``default_rng([seed, sha256(instrument)[:4]])`` (not Python's per-process salted ``hash``);
    the first ``n_val = max(1, round(0.1 n))`` are val, the next ``n_test`` (the same count)
    test, the rest train; with n < 3 all are train. An id listed under several instruments
    takes, under every one, the split its first (sorted) instrument drew: one video in two
    splits would be trained on and scored.
    """
    rows = []
    for inst in sorted(videos):
        ids = sorted(videos[inst])
        n = len(ids)
        which = ["train"] * n
        if n >= 3:
            k = max(1, int(round(0.1 * n)))
            order = np.random.default_rng([seed, _instrument_seed(inst)]).permutation(n)
            for pos, i in enumerate(order[:2 * k].tolist()):
                which[i] = "val" if pos < k else "test"
        rows += [(vid, inst, s) for vid, s in zip(ids, which)]
    first: dict[str, str] = {}
    for vid, _, s in rows:
        first.setdefault(vid, s)
    return [(vid, inst, first[vid]) for vid, inst, _ in rows]


def write_split(path: Path, rows: list[tuple[str, str, str]], *, seed: int, index: str,
                json_sha256: str) -> None:
    """Write the split CSV atomically (a temp file renamed into place)."""
    buf = io.StringIO()
    buf.write(f"# avssl MUSIC split version={MUSIC_SPLIT_VERSION} seed={seed} index={index} "
              f"json_sha256={json_sha256}\n")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_HEADER)
    w.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_split(path: str | os.PathLike) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """``(header fields, rows)`` of a split CSV; ``#`` lines are comments (the first one's
    ``key=value`` pairs are the header fields). DataError naming ``file:line`` when malformed."""
    path = Path(path)
    meta: dict[str, str] = {}
    rows: list[tuple[str, str, str]] = []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"music: cannot read split file {path} ({e})") from None
    data = []
    for lineno, line in enumerate(lines, 1):
        if line.startswith("#"):
            if not meta:
                meta = dict(p.split("=", 1) for p in line[1:].split() if "=" in p)
        elif line.strip():
            data.append((lineno, line))
    if not data or tuple(c.strip() for c in next(csv.reader([data[0][1]]))) != _HEADER:
        raise DataError(f"music: {path} is not a split file; expected a header line "
                        f"'{','.join(_HEADER)}' then one row per video (delete it to recompute)")
    for lineno, line in data[1:]:
        cells = [c.strip() for c in next(csv.reader([line]))]
        if len(cells) != 3 or cells[2] not in SPLITS or not cells[0]:
            raise DataError(f"{path}:{lineno}: expected 'video_id,instrument,split' with split "
                            f"in {'/'.join(SPLITS)}, got {line.strip()!r}")
        rows.append((cells[0], cells[1], cells[2]))
    return meta, rows


def check_disjoint(rows: list[tuple[str, str, str]], split_file: str | os.PathLike,
                   locate: Callable[[str, str], str | None] | None = None) -> None:
    """DataError naming the first video that ``rows`` put in two splits: its file when
    ``locate(instrument, video_id)`` finds one, else ``instrument/id``. One file in train and
    test would score the separator on a video it trained on."""
    first: dict[str, tuple[str, str]] = {}
    for vid, inst, s in rows:
        inst0, s0 = first.setdefault(vid, (inst, s))
        if s0 != s:
            where = (locate(inst, vid) if locate is not None else None) or f"{inst}/{vid}"
            as_ = f" (listed as {inst0} and as {inst})" if inst0 != inst else ""
            raise DataError(f"music: {where} is in both the {s0} and the {s} split of "
                            f"{split_file}{as_}; a video must be in one split only: fix that "
                            f"file, or list the id under one instrument in the index JSON and "
                            f"delete the split file to recompute it")


def split_path(root: Path, index: str, seed: int, json_sha256: str) -> Path:
    """Where the split of (root, index, seed) lives: an existing file in ``root/splits/`` or the
    cache, else ``root/splits/`` if writable, else the cache (see the module docstring)."""
    name = f"music_{index}_seed{seed}_v{MUSIC_SPLIT_VERSION}.csv"
    local = root / "splits" / name
    cached = Path(cache_dir("music", "splits", json_sha256[:16])) / name
    for p in (local, cached):
        if p.is_file():
            return p
    writable = os.access(local.parent if local.parent.is_dir() else root, os.W_OK)
    return local if writable else cached


def load_split(root: Path, json_path: Path, videos: dict[str, list[str]], *, index: str,
               seed: int, split_file: str | os.PathLike | None = None
               ) -> tuple[Path, list[tuple[str, str, str]]]:
    """Read the split (``split_file``, or the one found by :func:`split_path`) or make and write
    it; returns ``(path, rows)``."""
    sha = _sha256(json_path)
    path = (Path(split_file) if split_file is not None
            else split_path(root, index, seed, sha))
    if path.is_file():
        meta, rows = read_split(path)
        if meta.get("json_sha256", sha) != sha:
            log.warning("music: split %s was made from another %s (sha256 %s..., now %s...); "
                        "using it as written", path, json_path.name,
                        meta["json_sha256"][:12], sha[:12])
        listed = {(v, i) for i, ids in videos.items() for v in ids}
        unassigned = len(listed - {(v, i) for v, i, _ in rows})
        if unassigned:
            log.warning("music: %d videos of %s are in no split of %s; they are not used",
                        unassigned, json_path.name, path)
        return path, rows
    if split_file is not None:
        raise DataError(f"music: split file {path} does not exist; expected a CSV "
                        f"'{','.join(_HEADER)}' (or leave split_file out to make one)")
    rows = make_split(videos, seed)
    try:
        write_split(path, rows, seed=seed, index=index, json_sha256=sha)
    except OSError as e:  # root looked writable but is not (e.g. a read-only mount)
        fallback = Path(cache_dir("music", "splits", sha[:16])) / path.name
        log.info("music: cannot write %s (%s); writing the split to %s", path, e, fallback)
        path = fallback
        write_split(path, rows, seed=seed, index=index, json_sha256=sha)
    log.info("music: wrote the %s split (seed %d) to %s", index, seed, path)
    return path, rows


# ---------------------------------------------------------------- files


class _Finder:
    """Finds ``<id>.<ext>`` of an instrument in the usual folders, else anywhere under root (one
    walk, built on first need)."""

    def __init__(self, root: Path, index: str):
        self.root, self.index = root, index
        self._all: dict[str, str] | None = None

    def __call__(self, instrument: str, video_id: str) -> str | None:
        folders = [instrument] + ([instrument.replace(" ", "_")] if " " in instrument else [])
        for folder in folders:
            for base in (self.root / self.index / folder, self.root / folder):
                for ext in VIDEO_EXTENSIONS:
                    p = base / f"{video_id}{ext}"
                    if p.is_file():
                        return str(p)
        if self._all is None:
            self._all = index_video_files(self.root)
        return self._all.get(video_id)


def music(root: str | os.PathLike, split: str = "train", *, index: str = "solo", seed: int = 0,
          skip_bad: bool = False, split_file: str | os.PathLike | None = None) -> MusicSplit:
    """The ``split`` ("train", "val" or "test") of MUSIC ``index`` ("solo" or "duet") under
    ``root``, split with ``seed`` (layout and split rule: see the module docstring).

    The split CSV is read from ``root/splits/music_<index>_seed<seed>_v1.csv`` or from
    ``cache_dir("music", "splits", <json sha256[:16]>)`` if one exists there; otherwise it is
    made and written to ``root/splits/`` when ``root`` is writable, else to that cache folder
    (``MusicSplit.split_file`` says which). ``split_file``: read this CSV instead. Missing files
    are dropped and counted; an undecodable file raises :class:`DataError` unless ``skip_bad``.
    """
    if split not in SPLITS:
        raise ConfigError(f"music: split must be one of {', '.join(SPLITS)}, got {split!r}")
    if index not in INDEX_FILES:
        raise ConfigError(f"music: index must be 'solo' or 'duet', got {index!r}")
    root = abs_root(root, "music", "music", _EXPECTED[index])
    json_path = find_index_file(root, index)
    videos = read_music_json(json_path)
    instruments = sorted(videos)
    path, rows = load_split(root, json_path, videos, index=index, seed=seed,
                            split_file=split_file)
    mine = [(v, i) for v, i, s in rows if s == split]
    unknown = sorted({i for _, i in mine} - set(instruments))
    if unknown:
        raise DataError(f"music: split file {path} names instruments {unknown} that "
                        f"{json_path.name} does not list; delete the split file to recompute it")
    find = _Finder(root, index)
    check_disjoint(rows, path, find)
    if not mine:
        raise DataError(f"music: the {split} split in {path} is empty (an instrument needs >= 3 "
                        f"videos to give one to val and test); list more videos in "
                        f"{json_path.name}, e.g. `python -m avssl.data.synthetic --layout music "
                        f"--out DIR --clips-per-class 4`")
    records: list[MusicVideo] = []
    missing: list[str] = []
    bad: list[tuple[str, str]] = []
    from avssl.data import decoding  # codec libraries load only when files are probed

    found = []
    for vid, inst in mine:
        p = find(inst, vid)
        if p is None:
            missing.append(f"{inst}/{vid}")
        else:
            found.append((vid, inst, p))

    def probe(p: str) -> decoding.MediaInfo | DecodeError:
        try:
            return decoding.probe(p, timeout_s=_PROBE_TIMEOUT_S)
        except DecodeError as e:
            return e

    # threads: probing is mostly codec work that releases the GIL (real videos are minutes long)
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        infos = list(pool.map(probe, [p for _, _, p in found]))
    for (vid, inst, p), info in zip(found, infos):
        if isinstance(info, DecodeError):
            if not skip_bad:
                raise DataError(f"music: cannot decode {p} ({info.reason}); pass skip_bad=True "
                                "to drop unreadable videos and report videos used vs listed")
            bad.append((p, info.reason))
            continue
        records.append(MusicVideo(vid, inst, instruments.index(inst), os.path.abspath(p),
                                  float(info.duration_s), bool(info.has_audio),
                                  float(info.start_s), info.audio_end_s))
    out = MusicSplit(records, instruments, split, str(path), len(mine), len(records),
                     missing, bad)
    if missing or bad:
        shown = ", ".join(missing[:3] + [b[0] for b in bad[:3]])
        log.warning("%s (e.g. %s)", out.report(), shown)
    if not records:
        raise DataError(f"music: none of the {len(mine)} {split} videos listed in "
                        f"{json_path.name} is usable ({len(missing)} missing, {len(bad)} "
                        f"undecodable); expected {_EXPECTED[index]} under {root}, or write a "
                        f"stand-in with `python -m avssl.data.synthetic --layout music --out DIR`")
    return out
