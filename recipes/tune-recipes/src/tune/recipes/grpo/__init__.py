"""The ``grpo`` recipe: reinforcement learning with verifiable rewards (full or adapters; one
device or many)."""

from tune.recipes.grpo.config import GRPOConfig
from tune.recipes.recipe import Recipe

recipe = Recipe.bundled(
    GRPOConfig, "GRPO with verifiable rewards: groups of samples, clipped policy loss; LoRA or full"
)
__all__ = ["GRPOConfig", "recipe"]
