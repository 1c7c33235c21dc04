"""transformers-4-style config.json fields (rope_scaling + rope_theta, rope_local_base_freq,
sliding_window_pattern) build the same model as the transformers-5 spelling."""

from __future__ import annotations

import torch

from tune.models import build_from_hf_config, convert_hf_to_native


def _logits_from_legacy(hf, legacy: dict) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    native = build_from_hf_config(legacy).eval()
    native.load_state_dict(convert_hf_to_native(hf.state_dict(), native))
    tokens = torch.randint(3, 256, (2, 14), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return native(tokens), hf(input_ids=tokens).logits


def test_llama_rope_scaling_and_rope_theta(hf_and_native) -> None:
    hf, _ = hf_and_native("llama")
    legacy = {k: v for k, v in hf.config.to_dict().items() if k != "rope_parameters"}
    legacy["rope_theta"] = 500000.0
    legacy["rope_scaling"] = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    got, expected = _logits_from_legacy(hf, legacy)
    assert (got - expected).abs().max().item() < 1e-4


def test_gemma3_local_base_freq_and_window_pattern(hf_and_native) -> None:
    hf, _ = hf_and_native("gemma3")
    drop = {"rope_parameters", "layer_types"}
    legacy = {k: v for k, v in hf.config.to_dict().items() if k not in drop}
    legacy.update(
        rope_theta=1000000.0,
        rope_local_base_freq=10000.0,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
        sliding_window_pattern=2,  # layer 0 local, layer 1 global, as in the tiny model
    )
    got, expected = _logits_from_legacy(hf, legacy)
    assert (got - expected).abs().max().item() < 1e-4
    wrong = dict(legacy, rope_local_base_freq=50.0)
    got_wrong, _ = _logits_from_legacy(hf, wrong)
    assert (got_wrong - expected).abs().max().item() > 1e-3
