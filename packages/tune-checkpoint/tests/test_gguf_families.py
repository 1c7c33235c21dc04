"""GGUF export/import of every family, against transformers (its own GGUF loader and the original).

For each tiny random model: export F32 -> transformers' GGUF loader gives the original logits;
our import gives back the original state dict (exactly; gemma norms to within half an ulp of
`1 + w`, as llama.cpp stores `w + 1`) and a config from which transformers builds the same model.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from tune.checkpoint.gguf import (  # noqa: E402
    convert_gguf_to_hf_dir,
    export_gguf,
    gguf_to_hf,
    read_gguf,
)

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"]
VARIANTS = [(f, {}) for f in FAMILIES] + [
    ("llama", {"tie_word_embeddings": True}),
    ("qwen2", {"tie_word_embeddings": False}),
]
TOKENS = torch.tensor(
    [[1, 17, 42, 99, 250, 7, 300, 5, 64, 2], [3, 3, 180, 260, 11, 12, 13, 319, 0, 8]]
)
LOGIT_TOL = 1e-5


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


def _expected_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


def _assert_state_equal(ours: dict, expected: dict, gemma: bool) -> None:
    assert sorted(ours) == sorted(expected)
    for name, want in expected.items():
        got = ours[name]
        assert got.dtype == torch.float32, name
        assert got.shape == want.shape, name
        if gemma and name.endswith("norm.weight"):
            # stored as w + 1 in float32: (w + 1) - 1 is w to within half an ulp of 1 + w
            bound = torch.finfo(torch.float32).eps / 2 * (1 + want).abs()
            assert ((got - want).abs() <= bound).all(), name
        else:
            assert torch.equal(got, want), name


@pytest.mark.parametrize(("family", "overrides"), VARIANTS, ids=lambda v: str(v))
def test_f32_round_trip_matches_transformers(
    family, overrides, gguf_tiny_model, gguf_model_dir, tmp_path
):
    model = gguf_tiny_model(family, **overrides)
    out = export_gguf(gguf_model_dir(model), tmp_path / "model.gguf", file_type="f32")
    contents = read_gguf(out)
    assert set(contents.tensor_types.values()) == {"F32"}
    assert ("output.weight" in contents.tensors) == (not model.config.tie_word_embeddings)
    assert contents.metadata["general.file_type"] == int(gguf.LlamaFileType.ALL_F32)
    assert contents.metadata["general.quantization_version"] == gguf.GGML_QUANT_VERSION

    reference = _logits(model)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=out.name, dtype=torch.float32
    ).eval()
    diff = (_logits(loaded) - reference).abs().max().item()
    logging.getLogger(__name__).info("%s %s: max |logit diff| = %.3g", family, overrides, diff)
    assert diff <= LOGIT_TOL

    config, state, tokenizer_files = gguf_to_hf(out)
    _assert_state_equal(state, _expected_state(model), family.startswith("gemma"))
    assert set(tokenizer_files) == {"tokenizer.json", "tokenizer_config.json"}

    # our config.json builds the same model in transformers
    hf_dir = convert_gguf_to_hf_dir(out, tmp_path / "back")
    rebuilt = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    assert type(rebuilt).__name__ == (
        "LlamaForCausalLM" if family == "mistral" else type(model).__name__
    )
    assert (_logits(rebuilt) - reference).abs().max().item() <= LOGIT_TOL
    original = model.config.to_dict()
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        assert config[key] == original[key], key
    assert config["num_key_value_heads"] == original["num_key_value_heads"]
    assert config["head_dim"] == getattr(model.config, "head_dim", 64 // 4)
    assert config["tie_word_embeddings"] == model.config.tie_word_embeddings
    assert config["rms_norm_eps"] == original["rms_norm_eps"]
    assert config["max_position_embeddings"] == original["max_position_embeddings"]
    if family.startswith("gemma"):
        for key in ("layer_types", "sliding_window", "query_pre_attn_scalar"):
            assert config[key] == original[key], key
        assert config["final_logit_softcapping"] == original["final_logit_softcapping"]
        assert config["attn_logit_softcapping"] == original["attn_logit_softcapping"]
        assert config["rope_parameters"] == original["rope_parameters"]


def test_llama_qk_rows_are_permuted_as_llama_cpp_expects(gguf_tiny_model, gguf_model_dir, tmp_path):
    """GGUF's attn_q rows pair up the rotary halves per head: row 2i <- HF row i, 2i+1 <- i + d/2."""
    model = gguf_tiny_model("llama")
    out = export_gguf(gguf_model_dir(model), tmp_path / "m.gguf", file_type="f32")
    stored = read_gguf(out, names=["blk.0.attn_q.weight", "blk.0.attn_k.weight"]).tensors
    head_dim = model.config.head_dim
    for gguf_name, hf, heads in (
        ("blk.0.attn_q.weight", model.model.layers[0].self_attn.q_proj.weight, 4),
        ("blk.0.attn_k.weight", model.model.layers[0].self_attn.k_proj.weight, 2),
    ):
        for h in range(heads):
            for i in range(head_dim // 2):
                base = h * head_dim
                assert torch.equal(stored[gguf_name][base + 2 * i], hf[base + i])
                assert torch.equal(
                    stored[gguf_name][base + 2 * i + 1], hf[base + i + head_dim // 2]
                )


def test_gemma_norms_are_stored_plus_one(gguf_tiny_model, gguf_model_dir, tmp_path):
    model = gguf_tiny_model("gemma2")
    out = export_gguf(gguf_model_dir(model), tmp_path / "g.gguf", file_type="f32")
    stored = read_gguf(out, names=["blk.1.post_ffw_norm.weight", "output_norm.weight"]).tensors
    assert torch.equal(
        stored["blk.1.post_ffw_norm.weight"],
        model.model.layers[1].post_feedforward_layernorm.weight + 1,
    )
    assert torch.equal(stored["output_norm.weight"], model.model.norm.weight + 1)


def test_phi3_keeps_fused_projections(gguf_tiny_model, gguf_model_dir, tmp_path):
    model = gguf_tiny_model("phi3")
    out = export_gguf(gguf_model_dir(model), tmp_path / "p.gguf", file_type="f32")
    stored = read_gguf(out, names=["blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"]).tensors
    layer = model.model.layers[0]
    assert torch.equal(stored["blk.0.attn_qkv.weight"], layer.self_attn.qkv_proj.weight)
    assert torch.equal(stored["blk.0.ffn_up.weight"], layer.mlp.gate_up_proj.weight)  # [2 * 96, 64]
    metadata = read_gguf(out, names=[]).metadata
    assert metadata["phi3.feed_forward_length"] == 96
    assert metadata["phi3.rope.dimension_count"] == 16


def test_qwen3_head_dim_and_gemma3_linear_rope_survive(gguf_tiny_model, gguf_model_dir, tmp_path):
    """Settings transformers' GGUF loader drops: Qwen3 head_dim != hidden / heads, Gemma 3's
    linear rope scaling of the global layers and its local rope base."""
    qwen = gguf_tiny_model("qwen3", head_dim=32)
    out = export_gguf(gguf_model_dir(qwen, "q"), tmp_path / "q.gguf", file_type="f32")
    config, state, _ = gguf_to_hf(out)
    assert config["head_dim"] == 32
    _assert_state_equal(state, _expected_state(qwen), gemma=False)

    rope = {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    }
    gemma = gguf_tiny_model("gemma3", rope_parameters=rope)
    out = export_gguf(gguf_model_dir(gemma, "g"), tmp_path / "g.gguf", file_type="f32")
    config, _, _ = gguf_to_hf(out)
    assert config["rope_parameters"] == gemma.config.to_dict()["rope_parameters"]
    rebuilt = transformers.AutoModelForCausalLM.from_pretrained(
        convert_gguf_to_hf_dir(out, tmp_path / "g-hf"), dtype=torch.float32
    ).eval()
    assert (_logits(rebuilt) - _logits(gemma)).abs().max().item() <= LOGIT_TOL


def test_llama3_rope_scaling_goes_through_rope_freqs(gguf_tiny_model, gguf_model_dir, tmp_path):
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    model = gguf_tiny_model("llama", head_dim=64, rope_parameters=rope)
    out = export_gguf(gguf_model_dir(model), tmp_path / "l3.gguf", file_type="f32")
    assert read_gguf(out, names=["rope_freqs.weight"]).tensors["rope_freqs.weight"].shape == (32,)
    config, state, _ = gguf_to_hf(out)
    assert config["rope_parameters"] == rope
    _assert_state_equal(state, _expected_state(model), gemma=False)
    rebuilt = transformers.AutoModelForCausalLM.from_pretrained(
        convert_gguf_to_hf_dir(out, tmp_path / "l3-hf"), dtype=torch.float32
    ).eval()
    assert (_logits(rebuilt) - _logits(model)).abs().max().item() <= LOGIT_TOL


def test_tokenizer_and_chat_template_round_trip(gguf_tiny_model, gguf_model_dir, tmp_path):
    model = gguf_tiny_model("qwen2")
    source = gguf_model_dir(model)
    out = export_gguf(source, tmp_path / "t.gguf", file_type="f16")
    metadata = read_gguf(out, names=[]).metadata
    original = json.loads((source / "tokenizer_config.json").read_text())
    assert metadata["tokenizer.chat_template"] == original["chat_template"]
    assert len(metadata["tokenizer.ggml.tokens"]) == model.config.vocab_size

    hf_dir = convert_gguf_to_hf_dir(out, tmp_path / "t-hf")
    tokenizers = pytest.importorskip("tokenizers")
    ours = tokenizers.Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    theirs = tokenizers.Tokenizer.from_file(str(source / "tokenizer.json"))
    text = "Hello world, the lazy fox 123 <|im_end|>"
    assert ours.encode(text).ids == theirs.encode(text).ids
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert config["chat_template"] == original["chat_template"]
    assert config["eos_token"] == "<|im_end|>"
    assert (tmp_path / "Modelfile").read_text().startswith("# Ollama Modelfile")
    assert "PARAMETER stop" in (tmp_path / "Modelfile").read_text()


def test_phi3_partial_rotary_survives(gguf_tiny_model, gguf_model_dir, tmp_path):
    """Phi-4-mini style: rope.dimension_count < head_dim -> partial_rotary_factor."""
    model = gguf_tiny_model("phi3", partial_rotary_factor=0.75, head_dim=16)
    assert model.config.to_dict()["rope_parameters"]["partial_rotary_factor"] == 0.75
    out = export_gguf(gguf_model_dir(model), tmp_path / "p.gguf", file_type="f32")
    assert read_gguf(out, names=[]).metadata["phi3.rope.dimension_count"] == 12
    config, _, _ = gguf_to_hf(out)
    assert config["partial_rotary_factor"] == 0.75
    rebuilt = transformers.AutoModelForCausalLM.from_pretrained(
        convert_gguf_to_hf_dir(out, tmp_path / "p-hf"), dtype=torch.float32
    ).eval()
    assert (_logits(rebuilt) - _logits(model)).abs().max().item() <= LOGIT_TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_runs_the_export(family, gguf_tiny_model, gguf_model_dir, tmp_path):
    """llama.cpp itself (llama-cpp-python, when installed) loads the F32 export unchanged.

    Measured with llama-cpp-python 0.3.36 (F32 KV cache): max |logit diff| 1.4e-6 to 2.2e-6 for
    llama, mistral, qwen2, qwen3, phi3; 1.0e-3 (gemma2) and 2.0e-3 (gemma3), from ggml's fp16 GELU
    table; logits up to ~3.8.
    """
    llama_cpp = pytest.importorskip("llama_cpp")
    model = gguf_tiny_model(family)
    out = export_gguf(gguf_model_dir(model), tmp_path / "m.gguf", file_type="f32")
    tokens = TOKENS[0].tolist()
    f32 = 0  # GGML_TYPE_F32 for the KV cache (the default F16 cache adds ~1e-3)
    llm = llama_cpp.Llama(
        str(out), logits_all=True, n_ctx=64, n_threads=1, verbose=False, type_k=f32, type_v=f32
    )
    llm.eval(tokens)
    got = torch.tensor(llm.scores[: len(tokens)])
    tolerance = 5e-3 if family.startswith("gemma") else 1e-5
    assert (got - _logits(model)[0]).abs().max().item() <= tolerance
