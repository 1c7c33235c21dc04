"""Distributed-safe reductions: token counts for loss normalisation, a stop flag across ranks."""

from __future__ import annotations

from typing import Union

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup
from torch.distributed.device_mesh import DeviceMesh

# Where to reduce: the default group (None), one process group, or every dimension of a mesh
# (e.g. the data-parallel sub-mesh, so tensor-parallel peers holding the same batch are not
# counted twice).
ReduceGroup = Union[ProcessGroup, DeviceMesh, None]


def _groups(group: ReduceGroup) -> list[ProcessGroup | None]:
    if isinstance(group, DeviceMesh):
        return [group.get_group(dim) for dim in range(group.ndim)]
    return [group]


def _collective_device(group: ProcessGroup | None) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce(
    value: torch.Tensor | float | int,
    group: ReduceGroup = None,
    op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM,
) -> torch.Tensor:
    """Reduce a tensor or number over ``group``; returns it unchanged without a process group.

    Args:
        value: a tensor (any shape) or a Python number.
        group: None (default group), a ProcessGroup, or a DeviceMesh (reduced over each of its
            dimensions in turn, i.e. over all of its ranks).
        op: SUM, MAX or MIN (applied per mesh dimension, so composite results are exact).

    Returns:
        A new tensor with the reduced value, on the input tensor's device (CPU for numbers).
    """
    tensor = value.detach().clone() if isinstance(value, torch.Tensor) else torch.tensor(value)
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    home = tensor.device
    for pg in _groups(group):
        device = _collective_device(pg)
        work = tensor.to(device)
        dist.all_reduce(work, op=op, group=pg)
        tensor = work
    return tensor.to(home)


def all_reduce_sum(value: torch.Tensor | float | int, group: ReduceGroup = None) -> torch.Tensor:
    """Sum a tensor or number over all ranks of ``group`` (see ``all_reduce``)."""
    return all_reduce(value, group, dist.ReduceOp.SUM)


def count_target_tokens(
    labels: torch.Tensor, ignore_index: int = -100, group: ReduceGroup = None
) -> torch.Tensor:
    """Number of labels that are not ``ignore_index``, summed over the ranks of ``group``.

    Divide a per-rank summed loss by this to get the exact global token-mean loss, however the
    real tokens are spread over ranks and micro-batches.

    Args:
        labels: [B, T] int64 targets with ``ignore_index`` for masked positions.
        ignore_index: the masked label value.
        group: the data-parallel group or mesh (None = every rank).

    Returns:
        A 0-d int64 tensor on ``labels.device``.
    """
    return all_reduce_sum((labels != ignore_index).sum(), group)


def any_rank(flag: bool, group: ReduceGroup = None) -> bool:
    """True on every rank if ``flag`` is True on at least one rank (a collective: call on all)."""
    return bool(all_reduce(torch.tensor(int(flag)), group, dist.ReduceOp.MAX).item())
