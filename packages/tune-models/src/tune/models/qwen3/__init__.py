"""Qwen3 dense (``model_type`` "qwen3"): Llama blocks with RMSNorm on queries and keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tune.models.decoder_builder import assemble_decoder
from tune.models.decoder_config import DecoderConfig, common_fields
from tune.models.hf_config import ConfigFields
from tune.models.key_map import LLAMA_KEY_MAP
from tune.models.llama import default_rotary, llama_block
from tune.models.qwen2 import qwen_layer_windows
from tune.models.registry import ModelFamily, register_family
from tune.models.transformer import Transformer


@dataclass(frozen=True)
class Qwen3Config(DecoderConfig):
    """Qwen3 sizes.

    Args:
        attention_bias: biases on q/k/v/o.
        layer_windows: sliding window per layer (None = full attention).
    """

    attention_bias: bool = False
    layer_windows: tuple[int | None, ...] = ()

    @classmethod
    def from_hf(cls, f: ConfigFields) -> Qwen3Config:
        """Read an HF ``Qwen3Config``-style ``config.json``."""
        f.expect("hidden_act", ("silu",), "silu")
        common = common_fields(f)
        return cls(
            **common,
            attention_bias=f.boolean("attention_bias", False),
            layer_windows=qwen_layer_windows(f, common["num_layers"]),
        )


def build_qwen3(cfg: Qwen3Config) -> Transformer:
    """A Qwen3 dense model from its config."""
    bias = cfg.attention_bias
    blocks = [
        llama_block(cfg, qkv_bias=bias, o_bias=bias, qk_norm=True, sliding_window=w)
        for w in cfg.layer_windows
    ]
    return assemble_decoder(cfg, blocks, default_rotary(cfg))


def _qwen3(hidden: int, inter: int, layers: int, heads: int, tie: bool) -> dict[str, Any]:
    return {
        "model_type": "qwen3",
        "vocab_size": 151936,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 40960,
        "rope_theta": 1000000.0,
        "attention_bias": False,
        "use_sliding_window": False,
        "tie_word_embeddings": tie,
    }


QWEN3_SIZES: dict[str, dict[str, Any]] = {
    "qwen3-0.6b": _qwen3(1024, 3072, 28, 16, True),
    "qwen3-1.7b": _qwen3(2048, 6144, 28, 16, True),
    "qwen3-4b": _qwen3(2560, 9728, 36, 32, True),
    "qwen3-8b": _qwen3(4096, 12288, 36, 32, False),
    "qwen3-14b": _qwen3(5120, 17408, 40, 40, False),
    "qwen3-32b": _qwen3(5120, 25600, 64, 64, False),
}

QWEN3 = register_family(
    ModelFamily(
        name="qwen3",
        model_types=("qwen3",),
        config_from_hf=Qwen3Config.from_hf,
        build=build_qwen3,
        key_map=LLAMA_KEY_MAP,
        named_sizes=QWEN3_SIZES,
    )
)

__all__ = ["QWEN3", "QWEN3_SIZES", "Qwen3Config", "build_qwen3"]
