"""Gemma 3 text (``model_type`` "gemma3_text"): Gemma blocks with q/k norm and two rotary tables.

Sliding-window layers use the local rotary base (``rope_local_base_freq``, 10k); global layers use
``rope_theta`` with the config's scaling (linear ×8 for 4B-27B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tune.models.decoder_builder import assemble_decoder
from tune.models.decoder_config import DecoderConfig, common_fields, layer_windows
from tune.models.gemma2 import gemma_activation, gemma_block
from tune.models.hf_config import ConfigFields
from tune.models.key_map import GEMMA_KEY_MAP
from tune.models.registry import ModelFamily, register_family
from tune.models.rotary import RopeSpec, RotaryEmbedding
from tune.models.transformer import Transformer


def _local_rope(f: ConfigFields) -> RopeSpec:
    params = f.get("rope_parameters", None)
    if isinstance(params, dict) and "sliding_attention" in params:
        return f.rope("sliding_attention")
    return RopeSpec(theta=f.number("rope_local_base_freq", 10000.0, positive=True))


@dataclass(frozen=True)
class Gemma3TextConfig(DecoderConfig):
    """Gemma 3 text sizes.

    Args:
        local_rope: rotary recipe of sliding-window layers (``rope`` is the global one).
        query_pre_attn_scalar: attention scale is ``query_pre_attn_scalar ** -0.5``.
        attn_logit_softcapping: tanh cap on attention logits, or None.
        final_logit_softcapping: tanh cap on output logits, or None.
        layer_windows: sliding window per layer (None = global).
    """

    local_rope: RopeSpec = field(default_factory=RopeSpec)
    query_pre_attn_scalar: float = 256.0
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    layer_windows: tuple[int | None, ...] = ()

    @classmethod
    def from_hf(cls, f: ConfigFields) -> Gemma3TextConfig:
        """Read an HF ``Gemma3TextConfig``-style ``config.json``."""
        gemma_activation(f)
        f.expect("attention_bias", (False,), False)
        f.expect("use_bidirectional_attention", (False,), False)
        common = common_fields(f, tie_default=True)
        params = f.get("rope_parameters", None)
        if isinstance(params, dict) and "full_attention" in params:
            common["rope"] = f.rope("full_attention", default_theta=1_000_000.0)
        else:
            common["rope"] = f.rope(default_theta=1_000_000.0)
        layers = common["num_layers"]
        if f.get("layer_types", None) is None:
            pattern = f.positive_int("sliding_window_pattern", 6)
            window = f.positive_int("sliding_window", 4096)
            windows = tuple(window if (i + 1) % pattern else None for i in range(layers))
        else:
            windows = layer_windows(f, layers)
        return cls(
            **common,
            local_rope=_local_rope(f),
            query_pre_attn_scalar=f.number("query_pre_attn_scalar", 256.0, positive=True),
            attn_logit_softcapping=f.number("attn_logit_softcapping", None, positive=True),
            final_logit_softcapping=f.number("final_logit_softcapping", None, positive=True),
            layer_windows=windows,
        )


def build_gemma3(cfg: Gemma3TextConfig) -> Transformer:
    """A Gemma 3 text model from its config."""
    blocks = [
        gemma_block(
            cfg,
            scale=cfg.query_pre_attn_scalar**-0.5,
            sliding_window=w,
            logit_softcap=cfg.attn_logit_softcapping,
            qk_norm=True,
            rope_key="local" if w is not None else "global",
        )
        for w in cfg.layer_windows
    ]
    kinds = {b.attn.rope_key for b in blocks}
    specs = {"global": cfg.rope, "local": cfg.local_rope}
    rotary = {
        k: RotaryEmbedding(specs[k], cfg.head_dim, cfg.max_position_embeddings)
        for k in sorted(kinds)
    }
    return assemble_decoder(
        cfg,
        blocks,
        rotary,
        norm_weight_offset=1.0,
        embed_scale=math.sqrt(cfg.hidden_size),
        final_logit_softcap=cfg.final_logit_softcapping,
    )


def _gemma3(
    vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int, head_dim: int, qpas: int,
    window: int, max_pos: int, scaling: dict[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    return {
        "model_type": "gemma3_text",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": max_pos,
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "rope_scaling": scaling,
        "query_pre_attn_scalar": qpas,
        "sliding_window": window,
        "sliding_window_pattern": 6,
        "tie_word_embeddings": True,
    }


_LINEAR_8 = {"rope_type": "linear", "factor": 8.0}

# 4B-27B are the language models of the multimodal checkpoints (vision tower not included).
GEMMA3_SIZES: dict[str, dict[str, Any]] = {
    "gemma3-1b": _gemma3(262144, 1152, 6912, 26, 4, 1, 256, 256, 512, 32768, None),
    "gemma3-4b": _gemma3(262208, 2560, 10240, 34, 8, 4, 256, 256, 1024, 131072, _LINEAR_8),
    "gemma3-12b": _gemma3(262208, 3840, 15360, 48, 16, 8, 256, 256, 1024, 131072, _LINEAR_8),
    "gemma3-27b": _gemma3(262208, 5376, 21504, 62, 32, 16, 128, 168, 1024, 131072, _LINEAR_8),
}

GEMMA3 = register_family(
    ModelFamily(
        name="gemma3",
        model_types=("gemma3_text",),
        config_from_hf=Gemma3TextConfig.from_hf,
        build=build_gemma3,
        key_map=GEMMA_KEY_MAP,
        named_sizes=GEMMA3_SIZES,
    )
)

__all__ = ["GEMMA3", "GEMMA3_SIZES", "Gemma3TextConfig", "build_gemma3"]
