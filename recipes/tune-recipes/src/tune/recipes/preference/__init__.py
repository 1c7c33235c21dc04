"""The ``preference`` recipe: DPO, IPO, SimPO, ORPO, KTO, reference-free DPO (full or adapters)."""

from tune.recipes.preference.config import PreferenceConfig
from tune.recipes.recipe import Recipe

recipe = Recipe.bundled(
    PreferenceConfig,
    "preference tuning: DPO, IPO, SimPO, ORPO, KTO, reference-free DPO; full or LoRA",
)
__all__ = ["PreferenceConfig", "recipe"]
