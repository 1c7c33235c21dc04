"""Pipeline parallelism: stages cut from a plain model by layer ranges, run by torch's schedules.

The model contract (duck-typed, as tune.models' ``Transformer`` follows it)::

    model.tok_embeddings   # first stage only; None elsewhere
    model.layers           # nn.ModuleDict (or nn.ModuleList) of blocks, run in order
    model.norm, model.output   # last stage only; None elsewhere
    model(x, **kwargs)     # x: token ids [B, T] when tok_embeddings is set, else hidden states
                           # [B, T, dim]; returns logits when output is set, else hidden states

A stage is a copy of the model's module tree holding only its own layers (keys, and so parameter
FQNs, unchanged: stage 1's ``layers.2.attn.q_proj.weight`` keeps its name) and sharing the
parameter tensors with the model; the modules of other stages are set to None. Keyword arguments
of ``schedule.step`` (positions, document ids, masks) are split into micro-batches and reach every
stage, so each stage rebuilds its own rotary tables and masks.

Stages are placed on ranks in loop style (stage ``s`` on pp rank ``s % pp``; GPipe, 1F1B,
interleaved schedules) or V style (pp rank ``r`` holds stages ``r`` and ``2 pp - 1 - r``; ZBV).

Loss normalisation: the schedule runs one loss per micro-batch and backward on it. To make the
accumulated gradient equal the one-process mean over every trained token of the step, each
micro-batch loss is summed over its tokens and divided by the global token count of the step
(``token_normalised_loss``), and the schedule is built with ``scale_grads=False``::

    loss_fn = token_normalised_loss(summed_cross_entropy, scale=dp_size)
    schedule = build_pipeline_schedule("1f1b", stages, mesh["pp"], n_microbatches=4,
                                       loss_fn=loss_fn)
    for tokens, labels in batches:
        loss_fn.num_tokens = count_target_tokens(labels, ignore_index, dp_group)  # whole step
        schedule.step(tokens, target=labels, losses=losses)  # tokens matter on the first stage

``scale=dp_size`` undoes FSDP's averaging of gradients over data-parallel ranks.

Tied embeddings (``output.weight is tok_embeddings.weight``) on different stages are refused by
default. With ``tied_weights="copy"`` the last stage trains its own copy of the weight, and
``sync_tied_gradients`` (after each backward, before the optimizer step) sums the two copies'
gradients between the ranks holding the first and last stage, so both take the same update as
the one shared weight would. A gradient-norm clip over all pipeline ranks counts it twice.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor

from tune.dist.mesh import MESH_DIMS, resolve_mesh_shape

logger = logging.getLogger(__name__)

PP = "pp"
StageStyle = Literal["loop", "v"]

# Schedules that split backward into input- and weight-gradient passes (zero bubble).
SPLIT_BACKWARD = ("zero_bubble", "zbv_zero_bubble")
# name -> (torch class name, stage placement, local stages: "one" or "many")
SCHEDULES: dict[str, tuple[str, StageStyle, str]] = {
    "gpipe": ("ScheduleGPipe", "loop", "one"),
    "1f1b": ("Schedule1F1B", "loop", "one"),
    "interleaved_1f1b": ("ScheduleInterleaved1F1B", "loop", "many"),
    "looped_bfs": ("ScheduleLoopedBFS", "loop", "many"),
    "zero_bubble": ("ScheduleInterleavedZeroBubble", "loop", "many"),
    "zbv_zero_bubble": ("ScheduleZBVZeroBubble", "v", "many"),
}


class StageLayers(nn.ModuleDict):
    """A stage's share of a ``ModuleList``: keyed by the original indices (FQNs unchanged) and
    iterated like a list (``for layer in layers`` yields the blocks, in order)."""

    def __iter__(self) -> Iterator[nn.Module]:  # type: ignore[override]
        return iter(self.values())


def schedule_style(name: str) -> StageStyle:
    """How schedule ``name`` places stages on ranks: ``"loop"`` or ``"v"``."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown pipeline schedule {name!r}; expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[name][1]


