"""Training touches only adapters; adapter state dicts, counts, loading, disabling."""

from __future__ import annotations

import pytest
import torch

from tune.peft import (
    LoraConfig,
    adapter_state_dict,
    apply_lora,
    count_parameters,
    disable_adapters,
    load_adapter_state_dict,
    mark_only_adapters_trainable,
    merge_adapters,
    trainable_parameters,
)

CONFIGS = {
    "lora": LoraConfig(r=4, alpha=8.0),
    "dora": LoraConfig(r=4, alpha=8.0, use_dora=True),
    "rslora": LoraConfig(r=4, alpha=8.0, use_rslora=True, dropout=0.1),
}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_training_moves_only_adapters_and_the_base_stays_bit_identical(
    kind, tiny_llama, tokens, helpers
) -> None:
    base_state = helpers.clone_state(tiny_llama)
    targets = apply_lora(tiny_llama, CONFIGS[kind])
    adapter_keys = set(adapter_state_dict(tiny_llama))
    assert set(trainable_parameters(tiny_llama)) == adapter_keys
    # Gradients reach exactly the adapter parameters.
    tiny_llama.train()
    tiny_llama(input_ids=tokens, labels=tokens).loss.backward()
    with_grad = {n for n, p in tiny_llama.named_parameters() if p.grad is not None}
    assert with_grad == adapter_keys
    b_grads = [tiny_llama.get_submodule(t).lora_B.weight.grad for t in targets]
    assert all(g.abs().sum() > 0 for g in b_grads)
    tiny_llama.zero_grad(set_to_none=True)
    losses = helpers.train_steps(tiny_llama, tokens, steps=8)
    assert losses[-1] < losses[0] - 0.05
    after = tiny_llama.state_dict()
    for key, value in base_state.items():
        assert torch.equal(after[key], value), key


def test_adapter_state_dict_keys_shapes_and_counts(tiny_llama) -> None:
    total_before = count_parameters(tiny_llama).total
    apply_lora(
        tiny_llama, LoraConfig(r=4, targets=["q_proj", "k_proj", "down_proj"], use_dora=True)
    )
    state = adapter_state_dict(tiny_llama)
    q = "model.layers.0.self_attn.q_proj"
    assert state[f"{q}.lora_A.weight"].shape == (4, 32)
    assert state[f"{q}.lora_B.weight"].shape == (32, 4)
    assert state[f"{q}.lora_magnitude_vector"].shape == (32,)
    assert state["model.layers.1.self_attn.k_proj.lora_B.weight"].shape == (16, 4)  # 2 kv heads x 8
    assert state["model.layers.1.mlp.down_proj.lora_A.weight"].shape == (4, 64)
    assert len(state) == 3 * 3 * 2
    # r*(in+out) + out per adapted layer, by hand: q 32->32, k 32->16, down 64->32.
    per_layer = (4 * 64 + 32) + (4 * 48 + 16) + (4 * 96 + 32)
    counts = count_parameters(tiny_llama)
    assert counts.trainable == 2 * per_layer
    assert counts.total == total_before + 2 * per_layer
    assert counts.trainable_bytes == 4 * counts.trainable
    assert counts.trainable_fraction == pytest.approx(counts.trainable / counts.total)


def test_adapter_state_round_trips_exactly(tiny_llama, tokens, helpers) -> None:
    fresh = helpers.pristine_copy(tiny_llama)
    config = LoraConfig(r=4, use_dora=True)
    apply_lora(tiny_llama, config)
    helpers.randomize_adapters(tiny_llama)
    apply_lora(fresh, config)
    loaded = load_adapter_state_dict(
        fresh, {k: v.clone() for k, v in adapter_state_dict(tiny_llama).items()}
    )
    assert len(loaded) == 14 * 3
    assert torch.equal(helpers.logits_of(fresh, tokens), helpers.logits_of(tiny_llama, tokens))


def test_load_adapter_state_dict_errors_name_the_key(tiny_llama) -> None:
    apply_lora(tiny_llama, LoraConfig(r=4, targets=["q_proj"]))
    state = {k: v.clone() for k, v in adapter_state_dict(tiny_llama).items()}
    key = "model.layers.0.self_attn.q_proj.lora_A.weight"
    with pytest.raises(
        ValueError, match=r"lora_A\.weight': shape \(2, 32\) does not match the model's \(4, 32\)"
    ):
        load_adapter_state_dict(tiny_llama, {**state, key: torch.zeros(2, 32)})
    with pytest.raises(ValueError, match="lacks 1 of the adapter's tensors"):
        load_adapter_state_dict(tiny_llama, {k: v for k, v in state.items() if k != key})
    load_adapter_state_dict(tiny_llama, {key: state[key]}, strict=False)
    with pytest.raises(ValueError, match=r"keys the model's adapter lacks.*v_proj"):
        load_adapter_state_dict(
            tiny_llama, {**state, "model.layers.0.self_attn.v_proj.lora_A.weight": state[key]}
        )
    with pytest.raises(KeyError, match="no adapter 'other'"):
        adapter_state_dict(tiny_llama, "other")


def test_bias_modes_train_and_save_biases(tiny_llama) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM  # q/k/v carry biases

    qwen = Qwen2ForCausalLM(
        Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2)
    )  # fmt: skip
    apply_lora(qwen, LoraConfig(r=2, targets=["q_proj", "o_proj"], bias="lora_only"))
    biases = {k for k in trainable_parameters(qwen) if k.endswith("bias")}
    assert biases == {"model.layers.0.self_attn.q_proj.bias"}
    assert biases <= set(adapter_state_dict(qwen))
    mark_only_adapters_trainable(qwen, bias="all")
    biases = {k for k in trainable_parameters(qwen) if k.endswith("bias")}
    assert biases == {f"model.layers.0.self_attn.{p}_proj.bias" for p in "qkv"}


def test_disable_adapters_gives_the_base_bit_for_bit(tiny_llama, tokens, helpers) -> None:
    base = helpers.logits_of(tiny_llama, tokens)
    apply_lora(tiny_llama, LoraConfig(r=4, use_dora=True))
    helpers.randomize_adapters(tiny_llama)
    adapted = helpers.logits_of(tiny_llama, tokens)
    assert (adapted - base).abs().max() > 1e-3
    with disable_adapters(tiny_llama) as reference:
        assert torch.equal(helpers.logits_of(reference, tokens), base)
    assert torch.equal(helpers.logits_of(tiny_llama, tokens), adapted)
    with pytest.raises(RuntimeError, match="boom"), disable_adapters(tiny_llama):
        raise RuntimeError("boom")
    assert torch.equal(helpers.logits_of(tiny_llama, tokens), adapted)
    merge_adapters(tiny_llama)
    with (
        pytest.raises(RuntimeError, match="cannot disable merged adapters"),
        disable_adapters(tiny_llama),
    ):
        pass
