"""Distributed runs (gloo, torchrun) equal a single-process run of the same model and data.

Several scenarios share one torchrun launch (importing torch in every rank costs seconds); each
test below (and in test_expert_parallel.py) reads its scenario's numbers from the session-wide
``two_rank`` / ``four_rank`` launches (conftest.py). Every launch has a hard timeout and its own
port.
"""

from __future__ import annotations

import itertools
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from dist_launch import WORKER, free_port, start, wait

pytestmark = pytest.mark.distributed

PARITY = 1e-5  # float32 losses and final parameters vs the single-process run


def assert_parity(result: dict[str, Any]) -> dict[str, Any]:
    r0 = result["rank0"]
    assert r0["loss_err"] < PARITY, r0
    assert r0["param_err"] < PARITY, r0
    losses = r0["losses"]
    assert all(b < a for a, b in itertools.pairwise(losses)), f"loss did not go down: {losses}"
    # The full state dict is gathered on rank 0 only.
    assert [r.get("nonzero_rank_dict_len") for r in result["ranks"][1:]] == [0] * (
        len(result["ranks"]) - 1
    )
    return r0


def test_environment_and_reductions(two_rank: dict[str, Any]) -> None:
    ranks = two_rank["env"]["ranks"]
    assert [r["info"]["rank"] for r in ranks] == [0, 1]
    assert all(r["info"]["world_size"] == 2 and r["info"]["backend"] == "gloo" for r in ranks)
    assert [r["info"]["local_rank"] for r in ranks] == [0, 1]
    assert [r["again"] for r in ranks] == [[0, 2, "gloo"], [1, 2, "gloo"]]
    # rank r holds 3 + r real labels: the global count is 3 + 4 on every rank.
    assert all(r["token_count"] == 7 for r in ranks)
    assert all(r["any_rank_only_last"] is True and r["any_rank_none"] is False for r in ranks)


def test_fsdp_matches_single_process_with_tied_embeddings(two_rank: dict[str, Any]) -> None:
    r0 = assert_parity(two_rank["fsdp"])
    assert r0["tied_after_training"] is True
    assert "output.weight" in r0["keys"]
    assert "tok_embeddings.weight" in r0["keys"]
    assert "layers.0.attn.q_proj.weight" in r0["keys"]
    # Full optimizer state on rank 0 only, keyed by parameter name, unsharded.
    optim = [r["optim"] for r in two_rank["fsdp"]["ranks"]]
    assert optim[0]["step"] == 4.0
    assert optim[0]["exp_avg_shape"] == [128, 64]
    assert optim[0]["n_state"] == 20  # tied embedding/output counted once
    assert optim[1] == {"len": 0}


def test_fsdp_frozen_base_with_lora_params(two_rank: dict[str, Any]) -> None:
    r0 = assert_parity(two_rank["fsdp_lora"])
    assert r0["frozen_changed"] == 0.0
    assert r0["adapter_keys"] == sorted(
        f"layers.{i}.{m}.lora_{ab}.weight"
        for i in (0, 1)
        for m in ("attn.q_proj", "attn.v_proj", "attn.o_proj", "mlp.down_proj")
        for ab in "AB"
    )
    assert "layers.0.attn.q_proj.weight" in r0["keys"]  # base FQN unchanged by the adapter
    # the ignored frozen weight is a plain full tensor on every rank, and parity still holds
    assert [r["kept_whole"] for r in two_rank["fsdp_lora"]["ranks"]] == [True, True]
    assert two_rank["fsdp_lora"]["ranks"][1]["kept_shape"] == [64, 64]


def test_fsdp_with_checkpointing_and_offloading(two_rank: dict[str, Any]) -> None:
    r0 = assert_parity(two_rank["fsdp_ac_offload"])
    assert r0["checkpointed"] == ["layers.0"]
    assert r0["offloaded"] > 0


def test_fsdp_cpu_offload_and_mixed_precision(two_rank: dict[str, Any]) -> None:
    r0 = assert_parity(two_rank["fsdp_options"])
    assert r0["bf16_compute_dtype"] == ["torch.bfloat16"]
    assert r0["bf16_sharded_dtype"] == "torch.float32"
    assert r0["bf16_loss_rel_err"] < 1e-2


@pytest.mark.parametrize("scenario", ["tp", "tp_sp"])
def test_tensor_parallel_matches_single_process(two_rank: dict[str, Any], scenario: str) -> None:
    r0 = assert_parity(two_rank[scenario])
    assert r0["local_q_shape"] == [32, 64]  # 4 heads x 16 split over 2 ranks


def test_tensor_parallel_refuses_bad_plans(two_rank: dict[str, Any]) -> None:
    errors = two_rank["tp_errors"]["rank0"]
    assert "tied" in errors["tied"]
    assert "output.weight" in errors["tied"]
    assert "out_features=3" in errors["indivisible"]
    assert "0:" in errors["indivisible"]
    assert "diagonal" in errors["unknown_style"]
    assert "colwise" in errors["unknown_style"]
    assert "layers.0.attn: ColwiseParallel" in errors["not_linear"]
    assert "got Attention" in errors["not_linear"]
    # An nn.Linear with inner adapter layers is sharded only by the styles that know how.
    assert "layers.0.attn.q_proj: LoRALinear holds inner layers" in errors["inner_custom_style"]
    assert "MyColwise" in errors["inner_custom_style"]


