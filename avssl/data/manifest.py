"""Probe a folder of videos into a manifest CSV, and keep a persisted quarantine list of bad files.

Manifest CSV columns, exactly and in this order::

    path,duration_s,fps,num_frames,width,height,has_audio,sample_rate,decodable,error,start_s,audio_end_s

``start_s`` is the video stream's first timestamp (0 for most files; 10 for a video cut with
``ffmpeg -copyts -ss 10``): clip windows start there. ``audio_end_s`` is where the audio stream
ends on the same clock (empty when unknown or silent): clips that need sound stay before it.
Manifests from before these two existed (the first ten columns) are still read, with both empty.
In a manifest file, a relative ``path`` (``/`` separators) is relative to **the manifest file's
own folder**, wherever that is; an absolute path (written only when no relative one exists, e.g.
on another drive) is used as is. :func:`scan` returns paths relative to the scanned root, and
``write_manifest(df, out, root=root)`` rewrites them relative to ``out``'s folder (the command
line does this), so ``scan DIR --out elsewhere/manifest.csv`` gives ``../DIR/...`` paths that
:func:`resolve_paths` (and every dataset reading a manifest) finds again. Rows are sorted by path,
``has_audio`` / ``decodable`` are written ``true`` / ``false``, ``error`` is empty or a one-line
reason, and the media fields of an undecodable file (and ``sample_rate`` of a silent one) are empty.

Command line::

    python -m avssl.data.manifest scan DIR --out manifest.csv [--workers N]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import logging
import multiprocessing
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterable

import pandas as pd
from tqdm import tqdm

from avssl.csvfiles import read_text_csv
from avssl.errors import AvsslError, DataError, DecodeError

log = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = (
    "path", "duration_s", "fps", "num_frames", "width", "height",
    "has_audio", "sample_rate", "decodable", "error", "start_s", "audio_end_s",
)
# Manifests written before the last two existed; read with them empty (a dataset then probes
# each file once for them: taken as 0, clips of a file starting at 10 s were its first frame).
_COLUMNS_V1 = COLUMNS[:-2]
# In order of preference where one clip exists in several containers.
VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
_FLOAT_COLS = ("duration_s", "fps", "start_s", "audio_end_s")
_INT_COLS = ("num_frames", "width", "height", "sample_rate")
_BOOL_COLS = ("has_audio", "decodable")


# ------------------------------------------------------------------------------------------ scan
def find_videos(root: str | os.PathLike) -> list[str]:
    """Video files under ``root`` (extensions in VIDEO_EXTENSIONS, any case), relative posix, sorted.

    Hidden files and folders (``.name``, e.g. macOS ``._clip.mp4`` forks or half-written temp
    files) are skipped.
    """
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS:
                found.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(found)


def _probe_row(root: str, rel: str, timeout_s: float) -> dict:
    """One manifest row for ``root/rel``; never raises (a bad file is a row with its reason)."""
    # Imported here so the module (and the CLI's --help) loads without the codec libraries.
    from avssl.data.decoding import probe

    row: dict = {c: None for c in COLUMNS}
    row.update(path=rel, has_audio=False, decodable=False, error="")
    try:
        info = probe(os.path.join(root, rel), timeout_s=timeout_s)
    except DecodeError as e:
        row["error"] = e.reason
        return row
    except Exception as e:  # a decoder bug must not stop a scan of 100k files
        row["error"] = " ".join(f"{type(e).__name__}: {e}".split())
        return row
    row.update(
        duration_s=float(info.duration_s), fps=float(info.fps), num_frames=int(info.num_frames),
        width=int(info.width), height=int(info.height), has_audio=bool(info.has_audio),
        sample_rate=int(info.sample_rate) if info.has_audio and info.sample_rate else None,
        decodable=True, start_s=float(info.start_s), audio_end_s=info.audio_end_s,
    )
    return row


def _frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> DataFrame with the manifest dtypes (float, nullable Int64, bool, str), sorted."""
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for c in _FLOAT_COLS:
        df[c] = pd.to_numeric(df[c], errors="raise").astype("float64")
    for c in _INT_COLS:
        df[c] = pd.to_numeric(df[c], errors="raise").astype("Int64")
    for c in _BOOL_COLS:
        df[c] = df[c].astype(bool)
    df["path"] = df["path"].astype(str)
    df["error"] = df["error"].fillna("").astype(str)
    return df.sort_values("path", kind="stable").reset_index(drop=True)


