"""Leaderboard rows (schema, validation, provenance), safe appends, ranking, rendering and CLI."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from avssl import leaderboard as L
from avssl.bench.results import COLUMNS, ResultRow, make_row, provenance, validate_row
from avssl.errors import DataError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(**over) -> ResultRow:
    fields = dict(timestamp="2026-11-26T15:04:05Z", task="synthetic", task_version="1", split="1",
                  protocol="linear", encoder="r3d18", modality="video",
                  checkpoint="runs/pretrain_sync/run-a/step_000500", checkpoint_sha256="ab" * 32,
                  recipe="pretrain_sync", config_hash="c0ffee", data_manifest_hash="",
                  videos_used=55, videos_expected=56, views="10x3", params_m=33.17,
                  gmacs_per_clip=None, metric="top1", value=0.1 + 0.2,
                  higher_is_better=True, secondary={"top5": 91.25, "few": {"mean": 1, "std": 0.5}},
                  seed=3, avssl_version="0.1.0", git_commit=COMMIT + "-dirty")
    fields.update(over)
    return ResultRow(**fields)


# ------------------------------------------------------------------------------------ schema
def test_round_trip_csv_dict_keeps_every_field_exactly():
    for row in (_row(), _row(gmacs_per_clip=1.875, checkpoint="", checkpoint_sha256="",
                             recipe="random-init", higher_is_better=False, secondary={},
                             modality="av", git_commit="unknown", seed=-1)):
        d = row.to_csv_dict()
        assert list(d) == COLUMNS and all(isinstance(v, str) for v in d.values())
        assert d["higher_is_better"] in ("true", "false")
        assert ResultRow.from_csv_dict(d) == row  # floats included: no rounding on the way


@pytest.mark.parametrize("column,bad", [
    ("checkpoint_sha256", "abc123"),
    ("checkpoint_sha256", "AB" * 32),
    ("value", "nan"),
    ("value", "inf"),
    ("value", "seventy"),
    ("videos_used", "57"),            # > videos_expected (56)
    ("videos_used", "-1"),
    ("views", "10-3"),
    ("views", "0x1"),
    ("secondary", "{\"top5\": 9"),    # truncated JSON
    ("secondary", "[1, 2]"),          # not an object
    ("secondary", "{\"top5\": NaN}"),
    ("secondary", "{\"note\": \"hi\"}"),
    ("higher_is_better", "yes"),
    ("timestamp", "2026-11-26 15:04:05"),
    ("timestamp", "2026-13-40T15:04:05Z"),
    ("git_commit", "abc"),
    ("modality", "rgb"),
    ("task", "../elsewhere"),
    ("encoder", ""),
    ("params_m", "-2"),
    ("gmacs_per_clip", "lots"),
    ("seed", "1.5"),
    ("metric", "top1\nsecond line"),
])
def test_invalid_field_raises_data_error_naming_column_and_value(column, bad):
    d = _row().to_csv_dict()
    d[column] = bad
    with pytest.raises(DataError) as e:
        validate_row(d)
    msg = str(e.value)
    assert repr(column) in msg and "\n" not in msg
    assert repr(bad)[1:-1].split("\\n")[0] in msg  # the bad value is shown


def test_missing_or_extra_column_is_named():
    d = _row().to_csv_dict()
    del d["views"]
    with pytest.raises(DataError, match="missing column.*views"):
        validate_row(d)
    with pytest.raises(DataError, match="unexpected column.*colour"):
        validate_row({**_row().to_csv_dict(), "colour": "red"})


def test_make_row_fills_time_and_provenance():
    kw = {k: v for k, v in vars(_row()).items()
          if k not in ("timestamp", "avssl_version", "git_commit", "checkpoint",
                       "checkpoint_sha256", "config_hash", "data_manifest_hash", "gmacs_per_clip")}
    row = make_row(**kw)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row.timestamp)
    assert row.checkpoint == "" and row.gmacs_per_clip is None
    assert validate_row(row.to_csv_dict()) == row


def test_provenance_reports_version_and_commit_and_never_raises(monkeypatch):
    p = provenance()
    assert p["avssl_version"] and re.fullmatch(r"([0-9a-f]{40}|unknown)(-dirty)?", p["git_commit"])
    monkeypatch.setenv("PATH", "/nonexistent")  # no git executable at all
    assert provenance()["git_commit"] == "unknown"


# ------------------------------------------------------------------------------------- appends
def test_append_then_read_round_trip_and_invalid_row_is_never_written(tmp_path):
    rows = [_row(seed=i, value=float(i) / 3) for i in range(3)]
    for r in rows:
        assert L.append_row(r, tmp_path) == tmp_path / "synthetic.csv"
    text = (tmp_path / "synthetic.csv").read_text()
    assert text.splitlines()[0] == ",".join(COLUMNS) and text.count("timestamp,") == 1
    assert L.read_task(tmp_path / "synthetic.csv") == rows
    with pytest.raises(DataError, match="'views'"):
        L.append_row(_row(views="3"), tmp_path)
    with pytest.raises(DataError, match="'value'"):
        L.append_row(_row(task="ucf101", value=float("nan")), tmp_path)
    assert (tmp_path / "synthetic.csv").read_text() == text
    assert not (tmp_path / "ucf101.csv").exists()


_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from avssl.bench.results import ResultRow
    from avssl.leaderboard import append_row
    directory, proc, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    while not (Path(directory) / "go").exists():  # start all writers together
        time.sleep(0.005)
    for i in range(n):
        append_row(ResultRow(
            timestamp="2026-11-26T15:04:05Z", task="synthetic", task_version="1", split="1",
            protocol="knn", encoder=f"proc{proc}", modality="audio", checkpoint="",
            checkpoint_sha256="", recipe="random-init", config_hash="", data_manifest_hash="",
            videos_used=i, videos_expected=25, views="1x1", params_m=1.0, gmacs_per_clip=0.5,
            metric="top1", value=proc + i / 100, higher_is_better=True,
            secondary={"note_" + "x" * 200: i}, seed=i, avssl_version="0.1.0",
            git_commit="unknown"), directory)
""")


