"""The ``sft`` recipe: supervised fine-tuning (full, LoRA, QLoRA, DoRA; one device or many)."""

from tune.recipes.recipe import Recipe
from tune.recipes.sft.config import SFTConfig

recipe = Recipe.bundled(
    SFTConfig, "supervised fine-tuning: full, LoRA, QLoRA, DoRA; one device or many"
)
__all__ = ["SFTConfig", "recipe"]
