"""Configs: YAML + ``key=value`` overrides into closed dataclass schemas, validated before a run."""

from tune.recipes.config.errors import ConfigError, ConfigValidationError, Issue
from tune.recipes.config.imports import import_allowed, import_object
from tune.recipes.config.loading import declared_recipe, load_config, parse_override
from tune.recipes.config.redaction import (
    REDACTED,
    config_to_yaml,
    is_secret_key,
    redact,
    save_resolved_config,
)
from tune.recipes.config.registries import (
    LOGGERS,
    LR_SCHEDULES,
    OPTIMIZERS,
    Registry,
    component,
    registry,
)
from tune.recipes.config.schema import to_container
from tune.recipes.config.validation import (
    Checks,
    ValidationContext,
    validate_config,
    world_size_from_env,
)

__all__ = [
    "LOGGERS",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "REDACTED",
    "Checks",
    "ConfigError",
    "ConfigValidationError",
    "Issue",
    "Registry",
    "ValidationContext",
    "component",
    "config_to_yaml",
    "declared_recipe",
    "import_allowed",
    "import_object",
    "is_secret_key",
    "load_config",
    "parse_override",
    "redact",
    "registry",
    "save_resolved_config",
    "to_container",
    "validate_config",
    "world_size_from_env",
]
