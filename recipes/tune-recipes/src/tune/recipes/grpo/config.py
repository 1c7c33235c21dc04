"""The closed config schema of the ``grpo`` recipe (every key, its type and default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tune.recipes.common.config_sections import (
    CheckpointConfig,
    DistributedConfig,
    LoggingConfig,
    LoRAConfig,
    LRScheduleConfig,
    ModelConfig,
    OptimizerConfig,
    TokenizerConfig,
)
from tune.recipes.config.errors import Issue
from tune.recipes.config.validation import ValidationContext


@dataclass
class PromptDataConfig:
    """Prompts with reference answers.

    Args:
        source: a local file (json/jsonl/parquet/csv) or a Hub dataset name with a prompt and an
            answer column.
        column_map: dataset column -> expected name (``prompt``, ``answer``, ``system``).
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
        backend: a ``tune.generation_backends`` name (``builtin``) or an allowed import.
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
class GRPOTrainingConfig:
    """The optimisation.

    Args:
        method: ``full``, ``lora``, ``qlora`` or ``dora``.
        lora: adapter settings (ignored for ``full``).
        max_steps: rollout batches to sample and learn from.
        updates_per_rollout: optimizer steps on each rollout batch (old log-probs are computed
            once per batch when > 1).
        micro_batch_size: sequences per forward/backward on one rank.
        optimizer: the optimizer.
        lr_schedule: the schedule (its steps are optimizer steps).
        clip_eps: lower clip range of the probability ratio.
        clip_eps_high: upper clip range (null: ``clip_eps``).
        kl_coef: weight of the KL penalty to the reference (0: no reference; under adapters the
            reference is the policy with adapters disabled, otherwise a frozen copy).
        loss_aggregation: ``token`` (mean over every completion token of the step) or
            ``sequence`` (mean of per-sequence means).
        scale_rewards: divide group-centred rewards by the group's std.
        max_grad_norm: clip the global gradient norm (null: no clipping).
        nonfinite: on a NaN/inf loss or gradient, ``raise`` or ``skip`` the step.
        seed: model-init, dropout, data-order and sampling seed.
    """

    method: Literal["full", "lora", "qlora", "dora"] = "lora"
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    max_steps: int = 100
    updates_per_rollout: int = 1
    micro_batch_size: int = 8
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=1e-5))
    lr_schedule: LRScheduleConfig = field(default_factory=lambda: LRScheduleConfig(name="constant"))
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    kl_coef: float = 0.0
    loss_aggregation: Literal["token", "sequence"] = "token"
    scale_rewards: bool = True
    max_grad_norm: float | None = 1.0
    nonfinite: Literal["raise", "skip"] = "raise"
    seed: int = 0


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


@dataclass
class GRPOConfig:
    """GRPO with verifiable rewards: everything one run needs.

    Args:
        model: the policy's checkpoint.
        data: prompts with reference answers.
        tokenizer: the tokenizer and chat template.
        rollout: sampling.
        rewards: the reward functions, summed with their weights.
        training: the optimisation.
        distributed: multi-process settings (FSDP; tensor parallel is not supported).
        checkpointing: outputs and resume.
        eval: held-out accuracy.
        logging: metrics.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        recipe: the recipe this config is for.
        allow_imports: glob patterns of dotted paths the config may import.
    """

    model: ModelConfig
    data: PromptDataConfig
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: list[RewardConfig] = field(default_factory=_default_rewards)
    training: GRPOTrainingConfig = field(default_factory=GRPOTrainingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpointing: CheckpointConfig = field(
        default_factory=lambda: CheckpointConfig(output_dir="outputs/grpo")
    )
    eval: HeldOutEvalConfig = field(default_factory=HeldOutEvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    recipe: str = "grpo"
    allow_imports: list[str] = field(default_factory=list)

    @property
    def tokenizer_dir(self) -> str:
        """``tokenizer.path``, defaulting to the checkpoint directory."""
        return self.tokenizer.path or self.model.checkpoint_dir

    def validate(self, context: ValidationContext) -> list[Issue]:
        """Range and relation checks, each issue named by its dotted key."""
        from tune.recipes.grpo.checks import check_grpo_config

        return check_grpo_config(self, context)


__all__ = [
    "GRPOConfig",
    "GRPOTrainingConfig",
    "HeldOutEvalConfig",
    "PromptDataConfig",
    "RewardConfig",
    "RolloutConfig",
]
