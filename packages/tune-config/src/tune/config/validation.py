"""Range and relation checks a schema's ``validate()`` runs before any model loads."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tune.config.errors import ConfigValidationError, Issue


def world_size_from_env(default: int = 1) -> int:
    """``WORLD_SIZE`` as set by torchrun (or any launcher using its environment), else ``default``."""
    value = os.environ.get("WORLD_SIZE")
    if value is None or value == "":
        return default
    try:
        size = int(value)
    except ValueError as exc:
        raise ValueError(f"environment WORLD_SIZE={value!r} is not an integer") from exc
    if size < 1:
        raise ValueError(f"environment WORLD_SIZE={value!r} must be >= 1")
    return size


@dataclass
class ValidationContext:
    """What validation knows beyond the config.

    Args:
        world_size: number of processes the run will use.
        missing_paths: ``"error"`` for a run; ``"warn"`` for templates whose checkpoints and
            data live elsewhere (a bundled config checked on another machine).
        total_steps: optimizer steps of the run when known (the recipe passes it once the
            dataset length is known; configs with ``max_steps`` know it up front).
    """

    world_size: int = 1
    missing_paths: Literal["error", "warn"] = "error"
    total_steps: int | None = None


@dataclass
class Checks:
    """Collects issues; helpers return whether the check passed.

    Args:
        context: the validation context.
    """

    context: ValidationContext = field(default_factory=ValidationContext)
    issues: list[Issue] = field(default_factory=list)

    def error(self, key: str, message: str) -> bool:
        """Record an error; returns False."""
        self.issues.append(Issue(key, message, "error"))
        return False

    def warn(self, key: str, message: str) -> None:
        """Record a warning."""
        self.issues.append(Issue(key, message, "warning"))

    def require(self, ok: bool, key: str, message: str) -> bool:
        """An error unless ``ok``."""
        return True if ok else self.error(key, message)

    def positive(self, key: str, value: float | None) -> bool:
        """``value > 0`` (None passes: the setting is off)."""
        return value is None or self.require(value > 0, key, f"must be > 0, got {value}")

    def non_negative(self, key: str, value: float | None) -> bool:
        """``value >= 0`` (None passes)."""
        return value is None or self.require(value >= 0, key, f"must be >= 0, got {value}")

    def in_range(self, key: str, value: float, low: float, high: float) -> bool:
        """``low <= value < high``."""
        ok = low <= value < high
        return self.require(ok, key, f"must be in [{low}, {high}), got {value}")

    def path_exists(self, key: str, path: str | None, kind: Literal["dir", "file", "any"]) -> bool:
        """The path exists locally (an error, or a warning under ``missing_paths="warn"``)."""
        if path is None:
            return True
        p = Path(path).expanduser()
        found = p.is_dir() if kind == "dir" else p.is_file() if kind == "file" else p.exists()
        if found:
            return True
        what = {"dir": "directory", "file": "file", "any": "path"}[kind]
        message = f"{what} not found locally: {path}"
        if self.context.missing_paths == "warn":
            self.warn(key, message)
            return False
        return self.error(key, message)

    @property
    def errors(self) -> list[Issue]:
        """The errors recorded so far."""
        return [i for i in self.issues if i.severity == "error"]


def validate_config(
    config: Any, context: ValidationContext | None = None, source: str | None = None
) -> list[Issue]:
    """Run ``config.validate(context)`` when the schema defines it.

    Returns:
        The warnings.

    Raises:
        ConfigValidationError: listing every error by its dotted key.
    """
    context = context or ValidationContext(world_size=world_size_from_env())
    validate = getattr(config, "validate", None)
    issues: list[Issue] = list(validate(context)) if callable(validate) else []
    if any(i.severity == "error" for i in issues):
        raise ConfigValidationError(issues, source)
    return issues
