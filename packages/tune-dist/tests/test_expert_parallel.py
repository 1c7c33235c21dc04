"""Expert parallelism (gloo, torchrun): EP=2, EP=2 with LoRA factors on the stacked experts,
EP=2 x FSDP2=2 and EP=2 x TP=2 (attention) equal one process, with the load-balancing auxiliary
loss on; a DCP checkpoint saved at EP=2 resumes at EP=4 and EP=1.

The scenarios (dist_ep_scenarios.py) run inside the shared 2- and 4-rank launches (conftest.py).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from dist_tiny_moe import build_moe

import tune.dist as td

pytestmark = pytest.mark.distributed

PARITY = 1e-5  # float32 losses and parameters after 3 AdamW steps vs one process
# First-step gradients vs one process. AdamW hides a gradient scale error (its update is nearly
# scale-free), so the expert gradients' 1 / ep scaling is checked on the gradients themselves.
GRAD_PARITY = 1e-6


def assert_ep_parity(result: dict[str, Any], local_experts: int) -> dict[str, Any]:
    r0 = result["rank0"]
    assert r0["loss_err"] < PARITY, r0["losses"]
    assert r0["param_err"] < PARITY, r0["param_err"]
    assert r0["grad_err"] < GRAD_PARITY < r0["grad_max"], (r0["grad_err"], r0["grad_max"])
    assert all(b < a for a, b in itertools.pairwise(r0["losses"])), r0["losses"]
    experts = r0["experts"]
    assert experts["class"] == "FSDPExpertParallelExperts"
    assert experts["mesh_dims"] == ["expert_dp_shard", "ep"]
    assert experts["placements"][-1] == "S(0)"  # experts split over the ep dimension
    # [E / ep / expert FSDP degree, 2 * hidden, dim] on each rank; whole [E, ...] in the state dict.
    assert experts["local_shape"] == [local_experts, 64, 64]
    assert experts["ep_modules"] == ["layers.0.mlp.experts", "layers.1.mlp.experts"]
    assert "layers.1.mlp.experts.gate_up_proj" in r0["keys"]
    # Routing is uneven, so the all-to-all splits were too.
    counts = [r["experts"]["tokens_per_expert"] for r in result["ranks"]]
    assert all(len(set(c)) > 1 for c in counts), counts
    return r0


def test_ep2_matches_one_process_with_aux_loss(two_rank: dict[str, Any]) -> None:
    assert_ep_parity(two_rank["ep"], local_experts=2)


def test_ep2_with_fsdp2_matches_one_process(four_rank: dict[str, Any]) -> None:
    assert_ep_parity(four_rank["ep_fsdp"], local_experts=1)


def test_ep2_with_expert_lora_factors_matches_one_process(two_rank: dict[str, Any]) -> None:
    r0 = two_rank["ep_lora"]["rank0"]
    # Factors [E, r, in] sharded like the experts: 2 of the 4 experts' factors on each rank.
    assert r0["factor_placements"][-1] == "S(0)"
    assert r0["factor_local_shape"] == [2, r0["lora_rank"], 64]
    assert r0["factor_keys"] == 8  # 2 layers x 2 stacked weights x (A, B), whole in the state dict
    assert r0["base_grad"] == []  # the stacked base weights stay frozen
    # The factors' gradients get the experts' 1 / ep scale (unscaled they are 0.15 off).
    assert r0["factor_grad_err"] < GRAD_PARITY < r0["factor_grad_max"]
    assert r0["loss_err"] < PARITY, r0["losses"]
    assert r0["factor_err"] < PARITY < r0["factor_moved"]
    assert r0["param_err"] < PARITY


def test_rank_receiving_no_tokens_still_matches(two_rank: dict[str, Any]) -> None:
    r0 = two_rank["ep_idle"]["rank0"]
    # Ties pick one EP rank's two experts for every token: the other rank receives no rows.
    counts = r0["first_step_counts"]
    assert [0, 0] in (counts[:2], counts[2:]), counts
    assert r0["loss_err"] < PARITY, r0["losses"]
    assert r0["param_err"] < PARITY, r0["param_err"]


def test_ep2_with_tp2_attention_matches_one_process(four_rank: dict[str, Any]) -> None:
    r0 = four_rank["ep_tp"]["rank0"]
    assert r0["applied"] == ["tp", "ep", "fsdp"]
    assert r0["dp"] == [0, 2]  # TP peers share a data shard
    assert r0["loss_err"] < PARITY, r0["losses"]
    assert r0["param_err"] < PARITY, r0["param_err"]
    assert r0["grad_err"] < GRAD_PARITY, r0["grad_err"]
    assert r0["tp_peer_expert_diff"] == 0.0
    assert r0["experts"]["local_shape"] == [2, 64, 64]
    assert "sequence-parallel styles ['sequence_parallel']" in r0["sp_error"]


def test_dcp_saved_at_ep2_resumes_at_ep4_and_ep1(four_rank: dict[str, Any]) -> None:
    saved_run = four_rank["ep_fsdp"]["rank0"]
    resumed = four_rank["ep_resume"]["rank0"]
    for ep, n_ep_modules in (("ep4", 2), ("ep1", 0)):
        r = resumed[ep]
        assert r["n_ep_modules"] == n_ep_modules
        # The third step from the checkpoint equals the third step of the uninterrupted run.
        assert abs(r["losses"][0] - saved_run["losses"][2]) < PARITY, (r, saved_run["losses"])
        assert r["loss_err"] < PARITY, r
        assert r["param_err"] < PARITY, r


def test_ep_misconfigurations_are_named(two_rank: dict[str, Any]) -> None:
    errors = two_rank["ep_errors"]["rank0"]
    assert "needs fsdp=True" in errors["no_fsdp"]
    assert "unknown style 'x'" in errors["style"]
    assert "['layers.*.moe'] matched no module" in errors["unmatched"]
    assert "layers.0.mlp.router: Linear has no integer num_experts" in errors["not_experts"]
    assert "num_experts=3 is not divisible by the expert-parallel degree 2" in errors["indivisible"]
    assert "layers.0.mlp.experts is already expert-parallel" in errors["twice"]
    assert (
        "sub-modules' included, must be stacked with a leading num_experts=4 dimension; got "
        "{'norm.weight': [32]}" in errors["unstacked_child"]
    )
    assert "ep=3 must divide dp_shard=2" in errors["ep_degree"]


def test_ep_plan_without_expert_mesh_is_refused() -> None:
    plan = td.ParallelPlan(block="layers.*", ep_plan=td.MOE_EP_PLAN, fsdp=True)
    with pytest.raises(ValueError, match="expert_mesh=build_expert_mesh"):
        td.parallelize(build_moe(), plan)
