"""Pipeline-parallel scenarios run by ``dist_worker.py`` (in the shared 2- and 4-rank launches).

Each runs every schedule for 3 AdamW steps on a 4-layer tiny model and compares the losses and
every parameter with one process training on the whole batch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from dist_tiny_transformer import IGNORE, build_model, make_batches, make_optimizer, train_reference
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor

import tune.dist as td

STEPS = 3
N_LAYERS = 4
BATCH = 8
MICROBATCHES = 4
SCHEDULES = ["gpipe", "1f1b", "interleaved_1f1b", "looped_bfs", "zero_bubble", "zbv_zero_bubble"]
TP_PLAN = {  # inside each stage; "output" only where the stage has it
    "layers.*.attn.[qkv]_proj": "colwise",
    "layers.*.attn.o_proj": "rowwise",
    "layers.*.mlp.gate_proj": "colwise",
    "layers.*.mlp.up_proj": "colwise",
    "layers.*.mlp.down_proj": "rowwise",
    "output": "colwise_rep",
}


def _summed_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
    )


def _full_state(stages: list[nn.Module]) -> dict[str, torch.Tensor]:
    """This rank's stages' parameters, whole (DTensors gathered over data-parallel ranks)."""
    out = {}
    for stage in stages:
        for k, v in stage.state_dict().items():
            out[k] = (v.full_tensor() if isinstance(v, DTensor) else v).detach().clone()
    return out


def _run_schedule(
    name: str, mesh: Any, ref: tuple[list[float], dict[str, torch.Tensor]], tie: bool = False
) -> dict[str, Any]:
    pp_mesh, inner = mesh["pp"], mesh["dp_replicate", "dp_shard", "tp"]
    dp_mesh = td.data_parallel_mesh(inner)
    pp_rank, pp_size = pp_mesh.get_local_rank(), pp_mesh.size()
    dp_rank, dp_size = td.data_parallel_rank_and_size(inner)
    style = td.schedule_style(name)
    virtual = 1 if name in ("gpipe", "1f1b") else 2
    model = build_model(n_layers=N_LAYERS, tie_embeddings=tie)
    stages = td.pipeline_stages(
        model, pp_rank, pp_size, virtual_stages=virtual, style=style, tied_weights="copy"
    )
    for stage in stages:
        if inner["tp"].size() > 1:
            plan = {k: v for k, v in TP_PLAN.items() if k != "output" or stage.output is not None}
            td.apply_tp(stage, inner["tp"], plan)
        if dp_size > 1:
            td.apply_fsdp(stage, dp_mesh, block_match="layers.*")
    opt = make_optimizer(nn.ModuleList(stages))
    # FSDP averages gradients over dp ranks; scaling by dp_size turns that into the sum.
    loss_fn = td.token_normalised_loss(_summed_ce, scale=dp_size)
    schedule = td.build_pipeline_schedule(
        name, stages, pp_mesh, n_microbatches=MICROBATCHES, loss_fn=loss_fn
    )
    losses: list[float] = []
    for batch in make_batches(STEPS, batch=BATCH):
        tokens = batch["tokens"].chunk(dp_size)[dp_rank]
        labels = batch["labels"].chunk(dp_size)[dp_rank]
        loss_fn.num_tokens = td.count_target_tokens(labels, IGNORE, dp_mesh)
        mb_losses: list[torch.Tensor] = []
        schedule.step(tokens, target=labels, losses=mb_losses)
        if tie:  # the first stage's embedding and the last stage's LM head: one weight
            td.sync_tied_gradients(stages, pp_mesh, style=style)
        opt.step()
        opt.zero_grad()
        if mb_losses:  # the rank holding the last stage
            local = torch.stack([x.detach() for x in mb_losses]).sum() / dp_size
            losses.append(td.all_reduce_sum(local, dp_mesh).item())
    params = _full_state(stages)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, params)
    out: dict[str, Any] = {"losses": losses, "stage_keys": sorted(params)}
    if dist.get_rank() == 0:
        merged = {k: v for part in gathered for k, v in part.items()}
        out["missing"] = sorted(set(ref[1]) - set(merged))
        out["param_err"] = max((merged[k] - ref[1][k]).abs().max().item() for k in merged)
    if losses:
        out["loss_err"] = max(abs(a - b) for a, b in zip(losses, ref[0], strict=True))
    return out


def _reference(tie: bool = False) -> tuple[list[float], dict[str, torch.Tensor]]:
    model = build_model(n_layers=N_LAYERS, tie_embeddings=tie)
    return train_reference(model, make_batches(STEPS, batch=BATCH))


def scenario_pp(info: td.DistributedInfo) -> dict[str, Any]:
    """PP = world size (2): every schedule; tied embeddings on two ranks (1F1B) and on one (ZBV)."""
    ref, tied = _reference(), _reference(tie=True)
    mesh = td.build_pipeline_mesh(info.world_size)
    out = {name: _run_schedule(name, mesh, ref) for name in SCHEDULES}
    for name in ("1f1b", "zbv_zero_bubble"):
        out[f"tied_{name}"] = _run_schedule(name, mesh, tied, tie=True)
    return out


def scenario_pp_dp(info: td.DistributedInfo) -> dict[str, Any]:
    """PP = 2 x DP = 2 (FSDP2 over dp) on 4 ranks: every schedule but looped BFS."""
    ref, tied = _reference(), _reference(tie=True)
    mesh = td.build_pipeline_mesh(2)
    out = {name: _run_schedule(name, mesh, ref) for name in SCHEDULES if name != "looped_bfs"}
    out["tied_1f1b"] = _run_schedule("1f1b", mesh, tied, tie=True)
    return out


def scenario_pp_dp_tp(info: td.DistributedInfo) -> dict[str, Any]:
    """PP = 2 x DP = 2 x TP = 2 on 8 ranks (TP inside each stage, then FSDP2 over dp)."""
    ref = _reference()
    mesh = td.build_pipeline_mesh(2, dp_shard=2, tp=2)
    return {name: _run_schedule(name, mesh, ref) for name in SCHEDULES if name != "looped_bfs"}


def _flat(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    # Flattened optimizer state is keyed by parameter FQN, so stages' dicts merge and reshard.
    options = StateDictOptions(flatten_optimizer_state_dict=True)
    return get_state_dict(model, opt, options=options)


def _pp_steps(
    mesh: Any, batches: list[dict[str, torch.Tensor]], load: str | None = None, save: str = ""
) -> tuple[list[float], list[nn.Module]]:
    """1F1B over ``mesh["pp"]`` (FSDP2 over dp), one optimizer per stage; optionally resume
    from / save to a DCP checkpoint holding every stage's model and optimizer state."""
    pp_mesh, inner = mesh["pp"], mesh["dp_replicate", "dp_shard", "tp"]
    dp_mesh = td.data_parallel_mesh(inner)
    dp_rank, dp_size = td.data_parallel_rank_and_size(inner)
    stages = td.pipeline_stages(
        build_model(n_layers=N_LAYERS), pp_mesh.get_local_rank(), pp_mesh.size()
    )
    for stage in stages:
        if dp_size > 1:
            td.apply_fsdp(stage, dp_mesh, block_match="layers.*")
    opts = [make_optimizer(stage) for stage in stages]
    if load:
        parts = [_flat(stage, opt) for stage, opt in zip(stages, opts, strict=True)]
        state = {"model": {}, "optim": {}}
        for model_sd, optim_sd in parts:
            state["model"].update(model_sd)
            state["optim"].update(optim_sd)
        dcp.load(state, checkpoint_id=load)
        for stage, opt in zip(stages, opts, strict=True):
            set_state_dict(stage, opt, model_state_dict=state["model"],
                           optim_state_dict=state["optim"],
                           options=StateDictOptions(flatten_optimizer_state_dict=True,
                                                    strict=False))  # fmt: skip
    loss_fn = td.token_normalised_loss(_summed_ce, scale=dp_size)
    schedule = td.build_pipeline_schedule(
        "1f1b", stages, pp_mesh, n_microbatches=4, loss_fn=loss_fn
    )
    losses = []
    for batch in batches:
        labels = batch["labels"].chunk(dp_size)[dp_rank]
        loss_fn.num_tokens = td.count_target_tokens(labels, IGNORE, dp_mesh)
        mb_losses: list[torch.Tensor] = []
        schedule.step(batch["tokens"].chunk(dp_size)[dp_rank], target=labels, losses=mb_losses)
        for opt in opts:
            opt.step()
            opt.zero_grad()
        local = torch.stack([x.detach() for x in mb_losses]).sum() / dp_size if mb_losses else None
        losses.append(td.all_reduce_sum(local, dp_mesh).item() if local is not None else None)
    if save:
        state = {"model": {}, "optim": {}}
        for stage, opt in zip(stages, opts, strict=True):
            model_sd, optim_sd = _flat(stage, opt)
            state["model"].update(model_sd)
            state["optim"].update(optim_sd)
        dcp.save(state, checkpoint_id=save)
    return losses, stages


