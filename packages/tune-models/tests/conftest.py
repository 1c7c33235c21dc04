"""Tiny random-weight transformers models of every family, saved and rebuilt natively."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

torch.set_num_threads(1)

VOCAB = 256
_BASE: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

# family -> (transformers config class, causal-LM class, config overrides). Each exercises the
# fields that make the family different (rope scalings, biases, q/k norm, windows, soft-caps).
TINY_CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        },
    ),
    "smollm2": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 5}),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {
            "tie_word_embeddings": True,
            "use_sliding_window": True,  # layer 1 local (>= max_window_layers), layer 0 global
            "sliding_window": 5,
            "max_window_layers": 1,
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        },
    ),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 32}),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {
            "head_dim": 16,
            "query_pre_attn_scalar": 24,
            "sliding_window": 5,
            "attn_logit_softcapping": 0.5,
            "final_logit_softcapping": 1.5,
        },
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {
            "head_dim": 16,
            "query_pre_attn_scalar": 20,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {
                    "rope_type": "linear",
                    "factor": 8.0,
                    "rope_theta": 1000000.0,
                },
            },
        },
    ),
    "phi3": (
        "Phi3Config",
        "Phi3ForCausalLM",
        {
            "sliding_window": 6,
            "max_position_embeddings": 128,
            "original_max_position_embeddings": 32,
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "short_factor": [1.0, 1.5, 2.0, 3.0],
                "long_factor": [2.0, 4.0, 8.0, 16.0],
            },
        },
    ),
    # Mixture-of-experts families: routed experts stacked natively, per-expert keys on disk.
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {
            "head_dim": 32,
            "moe_intermediate_size": 32,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "norm_topk_prob": True,
            "mlp_only_layers": [1],  # layer 1 is a dense GatedMLP
        },
    ),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        {
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 48,
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "use_sliding_window": True,  # layer 0 local, layer 1 global (transformers' rule)
            "sliding_window": 5,
            "max_window_layers": 1,
        },
    ),
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        {
            "intermediate_size": 32,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "sliding_window": 5,
        },
    ),
    "olmoe": (
        "OlmoeConfig",
        "OlmoeForCausalLM",
        {"intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 3},
    ),
    # Attention sinks, alternating sliding/full layers, biased router and experts, and a clamped
    # SwiGLU whose small limit clamps gate and up on both sides with these weights.
    "gpt_oss": (
        "GptOssConfig",
        "GptOssForCausalLM",
        {
            "head_dim": 16,
            "intermediate_size": 32,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "sliding_window": 5,
            "layer_types": ["sliding_attention", "full_attention"],
            "swiglu_limit": 0.5,
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 150000.0,
                "factor": 4.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
                "original_max_position_embeddings": 32,
            },
        },
    ),
    # Multi-head latent attention (query latent, interleaved partial rope, v width != q/k width,
    # yarn with mscale_all_dim), one dense layer, then grouped sigmoid routing + shared expert.
    "deepseek_v3": (
        "DeepseekV3Config",
        "DeepseekV3ForCausalLM",
        {
            "num_key_value_heads": 4,
            "moe_intermediate_size": 32,
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
            "n_group": 4,
            "topk_group": 2,
            "n_shared_experts": 1,
            "routed_scaling_factor": 2.5,
            "first_k_dense_replace": 1,
            "q_lora_rank": 48,
            "kv_lora_rank": 32,
            "qk_nope_head_dim": 16,
            "qk_rope_head_dim": 8,
            "v_head_dim": 12,
            "rope_parameters": {
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 32,
                "mscale": 1.0,
                "mscale_all_dim": 0.8,
            },
        },
    ),
}
FAMILIES = sorted(TINY_CONFIGS)


def make_hf_model(family: str, seed: int = 0) -> Any:
    """A random-weight transformers model of ``family`` in float32 (eager attention)."""
    import transformers

    config_cls, model_cls, overrides = TINY_CONFIGS[family]
    config = getattr(transformers, config_cls)(**{**_BASE, **overrides})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).float().eval()
    with torch.no_grad():  # larger weights than the default init, so every path matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.1)
            else:
                p.copy_(torch.randn_like(p) * 0.08)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # DeepSeek-V3 routing bias
                buffer.copy_(torch.randn_like(buffer) * 0.1)
    return model


def save_hf_model(model: Any, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    return path


def load_native(path: Path) -> torch.nn.Module:
    """Build the native model from ``path/config.json`` on meta and load the safetensors weights."""
    from safetensors.torch import load_file

    from tune.models import model_from_checkpoint_dir

    spec = model_from_checkpoint_dir(path)
    hf_state = {}
    for file in sorted(path.glob("*.safetensors")):
        hf_state.update(load_file(file))
    spec.model.load_state_dict(spec.hf_to_native(hf_state), assign=True)
    spec.model.init_buffers()
    return spec.model.eval()


@pytest.fixture(scope="session")
def hf_and_native(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """family -> (transformers model, native model) built once per session."""
    cache: dict[str, tuple[Any, torch.nn.Module]] = {}

    def get(family: str) -> tuple[Any, torch.nn.Module]:
        if family not in cache:
            hf = make_hf_model(family)
            path = save_hf_model(hf, tmp_path_factory.mktemp(family))
            _SAVED_DIRS[family] = path
            cache[family] = (hf, load_native(path))
        return cache[family]

    return get


_SAVED_DIRS: dict[str, Path] = {}


@pytest.fixture(scope="session")
def hf_saved_dir(hf_and_native):  # type: ignore[no-untyped-def]
    """family -> the directory transformers' ``save_pretrained`` wrote for ``hf_and_native``."""

    def get(family: str) -> Path:
        hf_and_native(family)
        return _SAVED_DIRS[family]

    return get


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test with a ``family`` argument runs for each tiny family."""
    if "family" in metafunc.fixturenames and not any(
        "family" in m.args[0] for m in metafunc.definition.iter_markers("parametrize")
    ):
        metafunc.parametrize("family", FAMILIES)


@pytest.fixture
def batch():  # type: ignore[no-untyped-def]
    """The ``make_padded_batch`` helper."""
    return make_padded_batch


def make_padded_batch(lengths: list[int], length: int, seed: int = 1, left: bool = True):  # type: ignore[no-untyped-def]
    """tokens [B, length] in [3, VOCAB), mask (row i has lengths[i] real tokens), positions."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, VOCAB, (len(lengths), length), generator=g)
    mask = torch.zeros(len(lengths), length, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            mask[i, length - n :] = 1
        else:
            mask[i, :n] = 1
    tokens = tokens.masked_fill(mask == 0, 0)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return tokens, mask, positions
