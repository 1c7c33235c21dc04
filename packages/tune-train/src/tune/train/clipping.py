"""Gradient clipping that always reports the total norm before clipping."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def clip_grad_norm(
    parameters: Iterable[Tensor] | Tensor,
    max_norm: float | None,
    *,
    norm_type: float = 2.0,
) -> Tensor:
    """Clip gradients in place to `max_norm` (if given) and return their total norm before clipping.

    Works with plain and DTensor (FSDP2 / TP) gradients; a DTensor norm is returned as a full
    (replicated) local tensor. A non-finite norm is returned as is, never raised on: pass it to
    `NonFiniteGuard`.

    Args:
        parameters: parameters whose `.grad` to clip (those without a gradient are skipped).
        max_norm: maximum total norm; None or `inf` only measures.
        norm_type: p of the p-norm (`inf` for the max norm).

    Returns:
        0-d float tensor, the total norm over all gradients.
    """
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if max_norm is not None and max_norm <= 0:
        raise ValueError(f"max_norm must be positive or None, got {max_norm}")
    if not grads:
        return torch.zeros(())
    if max_norm is None or max_norm == float("inf"):
        total = torch.nn.utils.get_total_norm(grads, norm_type=norm_type)
    else:
        total = torch.nn.utils.clip_grad_norm_(
            [p for p in params if p.grad is not None], max_norm, norm_type=norm_type
        )
    full_tensor = getattr(total, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else total
