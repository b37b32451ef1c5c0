"""Gathering embeddings across processes, so contrastive negatives come from the global batch.

``gather_rows(x)`` concatenates every rank's ``x`` along dim 0 in rank order (rank-major), so
row order is the global batch order and 2 processes with B/2 rows each see the same rows as 1
process with B. Float tensors go through :class:`_AllGather`, whose backward sums the incoming
gradients over ranks (an all-reduce, then each rank keeps its own rows: a reduce-scatter that the
gloo CPU backend also supports; ``torch.distributed.nn.functional.all_gather`` needs
all-to-all, which gloo lacks); other dtypes (masks) use the plain, non-differentiable all-gather. With torch.distributed not initialised, or a world
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
        return _AllGather.apply(x)
    return _all_gather(x)


def _all_gather(x: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


class _AllGather(torch.autograd.Function):
    """Differentiable all-gather: (b, ...) per rank -> (world * b, ...); backward sums over ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rows = x.shape[0]
        return _all_gather(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # every rank's loss depends on every row
        rank = dist.get_rank()
        return grad[rank * ctx.rows:(rank + 1) * ctx.rows]
