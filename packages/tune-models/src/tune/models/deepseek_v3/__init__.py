"""DeepSeek-V3 (``model_type`` "deepseek_v3"): multi-head latent attention, ``first_k_dense_replace``
dense layers, then routed experts with a shared expert and grouped top-k sigmoid routing whose
choice is steered by a per-expert bias (auxiliary-loss-free balancing).

Native module names (HF names in brackets, under ``model.layers.{i}``)::

    layers.{i}.attn.{q_a_proj,q_b_proj,kv_b_proj,o_proj}     [self_attn.<same>]
    layers.{i}.attn.q_proj                                   [self_attn.q_proj] (no q_lora_rank)
    layers.{i}.attn.kv_a_proj                                [self_attn.kv_a_proj_with_mqa]
    layers.{i}.attn.{q_a_norm,kv_a_norm}                     [self_attn.{q_a,kv_a}_layernorm]
    layers.{i}.mlp.{gate_proj,up_proj,down_proj}             dense layers (i < first_k_dense_replace)
    layers.{i}.mlp.router.weight                             [mlp.gate.weight]
    layers.{i}.mlp.routing_bias  (buffer, float32)           [mlp.gate.e_score_correction_bias]
    layers.{i}.mlp.experts.{gate_up_proj,down_proj}          [mlp.experts.{e}.{gate,up,down}_proj]
    layers.{i}.mlp.shared_expert.{gate,up,down}_proj         [mlp.shared_experts.*]

Checkpoint weights of layers at or past ``num_hidden_layers`` (the multi-token-prediction layer 61
of the published checkpoints) are skipped on load with a log line, as transformers does.
"""

from __future__ import annotations

import logging
import re
from typing import Any, cast

import torch
from torch import nn

from tune.models.attention import Attention
from tune.models.decoder_builder import assemble_decoder
from tune.models.deepseek_v3.config import DEEPSEEK_V3_SIZES, DeepseekV3Config, deepseek_v3_config
from tune.models.key_map import KeyMap
from tune.models.mla_attention import MLAttention, mla_softmax_scale
from tune.models.mlp import GatedMLP
from tune.models.moe import MoEFeedForward
from tune.models.moe_keys import MOE_KEY_MAP, QWEN_EXPERT_KEYS, stack_experts, unstack_experts
from tune.models.registry import ModelFamily, register_family
from tune.models.rms_norm import RMSNorm
from tune.models.rotary import RotaryEmbedding
from tune.models.transformer import Transformer, TransformerBlock

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.")
# HF's latent norms are built with the default epsilon, not rms_norm_eps.
_LATENT_NORM_EPS = 1e-6


def deepseek_v3_block(cfg: DeepseekV3Config, layer: int) -> TransformerBlock:
    """Block ``layer``: RMSNorm -> MLA -> RMSNorm -> dense MLP or routed experts."""
    dim = cfg.hidden_size
    mlp: nn.Module
    if cfg.moe_layers[layer]:
        shared = cfg.shared_expert_intermediate_size
        mlp = MoEFeedForward(
            dim,
            cfg.moe_intermediate_size,
            cfg.num_experts,
            cfg.top_k,
            score_func="sigmoid",
            norm_topk_prob=cfg.norm_topk_prob,
            routed_scale=cfg.routed_scale,
            routing_bias=True,
            shared_expert=GatedMLP(dim, shared) if shared else None,
            num_groups=cfg.num_groups,
            topk_groups=cfg.topk_groups,
        )
    else:
        mlp = GatedMLP(dim, cfg.intermediate_size)
    attn = MLAttention(
        dim,
        cfg.num_heads,
        q_lora_rank=cfg.q_lora_rank,
        kv_lora_rank=cfg.kv_lora_rank,
        qk_nope_head_dim=cfg.qk_nope_head_dim,
        qk_rope_head_dim=cfg.qk_rope_head_dim,
        v_head_dim=cfg.v_head_dim,
        scale=mla_softmax_scale(cfg.head_dim, cfg.rope),
        rope_interleave=cfg.rope_interleave,
        bias=cfg.attention_bias,
        eps=_LATENT_NORM_EPS,
    )
    return TransformerBlock(
        # Duck-typed: Transformer reads rope_key, sliding_window, logit_softcap and kv_cache.
        attn=cast(Attention, attn),
        mlp=mlp,
        attn_norm=RMSNorm(dim, cfg.rms_norm_eps),
        mlp_norm=RMSNorm(dim, cfg.rms_norm_eps),
    )


