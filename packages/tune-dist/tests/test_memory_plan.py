"""estimate_memory / recommend_layout: the parts add up as documented; errors name the field."""

from __future__ import annotations

import dataclasses

import pytest

import tune.dist as td

# Llama-3.1-8B's sizes
SHAPE = td.ModelShape(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                      num_kv_heads=8, head_dim=128, vocab_size=128256)  # fmt: skip
FULL = td.ParameterCounts(trainable=8_030_261_248, frozen=0, root=2 * 128256 * 4096 + 4096,
                          head_trainable=True)  # fmt: skip


def test_full_finetune_parts_follow_the_formula() -> None:
    layout = td.TrainingLayout(seq_len=4096, dtype_bytes=2, fused_ce=False)
    est = td.estimate_memory(SHAPE, FULL, layout)
    assert est.parameters == FULL.trainable * 2
    assert est.optimizer_state == FULL.trainable * 2 * 2  # AdamW: two bf16 moments
    # one block saves 4 d + 2 H hd + 2 Hkv hd + 3 I (gate, up, down's input) elements and
    # 2 + H float32 per token
    per_token = 4 * 4096 + 2 * 4096 + 2 * 1024 + 3 * 14336
    assert td.saved_activation_elements(SHAPE) == (per_token, 2 + 32)
    assert est.total == sum(n for _, n in est.rows()[:-1]) == est.rows()[-1][1]
    sharded = td.estimate_memory(SHAPE, FULL, dataclasses.replace(layout, fsdp_size=8))
    assert sharded.optimizer_state == est.optimizer_state // 8
    # blocks sharded over 8 ranks, the root (embeddings, head) whole for the step
    assert sharded.parameters == (FULL.total - FULL.root) * 2 // 8 + FULL.root * 2
    assert sharded.communication > 0
    assert sharded.activations == est.activations


def test_checkpointing_and_fused_loss_lower_the_peak() -> None:
    plain = td.TrainingLayout(seq_len=8192, dtype_bytes=2, fused_ce=False, fsdp_size=8)
    ckpt = dataclasses.replace(plain, activation_checkpointing=True)
    fused = dataclasses.replace(ckpt, fused_ce=True)
    a, b, c = (td.estimate_memory(SHAPE, FULL, x) for x in (plain, ckpt, fused))
    assert a.total > b.total > c.total
    # plain CE: three float32 [tokens, vocab] tensors
    assert a.loss == 3 * 8192 * 128256 * 4 or a.phase != "end of forward"


def test_recommendation_is_the_first_layout_that_fits() -> None:
    base = td.TrainingLayout(seq_len=4096, dtype_bytes=2)
    choices = td.recommend_layout(SHAPE, FULL, base, world_size=8, device_bytes=80 * td.GIB)
    # fewer ranks per replica first; PP joins TP at each count (4096 tokens: no CP)
    assert [(c.layout.tp_size, c.layout.pp_size, c.layout.fsdp_size) for c in choices[:6]] == [
        (1, 1, 8), (2, 1, 4), (1, 2, 4), (4, 1, 2), (2, 2, 2), (1, 4, 2),
    ]  # fmt: skip
    fits = [c for c in choices if c.fits]
    assert fits
    assert all(c.estimate.total <= 0.9 * 80 * td.GIB for c in fits)
    assert not td.recommend_layout(SHAPE, FULL, base, world_size=1, device_bytes=td.GIB)[0].fits


def test_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"TrainingLayout.optimizer: unknown 'lion'"):
        td.TrainingLayout(seq_len=8, optimizer="lion")
    with pytest.raises(ValueError, match=r"TrainingLayout.seq_len must be >= 1, got 0"):
        td.TrainingLayout(seq_len=0)
    with pytest.raises(ValueError, match="margin must be in"):
        td.recommend_layout(SHAPE, FULL, td.TrainingLayout(seq_len=8), world_size=1,
                            device_bytes=td.GIB, margin=1.0)  # fmt: skip


# Qwen3-30B-A3B's sizes: 128 experts, 8 per token, every block routed
MOE = td.ModelShape(hidden_size=2048, intermediate_size=6144, num_layers=48, num_heads=32,
                    num_kv_heads=4, head_dim=128, vocab_size=151936, num_experts=128,
                    experts_per_token=8, moe_intermediate_size=768)  # fmt: skip
MOE_EXPERTS = 48 * 128 * 3 * 768 * 2048
MOE_FULL = td.ParameterCounts(trainable=30_532_122_624, frozen=0, root=2 * 151936 * 2048 + 2048,
                              head_trainable=True, experts=MOE_EXPERTS,
                              experts_trainable=MOE_EXPERTS)  # fmt: skip


def test_context_parallel_halves_activations_and_loss() -> None:
    one = td.TrainingLayout(
        seq_len=16384, fused_ce=False, fsdp_size=8, activation_checkpointing=True
    )
    two = dataclasses.replace(one, cp_size=2)
    a, b = td.estimate_memory(SHAPE, FULL, one), td.estimate_memory(SHAPE, FULL, two)
    assert a.phase == b.phase == "end of forward"
    assert a.loss == 2 * b.loss == 3 * 16384 * 128256 * 4  # plain CE: three float32 logits
    assert abs(a.activations - 2 * b.activations) <= 2
    assert (a.parameters, a.optimizer_state) == (b.parameters, b.optimizer_state)
    # ring attention: two K/V blocks of the local 8192 tokens in flight, bf16
    assert b.communication - a.communication == 2 * 2 * 8192 * 8 * 128 * 2


