"""Small helpers the loaders share to read real dataset layouts (index files, file lookup).

Kept apart from :mod:`.base` because they deal with files on disk and their quirks (CRLF lines,
YouTube ids, clips scattered over per-label folders), not with clips.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from avssl.data.manifest import VIDEO_EXTENSIONS, find_videos  # noqa: F401 (re-exported)
from avssl.errors import ConfigError, DataError

# YouTube ids are 11 characters of [A-Za-z0-9_-]; many start with "-", which spreadsheets mangle.
YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")


def layout_error(dataset: str, layout: str, root: str | os.PathLike, expected: str) -> DataError:
    """The one-line error for a missing root or index file, with the command for a stand-in."""
    return DataError(
        f"{dataset}: expected {expected} under {root}; download the dataset there or write a "
        f"synthetic stand-in with `python -m avssl.data.synthetic --layout {layout} --out DIR`"
    )


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty, stripped lines; CRLF, CR and LF endings, a BOM and trailing spaces accepted."""
    with open(path, encoding="utf-8-sig", errors="replace", newline=None) as f:
        return [line.strip() for line in f if line.strip()]


def index_video_files(root: str | os.PathLike) -> dict[str, str]:
    """Map file stem -> path for every video file under ``root`` (one walk, sorted, first wins).

    Clips may sit flat, in per-label or in per-split/per-label folders; looking them up by name in
    this index works for all of them without guessing the folder layout.
    """
    found: dict[str, str] = {}
    for rel in find_videos(root):  # the manifest scan's walk: follows links, skips hidden files
        found.setdefault(Path(rel).stem, os.path.join(root, *rel.split("/")))
    return found


def default_mode(mode: str | None, train: bool) -> str:
    """``mode`` or, when omitted, ``train`` for training splits and ``eval`` otherwise."""
    return mode if mode is not None else ("train" if train else "eval")


def check_split(dataset: str, split: object, allowed: tuple) -> None:
    if split not in allowed:
        raise ConfigError(
            f"{dataset}: split must be one of {', '.join(map(str, allowed))}, got {split!r}"
        )


def abs_root(root: str | os.PathLike | None, dataset: str, layout: str, expected: str) -> Path:
    """The absolute root, or a :class:`DataError` when it is missing or not a folder."""
    if root is None or not Path(root).is_dir():
        raise layout_error(dataset, layout, root, expected)
    return Path(root).resolve()
