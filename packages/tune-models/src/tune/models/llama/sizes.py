"""Published Llama 3.1 / 3.2 / 3.3 ``config.json`` fields (architecture only)."""

from __future__ import annotations

from typing import Any

_ROPE_31 = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
_ROPE_32 = {**_ROPE_31, "factor": 32.0}


def _llama(
    hidden: int, inter: int, layers: int, heads: int, tie: bool, rope: dict
) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 8,
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": tie,
        "rope_parameters": rope,
    }


LLAMA_SIZES: dict[str, dict[str, Any]] = {
    "llama3.1-8b": _llama(4096, 14336, 32, 32, False, _ROPE_31),
    "llama3.1-70b": _llama(8192, 28672, 80, 64, False, _ROPE_31),
    "llama3.1-405b": _llama(16384, 53248, 126, 128, False, _ROPE_31),
    "llama3.2-1b": _llama(2048, 8192, 16, 32, True, _ROPE_32),
    "llama3.2-3b": _llama(3072, 8192, 28, 24, True, _ROPE_32),
    "llama3.3-70b": _llama(8192, 28672, 80, 64, False, _ROPE_31),
}
