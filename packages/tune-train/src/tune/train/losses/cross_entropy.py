"""Token cross-entropy that returns a sum and a token count, plain or chunked over tokens."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor

IGNORE_INDEX = -100


class TokenLoss(NamedTuple):
    """A loss summed over its units (tokens, sequences) and how many units were counted.

    Callers divide by the number of units of the whole optimizer step (see
    `tune.train.GradientAccumulator`), never by this micro-batch's count alone.

    Attributes:
        loss_sum: 0-d float tensor, the summed loss (differentiable).
        num_tokens: 0-d int64 tensor, the number of units in the sum (not differentiable).
    """

    loss_sum: Tensor
    num_tokens: Tensor

    def mean(self) -> Tensor:
        """Loss per unit of this call alone (for logging a single batch; 0 when nothing counted)."""
        return self.loss_sum / self.num_tokens.clamp(min=1).to(self.loss_sum.dtype)


def _check_logits_labels(logits: Tensor, labels: Tensor) -> None:
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree: expected "
            "logits [..., V] with labels [...] (aligned: labels[t] is the target at position t)"
        )
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be int64 token ids, got {labels.dtype}")


def softcap_logits(logits: Tensor, softcap: float | None) -> Tensor:
    """Gemma-2 style soft-capping `cap * tanh(logits / cap)`; identity when `softcap` is None.

    Args:
        logits: [..., V] logits.
        softcap: positive cap, or None.
    """
    if softcap is None:
        return logits
    if softcap <= 0:
        raise ValueError(f"softcap must be positive or None, got {softcap}")
    return torch.tanh(logits / softcap) * softcap


def cross_entropy(
    logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    softcap: float | None = None,
) -> TokenLoss:
    """Summed token cross-entropy (computed in float32) and the number of real labels.

    Args:
        logits: [..., V] logits, aligned with `labels` (no shift is done here).
        labels: [...] int64 targets; `ignore_index` marks positions that are not trained.
        ignore_index: label value to skip.
        softcap: optional final-logit soft-cap (Gemma 2) applied before the softmax.

    Returns:
        `TokenLoss(loss_sum, num_tokens)`.
    """
    _check_logits_labels(logits, labels)
    flat_logits = softcap_logits(logits.reshape(-1, logits.shape[-1]).float(), softcap)
    flat_labels = labels.reshape(-1)
    loss_sum = F.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index, reduction="sum")
    num_tokens = (flat_labels != ignore_index).sum()
    return TokenLoss(loss_sum, num_tokens)


def chunked_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    *,
    chunk_size: int = 4096,
    ignore_index: int = IGNORE_INDEX,
    softcap: float | None = None,
) -> TokenLoss:
    """Cross-entropy over chunks of tokens, so the float32 upcast of low-precision logits is bounded.

    Each chunk is recomputed in backward (activation checkpointing), so only the given logits
    plus one chunk's float32 copy are alive at once. The value and gradients equal
    `cross_entropy`'s.

    Args:
        logits: [..., V] logits (any float dtype).
        labels: [...] int64 targets with `ignore_index` for untrained positions.
        chunk_size: tokens per chunk.
        ignore_index: label value to skip.
        softcap: optional final-logit soft-cap.

    Returns:
        `TokenLoss(loss_sum, num_tokens)`.
    """
    _check_logits_labels(logits, labels)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)

    def chunk_loss(chunk_logits: Tensor, chunk_labels: Tensor) -> Tensor:
        capped = softcap_logits(chunk_logits.float(), softcap)
        return F.cross_entropy(capped, chunk_labels, ignore_index=ignore_index, reduction="sum")

    loss_sum = flat_logits.new_zeros((), dtype=torch.float32)
    for start in range(0, flat_labels.shape[0], chunk_size):
        chunk = slice(start, start + chunk_size)
        if flat_logits.requires_grad and torch.is_grad_enabled():
            part = torch.utils.checkpoint.checkpoint(
                chunk_loss, flat_logits[chunk], flat_labels[chunk], use_reentrant=False
            )
        else:
            part = chunk_loss(flat_logits[chunk], flat_labels[chunk])
        loss_sum = loss_sum + part
    num_tokens = (flat_labels != ignore_index).sum()
    return TokenLoss(loss_sum, num_tokens)
