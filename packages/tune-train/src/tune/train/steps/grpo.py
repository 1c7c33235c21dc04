"""GRPO's training step: rollouts as a padded batch, advantages, and one policy update.

Rollouts of one prompt are consecutive (a group of G). Each sequence is its prompt followed by
its completion, right-padded; ``labels`` hold the completion tokens (aligned: ``labels[t]`` is
predicted at position ``t``) and -100 elsewhere, so only completion tokens are trained.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn

from tune.train.accumulation import GradientAccumulator
from tune.train.losses import (
    IGNORE_INDEX,
    group_advantages,
    policy_gradient_loss,
    token_logprobs,
)


@dataclass(frozen=True)
class PolicyLossSettings:
    """The clipped objective.

    Args:
        clip_eps: lower clip range of the ratio.
        clip_eps_high: upper clip range (None: ``clip_eps``).
        kl_coef: weight of the k3 KL to the reference (0: no reference pass).
        aggregation: ``token`` (mean over all completion tokens of the step) or ``sequence``
            (mean of per-sequence means).
    """

    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    kl_coef: float = 0.0
    aggregation: Literal["token", "sequence"] = "token"


@dataclass(frozen=True)
class RolloutBatch:
    """N sequences (prompt + completion) ready for the loss.

    Args:
        tokens: [N, T] int64, right-padded.
        labels: [N, T] int64, completion tokens aligned with ``tokens``, -100 elsewhere.
        advantages: [N] float32.
        old_logprobs: [N, T] log-probs under the sampling policy (None: the current policy's,
            detached, which is exact while the weights have not moved since sampling).
        reference_logprobs: [N, T] reference log-probs (None: no KL term).
    """

    tokens: torch.Tensor
    labels: torch.Tensor
    advantages: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    reference_logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def slice(self, start: int, stop: int) -> RolloutBatch:
        """Rows ``start:stop``."""

        def part(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[start:stop]

        return RolloutBatch(
            self.tokens[start:stop],
            self.labels[start:stop],
            self.advantages[start:stop],
            part(self.old_logprobs),
            part(self.reference_logprobs),
        )

    def to(self, device: torch.device) -> RolloutBatch:
        """The batch on ``device``."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return RolloutBatch(
            self.tokens.to(device),
            self.labels.to(device),
            self.advantages.to(device),
            move(self.old_logprobs),
            move(self.reference_logprobs),
        )


