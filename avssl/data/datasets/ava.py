"""AVA v2.2 spatio-temporal action detection: CSV / label-map parsers and the keyframe loader.

Expected layout (synthetic stand-in: ``python -m avssl.data.synthetic --layout ava --out DIR``)::

    root/annotations/ava_{train,val}_v2.2.csv                 ground truth: a row per (box, action)
    root/annotations/ava_action_list_v2.2.pbtxt               80 classes (label { name label_id })
    root/annotations/ava_action_list_v2.2_for_activitynet_2019.pbtxt   60 classes (item { name id })
    root/annotations/ava_{train,val}_excluded_timestamps_v2.2.csv     video_id,timestamp (optional)
    root/annotations/ava_{train,val}_predicted_boxes.csv      person proposals (boxes="proposals")
    root/videos_15min/<video_id>.mp4                          (.mkv / .webm too; any depth)

CSV rows (no header; timestamps written ``0902`` are compared as integers; boxes ``x1,y1,x2,y2``
normalised to [0, 1]):

- ground truth: ``video_id,timestamp,x1,y1,x2,y2,action_id,person_id`` (8 columns), the same
  without ``person_id`` (7), or ``video_id,timestamp`` (2: a keyframe with no action);
- proposals: ``video_id,timestamp,x1,y1,x2,y2,,score`` (the action column may be empty);
- detections: ``video_id,timestamp,x1,y1,x2,y2,action_id,score`` (7 columns: score 1.0, as the
  official evaluator reads them).

Keyframe ``timestamp`` (s) sits at ``time_s = timestamp - 900`` in the 15-min cut (frame
``(timestamp - 900) * 30`` at 30 fps); a detector centres its clip on ``time_s``. AVA annotates
only the 900-1800 s segment of each movie (keyframes 0902..1798): a ground-truth timestamp outside
it is a :class:`DataError`, not a clip read at a clamped, wrong time. Without a
``videos_15min/`` folder the videos found under root are probed: one longer than 960 s is a full
movie of the official download, read at ``time_s = timestamp``.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avssl.data.datasets.base import VideoRecord
from avssl.data.datasets.layout import abs_root, index_video_files, layout_error
from avssl.errors import ConfigError, DataError, DecodeError

log = logging.getLogger(__name__)

AVA_FPS = 30
AVA_CUT_S = 900
AVA_CUT_END_S = 1800  # the annotated segment is [900, 1800) s of each movie
SPLITS = ("train", "val")
KINDS = ("groundtruth", "proposals", "detections")
LABELMAP_60 = "ava_action_list_v2.2_for_activitynet_2019.pbtxt"
LABELMAP_80 = "ava_action_list_v2.2.pbtxt"
_LAYOUT = (f"annotations/ava_{{train,val}}_v2.2.csv, annotations/{LABELMAP_60} (or "
           f"{LABELMAP_80}) and videos_15min/<video_id>.mp4")
_EXPECTED = {
    "groundtruth": "video_id,timestamp,x1,y1,x2,y2,action_id,person_id (8 columns; 7 without "
                   "person_id; 2 for a keyframe without actions)",
    "proposals": "video_id,timestamp,x1,y1,x2,y2,,score (8 columns, action_id may be empty)",
    "detections": "video_id,timestamp,x1,y1,x2,y2,action_id,score (8 columns)",
}
_COLUMNS = {"groundtruth": (2, 7, 8), "proposals": (2, 8), "detections": (2, 7, 8)}


@dataclass(frozen=True, slots=True)
class AVARow:
    """One CSV row. ``box`` ``(x1, y1, x2, y2)`` in [0, 1] is None for a 2-column row (a keyframe
    without actions), like ``action_id``; ``person_id`` only in 8-column ground truth; ``score``
    only in proposals and 8-column detections."""

    video_id: str
    timestamp: int
    box: tuple[float, float, float, float] | None
    action_id: int | None = None
    person_id: int | None = None
    score: float | None = None

    @property
    def key(self) -> tuple[str, int]:
        return self.video_id, self.timestamp


def _check_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} {p} not found")
    return p


def _timestamp(text: str) -> int:
    """``"0902"`` -> 902; ``"902.0"`` is accepted, ``"902.5"`` is not (AVA keyframes are whole
    seconds)."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        value = float(text)  # ValueError propagates to the caller's message
        if not value.is_integer():
            raise ValueError(text) from None
        return int(value)


