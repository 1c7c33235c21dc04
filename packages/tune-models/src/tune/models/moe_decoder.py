"""The decoder shared by the MoE families (Qwen3-MoE, Qwen2-MoE, Mixtral, OLMoE).

Each block is pre-norm attention followed by either a ``MoEFeedForward`` or (for the layers a
config marks dense) a ``GatedMLP``; both live at ``layers.{i}.mlp`` so LoRA targets and parallel
plans key on one name. The routed experts' state-dict keys are::

    layers.{i}.mlp.router.weight                 [E, dim]
    layers.{i}.mlp.experts.gate_up_proj          [E, 2 * moe_hidden, dim]  (gate rows, then up)
    layers.{i}.mlp.experts.down_proj             [E, dim, moe_hidden]
    layers.{i}.mlp.shared_expert.{gate_proj,up_proj,down_proj}.weight   (Qwen2-MoE)
    layers.{i}.mlp.shared_expert_gate.weight     [1, dim]                  (Qwen2-MoE)

Each family folder only reads its ``config.json`` into a ``MoEDecoderConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from tune.models.attention import Attention
from tune.models.decoder_builder import assemble_decoder
from tune.models.decoder_config import DecoderConfig
from tune.models.hf_config import ConfigFields, UnsupportedConfigError
from tune.models.llama import default_rotary
from tune.models.mlp import GatedMLP
from tune.models.moe import MoEFeedForward
from tune.models.rms_norm import RMSNorm
from tune.models.transformer import Transformer, TransformerBlock

QKNorm = Literal["none", "head", "projection"]


class ProjectionRMSNorm(RMSNorm):
    """RMSNorm over all heads of a projection at once (OLMoE's q/k norm).

    ``Attention`` hands q/k norms a [B, T, H, head_dim] tensor; this norm flattens the heads,
    normalises over ``H * head_dim`` (its ``dim``) and restores the shape. Under tensor
    parallelism (heads sharded) the statistic would be per shard: not TP-ready.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [..., H, head_dim] with ``H * head_dim == dim`` -> same shape."""
        return super().forward(x.flatten(-2)).view_as(x)


@dataclass(frozen=True)
class MoEDecoderConfig(DecoderConfig):
    """Sizes of a decoder whose feed-forward layers are (mostly) mixtures of experts.

    Args:
        num_experts: routed experts per MoE layer ``E``.
        top_k: experts chosen per token (``num_experts_per_tok``).
        moe_intermediate_size: hidden width of each routed expert.
        norm_topk_prob: renormalise the chosen experts' softmax scores to sum to one.
        moe_layers: per layer, True for an MoE feed-forward, False for a dense ``GatedMLP`` of
            ``intermediate_size``.
        shared_expert_intermediate_size: width of a shared expert gated by
            ``sigmoid(shared_expert_gate(x))`` (Qwen2-MoE), or None.
        qkv_bias: biases on q/k/v.
        o_bias: bias on o_proj.
        qk_norm: "head" (RMSNorm over head_dim, Qwen3-MoE), "projection" (over the whole q and
            k projections, OLMoE) or "none".
        layer_windows: sliding window per layer (None = full attention).
    """

    num_experts: int = 0
    top_k: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    moe_layers: tuple[bool, ...] = ()
    shared_expert_intermediate_size: int | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: QKNorm = "none"
    layer_windows: tuple[int | None, ...] = ()


def read_experts(
    f: ConfigFields, *, experts_keys: tuple[str, ...], hidden_key: str, norm_default: bool
) -> dict[str, Any]:
    """The routed-expert fields of a config: keyword arguments for ``MoEDecoderConfig``.

    Args:
        f: the config fields.
        experts_keys: names of the expert count, first present wins (transformers 5 writes
            Qwen3-MoE's as ``num_local_experts``, published checkpoints ``num_experts``).
        hidden_key: the expert hidden width (``moe_intermediate_size`` or ``intermediate_size``).
        norm_default: ``norm_topk_prob`` when the config has none.
    """
    f.expect("hidden_act", ("silu",), "silu")
    key = next((k for k in experts_keys if f.get(k, None) is not None), experts_keys[0])
    num_experts = f.positive_int(key)
    top_k = f.positive_int("num_experts_per_tok")
    if top_k > num_experts:
        raise UnsupportedConfigError(
            f"{f.source}: num_experts_per_tok: expected at most {key}={num_experts}, got {top_k}"
        )
    return {
        "num_experts": num_experts,
        "top_k": top_k,
        "moe_intermediate_size": f.positive_int(hidden_key),
        "norm_topk_prob": f.boolean("norm_topk_prob", norm_default),
    }


def qwen_moe_layers(f: ConfigFields, num_layers: int) -> tuple[bool, ...]:
    """Which layers are sparse: ``(i + 1) % decoder_sparse_step == 0`` and not in
    ``mlp_only_layers`` (Qwen2-MoE / Qwen3-MoE)."""
    step = f.positive_int("decoder_sparse_step", 1)
    dense = f.get("mlp_only_layers", [])
    if not isinstance(dense, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < num_layers for i in dense
    ):
        raise UnsupportedConfigError(
            f"{f.source}: mlp_only_layers: expected a list of layer indices in "
            f"[0, {num_layers}), got {dense!r}"
        )
    return tuple((i + 1) % step == 0 and i not in dense for i in range(num_layers))


def moe_block(cfg: MoEDecoderConfig, layer: int) -> TransformerBlock:
    """Block ``layer``: RMSNorm -> attention -> RMSNorm -> MoE (or dense) feed-forward."""
    dim, eps = cfg.hidden_size, cfg.rms_norm_eps
    q_norm: nn.Module | None = None
    k_norm: nn.Module | None = None
    if cfg.qk_norm == "head":
        q_norm, k_norm = RMSNorm(cfg.head_dim, eps), RMSNorm(cfg.head_dim, eps)
    elif cfg.qk_norm == "projection":
        q_norm = ProjectionRMSNorm(cfg.num_heads * cfg.head_dim, eps)
        k_norm = ProjectionRMSNorm(cfg.num_kv_heads * cfg.head_dim, eps)
    mlp: nn.Module
    if cfg.moe_layers[layer]:
        shared = cfg.shared_expert_intermediate_size
        mlp = MoEFeedForward(
            dim,
            cfg.moe_intermediate_size,
            cfg.num_experts,
            cfg.top_k,
            norm_topk_prob=cfg.norm_topk_prob,
            shared_expert=GatedMLP(dim, shared) if shared else None,
            shared_expert_gate=bool(shared),
        )
    else:
        mlp = GatedMLP(dim, cfg.intermediate_size)
    return TransformerBlock(
        attn=Attention(
            dim,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            qkv_bias=cfg.qkv_bias,
            o_bias=cfg.o_bias,
            q_norm=q_norm,
            k_norm=k_norm,
            sliding_window=cfg.layer_windows[layer],
        ),
        mlp=mlp,
        attn_norm=RMSNorm(dim, eps),
        mlp_norm=RMSNorm(dim, eps),
    )


def build_moe_decoder(cfg: MoEDecoderConfig) -> Transformer:
    """A Qwen3-MoE / Qwen2-MoE / Mixtral / OLMoE model from its config."""
    blocks = [moe_block(cfg, i) for i in range(cfg.num_layers)]
    return assemble_decoder(cfg, blocks, default_rotary(cfg))
