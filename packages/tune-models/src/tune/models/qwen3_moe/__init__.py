"""Qwen3-MoE (``model_type`` "qwen3_moe"): Qwen3 attention (q/k norm per head) with routed experts.

Layers listed in ``mlp_only_layers`` or off the ``decoder_sparse_step`` stride are dense.
Module names and HF layouts: see ``tune.models.moe_decoder`` and ``tune.models.moe_keys``.
"""

from __future__ import annotations

from typing import Any

from tune.models.decoder_config import common_fields
from tune.models.hf_config import ConfigFields
from tune.models.llama.sizes import tiny_llama_config
from tune.models.moe_decoder import (
    MoEDecoderConfig,
    build_moe_decoder,
    qwen_moe_layers,
    read_experts,
)
from tune.models.moe_keys import MOE_KEY_MAP, QWEN_EXPERT_KEYS, expert_hooks
from tune.models.registry import ModelFamily, register_family


def qwen3_moe_config(f: ConfigFields) -> MoEDecoderConfig:
    """Read an HF ``Qwen3MoeConfig``-style ``config.json``."""
    common = common_fields(f)
    layers = common["num_layers"]
    # transformers: one window for every layer, only when use_sliding_window.
    window = f.positive_int("sliding_window") if f.boolean("use_sliding_window", False) else None
    bias = f.boolean("attention_bias", False)
    return MoEDecoderConfig(
        **common,
        **read_experts(
            f,
            experts_keys=("num_experts", "num_local_experts"),
            hidden_key="moe_intermediate_size",
            norm_default=False,
        ),
        moe_layers=qwen_moe_layers(f, layers),
        qkv_bias=bias,
        o_bias=bias,
        qk_norm="head",
        layer_windows=(window,) * layers,
    )


def _qwen3_moe(hidden: int, inter: int, moe_inter: int, layers: int, heads: int) -> dict[str, Any]:
    return {
        "model_type": "qwen3_moe",
        "vocab_size": 151936,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "moe_intermediate_size": moe_inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 40960,
        "rope_theta": 1000000.0,
        "attention_bias": False,
        "use_sliding_window": False,
        "sliding_window": None,
        "tie_word_embeddings": False,
    }


QWEN3_MOE_SIZES: dict[str, dict[str, Any]] = {
    "qwen3-30b-a3b": _qwen3_moe(2048, 6144, 768, 48, 32),
    "qwen3-235b-a22b": _qwen3_moe(4096, 12288, 1536, 94, 64),
}


def tiny_qwen3_moe_config(
    vocab_size: int,
    *,
    num_experts: int = 8,
    top_k: int = 2,
    moe_intermediate_size: int = 64,
    **sizes: Any,
) -> dict[str, Any]:
    """A complete Qwen3-MoE ``config.json`` for a small test model (every layer routed).

    Args:
        vocab_size: rows of the embedding (and LM head).
        num_experts: routed experts per layer.
        top_k: experts per token.
        moe_intermediate_size: width of each expert's gated hidden layer.
        **sizes: ``tune.models.llama.tiny_llama_config`` arguments (hidden_size, num_layers, ...).
    """
    config = tiny_llama_config(vocab_size, **sizes)
    config.update(
        architectures=["Qwen3MoeForCausalLM"],
        model_type="qwen3_moe",
        num_experts=num_experts,
        num_experts_per_tok=top_k,
        moe_intermediate_size=moe_intermediate_size,
        norm_topk_prob=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        rms_norm_eps=1e-6,
        use_sliding_window=False,
        sliding_window=None,
        router_aux_loss_coef=0.001,
        output_router_logits=False,
    )
    config.pop("mlp_bias")
    return config


QWEN3_MOE = register_family(
    ModelFamily(
        name="qwen3_moe",
        model_types=("qwen3_moe",),
        config_from_hf=qwen3_moe_config,
        build=build_moe_decoder,
        key_map=MOE_KEY_MAP,
        named_sizes=QWEN3_MOE_SIZES,
        **expert_hooks(QWEN_EXPERT_KEYS),
    )
)

__all__ = ["QWEN3_MOE", "QWEN3_MOE_SIZES", "qwen3_moe_config", "tiny_qwen3_moe_config"]
