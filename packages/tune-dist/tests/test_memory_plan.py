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
    # one block saves 4 d + 2 H hd + 2 Hkv hd + 4 I elements and 2 + H float32 per token
    per_token = 4 * 4096 + 2 * 4096 + 2 * 1024 + 4 * 14336
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
    assert [(c.layout.tp_size, c.layout.fsdp_size) for c in choices[:4]] == [
        (1, 8), (2, 4), (4, 2), (8, 1),
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
