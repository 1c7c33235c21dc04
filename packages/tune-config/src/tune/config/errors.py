"""Exceptions raised while loading and validating configs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


def where(source: str | None, line: int | str | None = None) -> str:
    """``file:line`` for error messages; a string ``line`` is a full location (an override)."""
    if isinstance(line, str):
        return line
    if source is None:
        return "<config>"
    return f"{source}:{line}" if line is not None else source


class ConfigError(ValueError):
    """A config that cannot be parsed into its schema.

    Args:
        key: the full dotted key at fault (``training.optimizer.lr``).
        message: what is wrong and what was expected.
        source: the file (or ``command line``) the value came from.
        line: the 1-based line in ``source`` when known, or a full location string
            (``command line ('training.lr=0')``) for a value given as an override.
    """

    def __init__(
        self, key: str, message: str, source: str | None = None, line: int | str | None = None
    ) -> None:
        self.key = key
        self.source = source
        self.line = line
        self.message = message
        super().__init__(f"{where(source, line)}: {key}: {message}")


@dataclass(frozen=True)
class Issue:
    """One finding of a schema's ``validate()``.

    Args:
        key: the full dotted key the finding is about.
        message: what is wrong and what was expected.
        severity: ``"error"`` stops the run; ``"warning"`` is reported only.
    """

    key: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.severity}: {self.key}: {self.message}"


class ConfigValidationError(ValueError):
    """A config that parsed but failed its schema's range and relation checks.

    Args:
        issues: every finding, errors and warnings.
        source: the config file, for the message.
    """

    def __init__(self, issues: list[Issue], source: str | None = None) -> None:
        self.issues = issues
        self.source = source
        errors = [i for i in issues if i.severity == "error"]
        # One line, whatever the count: the CLI prints each user error as a single line.
        listed = "; ".join(f"{i.key}: {' '.join(i.message.split())}" for i in errors)
        super().__init__(f"{where(source)}: {len(errors)} invalid setting(s): {listed}")

    @property
    def keys(self) -> list[str]:
        """The dotted keys of the errors, in order."""
        return [i.key for i in self.issues if i.severity == "error"]
