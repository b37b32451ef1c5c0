"""Leaderboard CSVs: append rows safely, validate, rank, render (``python -m avssl.leaderboard``).

``<dir>/<task>.csv`` holds one row per benchmark run in the schema of
:mod:`avssl.bench.results`. Every row is kept — a leaderboard is a history — and ranked per
(split, protocol, metric); ``--latest`` keeps only the newest row per run identity.

    python -m avssl.leaderboard                     # validate every CSV, print ranked tables
    python -m avssl.leaderboard --task synthetic    # one task
    python -m avssl.leaderboard --render            # also write <dir>/README.md + <task>.png
    python -m avssl.leaderboard --leaderboard DIR   # another folder (same as --dir DIR)

``--render`` only replaces a README.md it rendered itself (:func:`is_rendered`); any other
README.md in the folder is left alone and the command stops with an error.

Appends from many processes at once never lose or interleave rows: each append holds an exclusive
lock on ``.<task>.csv.lock`` (hidden: it stays, as deleting a lock file races its next taker)
while it checks the header and writes, flushes and fsyncs one line.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from avssl.bench.results import COLUMNS, ResultRow, validate_row
from avssl.errors import AvsslError, DataError, UnknownNameError
from avssl.registry import did_you_mean

HEADER = ",".join(COLUMNS)
MAKE_ROWS = "python -m avssl.bench --task synthetic"


# ------------------------------------------------------------------------------------- appending
@contextlib.contextmanager
def _locked(lock_path: Path, shared: bool = False) -> Iterator[None]:
    """Hold an inter-process lock on ``lock_path`` (created if needed): exclusive for writers,
    shared for readers (so a reader never sees a half-written last line). Windows has no shared
    ``msvcrt`` lock, so readers there take the exclusive one too."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: lock the first byte; LK_LOCK gives up after ~10 s, so loop
            import msvcrt
            import time

            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    time.sleep(0.05)
            try:
                yield
            finally:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def lock_file(csv_path: Path) -> Path:
    """The lock file of ``<task>.csv``: ``.<task>.csv.lock`` beside it."""
    return csv_path.with_name(f".{csv_path.name}.lock")


