"""metrics.csv: one row per step, for new runs and resumed ones."""
from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from avssl.tracking import CSVTracker


def _log(tracker: CSVTracker, steps, scale: float) -> None:
    tracker.start()
    for s in steps:
        tracker.log({"loss": scale * s}, step=s)


def _rows(run_dir) -> list[tuple[int, float]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_a_new_run_in_a_folder_of_an_attempt_without_checkpoints_starts_a_fresh_csv(tmp_path):
    """run_location lets a run name whose folder holds no checkpoint start again; that attempt's
    rows stayed in metrics.csv and the new run's rows were appended after them."""
    _log(CSVTracker("r", tmp_path), [1, 2, 3], scale=10.0)  # stopped before its first save
    _log(CSVTracker("r", tmp_path, resume_step=None), [1, 2], scale=1.0)
    assert _rows(tmp_path) == [(1, 1.0), (2, 2.0)]


def test_a_resumed_run_keeps_the_rows_up_to_its_checkpoint(tmp_path):
    _log(CSVTracker("r", tmp_path), [1, 2, 3, 4], scale=10.0)  # checkpoint at 2, killed at 4
    _log(CSVTracker("r", tmp_path, resume_step=2), [3, 4], scale=1.0)
    assert _rows(tmp_path) == [(1, 10.0), (2, 20.0), (3, 3.0), (4, 4.0)]


def _tensorboard_trackers(tmp_path, resume_step):
    from avssl.tracking import default_trackers

    tb = [t for t in default_trackers("recipe", tmp_path, resume_step) if t.name == "tensorboard"]
    assert len(tb) == 1 and not isinstance(tb[0], str), "tensorboard is installed: one tracker"
    return tb[0]


def test_tensorboard_tracker_is_told_where_this_invocation_starts(tmp_path, monkeypatch):
    """Event files cannot be cut as metrics.csv is: a resumed run (or a new run in the folder of
    an attempt without checkpoints) must purge the earlier events from its first step on, or
    TensorBoard shows the steps between the checkpoint and the kill twice."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "tensorboard" else real(name, *a))
    for resume_step, purge in ((None, 1), (4, 5)):
        tb = _tensorboard_trackers(tmp_path, resume_step)
        assert tb.init_kwargs == {"purge_step": purge}
        assert (tb.run_name, Path(tb.logging_dir_param)) == ("recipe", tmp_path)


def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for i, (resume_step, steps, scale) in enumerate(  # an attempt, a new run, its resume
            ((None, [1, 2, 3], 10.0), (None, [1, 2, 3, 4], 100.0), (2, [3, 4], 1.0))):
        # TensorBoard reads a folder's event files in name order: the creation second, then a
        # per-process writer count, compared as text (writer 10 before writer 9). Real runs
        # start seconds apart; here each invocation starts in a second of its own.
        if i:
            time.sleep(1.05)
        tb = _tensorboard_trackers(tmp_path, resume_step)
        tb.start()
        for s in steps:
            tb.log({"loss": scale * s}, step=s)
        tb.finish()
    acc = EventAccumulator(str(tmp_path / "recipe"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [
        (1, 100.0), (2, 200.0), (3, 3.0), (4, 4.0)]


@pytest.mark.parametrize("tail", ["\x00\x00\x00\x00\n", "\n,,\n", "1"])
def test_a_resume_survives_a_tail_damaged_by_a_crash(tmp_path, tail):
    """A power loss can leave a zero-filled tail or a torn last line: the resume stopped with a
    ValueError over the log file, or kept the fragment "1" as a second row for step 1."""
    _log(CSVTracker("r", tmp_path), [1, 2, 3, 4, 5, 6], scale=10.0)
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write(tail)
    _log(CSVTracker("r", tmp_path, resume_step=4), [5], scale=1.0)
    assert _rows(tmp_path) == [(1, 10.0), (2, 20.0), (3, 30.0), (4, 40.0), (5, 5.0)]
