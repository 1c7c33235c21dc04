"""Per-token and per-sequence log-probabilities of the labels, from logits or hidden states."""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import Tensor

from tune.train.losses.cross_entropy import IGNORE_INDEX, softcap_logits


def token_logprobs(
    logits: Tensor,
    labels: Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    softcap: float | None = None,
) -> Tensor:
    """Log-probability of each label, computed in float32; 0 where the label is ignored.

    Uses `gather - logsumexp`, so no [..., V] log-softmax tensor is kept besides the logits.

    Args:
        logits: [B, T, V] logits aligned with labels.
        labels: [B, T] int64 targets; `ignore_index` marks untrained positions.
        ignore_index: label value to skip.
        softcap: optional final-logit soft-cap.

    Returns:
        [B, T] float32 log-probabilities.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree: expected "
            "logits [..., V] and labels [...]"
        )
    logits = softcap_logits(logits.float(), softcap)
    valid = labels != ignore_index
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    target = logits.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    return (target - torch.logsumexp(logits, dim=-1)) * valid


def _reduce_per_sequence(logps: Tensor, labels: Tensor, ignore_index: int, average: bool) -> Tensor:
    summed = logps.sum(dim=-1)
    if not average:
        return summed
    counts = (labels != ignore_index).sum(dim=-1).clamp(min=1)
    return summed / counts.to(summed.dtype)


def sequence_logprobs(
    logits: Tensor,
    labels: Tensor,
    *,
    average: bool = False,
    ignore_index: int = IGNORE_INDEX,
    softcap: float | None = None,
) -> Tensor:
    """Per-sequence log-probability of the labels: summed, or averaged over real labels.

    Args:
        logits: [B, T, V] logits aligned with labels.
        labels: [B, T] int64 targets; `ignore_index` marks prompt and padding positions.
        average: divide each sequence's sum by its number of real labels (SimPO, ORPO, IPO).
        ignore_index: label value to skip.
        softcap: optional final-logit soft-cap.

    Returns:
        [B] float32 log-probabilities.
    """
    logps = token_logprobs(logits, labels, ignore_index=ignore_index, softcap=softcap)
    return _reduce_per_sequence(logps, labels, ignore_index, average)


def sequence_logprobs_from_hidden(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    average: bool = False,
    chunk_size: int = 1024,
    ignore_index: int = IGNORE_INDEX,
    softcap: float | None = None,
) -> Tensor:
    """Like `sequence_logprobs` but from hidden states and the output weight, chunked over tokens.

    Each chunk's logits are recomputed in backward (activation checkpointing), so at most one
    [chunk_size, V] block of logits is alive at a time.

    Args:
        hidden: [B, T, D] final normed hidden states.
        weight: [V, D] output projection weight.
        labels: [B, T] int64 targets with `ignore_index` for untrained positions.
        average: divide each sequence's sum by its number of real labels.
        chunk_size: tokens per chunk.
        ignore_index: label value to skip.
        softcap: optional final-logit soft-cap.

    Returns:
        [B] float32 log-probabilities.
    """
    if hidden.shape[:-1] != labels.shape or hidden.dim() != 3:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree: expected "
            "hidden [B, T, D] and labels [B, T]"
        )
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1)

    def chunk_logps(chunk_hidden: Tensor, chunk_labels: Tensor) -> Tensor:
        logits = (chunk_hidden @ weight.t()).unsqueeze(0)
        return token_logprobs(
            logits, chunk_labels.unsqueeze(0), ignore_index=ignore_index, softcap=softcap
        ).squeeze(0)

    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    parts = []
    for start in range(0, flat_labels.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        if needs_grad:
            part = torch.utils.checkpoint.checkpoint(
                chunk_logps, flat_hidden[rows], flat_labels[rows], use_reentrant=False
            )
        else:
            part = chunk_logps(flat_hidden[rows], flat_labels[rows])
        parts.append(part)
    logps = torch.cat(parts).reshape(labels.shape)
    return _reduce_per_sequence(logps, labels, ignore_index, average)
