"""The ``distill`` recipe: knowledge distillation of a frozen teacher into a student."""

from tune.recipes.distill.config import DistillationConfig, DistillConfig, TeacherConfig
from tune.recipes.recipe import Recipe

# The loop module is imported only when the recipe runs: `tune ls/validate` stay light.
recipe = Recipe(
    name="distill",
    config_class=DistillConfig,
    run="tune.recipes.distill.loop:run",
    description="knowledge distillation (forward/reverse/symmetric KL + CE); full or LoRA student",
)

__all__ = ["DistillConfig", "DistillationConfig", "TeacherConfig", "recipe"]
