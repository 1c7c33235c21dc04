"""The recipes' config data: registries, removed keys, and loading/saving with tune's redaction.

The config system itself is tune-config (``tune.config``).
"""

from tune.recipes.config.loading import REMOVED_KEYS, load_config, redact_override
from tune.recipes.config.redaction import config_to_yaml, save_resolved_config
from tune.recipes.config.registries import (
    GENERATION_BACKENDS,
    LOGGERS,
    LR_SCHEDULES,
    OPTIMIZERS,
    REWARDS,
)

__all__ = [
    "GENERATION_BACKENDS",
    "LOGGERS",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "REMOVED_KEYS",
    "REWARDS",
    "config_to_yaml",
    "load_config",
    "redact_override",
    "save_resolved_config",
]
