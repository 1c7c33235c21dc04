"""Router losses of mixture-of-experts models, from the statistics their MoE blocks keep.

A MoE block that keeps ``router_stats`` after its forward (tune.models' ``MoEFeedForward``, or any
module with the same attributes, see ``RouterStatsLike``) is found by ``router_stats_of(model)``;
nothing here imports a model library. Over the ``N = B * T`` tokens of one call (``E`` experts,
``k`` per token):

- ``load_balancing_loss``: the Switch Transformer auxiliary loss as transformers'
  ``load_balancing_loss_func`` defines it for Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE and gpt-oss.
  Every layer's logits are pooled, ``p = softmax(logits)``, the top-k of ``p`` is re-taken, and
  ``loss = E * sum_i f_i * P_i`` with ``f_i`` = (token, slot) pairs routed to expert ``i`` /
  tokens and ``P_i`` = mean of ``p[:, i]``; padding tokens (``attention_mask == 0``) are left out
  of both. ``sum_i f_i = k``, so a balanced router gives ``k``.
- ``sequence_load_balancing_loss``: DeepSeek-V3's sequence-wise balance loss: per sequence,
  ``f_i = E / (k * T) * count_i`` and ``P_i`` = mean over its tokens of the scores normalised to
  sum 1; ``sum_i f_i * P_i`` averaged over the sequences, summed over the layers (a balanced
  router gives 1 per layer). The counts are the model's own choice (``selected_experts``, the
  routing bias included).
- ``router_z_loss``: ST-MoE's ``mean_n logsumexp(logits[n]) ** 2`` over all layers' tokens.

None of these counts carry gradient (the choice of experts is discrete): gradients reach the
router through the probabilities (balance losses) or the logits (z-loss).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn


class RouterStatsLike(Protocol):
    """What a MoE block's ``router_stats`` holds for its last forward (``N`` tokens)."""

    @property
    def logits(self) -> Tensor:
        """[N, E] router logits, with gradient."""

    @property
    def scores(self) -> Tensor:
        """[N, E] routing scores (softmax or sigmoid of the logits), with gradient."""

    @property
    def selected_experts(self) -> Tensor:
        """[N, k] int64 experts each token was sent to."""

    @property
    def tokens_per_expert(self) -> Tensor:
        """[E] int64 (token, slot) pairs routed to each expert."""


def router_stats_of(model: nn.Module, *, clear: bool = False) -> list[tuple[str, Any]]:
    """``(module name, router_stats)`` of every module whose ``router_stats`` attribute is set
    (not None, not a method).

    Args:
        model: any module; its MoE blocks are found by the ``router_stats`` attribute.
        clear: set each found ``router_stats`` to None afterwards, so a block that does not run
            in the next forward is not counted twice (and its tensors are released).

    Returns:
        In ``named_modules`` order (the same on every rank).
    """
    found = []
    for name, module in model.named_modules():
        stats = getattr(module, "router_stats", None)
        # A model may also have a router_stats() *method* (tune.models' Transformer): skip it.
        if stats is not None and not callable(stats):
            found.append((name, stats))
            if clear:
                module.router_stats = None
    return found


def _as_list(tensors: Tensor | Sequence[Tensor], what: str) -> list[Tensor]:
    items = [tensors] if isinstance(tensors, Tensor) else list(tensors)
    if not items:
        raise ValueError(f"{what}: expected one [N, E] tensor per MoE layer, got none")
    experts = items[0].shape[-1]
    for i, t in enumerate(items):
        if t.dim() != 2 or t.shape[-1] != experts:
            raise ValueError(
                f"{what}[{i}]: expected [N, E={experts}] (tokens flattened), got {tuple(t.shape)}"
            )
    return items


def _token_weights(attention_mask: Tensor | None, n: int, device: torch.device) -> Tensor:
    """[N] float32 weight of each token: 1, or the flattened mask (0 = padding)."""
    if attention_mask is None:
        return torch.ones(n, dtype=torch.float32, device=device)
    if attention_mask.numel() != n:
        raise ValueError(
            f"attention_mask of shape {tuple(attention_mask.shape)} has {attention_mask.numel()} "
            f"entries; the router saw N={n} tokens (expected [B, T] with B * T = N)"
        )
    return attention_mask.reshape(-1).to(device=device, dtype=torch.float32)


def _expert_counts(selected: Tensor, weights: Tensor, num_experts: int) -> Tensor:
    """[E] float32 sum of ``weights`` [N] over the (token, slot) pairs routed to each expert."""
    k = selected.shape[-1]
    per_pair = weights.unsqueeze(-1).expand(-1, k).reshape(-1)  # [N*k]
    counts = torch.zeros(num_experts, dtype=torch.float32, device=selected.device)
    return counts.scatter_add(0, selected.reshape(-1), per_pair)


