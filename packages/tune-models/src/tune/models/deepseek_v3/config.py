"""DeepSeek-V3 config: multi-head latent attention, dense first layers, grouped sigmoid routing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tune.models.decoder_config import common_fields
from tune.models.hf_config import ConfigFields, UnsupportedConfigError
from tune.models.moe_decoder import MoEDecoderConfig, read_experts

_ROPE_TYPES = ("default", "yarn")


@dataclass(frozen=True)
class DeepseekV3Config(MoEDecoderConfig):
    """Sizes of a DeepSeek-V3 model (``head_dim`` is the q/k head width, nope + rope).

    Args:
        q_lora_rank: query latent width; None for a full ``q_proj``.
        kv_lora_rank: key/value latent width.
        qk_nope_head_dim: per-head non-rotary q/k width.
        qk_rope_head_dim: per-head rotary q/k width.
        v_head_dim: per-head value width.
        rope_interleave: rotary pairs stored interleaved (HF ``rope_interleave``, default true).
        attention_bias: biases on ``q_a_proj``, ``kv_a_proj`` and ``o_proj``.
        num_groups: expert groups (``n_group``).
        topk_groups: groups each token may route to (``topk_group``).
        routed_scale: factor on the routed weights (``routed_scaling_factor``).
        mtp_layers: multi-token-prediction layers of the checkpoint (``num_nextn_predict_layers``);
            not built, their weights are skipped on load.

    ``shared_expert_intermediate_size`` is ``moe_intermediate_size * n_shared_experts`` (an
    ungated shared expert, unlike Qwen2-MoE's), None when ``n_shared_experts`` is 0.
    """

    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    rope_interleave: bool = True
    attention_bias: bool = False
    num_groups: int = 1
    topk_groups: int = 1
    routed_scale: float = 1.0
    mtp_layers: int = 0


def deepseek_v3_config(f: ConfigFields) -> DeepseekV3Config:
    """Read an HF ``DeepseekV3Config``-style ``config.json`` (defaults: transformers')."""
    if f.get("quantization_config", None) is not None:
        raise UnsupportedConfigError(
            f"{f.source}: quantization_config: expected none (dequantize the FP8 checkpoint to "
            "bf16 first), got a quantized checkpoint"
        )
    common = common_fields(f)
    heads, layers = common["num_heads"], common["num_layers"]
    if common["num_kv_heads"] != heads:
        raise UnsupportedConfigError(
            f"{f.source}: num_key_value_heads: expected num_attention_heads={heads} (MLA "
            f"expands keys and values per head), got {common['num_kv_heads']}"
        )
    rope_type = common["rope"].rope_type
    if rope_type not in _ROPE_TYPES:
        raise UnsupportedConfigError(
            f"{f.source}: rope_parameters.rope_type: expected one of {list(_ROPE_TYPES)} for "
            f"deepseek_v3, got {rope_type!r}"
        )
    f.expect("scoring_func", ("sigmoid",), "sigmoid")
    f.expect("topk_method", ("noaux_tc",), "noaux_tc")
    f.expect("moe_layer_freq", (1,), 1)
    experts = read_experts(
        f, experts_keys=("n_routed_experts",), hidden_key="moe_intermediate_size", norm_default=True
    )
    num_experts = experts["num_experts"]
    groups = f.positive_int("n_group", 8)
    if num_experts % groups or (groups > 1 and num_experts // groups < 2):
        raise UnsupportedConfigError(
            f"{f.source}: n_group: expected a divisor of n_routed_experts={num_experts} leaving "
            f"at least 2 experts per group, got {groups}"
        )
    topk_groups = f.positive_int("topk_group", 4)
    if groups > 1 and not (
        topk_groups <= groups and experts["top_k"] <= topk_groups * (num_experts // groups)
    ):
        raise UnsupportedConfigError(
            f"{f.source}: topk_group: expected at most n_group={groups} groups holding at least "
            f"num_experts_per_tok={experts['top_k']} experts, got {topk_groups}"
        )
    shared = f.integer("n_shared_experts", 1, minimum=0)
    first_dense = f.integer("first_k_dense_replace", 3, minimum=0)
    nope = f.positive_int("qk_nope_head_dim")
    rope = f.positive_int("qk_rope_head_dim")
    if rope % 2:
        raise UnsupportedConfigError(
            f"{f.source}: qk_rope_head_dim: expected an even number (rotary pairs), got {rope}"
        )
    common["head_dim"] = nope + rope
    return DeepseekV3Config(
        **common,
        **experts,
        moe_layers=tuple(i >= first_dense for i in range(layers)),
        shared_expert_intermediate_size=experts["moe_intermediate_size"] * shared or None,
        layer_windows=(None,) * layers,
        q_lora_rank=f.positive_int("q_lora_rank", None),
        kv_lora_rank=f.positive_int("kv_lora_rank"),
        qk_nope_head_dim=nope,
        qk_rope_head_dim=rope,
        v_head_dim=f.positive_int("v_head_dim"),
        rope_interleave=f.boolean("rope_interleave", True),
        attention_bias=f.boolean("attention_bias", False),
        num_groups=groups,
        topk_groups=topk_groups,
        routed_scale=f.number("routed_scaling_factor", 2.5, positive=True),
        mtp_layers=f.integer("num_nextn_predict_layers", 0, minimum=0),
    )


#: DeepSeek-V3 (also V3-0324 and R1): the published ``config.json``'s architecture fields, without
#: its FP8 ``quantization_config``.
DEEPSEEK_V3_SIZES: dict[str, dict[str, Any]] = {
    "deepseek-v3": {
        "model_type": "deepseek_v3",
        "vocab_size": 129280,
        "hidden_size": 7168,
        "intermediate_size": 18432,
        "moe_intermediate_size": 2048,
        "num_hidden_layers": 61,
        "num_attention_heads": 128,
        "num_key_value_heads": 128,
        "n_shared_experts": 1,
        "n_routed_experts": 256,
        "routed_scaling_factor": 2.5,
        "kv_lora_rank": 512,
        "q_lora_rank": 1536,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "qk_nope_head_dim": 128,
        "topk_method": "noaux_tc",
        "n_group": 8,
        "topk_group": 4,
        "num_experts_per_tok": 8,
        "moe_layer_freq": 1,
        "first_k_dense_replace": 3,
        "norm_topk_prob": True,
        "scoring_func": "sigmoid",
        "hidden_act": "silu",
        "max_position_embeddings": 163840,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 40,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096,
            "type": "yarn",
        },
        "num_nextn_predict_layers": 1,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
    },
}
