"""Expert-parallel scenarios run by ``dist_worker.py`` (in the shared 2- and 4-rank launches).

Every scenario compares an expert-parallel run against one process on the same data shards.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from dist_tiny_moe import (
    AUX_COEF,
    IGNORE,
    LORA_RANK,
    N_EXPERTS,
    add_expert_lora,
    build_moe,
    make_batches,
    make_optimizer,
    shard_loss,
    train_moe_reference,
)
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.tensor import DTensor

import tune.dist as td

STEPS = 3


def _out_dir() -> Path:
    return Path(sys.argv[1]).parent  # the worker's results path: one temporary folder per launch


def max_error(full: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    assert set(full) == set(ref), (sorted(full), sorted(ref))
    return max((full[k] - ref[k]).abs().max().item() for k in ref)


def loss_error(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def parallel_moe(ep: int, seed: int = 0, model: nn.Module | None = None) -> nn.Module:
    """The tiny MoE on every rank: experts over ``ep`` ranks, FSDP2 over the rest."""
    model = build_moe(seed) if model is None else model
    mesh = td.build_mesh(dp_shard=-1)
    expert_mesh = td.build_expert_mesh(mesh, ep)
    plan = td.ParallelPlan(
        block="layers.*", mesh=mesh, ep_plan=td.MOE_EP_PLAN, expert_mesh=expert_mesh, fsdp=True
    )
    td.parallelize(model, plan)
    return model


def full_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's whole gradient (DTensor grads gathered), on every rank."""
    return {
        n: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad.clone()
        for n, p in model.named_parameters()
        if p.grad is not None
    }


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    on_step: Any = None,
    grads: dict[str, torch.Tensor] | None = None,
    dp: tuple[int, int] | None = None,
) -> list[float]:
    """Each data-parallel rank its shard; grads of ``sum_r CE_r / count + AUX_COEF * mean_r aux_r``.

    ``dp``: (data-parallel rank, size) when tensor-parallel peers share a shard."""
    rank, size = dp or (dist.get_rank(), dist.get_world_size())
    losses = []
    for step, batch in enumerate(make_batches(steps)):
        count = (batch["labels"] != IGNORE).sum()
        ce, aux = shard_loss(model, batch, rank, size, count)  # type: ignore[arg-type]
        local = ce + AUX_COEF * aux / size
        (local * size).backward()  # FSDP averages over ranks: this makes it the sum
        if grads is not None and step == 0:
            grads.update(full_grads(model))
        opt.step()
        opt.zero_grad()
        losses.append(td.all_reduce_sum(local.detach()).item() / (dist.get_world_size() // size))
        if on_step is not None:
            on_step(step)
    return losses


def compare(model: nn.Module, losses: list[float], ref: tuple, **extra: Any) -> dict[str, Any]:
    full = td.gather_full_state_dict(model)
    out = {"losses": losses, "loss_err": loss_error(losses, ref[0][-len(losses) :]), **extra}
    if dist.get_rank() == 0:
        out["param_err"] = max_error(full, ref[1])
        out["keys"] = sorted(full)
    return out


def local_experts(model: nn.Module) -> dict[str, Any]:
    experts = model.get_submodule("layers.0.mlp.experts")
    param = experts.gate_up_proj
    return {
        "class": type(experts).__name__,
        "placements": [str(p) for p in param.placements],
        "mesh_dims": list(param.device_mesh.mesh_dim_names),
        "local_shape": list(param.to_local().shape),
        "ep_modules": [n for n, _ in td.expert_parallel_modules(model)],
        # This rank's rows per expert in its last forward: the all-to-all splits were uneven.
        "tokens_per_expert": torch.bincount(
            model.get_submodule("layers.0.mlp").router_stats[1].flatten(), minlength=N_EXPERTS
        ).tolist(),
    }


def scenario_ep(info: td.DistributedInfo, ep: int = 2, save: bool = False) -> dict[str, Any]:
    ref = train_moe_reference(build_moe(), make_batches(STEPS), info.world_size)
    model = parallel_moe(ep)
    opt = make_optimizer(model)

    def maybe_save(step: int) -> None:
        if save and step == STEPS - 2:  # after step 2 of 3: the others resume from here
            model_sd, optim_sd = get_state_dict(model, opt)
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=_out_dir() / "dcp")

    grads: dict[str, torch.Tensor] = {}
    losses = train(model, opt, STEPS, maybe_save, grads)
    return compare(
        model,
        losses,
        ref,
        ref_losses=ref[0],
        grad_err=max_error(grads, ref[2]),
        grad_max=max(g.abs().max().item() for g in ref[2].values()),
        experts=local_experts(model),
    )


def scenario_ep_lora(info: td.DistributedInfo) -> dict[str, Any]:
    """EP=2 with LoRA factors on the frozen stacked expert weights (tune-peft's layout): the
    factors are sharded and their gradients scaled like the experts."""
    ref = train_moe_reference(add_expert_lora(build_moe()), make_batches(STEPS), info.world_size)
    model = parallel_moe(2, model=add_expert_lora(build_moe()))
    grads: dict[str, torch.Tensor] = {}
    losses = train(model, make_optimizer(model), STEPS, None, grads)
    out = compare(model, losses, ref)
    factors = [k for k in ref[1] if ".param_lora." in k]
    experts = model.get_submodule("layers.0.mlp.experts")
    lora_a = experts.param_lora.gate_up_proj.lora_A
    out.update(
        factor_keys=len(factors),
        factor_grad_err=max((grads[k] - ref[2][k]).abs().max().item() for k in factors),
        factor_grad_max=min(ref[2][k].abs().max().item() for k in factors),
        factor_placements=[str(p) for p in lora_a.placements],
        factor_local_shape=list(lora_a.to_local().shape),
        base_grad=[k for k in grads if ".param_lora." not in k and "experts" in k],
    )
    full = td.gather_full_state_dict(model)  # a collective: on every rank
    if dist.get_rank() == 0:
        out["factor_err"] = max((full[k] - ref[1][k]).abs().max().item() for k in factors)
        out["factor_moved"] = min(
            (ref[1][k] - add_expert_lora(build_moe()).state_dict()[k]).abs().max().item()
            for k in factors
        )
        out["lora_rank"] = LORA_RANK
    return out


def scenario_ep_idle(info: td.DistributedInfo) -> dict[str, Any]:
    """Layer 0's router starts at zero: every token picks the same two experts (ties), so one
    EP rank receives no rows in the first step; its experts still get (zero) gradients."""

    def idle_router(seed: int = 0) -> nn.Module:
        model = build_moe(seed)
        torch.nn.init.zeros_(model.get_submodule("layers.0.mlp.router").weight)
        return model

    ref = train_moe_reference(idle_router(), make_batches(STEPS), info.world_size)
    first = idle_router()
    first(make_batches(1)[0]["tokens"])
    model = idle_router()
    mesh = td.build_mesh(dp_shard=-1)
    plan = td.ParallelPlan(block="layers.*", mesh=mesh, ep_plan=td.MOE_EP_PLAN,
                           expert_mesh=td.build_expert_mesh(mesh, 2), fsdp=True)  # fmt: skip
    td.parallelize(model, plan)
    losses = train(model, make_optimizer(model), STEPS)
    counts = torch.bincount(first.layers["0"].mlp.router_stats[1].flatten(), minlength=N_EXPERTS)
    return compare(model, losses, ref, first_step_counts=counts.tolist())


def scenario_ep_tp(info: td.DistributedInfo) -> dict[str, Any]:
    """EP=2 with TP=2 for attention (4 ranks, 2 data shards): TP peers keep the same experts."""
    ref = train_moe_reference(build_moe(), make_batches(STEPS), 2)
    model = build_moe()
    mesh = td.build_mesh(dp_shard=2, tp=2)
    attention_tp = {"layers.*.attn.[qkv]_proj": "colwise", "layers.*.attn.o_proj": "rowwise"}
    plan = td.ParallelPlan(block="layers.*", mesh=mesh, tp_plan=attention_tp, ep_plan=td.MOE_EP_PLAN,
                           expert_mesh=td.build_expert_mesh(mesh, 2), fsdp=True)  # fmt: skip
    applied = td.parallelize(model, plan)
    grads: dict[str, torch.Tensor] = {}
    dp = td.data_parallel_rank_and_size(mesh)
    losses = train(model, make_optimizer(model), STEPS, None, grads, dp)
    # TP peers read the same tokens, so their expert copies stay equal.
    tp_group = mesh["tp"].get_group()
    peer_diff = 0.0
    for _name, p in model.named_parameters():
        if "experts" in _name:
            local = p.to_local()
            copies = [torch.empty_like(local) for _ in range(2)]
            dist.all_gather(copies, local.contiguous(), group=tp_group)
            peer_diff = max(peer_diff, (copies[0] - copies[1]).abs().max().item())
    sp_plan = {**attention_tp, "layers.*.attn_norm": "sequence_parallel"}
    try:
        td.parallelize(build_moe(), dataclasses.replace(plan, tp_plan=sp_plan))
        sp_error = ""
    except ValueError as e:
        sp_error = str(e)
    return compare(model, losses, ref, grad_err=max_error(grads, ref[2]), applied=applied, dp=dp,
                   sp_error=sp_error, tp_peer_expert_diff=peer_diff,
                   experts=local_experts(model))  # fmt: skip


def scenario_ep_fsdp(info: td.DistributedInfo) -> dict[str, Any]:
    return scenario_ep(info, ep=2, save=True)


def scenario_ep_resume(info: td.DistributedInfo) -> dict[str, Any]:
    """The checkpoint saved at EP=2 (x FSDP2=2) loads at EP=4 and EP=1 for the last step."""
    ref = train_moe_reference(build_moe(), make_batches(STEPS), info.world_size)
    out: dict[str, Any] = {}
    for ep in (4, 1):
        model = parallel_moe(ep, seed=7)  # other initial values: the load must replace them
        opt = make_optimizer(model)
        model_sd, optim_sd = get_state_dict(model, opt)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=_out_dir() / "dcp")
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        out[f"ep{ep}"] = compare(model, train(model, opt, 1), ref)
        out[f"ep{ep}"]["n_ep_modules"] = len(td.expert_parallel_modules(model))
    return out


