"""Unlabeled videos for pretraining: every video file under a folder, or the rows of a manifest.

``folder_dataset("clips/")`` lists ``.mp4 .avi .mkv .webm .mov .m4v`` files (any case, any depth,
sorted). ``folder_dataset("manifest.csv")`` reads a manifest written by
``python -m avssl.data.manifest scan DIR --out manifest.csv``: durations, frame rates and
``has_audio`` come from it (no probing in the workers), and rows with ``decodable=false`` are
dropped and reported in ``ds.bad``. Relative manifest paths are relative to the manifest's own
folder (what the scan command writes, wherever ``--out`` is), unless ``root=`` names another
folder (for a manifest written relative to its scanned folder); absolute paths are kept.
``video_id`` is the path as listed (relative to the folder, or as written in the manifest)
without its extension.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from avssl.data.datasets.base import ClipDataset, VideoRecord
from avssl.data.datasets.layout import VIDEO_EXTENSIONS, layout_error
from avssl.data.manifest import find_videos  # the same walk as `manifest scan`: follows links
from avssl.errors import DataError


def folder_dataset(
    root_or_manifest_csv: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    mode: str = "train",
    skip_bad: bool | None = None,
    **kw: Any,
) -> ClipDataset:
    """A :class:`ClipDataset` over a folder of videos or a manifest CSV (no labels)."""
    src = Path(root_or_manifest_csv)
    if src.is_file() and src.suffix.lower() == ".csv":
        from avssl.data.manifest import read_manifest, resolve_paths

        rows = read_manifest(src).to_dict("records")
        paths = resolve_paths([row["path"] for row in rows], src, root=root)
        records = []
        for row, path in zip(rows, paths):
            extra: dict[str, Any] = {"has_audio": bool(row["has_audio"]),
                                     "decodable": bool(row["decodable"]), "error": row["error"]}
            if row["decodable"]:
                extra.update(media_fields(row))
            records.append(VideoRecord(path, _video_id(row["path"]), None, extra))
        # Stops at the first file found, so this costs one stat unless every path is wrong.
        if records and not any(os.path.isfile(r.path) for r in records):
            base = f"root={str(root)!r}" if root is not None else "the manifest's own folder"
            raise DataError(
                f"manifest {str(src)!r}: none of the {len(records)} listed videos exists (first: "
                f"{records[0].path}); relative paths in it are read relative to {base}; "
                f"rewrite it with: python -m avssl.data.manifest scan DIR --out {src}")
        # The manifest already says which rows are bad: drop them in every mode.
        return ClipDataset(records, mode=mode, name=f"folder:{src.name}",
                           skip_bad=True if skip_bad is None else skip_bad, **kw)
    if not src.is_dir():
        raise layout_error("folder", "folder", src,
                           f"a folder of video files ({' '.join(VIDEO_EXTENSIONS)}) or a "
                           f"manifest .csv")
    src = src.resolve()
    rels = find_videos(src)
    if not rels:
        raise layout_error("folder", "folder", src,
                           f"video files ({' '.join(VIDEO_EXTENSIONS)}); the folder has none")
    records = [VideoRecord(str(src / rel), _video_id(rel)) for rel in rels]
    return ClipDataset(records, mode=mode, name=f"folder:{src.name}", skip_bad=bool(skip_bad),
                       **kw)


def media_fields(row: dict[str, Any]) -> dict[str, float]:
    """The known media fields of a decodable manifest row (NaN: unknown, or an older manifest).

    A row without a usable length or frame rate (a manifest made by hand, media fields left
    empty) gives neither, so the dataset probes the file: NaN lengths made NaN clip windows.
    """
    known = {k: float(row[k]) for k in ("duration_s", "fps", "start_s", "audio_end_s")
             if row[k] == row[k]}
    if not (known.get("duration_s", 0.0) > 0 and known.get("fps", 0.0) > 0):
        known.pop("duration_s", None)
        known.pop("fps", None)
    return known


def _video_id(rel: str) -> str:
    return os.path.splitext(rel)[0]
