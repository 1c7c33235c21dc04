"""Per-rank program launched by torchrun in the tests: runs scenarios, rank 0 writes results JSON.

Usage: python -m torch.distributed.run ... dist_worker.py OUT_JSON SCENARIO [SCENARIO ...]
Every scenario compares a distributed run against a single-process run computed in this process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from dist_cp_scenarios import scenario_cp  # noqa: F401 (run by name from the command line)
from dist_ep_scenarios import (  # noqa: F401 (run by name from the command line)
    scenario_ep,
    scenario_ep_errors,
    scenario_ep_fsdp,
    scenario_ep_idle,
    scenario_ep_lora,
    scenario_ep_resume,
    scenario_ep_tp,
)
from dist_pp_scenarios import (  # noqa: F401 (run by name from the command line)
    scenario_pp,
    scenario_pp_dcp,
    scenario_pp_dp,
    scenario_pp_dp_tp,
)
from dist_tiny_transformer import (
    IGNORE,
    build_model,
    make_batches,
    make_optimizer,
    summed_loss,
    train_reference,
)
from torch import nn
from torch.distributed.tensor.parallel import ColwiseParallel

import tune.dist as td

STEPS = 4
TP_PLAN = {
    "layers.*.attn.q_proj": "colwise",
    "layers.*.attn.k_proj": "colwise",
    "layers.*.attn.v_proj": "colwise",
    "layers.*.attn.o_proj": "rowwise",
    "layers.*.mlp.gate_proj": "colwise",
    "layers.*.mlp.up_proj": "colwise",
    "layers.*.mlp.down_proj": "rowwise",
    "layers.*.attn.[qk]_norm": "head_sharded",
    "output": "colwise_rep",
}
SP_PLAN = {
    "tok_embeddings": "embedding_rowwise_seq",
    "layers.*.attn_norm": "sequence_parallel",
    "layers.*.mlp_norm": "sequence_parallel",
    "re:layers\\.\\d+\\.attn\\.[qkv]_proj": "colwise_seq",
    "layers.*.attn.o_proj": "rowwise_seq",
    "layers.*.mlp.gate_proj": "colwise_seq",
    "layers.*.mlp.up_proj": "colwise_seq",
    "layers.*.mlp.down_proj": "rowwise_seq",
    "norm": "sequence_parallel",
    "layers.*.attn.[qk]_norm": "head_sharded",
    "output": "colwise_seq_rep",
}


class MyColwise(ColwiseParallel):
    """A user's own style: not known to shard a layer's inner adapter layers."""


def train_distributed(
    model: nn.Module,
    dp_rank: int,
    dp_size: int,
    dp_group: Any,
    steps: int = STEPS,
    stop: td.StopSignalHandler | None = None,
    on_step: Callable[[int], None] | None = None,
    keep_optimizer: list[torch.optim.Optimizer] | None = None,
) -> list[float]:
    """Each data-parallel rank takes its slice of the global batch; loss is the global token mean."""
    opt = make_optimizer(model)
    if keep_optimizer is not None:
        keep_optimizer.append(opt)
    losses = []
    for step, batch in enumerate(make_batches(steps)):
        tokens = batch["tokens"].chunk(dp_size)[dp_rank]
        labels = batch["labels"].chunk(dp_size)[dp_rank]
        count = td.count_target_tokens(labels, IGNORE, dp_group)
        local = summed_loss(model(tokens), labels)
        # FSDP averages gradients over dp ranks; scaling by dp_size turns that into the sum.
        (local / count * dp_size).backward()
        opt.step()
        opt.zero_grad()
        losses.append((td.all_reduce_sum(local.detach(), dp_group) / count).item())
        if on_step is not None:
            on_step(step)
        if stop is not None and stop.should_stop():
            break
    return losses


def max_error(full: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    assert set(full) == set(ref), (sorted(full), sorted(ref))
    return max((full[k] - ref[k]).abs().max().item() for k in ref)


def loss_error(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b), (a, b)
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def reference(**model_kwargs: Any) -> tuple[list[float], dict[str, torch.Tensor]]:
    return train_reference(build_model(**model_kwargs), make_batches(STEPS))


def compare(model: nn.Module, losses: list[float], ref: tuple, **extra: Any) -> dict[str, Any]:
    full = td.gather_full_state_dict(model)
    out = {"losses": losses, "ref_losses": ref[0], "loss_err": loss_error(losses, ref[0]), **extra}
    if dist.get_rank() == 0:
        out["param_err"] = max_error(full, ref[1])
        out["keys"] = sorted(full)
    else:
        out["nonzero_rank_dict_len"] = len(full)
    return out


def scenario_env(info: td.DistributedInfo) -> dict[str, Any]:
    labels = torch.full((2, 8), IGNORE)
    labels[0, : 3 + info.rank] = 1  # rank r has 3 + r real tokens
    count = td.count_target_tokens(labels)
    again = td.init_distributed()  # a group already exists (as under Ray): described, not re-made
    return {
        "again": [again.rank, again.world_size, again.backend],
        "info": {
            "rank": info.rank,
            "world_size": info.world_size,
            "local_rank": info.local_rank,
            "local_world_size": info.local_world_size,
            "backend": info.backend,
        },
        "token_count": int(count),
        "any_rank_only_last": td.any_rank(info.rank == info.world_size - 1),
        "any_rank_none": td.any_rank(False),
    }


def scenario_fsdp(info: td.DistributedInfo) -> dict[str, Any]:
    ref = reference(tie_embeddings=True)
    model = build_model(tie_embeddings=True)
    td.apply_fsdp(model, block_match="layers.*")
    opts: list[torch.optim.Optimizer] = []
    losses = train_distributed(model, info.rank, info.world_size, None, keep_optimizer=opts)
    tied = model.output.weight is model.tok_embeddings.weight
    osd = td.gather_full_optimizer_state_dict(model, opts[0])
    optim: dict[str, Any] = {"len": len(osd)}
    if osd:
        exp_avg = osd["state"]["layers.0.mlp.up_proj.weight"]["exp_avg"]
        optim.update(step=float(osd["state"]["layers.0.mlp.up_proj.weight"]["step"]),
                     exp_avg_shape=list(exp_avg.shape), n_state=len(osd["state"]))  # fmt: skip
    return compare(model, losses, ref, tied_after_training=tied, optim=optim)


def scenario_fsdp_lora(info: td.DistributedInfo) -> dict[str, Any]:
    # Tied embeddings: the frozen embedding's alias (output.weight) must not pass as trainable.
    ref = reference(lora=True, tie_embeddings=True)
    model = build_model(lora=True, tie_embeddings=True)
    from dist_tiny_transformer import Block

    # One frozen base weight stays whole on every rank (as an NF4 weight too small to split).
    kept = model.get_parameter("layers.0.attn.q_proj.weight")
    td.apply_fsdp(model, block_match=Block, ignored_params=[kept])
    kept_after = model.get_parameter("layers.0.attn.q_proj.weight")
    losses = train_distributed(model, info.rank, info.world_size, None)
    out = compare(model, losses, ref)
    out["kept_whole"] = kept_after is kept and type(kept_after.data) is torch.Tensor
    out["kept_shape"] = list(kept_after.shape)
    adapters = td.gather_full_state_dict(model, trainable_only=True)
    if info.rank == 0:
        out["adapter_keys"] = sorted(adapters)
        out["frozen_changed"] = max(
            (ref[1][k] - build_model(lora=True, tie_embeddings=True).state_dict()[k])
            .abs()
            .max()
            .item()
            for k in ref[1]
            if "lora_" not in k
        )
    return out


def scenario_fsdp_ac_offload(info: td.DistributedInfo) -> dict[str, Any]:
    ref = reference()
    model = build_model()
    checkpointed = td.apply_activation_checkpointing(model, "layers.*", every_n=2)
    offloader = td.apply_activation_offloading(model, "layers.1", include_host_tensors=True)
    td.apply_fsdp(model, block_match="layers.*", reshard_after_forward=False)
    losses = train_distributed(model, info.rank, info.world_size, None)
    return compare(
        model, losses, ref, checkpointed=checkpointed, offloaded=offloader.offloaded_tensors
    )


def scenario_tp(info: td.DistributedInfo, plan: dict[str, str] = TP_PLAN) -> dict[str, Any]:
    ref = reference(qk_norm=True)
    mesh = td.build_mesh(dp_shard=1, tp=info.world_size)
    model = build_model(qk_norm=True)
    td.apply_tp(model, mesh["tp"], plan)
    local_q = model.layers["0"].attn.q_proj.weight.to_local().shape
    # Both TP ranks hold the same batch: count tokens over the (size-1) data-parallel mesh only.
    losses = train_distributed(model, 0, 1, td.data_parallel_mesh(mesh))
    return compare(model, losses, ref, local_q_shape=list(local_q))


def scenario_tp_errors(info: td.DistributedInfo) -> dict[str, Any]:
    """Plans that would silently break the model are refused with the module named."""
    mesh = td.build_mesh(dp_shard=1, tp=info.world_size)
    errors = {}
    cases = {
        "tied": (build_model(tie_embeddings=True), {"output": "colwise_rep"}),
        "indivisible": (nn.Sequential(nn.Linear(4, 3)), {"0": "colwise"}),
        "unknown_style": (build_model(), {"output": "diagonal"}),
        "not_linear": (build_model(), {"layers.*.attn": "colwise"}),
        "inner_custom_style": (build_model(lora=True), {"layers.*.attn.q_proj": MyColwise()}),
    }
    for name, (model, plan) in cases.items():
        try:
            td.apply_tp(model, mesh["tp"], plan)
            errors[name] = ""
        except ValueError as e:
            errors[name] = str(e)
    return errors


def scenario_fsdp_options(info: td.DistributedInfo) -> dict[str, Any]:
    """CPU offload (exact) and a bfloat16 compute policy (parameters gathered in bf16)."""
    ref = reference()
    model = build_model()
    td.apply_fsdp(model, block_match="layers.*", cpu_offload=True)
    losses = train_distributed(model, info.rank, info.world_size, None)
    out = compare(model, losses, ref)
    bf16 = build_model()
    td.apply_fsdp(
        bf16, block_match="layers.*", param_dtype=torch.bfloat16, reduce_dtype=torch.float32
    )
    seen: list[str] = []
    bf16.layers["0"].mlp.up_proj.register_forward_pre_hook(
        lambda mod, _args: seen.append(str(mod.weight.dtype))
    )
    bf16_losses = train_distributed(bf16, info.rank, info.world_size, None, steps=1)
    out["bf16_loss_rel_err"] = abs(bf16_losses[0] - ref[0][0]) / ref[0][0]
    out["bf16_compute_dtype"] = seen
    out["bf16_sharded_dtype"] = str(bf16.layers["0"].mlp.up_proj.weight.dtype)
    return out


def scenario_tp_sp(info: td.DistributedInfo) -> dict[str, Any]:
    return scenario_tp(info, SP_PLAN)


def scenario_load(info: td.DistributedInfo) -> dict[str, Any]:
    """Rank 0 reads a full state dict; a meta-built, sharded model on every rank receives it."""
    source = build_model(seed=7, tie_embeddings=True).state_dict() if info.rank == 0 else None
    with torch.device("meta"):
        model = build_model(seed=123, tie_embeddings=True)
    td.apply_fsdp(model, block_match="layers.*")
    model.to_empty(device="cpu")
    td.load_full_state_dict(model, source)
    back = td.gather_full_state_dict(model)
    out: dict[str, Any] = {}
    if info.rank == 0:
        assert source is not None
        out["roundtrip_err"] = max_error(back, {k: v for k, v in source.items()})
        out["tied"] = model.output.weight is model.tok_embeddings.weight
    bad_error = ""
    try:
        bad = {"nonexistent.weight": torch.zeros(1)} if info.rank == 0 else None
        td.load_full_state_dict(model, bad)
    except KeyError as e:
        bad_error = str(e)
    out["bad_key_error"] = bad_error
    return out


def scenario_stop(info: td.DistributedInfo) -> dict[str, Any]:
    model = build_model()
    td.apply_fsdp(model, block_match="layers.*")

    def maybe_signal(step: int) -> None:
        if step == 1 and info.rank == info.world_size - 1:
            os.kill(os.getpid(), signal.SIGTERM)

    with td.StopSignalHandler() as stop:
        losses = train_distributed(model, info.rank, info.world_size, None, 6, stop, maybe_signal)
        received = stop.received
    return {"steps_run": len(losses), "received": received}


def scenario_fsdp_tp(info: td.DistributedInfo) -> dict[str, Any]:
    ref = reference(qk_norm=True)
    mesh = td.build_mesh(dp_shard=2, tp=2)
    model = build_model(qk_norm=True)
    td.apply_tp(model, mesh["tp"], TP_PLAN)
    dp_mesh = td.data_parallel_mesh(mesh)
    td.apply_fsdp(model, dp_mesh, block_match="layers.*")
    dp_rank, dp_size = td.data_parallel_rank_and_size(mesh)
    losses = train_distributed(model, dp_rank, dp_size, dp_mesh)
    return compare(model, losses, ref, dp=[dp_rank, dp_size])


def scenario_hsdp(info: td.DistributedInfo) -> dict[str, Any]:
    ref = reference(tie_embeddings=True)
    mesh = td.build_mesh(dp_replicate=2, dp_shard=2)
    model = build_model(tie_embeddings=True)
    dp_mesh = td.data_parallel_mesh(mesh)
    td.apply_fsdp(model, dp_mesh, block_match="layers.*")
    dp_rank, dp_size = td.data_parallel_rank_and_size(mesh)
    losses = train_distributed(model, dp_rank, dp_size, dp_mesh)
    return compare(model, losses, ref, dp_mesh_ndim=dp_mesh.ndim)


def scenario_data_parallel(info: td.DistributedInfo) -> dict[str, Any]:
    """setup_data_parallel: TP peers share a data shard and are left out of the reduction."""
    out = {}
    for tp in (1, 2):
        dp = td.setup_data_parallel(tp, device_type="cpu")
        assert dp.reduce is not None
        out[f"tp{tp}"] = [dp.rank, dp.size, dp.tp_size, dp.reduce(torch.tensor([1.0])).item()]
    return out


def scenario_parallelize_tp_lora(info: td.DistributedInfo) -> dict[str, Any]:
    """TP (sequence parallel) over LoRA layers, checkpointing, then FSDP on a size-1 dp mesh, as
    a recipe with tp = world size runs it; a frozen copy goes through the same call."""
    ref = reference(lora=True, qk_norm=True)
    batch = make_batches(1)[0]
    with torch.no_grad():
        frozen_ref = summed_loss(build_model(qk_norm=True)(batch["tokens"]), batch["labels"])
    mesh = td.build_mesh(tp=info.world_size)
    model = build_model(lora=True, qk_norm=True)
    plan = td.ParallelPlan(block="layers.*", mesh=mesh, tp_plan=SP_PLAN,
                           activation_checkpointing=True, fsdp=True)  # fmt: skip
    applied = td.parallelize(model, plan)
    frozen = build_model(qk_norm=True).requires_grad_(False)
    frozen_applied = td.parallelize(
        frozen, dataclasses.replace(plan, activation_checkpointing=False)
    )
    with torch.no_grad():
        frozen_loss = summed_loss(frozen(batch["tokens"]), batch["labels"])
    q, o = model.layers["0"].attn.q_proj, model.layers["0"].attn.o_proj
    layouts = {  # the TP placement: the last mesh dimension (FSDP's comes first)
        f"{name}.{ab}": repr(getattr(layer, ab).weight.placements[-1])
        for name, layer in (("q", q), ("o", o))
        for ab in ("lora_A", "lora_B")
    }
    losses = train_distributed(model, 0, 1, td.data_parallel_mesh(mesh))
    out = compare(model, losses, ref, applied=applied, frozen_applied=frozen_applied,
                  layouts=layouts, frozen_loss=frozen_loss.item(),
                  frozen_ref_loss=frozen_ref.item())  # fmt: skip
    adapters = td.gather_full_state_dict(model, trainable_only=True)
    if info.rank == 0:
        out["adapter_err"] = max_error(adapters, {k: v for k, v in ref[1].items() if "lora_" in k})
    return out


def scenario_fsdp_tp_lora(info: td.DistributedInfo) -> dict[str, Any]:
    """2 x 2 mesh through parallelize: TP over LoRA layers, then FSDP over 2 data-parallel ranks."""
    ref = reference(lora=True, qk_norm=True)
    dp = td.setup_data_parallel(2, device_type="cpu")
    model = build_model(lora=True, qk_norm=True)
    td.parallelize(model, td.ParallelPlan(block="layers.*", mesh=dp.mesh, tp_plan=TP_PLAN,
                                          fsdp=True))  # fmt: skip
    losses = train_distributed(model, dp.rank, dp.size, dp.dp_mesh)
    return compare(model, losses, ref, dp=[dp.rank, dp.size])


def scenario_hang(info: td.DistributedInfo) -> dict[str, Any]:
    """The last rank never joins the collective: the others must fail after the timeout."""
    if info.rank == info.world_size - 1:
        time.sleep(120)
    dist.all_reduce(torch.ones(1))
    return {}


def main() -> None:
    torch.set_num_threads(1)
    out_path, scenarios = sys.argv[1], sys.argv[2:]
    timeout = timedelta(seconds=float(os.environ.get("TUNE_DIST_TEST_PG_TIMEOUT", "120")))
    info = td.init_distributed(timeout=timeout)
    results: dict[str, Any] = {}
    for name in scenarios:
        start = time.perf_counter()
        per_rank = globals()[f"scenario_{name}"](info)
        gathered: list[Any] = [None] * info.world_size
        dist.all_gather_object(gathered, per_rank)
        results[name] = {"rank0": gathered[0], "ranks": gathered}
        results[name]["seconds"] = time.perf_counter() - start
    if info.rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1, default=str)
    td.destroy_distributed()


if __name__ == "__main__":
    main()
    # Leave without interpreter teardown: gloo's threads sometimes abort it ("terminate called
    # without an active exception") after the work is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
