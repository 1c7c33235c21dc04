"""Per-rank program for test_dist_models.py: tune.models models under tune.dist (torchrun, gloo).

Usage: python -m torch.distributed.run --nproc_per_node 2 dist_models_worker.py OUT_JSON
For each model: the single-process loss and gradients vs TP (the model's own tp_plan) and FSDP;
for an MoE model (Qwen3-MoE), expert parallelism over every rank with FSDP2.
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
from tune.models import build_from_hf_config, named_size_config, tp_plan


def tiny_config(name: str) -> dict[str, Any]:
    config = named_size_config(name)
    config.update(hidden_size=64, intermediate_size=96, num_hidden_layers=2, vocab_size=128)
    config.update(num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    if "num_experts" in config:
        config.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
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
        ep_plan = {"layers.*.mlp.experts": "grouped_experts"}
        td.parallelize(model, td.ParallelPlan(block="layers.*", mesh=dp_mesh, ep_plan=ep_plan,
                                              expert_mesh=expert_mesh, fsdp=True))  # fmt: skip
        plan = ep_plan
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


def main() -> None:
    torch.set_num_threads(1)
    info = td.init_distributed()
    mesh = td.build_mesh(dp_shard=1, tp=info.world_size)
    results = {
        f"{name}/{parallel}": compare(name, parallel, mesh, info)
        for name in ("qwen3-8b", "llama3.2-1b")
        for parallel in ("tp", "fsdp")
    }
    if hasattr(td, "build_expert_mesh"):
        dp_mesh = td.build_mesh(dp_shard=-1)
        meshes = {"ep": (dp_mesh, td.build_expert_mesh(dp_mesh, info.world_size))}
        results["qwen3-30b-a3b/ep"] = compare("qwen3-30b-a3b", "ep", meshes, info)
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