def stage_ids(
    pp_rank: int, pp_size: int, virtual_stages: int = 1, *, style: StageStyle = "loop"
) -> list[int]:
    """Indices of the stages pp rank ``pp_rank`` holds, in order.

    Args:
        pp_rank: this rank's index in the pipeline group.
        pp_size: pipeline-parallel degree.
        virtual_stages: stages per rank (``pp_size * virtual_stages`` stages in all).
        style: ``"loop"`` (stage s on rank s % pp_size) or ``"v"`` (2 stages per rank, rank r
            holds r and 2 pp_size - 1 - r).
    """
    if pp_size < 1 or not 0 <= pp_rank < pp_size:
        raise ValueError(f"pp_rank={pp_rank} must lie in [0, pp_size={pp_size})")
    if virtual_stages < 1:
        raise ValueError(f"virtual_stages={virtual_stages} must be at least 1")
    if style == "v":
        if virtual_stages != 2:
            raise ValueError(f"V-style schedules hold 2 stages per rank, got {virtual_stages}")
        return [pp_rank, 2 * pp_size - 1 - pp_rank]
    if style != "loop":
        raise ValueError(f"stage style {style!r} must be 'loop' or 'v'")
    return [pp_rank + v * pp_size for v in range(virtual_stages)]


def layer_ranges(
    n_layers: int, n_stages: int, layers_per_stage: Sequence[int] | None = None
) -> list[range]:
    """Contiguous layer index ranges, one per stage; earlier stages take the remainder.

    Args:
        n_layers: number of blocks in the model.
        n_stages: number of pipeline stages (all ranks, all virtual stages).
        layers_per_stage: explicit counts (summing to ``n_layers``) instead of an even split.
    """
    if layers_per_stage is None:
        if n_stages > n_layers:
            raise ValueError(
                f"{n_stages} pipeline stages but the model has only {n_layers} layers; "
                f"lower pp_size * virtual_stages"
            )
        base, extra = divmod(n_layers, n_stages)
        layers_per_stage = [base + (s < extra) for s in range(n_stages)]
    if len(layers_per_stage) != n_stages or sum(layers_per_stage) != n_layers:
        raise ValueError(
            f"layers_per_stage={list(layers_per_stage)} must have {n_stages} entries summing "
            f"to the model's {n_layers} layers"
        )
    if any(n < 1 for n in layers_per_stage):
        raise ValueError(f"layers_per_stage={list(layers_per_stage)}: every stage needs a layer")
    starts = [sum(layers_per_stage[:s]) for s in range(n_stages)]
    return [range(start, start + n) for start, n in zip(starts, layers_per_stage, strict=True)]


def _tied_across(
    model: nn.Module, first: Sequence[str], last: Sequence[str]
) -> list[tuple[str, str]]:
    """(first-stage name, last-stage name) of each parameter the two module sets share."""

    def params(names: Sequence[str]) -> dict[int, str]:
        found = {}
        for name in names:
            module = getattr(model, name, None)
            if isinstance(module, nn.Module):
                for pname, p in module.named_parameters(remove_duplicate=False):
                    found[id(p)] = f"{name}.{pname}"
        return found

    firsts, lasts = params(first), params(last)
    return sorted((firsts[i], lasts[i]) for i in set(firsts) & set(lasts))


