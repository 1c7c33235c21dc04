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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tune.dist import (
    DataParallel,
    ParallelPlan,
    PipelinedModel,
    padded_batch,
    parallelize,
    setup_pipeline_parallel,
)
from tune.models import TransformerBlock
from tune.recipes.common.config_sections import DistributedConfig
from tune.recipes.common.layout_checks import pipeline_virtual_stages
from tune.recipes.common.runtime import Runtime
from tune.train.losses import cross_entropy

Batch = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]


def _summed_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return cross_entropy(logits, labels).loss_sum


@dataclass
class PipelineRun:
    """The pipelined model and the fixed batch shape of its steps.

    Args:
        pipe: this rank's stages and schedule (``pipe.module``: its parameters, model names).
        length: tokens per row (``data.max_seq_len``).
        rows: rows per step (accumulation × micro-batch size).
        reduce: sums over data-parallel ranks.
        device: where batches go.
    """

    pipe: PipelinedModel
    length: int
    rows: int
    reduce: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device

    def module(self) -> nn.Module:
        """This rank's parameters under the model's names (optimizer, checkpoints, outputs)."""
        return self.pipe.module

    def batch(self, micro_batches: Sequence[Mapping[str, torch.Tensor]]) -> Batch:
        """Tokens, labels and model keyword inputs [rows, length] of a step's micro-batches (a
        short held-out group is filled with rows that train nothing)."""
        parts = [padded_batch({k: v.to(self.device) for k, v in mb.items()}, self.length)
                 for mb in micro_batches]  # fmt: skip
        tokens, labels, positions = (torch.cat([p[0][k] for p in parts])
                                     for k in ("tokens", "labels", "positions"))  # fmt: skip
        documents = [p[1] if p[1] is not None else torch.zeros_like(p[0]["tokens"]) for p in parts]
        missing = self.rows - tokens.shape[0]
        if missing > 0:
            tokens = torch.cat([tokens, tokens.new_zeros(missing, self.length)])
            labels = torch.cat([labels, labels.new_full((missing, self.length), -100)])
            positions = torch.cat([positions, positions[:1].expand(missing, -1)])
            documents.append(tokens.new_zeros(missing, self.length))
        kwargs = {"positions": positions}
        if any(p[1] is not None for p in parts):
            kwargs["document_ids"] = torch.cat(documents)
        return tokens, labels, kwargs

    def step(self, micro_batches: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, Any]:
        """Forward and backward of the step; ``{"loss", "num_tokens"}`` on every rank."""
        tokens, labels, kwargs = self.batch(micro_batches)
        count = self.reduce((labels != -100).sum())
        loss = self.pipe.step(tokens, labels, num_tokens=count, **kwargs)
        return {"loss": float(loss), "num_tokens": int(count)}

    def validation_loss(
        self, batches: Iterable[Mapping[str, torch.Tensor]], per_step: int, max_batches: int | None
    ) -> float:
        """Token-mean loss over held-out batches, ``per_step`` at a time (every rank)."""
        self.pipe.module.eval()
        total = count = 0.0
        group: list[Mapping[str, torch.Tensor]] = []
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            group.append(batch)
            if len(group) == per_step:
                total, count = self._add(group, total, count)
                group = []
        if group:
            total, count = self._add(group, total, count)
        self.pipe.module.train()
        return total / max(count, 1.0)

    def _add(self, group: Sequence[Mapping[str, torch.Tensor]], total: float,
             count: float) -> tuple[float, float]:  # fmt: skip
        tokens, labels, kwargs = self.batch(group)
        counted = float(self.reduce((labels != -100).sum()))
        return total + self.pipe.loss_sum(tokens, labels, **kwargs), count + counted


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
) -> PipelineRun:
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
    return PipelineRun(pipe, length, accumulation * micro_batch_size, reduce, device)
