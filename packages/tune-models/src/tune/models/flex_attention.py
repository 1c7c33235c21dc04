"""FlexAttention for packed documents on CUDA (CPU has no FlexAttention backward)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention


@cache
def _compiled_flex() -> Callable[..., torch.Tensor]:
    return torch.compile(flex_attention, dynamic=False)


def document_block_mask(document_ids: torch.Tensor, sliding_window: int | None = None) -> BlockMask:
    """Block-causal mask for packed rows: causal, same document, optional sliding window.

    Args:
        document_ids: [B, T] document index of every token.
        sliding_window: attend only to the last ``sliding_window`` keys (self included).
    """
    B, T = document_ids.shape

    def mask_mod(b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
        allowed = (q_idx >= kv_idx) & (document_ids[b, q_idx] == document_ids[b, kv_idx])
        if sliding_window is not None:
            allowed = allowed & (q_idx - kv_idx < sliding_window)
        return allowed

    return create_block_mask(mask_mod, B, None, T, T, device=document_ids.device)


def flex_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: BlockMask,
    *,
    scale: float,
    softcap: float | None = None,
) -> torch.Tensor:
    """FlexAttention over q [B, H, T, D], k/v [B, H_kv, T, D] with a ``BlockMask``."""
    score_mod = None
    if softcap is not None:
        cap = softcap

        def score_mod(score, b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
            return cap * torch.tanh(score / cap)

    return _compiled_flex()(
        q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=True
    )
