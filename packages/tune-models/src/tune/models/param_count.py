"""Parameter counts that count shared (tied) parameters once."""

from __future__ import annotations

from torch import nn


def param_count(
    model: nn.Module, *, trainable_only: bool = False, exclude_embeddings: bool = False
) -> int:
    """Number of parameter elements, each shared parameter counted once.

    Args:
        model: any module (meta-device models work).
        trainable_only: count only parameters with ``requires_grad``.
        exclude_embeddings: leave out ``nn.Embedding`` weights (and an LM head tied to them).
    """
    skip: set[int] = set()
    if exclude_embeddings:
        skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    total = 0
    for p in model.parameters():  # parameters() already yields a shared tensor once
        if id(p) in skip or (trainable_only and not p.requires_grad):
            continue
        total += p.numel()
    return total