@contextlib.contextmanager
def _read_lock(csv_path: Path) -> Iterator[None]:
    """A shared lock when the folder allows creating the lock file; none when read-only."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_locked(lock_file(csv_path), shared=True))
        except OSError:
            pass  # e.g. a read-only checkout: read without the lock
        yield


def _csv_line(values: Iterable[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(list(values))
    return buf.getvalue()


def append_row(row: ResultRow, directory: str | os.PathLike = "leaderboard") -> Path:
    """Validate ``row`` and append it to ``<directory>/<task>.csv`` (header written if new).

    Safe against concurrent appends from many processes. Raises :class:`DataError` for an
    invalid row or an existing file whose header is not :data:`COLUMNS`; nothing is written then.
    """
    values = row.to_csv_dict()
    try:
        validate_row(values)
    except DataError as e:
        raise DataError(f"not appending an invalid leaderboard row: {e}") from None
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{row.task}.csv"
    line = _csv_line(values[c] for c in COLUMNS)
    with _locked(lock_file(path)):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                data = HEADER + "\n" + line
            else:
                first = _first_line(fd)
                if first != HEADER:
                    raise DataError(f"{path} has a different header than a leaderboard CSV; "
                                    f"expected: {HEADER} (move the file aside; it was not changed)")
                os.lseek(fd, size - 1, os.SEEK_SET)
                # a writer killed mid-line must not glue its fragment onto this row
                data = line if os.read(fd, 1) == b"\n" else "\n" + line
            payload = data.encode("utf-8")
            # O_APPEND + one write: the line lands whole at the end even if a non-locking
            # writer interferes; the loop only matters for short writes
            while payload:
                payload = payload[os.write(fd, payload):]
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def _first_line(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    head = b""
    while b"\n" not in head and len(head) < 64 * 1024:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        head += chunk
    text = head.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    return text.removeprefix("\ufeff").rstrip("\r")


# --------------------------------------------------------------------------------------- reading
def read_task(path: str | os.PathLike) -> list[ResultRow]:
    """Every row of one task CSV, validated; errors read ``<file>:<line>: <problem>``."""
    path = Path(path)
    rows: list[ResultRow] = []
    direction: dict[str, tuple[bool, str]] = {}  # metric -> (higher_is_better, first row)
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot read leaderboard CSV: {e.strerror or e}") from None
    with f, _read_lock(path):
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                return rows  # an empty file: created, no rows yet
            if header != COLUMNS:
                raise DataError(f"{path}:1: header is not a leaderboard header; expected: {HEADER}")
            for values in reader:
                if not values:  # a blank line carries no row
                    continue
                where = f"{path}:{reader.line_num}"
                if len(values) != len(COLUMNS):
                    raise DataError(f"{where}: {len(values)} fields, expected {len(COLUMNS)} "
                                    f"({HEADER})")
                try:
                    row = validate_row(dict(zip(COLUMNS, values)))
                except DataError as e:
                    raise DataError(f"{where}: {e}") from None
                if row.task != path.stem:
                    raise DataError(f"{where}: row of task {row.task!r} in the file of task "
                                    f"{path.stem!r}; rows belong in <task>.csv")
                first = direction.setdefault(row.metric, (row.higher_is_better, where))
                if first[0] != row.higher_is_better:
                    raise DataError(f"{where}: metric {row.metric!r} has higher_is_better "
                                    f"{str(row.higher_is_better).lower()}, but "
                                    f"{str(first[0]).lower()} at {first[1]}; one metric ranks "
                                    f"one way")
                rows.append(row)
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV: {e}") from None
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text; a leaderboard CSV is UTF-8") from None
    return rows


def _task_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.csv")) if directory.is_dir() else []


def validate(directory: str | os.PathLike = "leaderboard") -> dict[str, int]:
    """``{task: number of rows}`` for every ``<task>.csv`` in ``directory`` (sorted by task).

    Raises :class:`DataError` (``<file>:<line>: <problem>``) at the first invalid row. A missing
    directory holds no tasks.
    """
    return {p.stem: len(read_task(p)) for p in _task_files(Path(directory))}


# --------------------------------------------------------------------------------------- ranking
def _split_key(split: str) -> tuple:
    """Numeric splits first, in number order; the string itself stays in the key, so "1" and
    "01" are different splits (isascii: str.isdigit() is also true for "²", which int() refuses)."""
    return (0, int(split), split) if split.isascii() and split.isdigit() else (1, 0, split)


def setting(r: ResultRow) -> str:
    """The row's protocol settings, read from its secondary metrics: ``n=5`` (few-shot), ``k=20,
    T=0.07`` (kNN), ``15 epochs, lr 0.001`` (finetune); empty for other protocols and for rows
    that lack them. They define the benchmark: 1-shot and 5-shot, or kNN with k 20 and 200,
    ranked as one protocol, and ``--latest`` kept only the newest of them."""
    sec = r.secondary

    def num(key: str) -> str:
        v = sec[key]
        return f"{v:g}" if isinstance(v, (int, float)) else str(v)

    if r.protocol == "fewshot" and isinstance(sec.get("shots"), dict):
        return "n=" + ",".join(sorted(sec["shots"], key=lambda n: (len(n), n)))
    if r.protocol == "knn" and "k" in sec:
        return f"k={num('k')}" + (f", T={num('temperature')}" if "temperature" in sec else "")
    if r.protocol == "finetune" and "epochs" in sec:
        return f"{num('epochs')} epochs" + (f", lr {num('lr')}" if "lr" in sec else "")
    return ""


def protocol_label(r: ResultRow) -> str:
    """``knn (k=20, T=0.07)``: the protocol with the settings that make it a benchmark."""
    return f"{r.protocol} ({s})" if (s := setting(r)) else r.protocol


def _group(r: ResultRow) -> tuple:
    # a new task version changes the numbers (avssl.bench.tasks): its rows rank apart, newest
    # version first
    return (r.task, _version_key(r.task_version), _split_key(r.split), r.protocol, setting(r),
            r.metric)


def _version_key(version: str) -> tuple:
    """Newest version first: numeric versions in descending number order, then other strings."""
    kind, number, text = _split_key(version)
    return (kind, -number, text)


def _order(r: ResultRow) -> tuple:
    # best first; equal values: the earlier run keeps the place; then a fixed order for identical
    # timestamps so the table never depends on file order
    return (-r.value if r.higher_is_better else r.value, r.timestamp, r.encoder, r.recipe,
            r.checkpoint_sha256, r.views, r.seed)


def latest_only(rows: Iterable[ResultRow]) -> list[ResultRow]:
    """The newest row per (task, task version, encoder, checkpoint_sha256, recipe, config_hash,
    seed, protocol and its :func:`setting`, split, metric, views, data_manifest_hash); on equal
    timestamps the row read last wins.

    ``config_hash`` and ``seed`` are part of the run: two random-init rows of one encoder name
    built with other keyword arguments, or drawn with another seed, are different models. So is
    the data: a ``--skip-bad`` run on part of the videos does not replace the full run."""
    newest: dict[tuple, ResultRow] = {}
    for r in rows:
        key = (r.task, r.task_version, r.encoder, r.checkpoint_sha256, r.recipe, r.config_hash,
               r.seed, r.protocol, setting(r), r.split, r.metric, r.views, r.data_manifest_hash)
        if key not in newest or r.timestamp >= newest[key].timestamp:
            newest[key] = r
    return list(newest.values())


def ranked(rows: Iterable[ResultRow], *, protocol: str | None = None, split: str | None = None,
           latest: bool = False) -> list[ResultRow]:
    """Rows grouped by (task, task version, split, protocol, metric), groups in that order (the
    newest task version first), best row first in
    each (``higher_is_better``), ties broken by timestamp (earlier first). Every row is kept
    unless ``latest`` (see :func:`latest_only`)."""
    rows = [r for r in rows if (protocol is None or r.protocol == protocol)
            and (split is None or r.split == str(split))]
    if latest:
        rows = latest_only(rows)
    return sorted(rows, key=lambda r: (_group(r), _order(r)))


def ranks(rows: Sequence[ResultRow]) -> list[int]:
    """Competition ranks (1, 2, 2, 4) of already :func:`ranked` rows within their groups."""
    out: list[int] = []
    start = 0
    for i, r in enumerate(rows):
        if i == 0 or _group(rows[i - 1]) != _group(r):
            start = i
            out.append(1)
        elif rows[i - 1].value == r.value:
            out.append(out[-1])
        else:
            out.append(i - start + 1)
    return out


# ------------------------------------------------------------------------------------ formatting
def checkpoint_label(r: ResultRow) -> str:
    """``<run folder>@<sha[:8]>``; a ``step_N`` / ``latest`` folder is named by its run."""
    if not r.checkpoint:
        return "—"
    p = Path(r.checkpoint.rstrip("/\\"))
    run = p.name
    if (run.startswith("step_") or run == "latest") and p.parent.name:
        run = f"{p.parent.name}/{run}"
    return f"{run}@{r.checkpoint_sha256[:8]}" if r.checkpoint_sha256 else run


def run_label(r: ResultRow) -> str:
    return f"{r.encoder} / {r.recipe} / {protocol_label(r)}"


def _flat(d: dict, prefix: str = "") -> Iterator[tuple[str, object]]:
    for k in sorted(d):
        v = d[k]
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        elif not isinstance(v, list):
            yield f"{prefix}{k}", v


def format_number(v: float) -> str:
    """Two decimals, except for small non-zero values (a learning rate of 0.001 must not read
    0.00): those keep three significant digits; integers (counts, k, epochs) as integers."""
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    v = float(v)
    return f"{v:.3g}" if v != 0 and abs(v) < 0.01 else f"{v:.2f}"


def _highlights(secondary: dict, n: int = 3) -> str:
    """The first ``n`` numbers of ``secondary``, top-level keys (e.g. top5) before nested ones."""
    items = sorted(_flat(secondary), key=lambda kv: (kv[0].count("."), kv[0]))
    shown = ", ".join(f"{k} {format_number(v)}" for k, v in items[:n])  # type: ignore[arg-type]
    return shown + (f" (+{len(items) - n})" if len(items) > n else "")


def _cell(s: str) -> str:
    # "|" would end the cell and "<" open an HTML tag on GitHub; a line break would end the row
    if not s:
        return "—"
    return " ".join(s.splitlines()).replace("|", "\\|").replace("<", "&lt;")


def _plain(s: str) -> str:
    """Text matplotlib shows as written: a pair of "$" would be parsed as mathtext (and a bad
    formula raises)."""
    return s.replace("$", r"\$")


def _commit(c: str) -> str:
    return c[:8] + (" (dirty)" if c.endswith("-dirty") else "")


# seed: runs of one model that differ only in seed (few-shot draws, finetune, random init) would
# otherwise be indistinguishable lines
TABLE_COLUMNS = ["rank", "encoder", "recipe", "checkpoint", "protocol", "split", "task v",
                 "views", "seed", "metric", "value", "secondary", "params (M)", "GMACs", "videos",
                 "date", "commit"]


def format_table(rows: Iterable[ResultRow]) -> str:
    """A ranked markdown table of ``rows`` (ranked again here, so any order may be passed)."""
    rows = ranked(rows)
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |",
             "|" + "|".join("---:" if c in ("rank", "value", "params (M)", "GMACs") else "---"
                            for c in TABLE_COLUMNS) + "|"]
    for rank, r in zip(ranks(rows), rows):
        cells = [str(rank), r.encoder, r.recipe, checkpoint_label(r), protocol_label(r), r.split,
                 r.task_version, r.views, str(r.seed), r.metric, f"{r.value:.2f}",
                 _highlights(r.secondary),
                 f"{r.params_m:.2f}",
                 "" if r.gmacs_per_clip is None else f"{r.gmacs_per_clip:.2f}",
                 f"{r.videos_used}/{r.videos_expected}", r.timestamp[:10], _commit(r.git_commit)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- rendering
def plot_bars(rows: list[ResultRow]) -> dict[tuple, list[tuple[str, ResultRow]]]:
    """The plot's panels, (version key, version, split key, split, metric) -> bars (label, row),
    best first: one bar per model and protocol (encoder, recipe, checkpoint, model config,
    protocol settings) with its best row. Bars that would share a label are told apart by
    checkpoint (``@sha``) or model config (``config <hash>``): vit_video_tiny's patchify and
    conv stems at random init were one bar, and the other row was not drawn."""
    panels: dict[tuple, list[ResultRow]] = {}
    for r in ranked(rows):  # best first, so the first row per model is its best
        bars = panels.setdefault((_version_key(r.task_version), r.task_version,
                                  _split_key(r.split), r.split, r.metric), [])
        if all(_model(b) != _model(r) for b in bars):
            bars.append(r)
    out = {}
    for key, bars in panels.items():
        bars.sort(key=_order)  # best on top across protocols too (ranked() orders by group)
        labels = [run_label(b) for b in bars]
        for i, b in enumerate(bars):
            alike = [o for o in bars if run_label(o) == labels[i] and o is not b]
            if any(o.checkpoint_sha256 != b.checkpoint_sha256 for o in alike):
                labels[i] += f" @{b.checkpoint_sha256[:8] or 'random'}"
            if any(o.config_hash != b.config_hash for o in alike):
                labels[i] += f" (config {b.config_hash[:8] or '—'})"
        out[key] = list(zip(labels, bars))
    return out


def _model(r: ResultRow) -> tuple:
    return (run_label(r), r.checkpoint_sha256, r.config_hash)


def _plot(task: str, rows: list[ResultRow], out: Path) -> None:
    """Horizontal bars, one panel per (split, metric) (:func:`plot_bars`), coloured by
    protocol."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    panels = plot_bars(rows)
    protocols = sorted({r.protocol for r in rows})
    colours = {p: f"C{i % 10}" for i, p in enumerate(protocols)}
    panels = dict(sorted(panels.items()))
    heights = [0.6 + 0.35 * len(b) for b in panels.values()]
    # Figure + FigureCanvasAgg instead of pyplot: no global backend switch, nothing to close
    fig = Figure(figsize=(8, 0.8 + sum(heights)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    for ax, ((_, version, _, split, metric), labelled) in zip(axes, panels.items()):
        bars = [b for _, b in labelled]
        y = list(range(len(bars)))[::-1]  # best on top
        ax.barh(y, [b.value for b in bars], color=[colours[b.protocol] for b in bars])
        ax.set_yticks(y, [_plain(label) for label, _ in labelled], fontsize=8)
        for yi, b in zip(y, bars):
            ax.text(b.value, yi, f" {b.value:.2f}", va="center", fontsize=7)
        arrow = "higher is better" if bars[0].higher_is_better else "lower is better"
        ax.set_title(_plain(f"{task} v{version}: {metric} (split {split}; {arrow})"),
                     fontsize=9)
        ax.margins(x=0.15)
    handles = [Patch(color=colours[p], label=_plain(p)) for p in protocols]
    fig.legend(handles=handles, loc="upper right", fontsize=7, title="protocol", title_fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    os.replace(tmp, out)


# The first two lines of every README.md that render() writes: how it knows a README.md is its
# own (and may be replaced) rather than a user's.
TITLE = "# avssl leaderboard"
INTRO = "Every row is one benchmark run appended to `<task>.csv` by "


def is_rendered(readme: str | os.PathLike) -> bool:
    """True when ``readme`` was written by :func:`render` (its title and first sentence)."""
    try:
        with open(readme, encoding="utf-8") as f:
            head = f.read(len(TITLE) + 2 + len(INTRO))
    except (OSError, UnicodeDecodeError):
        return False
    return head == f"{TITLE}\n\n{INTRO}"


def render(directory: str | os.PathLike = "leaderboard", *, latest: bool = False) -> list[Path]:
    """Write ``<directory>/README.md`` (one ranked table per task) and ``<directory>/<task>.png``.

    The output depends only on the CSVs (no render time inside), so re-rendering unchanged rows
    changes nothing. Returns the written paths, README first. A README.md there that render did
    not write (:func:`is_rendered`) is never replaced: :class:`~avssl.errors.DataError` instead,
    before anything is written.
    """
    directory = Path(directory)
    readme = directory / "README.md"
    if readme.exists() and not is_rendered(readme):
        raise DataError(f"{readme} exists and was not rendered by avssl (it does not start with "
                        f"{TITLE!r}); move it away or render into another folder with "
                        f"--leaderboard DIR, so it is not overwritten")
    tasks = {p.stem: read_task(p) for p in _task_files(directory)}
    parts = [TITLE, "",
             INTRO + "`python -m avssl.bench --task <task> [--checkpoint runs/<recipe>/latest] "
             "[--protocol P]`; this page and the plots are generated from those CSVs by "
             "`python -m avssl.leaderboard --render`" + (" (newest row per run only)" if latest
                                                         else "") + " — do not edit by hand.", ""]
    written: list[Path] = []
    pngs: list[Path] = []
    for task, rows in tasks.items():
        rows = ranked(rows, latest=latest)
        parts += [f"## {task}", ""]
        if not rows:
            parts += ["No rows yet.", ""]
            continue
        png = directory / f"{task}.png"
        _plot(task, rows, png)
        pngs.append(png)
        parts += [f"![{task}]({png.name})", "", format_table(rows), ""]
    if not tasks:
        parts += [f"No rows yet: `{MAKE_ROWS}` makes some.", ""]
    directory.mkdir(parents=True, exist_ok=True)
    tmp = readme.with_name(".README.md.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    os.replace(tmp, readme)
    written.append(readme)
    return written + pngs


# ------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m avssl.leaderboard",
                                description="Validate leaderboard CSVs, print ranked tables, "
                                            "render README.md and plots.")
    p.add_argument("--dir", "--leaderboard", dest="dir", default="leaderboard",
                   help="folder of <task>.csv files (default: leaderboard); --leaderboard is the "
                        "name python -m avssl.bench uses for it")
    p.add_argument("--task", help="show only this task")
    p.add_argument("--render", action="store_true",
                   help="also write <dir>/README.md and one <task>.png per task")
    p.add_argument("--latest", action="store_true",
                   help="keep only the newest row per (encoder, checkpoint, recipe, config "
                        "hash, seed, protocol, split, metric, views)")
    args = p.parse_args(argv)
    directory = Path(args.dir)
    try:
        counts = validate(directory)
        if not counts:
            print(f"no leaderboard CSVs in {directory}/: `{MAKE_ROWS}` appends rows there "
                  f"(--leaderboard DIR for another folder)", file=sys.stderr)
            return 1
        tasks = list(counts)
        if args.task is not None:
            if args.task not in counts:
                raise UnknownNameError(f"no task {args.task!r} in {directory}/"
                                       f"{did_you_mean(args.task, tasks)}; tasks there: "
                                       f"{', '.join(tasks)}")
            tasks = [args.task]
        for task in tasks:
            rows = ranked(read_task(directory / f"{task}.csv"), latest=args.latest)
            print(f"## {task} ({len(rows)} rows)\n")
            print((format_table(rows) if rows else "no rows yet") + "\n")
        if args.render:
            for path in render(directory, latest=args.latest):
                print(f"wrote {path}")
    except AvsslError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import signal

    if hasattr(signal, "SIGPIPE"):  # `python -m avssl.leaderboard | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
