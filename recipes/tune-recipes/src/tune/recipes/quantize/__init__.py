"""The ``quantize`` recipe: post-training quantization of a checkpoint directory."""

from tune.recipes.quantize.config import QuantizeConfig
from tune.recipes.recipe import Recipe

recipe = Recipe.bundled(
    QuantizeConfig, "post-training quantization of a checkpoint into a directory generate loads"
)
__all__ = ["QuantizeConfig", "recipe"]
