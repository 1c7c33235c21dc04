"""Sampling a rollout batch and scoring it: groups of completions, rewards, advantages, metrics.

    scored = sample_and_score(backend, tokenizer, prompts, answers, group_size=8,
                              sampling=SamplingSettings(64), seed=sampling_seed(0, step, rank),
                              rewards=[weighted_reward(exact_answer)], scale_rewards=True,
                              pad_id=tokenizer.pad_id)
    metrics = rollout_metrics(scored, group_size=8, reduce=None)  # reward/mean, ...
    update = policy_backward(model, scored.batch.to(device), ...)

``reduce`` arguments sum a float64 tensor over data-parallel ranks (e.g. tune-train's
``distributed_sum()``); None means one process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from tune.train.rl.backend import GenerationBackend, SamplingSettings
from tune.train.rl.rewards import (
    RewardFunction,
    RewardInputs,
    WeightedReward,
    exact_answer,
    score_completions,
)
from tune.train.steps.grpo import RolloutBatch, rollout_advantages, rollout_tensors

Reduce = Callable[[torch.Tensor], torch.Tensor]


class TextDecoder(Protocol):
    """Turns token ids into text (tune-data's ``Tokenizer`` is one)."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...


def prompt_rows(batch: Mapping[str, Any]) -> list[list[int]]:
    """The unpadded prompt token lists of a padded prompt batch.

    Args:
        batch: ``tokens`` and ``attention_mask`` [B, T] (1 on real tokens), as tune-data's
            ``collate_prompts`` makes them.
    """
    missing = [k for k in ("tokens", "attention_mask") if k not in batch]
    if missing:
        raise KeyError(f"prompt batch lacks {missing}; it has {sorted(batch)}")
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
    tokenizer: TextDecoder,
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
        tokenizer: decodes prompts and completions (special tokens removed) for the rewards.
        prompts: P prompt token lists.
        answers: P reference answers.
        group_size: G completions per prompt (rows ``i*G:(i+1)*G`` are prompt i's group).
        sampling: sampling settings.
        seed: this call's sampling seed.
        rewards: weighted reward functions.
        scale_rewards: divide by the group's std.
        pad_id: padding id of the training batch.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    repeated = [list(p) for p in prompts for _ in range(group_size)]
    completions = backend.generate(repeated, sampling, seed)
    if len(completions) != len(repeated):
        raise ValueError(
            f"{type(backend).__name__}.generate returned {len(completions)} completions for "
            f"{len(repeated)} rows ({len(prompts)} prompts x group_size {group_size})"
        )
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
    """Rollout metrics over all ranks.

    ``reward/mean`` and ``reward/std`` of the total, ``reward/<name>/mean|std`` of each
    function, ``completion_length`` (mean tokens) and ``flat_group_fraction`` (groups whose
    completions all scored the same: no learning signal). Stds are population stds.
    """
    metrics: dict[str, float] = {}
    metrics["reward/mean"], metrics["reward/std"] = _mean_std(scored.total_reward, reduce)
    for name, values in scored.rewards.items():
        metrics[f"reward/{name}/mean"], metrics[f"reward/{name}/std"] = _mean_std(values, reduce)
    metrics["completion_length"], _ = _mean_std(scored.completion_tokens, reduce)
    grouped = scored.total_reward.reshape(-1, group_size)
    flat = (grouped.max(dim=1).values == grouped.min(dim=1).values).float()
    metrics["flat_group_fraction"], _ = _mean_std(flat, reduce)
    return metrics


def update_metrics(
    updates: Sequence[Mapping[str, float]], reduce: Reduce | None, ranks: int
) -> dict[str, float]:
    """Means over the optimizer steps taken on one rollout batch.

    ``loss``, ``grad_norm`` and ``lr`` are global already; ``clip_fraction`` and ``kl`` are
    per-rank values (``policy_backward``), averaged over the ``ranks`` data-parallel ranks.
    """
    n = len(updates)
    mean = {k: sum(u[k] for u in updates) / n for k in ("loss", "grad_norm", "lr")}
    local = torch.tensor([sum(u[k] for u in updates) / n for k in ("clip_fraction", "kl")])
    if reduce is not None:
        local = reduce(local.double()) / ranks
    mean["clip_fraction"], mean["kl"] = float(local[0]), float(local[1])
    return mean


def rollout_throughput(
    trained: torch.Tensor,
    completion_tokens: torch.Tensor,
    reduce: Reduce | None,
    *,
    generation_s: float,
    training_s: float,
    updates: int,
) -> dict[str, float]:
    """Generation and training tokens/s of a GRPO step over all ranks.

    Args:
        trained: [N, T] bool, the non-padding tokens of the rollout batch.
        completion_tokens: [N] completion lengths.
        generation_s: this rank's wall time sampling.
        training_s: this rank's wall time updating.
        updates: optimizer steps taken on the batch.
    """
    counts = torch.tensor([float(trained.sum()), float(completion_tokens.sum())])
    counts = reduce(counts) if reduce is not None else counts
    return {
        "generation_tokens_per_s": float(counts[1]) / max(generation_s, 1e-9),
        "training_tokens_per_s": float(counts[0]) * updates / max(training_s, 1e-9),
    }


def held_out_accuracy(
    backend: GenerationBackend,
    tokenizer: TextDecoder,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[str],
    *,
    sampling: SamplingSettings,
    batch_size: int,
    reduce: Reduce | None,
    seed: int = 0,
    correct: RewardFunction = exact_answer,
) -> float:
    """Accuracy of one completion per held-out prompt, over all ranks.

    Every rank must pass the same number of prompts (sharded models decode in lockstep).

    Args:
        backend: the generator.
        tokenizer: decodes completions.
        prompts: this rank's prompt token lists.
        answers: their reference answers.
        sampling: greedy (temperature 0) or sampled decoding.
        batch_size: prompts per generate call.
        reduce: sums over ranks (None: one process).
        seed: the sampling seed of the batch at offset ``start`` is ``seed + start``.
        correct: 1.0 for a right completion, 0.0 otherwise (prompt texts are left empty).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    right = 0.0
    for start in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[start : start + batch_size]]
        completions = backend.generate(chunk, sampling, seed + start)
        inputs = RewardInputs(
            prompts=[""] * len(chunk),
            completions=[tokenizer.decode(c, skip_special_tokens=True) for c in completions],
            answers=list(answers[start : start + batch_size]),
            completion_tokens=[len(c) for c in completions],
        )
        right += sum(correct(inputs))
    totals = torch.tensor([right, float(len(prompts))], dtype=torch.float64)
    if reduce is not None:
        totals = reduce(totals)
    return float(totals[0]) / max(float(totals[1]), 1.0)
