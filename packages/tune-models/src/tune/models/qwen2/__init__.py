"""Qwen2 / Qwen2.5 (``model_type`` "qwen2"): Llama blocks with q/k/v biases."""

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


def qwen_layer_windows(f: ConfigFields, num_layers: int) -> tuple[int | None, ...]:
    """Per-layer windows from ``layer_types``, else ``use_sliding_window``/``max_window_layers``."""
    from tune.models.decoder_config import layer_windows

    if f.get("layer_types", None) is not None:
        return layer_windows(f, num_layers)
    if not f.boolean("use_sliding_window", False):
        return (None,) * num_layers
    window = f.positive_int("sliding_window")
    first = f.integer("max_window_layers", num_layers, minimum=0)
    return tuple(window if i >= first else None for i in range(num_layers))


@dataclass(frozen=True)
class Qwen2Config(DecoderConfig):
    """Qwen2 sizes.

    Args:
        layer_windows: sliding window per layer (None = full attention).
    """

    layer_windows: tuple[int | None, ...] = ()

    @classmethod
    def from_hf(cls, f: ConfigFields) -> Qwen2Config:
        """Read an HF ``Qwen2Config``-style ``config.json``."""
        f.expect("hidden_act", ("silu",), "silu")
        common = common_fields(f)
        return cls(**common, layer_windows=qwen_layer_windows(f, common["num_layers"]))


def build_qwen2(cfg: Qwen2Config) -> Transformer:
    """A Qwen2 / Qwen2.5 model from its config."""
    blocks = [llama_block(cfg, qkv_bias=True, sliding_window=w) for w in cfg.layer_windows]
    return assemble_decoder(cfg, blocks, default_rotary(cfg))


def _qwen25(hidden: int, inter: int, layers: int, heads: int, kv: int, tie: bool) -> dict[str, Any]:
    return {
        "model_type": "qwen2",
        "vocab_size": 151936 if tie else 152064,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "use_sliding_window": False,
        "tie_word_embeddings": tie,
    }


QWEN2_SIZES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": _qwen25(896, 4864, 24, 14, 2, True),
    "qwen2.5-1.5b": _qwen25(1536, 8960, 28, 12, 2, True),
    "qwen2.5-3b": _qwen25(2048, 11008, 36, 16, 2, True),
    "qwen2.5-7b": _qwen25(3584, 18944, 28, 28, 4, False),
    "qwen2.5-14b": _qwen25(5120, 13824, 48, 40, 8, False),
    "qwen2.5-32b": _qwen25(5120, 27648, 64, 40, 8, False),
    "qwen2.5-72b": _qwen25(8192, 29568, 80, 64, 8, False),
}

QWEN2 = register_family(
    ModelFamily(
        name="qwen2",
        model_types=("qwen2",),
        config_from_hf=Qwen2Config.from_hf,
        build=build_qwen2,
        key_map=LLAMA_KEY_MAP,
        named_sizes=QWEN2_SIZES,
    )
)

__all__ = ["QWEN2", "QWEN2_SIZES", "Qwen2Config", "build_qwen2", "qwen_layer_windows"]
