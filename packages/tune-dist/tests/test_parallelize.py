"""parallelize() in one process: the documented order, what each plan field switches, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from dist_tiny_transformer import Block, build_model, make_batches, summed_loss

import tune.dist as td
from tune.dist.activation_checkpointing import CheckpointedModule
from tune.dist.activation_offloading import OffloadedModule


def test_order_is_tp_ep_wrappers_compile_fsdp() -> None:
    assert td.PARALLELIZE_ORDER == (
        "tp",
        "ep",
        "activation_checkpointing",
        "activation_offloading",
        "compile",
        "fsdp",
    )


def test_wrappers_apply_in_order_and_keep_names_and_numbers() -> None:
    batch = make_batches(1)[0]
    reference = build_model()
    expected = summed_loss(reference(batch["tokens"]), batch["labels"])
    model = build_model()
    plan = td.ParallelPlan(
        block=Block, activation_checkpointing=True, activation_offloading=True, compile=True
    )
    assert td.parallelize(model, plan) == [
        "activation_checkpointing",
        "activation_offloading",
        "compile",
    ]
    blocks = list(model.layers.values())
    assert all(isinstance(b, CheckpointedModule) and isinstance(b, OffloadedModule) for b in blocks)
    assert all(b._compiled_call_impl is not None for b in blocks)  # compiled lazily, per block
    assert model.state_dict().keys() == reference.state_dict().keys()
    # Checkpointing and offloading change memory, not values (compile left out: slow on CPU).
    eager = build_model()
    td.parallelize(eager, dataclasses.replace(plan, compile=False))
    loss = summed_loss(eager(batch["tokens"]), batch["labels"])
    loss.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert eager.layers["0"].mlp.up_proj.weight.grad is not None


def test_frozen_plan_applies_nothing_on_one_device() -> None:
    model = build_model().requires_grad_(False)
    assert td.parallelize(model, td.ParallelPlan(block="layers.*")) == []
    assert not any(isinstance(b, CheckpointedModule) for b in model.modules())


def test_tp_plan_needs_a_mesh_and_blocks_must_match() -> None:
    with pytest.raises(ValueError, match="tp_plan needs a mesh"):
        td.parallelize(build_model(), td.ParallelPlan(block=Block, tp_plan={"output": "colwise"}))
    with pytest.raises(ValueError, match="matched no submodule"):
        td.parallelize(build_model(), td.ParallelPlan(block="blocks.*", compile=True))
    with pytest.raises(ValueError, match="matched no submodule"):
        td.parallelize(
            build_model(), td.ParallelPlan(block="blocks.*", activation_checkpointing=True)
        )


def test_setup_data_parallel_without_process_group() -> None:
    dp = td.setup_data_parallel()
    assert dp == td.DataParallel()
    assert (dp.distributed, dp.rank, dp.size, dp.tp_size, dp.reduce) == (False, 0, 1, 1, None)
    with pytest.raises(ValueError, match="tensor-parallel degree 2 needs 2 or more processes"):
        td.setup_data_parallel(2)


def test_set_gradient_sync_calls_fsdp_setter_and_ignores_plain_models() -> None:
    calls: list[bool] = []

    class Sharded(torch.nn.Linear):
        def set_requires_gradient_sync(self, enabled: bool) -> None:
            calls.append(enabled)

    td.set_gradient_sync(Sharded(2, 2), False)
    td.set_gradient_sync(Sharded(2, 2), True)
    td.set_gradient_sync(torch.nn.Linear(2, 2), False)  # no FSDP: nothing to do
    assert calls == [False, True]