def scenario_pp_dcp(info: td.DistributedInfo) -> dict[str, Any]:
    """Train 2 steps at PP=2 x DP=2, save with DCP; resume at DP=4 (FSDP2) and at PP=4 for the
    third step: its loss and the final parameters equal one process's 3 steps."""
    ref = _reference()
    batches = make_batches(STEPS, batch=BATCH)
    path = str(Path(sys.argv[1]).parent / "pp_dcp")
    _pp_steps(td.build_pipeline_mesh(2), batches[:2], save=path)
    dist.barrier()
    out: dict[str, Any] = {"ref_losses": ref[0]}
    # DP=4, no pipeline: the FSDP model loads the stages' keys.
    model = build_model(n_layers=N_LAYERS)
    td.apply_fsdp(model, block_match="layers.*")
    opt = make_optimizer(model)
    model_sd, optim_sd = _flat(model, opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=StateDictOptions(flatten_optimizer_state_dict=True))  # fmt: skip
    rank, world = info.rank, info.world_size
    labels = batches[2]["labels"].chunk(world)[rank]
    count = td.count_target_tokens(labels, IGNORE)
    local = _summed_ce(model(batches[2]["tokens"].chunk(world)[rank]), labels)
    (local / count * world).backward()
    opt.step()
    out["dp4_loss"] = (td.all_reduce_sum(local.detach()) / count).item()
    full = td.gather_full_state_dict(model)
    if rank == 0:
        out["dp4_param_err"] = max((full[k] - ref[1][k]).abs().max().item() for k in ref[1])
    # PP=4, one layer per stage.
    losses, stages = _pp_steps(td.build_pipeline_mesh(4), batches[2:], load=path)
    out["pp4_loss"] = losses[0]
    params = _full_state(stages)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, params)
    if rank == 0:
        merged = {k: v for part in gathered for k, v in part.items()}
        out["pp4_missing"] = sorted(set(ref[1]) - set(merged))
        out["pp4_param_err"] = max((merged[k] - ref[1][k]).abs().max().item() for k in merged)
    return out
