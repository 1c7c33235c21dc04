"""Unsupported configs fail with errors that name the field and list what is supported."""

from __future__ import annotations

import json

import pytest

from tune.models import (
    UnsupportedConfigError,
    build_from_hf_config,
    config_from_hf,
    named_size_config,
    supported_model_types,
)


def test_unsupported_model_type_lists_supported(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "gpt2", "hidden_size": 8}))
    with pytest.raises(UnsupportedConfigError) as info:
        build_from_hf_config(tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert "'gpt2'" in message
    for model_type in ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3"):
        assert model_type in message
    assert set(supported_model_types()) >= {"llama", "gemma3_text", "phi3"}


@pytest.mark.parametrize(
    ("name", "change", "match"),
    [
        ("llama3.2-1b", {"hidden_act": "gelu"}, r"'hidden_act' .* = 'gelu' is not supported; supported: \['silu'\]"),
        ("llama3.2-1b", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4}}, r"rope_type.*'dynamic'.*supported: \['default', 'linear', 'llama3', 'yarn', 'longrope'\]"),
        ("gemma2-2b", {"hidden_activation": "relu"}, r"'hidden_activation'.*'relu'.*gelu_pytorch_tanh"),
        ("qwen3-0.6b", {"layer_types": ["chunked_attention"] * 28}, r"layer_types\[0\] = 'chunked_attention'"),
        ("qwen2.5-0.5b", {"num_attention_heads": 14, "num_key_value_heads": 3}, "num_attention_heads: expected a multiple of num_key_value_heads=3, got 14"),
        ("llama3.1-8b", {"hidden_size": None}, "'hidden_size' .* is required but missing"),
        ("llama3.1-8b", {"num_hidden_layers": "32"}, r"num_hidden_layers: expected a positive integer, got '32' \(str\)"),
    ],
)  # fmt: skip
def test_unsupported_fields_are_named(name: str, change: dict, match: str) -> None:
    config = {**named_size_config(name), **change}
    with pytest.raises(UnsupportedConfigError, match=match):
        config_from_hf(config)


def test_missing_model_type_and_files(tmp_path) -> None:
    with pytest.raises(UnsupportedConfigError, match="no 'model_type' field; supported"):
        config_from_hf({"hidden_size": 8})
    with pytest.raises(FileNotFoundError, match="no HF config at"):
        config_from_hf(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        config_from_hf(tmp_path)


def test_longrope_factor_length_is_checked() -> None:
    config = named_size_config("phi3-mini-4k")
    config["rope_scaling"] = {
        "type": "longrope",
        "short_factor": [1.0] * 3,
        "long_factor": [1.0] * 48,
    }
    with pytest.raises(
        ValueError, match=r"short_factor has 3 entries; expected rotary_dim // 2 = 48"
    ):
        build_from_hf_config(config, device="meta")


def test_forward_rejects_mismatched_inputs() -> None:
    import torch

    config = named_size_config("llama3.2-1b")
    config.update(hidden_size=32, intermediate_size=64, num_hidden_layers=1, vocab_size=64)
    config.update(num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    model = build_from_hf_config(config)
    tokens = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"tokens must be \[batch, seq\], got shape \(5,\)"):
        model(tokens[0])
    with pytest.raises(
        ValueError, match=r"positions shape \(2, 4\) must equal tokens shape \(2, 5\)"
    ):
        model(tokens, positions=tokens[:, :4])
    with pytest.raises(ValueError, match="attention_mask batch 1 != tokens batch 2"):
        model(tokens, attention_mask=torch.ones(1, 5))


def _write_config(tmp_path, name: str, change: dict) -> str:
    path = tmp_path / "checkpoints" / "x" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**named_size_config(name), **change}))
    return str(path)


