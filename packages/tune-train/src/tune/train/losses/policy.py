"""Policy-gradient losses for RL from rewards: GRPO / PPO-clip with an optional KL to a reference."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

Aggregation = Literal["token", "sequence"]


def group_advantages(
    rewards: Tensor, group_size: int, *, scale_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO advantages: each reward minus its group's mean, divided by the group's std.

    Completions of one prompt are consecutive: `rewards[i * G:(i + 1) * G]` is group i. The std
    is the population std (correction 0) of the group; `scale_by_std=False` only centres
    (Dr. GRPO).

    Args:
        rewards: [P * G] rewards.
        group_size: completions per prompt G.
        scale_by_std: divide by `std + eps`.
        eps: added to the std so a group of equal rewards gives advantages of 0.

    Returns:
        [P * G] advantages.
    """
    if rewards.dim() != 1 or group_size <= 0 or rewards.shape[0] % group_size != 0:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    grouped = rewards.float().reshape(-1, group_size)  # (P, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (grouped.std(dim=1, correction=0, keepdim=True) + eps)
    return centred.reshape(-1)


class PolicyLoss(NamedTuple):
    """Summed policy loss and diagnostics.

    Attributes:
        loss_sum: 0-d, summed over tokens ("token") or over sequences ("sequence").
        num_units: 0-d int64, the tokens or sequences in the sum (normalise by the step's total).
        clip_fraction: 0-d, fraction of real tokens whose ratio was clipped (detached).
        kl_mean: 0-d, mean k3 KL to the reference over real tokens (detached; 0 without one).
    """

    loss_sum: Tensor
    num_units: Tensor
    clip_fraction: Tensor
    kl_mean: Tensor


def k3_kl(logprobs: Tensor, reference_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimator of KL(policy || reference): `exp(q - p) - (q - p) - 1` (≥ 0).

    Args:
        logprobs: [B, T] policy log-probs of the sampled tokens.
        reference_logprobs: [B, T] reference log-probs of the same tokens.
    """
    delta = reference_logprobs - logprobs
    return torch.exp(delta) - delta - 1.0


def policy_gradient_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    reference_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    aggregation: Aggregation = "token",
) -> PolicyLoss:
    """PPO-clip / GRPO surrogate loss, per token, with an optional k3 KL penalty to a reference.

    Per token: `-min(ρ A, clip(ρ, 1 - ε, 1 + ε_high) A) + kl_coef * k3`, with
    `ρ = exp(logprobs - old_logprobs)`. Aggregation:

    - `"token"`: sum over all real tokens, `num_units` = number of real tokens (DAPO's
      token-level normalisation once divided by the step's total token count);
    - `"sequence"`: each sequence's mean over its real tokens, summed over sequences,
      `num_units` = number of sequences (the original GRPO normalisation).

    Args:
        logprobs: [B, T] log-probs of the sampled tokens under the current policy.
        old_logprobs: [B, T] log-probs under the policy that sampled them (detached).
        advantages: [B] per-sequence advantages (e.g. `group_advantages`).
        mask: [B, T] 1 for completion tokens that are trained, 0 for prompt and padding.
        clip_eps: lower clip range ε.
        clip_eps_high: upper clip range (DAPO's clip-higher); defaults to `clip_eps`.
        reference_logprobs: [B, T] reference-model log-probs; required when `kl_coef > 0`.
        kl_coef: weight β of the KL penalty.
        aggregation: `"token"` or `"sequence"`.
    """
    if not (logprobs.shape == old_logprobs.shape == mask.shape) or logprobs.dim() != 2:
        raise ValueError(
            "logprobs, old_logprobs and mask must share one shape [B, T], got "
            f"{tuple(logprobs.shape)}, {tuple(old_logprobs.shape)}, {tuple(mask.shape)}"
        )
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"advantages must be [B]={tuple(logprobs.shape[:1])}, got {tuple(advantages.shape)}"
        )
    if aggregation not in ("token", "sequence"):
        raise ValueError(f"aggregation must be 'token' or 'sequence', got {aggregation!r}")
    if kl_coef > 0 and reference_logprobs is None:
        raise ValueError("kl_coef > 0 needs reference_logprobs [B, T]")
    high = clip_eps if clip_eps_high is None else clip_eps_high
    mask = mask.to(logprobs.dtype)
    adv = advantages.to(logprobs.dtype).unsqueeze(1)  # (B, 1)
    ratio = torch.exp(logprobs - old_logprobs.detach())  # (B, T)
    clipped_ratio = ratio.clamp(1.0 - clip_eps, 1.0 + high)
    per_token = -torch.minimum(ratio * adv, clipped_ratio * adv)
    num_tokens = mask.sum()
    if reference_logprobs is not None:
        kl = k3_kl(logprobs, reference_logprobs.detach())
        per_token = per_token + kl_coef * kl
        kl_mean = (kl.detach() * mask).sum() / num_tokens.clamp(min=1)
    else:
        kl_mean = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    was_clipped = (ratio.detach() != clipped_ratio.detach()).to(mask.dtype)
    clip_fraction = (was_clipped * mask).sum() / num_tokens.clamp(min=1)
    if aggregation == "token":
        loss_sum = (per_token * mask).sum()
        num_units = num_tokens.to(torch.int64)
    else:
        per_sequence = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
        loss_sum = per_sequence.sum()
        num_units = torch.tensor(logprobs.shape[0], device=logprobs.device)
    return PolicyLoss(loss_sum, num_units, clip_fraction, kl_mean)
