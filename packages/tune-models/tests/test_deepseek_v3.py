"""DeepSeek-V3: MLA variants vs transformers, the latent KV cache, module names, skipped MTP
layers and config errors.

Padded-batch logits, gradients, cached decoding, packing, greedy generation, key round trips and
transformers-saved directories run through the ``family`` parametrisation (conftest
``TINY_CONFIGS["deepseek_v3"]``); the named size's counts are in test_moe_families.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
import torch

from tune.models import (
    UnsupportedConfigError,
    config_from_hf,
    convert_hf_to_native,
    convert_native_to_hf,
    named_size_config,
    setup_kv_cache,
    teardown_kv_cache,
)


def _variant_pair() -> tuple[Any, torch.nn.Module]:
    """No query latent, non-interleaved default rope, attention biases, two shared experts,
    one expert group, two dense layers: the other branch of every MLA/V3 option."""
    import transformers

    config = transformers.DeepseekV3Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=16,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        n_shared_experts=2,
        routed_scaling_factor=1.5,
        norm_topk_prob=False,
        first_k_dense_replace=2,
        q_lora_rank=None,
        kv_lora_rank=24,
        qk_nope_head_dim=8,
        qk_rope_head_dim=16,
        v_head_dim=20,
        rope_interleave=False,
        attention_bias=True,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(5)
    hf = transformers.DeepseekV3ForCausalLM(config).float().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(torch.randn_like(p) * (0.1 if p.dim() == 1 else 0.08))
            if "norm" in name:
                p.add_(1.0)
    from tune.models import build_from_hf_config

    native = build_from_hf_config(config.to_dict(), device="meta")
    native.load_state_dict(convert_hf_to_native(hf.state_dict(), native), assign=True)
    native.init_buffers()
    return hf, native.eval()


def test_variant_without_query_latent_matches_transformers(batch) -> None:
    hf, native = _variant_pair()
    assert native.layers["0"].attn.q_proj is not None
    assert native.layers["0"].attn.q_a_proj is None
    assert native.layers["0"].attn.o_proj.bias is not None
    tokens, mask, positions = batch([10, 7, 3], length=10, seed=2)
    with torch.no_grad():
        expected = hf(input_ids=tokens, attention_mask=mask, position_ids=positions).logits
        got = native(tokens, positions=positions, attention_mask=mask)
    real = mask.bool()
    err = (got[real] - expected[real]).abs().max().item()
    assert err < 1e-4, f"max |native - transformers| = {err:.2e}"


def test_kv_cache_holds_the_latent(hf_and_native) -> None:
    _, model = hf_and_native("deepseek_v3")
    setup_kv_cache(model, batch_size=2, max_seq_len=9)
    try:
        cache = model.layers["1"].attn.kv_cache
        assert cache.k_cache.shape == (2, 1, 9, 32)  # kv_a_norm(latent): kv_lora_rank
        assert cache.v_cache.shape == (2, 1, 9, 8)  # rotated k_rope: qk_rope_head_dim
        with torch.no_grad():
            model(torch.full((2, 3), 5))
        assert cache.length == 3
    finally:
        teardown_kv_cache(model)


def test_module_names_are_the_public_contract(hf_and_native) -> None:
    _, native = hf_and_native("deepseek_v3")
    state = native.state_dict()
    assert {k for k in state if k.startswith("layers.1.attn.")} == {
        "layers.1.attn.q_a_proj.weight",
        "layers.1.attn.q_a_norm.weight",
        "layers.1.attn.q_b_proj.weight",
        "layers.1.attn.kv_a_proj.weight",
        "layers.1.attn.kv_a_norm.weight",
        "layers.1.attn.kv_b_proj.weight",
        "layers.1.attn.o_proj.weight",
    }
    assert {k for k in state if k.startswith("layers.1.mlp.")} == {
        "layers.1.mlp.router.weight",
        "layers.1.mlp.routing_bias",
        "layers.1.mlp.experts.gate_up_proj",
        "layers.1.mlp.experts.down_proj",
        "layers.1.mlp.shared_expert.gate_proj.weight",
        "layers.1.mlp.shared_expert.up_proj.weight",
        "layers.1.mlp.shared_expert.down_proj.weight",
    }
    assert state["layers.0.mlp.gate_proj.weight"].shape == (128, 64)  # first_k_dense_replace=1
    assert state["layers.1.attn.kv_a_proj.weight"].shape == (32 + 8, 64)
    assert state["layers.1.attn.kv_b_proj.weight"].shape == (4 * (16 + 12), 32)
    hf = convert_native_to_hf(state, native)
    bias = hf["model.layers.1.mlp.gate.e_score_correction_bias"]
    assert bias.dtype == torch.float32
    assert torch.equal(bias, state["layers.1.mlp.routing_bias"])
    assert bias.abs().sum() > 0  # conftest gives the routing bias random values


def test_multi_token_prediction_layer_is_skipped_with_a_log_line(hf_and_native, caplog) -> None:
    _, native = hf_and_native("deepseek_v3")
    state = convert_native_to_hf(native.state_dict(), native)
    with_mtp = dict(state)
    # A published checkpoint's layer num_hidden_layers (61) holds the MTP module.
    for key in ("model.layers.2.eh_proj.weight", "model.layers.2.mlp.experts.0.up_proj.weight"):
        with_mtp[key] = torch.zeros(2, 2)
    with caplog.at_level(logging.INFO, logger="tune.models.deepseek_v3"):
        converted = convert_hf_to_native(with_mtp, native)
    assert "skipping the weights of layers [2]" in caplog.text
    expected = native.state_dict()
    assert set(converted) == set(expected)
    assert all(torch.equal(converted[k], v) for k, v in expected.items())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_type: expected one of"),
        ({"num_key_value_heads": 64}, "num_key_value_heads: expected num_attention_heads=128"),
        ({"quantization_config": {"quant_method": "fp8"}}, "quantization_config: expected none"),
        ({"scoring_func": "softmax"}, "'scoring_func'"),
        ({"n_group": 3}, "n_group: expected a divisor of n_routed_experts=256"),
        ({"topk_group": 9}, "topk_group: expected at most n_group=8"),
        ({"qk_rope_head_dim": 63}, "qk_rope_head_dim: expected an even number"),
        ({"kv_lora_rank": None}, "'kv_lora_rank'"),
    ],
)
def test_config_errors_name_the_key(change: dict, message: str) -> None:
    with pytest.raises(UnsupportedConfigError, match=re.escape(message)):
        config_from_hf({**named_size_config("deepseek-v3"), **change})


def test_named_size_reads_the_published_config() -> None:
    cfg = config_from_hf(named_size_config("deepseek-v3"))
    assert cfg.moe_layers == (False,) * 3 + (True,) * 58
    assert (cfg.head_dim, cfg.num_groups, cfg.topk_groups, cfg.mtp_layers) == (192, 8, 4, 1)
    assert cfg.rope.rope_type == "yarn"
    assert cfg.rope.factor == 40.0


def test_tp_plan_is_refused_for_latent_attention(hf_and_native) -> None:
    from tune.models import tp_plan

    _, native = hf_and_native("deepseek_v3")
    with pytest.raises(ValueError, match="multi-head latent attention"):
        tp_plan(native)
