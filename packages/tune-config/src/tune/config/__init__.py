"""tune.config: typed YAML configs for dataclass schemas, ``key=value`` overrides, validation.

Errors name the file and line (or the override) and the dotted key; unknown keys get a
did-you-mean; dotted imports are refused unless the caller allows them; registries of named
parts are extended through entry-point groups. No torch, no other tune library.
"""

from tune.config._version import __version__
from tune.config.errors import ConfigError, ConfigValidationError, Issue, where
from tune.config.imports import (
    ALLOW_ENV,
    ALLOW_HINT,
    allowed_from_env,
    check_component_keys,
    import_allowed,
    import_object,
    load_target,
)
from tune.config.loading import (
    Redact,
    declared_recipe,
    key_lines,
    load_config,
    parse_override,
    read_yaml,
    resolve_tree,
)
from tune.config.registries import Registry, check_components, component
from tune.config.saving import config_to_yaml, save_resolved_config
from tune.config.schema import build, did_you_mean, to_container
from tune.config.validation import Checks, ValidationContext, validate_config, world_size_from_env

__all__ = [
    "ALLOW_ENV",
    "ALLOW_HINT",
    "Checks",
    "ConfigError",
    "ConfigValidationError",
    "Issue",
    "Redact",
    "Registry",
    "ValidationContext",
    "__version__",
    "allowed_from_env",
    "build",
    "check_component_keys",
    "check_components",
    "component",
    "config_to_yaml",
    "declared_recipe",
    "did_you_mean",
    "import_allowed",
    "import_object",
    "key_lines",
    "load_config",
    "load_target",
    "parse_override",
    "read_yaml",
    "resolve_tree",
    "save_resolved_config",
    "to_container",
    "validate_config",
    "where",
    "world_size_from_env",
]
