"""A failed DataLoader iteration stops its worker processes where the error is caught, not
when the garbage collector gets to the traceback (which stalled the next ~20 s of work)."""
from __future__ import annotations

import gc
import multiprocessing as mp

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from avssl.bench import features as F
from avssl.data.workers import stop_workers
from avssl.errors import DataError


class _Items(Dataset):
    """Six items; item ``bad`` raises a DataError (in a worker when num_workers > 0)."""

    def __init__(self, bad: int | None = None):
        self.bad = bad

    def __len__(self):
        return 6

    def __getitem__(self, i):
        if i == self.bad:
            raise DataError(f"cannot decode item {i}.avi")
        return {"x": torch.tensor([float(i)])}


@pytest.fixture
def no_gc():
    """The collector would reap the workers eventually (slowly): keep it out of the checks."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def test_a_worker_error_in_map_items_leaves_no_worker_running(no_gc):
    before = set(mp.active_children())
    with pytest.raises(DataError, match="cannot decode item 3.avi") as err:
        F.map_items(_Items(bad=3), lambda b: b["x"], batch_size=2, num_workers=2)
    # `err` still holds the error and its traceback (which holds the iterator): the workers
    # must be gone all the same
    assert set(mp.active_children()) - before == set()
    del err


@pytest.mark.parametrize("prepared", [False, True])
def test_stop_workers_ends_persistent_workers_after_an_error_in_the_loop(no_gc, prepared):
    """As the bench's finetune loop uses it: on its accelerate-prepared training loader too."""
    before = set(mp.active_children())
    loader = DataLoader(_Items(), batch_size=2, num_workers=2, persistent_workers=True)
    if prepared:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        try:
            loader = Accelerator(cpu=True).prepare(loader)
        finally:
            AcceleratorState._reset_state(True)  # later tests build their own
    with pytest.raises(RuntimeError, match="the loop body failed"):
        try:
            for _ in loader:
                raise RuntimeError("the loop body failed")
        except RuntimeError:
            assert len(set(mp.active_children()) - before) == 2  # the loader keeps them alive
            stop_workers(loader)
            raise
    assert set(mp.active_children()) - before == set()
    stop_workers(loader)  # twice is harmless


def test_stop_workers_leaves_loaders_without_workers_alone():
    loader = DataLoader(_Items(), batch_size=2)
    it = iter(loader)
    stop_workers(loader, it, (x for x in range(3)), None)
    assert [float(b["x"][0]) for b in it] == [0.0, 2.0, 4.0]
