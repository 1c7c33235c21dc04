"""The ``eval`` recipe: perplexity on a dataset split and lm-evaluation-harness tasks."""

from tune.recipes.eval.config import EvalConfig
from tune.recipes.recipe import Recipe

recipe = Recipe.bundled(
    EvalConfig, "perplexity on a dataset split and lm-evaluation-harness tasks on a checkpoint"
)
__all__ = ["EvalConfig", "recipe"]