def scenario_ep_errors(info: td.DistributedInfo) -> dict[str, Any]:
    """Misconfigurations fail with a message naming the value (every rank, same message)."""
    mesh = td.build_mesh(dp_shard=-1)
    expert_mesh = td.build_expert_mesh(mesh, 2)
    errors: dict[str, str] = {}

    def expect(key: str, fn: Any) -> None:
        try:
            fn()
        except ValueError as e:
            errors[key] = str(e)

    no_fsdp = td.ParallelPlan(block="layers.*", ep_plan=td.MOE_EP_PLAN, expert_mesh=expert_mesh)
    expect("no_fsdp", lambda: td.parallelize(build_moe(), no_fsdp))
    expect("style", lambda: td.apply_ep(build_moe(), expert_mesh, {"layers.*.mlp.experts": "x"}))
    expect("unmatched", lambda: td.apply_ep(build_moe(), expert_mesh, {"layers.*.moe": "grouped_experts"}))  # fmt: skip
    expect("not_experts", lambda: td.apply_ep(build_moe(), expert_mesh, {"layers.0.mlp.router": "grouped_experts"}))  # fmt: skip
    odd = build_moe()
    odd.get_submodule("layers.0.mlp.experts").num_experts = 3
    expect("indivisible", lambda: td.apply_ep(odd, expert_mesh, td.MOE_EP_PLAN))
    child = build_moe()
    child.get_submodule("layers.0.mlp.experts").add_module("norm", nn.RMSNorm(32))
    expect("unstacked_child", lambda: td.apply_ep(child, expert_mesh, td.MOE_EP_PLAN))
    twice = build_moe()
    td.apply_ep(twice, expert_mesh, td.MOE_EP_PLAN)
    expect("twice", lambda: td.apply_ep(twice, expert_mesh, td.MOE_EP_PLAN))
    expect("ep_degree", lambda: td.build_expert_mesh(mesh, 3))
    return errors