def pipeline_stages(
    model: nn.Module,
    pp_rank: int,
    pp_size: int,
    *,
    virtual_stages: int = 1,
    style: StageStyle = "loop",
    layers_attr: str = "layers",
    first_attrs: Sequence[str] = ("tok_embeddings",),
    last_attrs: Sequence[str] = ("norm", "output"),
    layers_per_stage: Sequence[int] | None = None,
    tied_weights: Literal["error", "copy"] = "error",
) -> list[nn.Module]:
    """This rank's pipeline stages cut from ``model`` by layer ranges (see the module docstring).

    Args:
        model: the plain model; its parameters are shared with the stages (build it on the meta
            device for a large model and materialise the stages).
        pp_rank: this rank's index in the pipeline group.
        pp_size: pipeline-parallel degree.
        virtual_stages: stages per rank (interleaved schedules use 2 or more).
        style: stage placement, ``schedule_style(name)`` of the schedule that will run them.
        layers_attr: attribute holding the blocks (``nn.ModuleDict`` or ``nn.ModuleList``).
        first_attrs: modules only the first stage keeps (others get None).
        last_attrs: modules only the last stage keeps.
        layers_per_stage: explicit layer counts per stage, in stage order.
        tied_weights: a parameter shared by the first and last stage (tied embeddings):
            ``"error"`` refuses it; ``"copy"`` gives the last stage its own copy, to be kept
            equal with ``sync_tied_gradients`` after every backward.

    Returns:
        One module per stage this rank holds, in ``stage_ids(...)`` order.
    """
    ids = stage_ids(pp_rank, pp_size, virtual_stages, style=style)
    n_stages = pp_size * virtual_stages
    layers = getattr(model, layers_attr, None)
    if not isinstance(layers, (nn.ModuleDict, nn.ModuleList)):
        raise TypeError(
            f"model.{layers_attr} is {type(layers).__name__}; expected an nn.ModuleDict or "
            f"nn.ModuleList of blocks"
        )
    missing = [a for a in (*first_attrs, *last_attrs) if not hasattr(model, a)]
    if missing:
        raise AttributeError(f"model has no {missing} (first_attrs/last_attrs of the stage cut)")
    tied = _tied_across(model, first_attrs, last_attrs) if n_stages > 1 else []
    if tied and tied_weights != "copy":
        names = ", ".join(f"{b} is {a}" for a, b in tied)
        raise ValueError(
            f"tied weights ({names}) fall on the first and last pipeline stages: pass "
            f"tied_weights='copy' and call sync_tied_gradients after each backward, or untie "
            f"them (tie_word_embeddings=False)"
        )
    keys = list(layers.keys()) if isinstance(layers, nn.ModuleDict) else list(range(len(layers)))
    ranges = layer_ranges(len(keys), n_stages, layers_per_stage)
    stages = []
    for sid in ids:
        keep = {str(keys[i]) for i in ranges[sid]}
        first, last = sid == 0, sid == n_stages - 1
        stage = _cut(model, layers_attr, keep, first, last, first_attrs, last_attrs)
        for _, name in tied if last else []:
            _untie(stage, name)
        stages.append(stage)
        logger.debug("pp rank %d stage %d: layers %s", pp_rank, sid, sorted(keep, key=int))
    return stages


def _cut(
    model: nn.Module,
    layers_attr: str,
    keep: set[str],
    first: bool,
    last: bool,
    first_attrs: Sequence[str],
    last_attrs: Sequence[str],
) -> nn.Module:
    layers = getattr(model, layers_attr)
    dropped = [m for k, m in layers.named_children() if k not in keep]
    dropped += [getattr(model, a) for a in first_attrs if not first]
    dropped += [getattr(model, a) for a in last_attrs if not last]
    # Share tensors and the dropped modules with the model instead of copying them: the copy is
    # only a new module tree (cheap, also for a meta-device model).
    memo: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    memo.update({id(m): m for m in dropped if m is not None})
    stage = copy.deepcopy(model, memo)
    kept = {k: m for k, m in getattr(stage, layers_attr).named_children() if k in keep}
    container = nn.ModuleDict(kept) if isinstance(layers, nn.ModuleDict) else StageLayers(kept)
    setattr(stage, layers_attr, container)
    for name in (*([] if first else first_attrs), *([] if last else last_attrs)):
        setattr(stage, name, None)
    return stage


def _untie(stage: nn.Module, name: str) -> None:
    owner_name, _, pname = name.rpartition(".")
    owner = stage.get_submodule(owner_name)
    shared = getattr(owner, pname)
    copy_ = nn.Parameter(shared.detach().clone(), requires_grad=shared.requires_grad)
    setattr(owner, pname, copy_)


_PAIR_GROUPS: dict[tuple[int, int], dist.ProcessGroup] = {}


