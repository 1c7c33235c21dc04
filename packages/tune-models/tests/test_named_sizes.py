"""Every named size, built on the meta device, has the published parameter count."""

from __future__ import annotations

import pytest

from tune.models import build_named_size, named_size_config, named_sizes, param_count

# Published totals (safetensors metadata / model cards), tied embeddings counted once.
# Qwen3-0.6B and 1.7B checkpoints also store a copy of the tied LM head (751,632,384 and
# 2,031,739,904 elements on disk); the model has vocab x hidden fewer distinct parameters.
# Gemma 3 4B-27B: the language model of the multimodal checkpoint (published total minus the
# 416,866,032-parameter SigLIP tower and the 1152 x hidden (+1152) projector).
PUBLISHED = {
    "llama3.1-8b": 8_030_261_248,
    "llama3.1-70b": 70_553_706_496,
    "llama3.1-405b": 405_853_388_800,
    "llama3.2-1b": 1_235_814_400,
    "llama3.2-3b": 3_212_749_824,
    "llama3.3-70b": 70_553_706_496,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-3b": 3_085_938_688,
    "qwen2.5-7b": 7_615_616_512,
    "qwen2.5-14b": 14_770_033_664,
    "qwen2.5-32b": 32_763_876_352,
    "qwen2.5-72b": 72_706_203_648,
    "qwen3-0.6b": 751_632_384 - 151936 * 1024,
    "qwen3-1.7b": 2_031_739_904 - 151936 * 2048,
    "qwen3-4b": 4_022_468_096,
    "qwen3-8b": 8_190_735_360,
    "qwen3-14b": 14_768_307_200,
    "qwen3-32b": 32_762_123_264,
    "mistral-7b-v0.3": 7_248_023_552,
    "gemma2-2b": 2_614_341_888,
    "gemma2-9b": 9_241_705_984,
    "gemma2-27b": 27_227_128_320,
    "gemma3-1b": 999_885_952,
    "gemma3-4b": 4_300_079_472 - 416_866_032 - (1152 * 2560 + 1152),
    "gemma3-12b": 12_187_325_040 - 416_866_032 - (1152 * 3840 + 1152),
    "gemma3-27b": 27_432_406_640 - 416_866_032 - (1152 * 5376 + 1152),
    "phi3-mini-4k": 3_821_079_552,
    "phi4-mini": 3_836_021_760,
    "smollm2-135m": 134_515_008,
    "smollm2-360m": 361_821_120,
    "smollm2-1.7b": 1_711_376_384,
    # Mixture-of-experts: transformers' count on the meta device for the same config fields
    # (asserted in test_moe_families).
    "qwen3-30b-a3b": 30_532_122_624,
    "qwen3-235b-a22b": 235_093_634_560,
    "qwen1.5-moe-a2.7b": 14_315_784_192,
    "qwen2-57b-a14b": 57_408_658_944,
    "mixtral-8x7b": 46_702_792_704,
    "mixtral-8x22b": 140_620_634_112,
    "olmoe-1b-7b": 6_919_161_856,
    "gpt-oss-20b": 20_914_757_184,
    "gpt-oss-120b": 116_829_156_672,
    # The 671B of the model card; the checkpoint's 14B multi-token-prediction layer is not built.
    "deepseek-v3": 671_026_404_352,
}


def test_every_named_size_has_a_published_count() -> None:
    assert sorted(PUBLISHED) == named_sizes()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_named_size_parameter_count(name: str) -> None:
    model = build_named_size(name)  # meta device: no memory
    assert next(model.parameters()).is_meta
    assert param_count(model) == PUBLISHED[name]
    tied = named_size_config(name).get("tie_word_embeddings", False)
    assert (model.output.weight is model.tok_embeddings.weight) == tied


def test_param_count_options() -> None:
    model = build_named_size("llama3.2-1b")
    embed = 128256 * 2048
    assert param_count(model, exclude_embeddings=True) == 1_235_814_400 - embed
    for p in model.parameters():
        p.requires_grad_(False)
    model.layers["0"].attn.q_proj.weight.requires_grad_(True)
    assert param_count(model, trainable_only=True) == 2048 * 2048


def test_tiny_llama_config_is_read_alike_by_transformers() -> None:
    import torch
    import transformers

    from tune.models import build_from_hf_config, convert_native_to_hf
    from tune.models.llama import tiny_llama_config

    config = tiny_llama_config(96, num_kv_heads=1, tie_word_embeddings=True, eos_token_id=2)
    torch.manual_seed(0)
    model = build_from_hf_config(config, device="cpu", dtype=torch.float32)
    model.init_weights()
    # 2 blocks of q, o (64 x 64), k, v (64 x 16), a gated MLP (3 x 64 x 128), 2 norms; tied head
    assert param_count(model) == 96 * 64 + 2 * (2 * 64 * 64 + 2 * 64 * 16 + 3 * 64 * 128 + 128) + 64
    hf_config = transformers.AutoConfig.for_model(**config)
    reference = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    result = reference.load_state_dict(convert_native_to_hf(state, config), strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) <= {"lm_head.weight"}  # tied: the embedding
    tokens = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens).logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="num_heads=3 must divide hidden_size=64"):
        tiny_llama_config(96, num_heads=3)
