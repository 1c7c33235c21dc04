"""OLMoE (``model_type`` "olmoe"): RMSNorm over the whole q and k projections (not per head),
64 softmax-routed experts without renormalising the top-k scores.

``clip_qkv`` (clamping q/k/v) is not implemented: a config that sets it is refused.
"""

from __future__ import annotations

from typing import Any

from tune.models.decoder_config import common_fields
from tune.models.hf_config import ConfigFields, UnsupportedConfigError
from tune.models.moe_decoder import MoEDecoderConfig, build_moe_decoder, read_experts
from tune.models.moe_keys import MOE_KEY_MAP, QWEN_EXPERT_KEYS, expert_hooks
from tune.models.registry import ModelFamily, register_family


def olmoe_config(f: ConfigFields) -> MoEDecoderConfig:
    """Read an HF ``OlmoeConfig``-style ``config.json``."""
    clip = f.get("clip_qkv", None)
    if clip is not None:
        raise UnsupportedConfigError(
            f"{f.source}: clip_qkv: expected null (clamping q/k/v is not implemented), got {clip!r}"
        )
    common = common_fields(f, eps_default=1e-5)
    bias = f.boolean("attention_bias", False)
    return MoEDecoderConfig(
        **common,
        **read_experts(
            f,
            experts_keys=("num_experts",),
            hidden_key="intermediate_size",
            norm_default=False,
        ),
        moe_layers=(True,) * common["num_layers"],
        qkv_bias=bias,
        o_bias=bias,
        qk_norm="projection",
        layer_windows=(None,) * common["num_layers"],
    )


OLMOE_SIZES: dict[str, dict[str, Any]] = {
    "olmoe-1b-7b": {
        "model_type": "olmoe",
        "vocab_size": 50304,
        "hidden_size": 2048,
        "intermediate_size": 1024,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "num_experts": 64,
        "num_experts_per_tok": 8,
        "norm_topk_prob": False,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "clip_qkv": None,
        "tie_word_embeddings": False,
    },
}

OLMOE = register_family(
    ModelFamily(
        name="olmoe",
        model_types=("olmoe",),
        config_from_hf=olmoe_config,
        build=build_moe_decoder,
        key_map=MOE_KEY_MAP,
        named_sizes=OLMOE_SIZES,
        **expert_hooks(QWEN_EXPERT_KEYS),
    )
)

__all__ = ["OLMOE", "OLMOE_SIZES", "olmoe_config"]
