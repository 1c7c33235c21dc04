"""tune.recipes: the `tune` CLI, configs with overrides, and recipes assembled from the tune libraries."""

from tune.recipes._version import __version__

__all__ = ["__version__"]