def sampling_seed(seed: int, step: int, rank: int) -> int:
    """The sampling seed of rollout batch ``step`` on ``rank``: a pure function of the three, so
    a resumed run samples exactly what the uninterrupted one did."""
    digest = hashlib.sha256(f"grpo:{seed}:{step}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def rollout_tensors(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``tokens`` and ``labels`` [N, T] of prompt + completion rows (right-padded).

    Args:
        prompts: N prompt token lists (non-empty).
        completions: N completion token lists (may be empty: nothing is trained for that row).
        pad_id: padding id.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    length = max(len(p) + len(c) for p, c in zip(prompts, completions, strict=True))
    tokens = torch.full((len(prompts), length), pad_id, dtype=torch.long)
    labels = torch.full((len(prompts), length), IGNORE_INDEX, dtype=torch.long)
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        if not prompt:
            raise ValueError(f"rollout {i}: empty prompt")
        row = list(prompt) + list(completion)
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        if completion:
            # Completion token k (at position len(prompt)+k) is predicted at the position before.
            start = len(prompt) - 1
            labels[i, start : start + len(completion)] = torch.tensor(completion, dtype=torch.long)
    return tokens, labels


def rollout_advantages(
    rewards: torch.Tensor, group_size: int, *, scale_by_std: bool
) -> torch.Tensor:
    """Advantages [N] of total rewards [N] normalised within each group of ``group_size``."""
    return group_advantages(rewards, group_size, scale_by_std=scale_by_std)


def completion_logprobs(
    model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Per-token log-probs [N, T] of ``labels`` under ``model`` (0 where labels are -100)."""
    logits = model(tokens)  # (N, T, V)
    return token_logprobs(logits, labels)


@torch.no_grad()
def batched_logprobs(
    model: nn.Module, tokens: torch.Tensor, labels: torch.Tensor, micro_batch_size: int
) -> torch.Tensor:
    """``completion_logprobs`` without gradients, ``micro_batch_size`` rows at a time, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        parts = [
            completion_logprobs(
                model, tokens[i : i + micro_batch_size], labels[i : i + micro_batch_size]
            )
            for i in range(0, tokens.shape[0], micro_batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def micro_batch_policy_loss(model: nn.Module, batch: RolloutBatch, settings: PolicyLossSettings):
    """``policy_gradient_loss`` of one micro-batch under the current policy (a ``PolicyLoss``)."""
    logprobs = completion_logprobs(model, batch.tokens, batch.labels)
    old = batch.old_logprobs if batch.old_logprobs is not None else logprobs.detach()
    return policy_gradient_loss(
        logprobs,
        old,
        batch.advantages,
        batch.labels != IGNORE_INDEX,
        clip_eps=settings.clip_eps,
        clip_eps_high=settings.clip_eps_high,
        reference_logprobs=batch.reference_logprobs,
        kl_coef=settings.kl_coef,
        aggregation=settings.aggregation,
    )


def loss_units(batch: RolloutBatch, aggregation: str) -> torch.Tensor:
    """What the loss sums over: completion tokens (``token``) or sequences (``sequence``)."""
    if aggregation == "token":
        return (batch.labels != IGNORE_INDEX).sum()
    return torch.tensor(len(batch), dtype=torch.int64)


def policy_backward(
    model: nn.Module,
    batch: RolloutBatch,
    *,
    settings: PolicyLossSettings,
    micro_batch_size: int,
    accumulator: GradientAccumulator,
    before_micro_batch: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Forward and backward the whole rollout batch in micro-batches; gradients are left for the step.

    The loss is normalised by the units (tokens or sequences) of the whole batch over all ranks
    (``accumulator``), so micro-batch and world sizes do not change it.

    Args:
        model: the policy.
        batch: this rank's rollouts.
        settings: the clipped objective.
        micro_batch_size: rows per forward.
        accumulator: token/sequence-normalised accumulation (with the data-parallel reduce).
        before_micro_batch: called with (index, count) before each micro-batch (gradient sync).

    Returns:
        ``loss`` (global mean), ``num_units``, ``clip_fraction`` and ``kl`` (means over this
        rank's completion tokens).
    """
    parts = [batch.slice(i, i + micro_batch_size) for i in range(0, len(batch), micro_batch_size)]
    accumulator.start_step([loss_units(p, settings.aggregation) for p in parts])
    clipped = torch.zeros((), dtype=torch.float64)
    kl = torch.zeros((), dtype=torch.float64)
    tokens = 0
    for i, part in enumerate(parts):
        if before_micro_batch is not None:
            before_micro_batch(i, len(parts))
        loss = micro_batch_policy_loss(model, part, settings)
        accumulator.scale(loss).backward()
        n = int((part.labels != IGNORE_INDEX).sum())
        clipped += float(loss.clip_fraction) * n
        kl += float(loss.kl_mean) * n
        tokens += n
    step = accumulator.finish_step()
    return {
        "loss": step["loss"],
        "num_units": step["num_tokens"],
        "clip_fraction": float(clipped) / max(tokens, 1),
        "kl": float(kl) / max(tokens, 1),
    }


def with_logprobs(
    batch: RolloutBatch, *, old: torch.Tensor | None, reference: torch.Tensor | None
) -> RolloutBatch:
    """``batch`` with its old and reference log-probs set."""
    return replace(batch, old_logprobs=old, reference_logprobs=reference)
