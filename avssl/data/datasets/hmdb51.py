"""HMDB51 (51 classes, 3 splits of 70/30 videos per class).

Expected layout (the official download, unrarred)::

    root/hmdb51/<class>/<video>.avi        (class folders directly under root also work)
    root/testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt   "<video>.avi <id> "

Split files mark each video 1 = train, 2 = test, 0 = unused; lines may end in a trailing space and
file names contain ``!``, ``(``, ``)`` and ``&`` (used verbatim, never through a shell or glob).
Labels: the class names (taken from the split file names) **sorted with Python's ``sorted()``**,
0-based — HMDB51 ships no class index file, and this is the order torchvision and MMAction2 use.
Do not assume audio: many videos have none (their clips get silence and ``has_audio=False``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from avssl.data.datasets.base import ClipDataset, VideoRecord
from avssl.data.datasets.layout import abs_root, check_split, default_mode, layout_error, read_lines
from avssl.errors import DataError

_EXPECTED = "hmdb51/<class>/*.avi and testTrainMulti_7030_splits/<class>_test_split1.txt"
_SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<k>[123])\.txt$")


def hmdb51(
    root: str | os.PathLike,
    split: int = 1,
    train: bool = True,
    *,
    mode: str | None = None,
    **kw: Any,
) -> ClipDataset:
    """HMDB51 split ``split`` (1-3): the videos marked 1 (train) or 2 (test) in every class file.

    ``mode`` defaults to ``train`` for the train videos and ``eval`` for the test videos; other
    keyword arguments go to :class:`ClipDataset`.
    """
    check_split("hmdb51", split, (1, 2, 3))
    root = abs_root(root, "hmdb51", "hmdb51", _EXPECTED)
    splits = root / "testTrainMulti_7030_splits"
    if not splits.is_dir():
        raise layout_error("hmdb51", "hmdb51", root, _EXPECTED)
    files, every_class = {}, set()
    for f in splits.iterdir():
        m = _SPLIT_FILE.match(f.name)
        if m:
            every_class.add(m["cls"])
            if int(m["k"]) == split:
                files[m["cls"]] = f
    if not files:
        raise layout_error("hmdb51", "hmdb51", root, _EXPECTED + f" (no *_test_split{split}.txt)")
    # the class list is the union over the three splits: a class whose file for this split is
    # missing (a partial extraction) would otherwise vanish and shift every later label by one
    if lost := sorted(every_class - set(files)):
        raise DataError(f"hmdb51: {splits} lacks {lost[0]}_test_split{split}.txt"
                        + (f" and {len(lost) - 1} more" if len(lost) > 1 else "")
                        + "; the official folder holds 153 files, <class>_test_split{1,2,3}.txt "
                        "for each of the 51 classes")
    classes = sorted(files)
    videos = root / "hmdb51" if (root / "hmdb51").is_dir() else root
    wanted = "1" if train else "2"

    records = []
    for label, cls in enumerate(classes):
        for line in read_lines(files[cls]):
            name, _, mark = line.rpartition(" ")  # names have no spaces; the id is last
            if mark not in ("0", "1", "2") or not name:
                raise DataError(f"{files[cls]}: expected lines '<video>.avi <0|1|2>', got {line!r}")
            if mark == wanted:
                path = videos / cls / name.strip()
                records.append(VideoRecord(str(path), Path(name.strip()).stem, label,
                                           {"split": split, "class_folder": cls}))
    return ClipDataset(records, mode=default_mode(mode, train), class_names=classes,
                       name="hmdb51", **kw)
