"""Features extracted once and cached; extraction sharded over processes with exact results.

:func:`map_items` runs a function over a dataset in batches. With N processes (``accelerate
launch`` / ``torchrun``), batch b of the single-process order goes to process b mod N, so every
batch has the same items as in one process and every feature is computed bit for bit as it would
be there; the per-item outputs are then gathered, put back in item order and every process holds
them all. That is why the bench's numbers do not depend on the number of processes.

:func:`clip_features` turns a classification dataset in eval mode (one item per video and clip)
into one feature per video: the encoder's pooled output averaged over crops, then over clips.
:class:`FeatureCache` stores them under ``$AVSSL_CACHE/features/<task>/<key>.npz``; the key hashes
everything that changes them (model identity, task version, split, views, modality, input spec,
the data's manifest hash).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import PartialState
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from tqdm.auto import tqdm

from avssl import errors
from avssl.cache import cache_dir
from avssl.data.workers import stop_workers
from avssl.speed import SpeedSettings, apply_threads, pick, worker_init

log = logging.getLogger(__name__)


def state() -> PartialState:
    """The process group of this run (one process, or ``accelerate launch`` / ``torchrun``).

    ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N`` gives N CPU (gloo)
    processes, as in the recipes; the first call fixes the state for the whole process."""
    from avssl.launch import process_state

    return process_state()


_announced = False


def speed(num_workers: int = 0) -> SpeedSettings:
    """The bench's speed settings for this process's device (avssl/speed.py): bf16 autocast for
    extraction on a bf16 GPU (fp16 or bf16 when accelerate launch asks), fp32 on CPU; pinned
    memory only for a GPU. The first call that starts work prints them (stderr, main process),
    so a log says what the numbers ran with."""
    global _announced
    settings = pick(state().device, num_workers=num_workers)
    if settings.persistent_workers:  # only finetune's training loader keeps its workers
        settings.why["persistent_workers"] += ", finetune training only: extraction reads once"
    apply_threads(settings)
    if not _announced and state().is_main_process:
        print(settings.describe(), file=sys.stderr)
        _announced = True
    return settings


def map_items(dataset, fn: Callable[[dict], torch.Tensor], *, batch_size: int,
              num_workers: int = 0, desc: str = "features",
              failed: list[tuple[int, str]] | None = None) -> np.ndarray:
    """``fn(batch) -> (B, ...)`` over all items -> float32 array (len(dataset), ...) in order.

    ``failed``: None stops at the first item that cannot be decoded (its one-line DataError).
    A list (the bench's ``--skip-bad``) turns each such item into a row of NaN instead and
    appends ``(item index, "path (reason)")`` to it, in item order and the same on every
    process; the caller leaves those items' videos out and reports videos used vs listed
    (DESIGN.md: a file can pass the up-front probe, which decodes its start and end, and still
    fail in the middle)."""
    st = state()
    n = len(dataset)
    world, rank = st.num_processes, st.process_index
    blocks = [b for b in range(math.ceil(n / batch_size)) if b % world == rank]
    mine = [i for b in blocks for i in range(b * batch_size, min(n, (b + 1) * batch_size))]
    skip = failed is not None
    done: list[int] = []  # items of ``outs``' rows, in order
    lost: list[tuple[int, str, str]] = []  # (item, why, file)
    outs: list[np.ndarray] = []
    if mine:
        fast = speed(num_workers)
        loader = DataLoader(_Skipping(dataset, mine) if skip else Subset(dataset, mine),
                            batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            pin_memory=fast.pin_memory, worker_init_fn=worker_init(fast),
                            collate_fn=_collate_skipping if skip else None)
        # accelerate launch --mixed_precision fp16 asks for fp16 (the cache key says so too)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(fast.mixed_precision)
        batches = iter(loader)
        at = 0
        try:
            for batch in tqdm(batches, desc=desc, unit="batch", disable=not st.is_main_process,
                              leave=False):
                if skip:
                    ids, batch, bad = batch
                    lost += bad
                else:
                    ids = mine[at:at + batch_size]
                    at += batch_size
                if batch is None:  # every item of this batch failed
                    continue
                with torch.no_grad(), torch.autocast(st.device.type, dtype or torch.bfloat16,
                                                     enabled=dtype is not None):
                    outs.append(fn(batch).float().cpu().numpy())
                done += ids
        except Exception as err:
            stop_workers(batches)  # now, not ~20 s into someone else's code (data/workers.py)
            if (clean := worker_error(err)) is None:
                raise
            raise clean from None
    local = np.concatenate(outs) if outs else None
    parts: list[Any] = [(done, local, lost)]
    if world > 1:
        import torch.distributed as dist

        parts = [None] * world
        dist.all_gather_object(parts, (done, local, lost))
    lost = sorted(x for p in parts for x in p[2])
    shapes = [p[1].shape[1:] for p in parts if p[1] is not None]
    if not shapes:
        if lost:
            raise errors.DataError(f"{desc}: none of the {n} items could be decoded (first: "
                                   f"{lost[0][1]})")
        return local  # no items at all
    if not lost and world == 1:
        return local
    full = np.full((n, *shapes[0]), np.nan, np.float32)
    seen = np.zeros(n, bool)
    for ids, arr, _ in parts:
        if arr is not None:
            full[ids] = arr
            seen[ids] = True
    seen[[i for i, _, _ in lost]] = True
    assert seen.all(), "sharded extraction lost items"
    if lost:
        failed += [(i, why) for i, why, _ in lost]
        if st.is_main_process:
            # each file once: its clips (--views 3x1) or windows fail one by one, and the task
            # leaves the file out whole; naming only the first items hid the second bad file
            files: dict[str, str] = {}
            for _, why, file in lost:
                files.setdefault(file, why)
            log.warning("%s: skipping %d item(s) that failed to decode (--skip-bad), of %d "
                        "file(s) left out: %s", desc, len(lost), len(files),
                        "; ".join(files.values()))
    return full


def decoded(num_videos: int, failed: list[tuple[int, str]] | None,
            num_clips: int = 1) -> np.ndarray:
    """(num_videos,) bool: False for a video one of whose ``num_clips`` consecutive items is in
    :func:`map_items`' ``failed``. Not ``np.isfinite`` of the features: an encoder's NaN or inf
    is the checkpoint's fault, for the protocols to stop on, not a file to leave out quietly."""
    ok = np.ones(num_videos, bool)
    ok[[i // num_clips for i, _ in failed or []]] = False
    return ok


class _Failed:
    """What :class:`_Skipping` returns in place of an item that failed to decode."""

    def __init__(self, why: str, file: str):
        self.why, self.file = why, file


class _Skipping(Dataset):
    """``(i, dataset[i])`` for the items ``ids``, with :class:`_Failed` for an item whose decoding
    raised (a DecodeError, or the DataError a dataset wraps one in)."""

    def __init__(self, dataset, ids: list[int]):
        self.dataset, self.ids = dataset, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k: int):
        i = self.ids[k]
        try:
            return i, self.dataset[i]
        except (errors.DecodeError, errors.DataError) as err:
            cause = err if isinstance(err, errors.DecodeError) else err.__cause__
            if isinstance(cause, errors.DecodeError):
                return i, _Failed(f"{cause.path} ({cause.reason})", str(cause.path))
            return i, _Failed(str(err), str(err))


def _collate_skipping(pairs: list) -> tuple[list[int], Any, list[tuple[int, str, str]]]:
    """(items decoded, their collated batch or None, [(item, why, file)] of the failed ones)."""
    good = [(i, x) for i, x in pairs if not isinstance(x, _Failed)]
    bad = [(i, x.why, x.file) for i, x in pairs if isinstance(x, _Failed)]
    return [i for i, _ in good], default_collate([x for _, x in good]) if good else None, bad


_WORKER = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.\n")


def _avssl_errors(cls: type = errors.AvsslError) -> dict[str, type]:
    out = {cls.__name__: cls}
    for sub in cls.__subclasses__():
        out.update(_avssl_errors(sub))
    return out


def worker_error(err: BaseException) -> errors.AvsslError | None:
    """The one-line error an :class:`~avssl.errors.AvsslError` raised in a DataLoader worker
    had, or None if ``err`` is not one.

    torch re-raises a worker's exception as its type (RuntimeError when that cannot be built
    from one string, like DecodeError) with "Caught X in DataLoader worker process N." and the
    worker's whole traceback as the message; the user-facing message is the traceback's last
    ``module.X: message`` line (avssl messages are one line)."""
    m = _WORKER.match(str(err))
    cls = _avssl_errors().get(m.group(1)) if m else None
    if cls is None or not isinstance(err, (cls, RuntimeError)):
        return None
    prefix = f"{cls.__module__}.{cls.__qualname__}: "
    lines = [ln for ln in str(err).splitlines() if ln.startswith(prefix)]
    if not lines:
        return None
    message = lines[-1][len(prefix):]
    try:
        return cls(message)
    except TypeError:  # DecodeError(path, reason): the message is already the whole story
        return errors.DataError(message)


def encode(encoder: torch.nn.Module, x: torch.Tensor, device) -> torch.Tensor:
    """Pooled features of ``x`` (B, [crops,] C, ...); crops are averaged -> (B, D)."""
    x = x.to(device, non_blocking=True)
    if x.ndim == 6:  # (B, crops, C, T, H, W): three-crop video
        b, k = x.shape[:2]
        return encoder(x.flatten(0, 1)).reshape(b, k, -1).mean(1)
    return encoder(x)


def clip_features(model, dataset, modality: str, *, batch_size: int, num_workers: int,
                  desc: str, failed: list[tuple[int, str]] | None = None) -> np.ndarray:
    """(num_videos, D) features of an eval-mode ClipDataset: mean over crops, then clips.

    ``modality``: ``video``, ``audio`` or ``av`` (video and audio features concatenated).
    ``failed``: as in :func:`map_items`; a video with a clip that failed gets a row of NaN.
    """
    device = PartialState().device
    towers = {m: model.encoder_for(m).to(device).eval()
              for m in (("video", "audio") if modality == "av" else (modality,))}

    def fn(batch):
        feats = [encode(towers[m], batch[m], device) for m in towers]
        return torch.cat(feats, dim=1)

    items = map_items(dataset, fn, batch_size=batch_size, num_workers=num_workers, desc=desc,
                      failed=failed)
    per_video = items.reshape(len(dataset) // dataset.num_clips, dataset.num_clips, -1)
    return per_video.mean(axis=1, dtype=np.float64).astype(np.float32)


def manifest_hash(records) -> str:
    """sha256 over (file name, size, label) of the videos a dataset uses, in order."""
    h = hashlib.sha256()
    for r in records:
        size = os.path.getsize(r.path) if os.path.exists(r.path) else -1
        label = r.label if hasattr(r, "label") else getattr(r, "segments", None)
        h.update(f"{os.path.basename(r.path)}\t{size}\t{json.dumps(label)}\n".encode())
    return h.hexdigest()


# Bumped whenever decoding, the transforms or feature pooling change what features come out, so
# that cached features from older code are not reused (part of every cache key).
# 2: three-crop views are cut from frames resized to the crop size (SlowFast), not to --size.
# 3: random-init s3d is He-initialised (its features were ~1e-7); AVA RoI sums kept in float32.
# 4: Matroska/WebM audio laid end to end; clips start at the video's first timestamp.
FEATURE_CODE_VERSION = 4


class FeatureCache:
    """``get(key)`` / ``put(key, **arrays)`` of npz files under ``$AVSSL_CACHE/features/<task>``."""

    def __init__(self, task: str, enabled: bool = True):
        self.enabled = enabled
        self.root = cache_dir("features", task) if enabled else None

    @staticmethod
    def key(**parts: Any) -> str:
        precision = pick(state().device).mixed_precision  # bf16 features differ from fp32 ones
        if precision != "no":  # (fp32 keys stay as they were before precision was picked)
            parts = {**parts, "precision": precision}
        # the code that makes features: a fix to decoding, a transform or pooling must not reuse
        # features the old code computed (bump FEATURE_CODE_VERSION with such a fix)
        parts = {**parts, "feature_code": FEATURE_CODE_VERSION}
        text = json.dumps(parts, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npz"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The cached arrays, or None. Every process gets the same answer: a hit only when all
        of them read the file, since a process that skipped extraction while the others run it
        would leave them waiting in map_items' gather (another run can write the file between
        two processes' checks; several machines may not share the cache folder)."""
        arrays = self._read(key) if self.enabled and self.path(key).exists() else None
        if state().num_processes > 1:
            import torch.distributed as dist

            flags: list[Any] = [None] * state().num_processes
            dist.all_gather_object(flags, arrays is not None)
            if not all(flags):
                return None
        return arrays

    def _read(self, key: str) -> dict[str, np.ndarray] | None:
        try:
            with np.load(self.path(key), allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            # a file cut short (disk full, a crash before it reached the disk) is no hit: extract
            # again and overwrite it, instead of failing every later run on it
            print(f"feature cache: {self.path(key)} is unreadable ({type(e).__name__}: {e}); "
                  f"extracting again", file=sys.stderr)
            return None

    def put(self, key: str, **arrays: np.ndarray) -> None:
        if not self.enabled or not PartialState().is_main_process:
            return
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".npz")
        os.close(fd)
        try:
            np.savez(tmp, **arrays)
            os.replace(tmp, self.path(key))  # a reader never sees a half-written file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
