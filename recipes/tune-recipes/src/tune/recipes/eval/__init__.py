"""The ``eval`` recipe: perplexity on a dataset split and lm-evaluation-harness tasks."""

from tune.recipes.eval.config import (
    EvalConfig,
    EvalModelConfig,
    EvalOutputConfig,
    EvalTokenizerConfig,
    LMEvalConfig,
    PerplexityConfig,
)
from tune.recipes.recipe import Recipe

# The loop module is imported only when the recipe runs: `tune ls/validate` stay light.
recipe = Recipe(
    name="eval",
    config_class=EvalConfig,
    run="tune.recipes.eval.loop:run",
    description="perplexity on a dataset split and lm-evaluation-harness tasks on a checkpoint",
)

__all__ = [
    "EvalConfig",
    "EvalModelConfig",
    "EvalOutputConfig",
    "EvalTokenizerConfig",
    "LMEvalConfig",
    "PerplexityConfig",
    "recipe",
]
