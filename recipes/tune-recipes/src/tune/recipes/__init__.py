"""tune.recipes: the `tune` CLI, configs with overrides, and recipes assembled from the tune libraries."""

from tune.recipes._version import __version__
from tune.recipes.config import load_config, save_resolved_config
from tune.recipes.discovery import (
    BundledConfig,
    RecipeEntry,
    bundled_configs,
    find_config,
    installed_recipes,
    load_recipe,
)
from tune.recipes.recipe import Recipe

__all__ = [
    "BundledConfig",
    "Recipe",
    "RecipeEntry",
    "__version__",
    "bundled_configs",
    "find_config",
    "installed_recipes",
    "load_config",
    "load_recipe",
    "save_resolved_config",
]
