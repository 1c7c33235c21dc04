"""tune.dist: FSDP2, tensor parallel, activation checkpointing and offloading from plain torchrun environments."""

from tune.dist._version import __version__

__all__ = ["__version__"]
