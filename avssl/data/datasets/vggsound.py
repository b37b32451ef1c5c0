"""VGGSound (309 classes of 10 s YouTube clips with the sound source visible).

Expected layout::

    root/vggsound.csv   headerless: ytid,start_seconds,label,split   (split: train / test)
    clip files <ytid>_<start:06d>.mp4 anywhere under root (usually root/video/)

Labels contain commas and are quoted ("people marching, walking"); ids are validated with
``^[A-Za-z0-9_-]{11}$`` (bad rows counted in ``ds.invalid_rows``); missing clips are reported as
found vs listed. Labels: sorted label names over the whole CSV (both splits), 0-based.
"""
from __future__ import annotations

import logging
import os
from typing import Any

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

_EXPECTED = "vggsound.csv (headerless ytid,start_seconds,label,split) and <ytid>_<start:06d>.mp4"


def vggsound(
    root: str | os.PathLike,
    split: str = "train",
    *,
    mode: str | None = None,
    **kw: Any,
) -> ClipDataset:
    """The ``train`` or ``test`` rows of ``vggsound.csv`` as a :class:`ClipDataset`."""
    check_split("vggsound", split, ("train", "test"))
    root = abs_root(root, "vggsound", "vggsound", _EXPECTED)
    csv = root / "vggsound.csv"
    if not csv.is_file():
        raise layout_error("vggsound", "vggsound", root, _EXPECTED)
    df = read_text_csv(csv, "headerless rows ytid,start_seconds,label,split", header=False)
    if df.shape[1] != 4:
        raise DataError(f"{csv}: expected 4 headerless columns ytid,start_seconds,label,split, "
                        f"got {df.shape[1]}")
    df.columns = ["ytid", "start", "label", "split"]
    classes = sorted({label for label in df["label"] if label})
    lookup = {c: i for i, c in enumerate(classes)}

    files = index_video_files(root)
    # a row without a train/test split (a truncated line) belongs to neither list: counted as an
    # invalid row of both, so that it cannot vanish from "used N of M listed"
    splits = df["split"].fillna("").str.strip()
    records, invalid = [], int((~splits.isin(["train", "test"])).sum())
    for row in df[splits == split].itertuples(index=False):
        ytid = row.ytid.strip()
        try:
            stem = f"{ytid}_{int(float(row.start)):06d}"
        except (ValueError, OverflowError):  # int(float("inf")) overflows
            stem = None
        if stem is None or not YOUTUBE_ID.match(ytid) or row.label not in lookup:
            invalid += 1
            continue
        path = files.get(stem) or str(root / "video" / f"{stem}.mp4")
        records.append(VideoRecord(path, stem, lookup[row.label], {"youtube_id": ytid}))
    if invalid:
        log.warning("vggsound %s: dropped %d rows with a malformed id, time, label or split",
                    split, invalid)
    # dropped rows are listed videos too (found vs listed)
    return ClipDataset(records, mode=default_mode(mode, split == "train"), class_names=classes,
                       name=f"vggsound-{split}", invalid_rows=invalid, **kw)
