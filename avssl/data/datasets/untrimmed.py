"""``UntrimmedVideo`` / ``UntrimmedVideos``: what the THUMOS14 and ActivityNet loaders return.

Temporal action localization works on whole, untrimmed videos: the benchmark slides its own
windows over each video, so these loaders decode nothing. A record holds the absolute path, the
annotated segments ``(start_s, end_s, class_index)`` and the duration (from the annotations when
they give it, else probed lazily with :func:`avssl.data.decoding.probe` on first access).

Failure behaviour (DESIGN.md): videos listed in the annotations without a file on disk are dropped
with a warning and counted (``num_listed``, ``num_used``, ``missing``, :meth:`report`). With
``skip_bad=True`` every file is probed up front and undecodable ones are dropped the same way
(``bad``); without it an undecodable file stops the benchmark with an error naming it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from avssl.errors import DataError, DecodeError

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
    """A list of :class:`UntrimmedVideo` (only those whose file exists and, with ``skip_bad``,
    decodes) plus what was dropped.

    ``class_names[k]`` names ``class_index`` k; ``num_listed`` counts annotated videos,
    ``num_used`` those used, ``missing`` the ids of those without a file, ``bad`` the
    ``(path, reason)`` of those that did not decode.
    """

    def __init__(self, records: list[UntrimmedVideo], class_names: list[str], *, name: str,
                 missing: list[str] | None = None, subset: str = "",
                 bad: list[tuple[str, str]] | None = None) -> None:
        self.name = name
        self.subset = subset
        self.class_names = list(class_names)
        self.records = list(records)
        self.missing = list(missing or [])
        self.bad = list(bad or [])
        self.num_listed = len(self.records) + len(self.missing) + len(self.bad)
        if self.missing:
            shown = ", ".join(self.missing[:3]) + (", ..." if len(self.missing) > 3 else "")
            log.warning("%s: found %d of %d listed videos (missing: %s)",
                        name, self.num_listed - len(self.missing), self.num_listed, shown)
        if self.bad:
            log.warning("%s: skipping %d undecodable videos: %s", name, len(self.bad),
                        "; ".join(f"{p} ({why})" for p, why in self.bad[:3]))
        if not self.records:
            raise DataError(f"{name}: none of the {self.num_listed} annotated {subset} videos is "
                            f"usable ({len(self.missing)} missing, {len(self.bad)} undecodable); "
                            f"check the data root and its videos/ folder")

    @property
    def num_used(self) -> int:
        return len(self.records)

    def report(self) -> str:
        """One line for logs and leaderboard rows: videos used vs listed."""
        return (f"{self.name}: using {self.num_used} of {self.num_listed} listed videos "
                f"({len(self.missing)} missing, {len(self.bad)} undecodable)")

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
                    durations: dict[str, float] | None = None,
                    skip_bad: bool = False) -> UntrimmedVideos:
    """Turn a parser's dict (``segments``, ``ambiguous``, ``classes``, ``videos``) into records.

    ``files`` maps a video id to its path; ids without a path are counted missing. With
    ``skip_bad`` every file is probed and those that do not decode are dropped and counted in
    ``bad`` (the probe's duration is kept where ``durations`` gives none).
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
    records, bad = _drop_undecodable(records) if skip_bad else (records, [])
    return UntrimmedVideos(records, parsed["classes"], name=name, missing=missing, subset=subset,
                           bad=bad)


def _drop_undecodable(records: list[UntrimmedVideo]
                      ) -> tuple[list[UntrimmedVideo], list[tuple[str, str]]]:
    """``(records that probe, [(path, reason)] of those that do not)``."""
    from avssl.data.decoding import probe  # codec libraries load only when asked to probe

    kept, bad = [], []
    for r in records:
        try:
            info = probe(r.path)
        except DecodeError as err:
            bad.append((r.path, err.reason))
            continue
        if r.known_duration_s is None:  # spares the lazy probe a second open
            r.known_duration_s = float(info.duration_s)
        kept.append(r)
    return kept, bad
