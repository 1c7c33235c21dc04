"""gpt-oss (``model_type`` "gpt_oss"): attention sinks, alternating sliding/full attention, and
routed experts with a biased router, expert biases and a clamped SwiGLU.

Native module names (beyond the shared decoder's)::

    layers.{i}.attn.{q,k,v,o}_proj.{weight,bias}
    layers.{i}.attn.sinks                          [H]            per-head sink logits
    layers.{i}.mlp.router.{weight,bias}            [E, D], [E]
    layers.{i}.mlp.experts.gate_up_proj            [E, 2I, D]     gate rows, then up rows
    layers.{i}.mlp.experts.gate_up_proj_bias       [E, 2I]        gate, then up
    layers.{i}.mlp.experts.down_proj               [E, D, I]
    layers.{i}.mlp.experts.down_proj_bias          [E, D]

HF layouts (``model.layers.{i}.mlp.experts.*``): transformers keeps and saves the experts stacked
but transposed and interleaved: ``gate_up_proj`` [E, D, 2I] with gate in the even and up in the
odd columns, ``gate_up_proj_bias`` [E, 2I] interleaved alike, ``down_proj`` [E, I, D],
``down_proj_bias`` [E, D]; the router is ``mlp.router.{weight,bias}``, the sinks
``self_attn.sinks``. The published checkpoints store the expert weights as MXFP4
(``gate_up_proj_blocks`` [E, 2I, D/32, 16] + ``gate_up_proj_scales`` [E, 2I, D/32],
``down_proj_blocks`` [E, D, I/32, 16] + ``down_proj_scales``; rows = output features,
gate/up rows interleaved; see ``tune.models.mxfp4``) next to bfloat16 biases: the MXFP4 tensors
are dequantized to bfloat16 on load. We write the unquantized stacked layout (what transformers'
``save_pretrained`` writes), not MXFP4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tune.models.attention import Attention
from tune.models.decoder_builder import assemble_decoder
from tune.models.decoder_config import common_fields, layer_windows
from tune.models.hf_config import ConfigFields, UnsupportedConfigError
from tune.models.key_map import LLAMA_KEY_MAP, KeyMap
from tune.models.llama import default_rotary
from tune.models.moe import MoEFeedForward
from tune.models.moe_decoder import MoEDecoderConfig, read_experts
from tune.models.mxfp4 import dequantize_mxfp4
from tune.models.registry import ModelFamily, register_family
from tune.models.rms_norm import RMSNorm
from tune.models.transformer import Transformer, TransformerBlock

StateDict = dict[str, torch.Tensor]
_EXPERTS = ".mlp.experts."


@dataclass(frozen=True)
class GptOssConfig(MoEDecoderConfig):
    """gpt-oss sizes: an ``MoEDecoderConfig`` (experts of ``intermediate_size``) plus the SwiGLU.

    Args:
        swiglu_alpha: sigmoid gain of the experts' clamped SwiGLU.
        swiglu_limit: its clamp.
    """

    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0


def gpt_oss_config(f: ConfigFields) -> GptOssConfig:
    """Read an HF ``GptOssConfig``-style ``config.json``."""
    quant = f.get("quantization_config", None)
    if quant is not None and (not isinstance(quant, dict) or quant.get("quant_method") != "mxfp4"):
        raise UnsupportedConfigError(
            f"{f.source}: quantization_config: expected none or quant_method 'mxfp4' "
            f"(dequantized on load), got {quant!r}"
        )
    common = common_fields(f, eps_default=1e-5)
    common["rope"] = f.rope(default_theta=150000.0)  # transformers' default for gpt_oss
    layers = common["num_layers"]
    if f.get("layer_types", None) is None:  # transformers: sliding, full, sliding, ...
        window = f.positive_int("sliding_window", 128)
        windows: tuple[int | None, ...] = tuple(
            window if i % 2 == 0 else None for i in range(layers)
        )
    else:
        windows = layer_windows(f, layers)
    bias = f.boolean("attention_bias", True)
    experts = read_experts(
        f,
        experts_keys=("num_local_experts", "num_experts"),
        hidden_key="intermediate_size",
        norm_default=True,
    )
    experts["norm_topk_prob"] = True  # softmax over the top-k logits, whatever the config says
    return GptOssConfig(
        **common,
        **experts,
        moe_layers=(True,) * layers,
        qkv_bias=bias,
        o_bias=bias,
        layer_windows=windows,
        swiglu_alpha=f.number("swiglu_alpha", 1.702, positive=True),
        swiglu_limit=f.number("swiglu_limit", 7.0, positive=True),
    )


def gpt_oss_block(cfg: GptOssConfig, layer: int) -> TransformerBlock:
    """Block ``layer``: RMSNorm -> attention with sinks -> RMSNorm -> biased clamped-SwiGLU MoE."""
    dim, eps = cfg.hidden_size, cfg.rms_norm_eps
    return TransformerBlock(
        attn=Attention(
            dim,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            qkv_bias=cfg.qkv_bias,
            o_bias=cfg.o_bias,
            sliding_window=cfg.layer_windows[layer],
            sinks=True,
        ),
        mlp=MoEFeedForward(
            dim,
            cfg.moe_intermediate_size,
            cfg.num_experts,
            cfg.top_k,
            norm_topk_prob=True,
            router_bias=True,
            expert_bias=True,
            glu="clamped_swiglu",
            swiglu_alpha=cfg.swiglu_alpha,
            swiglu_limit=cfg.swiglu_limit,
        ),
        attn_norm=RMSNorm(dim, eps),
        mlp_norm=RMSNorm(dim, eps),
    )


def build_gpt_oss(cfg: GptOssConfig) -> Transformer:
    """A gpt-oss model from its config."""
    blocks = [gpt_oss_block(cfg, i) for i in range(cfg.num_layers)]
    return assemble_decoder(cfg, blocks, default_rotary(cfg))


def _deinterleave(x: torch.Tensor) -> torch.Tensor:
    """[E, 2I, ...] gate/up alternating along dim 1 -> gate block, then up block."""
    return torch.cat([x[:, 0::2], x[:, 1::2]], dim=1)


def _interleave(x: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_deinterleave``: [E, 2I, ...] gate block, up block -> alternating."""
    gate, up = x.chunk(2, dim=1)
    return torch.stack([gate, up], dim=2).flatten(1, 2)