_NAN, _INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("llama3.2-1b", {"num_attention_heads": 0}, "num_attention_heads: expected a positive integer, got 0"),
        ("llama3.2-1b", {"num_attention_heads": -32}, "num_attention_heads: expected a positive integer, got -32"),
        ("llama3.2-1b", {"num_key_value_heads": 0}, "num_key_value_heads: expected a positive integer, got 0"),
        ("llama3.2-1b", {"num_key_value_heads": "8"}, "num_key_value_heads: expected a positive integer, got '8' (str)"),
        ("llama3.2-1b", {"hidden_size": 2048.0}, "hidden_size: expected a positive integer, got 2048.0"),
        ("llama3.2-1b", {"hidden_size": True}, "hidden_size: expected a positive integer, got True (bool)"),
        ("llama3.2-1b", {"intermediate_size": 0}, "intermediate_size: expected a positive integer, got 0"),
        ("llama3.2-1b", {"num_hidden_layers": -1}, "num_hidden_layers: expected a positive integer, got -1"),
        ("llama3.2-1b", {"vocab_size": 0}, "vocab_size: expected a positive integer, got 0"),
        ("llama3.2-1b", {"head_dim": 0}, "head_dim: expected a positive integer, got 0"),
        ("llama3.2-1b", {"head_dim": 63}, "head_dim: expected an even number (rotary embeddings rotate pairs), got 63"),
        ("llama3.2-1b", {"max_position_embeddings": 0}, "max_position_embeddings: expected a positive integer, got 0"),
        ("llama3.2-1b", {"num_attention_heads": 32, "num_key_value_heads": 5}, "num_attention_heads: expected a multiple of num_key_value_heads=5, got 32"),
        ("llama3.2-1b", {"hidden_size": 2050, "head_dim": None}, "hidden_size: expected a multiple of num_attention_heads=32 when no head_dim is given, got 2050"),
        ("llama3.2-1b", {"rms_norm_eps": -1}, "rms_norm_eps: expected a finite number > 0, got -1"),
        ("llama3.2-1b", {"rms_norm_eps": 0}, "rms_norm_eps: expected a finite number > 0, got 0"),
        ("llama3.2-1b", {"rms_norm_eps": _NAN}, "rms_norm_eps: expected a finite number > 0, got nan"),
        ("llama3.2-1b", {"rms_norm_eps": "1e-5"}, "rms_norm_eps: expected a finite number > 0, got '1e-5' (str)"),
        ("mistral-7b-v0.3", {"rope_theta": -10000.0}, "rope_theta: expected a finite number > 0, got -10000.0"),
        ("mistral-7b-v0.3", {"rope_theta": _INF}, "rope_theta: expected a finite number > 0, got inf"),
        ("qwen3-0.6b", {"rope_parameters": {"rope_type": "default", "rope_theta": 0}}, "rope_parameters.rope_theta: expected a finite number > 0, got 0"),
        ("llama3.2-1b", {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": _NAN}}, "rope_parameters.factor: expected a finite number > 0, got nan"),
        ("llama3.2-1b", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "truncate": "yes"}}, "rope_parameters.truncate: expected true or false, got 'yes' (str)"),
        ("mistral-7b-v0.3", {"rope_scaling": {"type": "linear", "factor": -2.0}}, "rope_scaling.factor: expected a finite number > 0, got -2.0"),
        ("mistral-7b-v0.3", {"rope_scaling": "linear"}, "rope_scaling: expected an object or null, got 'linear' (str)"),
        ("phi3-mini-4k", {"rope_scaling": {"type": "longrope", "short_factor": [1.0, _NAN], "long_factor": [1.0]}}, "rope_scaling.short_factor[1]: expected a finite number > 0, got nan"),
        ("phi4-mini", {"partial_rotary_factor": 1.5}, "partial_rotary_factor: expected a finite number > 0 and <= 1, got 1.5"),
        ("phi4-mini", {"partial_rotary_factor": 0.001}, "partial_rotary_factor: expected head_dim * factor to be an even number >= 2"),
        ("llama3.2-1b", {"tie_word_embeddings": "false"}, "tie_word_embeddings: expected true or false, got 'false' (str)"),
        ("llama3.2-1b", {"attention_bias": 0}, "attention_bias: expected true or false, got 0"),
        ("qwen2.5-0.5b", {"use_sliding_window": "true"}, "use_sliding_window: expected true or false, got 'true' (str)"),
        ("qwen2.5-0.5b", {"use_sliding_window": True, "sliding_window": 0}, "sliding_window: expected a positive integer, got 0"),
        ("qwen2.5-0.5b", {"use_sliding_window": True, "sliding_window": 64, "max_window_layers": -1}, "max_window_layers: expected an integer >= 0, got -1"),
        ("mistral-7b-v0.3", {"sliding_window": -4096}, "sliding_window: expected a positive integer, got -4096"),
        ("gemma2-2b", {"query_pre_attn_scalar": 0}, "query_pre_attn_scalar: expected a finite number > 0, got 0"),
        ("gemma2-2b", {"attn_logit_softcapping": -50.0}, "attn_logit_softcapping: expected a finite number > 0, got -50.0"),
        ("gemma3-1b", {"rope_local_base_freq": _NAN}, "rope_local_base_freq: expected a finite number > 0, got nan"),
        ("gemma3-1b", {"sliding_window_pattern": 0}, "sliding_window_pattern: expected a positive integer, got 0"),
        ("qwen3-0.6b", {"layer_types": "full_attention"}, "layer_types: expected a list of strings, got 'full_attention'"),
        ("llama3.2-1b", {"pretraining_tp": True}, "'pretraining_tp' (model_type 'llama') = True is not supported"),
    ],
)  # fmt: skip
def test_bad_structural_values_name_file_key_and_value(
    tmp_path, name: str, change: dict, message: str
) -> None:
    path = _write_config(tmp_path, name, change)
    with pytest.raises(UnsupportedConfigError) as info:
        build_from_hf_config(path, device="meta")
    assert str(info.value).startswith(path + ": ")
    assert message in str(info.value)


def test_heads_zero_is_reported_before_any_module_is_built(tmp_path) -> None:
    """The reviewer's case: no ZeroDivisionError, no later checkpoint shape mismatch."""
    path = _write_config(tmp_path, "llama3.2-1b", {"num_attention_heads": 0, "head_dim": None})
    with pytest.raises(UnsupportedConfigError) as info:
        config_from_hf(tmp_path / "checkpoints" / "x")
    assert str(info.value) == f"{path}: num_attention_heads: expected a positive integer, got 0"


@pytest.mark.parametrize(
    "name", ["llama3.2-1b", "qwen2.5-0.5b", "gemma2-2b", "gemma3-4b", "phi4-mini"]
)
def test_published_sizes_still_pass_validation(name: str) -> None:
    assert config_from_hf(named_size_config(name)).num_heads > 0
