"""tune.train: Losses (chunked and fused CE, preference, KD, GRPO), token-normalised accumulation, schedules, guards, loggers, meters."""

from tune.train._version import __version__

__all__ = ["__version__"]
