"""Gathering embeddings across processes, so contrastive negatives come from the global batch.

``gather_rows(x)`` concatenates every rank's ``x`` along dim 0 in rank order (rank-major), so
row order is the global batch order and 2 processes with B/2 rows each see the same rows as 1
process with B. Float tensors go through :func:`torch.distributed.nn.functional.all_gather`,
whose backward sums the incoming gradients over ranks (a reduce-scatter); other dtypes (masks)
use the plain, non-differentiable all-gather. With torch.distributed not initialised, or a world
of one, it returns ``x`` unchanged, so objectives stay testable in one process.

Every rank must pass the same number of rows (use ``drop_last=True`` in the DataLoader).

Why every rank then computes the loss of the *whole* global batch: the loss value is identical
on all ranks (and equal to the single-process loss), and the gradient is exact — all_gather's
backward hands each rank ``world_size`` times the true gradient of its own rows, and
DistributedDataParallel divides by ``world_size`` when it averages parameter gradients.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes, 1 when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` (b, ...) on each rank -> (world_size * b, ...) in rank order; identity for one rank."""
    n = world_size()
    if n == 1:
        return x
    if x.is_floating_point():
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x), dim=0)
    parts = [torch.empty_like(x) for _ in range(n)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)