def load_balancing_loss(
    router_logits: Tensor | Sequence[Tensor],
    top_k: int,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """Switch-Transformer auxiliary loss over all layers, as transformers defines it.

    Args:
        router_logits: one [N, E] logits tensor per MoE layer (``RouterStats.logits``), N = B*T.
        top_k: experts per token ``k``.
        attention_mask: [B, T] (1 = token, 0 = padding) or None (every token counts).

    Returns:
        0-d float32 ``E * sum_i f_i * P_i`` (``k`` when balanced).
    """
    layers = _as_list(router_logits, "router_logits")
    num_experts = layers[0].shape[-1]
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
    device = layers[0].device
    counts = torch.zeros(num_experts, dtype=torch.float32, device=device)
    prob_sum = torch.zeros(num_experts, dtype=torch.float32, device=device)
    rows = torch.zeros((), dtype=torch.float32, device=device)
    for logits in layers:
        probs = torch.softmax(logits.to(device).float(), dim=-1)  # [N, E]
        weights = _token_weights(attention_mask, probs.shape[0], device)  # [N]
        chosen = torch.topk(probs, top_k, dim=-1).indices  # [N, k]
        counts = counts + _expert_counts(chosen, weights, num_experts)
        prob_sum = prob_sum + (probs * weights.unsqueeze(-1)).sum(dim=0)
        rows = rows + weights.sum()
    rows = rows.clamp(min=1.0)  # all padding: 0, not NaN
    return num_experts * ((counts / rows) * (prob_sum / rows)).sum()


def sequence_load_balancing_loss(
    scores: Tensor | Sequence[Tensor],
    selected_experts: Tensor | Sequence[Tensor],
    batch_size: int,
    attention_mask: Tensor | None = None,
) -> Tensor:
    """DeepSeek-V3's sequence-wise balance loss, summed over layers (1 per layer when balanced).

    Args:
        scores: one [N, E] score tensor per MoE layer (``RouterStats.scores``), N = B*T.
        selected_experts: one [N, k] tensor per layer (``RouterStats.selected_experts``).
        batch_size: ``B`` (each row is one sequence).
        attention_mask: [B, T] (1 = token, 0 = padding) or None.

    Returns:
        0-d float32.
    """
    score_layers = _as_list(scores, "scores")
    chosen_layers = list(selected_experts)
    if isinstance(selected_experts, Tensor):
        chosen_layers = [selected_experts]
    if len(chosen_layers) != len(score_layers):
        raise ValueError(
            f"got {len(score_layers)} score tensors but {len(chosen_layers)} selected_experts"
        )
    n, num_experts = score_layers[0].shape
    if batch_size < 1 or n % batch_size:
        raise ValueError(f"batch_size={batch_size} does not divide the router's N={n} tokens")
    device = score_layers[0].device
    weights = _token_weights(attention_mask, n, device).view(batch_size, -1)  # [B, T]
    lengths = weights.sum(dim=1).clamp(min=1.0)  # [B]
    total = torch.zeros((), dtype=torch.float32, device=device)
    for s, chosen in zip(score_layers, chosen_layers, strict=True):
        if chosen.shape[0] != n:
            raise ValueError(f"selected_experts has {chosen.shape[0]} rows, scores {n}")
        k = chosen.shape[-1]
        s = s.float()
        p = s / s.sum(dim=-1, keepdim=True).clamp(min=1e-20)  # [N, E], rows sum to 1
        p = p.view(batch_size, -1, num_experts)  # [B, T, E]
        mean_p = (p * weights.unsqueeze(-1)).sum(dim=1) / lengths.unsqueeze(-1)  # [B, E]
        pair_w = weights.unsqueeze(-1).expand(-1, -1, k).reshape(batch_size, -1)  # [B, T*k]
        counts = torch.zeros(batch_size, num_experts, dtype=torch.float32, device=device)
        counts = counts.scatter_add(1, chosen.reshape(batch_size, -1), pair_w)  # [B, E]
        f = counts * (num_experts / k) / lengths.unsqueeze(-1)  # [B, E]
        total = total + (f * mean_p).sum(dim=1).mean()
    return total


def router_z_loss(
    router_logits: Tensor | Sequence[Tensor], attention_mask: Tensor | None = None
) -> Tensor:
    """ST-MoE router z-loss: mean over all layers' tokens of ``logsumexp(logits) ** 2``.

    Args:
        router_logits: one [N, E] logits tensor per MoE layer, N = B*T.
        attention_mask: [B, T] (1 = token, 0 = padding) or None.

    Returns:
        0-d float32.
    """
    layers = _as_list(router_logits, "router_logits")
    device = layers[0].device
    total = torch.zeros((), dtype=torch.float32, device=device)
    rows = torch.zeros((), dtype=torch.float32, device=device)
    for logits in layers:
        z = torch.logsumexp(logits.to(device).float(), dim=-1).square()  # [N]
        weights = _token_weights(attention_mask, z.shape[0], device)
        total = total + (z * weights).sum()
        rows = rows + weights.sum()
    return total / rows.clamp(min=1.0)
