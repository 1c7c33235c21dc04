"""Llama 3.x configuration (also SmolLM2, which uses the Llama architecture)."""

from __future__ import annotations

from dataclasses import dataclass

from tune.models.decoder_config import DecoderConfig, common_fields
from tune.models.hf_config import ConfigFields


@dataclass(frozen=True)
class LlamaConfig(DecoderConfig):
    """Llama sizes plus its optional biases.

    Args:
        attention_bias: biases on q/k/v/o projections.
        mlp_bias: biases on the MLP projections.
    """

    attention_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_hf(cls, f: ConfigFields) -> LlamaConfig:
        """Read an HF ``LlamaConfig``-style ``config.json``."""
        f.expect("hidden_act", ("silu",), "silu")
        f.expect("pretraining_tp", (1,), 1)
        return cls(
            **common_fields(f, eps_default=1e-6),
            attention_bias=f.boolean("attention_bias", False),
            mlp_bias=f.boolean("mlp_bias", False),
        )
