"""Dense boolean attention masks: causal, sliding window, padding and packed documents."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def build_attention_mask(
    *,
    q_len: int,
    kv_len: int,
    q_offset: int = 0,
    device: torch.device | str = "cpu",
    attention_mask: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Boolean mask (True = may attend) of shape [B or 1, 1, q_len, kv_len].

    Query ``i`` sits at sequence index ``q_offset + i``; key ``j`` at index ``j``. A key is visible
    when it is not in the future, within ``sliding_window`` (``q - k < window``), in the same
    document and not padding. Every query always sees itself, so padding rows never softmax over an
    empty set (which would give NaN and leak into later layers through the cache or residual).

    Args:
        q_len: number of queries T.
        kv_len: number of keys S (the cache length when decoding, else T).
        q_offset: sequence index of the first query (tokens already in the cache).
        device: where to build the mask.
        attention_mask: [B, S'] with 1 for real tokens, 0 for padding, S' <= kv_len covering the
            first S' keys (the rest count as real).
        document_ids: [B, T] document index of each token of a packed row (needs q_offset == 0
            and q_len == kv_len).
        sliding_window: attend only to the last ``sliding_window`` keys, self included.
    """
    q_idx = torch.arange(q_len, device=device) + q_offset  # (T,)
    kv_idx = torch.arange(kv_len, device=device)  # (S,)
    distance = q_idx[:, None] - kv_idx[None, :]  # (T, S)
    allowed = distance >= 0
    if sliding_window is not None:
        allowed = allowed & (distance < sliding_window)
    allowed = allowed[None, None]  # (1, 1, T, S)
    if document_ids is not None:
        if document_ids.shape[1] != kv_len or q_offset != 0:
            raise ValueError(
                f"document_ids {tuple(document_ids.shape)} need a full sequence (q_len == kv_len "
                f"== {kv_len}, no cache); got q_len={q_len}, kv_len={kv_len}, offset={q_offset}"
            )
        same_doc = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T)
        allowed = allowed & same_doc[:, None]
    if attention_mask is not None:
        key_real = attention_mask.to(device=device, dtype=torch.bool)  # (B, S')
        if key_real.shape[1] > kv_len:
            raise ValueError(
                f"attention_mask covers {key_real.shape[1]} tokens but only {kv_len} keys exist"
            )
        key_real = F.pad(key_real, (0, kv_len - key_real.shape[1]), value=True)
        allowed = allowed & key_real[:, None, None, :]
    return allowed | (distance == 0)[None, None]
