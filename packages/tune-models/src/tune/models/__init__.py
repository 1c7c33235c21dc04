"""tune.models: Transformer components, model families built from HF configs, key maps, TP plans, generation."""

from tune.models._version import __version__

__all__ = ["__version__"]
