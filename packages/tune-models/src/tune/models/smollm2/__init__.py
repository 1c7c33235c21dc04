"""SmolLM2 (135M, 360M, 1.7B): the Llama architecture with its own sizes."""

from typing import Any

from tune.models.key_map import LLAMA_KEY_MAP
from tune.models.llama import LlamaConfig, build_llama
from tune.models.registry import ModelFamily, register_family


def _smollm2(
    hidden: int, inter: int, layers: int, heads: int, kv: int, theta: float
) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "vocab_size": 49152,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "rope_theta": theta,
    }


SMOLLM2_SIZES: dict[str, dict[str, Any]] = {
    "smollm2-135m": _smollm2(576, 1536, 30, 9, 3, 100000.0),
    "smollm2-360m": _smollm2(960, 2560, 32, 15, 5, 100000.0),
    "smollm2-1.7b": _smollm2(2048, 8192, 24, 32, 32, 130000.0),
}

# Checkpoints say model_type "llama": this family only contributes named sizes.
SMOLLM2 = register_family(
    ModelFamily(
        name="smollm2",
        model_types=(),
        config_from_hf=LlamaConfig.from_hf,
        build=build_llama,
        key_map=LLAMA_KEY_MAP,
        named_sizes=SMOLLM2_SIZES,
    )
)

__all__ = ["SMOLLM2", "SMOLLM2_SIZES"]
