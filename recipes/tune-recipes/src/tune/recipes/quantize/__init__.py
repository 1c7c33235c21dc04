"""The ``quantize`` recipe: post-training quantization of a checkpoint directory."""

from tune.recipes.quantize.config import QuantizationConfig, QuantizeConfig, QuantizeModelConfig
from tune.recipes.recipe import Recipe

# The loop module is imported only when the recipe runs: `tune ls/validate` stay light.
recipe = Recipe(
    name="quantize",
    config_class=QuantizeConfig,
    run="tune.recipes.quantize.loop:run",
    description="post-training quantization of a checkpoint into a directory generate loads",
)

__all__ = ["QuantizationConfig", "QuantizeConfig", "QuantizeModelConfig", "recipe"]
