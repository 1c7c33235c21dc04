"""Mistral 7B v0.3 (``model_type`` "mistral"): Llama blocks with an optional sliding window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tune.models.decoder_builder import assemble_decoder
from tune.models.decoder_config import DecoderConfig, common_fields
from tune.models.hf_config import ConfigFields
from tune.models.key_map import LLAMA_KEY_MAP
from tune.models.llama import default_rotary, llama_block
from tune.models.registry import ModelFamily, register_family
from tune.models.transformer import Transformer


@dataclass(frozen=True)
class MistralConfig(DecoderConfig):
    """Mistral sizes.

    Args:
        sliding_window: local attention window of every layer (None in v0.3).
    """

    sliding_window: int | None = None

    @classmethod
    def from_hf(cls, f: ConfigFields) -> MistralConfig:
        """Read an HF ``MistralConfig``-style ``config.json``."""
        f.expect("hidden_act", ("silu",), "silu")
        return cls(**common_fields(f), sliding_window=f.positive_int("sliding_window", None))


def build_mistral(cfg: MistralConfig) -> Transformer:
    """A Mistral model from its config."""
    blocks = [llama_block(cfg, sliding_window=cfg.sliding_window) for _ in range(cfg.num_layers)]
    return assemble_decoder(cfg, blocks, default_rotary(cfg))


MISTRAL_SIZES: dict[str, dict[str, Any]] = {
    "mistral-7b-v0.3": {
        "model_type": "mistral",
        "vocab_size": 32768,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
    },
}

MISTRAL = register_family(
    ModelFamily(
        name="mistral",
        model_types=("mistral",),
        config_from_hf=MistralConfig.from_hf,
        build=build_mistral,
        key_map=LLAMA_KEY_MAP,
        named_sizes=MISTRAL_SIZES,
    )
)

__all__ = ["MISTRAL", "MISTRAL_SIZES", "MistralConfig", "build_mistral"]