def _parse_row(fields: list[str], kind: str, path: Path, lineno: int) -> AVARow:
    def bad(why: str = "") -> DataError:
        got = ",".join(fields)
        if not why and fields[0].lower() in ("video_id", "video", "video_name"):
            why = "; AVA CSVs have no header row"
        return DataError(f"{path}:{lineno}: expected {_EXPECTED[kind]}{why}, got {got[:120]!r}")

    fields = [f.strip() for f in fields]
    if len(fields) not in _COLUMNS[kind] or not fields[0]:
        raise bad()
    try:
        ts = _timestamp(fields[1])
        if len(fields) == 2:
            return AVARow(fields[0], ts, None)
        box = tuple(float(x) for x in fields[2:6])
        action = int(fields[6]) if fields[6] or kind != "proposals" else None
        score = float(fields[7]) if kind != "groundtruth" and len(fields) == 8 else None
        person = int(fields[7]) if kind == "groundtruth" and len(fields) == 8 and fields[7] \
            else None
    except ValueError:
        raise bad() from None
    if not all(math.isfinite(v) for v in box) or (score is not None and not math.isfinite(score)):
        raise bad("; boxes and scores must be finite numbers")
    x1, y1, x2, y2 = box
    # Detections are taken as they come: the official evaluator silently drops boxes with
    # x2 <= x1 or y2 <= y1. Annotations and proposals feed training / RoIAlign: check them.
    if kind != "detections":
        if not (0.0 <= min(box) and max(box) <= 1.0):
            raise bad("; boxes must be normalised to [0, 1] (divide pixels by width / height)")
        if x2 < x1 or y2 < y1:
            raise bad("; boxes are x1,y1,x2,y2 with x1 <= x2 and y1 <= y2")
    return AVARow(fields[0], ts, box, action, person, score)  # type: ignore[arg-type]


