"""Qwen1.5-MoE / Qwen2-MoE (``model_type`` "qwen2_moe"): q/k/v biases, routed experts plus a
shared expert scaled by ``sigmoid(shared_expert_gate(x))``.

Module names and HF layouts: see ``tune.models.moe_decoder`` and ``tune.models.moe_keys``.
"""

from __future__ import annotations

from typing import Any

from tune.models.decoder_config import common_fields, layer_windows
from tune.models.hf_config import ConfigFields
from tune.models.moe_decoder import (
    MoEDecoderConfig,
    build_moe_decoder,
    qwen_moe_layers,
    read_experts,
)
from tune.models.moe_keys import MOE_KEY_MAP, QWEN_EXPERT_KEYS, expert_hooks
from tune.models.registry import ModelFamily, register_family


def _windows(f: ConfigFields, num_layers: int) -> tuple[int | None, ...]:
    if f.get("layer_types", None) is not None:
        return layer_windows(f, num_layers)
    if not f.boolean("use_sliding_window", False):
        return (None,) * num_layers
    # transformers 5 without layer_types: even layers below max_window_layers are local.
    window = f.positive_int("sliding_window")
    below = f.integer("max_window_layers", 28, minimum=0)
    return tuple(window if i % 2 == 0 and i < below else None for i in range(num_layers))


def qwen2_moe_config(f: ConfigFields) -> MoEDecoderConfig:
    """Read an HF ``Qwen2MoeConfig``-style ``config.json``."""
    common = common_fields(f)
    layers = common["num_layers"]
    return MoEDecoderConfig(
        **common,
        **read_experts(
            f,
            experts_keys=("num_experts",),
            hidden_key="moe_intermediate_size",
            norm_default=False,
        ),
        moe_layers=qwen_moe_layers(f, layers),
        shared_expert_intermediate_size=f.positive_int("shared_expert_intermediate_size"),
        qkv_bias=f.boolean("qkv_bias", True),
        layer_windows=_windows(f, layers),
    )


def _qwen2_moe(
    hidden: int,
    inter: int,
    moe_inter: int,
    shared: int,
    experts: int,
    top_k: int,
    layers: int,
    heads: int,
    kv: int,
    max_pos: int,
) -> dict[str, Any]:
    return {
        "model_type": "qwen2_moe",
        "vocab_size": 151936,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "moe_intermediate_size": moe_inter,
        "shared_expert_intermediate_size": shared,
        "num_experts": experts,
        "num_experts_per_tok": top_k,
        "norm_topk_prob": False,
        "decoder_sparse_step": 1,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": max_pos,
        "rope_theta": 1000000.0,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
    }


QWEN2_MOE_SIZES: dict[str, dict[str, Any]] = {
    "qwen1.5-moe-a2.7b": _qwen2_moe(2048, 5632, 1408, 5632, 60, 4, 24, 16, 16, 8192),
    "qwen2-57b-a14b": _qwen2_moe(3584, 18944, 2560, 20480, 64, 8, 28, 28, 4, 131072),
}

QWEN2_MOE = register_family(
    ModelFamily(
        name="qwen2_moe",
        model_types=("qwen2_moe",),
        config_from_hf=qwen2_moe_config,
        build=build_moe_decoder,
        key_map=MOE_KEY_MAP,
        named_sizes=QWEN2_MOE_SIZES,
        **expert_hooks(QWEN_EXPERT_KEYS),
    )
)

__all__ = ["QWEN2_MOE", "QWEN2_MOE_SIZES", "qwen2_moe_config"]