def test_concurrent_process_appends_lose_nothing(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), str(p), "25"])
             for p in range(8)]
    time.sleep(0.5)
    (tmp_path / "go").touch()
    assert [p.wait(timeout=120) for p in procs] == [0] * 8
    path = tmp_path / "synthetic.csv"
    lines = path.read_text().splitlines()
    assert len(lines) == 201 and lines.count(",".join(COLUMNS)) == 1
    rows = L.read_task(path)
    assert len(rows) == 200
    assert {(r.encoder, r.seed) for r in rows} == {(f"proc{p}", i) for p in range(8)
                                                   for i in range(25)}
    assert L.validate(tmp_path) == {"synthetic": 200}
    # the lock file stays (deleting it would race the next writer) but hidden, out of the way
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "go", "synthetic.csv"]
    assert L.lock_file(path).is_file()


def test_a_writer_waits_for_the_lock_before_touching_the_file(tmp_path):
    """The lock, not append-mode writes, serialises writers: whole-line appends alone already
    keep 8 x 25 rows intact, so this holds the lock here and checks a writer process waits
    for it (the header of a new file and the torn-line check rely on that)."""
    (tmp_path / "go").touch()
    with L._locked(tmp_path / ".synthetic.csv.lock"):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), "0", "1"])
        try:
            proc.wait(timeout=3)  # the writer cannot finish while the lock is held
        except subprocess.TimeoutExpired:
            pass
        assert proc.poll() is None and not (tmp_path / "synthetic.csv").exists()
    assert proc.wait(timeout=120) == 0
    assert len(L.read_task(tmp_path / "synthetic.csv")) == 1


