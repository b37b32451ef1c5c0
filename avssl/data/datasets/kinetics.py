"""Kinetics-style CSV datasets (Kinetics-400/600/700 and anything laid out like them).

Expected layout::

    root/train.csv, root/validate.csv (or val.csv), root/test.csv
        label,youtube_id,time_start,time_end,split[,is_cc]   (test: no label / empty label)
    clip files <youtube_id>_<start:06d>_<end:06d>.mp4 anywhere under root: flat, per-label
    (root/train/<label>/...) or per-split/per-label folders

Gotchas handled (DATASETS.md): multi-word labels are double-quoted (and may hold commas);
YouTube ids must match ``^[A-Za-z0-9_-]{11}$`` (spreadsheet-damaged rows are counted in
``ds.invalid_rows`` and dropped); videos vanish from YouTube, so files are looked up by name in an
index of the whole tree built once, and ``ds.num_used`` / ``ds.num_listed`` report found vs
listed. Labels: the sorted label names of ``train.csv`` (the usual Kinetics class order), 0-based.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from avssl.csvfiles import read_text_csv
from avssl.data.datasets.base import ClipDataset, VideoRecord
from avssl.data.datasets.layout import (
    YOUTUBE_ID,
    abs_root,
    check_split,
    default_mode,
    index_video_files,
    layout_error,
)
from avssl.errors import DataError

log = logging.getLogger(__name__)

_EXPECTED = "train.csv / validate.csv / test.csv (label,youtube_id,time_start,time_end,split)"
_CSV_NAMES = {"train": ("train.csv",), "val": ("validate.csv", "val.csv"), "test": ("test.csv",)}


def _find_csv(root: Path, split: str) -> Path | None:
    for name in _CSV_NAMES[split]:
        for folder in (root, root / "annotations"):
            if (folder / name).is_file():
                return folder / name
    return None


def read_kinetics_csv(path: str | os.PathLike) -> pd.DataFrame:
    """The CSV as strings; a missing ``label`` column (test CSVs) becomes empty labels."""
    df = read_text_csv(path, "the columns label,youtube_id,time_start,time_end,split")
    df.columns = [c.strip() for c in df.columns]
    missing = {"youtube_id", "time_start", "time_end"} - set(df.columns)
    if missing:
        raise DataError(f"{path}: expected columns label,youtube_id,time_start,time_end,split; "
                        f"missing {', '.join(sorted(missing))}")
    if "label" not in df.columns:
        df["label"] = ""
    return df


def clip_name(youtube_id: str, start: float, end: float) -> str:
    """``<youtube_id>_<start:06d>_<end:06d>``: the file stem of a downloaded Kinetics clip."""
    return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}"


def kinetics(
    root: str | os.PathLike,
    split: str = "train",
    *,
    mode: str | None = None,
    **kw: Any,
) -> ClipDataset:
    """A Kinetics-style split (``train``, ``val`` or ``test``) as a :class:`ClipDataset`.

    ``ds.invalid_rows`` counts rows with a malformed YouTube id or time; ``ds.num_used`` vs
    ``ds.num_listed`` gives videos found vs listed. ``mode`` defaults to ``train`` for the train
    split and ``eval`` otherwise; other keyword arguments go to :class:`ClipDataset`.
    """
    split = "val" if split == "validate" else split
    check_split("kinetics", split, tuple(_CSV_NAMES))
    root = abs_root(root, "kinetics", "kinetics", _EXPECTED)
    csv = _find_csv(root, split)
    if csv is None:
        raise layout_error("kinetics", "kinetics", root,
                           f"{' or '.join(_CSV_NAMES[split])} ({_EXPECTED})")
    df = read_kinetics_csv(csv)
    train_csv = _find_csv(root, "train")
    names = read_kinetics_csv(train_csv)["label"] if train_csv is not None else df["label"]
    classes = sorted({n for n in names if n})
    lookup = {c: i for i, c in enumerate(classes)}

    files = index_video_files(root)
    records, invalid, unknown = [], 0, 0
    for row in df.itertuples(index=False):
        ytid = row.youtube_id.strip()
        try:
            stem = clip_name(ytid, row.time_start, row.time_end)
        except (ValueError, OverflowError):  # int(float("inf")) overflows
            stem = None
        if stem is None or not YOUTUBE_ID.match(ytid):
            invalid += 1
            continue
        label = None
        if row.label:
            if row.label not in lookup:
                unknown += 1
                continue
            label = lookup[row.label]
        path = files.get(stem) or str(root / split / (row.label or "") / f"{stem}.mp4")
        records.append(VideoRecord(path, stem, label, {"youtube_id": ytid, "split": split}))
    if invalid or unknown:
        log.warning("kinetics %s: dropped %d rows with a malformed YouTube id or time and %d "
                    "with a label missing from train.csv (of %d rows in %s)",
                    split, invalid, unknown, len(df), csv.name)
    # dropped rows are listed videos too: "used N of M listed" must count them (DATASETS.md)
    return ClipDataset(records, mode=default_mode(mode, split == "train"), class_names=classes,
                       name=f"kinetics-{split}", invalid_rows=invalid + unknown, **kw)
