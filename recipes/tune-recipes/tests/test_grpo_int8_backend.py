"""``rollout.backend: int8``: rollouts decoded from an int8 copy of the policy (adapters merged),
remade after every update; the policy itself stays float and trainable."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tune.models import build_from_hf_config, generate
from tune.models.llama import tiny_llama_config
from tune.peft import LoraConfig, apply_lora, merge_and_unload
from tune.quant import quantize_for_decode
from tune.recipes.grpo.backend import build_generation_backend, int8_decode_copy
from tune.train.rl import SamplingSettings

PROMPTS = [[5, 9, 13, 2], [7, 3], [11, 4, 8]]
SAMPLING = SamplingSettings(max_new_tokens=8, temperature=0.0)


def _policy() -> nn.Module:
    torch.manual_seed(0)
    model = build_from_hf_config(tiny_llama_config(64), device="cpu")
    model.requires_grad_(False)
    apply_lora(model, LoraConfig(r=4, alpha=8.0, targets=["q_proj", "v_proj", "down_proj"]))
    return model


def _expected(policy: nn.Module) -> list[list[int]]:
    """Greedy tokens of a hand-made merged int8 copy."""
    manual = merge_and_unload(copy.deepcopy(policy))
    quantize_for_decode(manual.requires_grad_(False).eval(), "int8")
    return generate(manual, PROMPTS, max_new_tokens=SAMPLING.max_new_tokens)


def test_int8_rollouts_follow_the_policy_and_leave_it_float() -> None:
    policy = _policy()
    backend = build_generation_backend("int8", policy, pad_id=0, distributed=False)
    assert backend.generate(PROMPTS, SAMPLING, seed=0) == _expected(policy)
    # the policy keeps float Linear layers and trainable adapters; the copy has int8 ones
    assert all(type(m).__name__ != "Int8DecodeLinear" for m in policy.modules())
    assert any(p.requires_grad for p in policy.parameters())
    decode = int8_decode_copy(policy)
    assert sum(type(m).__name__ == "Int8DecodeLinear" for m in decode.modules()) >= 7
    # an update of the adapters reaches the rollouts after sync_weights, not before
    before = backend.generate(PROMPTS, SAMPLING, seed=0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    assert backend.generate(PROMPTS, SAMPLING, seed=0) == before
    backend.sync_weights(policy)
    after = backend.generate(PROMPTS, SAMPLING, seed=0)
    assert after == _expected(policy)
    assert after != before


def test_int8_rollouts_refuse_several_ranks() -> None:
    with pytest.raises(ValueError, match="runs with one process"):
        build_generation_backend("int8", _policy(), pad_id=0, distributed=True)