def test_foreign_header_is_refused_and_file_left_byte_identical(tmp_path):
    path = tmp_path / "synthetic.csv"
    original = b"name,score\r\nmine,1\r\n"
    path.write_bytes(original)
    with pytest.raises(DataError) as e:
        L.append_row(_row(), tmp_path)
    assert str(path) in str(e.value) and ",".join(COLUMNS) in str(e.value)
    assert path.read_bytes() == original


def test_append_after_a_torn_line_keeps_the_new_row_whole(tmp_path):
    L.append_row(_row(seed=1), tmp_path)
    path = tmp_path / "synthetic.csv"
    with open(path, "a") as f:
        f.write("2026-11-26T15:04:05Z,synth")  # a writer killed mid-line
    L.append_row(_row(seed=2), tmp_path)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:3: "):
        L.read_task(path)
    assert validate_row(dict(zip(COLUMNS, _parse(path.read_text().splitlines()[3])))).seed == 2


def _parse(line: str) -> list[str]:
    import csv

    return next(csv.reader([line]))


# --------------------------------------------------------------------------------------- ranking
def test_ranking_respects_higher_is_better_and_breaks_ties_by_time():
    up = [_row(encoder="a", value=50.0), _row(encoder="b", value=70.0),
          _row(encoder="late", value=60.0, timestamp="2026-11-27T00:00:00Z"),
          _row(encoder="early", value=60.0, timestamp="2026-11-25T00:00:00Z")]
    down = [_row(encoder=e, value=v, metric="median_rank", higher_is_better=False)
            for e, v in [("x", 3.0), ("y", 1.0), ("z", 2.0)]]
    out = L.ranked(up + down)
    assert [r.encoder for r in out] == ["y", "z", "x", "b", "early", "late", "a"]  # metric order
    assert L.ranks(out) == [1, 2, 3, 1, 2, 2, 4]
    assert [r.encoder for r in L.ranked(up + down, protocol="knn")] == []
    assert len(L.ranked(up + [_row(split="2")], split="2")) == 1


def test_latest_keeps_newest_row_per_run():
    old = _row(value=10.0, timestamp="2026-01-01T00:00:00Z")
    new = _row(value=5.0, timestamp="2026-02-01T00:00:00Z")
    other = _row(value=1.0, views="1x1", timestamp="2026-01-01T00:00:00Z")
    assert L.ranked([old, new, other]) == [old, new, other]  # history kept by default
    assert L.ranked([old, new, other], latest=True) == [new, other]


def test_latest_keeps_distinct_configs_and_seeds():
    """Random-init rows of one encoder name built with other keyword arguments (config_hash) or
    another seed are other models: --latest used to keep only the newest of them."""
    base = dict(checkpoint="", checkpoint_sha256="", recipe="random-init", encoder="vit_video_tiny")
    patch = _row(**base, config_hash="aa", value=9.5, timestamp="2026-01-01T00:00:00Z")
    conv = _row(**base, config_hash="bb", value=6.0, timestamp="2026-02-01T00:00:00Z")
    seed = _row(**base, config_hash="bb", seed=7, value=7.0, timestamp="2026-02-02T00:00:00Z")
    assert L.ranked([patch, conv, seed], latest=True) == [patch, seed, conv]


