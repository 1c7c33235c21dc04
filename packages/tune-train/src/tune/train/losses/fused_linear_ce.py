"""Output projection fused with cross-entropy: the full [tokens, vocab] logits never exist."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from tune.train.losses.cross_entropy import IGNORE_INDEX, TokenLoss

# Rows per torch.logsumexp call in `_logsumexp_rows` (a [16, V] temporary: 3 MiB at V=49152).
LSE_ROWS = 16


def _logsumexp_rows(logits: Tensor) -> Tensor:
    """`torch.logsumexp(logits, -1, keepdim=True)` [C, 1] of `logits` [C, V], equal bit for bit,
    computed LSE_ROWS rows at a time.

    torch.logsumexp makes a [C, V] `logits - max` temporary: for a 1,024-row chunk of a
    49,152-token vocabulary a 201 MB allocation, which on the CPU is a fresh mapping faulted in
    page by page on every chunk, alive beside the logits. By row blocks the temporary stays small
    and reused: 3.1-3.8x faster here at 1,016 rows (44-50 ms against 157-168 ms, 2 threads).
    """
    out = logits.new_empty(logits.shape[0], 1)
    for start in range(0, logits.shape[0], LSE_ROWS):
        rows = slice(start, start + LSE_ROWS)
        torch.logsumexp(logits[rows], dim=-1, keepdim=True, out=out[rows])
    return out


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Summed CE of `hidden @ weight.T` computed chunk by chunk over the labelled tokens.

    Rows whose label is `ignore_index` contribute nothing to the loss or the gradients, so they
    are dropped before the projection (instruction data masks most prompt tokens). Gradients are
    computed in the forward pass, one chunk at a time, and only `grad_hidden` [N, D] and
    `grad_weight` [V, D] are kept for backward; the chunk's [C, V] logits are freed before the
    next chunk. Backward scales them by the incoming gradient of the scalar loss.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        labels: Tensor,
        chunk_size: int,
        ignore_index: int,
        softcap: float | None,
        grad_enabled: bool,
    ) -> Tensor:
        # needs_input_grad ignores no_grad mode, hence the explicit flag from the caller.
        need_hidden_grad = grad_enabled and ctx.needs_input_grad[0]
        need_weight_grad = grad_enabled and ctx.needs_input_grad[1]
        rows = (labels != ignore_index).nonzero().squeeze(1)  # (M,) labelled rows
        kept_hidden = hidden.index_select(0, rows)  # (M, D)
        kept_labels = labels.index_select(0, rows)  # (M,)
        grad_hidden = torch.zeros_like(hidden) if need_hidden_grad else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if need_weight_grad
            else None
        )
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, rows.shape[0], chunk_size):
            chunk = slice(start, start + chunk_size)
            chunk_hidden = kept_hidden[chunk]  # (C, D)
            chunk_labels = kept_labels[chunk].unsqueeze(1)  # (C, 1)
            logits = (chunk_hidden @ weight.t()).float()  # (C, V)
            tanh_logits = None
            if softcap is not None:
                tanh_logits = torch.tanh(logits / softcap)
                logits = tanh_logits * softcap
            lse = _logsumexp_rows(logits)  # (C, 1)
            target = logits.gather(1, chunk_labels)  # (C, 1)
            loss_sum += (lse - target).sum()
            if not (need_hidden_grad or need_weight_grad):
                continue
            # d(lse - target)/d logits = softmax - one_hot, built in place.
            grad_logits = logits.sub_(lse).exp_()  # (C, V)
            grad_logits.scatter_add_(1, chunk_labels, -torch.ones_like(lse))
            if tanh_logits is not None:
                # d(cap * tanh(z / cap))/dz = 1 - tanh^2
                grad_logits.mul_(1.0 - tanh_logits.square_())
            if grad_hidden is not None:
                grad_chunk = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)  # (C, D)
                grad_hidden.index_copy_(0, rows[chunk], grad_chunk)
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t(), chunk_hidden.float())
            del grad_logits, logits, tanh_logits
        ctx.weight_dtype = weight.dtype
        # Kept as attributes, not saved tensors, so backward can hand them to autograd as the
        # only reference (AccumulateGrad then adopts them instead of copying into `.grad`).
        ctx.grads = (grad_hidden, grad_weight)
        return loss_sum

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        if ctx.grads is None:
            raise RuntimeError(
                "fused_linear_cross_entropy supports one backward per forward "
                "(its gradients are computed in forward and handed over in the first backward)"
            )
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None
        if grad_hidden is not None:
            grad_hidden.mul_(grad_loss.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_loss).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None


def fused_linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    chunk_size: int = 1024,
    ignore_index: int = IGNORE_INDEX,
    softcap: float | None = None,
) -> TokenLoss:
    """Summed cross-entropy of `hidden @ weight.T` without materialising the [N, V] logits.

    Equal in value and gradients to `cross_entropy(hidden @ weight.T, labels)`. Only the rows
    whose label is not `ignore_index` are projected (their count is data-dependent: on CUDA this
    reads it back, one host sync per call). Peak extra memory is one chunk's [chunk_size, V]
    float32 logits plus `grad_hidden` and a float32 `grad_weight` (the latter only when `weight`
    requires grad, e.g. not for a frozen LoRA base).

    Args:
        hidden: [..., D] final normed hidden states (e.g. `model(tokens, return_hidden=True)`).
        weight: [V, D] output projection weight (`model.output.weight`, tied or not).
        labels: [...] int64 targets aligned with `hidden`; `ignore_index` marks untrained positions.
        chunk_size: labelled tokens per chunk (memory ~ chunk_size * V * 4 bytes per live chunk).
        ignore_index: label value to skip.
        softcap: optional final-logit soft-cap `cap * tanh(z / cap)` (Gemma 2).

    Returns:
        `TokenLoss(loss_sum, num_tokens)`.
    """
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree: expected "
            "hidden [..., D] and labels [...]"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight {tuple(weight.shape)} does not match hidden {tuple(hidden.shape)}: "
            "expected weight [V, D] with D == hidden.shape[-1]"
        )
    if hasattr(weight, "placements") or hasattr(hidden, "placements"):
        raise TypeError(
            "fused_linear_cross_entropy needs plain tensors, got a DTensor (an FSDP2-sharded or "
            "tensor-parallel output weight): unshard the head's weight for the loss, or compute "
            "the logits inside the model and use cross_entropy"
        )
    if hidden.dtype != weight.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) dtypes differ")
    if labels.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"labels must be int64 token ids, got {labels.dtype}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if softcap is not None and softcap <= 0:
        raise ValueError(f"softcap must be positive or None, got {softcap}")
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1).long()
    loss_sum = _FusedLinearCrossEntropy.apply(
        flat_hidden, weight, flat_labels, chunk_size, ignore_index, softcap, torch.is_grad_enabled()
    )
    return TokenLoss(loss_sum, (flat_labels != ignore_index).sum())
