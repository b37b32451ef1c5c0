"""metrics.csv: one row per step, for new runs and resumed ones."""
from __future__ import annotations

import csv

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