def test_protocol_settings_are_separate_benchmarks():
    """1-shot and 5-shot (kNN k=20 and k=200) ranked as one "fewshot" table with nothing to
    tell them apart, and --latest kept only the newest of them; a --skip-bad run on part of the
    data (another manifest) replaced the full run."""
    def shots(n, value, ts):
        return _row(protocol="fewshot", value=value, timestamp=ts,
                    secondary={"shots": {str(n): {"mean": value, "std": 1.0}}})

    five, one = shots(5, 11.8, "2026-01-01T00:00:00Z"), shots(1, 8.0, "2026-02-01T00:00:00Z")
    knn = [_row(protocol="knn", value=v, secondary={"k": k, "temperature": 0.07})
           for k, v in ((20, 17.3), (200, 15.0))]
    part = _row(value=9.0, data_manifest_hash="11" * 32, videos_used=30,
                timestamp="2026-03-01T00:00:00Z")
    full = _row(value=5.0, data_manifest_hash="22" * 32)
    rows = [five, one, *knn, part, full]
    assert L.ranks(L.ranked(rows)) == [1, 1, 1, 1, 1, 2]  # four groups; linear ranks 2 rows
    assert sorted(map(L.protocol_label, rows)) == [
        "fewshot (n=1)", "fewshot (n=5)", "knn (k=20, T=0.07)", "knn (k=200, T=0.07)", "linear",
        "linear"]
    assert sorted(L.ranked(rows, latest=True), key=id) == sorted(rows, key=id)
    assert "| fewshot (n=5) |" in L.format_table(rows)
    assert L.setting(_row(protocol="finetune", secondary={"epochs": 15, "lr": 0.001})) == \
        "15 epochs, lr 0.001"


def test_random_init_config_hash_tells_encoder_kwargs_apart():
    from avssl.bench.model import random_model

    plain = random_model("vit_video_tiny").config_hash
    conv = random_model("vit_video_tiny", video_kwargs={"stem": "conv"}).config_hash
    assert plain and conv and plain != conv
    assert conv == random_model("vit_video_tiny", video_kwargs={"stem": "conv"}).config_hash
    # input settings a bench command changes are another run (--fps 4 and the default fps 8
    # were one row identity); asking for the model's own value changes nothing
    from avssl.bench.model import InputSpec

    fps4 = random_model("vit_video_tiny", spec=InputSpec(fps=4.0)).config_hash
    assert fps4 != plain and random_model("vit_video_tiny", spec=InputSpec(fps=8.0)).config_hash \
        == plain
    assert random_model().config_hash != random_model("i3d_r18_tiny").config_hash  # default strides


def test_format_table_lists_values_in_rank_order():
    rows = [_row(encoder="small", value=12.345), _row(encoder="big", value=67.891,
                                                      gmacs_per_clip=4.5)]
    table = L.format_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("| rank | encoder |") and set(lines[1]) <= set("|-:")
    assert "| 1 | big |" in lines[2] and "67.89" in lines[2] and "4.50" in lines[2]
    assert "| 2 | small |" in lines[3] and "12.35" in lines[3]
    assert "run-a/step_000500@abababab" in lines[2] and "01234567 (dirty)" in lines[2]
    assert "top5 91.25" in lines[2] and "55/56" in lines[2]
    # two runs differing only in seed are told apart by the seed column
    seeds = L.format_table([_row(seed=0, value=1.0), _row(seed=7, value=2.0)]).splitlines()
    assert "| 10x3 | 7 | top1 | 2.00 |" in seeds[2] and "| 10x3 | 0 | top1 | 1.00 |" in seeds[3]


# ------------------------------------------------------------------------------------- rendering
@pytest.fixture()
def board(tmp_path) -> Path:
    for task in ("ucf101", "synthetic"):
        for i, (enc, recipe) in enumerate([("r3d18", "random-init"), ("r3d18", "pretrain_sync"),
                                           ("c3d", "pretrain_mbt")]):
            for protocol in ("linear", "knn"):
                L.append_row(_row(task=task, encoder=enc, recipe=recipe, protocol=protocol,
                                  value=20.0 + 10 * i + (protocol == "knn")), tmp_path)
    return tmp_path


