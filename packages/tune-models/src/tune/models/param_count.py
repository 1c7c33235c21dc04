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


def active_param_count(model: nn.Module) -> int:
    """Parameters used per token: routed experts count ``top_k / num_experts`` of theirs.

    A mixture-of-experts block is any submodule with ``num_experts``, ``top_k`` and an
    ``experts`` module (``MoEFeedForward``); everything else (attention, shared experts, routers,
    embeddings, LM head) counts in full. Equals ``param_count(model)`` for a dense model.

    Args:
        model: any module (meta-device models work).
    """
    inactive = 0
    for module in model.modules():
        experts = getattr(module, "experts", None)
        num_experts, top_k = getattr(module, "num_experts", None), getattr(module, "top_k", None)
        if isinstance(experts, nn.Module) and isinstance(num_experts, int) and top_k is not None:
            routed = sum(p.numel() for p in experts.parameters())
            inactive += routed - routed * int(top_k) // num_experts
    return param_count(model) - inactive
