"""Grouped-query self-attention with rotary embeddings, optional q/k norm, bias, soft-capping and
attention sinks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tune.models.document_attention import DocumentLayout, document_attend
from tune.models.kv_cache import KVCache
from tune.models.rotary import apply_rotary

try:  # FlexAttention is used for packed documents on CUDA only.
    from torch.nn.attention.flex_attention import BlockMask
except ImportError:  # pragma: no cover - torch without flex attention
    BlockMask = None  # type: ignore[assignment,misc]


def softcapped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    softcap: float,
) -> torch.Tensor:
    """Explicit attention with ``softcap * tanh(scores / softcap)`` on the logits (Gemma 2).

    Args:
        q: [B, H, T, D] queries.
        k: [B, H_kv, S, D] keys.
        v: [B, H_kv, S, D] values.
        mask: [B or 1, 1, T, S] boolean, True = may attend.
        scale: multiplier of q·k before capping.
        softcap: the cap.
    """
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # (B, H, S, D)
    v = v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale  # (B, H, T, S)
    scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)  # (B, H, T, D)


def sink_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    sinks: torch.Tensor,
) -> torch.Tensor:
    """Attention whose softmax denominator also holds ``exp(sinks[h])`` (gpt-oss).

    ``softmax([q·k_1, ..., q·k_S, sink_h])`` without its last column: the sink takes probability
    mass but adds no value. SDPA has no such term, so a zero key and value are appended: that key's
    logit is ``q·0 = 0``, plus ``sinks[h]`` from the additive float mask [B, H, T, S + 1] (which
    is materialised, like the scores of an explicit softmax; ``sinks`` gets its gradient through
    the mask). Key/value heads are repeated so that SDPA backends without GQA can take it.

    Args:
        q: [B, H, T, D] queries.
        k: [B, H_kv, S, D] keys.
        v: [B, H_kv, S, D] values.
        mask: [B or 1, 1, T, S] boolean, True = may attend; None = causal (T == S).
        scale: multiplier of q·k.
        sinks: [H] sink logits.
    """
    B, H, T, _ = q.shape
    S = k.shape[2]
    if mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)[None, None]
    groups = H // k.shape[1]
    zeros = k.new_zeros(B, k.shape[1], 1, k.shape[3])
    k = torch.cat([k, zeros], dim=2).repeat_interleave(groups, dim=1)  # (B, H, S + 1, D)
    v = torch.cat([v, zeros], dim=2).repeat_interleave(groups, dim=1)
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
    bias = bias.masked_fill(~mask, float("-inf")).expand(B, H, T, S)
    sink = sinks.to(q.dtype).view(1, H, 1, 1).expand(B, H, T, 1)
    attn_mask = torch.cat([bias, sink], dim=-1)  # (B, H, T, S + 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


class Attention(nn.Module):
    """Multi-head self-attention with grouped key/value heads.

    Args:
        dim: model width.
        num_heads: query heads.
        num_kv_heads: key/value heads (divides ``num_heads``).
        head_dim: per-head width.
        qkv_bias: biases on q/k/v projections (Qwen2).
        o_bias: bias on the output projection.
        q_norm: norm over head_dim applied to queries before rotary (Qwen3, Gemma 3).
        k_norm: norm over head_dim applied to keys before rotary.
        scale: q·k multiplier; defaults to ``head_dim ** -0.5``.
        logit_softcap: cap the attention logits with tanh (Gemma 2); uses the explicit path.
        sliding_window: attend to the last ``sliding_window`` tokens only (None = global).
        rope_key: which of the model's rotary tables this layer uses.
        sinks: a learned per-head sink logit ``sinks`` [num_heads] in the softmax denominator
            (gpt-oss); uses ``sink_attention`` and needs an explicit mask like soft-capping.

    Attributes:
        attention_fn: None (default) or a callable ``fn(q, k, v, mask, scale) -> out`` that
            replaces the attention core (after projections, norms and rotary): q [B, H, T, D],
            k/v [B, H_kv, S, D], ``mask`` as passed to ``forward``, out [B, H, T, D]. Set from
            outside, e.g. by tune.dist's ``context_parallel_attention`` for ring attention.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        qkv_bias: bool = False,
        o_bias: bool = False,
        q_norm: nn.Module | None = None,
        k_norm: nn.Module | None = None,
        scale: float | None = None,
        logit_softcap: float | None = None,
        sliding_window: int | None = None,
        rope_key: str = "default",
        sinks: bool = False,
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}"
            )
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale if scale is not None else head_dim**-0.5
        self.logit_softcap = logit_softcap
        self.sliding_window = sliding_window
        self.rope_key = rope_key
        self.q_proj = nn.Linear(dim, num_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, num_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, num_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, dim, bias=o_bias)
        self.q_norm = q_norm
        self.k_norm = k_norm
        self.kv_cache: KVCache | None = None
        # Zeros: a sink of logit 0 until loaded or initialised (init_weights draws normal).
        self.sinks = nn.Parameter(torch.zeros(num_heads)) if sinks else None
        self.attention_fn: Callable[..., torch.Tensor] | None = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend over ``x`` [B, T, dim].

        Args:
            x: normed hidden states [B, T, dim].
            cos: rotary cosines [B, T, rotary_dim].
            sin: rotary sines [B, T, rotary_dim].
            mask: None for plain causal attention, a boolean [B or 1, 1, T, S] mask, a
                ``DocumentLayout`` of packed documents, or a FlexAttention ``BlockMask`` (CUDA).

        Returns:
            [B, T, dim].
        """
        q = self.q_proj(x)
        B, T = q.shape[:2]
        # -1 heads: under tensor parallelism each rank holds a slice of the heads.
        q = q.view(B, T, -1, self.head_dim)  # (B, T, H, D)
        k = self.k_proj(x).view(B, T, -1, self.head_dim)  # (B, T, H_kv, D)
        v = self.v_proj(x).view(B, T, -1, self.head_dim)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.k_norm is not None:
            k = self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(k, v)  # (B, H_kv, S, D)
        out = self._attend(q, k, v, mask)  # (B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> torch.Tensor:
        if self.attention_fn is not None:  # routed from outside (context parallelism)
            return self.attention_fn(q, k, v, mask, self.scale)
        if isinstance(mask, DocumentLayout):
            return document_attend(q, k, v, mask, scale=self.scale)
        if BlockMask is not None and isinstance(mask, BlockMask):
            from tune.models.flex_attention import flex_attend

            if self.sinks is not None:
                raise ValueError(
                    "attention sinks need a boolean mask, not a FlexAttention BlockMask "
                    "(Transformer builds dense masks for models with sinks)"
                )
            return flex_attend(q, k, v, mask, scale=self.scale, softcap=self.logit_softcap)
        if self.sinks is not None:
            return sink_attention(q, k, v, mask, self.scale, self.sinks)
        if self.logit_softcap is not None:
            if mask is None:
                raise ValueError("soft-capped attention needs an explicit mask")
            return softcapped_attention(q, k, v, mask, self.scale, self.logit_softcap)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.scale, enable_gqa=True
        )
