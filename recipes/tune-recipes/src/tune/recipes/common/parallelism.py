"""The parallel layout every training recipe shares: data-parallel ranks, block wrappers, FSDP2.

Order matters and is the recipes' order: tensor parallelism (sft only), then the per-block
wrappers (activation checkpointing, offloading, ``torch.compile``), then FSDP2 over the
data-parallel ranks, which must see the final blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from tune.dist import (
    all_reduce_sum,
    apply_activation_checkpointing,
    apply_activation_offloading,
    apply_fsdp,
    build_mesh,
    data_parallel_mesh,
    data_parallel_rank_and_size,
)
from tune.models import TransformerBlock
from tune.recipes.common.finetune_method import unshardable_frozen_params
from tune.recipes.common.runtime import Runtime


class FSDPSettings(Protocol):
    """The ``distributed`` config keys FSDP reads (every recipe's ``DistributedConfig``)."""

    fsdp: bool
    reshard_after_forward: bool
    cpu_offload: bool


@dataclass(frozen=True)
class DataParallel:
    """This rank's place among the data-parallel ranks.

    Args:
        distributed: launched as several processes.
        rank: data-parallel rank (0 for one process).
        size: data-parallel world size (world size / tensor-parallel degree).
        mesh: the whole device mesh (``dp`` and, with tensor parallelism, ``tp``), or None.
        dp_mesh: the data-parallel sub-mesh, or None.
        reduce: sums a tensor over the data-parallel ranks (None for one process).
    """

    distributed: bool = False
    rank: int = 0
    size: int = 1
    mesh: Any = None
    dp_mesh: Any = None
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None


def setup_data_parallel(
    rt: Runtime, *, tp_size: int = 1, reduce_on_cpu: bool = False
) -> DataParallel:
    """Build the mesh and the data-parallel reduction (a single process gets the defaults).

    Args:
        rt: the runtime from ``start_runtime``.
        tp_size: tensor-parallel degree (TP peers hold the same batch, so sums skip them).
        reduce_on_cpu: the values reduced live on the CPU (rollout bookkeeping): move them to
            the device for the collective and back.
    """
    if not rt.dist.is_distributed:
        return DataParallel()
    mesh = build_mesh(tp=tp_size, device_type=rt.device.type)
    rank, size = data_parallel_rank_and_size(mesh)
    dp_mesh = data_parallel_mesh(mesh)

    def reduce(value: torch.Tensor) -> torch.Tensor:
        if reduce_on_cpu:
            return all_reduce_sum(value.to(rt.device), group=dp_mesh).cpu()
        return all_reduce_sum(value, group=dp_mesh)

    return DataParallel(True, rank, size, mesh, dp_mesh, reduce)


def wrap_blocks(
    models: Iterable[nn.Module | None],
    *,
    activation_checkpointing: bool = False,
    activation_offloading: bool = False,
    compile: bool = False,
) -> None:
    """Activation checkpointing/offloading on the first model (the trained one); compile all.

    Frozen models (teacher, reference) run under ``no_grad`` and keep no activations, so only
    the trained model gets the checkpointing and offloading wrappers.
    """
    present = [m for m in models if m is not None]
    if activation_checkpointing:
        apply_activation_checkpointing(present[0], TransformerBlock)
    if activation_offloading:
        apply_activation_offloading(present[0], TransformerBlock)
    if compile:
        for model in present:
            for block in model.modules():
                if isinstance(block, TransformerBlock):
                    block.compile()


def shard_with_fsdp(
    models: Iterable[nn.Module | None], dp: DataParallel, settings: FSDPSettings
) -> None:
    """FSDP2 per transformer block, then the root, for each model (no-op for one process)."""
    if not (dp.distributed and settings.fsdp):
        return
    for model in models:
        if model is None:
            continue
        apply_fsdp(
            model,
            dp.dp_mesh,
            block_match=TransformerBlock,
            reshard_after_forward=settings.reshard_after_forward,
            cpu_offload=settings.cpu_offload,
            ignored_params=unshardable_frozen_params(model, dp.size),
        )


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """FSDP2: reduce-scatter gradients in the coming backward only when ``enabled``.

    Gradient accumulation turns it off for all micro-batches but the last of a step, so the
    gradients are synchronised once per optimizer step. A no-op for a model without FSDP.
    """
    setter = getattr(model, "set_requires_gradient_sync", None)
    if setter is not None:
        setter(enabled)
