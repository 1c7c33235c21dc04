"""Preference losses from per-sequence log-probabilities: DPO, IPO, SimPO, ORPO, KTO, reference-free DPO.

Every loss returns per-example values ([B]) so the caller can sum them and normalise by the
number of pairs of the whole optimizer step (`tune.train.GradientAccumulator` with pair counts).
Log-probabilities come from `sequence_logprobs` (summed for DPO/KTO, length-averaged for
SimPO/ORPO and, as its paper recommends, IPO).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class PreferenceLoss(NamedTuple):
    """Per-example preference loss and the implied rewards (detached, for logging).

    Attributes:
        losses: [B] loss per pair (or per example for KTO).
        chosen_rewards: [B] reward of the chosen response (0 where not applicable).
        rejected_rewards: [B] reward of the rejected response (0 where not applicable).
    """

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"per-sequence log-probs must share one shape [B], got {shapes}")


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """Direct Preference Optimization (Rafailov et al. 2023), with optional conservative smoothing.

    `h = (pc - pr) - (rc - rr)`; loss = `-(1 - ls) log σ(β h) - ls log σ(-β h)`.

    Args:
        policy_chosen_logps: [B] summed log-probs of the chosen responses under the policy.
        policy_rejected_logps: [B] same for the rejected responses.
        reference_chosen_logps: [B] chosen log-probs under the frozen reference model.
        reference_rejected_logps: [B] rejected log-probs under the reference model.
        beta: inverse temperature of the implicit reward.
        label_smoothing: probability that a preference label is flipped (cDPO), in [0, 0.5).
    """
    _check_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps,
    )
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_ratio = policy_chosen_logps - reference_chosen_logps
    rejected_ratio = policy_rejected_logps - reference_rejected_logps
    margin = beta * (chosen_ratio - rejected_ratio)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(
        -margin
    )
    return PreferenceLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def reference_free_dpo_loss(
    policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, *, beta: float = 0.1
) -> PreferenceLoss:
    """DPO with a uniform reference (no reference model): `-log σ(β (pc - pr))`.

    Args:
        policy_chosen_logps: [B] summed log-probs of the chosen responses.
        policy_rejected_logps: [B] summed log-probs of the rejected responses.
        beta: inverse temperature.
    """
    _check_same_shape(chosen=policy_chosen_logps, rejected=policy_rejected_logps)
    losses = -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
    return PreferenceLoss(
        losses, beta * policy_chosen_logps.detach(), beta * policy_rejected_logps.detach()
    )


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    reference_chosen_logps: Tensor,
    reference_rejected_logps: Tensor,
    *,
    tau: float = 0.1,
) -> PreferenceLoss:
    """Identity Preference Optimisation (Azar et al. 2023): `(h - 1 / (2 τ))²`.

    `h = (pc - rc) - (pr - rr)`; pass length-averaged log-probs as the IPO paper does.

    Args:
        policy_chosen_logps: [B] chosen log-probs under the policy.
        policy_rejected_logps: [B] rejected log-probs under the policy.
        reference_chosen_logps: [B] chosen log-probs under the reference.
        reference_rejected_logps: [B] rejected log-probs under the reference.
        tau: regularisation strength (the target margin is `1 / (2 τ)`).
    """
    _check_same_shape(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps,
    )
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    chosen_ratio = policy_chosen_logps - reference_chosen_logps
    rejected_ratio = policy_rejected_logps - reference_rejected_logps
    losses = (chosen_ratio - rejected_ratio - 1.0 / (2.0 * tau)).square()
    return PreferenceLoss(losses, tau * chosen_ratio.detach(), tau * rejected_ratio.detach())


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
) -> PreferenceLoss:
    """SimPO (Meng et al. 2024): `-log σ(β (ac - ar) - γ)` on length-averaged log-probs.

    Args:
        policy_chosen_logps: [B] length-averaged log-probs of the chosen responses.
        policy_rejected_logps: [B] length-averaged log-probs of the rejected responses.
        beta: reward scale.
        gamma: target reward margin (the paper's γ, not γ/β).
    """
    _check_same_shape(chosen=policy_chosen_logps, rejected=policy_rejected_logps)
    chosen_rewards = beta * policy_chosen_logps
    rejected_rewards = beta * policy_rejected_logps
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return PreferenceLoss(losses, chosen_rewards.detach(), rejected_rewards.detach())


def orpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    *,
    lambda_: float = 0.1,
    chosen_nll: Tensor | None = None,
) -> PreferenceLoss:
    """ORPO (Hong et al. 2024): `NLL(chosen) - λ log σ(log odds(c) - log odds(r))`.

    `log odds(y) = a - log(1 - exp(a))` for a length-averaged log-prob `a < 0`.

    Args:
        policy_chosen_logps: [B] length-averaged log-probs of the chosen responses (< 0).
        policy_rejected_logps: [B] length-averaged log-probs of the rejected responses (< 0).
        lambda_: weight of the odds-ratio term.
        chosen_nll: [B] SFT loss on the chosen responses; defaults to `-policy_chosen_logps`.
    """
    _check_same_shape(chosen=policy_chosen_logps, rejected=policy_rejected_logps)
    # log(1 - exp(a)) = log(-expm1(a)), stable for a close to 0.
    log_odds = (policy_chosen_logps - policy_rejected_logps) - (
        torch.log(-torch.expm1(policy_chosen_logps))
        - torch.log(-torch.expm1(policy_rejected_logps))
    )
    nll = -policy_chosen_logps if chosen_nll is None else chosen_nll
    losses = nll - lambda_ * F.logsigmoid(log_odds)
    return PreferenceLoss(
        losses, lambda_ * policy_chosen_logps.detach(), lambda_ * policy_rejected_logps.detach()
    )


def kto_reference_point(policy_kl_logps: Tensor, reference_kl_logps: Tensor) -> Tensor:
    """KTO's reference point z0: the batch mean of `policy - reference` log-probs on mismatched
    (prompt, completion) pairs, clamped at 0 and detached.

    Average it across data-parallel ranks before use if every rank should share one z0.

    Args:
        policy_kl_logps: [B] summed log-probs of mismatched completions under the policy.
        reference_kl_logps: [B] same under the reference model.

    Returns:
        0-d tensor.
    """
    _check_same_shape(policy=policy_kl_logps, reference=reference_kl_logps)
    return (policy_kl_logps - reference_kl_logps).mean().clamp(min=0).detach()


def kto_loss(
    policy_logps: Tensor,
    reference_logps: Tensor,
    desirable: Tensor,
    reference_point: Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> PreferenceLoss:
    """Kahneman-Tversky Optimisation (Ethayarajh et al. 2024) on unpaired examples.

    With `r = policy - reference`: desirable `w_d (1 - σ(β (r - z0)))`, undesirable
    `w_u (1 - σ(β (z0 - r)))`.

    Args:
        policy_logps: [B] summed log-probs of the completions under the policy.
        reference_logps: [B] same under the reference model.
        desirable: [B] bool, True for desirable (thumbs-up) completions.
        reference_point: 0-d z0 from `kto_reference_point` (treated as a constant).
        beta: inverse temperature.
        desirable_weight: weight `w_d` of desirable examples.
        undesirable_weight: weight `w_u` of undesirable examples.

    Returns:
        `PreferenceLoss` whose `chosen_rewards` hold `β r` on desirable examples (0 elsewhere)
        and `rejected_rewards` on undesirable ones.
    """
    _check_same_shape(policy=policy_logps, reference=reference_logps, desirable=desirable)
    if desirable.dtype != torch.bool:
        raise TypeError(f"desirable must be a bool tensor, got {desirable.dtype}")
    ratio = policy_logps - reference_logps
    z0 = reference_point.detach()
    desirable_losses = desirable_weight * (1.0 - torch.sigmoid(beta * (ratio - z0)))
    undesirable_losses = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - ratio)))
    losses = torch.where(desirable, desirable_losses, undesirable_losses)
    rewards = beta * ratio.detach()
    zeros = torch.zeros_like(rewards)
    return PreferenceLoss(
        losses, torch.where(desirable, rewards, zeros), torch.where(desirable, zeros, rewards)
    )
