"""Multi-head latent attention (MLA, DeepSeek-V2/V3): keys and values from a low-rank latent.

Per token, a shared latent ``c`` of ``kv_lora_rank`` values and one rotary key ``k_rope`` of
``qk_rope_head_dim`` values (shared by all heads) are projected down from the hidden state; every
head's non-rotary key part and its value are projected back up from ``c``::

    q            = q_b_proj(q_a_norm(q_a_proj(x)))   (or q_proj(x) without a query rank)
    c, k_rope    = split(kv_a_proj(x), [kv_lora_rank, qk_rope_head_dim])
    k_nope, v    = split(kv_b_proj(kv_a_norm(c)), [qk_nope_head_dim, v_head_dim])   per head
    q_i · k_j    = [q_nope, rope(q_rope)] · [k_nope, rope(k_rope)]

Only the ``qk_rope_head_dim`` trailing dimensions of q and k rotate. DeepSeek checkpoints pair the
rotary dimensions interleaved, ``(x0, x1), (x2, x3), ...`` (``rope_interleave``); they are
de-interleaved to the "rotate half" layout before rotating, which changes neither q·k nor the
weights.

The KV cache holds the latent, not per-head keys and values: ``kv_a_norm(c)`` [B, 1, S,
kv_lora_rank] in the key slot and the rotated ``k_rope`` [B, 1, S, qk_rope_head_dim] in the value
slot (576 numbers per token for DeepSeek-V3 instead of 128 heads x (192 + 128)); each decoding
step projects the whole cache up again through ``kv_b_proj``.

Module names (state-dict keys, HF names in brackets): ``q_proj`` [q_proj] or ``q_a_proj``
[q_a_proj], ``q_a_norm`` [q_a_layernorm], ``q_b_proj`` [q_b_proj]; ``kv_a_proj``
[kv_a_proj_with_mqa], ``kv_a_norm`` [kv_a_layernorm], ``kv_b_proj`` [kv_b_proj]; ``o_proj``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tune.models.document_attention import DocumentLayout, document_attend
from tune.models.kv_cache import KVCache
from tune.models.rms_norm import RMSNorm
from tune.models.rotary import RopeSpec, apply_rotary

try:  # FlexAttention is used for packed documents on CUDA only.
    from torch.nn.attention.flex_attention import BlockMask
except ImportError:  # pragma: no cover - torch without flex attention
    BlockMask = None  # type: ignore[assignment,misc]


def mla_softmax_scale(qk_head_dim: int, rope: RopeSpec) -> float:
    """``qk_head_dim ** -0.5``, times ``mscale ** 2`` when a scaled rope sets ``mscale_all_dim``.

    DeepSeek's YaRN scales every dimension of q·k (not only the rotary ones, which the rotary
    tables' own ``attention_factor`` covers) by ``(0.1 * mscale_all_dim * ln(factor) + 1) ** 2``.
    """
    scale = qk_head_dim**-0.5
    if rope.rope_type != "default" and rope.mscale_all_dim and rope.factor and rope.factor > 1:
        mscale = 0.1 * rope.mscale_all_dim * math.log(rope.factor) + 1.0
        scale *= mscale * mscale
    return scale


def deinterleave(x: torch.Tensor) -> torch.Tensor:
    """``[x0, x1, x2, x3, ...] -> [x0, x2, ..., x1, x3, ...]`` over the last dimension."""
    return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)


class MLAttention(nn.Module):
    """Multi-head latent attention with a partially rotary query/key.

    Args:
        dim: model width.
        num_heads: attention heads ``H``.
        q_lora_rank: width of the query latent (``q_a_proj``/``q_b_proj``); None for a full
            ``q_proj``.
        kv_lora_rank: width of the key/value latent ``C``.
        qk_nope_head_dim: per-head non-rotary query/key width.
        qk_rope_head_dim: per-head rotary query/key width ``R`` (one key part shared by all heads).
        v_head_dim: per-head value width.
        scale: q·k multiplier (see ``mla_softmax_scale``).
        rope_interleave: the rotary dimensions are stored in interleaved pairs (DeepSeek).
        bias: biases on ``q_a_proj``, ``kv_a_proj`` and ``o_proj`` (HF ``attention_bias``).
        eps: epsilon of the latent norms.
        rope_key: which of the model's rotary tables this layer uses.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        q_lora_rank: int | None,
        kv_lora_rank: int,
        qk_nope_head_dim: int,
        qk_rope_head_dim: int,
        v_head_dim: int,
        scale: float,
        rope_interleave: bool = True,
        bias: bool = False,
        eps: float = 1e-6,
        rope_key: str = "default",
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.kv_lora_rank = kv_lora_rank
        self.qk_nope_head_dim = qk_nope_head_dim
        self.qk_rope_head_dim = qk_rope_head_dim
        self.qk_head_dim = qk_nope_head_dim + qk_rope_head_dim
        self.v_head_dim = v_head_dim
        self.scale = scale
        self.rope_interleave = rope_interleave
        self.rope_key = rope_key
        # Read by Transformer: MLA is always full causal attention without soft-capping.
        self.sliding_window: int | None = None
        self.logit_softcap: float | None = None
        # Read by setup_kv_cache: one latent "head", latent width in the key slot, rotary
        # key width in the value slot.
        self.num_kv_heads = 1
        self.head_dim = kv_lora_rank
        self.cache_value_dim = qk_rope_head_dim
        q_out = num_heads * self.qk_head_dim
        self.q_proj: nn.Linear | None = None
        self.q_a_proj: nn.Linear | None = None
        self.q_a_norm: RMSNorm | None = None
        self.q_b_proj: nn.Linear | None = None
        if q_lora_rank is None:
            self.q_proj = nn.Linear(dim, q_out, bias=False)
        else:
            self.q_a_proj = nn.Linear(dim, q_lora_rank, bias=bias)
            self.q_a_norm = RMSNorm(q_lora_rank, eps)
            self.q_b_proj = nn.Linear(q_lora_rank, q_out, bias=False)
        self.kv_a_proj = nn.Linear(dim, kv_lora_rank + qk_rope_head_dim, bias=bias)
        self.kv_a_norm = RMSNorm(kv_lora_rank, eps)
        self.kv_b_proj = nn.Linear(
            kv_lora_rank, num_heads * (qk_nope_head_dim + v_head_dim), bias=False
        )
        self.o_proj = nn.Linear(num_heads * v_head_dim, dim, bias=bias)
        self.kv_cache: KVCache | None = None
        # As ``Attention.attention_fn``: fn(q, k, v, mask, scale) -> out replaces the core; it
        # gets q/k/v zero-padded to one head width (its output's extra columns are dropped).
        self.attention_fn: Callable[..., torch.Tensor] | None = None

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.rope_interleave:
            x = deinterleave(x)
        return apply_rotary(x, cos, sin)

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
            cos: rotary cosines [B, T, qk_rope_head_dim].
            sin: rotary sines [B, T, qk_rope_head_dim].
            mask: as in ``tune.models.Attention``: None (causal), a boolean [B or 1, 1, T, S]
                mask, a ``DocumentLayout`` or a FlexAttention ``BlockMask`` (CUDA).

        Returns:
            [B, T, dim].
        """
        B, T, _ = x.shape
        if self.q_proj is not None:
            q = self.q_proj(x)
        else:
            assert self.q_a_proj is not None
            assert self.q_a_norm is not None
            assert self.q_b_proj is not None
            q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))
        # -1 heads: under tensor parallelism each rank holds a slice of the heads.
        q = q.view(B, T, -1, self.qk_head_dim).transpose(1, 2)  # (B, H, T, Dqk)
        q_nope, q_rope = q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        latent, k_rope = self.kv_a_proj(x).split([self.kv_lora_rank, self.qk_rope_head_dim], -1)
        latent = self.kv_a_norm(latent)[:, None]  # (B, 1, T, C)
        k_rope = k_rope[:, None]  # (B, 1, T, R)
        q_rope, k_rope = self._rotate(q_rope, cos, sin), self._rotate(k_rope, cos, sin)
        if self.kv_cache is not None:
            latent, k_rope = self.kv_cache.update(latent, k_rope)  # (B, 1, S, C), (B, 1, S, R)
        S = latent.shape[2]
        kv = self.kv_b_proj(latent[:, 0]).view(B, S, -1, self.qk_nope_head_dim + self.v_head_dim)
        k_nope, v = kv.transpose(1, 2).split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        H = k_nope.shape[1]
        k = torch.cat((k_nope, k_rope.expand(-1, H, -1, -1)), dim=-1)  # (B, H, S, Dqk)
        q = torch.cat((q_nope, q_rope), dim=-1)  # (B, H, T, Dqk)
        out = self._attend(q, k, v, mask)  # (B, H, T, Dv)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> torch.Tensor:
        if self.attention_fn is not None:  # routed from outside (context parallelism)
            width = max(self.qk_head_dim, self.v_head_dim)
            q, k, v = (F.pad(t, (0, width - t.shape[-1])) for t in (q, k, v))
            return self.attention_fn(q, k, v, mask, self.scale)[..., : self.v_head_dim]
        is_layout = isinstance(mask, DocumentLayout)
        is_block = BlockMask is not None and isinstance(mask, BlockMask)
        if not (is_layout or is_block):
            # SDPA takes a value width other than the query/key width.
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.scale
            )
        # The packed-document paths want one head width: zero-pad the narrower side (zeros add
        # nothing to q·k, and padded value columns are sliced off again).
        width = max(self.qk_head_dim, self.v_head_dim)
        q, k = (F.pad(t, (0, width - t.shape[-1])) for t in (q, k))
        v_padded = F.pad(v, (0, width - v.shape[-1]))
        if is_layout:
            out = document_attend(q, k, v_padded, mask, scale=self.scale)  # type: ignore[arg-type]
        else:
            from tune.models.flex_attention import flex_attend

            out = flex_attend(q, k, v_padded, mask, scale=self.scale)  # type: ignore[arg-type]
        return out[..., : self.v_head_dim]
