"""Sampling a rollout batch and scoring it: groups of completions, rewards, advantages, metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tune.data import Tokenizer
from tune.recipes.common.reward_registry import WeightedReward, score_completions
from tune.recipes.common.rollout_backend import GenerationBackend, SamplingSettings
from tune.train.steps.grpo import (
    RolloutBatch,
    rollout_advantages,
    rollout_tensors,
)
from tune.train.steps.rewards import RewardInputs, exact_answer

Reduce = Callable[[torch.Tensor], torch.Tensor]


def prompt_rows(batch: dict) -> list[list[int]]:  # type: ignore[type-arg]
    """The unpadded prompt token lists of a ``collate_prompts`` batch."""
    return [
        row[mask.bool()].tolist()
        for row, mask in zip(batch["tokens"], batch["attention_mask"], strict=True)
    ]


@dataclass(frozen=True)
class ScoredRollouts:
    """One rank's rollouts with their rewards.

    Args:
        batch: tokens, labels and advantages [N, ...] (old/reference log-probs not yet set).
        total_reward: [N] weighted reward.
        rewards: each function's [N] raw rewards.
        completion_tokens: [N] completion lengths.
        completions: N completion texts.
    """

    batch: RolloutBatch
    total_reward: torch.Tensor
    rewards: dict[str, torch.Tensor]
    completion_tokens: torch.Tensor
    completions: list[str]


def sample_and_score(
    backend: GenerationBackend,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[str],
    *,
    group_size: int,
    sampling: SamplingSettings,
    seed: int,
    rewards: Sequence[WeightedReward],
    scale_rewards: bool,
    pad_id: int,
) -> ScoredRollouts:
    """Sample ``group_size`` completions per prompt, score them and normalise in each group.

    Args:
        backend: the generator.
        tokenizer: decodes completions for the reward functions.
        prompts: P prompt token lists.
        answers: P reference answers.
        group_size: G completions per prompt (rows ``i*G:(i+1)*G`` are prompt i's group).
        sampling: sampling settings.
        seed: this call's sampling seed.
        rewards: weighted reward functions.
        scale_rewards: divide by the group's std.
        pad_id: padding id of the training batch.
    """
    repeated = [list(p) for p in prompts for _ in range(group_size)]
    completions = backend.generate(repeated, sampling, seed)
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    prompt_texts = [tokenizer.decode(p) for p in prompts]
    inputs = RewardInputs(
        prompts=[t for t in prompt_texts for _ in range(group_size)],
        completions=texts,
        answers=[a for a in answers for _ in range(group_size)],
        completion_tokens=[len(c) for c in completions],
    )
    total, each = score_completions(rewards, inputs)
    tokens, labels = rollout_tensors(repeated, completions, pad_id)
    advantages = rollout_advantages(total, group_size, scale_by_std=scale_rewards)
    return ScoredRollouts(
        RolloutBatch(tokens, labels, advantages),
        total,
        each,
        torch.tensor(inputs.completion_tokens, dtype=torch.float32),
        texts,
    )


def _mean_std(values: torch.Tensor, reduce: Reduce | None) -> tuple[float, float]:
    stats = torch.stack([values.sum(), (values**2).sum(), torch.tensor(float(values.numel()))])
    stats = stats.double()
    if reduce is not None:
        stats = reduce(stats)
    n = max(float(stats[2]), 1.0)
    mean = float(stats[0]) / n
    return mean, max(float(stats[1]) / n - mean * mean, 0.0) ** 0.5


def rollout_metrics(
    scored: ScoredRollouts, group_size: int, reduce: Reduce | None
) -> dict[str, float]:
    """Mean/std of the total and of each reward function, completion length, flat groups
    (every completion of a prompt scored the same: no learning signal), over all ranks."""
    metrics: dict[str, float] = {}
    metrics["reward/mean"], metrics["reward/std"] = _mean_std(scored.total_reward, reduce)
    for name, values in scored.rewards.items():
        metrics[f"reward/{name}/mean"], metrics[f"reward/{name}/std"] = _mean_std(values, reduce)
    metrics["completion_length"], _ = _mean_std(scored.completion_tokens, reduce)
    grouped = scored.total_reward.reshape(-1, group_size)
    flat = (grouped.max(dim=1).values == grouped.min(dim=1).values).float()
    metrics["flat_group_fraction"], _ = _mean_std(flat, reduce)
    return metrics


def held_out_accuracy(
    backend: GenerationBackend,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[str],
    *,
    sampling: SamplingSettings,
    batch_size: int,
    reduce: Reduce | None,
    seed: int = 0,
) -> float:
    """Exact-match accuracy of one completion per held-out prompt, over all ranks.

    Every rank must pass the same number of prompts (sharded models decode in lockstep).

    Args:
        backend: the generator.
        tokenizer: decodes completions.
        prompts: this rank's prompt token lists.
        answers: their reference answers.
        sampling: greedy (temperature 0) or sampled decoding.
        batch_size: prompts per generate call.
        reduce: sums over ranks (None: one process).
        seed: sampling seed of each batch.
    """
    correct = 0.0
    for start in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[start : start + batch_size]]
        completions = backend.generate(chunk, sampling, seed + start)
        texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
        inputs = RewardInputs(
            prompts=[""] * len(chunk),
            completions=texts,
            answers=list(answers[start : start + batch_size]),
            completion_tokens=[len(c) for c in completions],
        )
        correct += sum(exact_answer(inputs))
    totals = torch.tensor([correct, float(len(prompts))], dtype=torch.float64)
    if reduce is not None:
        totals = reduce(totals)
    return float(totals[0]) / max(float(totals[1]), 1.0)