def test_pipeline_stages_hold_their_share_of_blocks() -> None:
    one = td.TrainingLayout(seq_len=4096, micro_batch_size=2)
    two = dataclasses.replace(one, pp_size=2, pp_microbatches=2)
    a, (first, last) = td.estimate_memory(SHAPE, FULL, one), td.estimate_stages(SHAPE, FULL, two)
    blocks = (FULL.total - FULL.root) * 2
    assert a.parameters == blocks + FULL.root * 2
    assert first.parameters == blocks // 2 + 128256 * 4096 * 2  # the embedding
    assert last.parameters == blocks // 2 + (FULL.root - 128256 * 4096) * 2  # norm, head
    assert first.communication == 2 * 4096 * 4096 * 2  # a micro-batch's [tokens, d] each way
    # 1F1B: the first stage keeps both micro-batches of its 16 blocks, the last one and the loss
    assert first.activations > last.activations
    assert first.loss == 0 < last.loss
    assert td.estimate_memory(SHAPE, FULL, two) == max(first, last, key=lambda e: e.total)


def test_gpipe_holds_every_micro_batch_1f1b_the_stages() -> None:
    base = td.TrainingLayout(seq_len=4096, micro_batch_size=4, pp_size=2, pp_microbatches=4,
                             fused_ce=True)  # fmt: skip
    gpipe = td.estimate_memory(SHAPE, FULL, dataclasses.replace(base, pp_schedule="gpipe"))
    one_f1b = td.estimate_memory(SHAPE, FULL, base)
    elements, fp32 = td.saved_activation_elements(SHAPE)
    block = 4096 * (elements * 2 + fp32 * 4)  # a micro-batch of one sequence, one block
    assert gpipe.total > one_f1b.total
    # first stage: 16 blocks of 4 micro-batches (GPipe) or min(pp, 4) = 2 (1F1B)
    first = [td.estimate_stages(SHAPE, FULL, lay)[0]
             for lay in (dataclasses.replace(base, pp_schedule="gpipe"), base)]  # fmt: skip
    shared = 4096 * (2 * 128 * 4 + 2 * 4096 * 2)  # RoPE cos/sin, embedding out, norm input
    assert first[0].phase == first[1].phase == "start of backward"
    assert first[0].activations - first[1].activations == pytest.approx(
        2 * (16 * block + shared), abs=2
    )
    with pytest.raises(ValueError, match=r"TrainingLayout.pp_schedule: unknown 'pipedream'"):
        dataclasses.replace(base, pp_schedule="pipedream")
    with pytest.raises(ValueError, match=r"pp_microbatches must divide micro_batch_size=4, got 3"):
        dataclasses.replace(base, pp_microbatches=3)
    assert td.PIPELINE_IN_FLIGHT.keys() == td.SCHEDULES.keys()


def test_moe_experts_divide_by_ep_and_activations_use_the_active_width() -> None:
    one = td.TrainingLayout(seq_len=4096, activation_checkpointing=True)
    four = dataclasses.replace(one, ep_size=4)
    a, b = td.estimate_memory(MOE, MOE_FULL, one), td.estimate_memory(MOE, MOE_FULL, four)
    assert a.parameters - b.parameters == MOE_EXPERTS * 2 * 3 // 4
    assert a.gradients - b.gradients in (0, MOE_EXPERTS * 2 * 3 // 4)
    assert a.optimizer_state - b.optimizer_state == MOE_EXPERTS * 2 * 2 * 3 // 4
    # under FSDP over 8 ranks, ep=2 shards experts over 2 x 4: the same share, a smaller gather
    fsdp = dataclasses.replace(one, fsdp_size=8)
    c, d = (td.estimate_memory(MOE, MOE_FULL, dataclasses.replace(fsdp, ep_size=e)) for e in (1, 2))
    assert c.parameters == d.parameters
    assert d.communication < c.communication
    elements, fp32 = td.saved_activation_elements(MOE)
    # norms, q/k/v and gate inputs 4 d; 2 q, 2 kv; gate/up/down's input of 8 experts; the
    # permuted tokens [k, d] (the experts train)
    assert elements == 4 * 2048 + 2 * 4096 + 2 * 512 + 3 * 8 * 768 + 1 * 8 * 2048
    assert fp32 == 2 + 32 + 128 + 8 * 8 + 1  # norms, LSE, router scores, indices and weights
    # TP keeps the MoE block whole: only attention's tensors split
    tp_elements, _ = td.saved_activation_elements(MOE, tp_size=2)
    assert elements - tp_elements == (2 * 2048 + 2 * 4096 + 2 * 512) / 2
    with pytest.raises(ValueError, match=r"ModelShape.experts_per_token must be in \[1, num_exp"):
        dataclasses.replace(MOE, experts_per_token=0)


def test_candidates_add_pipeline_and_context_parallel_in_order() -> None:
    short = list(td.candidate_layouts(td.TrainingLayout(seq_len=4096), world_size=8))
    assert {c.cp_size for c in short} == {1}  # CP only for long sequences
    long = [(c.tp_size, c.pp_size, c.cp_size, c.fsdp_size)
            for c in td.candidate_layouts(td.TrainingLayout(seq_len=32768), world_size=4)]  # fmt: skip
    # per (offload, checkpointing): fewer ranks per replica first, then TP, CP, PP
    assert long[:9] == [
        (1, 1, 1, 4), (2, 1, 1, 2), (1, 1, 2, 4), (1, 2, 1, 2), (4, 1, 1, 1), (2, 1, 2, 2),
        (1, 1, 4, 4), (2, 2, 1, 1), (1, 2, 2, 2),
    ]  # fmt: skip
    assert len(long) == 4 * 10  # and pp=4; for each (offload, checkpointing)