def read_rows(path: str | os.PathLike, *, kind: str = "groundtruth") -> list[AVARow]:
    """Every row of an AVA CSV, in file order (the order breaks ties in the evaluator).

    ``kind``: ``"groundtruth"`` | ``"proposals"`` | ``"detections"`` (formats in the module
    docstring). Blank lines, CRLF and a BOM are accepted; anything else malformed raises
    :class:`DataError` naming ``file:line`` and the expected columns.
    """
    if kind not in KINDS:
        raise ConfigError(f"read_rows: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    p = _check_file(path, f"AVA {kind} CSV")
    rows = []
    with open(p, encoding="utf-8-sig", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            rows.append(_parse_row(fields, kind, p, reader.line_num))
    return rows


def read_exclusions(path: str | os.PathLike) -> set[tuple[str, int]]:
    """``{(video_id, timestamp)}`` of an excluded-timestamps CSV (``video_id,timestamp`` rows)."""
    p = _check_file(path, "AVA excluded-timestamps CSV")
    out = set()
    with open(p, encoding="utf-8-sig", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        for fields in reader:
            fields = [f.strip() for f in fields]
            if not any(fields):
                continue
            try:
                if len(fields) != 2 or not fields[0]:
                    raise ValueError
                out.add((fields[0], _timestamp(fields[1])))
            except ValueError:
                raise DataError(f"{p}:{reader.line_num}: expected video_id,timestamp, got "
                                f"{','.join(fields)[:120]!r}") from None
    return out


_BLOCK = re.compile(r"\b(item|label)\s*\{([^{}]*)\}", re.S)
_NAME = re.compile(r"\bname\s*:\s*\"([^\"]*)\"")
_ID = re.compile(r"\b(?:label_id|id)\s*:\s*(-?\d+)")
_COMMENT = re.compile(r'("[^"\n]*")|#[^\n]*')  # a quoted string is kept whole, '#' inside too


def read_labelmap(path: str | os.PathLike) -> tuple[list[int], list[str]]:
    """``(ids, names)`` in file order from an AVA label map in either style:
    ``item { name: "bend/bow (at the waist)" id: 1 }`` (the 60-class ActivityNet file) or
    ``label { name: "..." label_id: 1 label_type: PERSON_MOVEMENT }`` (the 80-class file).

    Ids must be unique integers >= 1 (the official evaluator requires 1-indexed classes).
    """
    p = _check_file(path, "AVA label map")
    text = p.read_text(encoding="utf-8-sig", errors="replace")
    # protobuf text format: '#' starts a comment (outside quoted names), and commenting a class
    # out is how people drop it; its block must not become a class. Blanked, not deleted, so the
    # line numbers in errors stay those of the file.
    text = _COMMENT.sub(lambda m: m.group(1) or " " * len(m.group(0)), text)
    ids: list[int] = []
    names: list[str] = []
    for m in _BLOCK.finditer(text):
        body, line = m.group(2), text.count("\n", 0, m.start()) + 1
        name, cid = _NAME.search(body), _ID.search(body)
        if name is None or cid is None:
            raise DataError(f'{p}:{line}: expected a block with name: "..." and id: N (or '
                            f'label_id: N), got {" ".join(m.group(0).split())[:120]!r}')
        if int(cid.group(1)) < 1 or int(cid.group(1)) in ids:
            raise DataError(f"{p}:{line}: class ids must be unique integers >= 1, got "
                            f"{cid.group(1)} (ids so far: {ids[-5:]})")
        ids.append(int(cid.group(1)))
        names.append(name.group(1))
    if not ids:
        raise DataError(f'{p}: expected a label map of `item {{ name: "..." id: N }}` or '
                        f'`label {{ name: "..." label_id: N }}` blocks, found none')
    return ids, names


@dataclass
class AVAKeyframe:
    """One annotated keyframe. ``boxes`` (P, 4) float32 x1,y1,x2,y2 normalised, one per person;
    ``labels`` (P, K) float32 multi-hot over :attr:`AVASplit.class_ids` (zeros for proposals);
    ``scores`` (P,) float32 (proposal scores; 1.0 for ground truth). ``time_s``: the keyframe's
    time in ``path``: ``timestamp - 900`` in a 15-min cut, ``timestamp`` in a full movie."""

    video_id: str
    timestamp: int
    path: str
    time_s: float
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray


@dataclass
class AVASplit:
    """The keyframes of one split plus what the evaluator and the leaderboard need.

    ``records``: one :class:`VideoRecord` per video used (``label`` = video id), for manifest
    hashing; ``num_listed`` / ``num_used``: videos in the CSV / found (and decodable with
    ``skip_bad``); ``missing`` / ``bad``: the others.
    """

    keyframes: list[AVAKeyframe]
    class_ids: list[int]
    class_names: list[str]
    records: list
    num_listed: int
    num_used: int
    groundtruth_csv: str
    exclusions_csv: str | None
    labelmap: str
    missing: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keyframes)

    @property
    def video_ids(self) -> list[str]:
        """Ids of the videos used, sorted."""
        return [r.video_id for r in self.records]

    def used_groundtruth(self) -> list[str]:
        """The lines of :attr:`groundtruth_csv` whose video is used, verbatim and in file order
        (the order breaks the evaluator's ties): the ground truth that detections on this split
        are scored against, so that videos left out (missing, undecodable) do not count their
        boxes as missed."""
        used = set(self.video_ids)
        with open(self.groundtruth_csv, encoding="utf-8-sig", errors="replace", newline="") as fh:
            lines = [line.rstrip("\r\n") for line in fh]
        # parsed like read_rows parses them (a blank line gives []), kept as written
        return [line for line, fields in zip(lines, csv.reader(lines))
                if fields and fields[0].strip() in used]

    def report(self) -> str:
        return (f"ava: using {self.num_used} of {self.num_listed} listed videos "
                f"({len(self.missing)} missing, {len(self.bad)} undecodable), "
                f"{len(self.keyframes)} keyframes")


def _find(folder: Path, *names: str) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _persons(rows: list[AVARow], column: dict[int, int], k: int):
    """Merge ground-truth rows of one keyframe into persons keyed by (person_id, box)."""
    persons: dict[tuple, np.ndarray] = {}
    for r in rows:
        if r.box is None or r.action_id not in column:
            continue
        persons.setdefault((r.person_id, r.box), np.zeros(k, np.float32))[column[r.action_id]] = 1
    boxes = np.array([b for _, b in persons], np.float32).reshape(-1, 4)
    labels = np.stack(list(persons.values())) if persons else np.zeros((0, k), np.float32)
    return boxes, labels, np.ones(len(boxes), np.float32)


def _group(rows: list[AVARow]) -> dict[tuple[str, int], list[AVARow]]:
    out: dict[tuple[str, int], list[AVARow]] = {}
    for r in rows:
        out.setdefault(r.key, []).append(r)
    return out


def _unique_boxes(rows: list[AVARow]) -> list[AVARow]:
    """One row per box of a keyframe's proposals, with the highest score of its rows, in order
    of first appearance: proposal files may repeat a box once per action label (a row per
    (box, action), like the ground truth), and a repeated box would be scored, and enter the
    evaluator as a duplicate detection, once per copy."""
    best: dict[tuple, AVARow] = {}  # insertion order = first appearance of each box
    for r in rows:
        if r.box not in best or r.score > best[r.box].score:  # type: ignore[operator]
            best[r.box] = r
    return list(best.values())


def _check_timestamps(rows: list[AVARow], path: Path) -> None:
    """DataError unless every keyframe lies in the annotated 900-1800 s segment: an earlier
    one would sit before the start of a 15-min cut and be read, silently, at its first frame."""
    bad = [r for r in rows if not AVA_CUT_S <= r.timestamp < AVA_CUT_END_S]
    if bad:
        raise DataError(f"{path}: {len(bad)} row(s) with a keyframe timestamp outside "
                        f"{AVA_CUT_S}..{AVA_CUT_END_S - 1} s (e.g. {bad[0].video_id},"
                        f"{bad[0].timestamp:04d}); expected AVA v2.2 keyframes 0902..1798, the "
                        f"movie's own seconds, read at timestamp - {AVA_CUT_S} s in the 15-min cut")


def _drop_undecodable(videos: dict[str, str]) -> list[tuple[str, str]]:
    from avssl.data.decoding import probe  # codec libraries load only when asked to probe

    bad = []
    for vid, path in list(videos.items()):
        try:
            probe(path)
        except DecodeError as e:
            bad.append((path, e.reason))
            del videos[vid]
    return bad


UNCUT_MIN_S = AVA_CUT_S + 60  # a file longer than this is a full movie, not a 15-min cut


def _uncut(videos: dict[str, str]) -> set[str]:
    """Ids of the videos that are full movies (the official ``trainval/`` download), where
    keyframe ``ts`` sits at ``ts`` s rather than at ``ts - 900`` in a 15-min cut: their probed
    length exceeds :data:`UNCUT_MIN_S`. Files that fail to probe are left to the decoder (or to
    ``skip_bad``) to report."""
    from avssl.data.decoding import probe

    full = set()
    for vid, path in videos.items():
        try:
            if probe(path).duration_s > UNCUT_MIN_S:
                full.add(vid)
        except DecodeError:
            pass
    return full


def ava(root: str | os.PathLike, split: str = "train", *, boxes: str = "groundtruth",
        score_threshold: float = 0.8, labelmap: str | None = None,
        skip_bad: bool = False) -> AVASplit:
    """AVA v2.2 ``split`` (``"train"`` | ``"val"``) as :class:`AVASplit`, keyframes sorted by
    (video, timestamp); excluded timestamps are dropped.

    ``boxes="groundtruth"``: one box per annotated person with its multi-hot labels over the
    label map's classes (persons with no action in the label map, and keyframes left without
    persons, are dropped). ``boxes="proposals"``: every keyframe of the ground-truth CSV with
    the ``ava_<split>_predicted_boxes.csv`` boxes of score >= ``score_threshold`` (a keyframe may
    keep zero boxes; a box on several rows is kept once, with its highest score) and all-zero
    labels. ``labelmap``: a path; default the 60-class
    ActivityNet file when present, else the 80-class one. Videos listed without a file are
    dropped with a warning; with ``skip_bad`` every video is probed and undecodable ones are
    dropped too (``num_listed`` / ``num_used`` report it). Without ``videos_15min/`` the videos
    are probed to tell full movies (keyframes at ``timestamp`` s) from 15-min cuts (at
    ``timestamp - 900``); nothing is decoded otherwise. A ground-truth timestamp outside
    900..1799 is a :class:`DataError`.
    """
    if split not in SPLITS:
        raise ConfigError(f"ava: split must be one of {', '.join(SPLITS)}, got {split!r}")
    if boxes not in ("groundtruth", "proposals"):
        raise ConfigError(f"ava: boxes must be 'groundtruth' or 'proposals', got {boxes!r}")
    root = abs_root(root, "ava", "ava", _LAYOUT)
    ann = root / "annotations"
    gt_csv = _find(ann, f"ava_{split}_v2.2.csv")
    if gt_csv is None:
        raise layout_error("ava", "ava", root, f"annotations/ava_{split}_v2.2.csv ({_LAYOUT})")
    if labelmap is None:
        found = _find(ann, LABELMAP_60, LABELMAP_80)
        if found is None:
            raise layout_error("ava", "ava", root, f"annotations/{LABELMAP_60} or {LABELMAP_80}")
        labelmap = str(found)
    class_ids, class_names = read_labelmap(labelmap)
    exc_csv = _find(ann, f"ava_{split}_excluded_timestamps_v2.2.csv")
    excluded = read_exclusions(exc_csv) if exc_csv else set()

    gt_rows = read_rows(gt_csv, kind="groundtruth")
    _check_timestamps(gt_rows, gt_csv)
    gt = _group(gt_rows)
    listed = sorted({vid for vid, _ in gt})
    media = root / "videos_15min"
    files = index_video_files(media if media.is_dir() else root)
    videos = {v: os.path.abspath(files[v]) for v in listed if v in files}
    missing = [v for v in listed if v not in videos]
    if missing:
        log.warning("ava: %d of %d listed %s videos have no file (e.g. %s)", len(missing),
                    len(listed), split, ", ".join(missing[:3]))
    bad = _drop_undecodable(videos) if skip_bad else []
    if bad:
        log.warning("ava: skipping %d undecodable videos: %s", len(bad),
                    "; ".join(f"{p} ({why})" for p, why in bad[:3]))
    if not videos:
        raise DataError(f"ava: none of the {len(listed)} videos listed in {gt_csv} is usable "
                        f"({len(missing)} missing, {len(bad)} undecodable); expected "
                        f"{media}/<video_id>.mp4")
    # Without videos_15min/ the files may be full movies: probe them rather than read every
    # keyframe 900 s early (files under videos_15min/ are trusted to be the 900-1800 s cuts).
    full = set() if media.is_dir() else _uncut(videos)
    if full:
        log.info("ava: %d of %d %s videos are full movies (longer than %d s): keyframes are read "
                 "at their own timestamp in them", len(full), len(videos), split, UNCUT_MIN_S)

    column = {cid: j for j, cid in enumerate(class_ids)}
    k = len(class_ids)
    proposals: dict[tuple[str, int], list[AVARow]] = {}
    if boxes == "proposals":
        prop_csv = _find(ann, f"ava_{split}_predicted_boxes.csv")
        if prop_csv is None:
            raise layout_error("ava", "ava", root, f"annotations/ava_{split}_predicted_boxes.csv "
                                                   f"(person proposals) for boxes='proposals'")
        proposals = _group(r for r in read_rows(prop_csv, kind="proposals")
                           if r.box is not None and r.score is not None
                           and r.score >= score_threshold)
    keyframes, empty = [], 0
    for key in sorted(gt):
        vid, ts = key
        if vid not in videos or key in excluded:
            continue
        if boxes == "groundtruth":
            b, lab, sc = _persons(gt[key], column, k)
            if not len(b):
                empty += 1
                continue
        else:
            props = _unique_boxes(proposals.get(key, []))
            b = np.array([r.box for r in props], np.float32).reshape(-1, 4)
            lab = np.zeros((len(props), k), np.float32)
            sc = np.array([r.score for r in props], np.float32)
        offset = 0 if vid in full else AVA_CUT_S
        keyframes.append(AVAKeyframe(vid, ts, videos[vid], float(ts - offset), b, lab, sc))
    if empty:
        log.info("ava: %d %s keyframes have no person with an action in the label map; dropped",
                 empty, split)
    records = [VideoRecord(videos[v], v, label=v) for v in sorted(videos)]  # type: ignore[arg-type]
    return AVASplit(keyframes, class_ids, class_names, records, num_listed=len(listed),
                    num_used=len(videos), groundtruth_csv=str(gt_csv),
                    exclusions_csv=str(exc_csv) if exc_csv else None, labelmap=str(labelmap),
                    missing=missing, bad=bad)
