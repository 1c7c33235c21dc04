"""The ``distill`` recipe: knowledge distillation of a frozen teacher into a student."""

from tune.recipes.distill.config import DistillConfig
from tune.recipes.recipe import Recipe

recipe = Recipe.bundled(
    DistillConfig,
    "knowledge distillation (forward/reverse/symmetric KL + CE); full or LoRA student",
)
__all__ = ["DistillConfig", "recipe"]
