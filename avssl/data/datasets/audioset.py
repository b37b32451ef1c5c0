"""AudioSet segments (527 classes, multi-label, 10 s YouTube clips).

Expected layout::

    root/class_labels_indices.csv               index,mid,display_name   (with header)
    root/{balanced_train,unbalanced_train,eval}_segments.csv
        three "#" lines, then: YTID, start_seconds, end_seconds, "mid1,mid2"   (", " separated)
    clip files anywhere under root, named <ytid>_<start:06d>.mp4 (VGGSound style; the synthetic
    writer's choice), <ytid>_<start:06d>_<end:06d>.mp4 (Kinetics style), <ytid>_<start_ms>.mp4,
    Y<ytid>.mp4 or <ytid>.mp4 — the first that exists is used. The last two are whole videos:
    clips are drawn from the labelled start..end only (``extra["segment_s"]``).

Labels are multi-hot float tensors ``(num_classes,)`` in ``class_labels_indices.csv`` order.
Rows with a malformed id or time, or with no known label, are counted in ``ds.invalid_rows``;
missing clips are reported as found vs listed.
"""
from __future__ import annotations

import logging
import math
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

SPLITS = ("balanced_train", "unbalanced_train", "eval")
_EXPECTED = "class_labels_indices.csv and <split>_segments.csv (YTID, start, end, \"mids\")"


def read_class_labels(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``(mids, display_names)`` in index order from ``class_labels_indices.csv``."""
    df = read_text_csv(path, "the header index,mid,display_name")
    if not {"index", "mid", "display_name"} <= set(df.columns):
        raise DataError(f"{path}: expected the header index,mid,display_name")
    try:
        df = df.assign(index=df["index"].astype(int)).sort_values("index")
    except ValueError:
        raise DataError(f"{path}: expected integer indices in the column 'index' of "
                        f"index,mid,display_name") from None
    return list(df["mid"]), list(df["display_name"])


def read_segments(path: str | os.PathLike) -> pd.DataFrame:
    """Columns ``ytid, start, end, mids`` (strings) of an AudioSet segments CSV."""
    df = read_text_csv(path, "'#' header lines, then rows 'YTID, start, end, \"mid1,mid2\"'",
                        header=False, skip_comments=True)
    if df.shape[1] != 4:
        raise DataError(f"{path}: expected rows 'YTID, start, end, \"mid1,mid2\"', got "
                        f"{df.shape[1]} columns")
    df.columns = ["ytid", "start", "end", "mids"]
    return df


def _candidates(ytid: str, start: float, end: float) -> list[str]:
    return [f"{ytid}_{int(start):06d}", f"{ytid}_{int(start):06d}_{int(end):06d}",
            f"{ytid}_{int(round(start * 1000))}", f"Y{ytid}", ytid]


def audioset(
    root: str | os.PathLike,
    split: str = "balanced_train",
    *,
    mode: str | None = None,
    **kw: Any,
) -> ClipDataset:
    """An AudioSet segments split as a multi-label :class:`ClipDataset`."""
    check_split("audioset", split, SPLITS)
    root = abs_root(root, "audioset", "audioset", _EXPECTED)
    classes_csv, csv = root / "class_labels_indices.csv", root / f"{split}_segments.csv"
    for needed in (classes_csv, csv):
        if not needed.is_file():
            raise layout_error("audioset", "audioset", root,
                               _EXPECTED + f" (missing {needed.name})")
    mids, names = read_class_labels(classes_csv)
    lookup = {m: i for i, m in enumerate(mids)}

    files = index_video_files(root)
    records, invalid = [], 0
    for row in read_segments(csv).itertuples(index=False):
        ytid = row.ytid.strip()
        labels = sorted({lookup[m.strip()] for m in row.mids.split(",") if m.strip() in lookup})
        try:
            start, end = float(row.start), float(row.end)
        except ValueError:
            start = end = None
        if (start is None or not (math.isfinite(start) and math.isfinite(end))
                or not YOUTUBE_ID.match(ytid) or not labels):
            invalid += 1
            continue
        names_tried = _candidates(ytid, start, end)
        path = next((files[n] for n in names_tried if n in files),
                    str(root / "video" / f"{names_tried[0]}.mp4"))
        extra = {"youtube_id": ytid, "segment_start_s": start, "segment_end_s": end}
        if Path(path).stem in names_tried[-2:]:  # Y<ytid> / <ytid>: the whole video, not the clip
            extra["segment_s"] = (start, end)
        records.append(VideoRecord(path, names_tried[0], labels, extra))
    if invalid:
        log.warning("audioset %s: dropped %d rows with a malformed id or time or no known label",
                    split, invalid)
    # dropped rows are listed videos too (found vs listed)
    return ClipDataset(records, mode=default_mode(mode, split != "eval"), class_names=names,
                       name=f"audioset-{split}", invalid_rows=invalid, **kw)
