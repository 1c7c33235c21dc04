"""Assembling a ``Transformer`` from blocks: the parts every family shares."""

from __future__ import annotations

from torch import nn

from tune.models.decoder_config import DecoderConfig
from tune.models.rms_norm import RMSNorm
from tune.models.rotary import RotaryEmbedding
from tune.models.transformer import Transformer, TransformerBlock


def assemble_decoder(
    cfg: DecoderConfig,
    blocks: list[TransformerBlock],
    rotary: dict[str, RotaryEmbedding],
    *,
    norm_weight_offset: float = 0.0,
    embed_scale: float | None = None,
    final_logit_softcap: float | None = None,
) -> Transformer:
    """Embedding + ``blocks`` + final norm + LM head (tied per ``cfg``).

    Args:
        cfg: sizes.
        blocks: one block per layer.
        rotary: the rotary tables the blocks refer to by key.
        norm_weight_offset: 1.0 for Gemma-style norms that store ``weight - 1``.
        embed_scale: multiplier of the embeddings (Gemma).
        final_logit_softcap: tanh cap on the logits (Gemma 2).
    """
    return Transformer(
        tok_embeddings=nn.Embedding(cfg.vocab_size, cfg.hidden_size),
        layers=blocks,
        norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, norm_weight_offset),
        output=nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False),
        rotary=rotary,
        embed_scale=embed_scale,
        final_logit_softcap=final_logit_softcap,
        tie_word_embeddings=cfg.tie_word_embeddings,
        config=cfg,
    )
