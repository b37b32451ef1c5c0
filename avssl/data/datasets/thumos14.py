"""THUMOS14 temporal action localization (20 classes; train on validation, test on test).

Expected layout (synthetic stand-in: ``python -m avssl.data.synthetic --layout thumos14``)::

    root/videos/video_validation_0000051.mp4   (any VIDEO_EXTENSIONS, found by stem, any depth)
    root/videos/video_test_0000004.mp4
    root/annotations/validation/<Class>_val.txt    "video_validation_0000051  67.5 75.9"
    root/annotations/validation/Ambiguous_val.txt
    root/annotations/test/<Class>_test.txt
    root/annotations/test/Ambiguous_test.txt

The real kit's folder names are accepted too: ``TH14_Temporal_annotations_validation/annotation/``
and ``TH14_Temporal_Annotations_Test/annotations/annotation/``; without a ``videos/`` folder the
whole root is searched for files (the kit ships ``validation/`` and ``TH14_test_set_mp4/``).

Annotation lines are ``video_name  start end`` (two spaces after the name in the real files); any
whitespace, CRLF, a BOM and blank lines are accepted. Only videos with a segment in a class file
are listed: ``Ambiguous_*.txt`` only marks regions to ignore, so a video named there alone is not
(of the real test set's 1,574 videos, 213 appear in the annotation files but one,
video_test_0001292, only in ``Ambiguous_test.txt``; evaluation uses the other 212, as DATASETS.md
and ActionFormer's ``thumos14.json`` do).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from avssl.data.datasets.layout import abs_root, index_video_files, layout_error
from avssl.data.datasets.untrimmed import UntrimmedVideos, build_untrimmed
from avssl.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# (UCF101 id, name): the ids submissions use for the 20 THUMOS14 classes (DATASETS.md).
THUMOS14_CLASSES: list[tuple[int, str]] = [
    (7, "BaseballPitch"), (9, "BasketballDunk"), (12, "Billiards"), (21, "CleanAndJerk"),
    (22, "CliffDiving"), (23, "CricketBowling"), (24, "CricketShot"), (26, "Diving"),
    (31, "FrisbeeCatch"), (33, "GolfSwing"), (36, "HammerThrow"), (40, "HighJump"),
    (45, "JavelinThrow"), (51, "LongJump"), (68, "PoleVault"), (79, "Shotput"),
    (85, "SoccerPenalty"), (92, "TennisSwing"), (93, "ThrowDiscus"), (97, "VolleyballSpiking"),
]
THUMOS14_CLASS_NAMES: list[str] = [name for _, name in THUMOS14_CLASSES]

# subset name -> file-name suffix of the real kit (<Class>_val.txt, <Class>_test.txt)
_SUFFIX = {"validation": "val", "val": "val", "test": "test"}
_ANNOTATION_DIRS = {
    "val": ["annotations/validation", "annotations/val", "annotations",
            "TH14_Temporal_annotations_validation/annotation",
            "TH14_Temporal_annotations_validation/annotations/annotation"],
    "test": ["annotations/test", "annotations",
             "TH14_Temporal_Annotations_Test/annotations/annotation",
             "TH14_Temporal_annotations_test/annotations/annotation",
             "TH14_Temporal_Annotations_Test/annotation"],
}


def _suffix(subset: str) -> str:
    suffix = _SUFFIX.get(str(subset).lower())
    if suffix is None:
        raise ConfigError(f"thumos14: subset must be 'validation' or 'test', got {subset!r}")
    return suffix


def _read_segments(path: Path) -> list[tuple[str, float, float]]:
    """``(video, start, end)`` of each line; DataError naming ``file:line`` when malformed."""
    out = []
    with open(path, encoding="utf-8-sig", errors="replace", newline=None) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) != 3:
                    raise ValueError
                start, end = float(parts[1]), float(parts[2])
                if not (math.isfinite(start) and math.isfinite(end)):
                    raise ValueError  # float() reads 'nan' / 'inf': never a real segment
            except ValueError:
                raise DataError(f"{path}:{lineno}: expected 'video_name  start end' (seconds), "
                                f"got {line.strip()!r}") from None
            if end < start:  # the official kit's overlap reads [min, max] of each segment, so
                # the segment still counts (and can match); skipping it would inflate AP
                log.warning("%s:%d: segment ends before it starts (%s); read as [%s, %s] as the "
                            "THUMOS14 evaluation kit does", path, lineno, line.strip(), end, start)
                start, end = end, start
            out.append((parts[0], start, end))
    return out


def read_thumos14_annotations(folder: str | os.PathLike, subset: str = "test") -> dict:
    """Parse a THUMOS14 annotation folder (``<Class>_<val|test>.txt`` + ``Ambiguous_*.txt``).

    ``subset``: ``"test"``, ``"validation"`` or ``"val"``. Returns ``{"segments": [{"video",
    "start", "end", "label"}], "ambiguous": [{"video", "start", "end"}], "classes": the 20 names
    in UCF101-id order, "videos": sorted names of every video with a segment in a class file}``
    (a video that only ``Ambiguous_*.txt`` names is not in the subset). A class without a file
    counts as having no segment; a folder with no class file at all raises :class:`DataError`.
    """
    suffix = _suffix(subset)
    folder = Path(folder)
    expected = f"<Class>_{suffix}.txt per class"
    if not folder.is_dir():
        raise layout_error("thumos14", "thumos14", folder, expected)
    files = {name: folder / f"{name}_{suffix}.txt" for name in THUMOS14_CLASS_NAMES}
    present = {name: p for name, p in files.items() if p.is_file()}
    if not present:
        raise layout_error("thumos14", "thumos14", folder, expected)
    if len(present) < len(files):
        log.info("thumos14: %s has no file for %d classes (%s, ...): they have no segments",
                 folder, len(files) - len(present), next(n for n in files if n not in present))
    segments = [{"video": v, "start": s, "end": e, "label": name}
                for name, path in present.items() for v, s, e in _read_segments(path)]
    amb_path = folder / f"Ambiguous_{suffix}.txt"
    ambiguous = ([{"video": v, "start": s, "end": e} for v, s, e in _read_segments(amb_path)]
                 if amb_path.is_file() else [])
    # The subset is the videos with a class segment: Ambiguous_*.txt only marks regions to
    # ignore, and a video listed there alone is not evaluated by the official protocol.
    videos = sorted({s["video"] for s in segments})
    return {"segments": segments, "ambiguous": ambiguous, "classes": list(THUMOS14_CLASS_NAMES),
            "videos": videos}


def find_annotation_folder(root: str | os.PathLike, subset: str) -> Path:
    """The folder under ``root`` that holds the subset's ``<Class>_<suffix>.txt`` files."""
    suffix = _suffix(subset)
    root = Path(root)
    for rel in _ANNOTATION_DIRS[suffix]:
        folder = root / rel
        if folder.is_dir() and any(folder.glob(f"*_{suffix}.txt")):
            return folder
    raise layout_error("thumos14", "thumos14", root,
                       f"annotations/{'validation' if suffix == 'val' else 'test'}/"
                       f"<Class>_{suffix}.txt (or the kit's TH14_Temporal_annotations_* folders)")


def thumos14(root: str | os.PathLike, subset: str = "test", *, skip_bad: bool = False,
             **kw: Any) -> UntrimmedVideos:
    """THUMOS14 ``subset`` (``"validation"`` to train, ``"test"`` to evaluate) as
    :class:`UntrimmedVideos`; ``class_index`` follows :data:`THUMOS14_CLASSES` order (0..19).
    Durations are probed lazily; ``skip_bad`` probes every file now and drops undecodable ones.
    Other keyword arguments are accepted and ignored (the benchmark passes the same ones to every
    loader)."""
    if kw:
        log.debug("thumos14: ignoring options %s", sorted(kw))
    root = abs_root(root, "thumos14", "thumos14",
                    "videos/*.mp4 and annotations/{validation,test}/<Class>_{val,test}.txt")
    parsed = read_thumos14_annotations(find_annotation_folder(root, subset), subset)
    videos = root / "videos"
    files = index_video_files(videos if videos.is_dir() else root)
    return build_untrimmed(parsed, files, name="thumos14", subset=_suffix(subset),
                           skip_bad=skip_bad)