def test_setup_data_parallel_leaves_tp_peers_out(two_rank: dict[str, Any]) -> None:
    # [dp rank, dp size, tp size, sum of 1.0 over the dp ranks] on each of the 2 ranks.
    assert [r["tp1"] for r in two_rank["data_parallel"]["ranks"]] == [
        [0, 2, 1, 2.0],
        [1, 2, 1, 2.0],
    ]
    assert [r["tp2"] for r in two_rank["data_parallel"]["ranks"]] == [[0, 1, 2, 1.0]] * 2


def test_parallelize_tp_over_lora_then_checkpointing_then_fsdp(two_rank: dict[str, Any]) -> None:
    result = two_rank["parallelize_tp_lora"]
    r0 = assert_parity(result)
    assert r0["applied"] == ["tp", "activation_checkpointing", "fsdp"]
    assert r0["frozen_applied"] == ["tp", "fsdp"]
    # Only the adapters train (the TP norms stay frozen) and they match the single process.
    assert r0["adapter_err"] < PARITY
    # The frozen copy, sharded the same way, computes the single-process loss.
    assert r0["frozen_loss"] == pytest.approx(r0["frozen_ref_loss"], rel=1e-6)
    # TP placement (last mesh dim): colwise q shards lora_B, rowwise o shards lora_A.
    assert r0["layouts"] == {"q.lora_A": "Replicate()", "q.lora_B": "Shard(dim=0)",
                             "o.lora_A": "Shard(dim=1)", "o.lora_B": "Replicate()"}  # fmt: skip


def test_rank0_load_broadcasts_into_meta_built_sharded_model(two_rank: dict[str, Any]) -> None:
    r0 = two_rank["load"]["rank0"]
    assert r0["roundtrip_err"] == 0.0
    assert r0["tied"] is True
    for rank in two_rank["load"]["ranks"]:  # a bad file fails every rank, none hangs
        assert "unexpected ['nonexistent.weight']" in rank["bad_key_error"]


def test_sigterm_on_one_rank_stops_all_after_the_same_step(two_rank: dict[str, Any]) -> None:
    ranks = two_rank["stop"]["ranks"]
    assert [r["steps_run"] for r in ranks] == [2, 2]  # signalled during step index 1 of 6
    assert [r["received"] for r in ranks] == [None, int(signal.SIGTERM)]


def test_fsdp_x_tp_on_2x2_mesh(four_rank: dict[str, Any]) -> None:
    assert_parity(four_rank["fsdp_tp"])
    assert [r["dp"] for r in four_rank["fsdp_tp"]["ranks"]] == [[0, 2], [0, 2], [1, 2], [1, 2]]


def test_parallelize_fsdp_x_tp_over_lora_on_2x2_mesh(four_rank: dict[str, Any]) -> None:
    assert_parity(four_rank["fsdp_tp_lora"])
    assert [r["dp"] for r in four_rank["fsdp_tp_lora"]["ranks"]] == [[0, 2], [0, 2], [1, 2], [1, 2]]


def test_hsdp_on_2x2_mesh(four_rank: dict[str, Any]) -> None:
    r0 = assert_parity(four_rank["hsdp"])
    assert r0["dp_mesh_ndim"] == 2


def test_two_nodes_equal_one_node(tmp_path: Path, two_rank: dict[str, Any]) -> None:
    """Two launchers as two "nodes" (c10d rendezvous on localhost) = one node with 2 ranks."""
    out = tmp_path / "two_nodes.json"
    port = free_port()
    launchers = []
    for node in (0, 1):
        args = [
            "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
            "--rdzv-id", "tune-dist-two-nodes", str(WORKER), str(out), "env", "fsdp",
        ]  # fmt: skip
        launchers.append(start(args))
    for launch in wait(launchers):
        assert launch.returncode == 0, launch.output[-6000:]
    result = json.loads(out.read_text())
    infos = [r["info"] for r in result["env"]["ranks"]]
    assert [
        (i["rank"], i["world_size"], i["local_rank"], i["local_world_size"]) for i in infos
    ] == [
        (0, 2, 0, 1),
        (1, 2, 0, 1),
    ]
    assert result["fsdp"]["rank0"]["losses"] == two_rank["fsdp"]["rank0"]["losses"]
    assert result["fsdp"]["rank0"]["param_err"] < PARITY


def test_hung_rank_fails_within_the_process_group_timeout(tmp_path: Path) -> None:
    """A rank that never joins a collective makes the launch fail after the timeout, not hang."""
    args = [
        "--nnodes", "1", "--nproc_per_node", "2", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "tune-dist-hang",
        str(WORKER), str(tmp_path / "hang.json"), "hang",
    ]  # fmt: skip
    (launch,) = wait([start(args, {"TUNE_DIST_TEST_PG_TIMEOUT": "3"})], timeout=90)
    assert launch.returncode != 0
    assert launch.seconds < 60, f"took {launch.seconds:.0f} s"
    assert "timed out" in launch.output.lower() or "timeout" in launch.output.lower()
