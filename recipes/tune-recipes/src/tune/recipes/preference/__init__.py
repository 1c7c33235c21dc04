"""The ``preference`` recipe: DPO, IPO, SimPO, ORPO, KTO, reference-free DPO (full or adapters)."""

from tune.recipes.preference.config import (
    PreferenceConfig,
    PreferenceDataConfig,
    PreferenceLossConfig,
    PreferenceModelConfig,
    PreferenceTrainingConfig,
)
from tune.recipes.recipe import Recipe

# The loop module is imported only when the recipe runs: `tune ls/validate` stay light.
recipe = Recipe(
    name="preference",
    config_class=PreferenceConfig,
    run="tune.recipes.preference.loop:run",
    description="preference tuning: DPO, IPO, SimPO, ORPO, KTO, reference-free DPO; full or LoRA",
)

__all__ = [
    "PreferenceConfig",
    "PreferenceDataConfig",
    "PreferenceLossConfig",
    "PreferenceModelConfig",
    "PreferenceTrainingConfig",
    "recipe",
]