def experts_to_native_layout(state_dict: StateDict, cfg: Any = None) -> StateDict:
    """HF gpt-oss experts (stacked, MXFP4 or not) -> the native layout under the HF names.

    ``gate_up_proj`` [E, D, 2I] interleaved -> [E, 2I, D] gate rows then up rows; ``down_proj``
    [E, I, D] -> [E, D, I]; ``gate_up_proj_bias`` de-interleaved; ``*_blocks`` + ``*_scales``
    dequantized (bfloat16) first. The family's key map then renames one-to-one.

    Raises:
        ValueError: a ``*_blocks`` tensor without its ``*_scales`` (or the reverse), named.
    """
    out: StateDict = {}
    for key, value in state_dict.items():
        if _EXPERTS not in key:
            out[key] = value
            continue
        if key.endswith("_scales"):
            if key.removesuffix("_scales") + "_blocks" not in state_dict:
                raise ValueError(f"{key}: MXFP4 scales without {key[:-7]}_blocks")
            continue
        if key.endswith("_blocks"):
            base = key.removesuffix("_blocks")
            if base + "_scales" not in state_dict:
                raise ValueError(f"{key}: MXFP4 blocks without {base}_scales")
            weight = dequantize_mxfp4(value, state_dict[base + "_scales"], name=key)  # [E, out, in]
            out[base] = _deinterleave(weight) if base.endswith("gate_up_proj") else weight
        elif key.endswith("gate_up_proj"):
            out[key] = _deinterleave(value.transpose(1, 2))  # [E, 2I, D]
        elif key.endswith("down_proj"):
            out[key] = value.transpose(1, 2)  # [E, D, I]
        elif key.endswith("gate_up_proj_bias"):
            out[key] = _deinterleave(value)
        else:
            out[key] = value
    return out


def experts_to_hf_layout(state_dict: StateDict, cfg: Any = None) -> StateDict:
    """Inverse of ``experts_to_native_layout`` (unquantized): what ``save_pretrained`` writes."""
    out: StateDict = {}
    for key, value in state_dict.items():
        if _EXPERTS in key and key.endswith("gate_up_proj"):
            value = _interleave(value).transpose(1, 2).contiguous()  # [E, D, 2I]
        elif _EXPERTS in key and key.endswith("down_proj"):
            value = value.transpose(1, 2).contiguous()  # [E, I, D]
        elif _EXPERTS in key and key.endswith("gate_up_proj_bias"):
            value = _interleave(value)
        out[key] = value
    return out


GPT_OSS_KEY_MAP = KeyMap(
    [
        *LLAMA_KEY_MAP.rules,
        ("model.layers.{layer}.self_attn.sinks", "layers.{layer}.attn.sinks"),
        ("model.layers.{layer}.mlp.router.{t:weight|bias}", "layers.{layer}.mlp.router.{t}"),
        (
            "model.layers.{layer}.mlp.experts.{p:gate_up_proj|down_proj|gate_up_proj_bias|"
            "down_proj_bias}",
            "layers.{layer}.mlp.experts.{p}",
        ),
    ]
)


def _gpt_oss(layers: int, experts: int) -> dict[str, Any]:
    return {
        "model_type": "gpt_oss",
        "vocab_size": 201088,
        "hidden_size": 2880,
        "intermediate_size": 2880,
        "num_hidden_layers": layers,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "num_local_experts": experts,
        "num_experts_per_tok": 4,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072,
        "rope_theta": 150000.0,
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 4096,
        },
        "sliding_window": 128,
        "layer_types": ["sliding_attention", "full_attention"] * (layers // 2),
        "attention_bias": True,
        "swiglu_limit": 7.0,
        "tie_word_embeddings": False,
    }


GPT_OSS_SIZES: dict[str, dict[str, Any]] = {
    "gpt-oss-20b": _gpt_oss(24, 32),
    "gpt-oss-120b": _gpt_oss(36, 128),
}

GPT_OSS = register_family(
    ModelFamily(
        name="gpt_oss",
        model_types=("gpt_oss",),
        config_from_hf=gpt_oss_config,
        build=build_gpt_oss,
        key_map=GPT_OSS_KEY_MAP,
        split_fused=experts_to_native_layout,
        fuse_split=experts_to_hf_layout,
        named_sizes=GPT_OSS_SIZES,
    )
)

__all__ = [
    "GPT_OSS",
    "GPT_OSS_KEY_MAP",
    "GPT_OSS_SIZES",
    "GptOssConfig",
    "build_gpt_oss",
    "experts_to_hf_layout",
    "experts_to_native_layout",
    "gpt_oss_config",
]