def sync_tied_gradients(
    stages: Sequence[nn.Module],
    pp_group: DeviceMesh | dist.ProcessGroup | None,
    *,
    style: StageStyle = "loop",
    tied: Sequence[tuple[str, str]] = (("tok_embeddings.weight", "output.weight"),),
) -> None:
    """Sum the gradients of tied weights' copies on the first and last stage (``tied_weights=
    "copy"``); call on every pp rank after ``schedule.step`` and before the optimizer step.

    Works on plain and FSDP-sharded gradients (both copies are sharded alike over the same
    data-parallel ranks, so the local shards line up).

    Args:
        stages: this rank's stages from ``pipeline_stages(..., tied_weights="copy")``.
        pp_group: the pipeline group (``mesh["pp"]`` or a process group; None = default group).
        style: the stage placement the stages were cut with.
        tied: (name on the first stage, name on the last stage) of each tied parameter.
    """
    group = pp_group.get_group() if isinstance(pp_group, DeviceMesh) else pp_group
    group = group if group is not None else dist.group.WORLD
    if group is None:
        raise RuntimeError("sync_tied_gradients needs a process group: call init_distributed()")
    pp_rank, pp_size = dist.get_rank(group), dist.get_world_size(group)
    ids = stage_ids(pp_rank, pp_size, len(stages), style=style)
    last_id = pp_size * len(stages) - 1
    first_stage = stages[ids.index(0)] if 0 in ids else None
    last_stage = stages[ids.index(last_id)] if last_id in ids else None
    if first_stage is None and last_stage is None:
        return
    pair = group  # the two ranks holding the first and last stage (all of a pp=2 group)
    if (first_stage is None or last_stage is None) and pp_size > 2:
        last_rank = pp_size - 1 if style == "loop" else 0
        ranks = (dist.get_global_rank(group, 0), dist.get_global_rank(group, last_rank))
        if ranks not in _PAIR_GROUPS:  # only the two members create it
            _PAIR_GROUPS[ranks] = dist.new_group(list(ranks), use_local_synchronization=True)
        pair = _PAIR_GROUPS[ranks]
    for first_name, last_name in tied:
        params = [
            stage.get_parameter(name)
            for stage, name in ((first_stage, first_name), (last_stage, last_name))
            if stage is not None
        ]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        if len(params) == 2:  # both stages on this rank (V style)
            total = grads[0] + grads[1]
            params[0].grad, params[1].grad = total, total.clone()
            continue
        grad = grads[0]
        # A DTensor gradient (FSDP) is reduced through its local shard, in place.
        local = grad._local_tensor if isinstance(grad, DTensor) else grad
        dist.all_reduce(local, group=pair)
        params[0].grad = grad