def build_deepseek_v3(cfg: DeepseekV3Config) -> Transformer:
    """A DeepSeek-V3 model from its config (the multi-token-prediction layers are not built)."""
    blocks = [deepseek_v3_block(cfg, i) for i in range(cfg.num_layers)]
    rotary = RotaryEmbedding(cfg.rope, cfg.qk_rope_head_dim, cfg.max_position_embeddings)
    return assemble_decoder(cfg, blocks, {"default": rotary})


_ATTN = "model.layers.{layer}.self_attn"
_MLP = "model.layers.{layer}.mlp"
# The first matching rule wins: the shared-expert rule (plural on disk) goes before the MoE
# rules, whose Qwen2-MoE ``shared_expert`` rule would otherwise claim the native key.
DEEPSEEK_V3_KEY_MAP = KeyMap(
    [
        (
            f"{_ATTN}.{{p:q_a_proj|q_b_proj|kv_b_proj}}.{{t:weight|bias}}",
            "layers.{layer}.attn.{p}.{t}",
        ),
        (f"{_ATTN}.kv_a_proj_with_mqa.{{t:weight|bias}}", "layers.{layer}.attn.kv_a_proj.{t}"),
        (f"{_ATTN}.q_a_layernorm.weight", "layers.{layer}.attn.q_a_norm.weight"),
        (f"{_ATTN}.kv_a_layernorm.weight", "layers.{layer}.attn.kv_a_norm.weight"),
        (f"{_MLP}.gate.e_score_correction_bias", "layers.{layer}.mlp.routing_bias"),
        (
            f"{_MLP}.shared_experts.{{s:gate_proj|up_proj|down_proj}}.weight",
            "layers.{layer}.mlp.shared_expert.{s}.weight",
        ),
        *MOE_KEY_MAP.rules,
    ]
)


def skip_extra_layers(state_dict: StateDict, num_layers: int) -> StateDict:
    """``state_dict`` without the keys of layers ``>= num_layers`` (multi-token prediction)."""
    out: StateDict = {}
    skipped: set[int] = set()
    for key, value in state_dict.items():
        m = _LAYER_KEY.match(key)
        if m and int(m[1]) >= num_layers:
            skipped.add(int(m[1]))
            continue
        out[key] = value
    if skipped:
        logger.info(
            "deepseek_v3: skipping the weights of layers %s (multi-token prediction, "
            "num_nextn_predict_layers): not part of the %d-layer model",
            sorted(skipped),
            num_layers,
        )
    return out


def _to_stacked(state_dict: StateDict, cfg: Any) -> StateDict:
    state_dict = skip_extra_layers(state_dict, cfg.num_layers)
    return stack_experts(state_dict, QWEN_EXPERT_KEYS, cfg.num_experts)


def _to_per_expert(state_dict: StateDict, cfg: Any) -> StateDict:
    return unstack_experts(state_dict, QWEN_EXPERT_KEYS)


DEEPSEEK_V3 = register_family(
    ModelFamily(
        name="deepseek_v3",
        model_types=("deepseek_v3",),
        config_from_hf=deepseek_v3_config,
        build=build_deepseek_v3,
        key_map=DEEPSEEK_V3_KEY_MAP,
        split_fused=_to_stacked,
        fuse_split=_to_per_expert,
        named_sizes=DEEPSEEK_V3_SIZES,
    )
)

__all__ = [
    "DEEPSEEK_V3",
    "DEEPSEEK_V3_KEY_MAP",
    "DEEPSEEK_V3_SIZES",
    "DeepseekV3Config",
    "build_deepseek_v3",
    "deepseek_v3_block",
    "deepseek_v3_config",
    "skip_extra_layers",
]
