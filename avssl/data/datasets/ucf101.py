"""UCF101 (101 classes, 3 splits) and its audio-visual subset ``ucf101-av``.

Expected layout (the official download)::

    root/UCF-101/<Class>/v_<Class>_gGG_cCC.avi
    root/ucfTrainTestlist/classInd.txt          "1 ApplyEyeMakeup"  (1-based)
    root/ucfTrainTestlist/trainlist0{1,2,3}.txt "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    root/ucfTrainTestlist/testlist0{1,2,3}.txt  "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

Gotchas handled (DATASETS.md): CRLF lines; file paths come from the lists, never from class
names (``HandstandPushups/v_HandStandPushups_*``); labels come from ``classInd.txt`` (0-based
here), whose order differs from Python's ``sorted()`` (``JumpingJack`` before ``JumpRope``); test
lists with or without labels (test labels come from the path's class folder via classInd); mixed
frame rates are handled by sampling in seconds.

``ucf101-av`` (``audio_subset=True``): no official list of the videos with sound exists, so the
files are probed once (:func:`avssl.data.manifest.scan`, cached on disk under
``$AVSSL_CACHE/manifests/`` or ``~/.cache/avssl/manifests/``; a file whose size or mtime changed
is probed again). A class is kept when at least half of its decodable videos have an audio stream
(51 classes on the real data), labels are remapped to ``0..K-1`` in classInd order, and videos
without audio are dropped. The AV literature (AV-SUPERB) uses split 1 of this subset; the video
SSL literature uses all 101 classes, 3 splits averaged.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from avssl.cache import cache_dir
from avssl.data.datasets.base import ClipDataset, VideoRecord
from avssl.data.datasets.folder import media_fields
from avssl.data.datasets.layout import abs_root, check_split, default_mode, layout_error, read_lines
from avssl.errors import DataError

log = logging.getLogger(__name__)

_EXPECTED = "UCF-101/<Class>/*.avi and ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt"
_GROUP = re.compile(r"_g(\d+)_c(\d+)$")


def read_class_index(path: str | os.PathLike) -> list[str]:
    """Class names in ``classInd.txt`` order (position = 0-based label)."""
    pairs = []
    for line in read_lines(path):
        num, _, name = line.partition(" ")
        if not num.isdigit() or not name.strip():
            raise DataError(f"{path}: expected lines '<id> <ClassName>', got {line!r}")
        pairs.append((int(num), name.strip()))
    pairs.sort()
    if [n for n, _ in pairs] != list(range(1, len(pairs) + 1)):
        raise DataError(f"{path}: class ids must be 1..N without gaps")
    return [name for _, name in pairs]


def read_split_list(path: Path, classes: list[str], *, train: bool) -> list[tuple[str, int]]:
    """``(relative video path, 0-based label)`` for each line of a train or test list."""
    lookup = {c: i for i, c in enumerate(classes)}
    folded = {c.lower(): i for i, c in enumerate(classes)}
    out, disagree = [], []
    for line in read_lines(path):
        parts = line.split()
        rel = parts[0].replace("\\", "/")
        folder = rel.split("/")[0]
        from_folder = lookup.get(folder, folded.get(folder.lower()))
        listed = None
        if len(parts) > 1:
            if len(parts) > 2 or not parts[1].isdigit():
                raise DataError(f"{path}: expected '<Class>/<file>.avi' optionally followed by "
                                f"its classInd.txt id (1..{len(classes)}), got {line!r}")
            listed = int(parts[1]) - 1
        if from_folder is None:
            if listed is None or not train or not 0 <= listed < len(classes):
                raise DataError(f"{path}: class folder {folder!r} of {rel} is not in classInd.txt")
            label = listed  # an official train label for a folder classInd does not name
        else:
            label = from_folder  # official lists always agree with the folder's classInd id
            if listed is not None and listed != from_folder:
                disagree.append((rel, listed, from_folder))
        out.append((rel, label))
    if disagree:
        rel, listed, got = disagree[0]
        log.warning("%s: %d of %d lines carry a label that differs from their folder's classInd "
                    "id (e.g. %s: %d vs %d; a 0-based or re-numbered copy?); using the folder",
                    path.name, len(disagree), len(out), rel, listed + 1, got + 1)
    return out


def _manifest_cache(root: Path) -> Path:
    key = hashlib.sha1(str(root).encode()).hexdigest()[:16]
    return cache_dir("manifests") / f"ucf101_{key}.csv"


def _stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _probe_all(videos: Path, listed: set[str], workers: int, progress: bool) -> dict[str, Any]:
    """Manifest rows by relative path, read from the on-disk cache or scanned once.

    The cache is a probe table, not a manifest to load videos from: its paths stay relative to
    ``videos`` (the lookup key here), not to the cache file's folder as in a user's manifest.
    A sidecar ``.stat.json`` keeps each file's (size, mtime) at probe time, so a file added,
    replaced or repaired since (a half-copied video probes as undecodable) is probed again and a
    deleted one leaves the table; the first use probes the whole tree (every split at once)."""
    import pandas as pd

    from avssl.data.manifest import read_manifest, scan, write_manifest

    cache = _manifest_cache(videos)
    stats_file = cache.with_suffix(".stat.json")
    cached = read_manifest(cache) if cache.is_file() else None
    stats: dict[str, list[int]] = {}
    if cached is not None:
        try:
            stats = json.loads(stats_file.read_text())
        except (OSError, ValueError):  # a cache written before the sidecar: probe again
            stats = {}
    have = set() if cached is None else set(cached["path"])
    now = {rel: _stat(videos / rel) for rel in have | listed}
    stale = sorted(rel for rel, st in now.items()
                   if st is not None and (rel not in have or stats.get(rel) != st))
    gone = {rel for rel in have if now[rel] is None}
    if cached is None:
        log.info("ucf101-av: probing %s for audio streams (cached in %s)", videos, cache)
        df = scan(videos, workers=workers, progress=progress)
        now = {rel: _stat(videos / rel) for rel in df["path"]}
    elif stale or gone:
        log.info("ucf101-av: probing %d new or changed files of %s (cache %s)", len(stale),
                 videos, cache)
        parts = [cached[~cached["path"].isin(gone | set(stale))]]
        if stale:
            parts.append(scan(videos, paths=stale, workers=workers, progress=progress))
        df = pd.concat(parts, ignore_index=True).sort_values("path", kind="stable")
    else:
        df = cached
    if df is not cached:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_manifest(df.reset_index(drop=True), cache)
        tmp = stats_file.with_name(stats_file.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({rel: st for rel, st in now.items() if st is not None}))
        os.replace(tmp, stats_file)
    return {row["path"]: row for row in df.to_dict("records")}


def ucf101(
    root: str | os.PathLike,
    split: int = 1,
    train: bool = True,
    audio_subset: bool = False,
    *,
    mode: str | None = None,
    scan_workers: int = 1,
    progress: bool = True,
    **kw: Any,
) -> ClipDataset:
    """UCF101 split ``split`` (1-3), train or test list, as a :class:`ClipDataset`.

    ``mode`` defaults to ``train`` for the train list and ``eval`` for the test list; other
    keyword arguments go to :class:`ClipDataset`. ``audio_subset=True`` gives ``ucf101-av``.
    """
    name = "ucf101-av" if audio_subset else "ucf101"
    check_split(name, split, (1, 2, 3))
    root = abs_root(root, name, "ucf101", _EXPECTED)
    videos, lists = root / "UCF-101", root / "ucfTrainTestlist"
    list_file = lists / f"{'train' if train else 'test'}list0{split}.txt"
    for needed in (videos, lists / "classInd.txt", list_file):
        if not needed.exists():
            raise layout_error(name, "ucf101", root, _EXPECTED + f" (missing {needed.name})")
    classes = read_class_index(lists / "classInd.txt")
    entries = read_split_list(list_file, classes, train=train)
    if not entries:  # not a data-root problem: the list itself is empty
        raise DataError(f"{name}: {list_file} lists no videos; use another split (a synthetic "
                        f"tree has test clips for split N only with --clips-per-class >= N)")

    records = []
    for rel, label in entries:
        stem = Path(rel).stem
        match = _GROUP.search(stem)
        extra: dict[str, Any] = {"split": split, "class_folder": rel.split("/")[0]}
        if match:
            extra.update(group=int(match.group(1)), clip=int(match.group(2)))
        records.append(VideoRecord(str(videos / rel), stem, label, extra))

    if audio_subset:
        rows = _probe_all(videos, {rel for rel, _ in entries}, scan_workers, progress)
        classes, records = _audio_subset(classes, rows, records, videos)
    return ClipDataset(records, mode=default_mode(mode, train), class_names=classes, name=name,
                       progress=progress, **kw)


def _audio_subset(classes: list[str], rows: dict[str, Any], records: list[VideoRecord],
                  videos: Path) -> tuple[list[str], list[VideoRecord]]:
    """Keep classes whose videos have sound, remap labels, drop silent videos.

    A listed class none of whose files decodes (or exists) is kept with a warning: whether it
    has sound is unknown, and dropping it would make its broken videos vanish from the count
    instead of stopping evaluation on them (or being counted as unused with ``skip_bad``)."""
    folded = {c.lower(): i for i, c in enumerate(classes)}
    with_audio = [0] * len(classes)
    decodable = [0] * len(classes)
    for rel, row in rows.items():
        label = folded.get(rel.split("/")[0].lower())
        if label is not None and row["decodable"]:
            decodable[label] += 1
            with_audio[label] += bool(row["has_audio"])
    listed = {rec.label for rec in records}
    unknown = [i for i in sorted(listed) if not decodable[i]]
    if unknown:
        log.warning("ucf101-av: no video of class(es) %s decodes, so whether they have sound is "
                    "unknown; kept, so that their videos are reported",
                    ", ".join(classes[i] for i in unknown))
    keep = [i for i in range(len(classes))
            if (decodable[i] and with_audio[i] * 2 >= decodable[i]) or i in unknown]
    remap = {old: new for new, old in enumerate(keep)}
    out = []
    for rec in records:
        if rec.label not in remap:
            continue
        row = rows.get(Path(rec.path).relative_to(videos).as_posix())
        extra = dict(rec.extra)
        if row is not None:  # else the file is missing: ClipDataset reports it
            # an undecodable file also probes as silent: keep it, so that ClipDataset stops on it
            # in evaluation (or counts it in ``bad`` with skip_bad) instead of it vanishing here
            if row["decodable"] and not row["has_audio"]:
                continue
            extra.update(has_audio=True, decodable=bool(row["decodable"]),
                         error=row["error"] if isinstance(row["error"], str) else "")
            if row["decodable"]:  # with the first timestamp and the audio's end, as a folder
                extra.update(media_fields(row))
        out.append(VideoRecord(rec.path, rec.video_id, remap[rec.label], extra))
    log.info("ucf101-av: %d of %d classes have audio; %d of %d listed videos kept",
             len(keep), len(classes), len(out), len(records))
    return [classes[i] for i in keep], out