def build_pipeline_mesh(
    pp: int,
    dp_replicate: int = 1,
    dp_shard: int = -1,
    tp: int = 1,
    device_type: str | None = None,
) -> DeviceMesh:
    """A 4-D mesh ``("pp", "dp_replicate", "dp_shard", "tp")``, pipeline outermost.

    ``mesh["pp"]`` is the pipeline group; ``mesh["dp_replicate", "dp_shard", "tp"]`` is a mesh as
    ``build_mesh`` makes (pass it to ``data_parallel_mesh``, ``apply_tp`` via ``["tp"]``).

    Args:
        pp: pipeline-parallel degree; must divide the world size.
        dp_replicate: replica groups (HSDP), as in ``build_mesh``.
        dp_shard: FSDP shard group size; -1 takes the ranks the other degrees leave.
        tp: tensor-parallel degree.
        device_type: "cuda" or "cpu"; None picks the device of the process group backend.
    """
    if not dist.is_initialized():
        raise RuntimeError("build_pipeline_mesh needs a process group: call init_distributed()")
    world = dist.get_world_size()
    if pp < 1 or world % pp:
        raise ValueError(f"pp={pp} must divide the world size {world}")
    shape = (pp, *resolve_mesh_shape(world // pp, dp_replicate, dp_shard, tp))
    if device_type is None:
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mesh = init_device_mesh(device_type, shape, mesh_dim_names=(PP, *MESH_DIMS))
    if dist.get_rank() == 0:
        logger.info("device mesh %s = %s on %s", (PP, *MESH_DIMS), shape, device_type)
    return mesh


class TokenNormalisedLoss:
    """A per-micro-batch loss ``loss_sum(output, target) / num_tokens * scale``; set
    ``num_tokens`` before each ``schedule.step`` (the schedule is built once)."""

    def __init__(
        self,
        loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        num_tokens: torch.Tensor | int | None = None,
        *,
        scale: float = 1.0,
    ) -> None:
        self.loss_sum = loss_sum
        self.num_tokens = num_tokens
        self.scale = scale

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.num_tokens is None:
            raise RuntimeError("TokenNormalisedLoss.num_tokens is unset: set it before step()")
        if isinstance(self.num_tokens, int) and self.num_tokens < 1:
            raise ValueError(f"num_tokens={self.num_tokens}: the step has no trained tokens")
        return self.loss_sum(output, target) / self.num_tokens * self.scale


def token_normalised_loss(
    loss_sum: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    num_tokens: torch.Tensor | int | None = None,
    *,
    scale: float = 1.0,
) -> TokenNormalisedLoss:
    """The loss to give ``build_pipeline_schedule``: summed per micro-batch, over the step's count.

    Args:
        loss_sum: loss summed over the micro-batch's trained tokens, e.g. cross-entropy with
            ``reduction="sum"``; output [B_mb, T, vocab], target [B_mb, T].
        num_tokens: trained tokens of the whole step over every micro-batch and data-parallel
            rank (``count_target_tokens(labels, ignore, dp_group)``); update
            ``loss.num_tokens`` every step.
        scale: multiply by this, e.g. the data-parallel size when FSDP averages gradients.
    """
    return TokenNormalisedLoss(loss_sum, num_tokens, scale=scale)


def build_pipeline_schedule(
    name: str,
    stages: Sequence[nn.Module],
    pp_group: DeviceMesh | dist.ProcessGroup | None,
    *,
    n_microbatches: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    device: torch.device | str = "cpu",
) -> Any:
    """Wrap this rank's stage modules in ``PipelineStage``s and build schedule ``name``.

    Gradients are not rescaled by the schedule (``scale_grads=False``): normalise the loss with
    ``token_normalised_loss``.

    Args:
        name: one of ``SCHEDULES``: "gpipe", "1f1b" (one stage per rank), "interleaved_1f1b",
            "looped_bfs", "zero_bubble" (2+ stages per rank, loop style), "zbv_zero_bubble"
            (2 stages per rank, V style).
        stages: ``pipeline_stages(...)`` of this rank, cut with ``schedule_style(name)``.
        pp_group: the pipeline group (a 1-D mesh such as ``mesh["pp"]``, or a process group);
            None for the default group.
        n_microbatches: micro-batches per step; the batch size must be divisible by it.
        loss_fn: ``(output, target) -> loss`` run on the last stage per micro-batch.
        device: the device the stages compute on.

    Returns:
        A ``torch.distributed.pipelining`` schedule; call ``.step(inputs, target=labels,
        losses=list, **kwargs)`` on every pp rank.
    """
    from torch.distributed import pipelining

    style = schedule_style(name)
    cls_name, _, locality = SCHEDULES[name]
    group = pp_group.get_group() if isinstance(pp_group, DeviceMesh) else pp_group
    pp_rank, pp_size = dist.get_rank(group), dist.get_world_size(group)
    n_local = len(stages)
    if locality == "one" and n_local != 1:
        raise ValueError(f"schedule {name!r} runs one stage per rank, got {n_local}")
    if locality == "many" and n_local < 2 and name != "looped_bfs":
        raise ValueError(
            f"schedule {name!r} needs 2 or more stages per rank (virtual_stages), got {n_local}"
        )
    ids = stage_ids(pp_rank, pp_size, n_local, style=style)
    n_stages = pp_size * n_local
    if name in SPLIT_BACKWARD:
        _keep_gathered_for_weight_pass(stages)
    wrapped = [
        pipelining.PipelineStage(module, sid, n_stages, torch.device(device), group=group)
        for module, sid in zip(stages, ids, strict=True)
    ]
    cls = getattr(pipelining, cls_name)
    stage_arg: Any = wrapped[0] if locality == "one" else wrapped
    return cls(stage_arg, n_microbatches=n_microbatches, loss_fn=loss_fn, scale_grads=False)


def _keep_gathered_for_weight_pass(stages: Sequence[nn.Module]) -> None:
    # A zero-bubble schedule runs a micro-batch's weight-gradient pass after its input-gradient
    # pass; FSDP blocks that reshard after forward drop the gathered weights that pass reads, and
    # the gradients come out wrong (measured with torch 2.13 on gloo: 6e-3 off after 3 steps).
    from torch.distributed.fsdp import FSDPModule

    for stage in stages:
        for module in stage.modules():
            if isinstance(module, FSDPModule):
                module.set_reshard_after_forward(False, recurse=False)