def test_plot_draws_one_bar_per_model_and_tells_alike_labels_apart():
    """The plot kept the best row per "encoder / recipe / protocol" label, so the shipped
    vit_video_tiny random-init rows with patchify and conv stems (two model configs) were one
    bar, and two checkpoints of one recipe would be too. Now one bar per model (its best row;
    a worse rerun adds none), labels told apart by config hash or checkpoint."""
    rnd = dict(recipe="random-init", checkpoint="", checkpoint_sha256="")
    rows = [_row(encoder="vit", value=9.5, config_hash="aaaa1111bbbb2222", **rnd),
            _row(encoder="vit", value=6.0, config_hash="cccc3333dddd4444", **rnd),
            _row(encoder="vit", value=5.0, config_hash="cccc3333dddd4444", seed=1, **rnd),
            _row(encoder="r3d", value=8.0, checkpoint_sha256="12" * 32),
            _row(encoder="r3d", value=7.0, checkpoint_sha256="34" * 32),
            _row(encoder="i3d", value=6.5)]
    (bars,) = L.plot_bars(rows).values()
    assert [(label, b.value) for label, b in bars] == [
        ("vit / random-init / linear (config aaaa1111)", 9.5),
        ("r3d / pretrain_sync / linear @12121212", 8.0),
        ("r3d / pretrain_sync / linear @34343434", 7.0),
        ("i3d / pretrain_sync / linear", 6.5),
        ("vit / random-init / linear (config cccc3333)", 6.0)]


def test_render_writes_sections_and_pngs_deterministically(board):
    paths = L.render(board)
    readme = board / "README.md"
    assert paths == [readme, board / "synthetic.png", board / "ucf101.png"]
    text = readme.read_text()
    assert text.startswith("# ") and "python -m avssl.bench" in text
    assert 0 < text.index("## synthetic") < text.index("## ucf101")
    assert "40.00" in text and "| 1 | c3d | pretrain_mbt |" in text
    for png in paths[1:]:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    first = readme.read_bytes()
    time.sleep(1.1)  # a render time inside README.md would now differ
    L.render(board)
    assert readme.read_bytes() == first


def test_render_never_replaces_a_readme_it_did_not_write(board):
    """A user's README.md in the folder survives --render (it used to be overwritten)."""
    readme = board / "README.md"
    readme.write_text("# My project\n\nnotes I wrote\n")
    with pytest.raises(DataError, match="not rendered by avssl"):
        L.render(board)
    assert readme.read_text() == "# My project\n\nnotes I wrote\n"
    assert not list(board.glob("*.png"))  # refused before writing anything
    r = _cli("--dir", str(board), "--render")
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "README.md" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert readme.read_text() == "# My project\n\nnotes I wrote\n"
    readme.unlink()  # its own README.md is recognised and re-rendered
    L.render(board, latest=True)
    assert L.is_rendered(readme)
    L.render(board)
    assert L.is_rendered(readme) and "(newest row per run only)" not in readme.read_text()


def test_shipped_leaderboard_readme_is_recognised_and_rerendered(tmp_path):
    import shutil

    shipped = Path(__file__).resolve().parent.parent / "leaderboard"
    assert (shipped / "README.md").is_file()  # the repository ships it (issue 7)
    copy = tmp_path / "lb"
    shutil.copytree(shipped, copy)
    assert L.is_rendered(copy / "README.md")
    L.render(copy)  # not refused; same title and introduction as the shipped page
    head = (shipped / "README.md").read_bytes().split(b"\n")[:4]
    assert (copy / "README.md").read_bytes().split(b"\n")[:4] == head


# ------------------------------------------------------------------------------------------- CLI
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avssl.leaderboard", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_prints_tables_and_reports_corrupt_row_by_file_and_line(board):
    r = _cli("--dir", str(board), "--task", "synthetic")
    assert r.returncode == 0, r.stderr
    assert "## synthetic (6 rows)" in r.stdout and "| rank |" in r.stdout
    assert "40.00" in r.stdout and "## ucf101" not in r.stdout

    r = _cli("--dir", str(board), "--task", "synthetc")
    assert r.returncode == 2 and "did you mean: synthetic" in r.stderr and "ucf101" in r.stderr

    path = board / "ucf101.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace(",top1,", ",,")  # row on line 4 loses its metric name
    path.write_text("".join(lines))
    r = _cli("--dir", str(board))
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {path}:4: ") and "'metric'" in r.stderr


