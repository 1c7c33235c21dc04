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

from tune.dist import (
    DataParallel,
    ParallelPlan,
    PipelineBatches,
    PipelinedModel,
    parallelize,
    setup_pipeline_parallel,
)
from tune.models import TransformerBlock, ep_plan
from tune.recipes.common.layout_checks import pipeline_virtual_stages, reject_routed_experts
from tune.recipes.common.runtime import Runtime
from tune.train.driver import TrainingDriver
from tune.train.losses import cross_entropy


def _summed_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return cross_entropy(logits, labels).loss_sum


def pipelined_checkpoint(
    ckpt: Any,
    rt: Runtime,
    cfg: Any,
    *,
    micro_batch_size: int,
    loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = _summed_ce,
) -> tuple[Any, DataParallel, PipelineBatches]:
    """Cut ``ckpt.model`` into this rank's stages (checkpointed / FSDP2-sharded each) and build
    the schedule of ``cfg.distributed``.

    Args:
        ckpt: the loaded checkpoint; a copy whose ``model`` is this rank's stages' parameters
            (under the model's names) is returned, for the optimizer, checkpoints and outputs.
        rt: the runtime.
        cfg: a training recipe's config (``distributed``, ``training``, ``data.max_seq_len``).
        micro_batch_size: rows of one of the recipe's micro-batches.
        loss_sum: ``(logits, target) -> loss summed over the micro-batch's units`` on the last
            stage (default: token cross-entropy against labels).

    Returns:
        ``(ckpt, dp, batches)``: dp is the data-parallel layout inside a pipeline rank.
    """
    settings, t = cfg.distributed, cfg.training
    reject_routed_experts(ckpt.model, bool(ep_plan(ckpt.model)), "pp_size")
    dp, mesh = setup_pipeline_parallel(settings.pp_size, settings.tp_size,
                                       device_type=rt.device.type)  # fmt: skip
    accumulation = t.gradient_accumulation_steps(dp.size)
    plan = ParallelPlan(
        block=TransformerBlock, mesh=dp.mesh, fsdp=settings.fsdp and dp.size > 1,
        reshard_after_forward=settings.reshard_after_forward, cpu_offload=settings.cpu_offload,
        activation_checkpointing=t.activation_checkpointing,
    )  # fmt: skip
    per_micro_batch = settings.pp_microbatches or settings.pp_size
    pipe = PipelinedModel(
        ckpt.model, mesh, settings.pp_schedule, n_microbatches=accumulation * per_micro_batch,
        loss_sum=loss_sum, virtual_stages=pipeline_virtual_stages(settings), device=rt.device,
        prepare_stage=lambda stage: parallelize(stage, plan),
    )  # fmt: skip
    batches = PipelineBatches(pipe, cfg.data.max_seq_len, accumulation * micro_batch_size,
                              dp.reduce or (lambda x: x), rt.device)  # fmt: skip
    return dataclasses.replace(ckpt, model=pipe.module), dp, batches


def clip_across_stages(driver: TrainingDriver, batches: PipelineBatches) -> None:
    """One gradient norm over every stage's parameters, a tied head's copy counted once."""
    driver.grad_norm_group = batches.pipe.pp_mesh.get_group()
    driver.grad_norm_exclude = tuple(batches.pipe.tied_copies())