def scan(
    root: str | os.PathLike,
    *,
    paths: Iterable[str | os.PathLike] | None = None,
    workers: int = 1,
    progress: bool = True,
    timeout_s: float = 30.0,
) -> pd.DataFrame:
    """Probe every video under ``root`` (or only ``paths``) -> manifest DataFrame (see module doc).

    ``paths`` may be relative to ``root`` or absolute inside it. ``workers > 1`` probes in a
    spawn-context process pool (no decoder or thread state is inherited); the result does not
    depend on ``workers``. Each file is probed under a ``timeout_s`` limit, so a hanging file
    becomes a row with ``decodable=false``; with ``workers > 1`` so does a file whose decoder
    crashes its process.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise DataError(f"video folder {str(root)!r} does not exist or is not a directory; "
                        f"pass the folder that holds the videos")
    if paths is None:
        rels = find_videos(root_path)
    else:
        rels = sorted({_relative(root_path, p) for p in paths})
    root_s = str(root_path)
    bar = tqdm(total=len(rels), desc="probe", unit="file", disable=not progress, leave=False)
    rows: list[dict] = []
    try:
        if workers <= 1 or len(rels) <= 1:
            for rel in rels:
                rows.append(_probe_row(root_s, rel, timeout_s))
                bar.update()
        else:
            rows = _probe_in_pool(root_s, rels, workers, timeout_s, bar)
    finally:
        bar.close()
    return _frame(rows)


def _probe_in_pool(root: str, rels: list[str], workers: int, timeout_s: float, bar: tqdm,
                   probe_row=_probe_row) -> list[dict]:
    """Probe in spawn-context worker processes; a decoder that kills its process costs a row.

    A crashed worker breaks the whole pool and fails every pending file, so the unfinished files
    go to a fresh pool; when a pool finishes none of them, the first is probed alone, and if that
    also kills its process it is listed as undecodable.
    """
    ctx = multiprocessing.get_context("spawn")
    rows: list[dict] = []
    todo, alone = list(rels), False
    while todo:
        batch = todo[:1] if alone else todo
        done: dict[str, dict] = {}
        with cf.ProcessPoolExecutor(max_workers=min(workers, len(batch)), mp_context=ctx) as pool:
            futures = {pool.submit(probe_row, root, rel, timeout_s): rel for rel in batch}
            for fut in cf.as_completed(futures):
                try:
                    done[futures[fut]] = fut.result()
                    bar.update()
                except cf.process.BrokenProcessPool:
                    pass  # retried below
        if alone and not done:  # it crashed its process on its own: that file is the culprit
            row = {c: None for c in COLUMNS}
            row.update(path=batch[0], has_audio=False, decodable=False,
                       error="the decoder crashed its process while probing this file")
            done[batch[0]] = row
            bar.update()
        rows += done.values()
        todo = [r for r in todo if r not in done]
        alone = not alone and not done  # a pool that finished nothing: try the first file alone
    return rows


def _relative(root: Path, p: str | os.PathLike) -> str:
    p = Path(p)
    if not p.is_absolute():
        return p.as_posix()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        try:
            return p.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            raise DataError(f"{str(p)!r} is not inside the scanned folder {str(root)!r}; "
                            f"pass paths relative to it") from None


# -------------------------------------------------------------------------------------- CSV I/O
def relative_to_manifest(paths: Iterable[str], root: str | os.PathLike,
                         manifest_path: str | os.PathLike) -> list[str]:
    """``paths`` relative to ``root`` -> the same files relative to ``manifest_path``'s folder.

    Absolute paths are kept. A path with no relative form (another drive) becomes absolute.
    Both folders are resolved first (symlinks followed), so a leading ``..`` climbs real folders;
    :func:`resolve_paths` resolves the manifest's folder the same way before following one.
    """
    real_root = os.path.realpath(root)
    base = os.path.realpath(Path(manifest_path).absolute().parent)
    out = []
    for p in paths:
        p = str(p)
        if os.path.isabs(p):
            out.append(p)
            continue
        full = os.path.join(real_root, p)
        try:
            out.append(Path(os.path.relpath(full, base)).as_posix())
        except ValueError:  # Windows: another drive has no relative path
            out.append(Path(full).as_posix())
    return out


def resolve_paths(paths: Iterable[str], manifest_path: str | os.PathLike,
                  root: str | os.PathLike | None = None) -> list[str]:
    """Absolute file paths of a manifest's ``path`` column (see the module doc).

    Relative paths are joined to the manifest's folder (or to ``root`` when given: a manifest
    written by an older avssl, relative to its scanned folder); absolute ones are kept.
    """
    base = os.path.abspath(root if root is not None else Path(manifest_path).absolute().parent)
    real_base = None
    out = []
    for p in paths:
        p = str(p)
        if os.path.isabs(p):
            out.append(os.path.normpath(p))
            continue
        rel = os.path.normpath(p)
        if rel.split(os.sep, 1)[0] == "..":
            # ``..`` must climb the real folder, as the writer computed it (a symlinked folder's
            # lexical parent is not its real parent)
            real_base = real_base or os.path.realpath(base)
            out.append(os.path.normpath(os.path.join(real_base, rel)))
        else:
            out.append(os.path.join(base, rel))
    return out


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temp file in ``path``'s folder (created), as ``mkstemp`` returns it; DataError
    naming ``path`` when that folder cannot be made or written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise DataError(f"cannot write the manifest {str(path)!r} ({e.strerror or e}); give a "
                        f"path in a writable folder") from None


def check_manifest_path(path: str | os.PathLike) -> None:
    """DataError now, not after a long scan, unless a manifest can be written at ``path``."""
    if Path(path).is_dir():
        raise DataError(f"manifest path {str(path)!r} is a folder; give a file name such as "
                        f"{Path(path) / 'manifest.csv'}")
    fd, tmp = _temp_beside(Path(path))
    os.close(fd)
    os.unlink(tmp)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike, *,
                   root: str | os.PathLike | None = None) -> None:
    """Write ``df`` (columns exactly COLUMNS) as CSV atomically: temp file + ``os.replace``.

    ``root``: the folder ``df``'s relative paths are relative to (:func:`scan`'s root); they are
    written relative to ``path``'s folder, so the file can be read from anywhere. Without it the
    paths are written as they are (they must already be relative to ``path``'s folder, or be read
    with an explicit root).
    """
    if tuple(df.columns) != COLUMNS:
        raise DataError(f"a manifest needs exactly the columns {','.join(COLUMNS)}; "
                        f"got {','.join(map(str, df.columns))}")
    check_manifest_path(path)
    out = df.copy()
    if root is not None:
        out["path"] = relative_to_manifest(out["path"], root, path)
        out = out.sort_values("path", kind="stable").reset_index(drop=True)
    for c in _BOOL_COLS:
        out[c] = out[c].map(lambda v: "true" if bool(v) else "false")
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            out.to_csv(f, index=False, lineterminator="\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest CSV -> DataFrame with the dtypes of :func:`scan`; validates header and values."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest {str(path)!r} not found; make one with: "
                        f"python -m avssl.data.manifest scan DIR --out {path}")
    raw = read_text_csv(path, f"the columns {','.join(COLUMNS)}", skipinitialspace=False,
                        what="manifest")
    if tuple(raw.columns) == _COLUMNS_V1:
        raw["start_s"] = raw["audio_end_s"] = ""
    if tuple(raw.columns) != COLUMNS:
        raise DataError(
            f"manifest {str(path)!r} has columns {','.join(map(str, raw.columns))}; expected exactly "
            f"{','.join(COLUMNS)} (write it with python -m avssl.data.manifest scan)"
        )
    df = raw.copy()
    for c in _FLOAT_COLS + _INT_COLS:
        values = raw[c].where(raw[c].str.strip() != "")
        num = pd.to_numeric(values, errors="coerce")
        bad = num.isna() & values.notna()
        if bad.any():
            i = int(bad.idxmax())
            raise DataError(f"manifest {str(path)!r} row {i + 2}: column {c} must be a number or "
                            f"empty, got {raw[c][i]!r}")
        df[c] = num.astype("float64" if c in _FLOAT_COLS else "Int64")
    for c in _BOOL_COLS:
        low = raw[c].str.strip().str.lower()
        bad = ~low.isin(["true", "false"])
        if bad.any():
            i = int(bad.idxmax())
            raise DataError(f"manifest {str(path)!r} row {i + 2}: column {c} must be true or "
                            f"false, got {raw[c][i]!r}")
        df[c] = low == "true"
    return df


# ----------------------------------------------------------------------------------- quarantine
class Quarantine:
    """A persisted, append-only, process-safe list of bad files (JSON lines).

    Each line is ``{"path": ..., "reason": ..., "time": ...}``. :meth:`add` appends the whole line
    with a single ``os.write`` on an ``O_APPEND`` descriptor, so concurrent DataLoader workers and
    runs never interleave lines. Reads pick up other processes' additions (the file is re-read
    from where this object last stopped). Paths are stored as absolute, normalised paths. The
    object holds no open file, so it pickles into DataLoader workers.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._entries: list[dict] = []
        self._paths: set[str] = set()
        self._offset = 0
        self._ino: int | None = None

    def __repr__(self) -> str:
        return f"Quarantine({str(self.path)!r}, {len(self)} files)"

    @staticmethod
    def _key(video_path: str | os.PathLike) -> str:
        return os.path.abspath(os.fspath(video_path))

    def add(self, video_path: str | os.PathLike, reason: str) -> None:
        """Record ``video_path`` as bad with a one-line ``reason`` (appends even if already listed)."""
        entry = {
            "path": self._key(video_path),
            "reason": " ".join(str(reason).split()),
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        data = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            if written != len(data):  # only on a full disk; never leave a silent half line
                raise OSError(f"short write to quarantine file {self.path}: "
                              f"{written} of {len(data)} bytes")
        finally:
            os.close(fd)
        self._refresh()

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._entries, self._paths, self._offset, self._ino = [], set(), 0, None
            return
        if st.st_ino != self._ino or st.st_size < self._offset:  # replaced or truncated: start over
            self._entries, self._paths, self._offset, self._ino = [], set(), 0, st.st_ino
        if st.st_size == self._offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # only whole lines; a line being written is read next time
        for line in chunk[:end].splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                key = self._key(entry["path"])
            except (ValueError, KeyError, TypeError):
                log.warning("quarantine %s: skipping a malformed line: %r", self.path, line[:200])
                continue
            self._entries.append(entry)
            self._paths.add(key)
        self._offset += end

    def __contains__(self, video_path: object) -> bool:
        if not isinstance(video_path, (str, os.PathLike)):
            return False
        self._refresh()
        return self._key(video_path) in self._paths

    def paths(self) -> set[str]:
        """Absolute paths of every quarantined file, including other processes' additions."""
        self._refresh()
        return set(self._paths)

    def entries(self) -> list[dict]:
        """Every recorded ``{"path", "reason", "time"}`` in file order (repeats included)."""
        self._refresh()
        return [dict(e) for e in self._entries]

    def __len__(self) -> int:
        """Number of distinct quarantined files."""
        self._refresh()
        return len(self._paths)


# ------------------------------------------------------------------------------------------- CLI
def _summary(df: pd.DataFrame) -> str:
    n, ok, audio = len(df), int(df["decodable"].sum()), int(df["has_audio"].sum())
    lines = [f"{n} files, {ok} decodable, {audio} with audio"]
    bad = df[~df["decodable"]]
    if len(bad):
        lines.append(f"{len(bad)} bad files:")
        lines += [f"  {p}: {e}" for p, e in zip(bad["path"], bad["error"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avssl.data.manifest",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("scan", help="probe every video under DIR and write a manifest CSV")
    p.add_argument("dir", metavar="DIR", help="folder of videos (searched recursively)")
    p.add_argument("--out", required=True, help="manifest CSV to write")
    p.add_argument("--workers", type=int, default=1, help="probe processes (default 1)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds allowed per file (default 30)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if args.workers < 1:
            raise DataError(f"--workers must be >= 1, got {args.workers}")
        check_manifest_path(args.out)  # before the scan, which can take hours
        df = scan(args.dir, workers=args.workers, progress=not args.no_progress, timeout_s=args.timeout)
        # paths relative to the CSV's own folder: readers resolve them from there
        write_manifest(df, args.out, root=args.dir)
    except AvsslError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_summary(df))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
