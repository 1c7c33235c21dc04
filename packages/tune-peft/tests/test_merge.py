"""Merging equals the adapter output; unmerge restores the base bit-exactly; export to plain layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tune.peft import (
    LoraConfig,
    LoRALinear,
    apply_lora,
    lora_modules,
    merge_adapters,
    merge_and_unload,
    unmerge_adapters,
)

CONFIGS = {
    "lora": LoraConfig(r=4, alpha=8.0),
    "dora": LoraConfig(r=4, alpha=8.0, use_dora=True),
    "rslora": LoraConfig(r=8, alpha=4.0, use_rslora=True),
}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_merged_equals_adapter_output_and_unmerge_is_bit_exact(
    kind, tiny_llama, tokens, helpers
) -> None:
    apply_lora(tiny_llama, CONFIGS[kind])
    helpers.randomize_adapters(tiny_llama)
    before = helpers.clone_state(tiny_llama)
    adapted = helpers.logits_of(tiny_llama, tokens)
    merged_names = merge_adapters(tiny_llama)
    assert len(merged_names) == 14
    merged = helpers.logits_of(tiny_llama, tokens)
    err = (merged - adapted).abs().max().item()
    assert err < 1e-5, err
    q = tiny_llama.model.layers[0].self_attn.q_proj
    assert not torch.equal(q.weight, before["model.layers.0.self_attn.q_proj.weight"])
    assert "original_weight" not in "".join(tiny_llama.state_dict())  # non-persistent copy
    assert unmerge_adapters(tiny_llama) == merged_names
    after = tiny_llama.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert torch.equal(helpers.logits_of(tiny_llama, tokens), adapted)
    assert not hasattr(q, "original_weight")


def test_merge_without_original_cannot_be_undone(tiny_llama) -> None:
    apply_lora(tiny_llama, LoraConfig(r=2, targets=["q_proj"]))
    merge_adapters(tiny_llama, keep_original=False)
    with pytest.raises(RuntimeError, match="already merged"):
        merge_adapters(tiny_llama)
    with pytest.raises(RuntimeError, match="keep_original=False"):
        unmerge_adapters(tiny_llama)


def test_merge_refuses_tied_weights(helpers) -> None:
    model = helpers.make_tiny_llama(tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    apply_lora(model, LoraConfig(r=2, targets=["lm_head", "q_proj"]))
    with pytest.raises(ValueError, match=r"lm_head\.weight.*model\.embed_tokens\.weight.*tied"):
        merge_adapters(model)
    assert not any(m.merged for m in lora_modules(model).values())  # checked before changing any


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_merge_and_unload_gives_plain_linears(kind, tiny_llama, tokens, helpers) -> None:
    keys = set(tiny_llama.state_dict())
    apply_lora(tiny_llama, CONFIGS[kind])
    helpers.randomize_adapters(tiny_llama)
    adapted = helpers.logits_of(tiny_llama, tokens)
    merge_and_unload(tiny_llama)
    assert not lora_modules(tiny_llama)
    assert type(tiny_llama.model.layers[1].mlp.down_proj) is nn.Linear
    assert set(tiny_llama.state_dict()) == keys
    assert (helpers.logits_of(tiny_llama, tokens) - adapted).abs().max() < 1e-5


def test_single_layer_merge_matches_hand_computed_dora() -> None:
    layer = LoRALinear.from_linear(nn.Linear(6, 4))
    layer.add_adapter("default", LoraConfig(r=2, alpha=4.0, use_dora=True))
    with torch.no_grad():
        layer.lora_A.weight.normal_()
        layer.lora_B.weight.normal_()
        layer.lora_magnitude_vector.uniform_(0.5, 1.5)
    w = layer.weight.detach().clone()
    v = w + 2.0 * layer.lora_B.weight.detach() @ layer.lora_A.weight.detach()
    expected = (
        layer.lora_magnitude_vector.detach().view(-1, 1)
        * v
        / torch.linalg.norm(v, dim=1, keepdim=True)
    )
    layer.merge()
    torch.testing.assert_close(layer.weight.detach(), expected, atol=1e-6, rtol=1e-6)
    layer.unmerge()
    assert torch.equal(layer.weight, w)
