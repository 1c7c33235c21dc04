"""tune.data: Tokenizers, chat templates, dataset builders, streaming on-the-fly packing and exact-resume iteration."""

from tune.data._version import __version__

__all__ = ["__version__"]
