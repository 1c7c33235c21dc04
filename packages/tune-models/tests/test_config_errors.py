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
        ("qwen2.5-0.5b", {"num_attention_heads": 14, "num_key_value_heads": 3}, "not a multiple of num_key_value_heads=3"),
        ("llama3.1-8b", {"hidden_size": None}, "'hidden_size' .* is required but missing"),
        ("llama3.1-8b", {"num_hidden_layers": "32"}, "must be an integer, got '32'"),
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
