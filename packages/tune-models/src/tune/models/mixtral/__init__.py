"""Mixtral (``model_type`` "mixtral"): Mistral attention with top-2 softmax-routed experts.

Checkpoints name the MoE module ``block_sparse_moe`` (router ``gate``, experts ``w1`` = gate,
``w3`` = up, ``w2`` = down); natively it is ``layers.{i}.mlp`` like every other family.
"""

from __future__ import annotations

from typing import Any

from tune.models.decoder_config import common_fields
from tune.models.hf_config import ConfigFields
from tune.models.moe_decoder import MoEDecoderConfig, build_moe_decoder, read_experts
from tune.models.moe_keys import MIXTRAL_EXPERT_KEYS, MOE_KEY_MAP, expert_hooks
from tune.models.registry import ModelFamily, register_family


def mixtral_config(f: ConfigFields) -> MoEDecoderConfig:
    """Read an HF ``MixtralConfig``-style ``config.json``."""
    # Jitter multiplies training inputs by noise: not implemented, so refused rather than ignored.
    f.expect("router_jitter_noise", (0.0,), 0.0)
    common = common_fields(f, eps_default=1e-5)
    layers = common["num_layers"]
    return MoEDecoderConfig(
        **common,
        **read_experts(
            f,
            experts_keys=("num_local_experts",),
            hidden_key="intermediate_size",
            norm_default=True,
        ),
        moe_layers=(True,) * layers,
        layer_windows=(f.positive_int("sliding_window", None),) * layers,
    )


def _mixtral(hidden: int, inter: int, layers: int, heads: int, max_pos: int) -> dict[str, Any]:
    return {
        "model_type": "mixtral",
        "vocab_size": 32000,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 8,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": max_pos,
        "rope_theta": 1000000.0,
        "router_jitter_noise": 0.0,
        "sliding_window": None,
        "tie_word_embeddings": False,
    }


MIXTRAL_SIZES: dict[str, dict[str, Any]] = {
    "mixtral-8x7b": _mixtral(4096, 14336, 32, 32, 32768),
    "mixtral-8x22b": _mixtral(6144, 16384, 56, 48, 65536),
}

MIXTRAL = register_family(
    ModelFamily(
        name="mixtral",
        model_types=("mixtral",),
        config_from_hf=mixtral_config,
        build=build_moe_decoder,
        key_map=MOE_KEY_MAP,
        named_sizes=MIXTRAL_SIZES,
        **expert_hooks(MIXTRAL_EXPERT_KEYS),
    )
)

__all__ = ["MIXTRAL", "MIXTRAL_SIZES", "mixtral_config"]
