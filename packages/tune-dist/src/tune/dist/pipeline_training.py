"""Training a model as pipeline stages: the stages of this rank, their schedule, one module with the
model's parameter names (for the optimizer and checkpoints), a training step and a forward-only
loss on whole batches, and the full state dict gathered over every stage.

    dp, mesh = setup_pipeline_parallel(pp=2)                      # after init_distributed()
    pipe = PipelinedModel(model, mesh, "1f1b", n_microbatches=4, loss_sum=summed_ce,
                          prepare_stage=lambda s: apply_fsdp(s, dp.dp_mesh, block_match=...))
    optimizer = AdamW(p for p in pipe.module.parameters() if p.requires_grad)
    loss = pipe.step(tokens, labels, num_tokens=dp.reduce(count), positions=positions)
    optimizer.step(); optimizer.zero_grad()

``pipe.module`` holds exactly this rank's parameters under the plain model's names
(``layers.5.attn.q_proj.weight``), so ``torch.distributed.checkpoint`` saves of it, with the
optimizer state flattened to names, reshard across pipeline degrees.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from tune.dist.data_parallel import DataParallel
from tune.dist.mesh import data_parallel_mesh, data_parallel_rank_and_size
from tune.dist.pipeline import (
    PP,
    StageLayers,
    _tied_across,
    build_pipeline_mesh,
    build_pipeline_schedule,
    pipeline_stages,
    schedule_style,
    stage_ids,
    sync_tied_gradients,
    token_normalised_loss,
)
from tune.dist.reductions import all_reduce_sum

logger = logging.getLogger(__name__)

INNER_DIMS = ("dp_replicate", "dp_shard", "tp")


def setup_pipeline_parallel(
    pp: int, tp: int = 1, *, device_type: str | None = None
) -> tuple[DataParallel, DeviceMesh]:
    """The pipeline mesh and the data-parallel layout inside one pipeline rank.

    Args:
        pp: pipeline-parallel degree (divides the world size).
        tp: tensor-parallel degree inside each stage.
        device_type: "cuda" or "cpu"; None picks the process group backend's device.

    Returns:
        ``(dp, mesh)``: ``dp`` as ``setup_data_parallel`` gives it, over the ranks of this
        pipeline rank (``dp.mesh`` is the 3-D ``(dp_replicate, dp_shard, tp)`` mesh); ``mesh`` the
        4-D ``(pp, dp_replicate, dp_shard, tp)`` mesh.
    """
    mesh = build_pipeline_mesh(pp, tp=tp, device_type=device_type)
    inner = mesh[INNER_DIMS]
    rank, size = data_parallel_rank_and_size(inner)
    dp_mesh = data_parallel_mesh(inner)

    def reduce(value: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(value, group=dp_mesh)

    return DataParallel(True, rank, size, inner, dp_mesh, reduce), mesh


def stage_module(stages: Sequence[nn.Module], layers_attr: str = "layers") -> nn.Module:
    """One module holding every stage's modules under the model's own names (shared, not
    copied): the stages' layers together, and the first/last stage's other modules."""
    view = copy.copy(stages[0])
    view.__dict__.update(_modules=dict(stages[0]._modules), _parameters={}, _buffers={})
    containers = [getattr(stage, layers_attr) for stage in stages]
    merged = {k: m for container in containers for k, m in container.named_children()}
    ordered = dict(sorted(merged.items(), key=lambda item: int(item[0])))
    kind = StageLayers if isinstance(containers[0], StageLayers) else nn.ModuleDict
    setattr(view, layers_attr, kind(ordered))
    for name, module in stages[0].named_children():
        if name == layers_attr:
            continue
        held = [getattr(stage, name) for stage in stages if getattr(stage, name) is not None]
        setattr(view, name, held[0] if held else None)
    for stage in stages:  # root-level parameters and buffers (none in tune.models' Transformer)
        view._parameters.update({k: p for k, p in stage._parameters.items() if p is not None})
        view._buffers.update({k: b for k, b in stage._buffers.items() if b is not None})
    return view


class PipelinedModel:
    """This rank's pipeline stages of ``model`` with their schedule (see the module docstring).

    Args:
        model: the plain model (its parameters are shared with the stages).
        mesh: the 4-D mesh from ``setup_pipeline_parallel``.
        schedule: a ``tune.dist.pipeline.SCHEDULES`` name.
        n_microbatches: pipeline micro-batches per step (divides the step's rows).
        loss_sum: ``(logits [B, T, V], labels [B, T]) -> loss summed over trained tokens``.
        virtual_stages: stages per rank (2+ for the interleaved schedules).
        prepare_stage: applied to each stage before the schedule is built (TP, checkpointing,
            FSDP2 over ``dp.mesh``).
        device: the device the stages compute on.
    """

    def __init__(
        self,
        model: nn.Module,
        mesh: DeviceMesh,
        schedule: str,
        *,
        n_microbatches: int,
        loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        virtual_stages: int = 1,
        prepare_stage: Callable[[nn.Module], Any] | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.pp_mesh, inner = mesh[PP], mesh[INNER_DIMS]
        self.dp_mesh = data_parallel_mesh(inner)
        self.dp_rank, self.dp_size = data_parallel_rank_and_size(inner)
        self.tp_rank = inner["tp"].get_local_rank()
        self.style = schedule_style(schedule)
        self.tied_names = _tied_across(model, ("tok_embeddings",), ("norm", "output"))
        self.tied = bool(self.tied_names)
        pp_rank, pp_size = self.pp_mesh.get_local_rank(), self.pp_mesh.size()
        self.stages = pipeline_stages(
            model, pp_rank, pp_size, virtual_stages=virtual_stages, style=self.style,
            tied_weights="copy",
        )  # fmt: skip
        self.holds_loss = any(getattr(s, "output", None) is not None for s in self.stages)
        self.module = stage_module(self.stages)
        self.module._tune_pipeline = self  # type: ignore[assignment]  # gather_full_state_dict
        for stage in self.stages:
            if prepare_stage is not None:
                prepare_stage(stage)
        # FSDP averages gradients over data-parallel ranks: scaling by dp_size makes it the sum.
        self.loss = token_normalised_loss(loss_sum, scale=self.dp_size)
        self.n_microbatches = n_microbatches
        self.schedule = build_pipeline_schedule(
            schedule, self.stages, self.pp_mesh, n_microbatches=n_microbatches,
            loss_fn=self.loss, device=device,
        )  # fmt: skip

    def tied_copies(self) -> list[nn.Parameter]:
        """The last stage's copies of weights tied to the first stage's (held by this rank):
        count them once in a gradient norm (``clip_grad_norm(norm_exclude=...)``)."""
        last = self.pp_mesh.size() * len(self.stages) - 1
        ids = stage_ids(self.pp_mesh.get_local_rank(), self.pp_mesh.size(), len(self.stages),
                        style=self.style)  # fmt: skip
        if last not in ids:
            return []
        stage = self.stages[ids.index(last)]
        return [stage.get_parameter(name) for _, name in self.tied_names]

    def from_last_stage(self, value: torch.Tensor) -> torch.Tensor:
        """Every rank: ``value`` summed over the ranks holding the last stage, once per
        data-parallel rank (tensor-parallel peers hold the same values). Others pass zeros of
        the same shape. Collective."""
        local = value if self.holds_loss and self.tp_rank == 0 else torch.zeros_like(value)
        dist.all_reduce(local)
        return local

    def _mean(self, losses: list[torch.Tensor], scale: float) -> torch.Tensor:
        local = torch.zeros((), dtype=torch.float64)
        if losses:
            local = torch.stack([x.detach().double().cpu() for x in losses]).sum() / scale
        return self.from_last_stage(local)

    def step(
        self, tokens: torch.Tensor, labels: torch.Tensor, *, num_tokens: torch.Tensor | int,
        **kwargs: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """Forward and backward over the whole batch; the step's mean loss on every rank.

        Args:
            tokens: [R, T] token ids (read by the first stage).
            labels: [R, T] (-100 ignored), read by the last stage.
            num_tokens: trained tokens of the step over every data-parallel rank.
            kwargs: per-token model inputs split like ``tokens`` (positions, document ids).
        """
        self.loss.num_tokens, self.loss.scale = num_tokens, float(self.dp_size)
        losses: list[torch.Tensor] = []
        self.schedule.step(tokens, target=labels, losses=losses, **kwargs)
        if self.tied:  # the first stage's embedding and the last stage's head: one weight
            sync_tied_gradients(self.stages, self.pp_mesh, style=self.style)
        return self._mean(losses, float(self.dp_size))

    @torch.no_grad()
    def _forward(self, tokens: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor | None:
        # Forward only, the whole batch through the stages in order, hidden states sent between
        # ranks (any schedule's placement; torch's V schedules have no forward-only pass).
        group = self.pp_mesh.get_group()
        me, size, per_rank = self.pp_mesh.get_local_rank(), self.pp_mesh.size(), len(self.stages)
        owner = {sid: r for r in range(size)
                 for sid in stage_ids(r, size, per_rank, style=self.style)}  # fmt: skip
        mine = stage_ids(me, size, per_rank, style=self.style)
        x: torch.Tensor | None = None
        for sid in range(size * per_rank):
            holder = owner[sid]
            if sid and owner[sid - 1] != holder and me in (owner[sid - 1], holder):
                peer = dist.get_global_rank(group, holder if me != holder else owner[sid - 1])
                if me == holder:
                    shape = torch.zeros(3, dtype=torch.int64)
                    dist.recv(shape, src=peer, group=group)
                    x = torch.empty(*shape.tolist(), dtype=self.dtype, device=tokens.device)
                    dist.recv(x, src=peer, group=group)
                else:
                    assert x is not None
                    dist.send(torch.tensor(x.shape, dtype=torch.int64), dst=peer, group=group)
                    dist.send(x.contiguous(), dst=peer, group=group)
            if me == holder:
                x = self.stages[mine.index(sid)](tokens if sid == 0 else x, **kwargs)
        return x if self.holds_loss else None

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the activations passed between stages (the parameters' dtype)."""
        return next(p for p in self.module.parameters()).dtype

    @torch.no_grad()
    def loss_sum(self, tokens: torch.Tensor, labels: torch.Tensor, **kwargs: torch.Tensor) -> float:
        """Forward only: the batch's summed loss over every data-parallel rank (every rank)."""
        logits = self._forward(tokens, **kwargs)
        local = torch.zeros((), dtype=torch.float64)
        if logits is not None:
            local = self.loss.loss_sum(logits, labels).detach().double().cpu()
        return float(self.from_last_stage(local))

    @torch.no_grad()
    def forward_outputs(
        self,
        tokens: torch.Tensor,
        target: torch.Tensor,
        output_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        **kwargs: torch.Tensor,
    ) -> torch.Tensor | None:
        """Forward only, ``output_fn(logits, target)`` on the whole batch (e.g. per-row log-probs
        [rows]) on the ranks holding the last stage; None elsewhere."""
        logits = self._forward(tokens, **kwargs)
        return None if logits is None else output_fn(logits, target)

    def full_state_dict(self, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        """Every stage's parameters, whole, on global rank 0 (``{}`` elsewhere). Collective."""
        keep = {n for n, p in self.module.named_parameters() if p.requires_grad}
        part: dict[str, torch.Tensor] = {}
        for name, value in self.module.state_dict().items():
            if trainable_only and name not in keep:
                continue
            full = value.full_tensor() if isinstance(value, DTensor) else value
            part[name] = full.detach().to("cpu", copy=True)
        sender = self.dp_rank == 0 and self.tp_rank == 0
        parts: list[Any] = [None] * dist.get_world_size() if dist.get_rank() == 0 else []
        dist.gather_object(part if sender else {}, parts if dist.get_rank() == 0 else None, dst=0)
        if dist.get_rank() != 0:
            return {}
        merged: dict[str, torch.Tensor] = {}
        for received in parts:
            merged.update(received or {})
        return merged
