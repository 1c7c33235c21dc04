"""``distributed.pp_size``: a token recipe's model trained as pipeline stages (tune.dist's
``PipelinedModel``).

Every rank loads the model, keeps its stages (layer ranges) and trains them with the schedule of
``distributed.pp_schedule``. A step's micro-batches become one batch of fixed shape
``[accumulation * micro_batch_size, data.max_seq_len]`` (stages exchange fixed-shape activations),
split by the schedule into ``accumulation * pp_microbatches`` pipeline micro-batches; the loss is
normalised by the step's trained tokens over every data-parallel rank, as without pipelining.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tune.dist import (
    DataParallel,
    ParallelPlan,
    PipelineBatches,
    PipelinedModel,
    parallelize,
    setup_pipeline_parallel,
)
from tune.models import TransformerBlock
from tune.recipes.common.config_sections import DistributedConfig
from tune.recipes.common.layout_checks import pipeline_virtual_stages
from tune.recipes.common.runtime import Runtime
from tune.train.losses import cross_entropy


def _summed_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return cross_entropy(logits, labels).loss_sum


def pipeline_data_parallel(rt: Runtime, settings: DistributedConfig) -> tuple[DataParallel, Any]:
    """The data-parallel layout inside a pipeline rank and the 4-D pipeline mesh."""
    return setup_pipeline_parallel(settings.pp_size, settings.tp_size,
                                   device_type=rt.device.type)  # fmt: skip


def pipeline_model(
    model: nn.Module,
    mesh: Any,
    dp: DataParallel,
    settings: DistributedConfig,
    *,
    accumulation: int,
    micro_batch_size: int,
    length: int,
    device: torch.device,
    activation_checkpointing: bool = False,
    loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _summed_ce,
) -> PipelineBatches:
    """Cut ``model`` into this rank's stages, checkpoint / FSDP2-shard each, build the schedule.

    Args:
        micro_batch_size: rows of one of the recipe's micro-batches.
        loss_sum: ``(logits, target) -> loss summed over the micro-batch's units`` on the last
            stage (default: token cross-entropy against labels).
    """
    virtual = pipeline_virtual_stages(settings)
    per_row_batch = settings.pp_microbatches or settings.pp_size
    plan = ParallelPlan(
        block=TransformerBlock, mesh=dp.mesh, fsdp=settings.fsdp and dp.size > 1,
        reshard_after_forward=settings.reshard_after_forward, cpu_offload=settings.cpu_offload,
        activation_checkpointing=activation_checkpointing,
    )  # fmt: skip
    pipe = PipelinedModel(
        model, mesh, settings.pp_schedule, n_microbatches=accumulation * per_row_batch,
        loss_sum=loss_sum, virtual_stages=virtual, device=device,
        prepare_stage=lambda stage: parallelize(stage, dataclasses.replace(plan)),
    )  # fmt: skip
    reduce = dp.reduce or (lambda x: x)
    return PipelineBatches(pipe, length, accumulation * micro_batch_size, reduce, device)