def test_cli_on_empty_dir_says_how_to_make_rows(tmp_path):
    r = _cli("--dir", str(tmp_path / "none"))
    assert r.returncode != 0 and "python -m avssl.bench --task synthetic" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_small_secondary_numbers_keep_their_digits():
    from avssl.leaderboard import _highlights, format_number
    assert [format_number(v) for v in (27.380952, 0.0, 0.001, -0.0042, 0.016)] == \
        ["27.38", "0.00", "0.001", "-0.0042", "0.02"]
    assert _highlights({"epochs": 15, "lr": 0.001}) == "epochs 15, lr 0.001"  # (not 15.00)
    assert format_number(168) == "168" and format_number(168.0) == "168.00"


def test_cli_accepts_leaderboard_as_the_bench_name_for_dir(board):
    """``--leaderboard DIR`` (the bench's flag) means ``--dir DIR`` here too."""
    r = _cli("--leaderboard", str(board), "--task", "synthetic")
    assert r.returncode == 0, r.stderr
    assert "## synthetic (6 rows)" in r.stdout
    r = _cli("--leaderboard", str(board), "--render")
    assert r.returncode == 0, r.stderr
    assert L.is_rendered(board / "README.md")


def test_splits_spelled_differently_rank_apart_and_odd_digits_do_not_crash():
    """"1" and "01" used to share one ranking; "²" (str.isdigit() but not int()) crashed it."""
    from avssl.leaderboard import format_table, ranked, ranks

    rows = ranked([_row(encoder="a", split="1"), _row(encoder="b", split="01"),
                   _row(split="²")])
    assert ranks(rows) == [1, 1, 1]  # three splits, each its own ranking
    assert "| ² |" in format_table(rows)


def test_task_versions_rank_apart_newest_first_and_directions_must_agree(tmp_path):
    """A task's new version changes its numbers: an old-version row must not outrank the new
    ones (it used to top the table); one metric cannot rank both ways."""
    from avssl.leaderboard import format_table, ranked, ranks

    rows = ranked([_row(encoder="old", task_version="1", value=40.0),
                   _row(encoder="new", task_version="2", value=15.0),
                   _row(encoder="new2", task_version="10", value=14.0)])
    assert [r.encoder for r in rows] == ["new2", "new", "old"] and ranks(rows) == [1, 1, 1]
    assert "| 1 | old | pretrain_sync |" in format_table(rows)
    assert "| linear | 1 | 1 | 10x3 | 3 |" in format_table(rows)  # split, task version, seed
    L.append_row(_row(metric="err", higher_is_better=False, value=1.0), tmp_path)
    L.append_row(_row(metric="err", higher_is_better=True, value=9.0), tmp_path)
    with pytest.raises(DataError, match=r"synthetic.csv:3: metric 'err' has higher_is_better "
                                        r"true, but false at .*synthetic.csv:2"):
        L.read_task(tmp_path / "synthetic.csv")


def test_odd_names_render_as_written(tmp_path):
    """'$' pairs used to be parsed as matplotlib math (and a bad formula crashed --render); a
    line break in a secondary key split the markdown row; '<x>' vanished as an HTML tag."""
    with pytest.raises(DataError, match="control character"):
        validate_row(_row(secondary={"a\nb": 1.0}).to_csv_dict())
    L.append_row(_row(encoder="cost$\\foo$ <x> a|b", recipe="$5 vs $6"), tmp_path)
    paths = L.render(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "| cost$\\foo$ &lt;x> a\\|b | $5 vs $6 |" in text
    assert paths[1].read_bytes().startswith(PNG_MAGIC)
    assert L._cell("two\nlines") == "two lines"
