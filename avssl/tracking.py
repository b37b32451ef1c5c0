"""Experiment trackers for recipes: a CSV tracker (always) plus TensorBoard when installed.

accelerate ships trackers for TensorBoard, W&B, MLflow, ... but none that writes a plain file, and
a CSV next to the checkpoints is what a researcher greps and plots first. ``CSVTracker`` is an
accelerate ``GeneralTracker``, so recipes log through ``accelerator.log`` only.

``metrics.csv`` columns are ``step`` then every metric name seen so far; a new name rewrites the
header (rare: names are fixed after the first log). Resumed runs append, dropping rows after the
resumed checkpoint's step so a crash-and-resume leaves one row per step; a new run
(``resume_step`` None) starts the file afresh. TensorBoard's event files cannot be cut, so its
tracker marks where this invocation starts (``purge_step``) and TensorBoard drops older events
from that step on.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
from pathlib import Path

from accelerate.tracking import GeneralTracker


class CSVTracker(GeneralTracker):
    name = "csv"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike, resume_step: int | None = None):
        super().__init__()
        self.run_name = run_name
        self.dir = Path(logging_dir)
        self.path = self.dir / "metrics.csv"
        self.resume_step = resume_step
        self.fields: list[str] = ["step"]
        self.rows: list[dict] = []

    def start(self):
        """Called by ``accelerator.init_trackers`` on the main process only."""
        self.dir.mkdir(parents=True, exist_ok=True)
        resume_step = self.resume_step
        if resume_step is None:
            # a new run: rows left by an earlier attempt under this name (one that stopped before
            # its first checkpoint, which run_location lets start again) are not this run's; kept,
            # they gave every step two values in the CSV
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or ["step"])
                self.rows = self._kept(reader, resume_step)
            self._rewrite()

    @staticmethod
    def _kept(rows, resume_step: int) -> list[dict]:
        """The rows up to the checkpoint we resume from (later ones are redone by the resumed
        run), in step order. A crash can leave a torn last line or a zero-filled tail, which
        stopped the resume with a ValueError or kept a fragment ("1" of "12,...") as a second
        row for step 1: rows whose step is not a number or not after the previous row's are
        dropped."""
        kept: list[dict] = []
        for row in rows:
            try:
                step = int(float(row["step"]))
            except (TypeError, ValueError, OverflowError):
                continue
            if step <= resume_step and (not kept or step > int(float(kept[-1]["step"]))):
                kept.append(row)
        return kept

    @property
    def tracker(self):
        return self.path

    def store_init_configuration(self, values: dict):
        (self.dir / "hparams.json").write_text(json.dumps(values, indent=2, default=str) + "\n")

    def log(self, values: dict, step: int | None = None, **kwargs):
        row = {"step": step, **{k: (float(v) if hasattr(v, "__float__") else v)
                                for k, v in values.items()}}
        self.rows.append(row)
        new = [k for k in row if k not in self.fields]
        if new:
            self.fields += new
            self._rewrite()
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow(row)

    def _rewrite(self):
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, self.fields)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)


def default_trackers(project: str, run_dir: str | os.PathLike, resume_step: int | None = None):
    """``[CSVTracker, TensorBoardTracker?]`` for ``Accelerator(log_with=...)``; TensorBoard (when
    installed) writes to ``<run_dir>/<project>/``, where ``accelerator.init_trackers(project)``
    puts it."""
    trackers: list = [CSVTracker(project, run_dir, resume_step)]
    if importlib.util.find_spec("tensorboard") is not None:
        from accelerate.tracking import TensorBoardTracker

        # as metrics.csv does: the events a killed run wrote after its checkpoint (or a new run's
        # earlier attempt wrote) are dropped, else TensorBoard showed those steps twice
        trackers.append(TensorBoardTracker(project, run_dir,
                                           purge_step=(resume_step or 0) + 1))
    return trackers
