"""``UntrimmedVideo`` / ``UntrimmedVideos``: what the THUMOS14 and ActivityNet loaders return.

Temporal action localization works on whole, untrimmed videos: the benchmark slides its own
windows over each video, so these loaders decode nothing. A record holds the absolute path, the
annotated segments ``(start_s, end_s, class_index)`` and the duration (from the annotations when
they give it, else probed lazily with :func:`avssl.data.decoding.probe` on first access).

Failure behaviour (DESIGN.md): videos listed in the annotations without a file on disk are dropped
with a warning and counted (``num_listed``, ``num_used``, ``missing``, :meth:`report`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from avssl.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class UntrimmedVideo:
    """One untrimmed video. ``segments``: ``[(start_s, end_s, class_index)]`` sorted by start;
    ``ambiguous``: ``[(start_s, end_s)]`` (THUMOS14's Ambiguous_*.txt; empty for ActivityNet)."""

    path: str
    video_id: str
    segments: list[tuple[float, float, int]] = field(default_factory=list)
    ambiguous: list[tuple[float, float]] = field(default_factory=list)
    known_duration_s: float | None = None

    @property
    def duration_s(self) -> float:
        """Seconds: the annotated duration, else the file's (probed once, then remembered)."""
        if self.known_duration_s is None:
            from avssl.data.decoding import probe  # codec libraries load only when needed

            self.known_duration_s = float(probe(self.path).duration_s)
        return self.known_duration_s


class UntrimmedVideos(Sequence[UntrimmedVideo]):
    """A list of :class:`UntrimmedVideo` (only those whose file exists) plus what was dropped.

    ``class_names[k]`` names ``class_index`` k; ``num_listed`` counts annotated videos,
    ``num_used`` those with a file, ``missing`` the paths (or ids) of the others.
    """

    def __init__(self, records: list[UntrimmedVideo], class_names: list[str], *, name: str,
                 missing: list[str] | None = None, subset: str = "") -> None:
        self.name = name
        self.subset = subset
        self.class_names = list(class_names)
        self.records = list(records)
        self.missing = list(missing or [])
        self.num_listed = len(self.records) + len(self.missing)
        if self.missing:
            shown = ", ".join(self.missing[:3]) + (", ..." if len(self.missing) > 3 else "")
            log.warning("%s: found %d of %d listed videos (missing: %s)",
                        name, len(self.records), self.num_listed, shown)
        if not self.records:
            raise DataError(f"{name}: none of the {self.num_listed} annotated {subset} videos has "
                            f"a file; check the data root and its videos/ folder")

    @property
    def num_used(self) -> int:
        return len(self.records)

    def report(self) -> str:
        """One line for logs and leaderboard rows: videos used vs listed."""
        return (f"{self.name}: using {self.num_used} of {self.num_listed} listed videos "
                f"({len(self.missing)} missing)")

    @property
    def video_ids(self) -> list[str]:
        return [r.video_id for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):  # type: ignore[override]
        return self.records[i]

    def __iter__(self) -> Iterator[UntrimmedVideo]:
        return iter(self.records)

    def __repr__(self) -> str:
        return (f"UntrimmedVideos({self.name!r}, subset={self.subset!r}, videos={self.num_used}, "
                f"classes={len(self.class_names)})")


def build_untrimmed(parsed: dict, files: dict[str, str], *, name: str, subset: str,
                    durations: dict[str, float] | None = None) -> UntrimmedVideos:
    """Turn a parser's dict (``segments``, ``ambiguous``, ``classes``, ``videos``) into records.

    ``files`` maps a video id to its path; ids without a path are counted missing.
    """
    index = {c: k for k, c in enumerate(parsed["classes"])}
    segs: dict[str, list[tuple[float, float, int]]] = {v: [] for v in parsed["videos"]}
    amb: dict[str, list[tuple[float, float]]] = {v: [] for v in parsed["videos"]}
    for s in parsed["segments"]:
        segs[s["video"]].append((float(s["start"]), float(s["end"]), index[s["label"]]))
    for s in parsed["ambiguous"]:
        amb.setdefault(s["video"], []).append((float(s["start"]), float(s["end"])))
    records, missing = [], []
    for vid in parsed["videos"]:
        path = files.get(vid)
        if path is None:
            missing.append(vid)
            continue
        records.append(UntrimmedVideo(os.path.abspath(path), vid, sorted(segs[vid]),
                                      sorted(amb.get(vid, [])),
                                      (durations or {}).get(vid)))
    return UntrimmedVideos(records, parsed["classes"], name=name, missing=missing, subset=subset)
