"""The ``grpo`` recipe: reinforcement learning with verifiable rewards (full or adapters; one
device or many)."""

from tune.recipes.grpo.config import (
    GRPOConfig,
    GRPOTrainingConfig,
    HeldOutEvalConfig,
    PromptDataConfig,
    RewardConfig,
    RolloutConfig,
)
from tune.recipes.recipe import Recipe

# The loop module is imported only when the recipe runs: `tune ls/validate` stay light.
recipe = Recipe(
    name="grpo",
    config_class=GRPOConfig,
    run="tune.recipes.grpo.loop:run",
    description="GRPO with verifiable rewards: groups of samples, clipped policy loss; LoRA or full",
)

__all__ = [
    "GRPOConfig",
    "GRPOTrainingConfig",
    "HeldOutEvalConfig",
    "PromptDataConfig",
    "RewardConfig",
    "RolloutConfig",
    "recipe",
]
