"""The closed config schema of the ``grpo`` recipe (every key, its type and default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tune.recipes.common.config_sections import (
    CheckpointConfig,
    LRScheduleConfig,
    OptimizationConfig,
    OptimizerConfig,
    TrainingRecipeConfig,
)


@dataclass
class PromptDataConfig:
    """Prompts with reference answers.

    Args:
        source: a local file (json/jsonl/parquet/csv) or a Hub dataset name with a prompt and an
            answer column.
        column_map: expected name (``prompt``, ``answer``, ``system``) -> dataset column.
        split: the training split.
        validation_fraction: hold out this fraction of the prompts for held-out accuracy.
        validation_source: a separate file of held-out prompts (exclusive with the fraction).
        max_prompt_len: longer prompts are skipped (counted).
        shuffle: shuffle the prompts each epoch.
        seed: shuffling and hold-out seed.
    """

    source: str
    column_map: dict[str, str] = field(default_factory=dict)
    split: str = "train"
    validation_fraction: float = 0.0
    validation_source: str | None = None
    max_prompt_len: int = 512
    shuffle: bool = True
    seed: int = 0


@dataclass
class RolloutConfig:
    """Sampling groups of completions.

    Args:
        prompts_per_step: prompts per rollout batch over all ranks (each rank samples for its
            share).
        group_size: completions sampled per prompt (G); advantages are normalised in a group.
        max_new_tokens: most tokens per completion.
        temperature: sampling temperature (> 0).
        top_p: nucleus threshold (null: off).
        top_k: top-k filter (null: off).
        stop_token_ids: extra ids that end a completion (besides the tokenizer's EOS).
        backend: a ``tune.generation_backends`` name (``builtin``; ``int8``: decode from an int8
            copy of the policy, remade after every update, one process) or an allowed import.
        backend_options: keyword arguments of the backend (e.g. ``batch_size``).
    """

    prompts_per_step: int = 8
    group_size: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    backend: str = "builtin"
    backend_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardConfig:
    """One reward function.

    Args:
        name: a bundled reward (``exact_answer``, ``answer_format``, ``length_penalty``), a
            ``tune.rewards`` entry point, or an allowed dotted import.
        weight: its factor in the total reward.
        options: keyword arguments given to the function.
    """

    name: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


def _default_rewards() -> list[RewardConfig]:
    return [RewardConfig("exact_answer", 1.0), RewardConfig("answer_format", 0.1)]


@dataclass
class GRPOTrainingConfig(OptimizationConfig):
    """The optimisation.

    Args:
        max_steps: rollout batches to sample and learn from.
        updates_per_rollout: optimizer steps on each rollout batch (old log-probs are computed
            once per batch when > 1).
        micro_batch_size: sequences per forward/backward on one rank.
        clip_eps: lower clip range of the probability ratio.
        clip_eps_high: upper clip range (null: ``clip_eps``).
        kl_coef: weight of the KL penalty to the reference (0: no reference; under adapters the
            reference is the policy with adapters disabled, otherwise a frozen copy).
        loss_aggregation: ``token`` (mean over every completion token of the step) or
            ``sequence`` (mean of per-sequence means).
        scale_rewards: divide group-centred rewards by the group's std.
    """

    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-5))
    lr_schedule: LRScheduleConfig = field(default_factory=lambda: LRScheduleConfig(name="constant"))
    max_steps: int = 100
    updates_per_rollout: int = 1
    micro_batch_size: int = 8
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    kl_coef: float = 0.0
    loss_aggregation: Literal["token", "sequence"] = "token"
    scale_rewards: bool = True


@dataclass
class HeldOutEvalConfig:
    """Held-out exact-match accuracy (``exact_answer`` reward of one completion per prompt).

    Args:
        every_n_steps: interval (null: only before and after training).
        max_prompts: held-out prompts used (null: all).
        batch_size: prompts decoded together on one rank.
        before_training: also evaluate at step 0.
        temperature: 0 for greedy completions; > 0 samples them (fixed seed, ``rollout.top_p``
            and ``top_k``), measuring the accuracy of the sampling policy itself.
    """

    every_n_steps: int | None = None
    max_prompts: int | None = None
    batch_size: int = 64
    before_training: bool = True
    temperature: float = 0.0


@dataclass(kw_only=True)
class GRPOConfig(TrainingRecipeConfig):
    """GRPO with verifiable rewards (tensor parallel is not supported): everything one run needs.

    Args:
        data: prompts with reference answers.
        rollout: sampling.
        rewards: the reward functions, summed with their weights.
        training: the optimisation.
        eval: held-out accuracy.
    """

    data: PromptDataConfig
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: list[RewardConfig] = field(default_factory=_default_rewards)
    training: GRPOTrainingConfig = field(default_factory=GRPOTrainingConfig)
    recipe: str = "grpo"
    checkpointing: CheckpointConfig = field(
        default_factory=lambda: CheckpointConfig(output_dir="outputs/grpo")
    )
    eval: HeldOutEvalConfig = field(default_factory=HeldOutEvalConfig)
