"""Gemma 2 (``model_type`` "gemma2") and the Gemma-style block shared with Gemma 3."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from tune.models.attention import Attention
from tune.models.decoder_builder import assemble_decoder
from tune.models.decoder_config import DecoderConfig, common_fields, layer_windows
from tune.models.hf_config import ConfigFields
from tune.models.key_map import GEMMA_KEY_MAP
from tune.models.llama import default_rotary
from tune.models.mlp import GatedMLP
from tune.models.registry import ModelFamily, register_family
from tune.models.rms_norm import RMSNorm
from tune.models.transformer import Transformer, TransformerBlock

_GELU_TANH = ("gelu_pytorch_tanh",)


def gemma_block(
    cfg: DecoderConfig,
    *,
    scale: float,
    sliding_window: int | None,
    logit_softcap: float | None = None,
    qk_norm: bool = False,
    rope_key: str = "default",
) -> TransformerBlock:
    """Gemma block: norms (stored as ``weight - 1``) before and after attention and the GeGLU MLP.

    Args:
        cfg: sizes.
        scale: q·k multiplier (``query_pre_attn_scalar ** -0.5``).
        sliding_window: local window of this layer, None for global.
        logit_softcap: tanh cap on attention logits (Gemma 2).
        qk_norm: Gemma-style RMSNorm over head_dim on queries and keys (Gemma 3).
        rope_key: which rotary table the layer uses.
    """

    def norm(dim: int = cfg.hidden_size) -> RMSNorm:
        return RMSNorm(dim, cfg.rms_norm_eps, weight_offset=1.0)

    return TransformerBlock(
        attn=Attention(
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            q_norm=norm(cfg.head_dim) if qk_norm else None,
            k_norm=norm(cfg.head_dim) if qk_norm else None,
            scale=scale,
            logit_softcap=logit_softcap,
            sliding_window=sliding_window,
            rope_key=rope_key,
        ),
        mlp=GatedMLP(cfg.hidden_size, cfg.intermediate_size, "gelu_tanh"),
        attn_norm=norm(),
        mlp_norm=norm(),
        post_attn_norm=norm(),
        post_mlp_norm=norm(),
    )


def gemma_activation(f: ConfigFields) -> None:
    """Gemma configs name the MLP activation ``hidden_activation`` (older ones ``hidden_act``)."""
    key = "hidden_activation" if f.get("hidden_activation", None) is not None else "hidden_act"
    f.expect(key, _GELU_TANH, "gelu_pytorch_tanh")


@dataclass(frozen=True)
class Gemma2Config(DecoderConfig):
    """Gemma 2 sizes.

    Args:
        query_pre_attn_scalar: attention scale is ``query_pre_attn_scalar ** -0.5``.
        attn_logit_softcapping: tanh cap on attention logits, or None.
        final_logit_softcapping: tanh cap on output logits, or None.
        layer_windows: sliding window per layer (None = global).
    """

    query_pre_attn_scalar: float = 256.0
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    layer_windows: tuple[int | None, ...] = ()

    @classmethod
    def from_hf(cls, f: ConfigFields) -> Gemma2Config:
        """Read an HF ``Gemma2Config``-style ``config.json``."""
        gemma_activation(f)
        f.expect("attention_bias", (False,), False)
        common = common_fields(f, tie_default=True)
        layers = common["num_layers"]
        if f.get("layer_types", None) is None:  # Gemma 2 alternates local, global, ...
            window = f.positive_int("sliding_window", 4096)
            windows = tuple(window if i % 2 == 0 else None for i in range(layers))
        else:
            windows = layer_windows(f, layers)
        return cls(
            **common,
            query_pre_attn_scalar=f.number("query_pre_attn_scalar", 256.0, positive=True),
            attn_logit_softcapping=f.number("attn_logit_softcapping", None, positive=True),
            final_logit_softcapping=f.number("final_logit_softcapping", None, positive=True),
            layer_windows=windows,
        )


def build_gemma2(cfg: Gemma2Config) -> Transformer:
    """A Gemma 2 model from its config."""
    blocks = [
        gemma_block(
            cfg,
            scale=cfg.query_pre_attn_scalar**-0.5,
            sliding_window=w,
            logit_softcap=cfg.attn_logit_softcapping,
        )
        for w in cfg.layer_windows
    ]
    return assemble_decoder(
        cfg,
        blocks,
        default_rotary(cfg),
        norm_weight_offset=1.0,
        embed_scale=math.sqrt(cfg.hidden_size),
        final_logit_softcap=cfg.final_logit_softcapping,
    )


def _gemma2(
    hidden: int, inter: int, layers: int, heads: int, kv: int, head_dim: int, qpas: int
) -> dict[str, Any]:
    return {
        "model_type": "gemma2",
        "vocab_size": 256000,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 8192,
        "rope_theta": 10000.0,
        "query_pre_attn_scalar": qpas,
        "sliding_window": 4096,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "tie_word_embeddings": True,
    }


GEMMA2_SIZES: dict[str, dict[str, Any]] = {
    "gemma2-2b": _gemma2(2304, 9216, 26, 8, 4, 256, 256),
    "gemma2-9b": _gemma2(3584, 14336, 42, 16, 8, 256, 256),
    "gemma2-27b": _gemma2(4608, 36864, 46, 32, 16, 128, 144),
}

GEMMA2 = register_family(
    ModelFamily(
        name="gemma2",
        model_types=("gemma2",),
        config_from_hf=Gemma2Config.from_hf,
        build=build_gemma2,
        key_map=GEMMA_KEY_MAP,
        named_sizes=GEMMA2_SIZES,
    )
)

__all__ = [
    "GEMMA2",
    "GEMMA2_SIZES",
    "Gemma2Config",
    "build_gemma2",
    "gemma_activation",
    "gemma_block",
]
