"""Per-rank program for test_dist_models.py: tune.models models under tune.dist (torchrun, gloo).

Usage: python -m torch.distributed.run --nproc_per_node 2 dist_models_worker.py OUT_JSON
For each model: the single-process loss and gradients vs TP (the model's own tp_plan) and FSDP;
for MoE models (Qwen3-MoE, Qwen2-MoE) their TP plans, and for Qwen3-MoE its ``ep_plan`` over
every rank with FSDP2; for Llama, context parallelism (ring attention, zig-zag shards) on an
8192-token row, plain and with packed documents; for a tied 4-layer Llama, pipeline parallelism
over every rank (1F1B, interleaved 1F1B, ZBV).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import tune.dist as td
from tune.models import build_from_hf_config, ep_plan, named_size_config, tp_plan


def tiny_config(name: str) -> dict[str, Any]:
    config = named_size_config(name)
    config.update(hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=128)
    config.update(num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    if "num_experts" in config:
        config.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
    if "shared_expert_intermediate_size" in config:
        config.update(shared_expert_intermediate_size=48)
    return config


def loss_and_grads(model: nn.Module, tokens: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad
        grads[name] = g.full_tensor() if hasattr(g, "full_tensor") else g
    return loss.item(), grads


def compare(name: str, parallel: str, mesh: Any, info: td.DistributedInfo) -> dict[str, Any]:
    config = tiny_config(name)
    torch.manual_seed(0)
    reference = build_from_hf_config(config)
    model = build_from_hf_config(config)
    model.load_state_dict(reference.state_dict())
    tokens = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(1))
    ref_loss, ref_grads = loss_and_grads(reference, tokens)
    plan: dict[str, str] = {}
    if parallel == "tp":
        plan = tp_plan(model)
        covered = {name for name, _, _ in td.match_plan(model, plan)}
        if model.layers["0"].attn.q_norm is not None and "layers.0.attn.q_norm" not in covered:
            # q/k norms see only the local heads: their gradients must be summed over TP ranks.
            plan["layers.*.attn.[qk]_norm"] = "head_sharded"
        td.apply_tp(model, mesh["tp"], plan)
        loss, grads = loss_and_grads(model, tokens)
    elif parallel == "ep":
        dp_mesh, expert_mesh = mesh["ep"]
        plan = ep_plan(model)  # the family's own EP plan
        td.parallelize(model, td.ParallelPlan(block="layers.*", mesh=dp_mesh, ep_plan=plan,
                                              expert_mesh=expert_mesh, fsdp=True))  # fmt: skip
        loss, grads = loss_and_grads(model, tokens)
    else:
        td.apply_fsdp(model, block_match="layers.*")
        # FSDP averages gradients over ranks; every rank has the same batch here.
        loss, grads = loss_and_grads(model, tokens)
    errs = {k: (grads[k] - ref_grads[k]).abs().max().item() for k in ref_grads}
    return {
        "worst": sorted(errs.items(), key=lambda kv: -kv[1])[:3],
        "plan_styles": sorted(set(plan.values())),
        "loss_err": abs(loss - ref_loss),
        "grad_err": max((grads[k] - ref_grads[k]).abs().max().item() for k in ref_grads),
        "tied": model.output.weight is model.tok_embeddings.weight,
    }


def compare_cp(name: str, packed: bool, info: td.DistributedInfo) -> dict[str, Any]:
    """Context parallelism over every rank on an 8192-token row (RoPE positions restarting per
    packed document): loss and summed gradients vs one process given ``document_ids``."""
    config = tiny_config(name)
    torch.manual_seed(0)
    model = build_from_hf_config(config)
    seq, cp, rank = 8192, info.world_size, info.rank
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 128, (1, seq + 1), generator=g)
    lengths = [3000, 41, 2100, 1900, 1151] if packed else [seq]
    docs = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    logits = model(inputs, positions=positions, document_ids=docs if packed else None)
    ref_loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    ref_loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    local_in, local_labels, local_pos = (
        td.zigzag_shard(t, cp, rank) for t in (inputs, labels, positions)
    )
    with td.context_parallel_attention(model, document_ids=docs if packed else None):
        logits = model(local_in, positions=local_pos)
        local = F.cross_entropy(logits.flatten(0, 1), local_labels.flatten(), reduction="sum")
        (local / seq).backward()
    loss = td.all_reduce_sum(local.detach()) / seq
    grads = {n: p.grad for n, p in model.named_parameters()}
    for grad in grads.values():
        dist.all_reduce(grad)
    return {
        "plan_styles": [],
        "loss_err": abs(loss.item() - ref_loss.item()),
        "grad_err": max((grads[k] - ref_grads[k]).abs().max().item() for k in ref_grads),
        "grad_max": max(v.abs().max().item() for v in ref_grads.values()),
        "tied": model.output.weight is model.tok_embeddings.weight,
    }


def compare_pp(name: str, schedule: str, info: td.DistributedInfo) -> dict[str, Any]:
    """Pipeline parallelism over every rank (4 layers, tied embeddings copied and synced, packed
    rows whose positions and document ids reach every stage): loss and gradients vs one process."""
    config = tiny_config(name)
    config.update(num_hidden_layers=4)
    torch.manual_seed(0)
    model = build_from_hf_config(config)
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(0, 128, (4, 17), generator=g)
    inputs, labels = tokens[:, :-1], tokens[:, 1:].clone()
    labels[:, :3] = -100  # a masked prompt
    docs = torch.tensor([[0] * 6 + [1] * 10] * 4)
    positions = torch.cat([torch.arange(6), torch.arange(10)]).expand(4, 16)
    kwargs = {"positions": positions, "document_ids": docs}
    logits = model(inputs, **kwargs)
    ref_loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    ref_loss.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    style = td.schedule_style(schedule)
    virtual = 1 if schedule == "1f1b" else 2
    stages = td.pipeline_stages(
        model, info.rank, info.world_size, virtual_stages=virtual, style=style, tied_weights="copy"
    )

    def summed_ce(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out.flatten(0, 1), target.flatten(), reduction="sum")

    loss_fn = td.token_normalised_loss(summed_ce, int((labels != -100).sum()))
    pipe = td.build_pipeline_schedule(schedule, stages, None, n_microbatches=4, loss_fn=loss_fn)
    losses: list[torch.Tensor] = []
    pipe.step(inputs, target=labels, losses=losses, **kwargs)
    td.sync_tied_gradients(stages, None, style=style)
    local = {n: p.grad for stage in stages for n, p in stage.named_parameters()}
    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, (local, sum(x.item() for x in losses) if losses else None))
    grads = {k: v for part, _ in parts for k, v in part.items()}
    loss = next(total for _, total in parts if total is not None)
    ref_grads["output.weight"] = ref_grads["tok_embeddings.weight"]  # the tied copy
    return {
        "plan_styles": [],
        "loss_err": abs(loss - ref_loss.item()),
        "grad_err": max((grads[k] - ref_grads[k]).abs().max().item() for k in ref_grads),
        "grad_max": max(v.abs().max().item() for v in ref_grads.values()),
        "tied": model.output.weight is model.tok_embeddings.weight,
    }


def main() -> None:
    torch.set_num_threads(1)
    info = td.init_distributed()
    mesh = td.build_mesh(dp_shard=1, tp=info.world_size)
    results = {
        f"{name}/{parallel}": compare(name, parallel, mesh, info)
        for name in ("qwen3-8b", "llama3.2-1b")
        for parallel in ("tp", "fsdp")
    }
    # MoE families' own TP plans: attention sharded, routers and (shared) experts replicated.
    for name in ("qwen3-30b-a3b", "qwen1.5-moe-a2.7b"):
        results[f"{name}/tp"] = compare(name, "tp", mesh, info)
    if hasattr(td, "build_expert_mesh"):
        dp_mesh = td.build_mesh(dp_shard=-1)
        meshes = {"ep": (dp_mesh, td.build_expert_mesh(dp_mesh, info.world_size))}
        results["qwen3-30b-a3b/ep"] = compare("qwen3-30b-a3b", "ep", meshes, info)
    results["llama3.2-1b/cp"] = compare_cp("llama3.2-1b", False, info)
    results["llama3.2-1b/cp_packed"] = compare_cp("llama3.2-1b", True, info)
    for schedule in ("1f1b", "interleaved_1f1b", "zbv_zero_bubble"):
        results[f"llama3.2-1b/pp_{schedule}"] = compare_pp("llama3.2-1b", schedule, info)
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, results)
    if info.rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(gathered, f, indent=1)
    td.destroy_distributed()


if __name__ == "__main__":
    main()
    # Leave without interpreter teardown: gloo's threads sometimes abort it ("terminate called
    # without an active exception") after the work is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
