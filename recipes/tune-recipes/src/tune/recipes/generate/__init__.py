"""The ``generate`` recipe: completions from a base, merged, or base + adapter checkpoint."""

from tune.recipes.generate.config import GenerateConfig
from tune.recipes.recipe import Recipe

recipe = Recipe.bundled(
    GenerateConfig, "generate from a checkpoint (base, merged, or base + PEFT adapter)"
)
__all__ = ["GenerateConfig", "recipe"]
