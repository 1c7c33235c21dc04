"""The ``sft`` recipe: supervised fine-tuning (full, LoRA, QLoRA, DoRA; one device or many)."""

from tune.recipes.common.config_sections import (
    CheckpointConfig,
    DataConfig,
    DistributedConfig,
    EvalConfig,
    LoggingConfig,
    LoRAConfig,
    LRScheduleConfig,
    ModelConfig,
    OptimizerConfig,
    TokenizerConfig,
    TrainingConfig,
)
from tune.recipes.recipe import Recipe
from tune.recipes.sft.config import QATConfig, SFTConfig

# The loop module is imported only when the recipe runs: `tune ls/validate` stay light.
recipe = Recipe(
    name="sft",
    config_class=SFTConfig,
    run="tune.recipes.sft.loop:run",
    description="supervised fine-tuning: full, LoRA, QLoRA, DoRA; one device or many",
)

__all__ = [
    "CheckpointConfig",
    "DataConfig",
    "DistributedConfig",
    "EvalConfig",
    "LRScheduleConfig",
    "LoRAConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimizerConfig",
    "QATConfig",
    "SFTConfig",
    "TokenizerConfig",
    "TrainingConfig",
    "recipe",
]
