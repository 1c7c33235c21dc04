"""Published Llama 3.1 / 3.2 / 3.3 ``config.json`` fields (architecture only), and tiny ones."""

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


def tiny_llama_config(
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 1024,
    tie_word_embeddings: bool = False,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
) -> dict[str, Any]:
    """A complete Llama ``config.json`` (as transformers writes it) for a small test model.

    ``build_from_hf_config`` builds it and ``transformers`` loads it as it is; the defaults make a
    model of 74k parameters besides the embedding and LM head, for tests and demos on a CPU.

    Args:
        vocab_size: rows of the embedding (and LM head).
        hidden_size: model width; ``head_dim`` is ``hidden_size // num_heads``.
        num_layers: decoder blocks.
        num_heads: query heads; must divide ``hidden_size``.
        num_kv_heads: key/value heads (GQA); must divide ``num_heads``.
        intermediate_size: width of the gated MLP.
        max_position_embeddings: longest sequence the config declares.
        tie_word_embeddings: share the embedding with the LM head.
        bos_token_id: written as is (the tokenizer's BOS id, or None).
        eos_token_id: written as is (the tokenizer's EOS id, or None).
    """
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError(
            f"tiny_llama_config: num_heads={num_heads} must divide hidden_size={hidden_size} "
            f"and num_kv_heads={num_kv_heads} must divide num_heads"
        )
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": hidden_size // num_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tie_word_embeddings,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "dtype": "float32",
    }
