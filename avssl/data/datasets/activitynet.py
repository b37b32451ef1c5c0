"""ActivityNet-1.3 temporal action localization (200 classes; evaluated on validation).

Expected layout (synthetic stand-in: ``python -m avssl.data.synthetic --layout activitynet``)::

    root/activity_net.v1-3.min.json   {"version", "taxonomy", "database": {id: {"subset",
                                       "duration", "url", "annotations": [{"segment": [s, e],
                                       "label": ...}]}}}
    root/videos/v_<id>.mp4            (or <id>.mp4; any VIDEO_EXTENSIONS, found by stem)

Database ids are the 11-character YouTube ids (many start with "-"); downloads in the wild name
files either way. ``duration`` comes from the JSON, so nothing is probed. Classes are the labels of
the whole database (all subsets), sorted, so every subset shares one class index.
"""
from __future__ import annotations

import json
import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any

from avssl.data.datasets.layout import abs_root, index_video_files, layout_error
from avssl.data.datasets.untrimmed import UntrimmedVideos, build_untrimmed
from avssl.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ANNOTATION_FILES = ("activity_net.v1-3.min.json", "activity_net.v1-3.json")
_SUBSETS = {"training": "training", "train": "training", "validation": "validation",
            "val": "validation", "testing": "testing", "test": "testing"}


def _subset(subset: str) -> str:
    name = _SUBSETS.get(str(subset).lower())
    if name is None:
        raise ConfigError(f"activitynet: subset must be 'training', 'validation' or 'testing', "
                          f"got {subset!r}")
    return name


def segment_bounds(value: Any, where: str) -> tuple[float, float]:
    """``(start, end)`` of an ActivityNet ``"segment"``: a list of two finite numbers, else a
    DataError naming ``where`` (a string such as "12" would otherwise iterate as 1.0, 2.0)."""
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in value)):
        try:
            start, end = float(value[0]), float(value[1])
        except OverflowError:  # an integer too large for a float
            start = end = math.inf
        if math.isfinite(start) and math.isfinite(end):  # json reads NaN / Infinity too
            return start, end
    raise DataError(f'{where}: expected "segment": [start, end], two finite numbers (seconds), '
                    f"got {value!r:.80}")


def read_activitynet(path: str | os.PathLike, subset: str = "validation") -> dict:
    """Parse an ActivityNet-1.3 JSON into ``{"segments": [{"video", "start", "end", "label"}],
    "ambiguous": [], "classes": sorted labels of the whole database, "videos": sorted ids of the
    subset, "durations": {id: seconds}}`` (``video`` is the database id)."""
    want = _subset(subset)
    path = Path(path)
    if not path.is_file():
        raise layout_error("activitynet", "activitynet", path.parent,
                           f"an ActivityNet-1.3 JSON ({path.name})")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({exc}); expected ActivityNet-1.3 "
                        f"'{{\"version\", \"taxonomy\", \"database\"}}'") from None
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise DataError(f"{path}: expected an ActivityNet-1.3 JSON with a 'database' object "
                        f"mapping video ids to entries")
    classes: set[str] = set()
    segments, videos, durations = [], [], {}
    for vid, entry in database.items():
        try:
            anns = entry.get("annotations") or []
            labels = [str(a["label"]) for a in anns]
            classes.update(labels)
            if entry.get("subset", "").lower() != want:
                continue
            videos.append(vid)
            if entry.get("duration") is not None:
                durations[vid] = float(entry["duration"])
            for a, label in zip(anns, labels):
                where = f"{path}: malformed database entry {vid!r}"
                start, end = segment_bounds(a["segment"], where)
                segments.append({"video": vid, "start": start, "end": end, "label": label})
        except (AttributeError, KeyError, TypeError, ValueError):
            raise DataError(f"{path}: malformed database entry {vid!r}; expected {{\"subset\", "
                            f"\"duration\", \"annotations\": [{{\"segment\": [s, e], "
                            f"\"label\"}}]}}") from None
    return {"segments": segments, "ambiguous": [], "classes": sorted(classes),
            "videos": sorted(videos), "durations": durations}


def _annotation_file(root: Path) -> Path:
    for name in ANNOTATION_FILES:
        if (root / name).is_file():
            return root / name
    raise layout_error("activitynet", "activitynet", root,
                       "activity_net.v1-3.min.json and videos/v_<id>.mp4")


def activitynet(root: str | os.PathLike, subset: str = "validation", *, skip_bad: bool = False,
                **kw: Any) -> UntrimmedVideos:
    """ActivityNet-1.3 ``subset`` (``"training"``, ``"validation"``, ``"testing"``) as
    :class:`UntrimmedVideos`; ``class_index`` indexes the sorted labels of the whole database.
    ``skip_bad`` probes every file and drops undecodable ones. Other keyword arguments are
    accepted and ignored (the benchmark passes the same ones to every loader)."""
    if kw:
        log.debug("activitynet: ignoring options %s", sorted(kw))
    root = abs_root(root, "activitynet", "activitynet",
                    "activity_net.v1-3.min.json and videos/v_<id>.mp4")
    parsed = read_activitynet(_annotation_file(root), subset)
    videos = root / "videos"
    stems = index_video_files(videos if videos.is_dir() else root)
    files = {}
    for vid in parsed["videos"]:
        path = stems.get(f"v_{vid}") or stems.get(vid)
        if path is not None:
            files[vid] = path
    return build_untrimmed(parsed, files, name="activitynet", subset=_subset(subset),
                           durations=parsed["durations"], skip_bad=skip_bad)
