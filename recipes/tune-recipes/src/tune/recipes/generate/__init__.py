"""The ``generate`` recipe: completions from a base, merged, or base + adapter checkpoint."""

from tune.recipes.generate.config import (
    GenerateConfig,
    GenerateModelConfig,
    GenerateOutputConfig,
    GenerateTokenizerConfig,
    PromptsConfig,
    SamplingConfig,
)
from tune.recipes.recipe import Recipe

# The loop module is imported only when the recipe runs: `tune ls/validate` stay light.
recipe = Recipe(
    name="generate",
    config_class=GenerateConfig,
    run="tune.recipes.generate.loop:run",
    description="generate from a checkpoint (base, merged, or base + PEFT adapter)",
)

__all__ = [
    "GenerateConfig",
    "GenerateModelConfig",
    "GenerateOutputConfig",
    "GenerateTokenizerConfig",
    "PromptsConfig",
    "SamplingConfig",
    "recipe",
]
