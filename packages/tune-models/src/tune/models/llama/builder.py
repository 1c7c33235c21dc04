"""Llama-style blocks (pre-norm, SwiGLU) and the Llama builder."""

from __future__ import annotations

from tune.models.attention import Attention
from tune.models.decoder_builder import assemble_decoder
from tune.models.decoder_config import DecoderConfig
from tune.models.llama.config import LlamaConfig
from tune.models.mlp import GatedMLP
from tune.models.rms_norm import RMSNorm
from tune.models.rotary import RotaryEmbedding
from tune.models.transformer import Transformer, TransformerBlock


def llama_block(
    cfg: DecoderConfig,
    *,
    qkv_bias: bool = False,
    o_bias: bool = False,
    mlp_bias: bool = False,
    qk_norm: bool = False,
    sliding_window: int | None = None,
) -> TransformerBlock:
    """One pre-norm block: RMSNorm -> GQA attention -> RMSNorm -> SwiGLU.

    Args:
        cfg: sizes.
        qkv_bias: biases on q/k/v (Qwen2).
        o_bias: bias on o_proj.
        mlp_bias: biases on the MLP.
        qk_norm: RMSNorm over head_dim on queries and keys (Qwen3).
        sliding_window: local attention window, None for global.
    """
    head_norm = (lambda: RMSNorm(cfg.head_dim, cfg.rms_norm_eps)) if qk_norm else (lambda: None)
    return TransformerBlock(
        attn=Attention(
            cfg.hidden_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            q_norm=head_norm(),
            k_norm=head_norm(),
            sliding_window=sliding_window,
        ),
        mlp=GatedMLP(cfg.hidden_size, cfg.intermediate_size, "silu", bias=mlp_bias),
        attn_norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps),
        mlp_norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps),
    )


def default_rotary(cfg: DecoderConfig, rotary_dim: int | None = None) -> dict[str, RotaryEmbedding]:
    """The single rotary table most families use, keyed "default"."""
    dim = rotary_dim if rotary_dim is not None else cfg.head_dim
    return {"default": RotaryEmbedding(cfg.rope, dim, cfg.max_position_embeddings)}


def build_llama(cfg: LlamaConfig) -> Transformer:
    """A Llama 3.x (or SmolLM2) model from its config."""
    blocks = [
        llama_block(
            cfg, qkv_bias=cfg.attention_bias, o_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias
        )
        for _ in range(cfg.num_layers)
    ]
    return assemble_decoder(cfg, blocks, default_rotary(cfg))
