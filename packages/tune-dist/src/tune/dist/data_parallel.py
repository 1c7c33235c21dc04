"""This rank's place among the data-parallel ranks: the mesh, the data shard, the reduction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from tune.dist.mesh import TP, build_mesh, data_parallel_mesh, data_parallel_rank_and_size
from tune.dist.reductions import all_reduce_sum


@dataclass(frozen=True)
class DataParallel:
    """This rank's place among the data-parallel ranks (the defaults describe one process).

    Args:
        distributed: a process group of several ranks exists.
        rank: data-parallel rank: which shard of the data this rank reads.
        size: data-parallel world size (world size / tensor-parallel degree).
        mesh: the whole mesh from ``build_mesh`` (``dp_replicate``, ``dp_shard``, ``tp``), or None.
        dp_mesh: the data-parallel sub-mesh (``data_parallel_mesh``), or None.
        reduce: sums a tensor over the data-parallel ranks, returned on the input's device
            (None for one process). Tensor-parallel peers hold the same batch and are not summed.
    """

    distributed: bool = False
    rank: int = 0
    size: int = 1
    mesh: DeviceMesh | None = None
    dp_mesh: DeviceMesh | None = None
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def tp_size(self) -> int:
        """The tensor-parallel degree (1 without a mesh)."""
        return 1 if self.mesh is None else self.mesh[TP].size()


def setup_data_parallel(
    tp: int = 1, *, dp_replicate: int = 1, device_type: str | None = None
) -> DataParallel:
    """Build the mesh and the data-parallel reduction; one process gets ``DataParallel()``.

    Call after ``init_distributed``. Ranks are laid out as in ``build_mesh`` (``tp`` innermost).

    Args:
        tp: tensor-parallel degree (must divide the world size).
        dp_replicate: HSDP replica groups (1: plain FSDP over every data-parallel rank).
        device_type: ``"cuda"`` or ``"cpu"``; None picks the process group backend's device.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        if tp != 1:
            raise ValueError(f"tensor-parallel degree {tp} needs {tp} or more processes, got one")
        return DataParallel()
    mesh = build_mesh(dp_replicate=dp_replicate, tp=tp, device_type=device_type)
    rank, size = data_parallel_rank_and_size(mesh)
    dp_mesh = data_parallel_mesh(mesh)

    def reduce(value: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(value, group=dp_mesh)

    return DataParallel(True, rank, size, mesh, dp_mesh, reduce)
