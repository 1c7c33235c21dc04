"""The metric-logger protocol and a fan-out logger."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from tune.train.loggers.redaction import redact_secrets


@runtime_checkable
class MetricLogger(Protocol):
    """What every metric logger provides. Call it on rank 0 only."""

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record scalar metrics (floats, ints, 0-d tensors) at a training step."""

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Record the run's resolved configuration (secrets are redacted by the logger)."""

    def close(self) -> None:
        """Flush and release resources."""


def to_scalar(value: Any) -> float | int | str:
    """A metric value as a Python number (0-d tensors read out) or a string.

    Args:
        value: a number, bool, 0-d tensor or string.
    """
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"metric tensors must have one element, got shape {tuple(value.shape)}"
            )
        full_tensor = getattr(value, "full_tensor", None)
        value = (full_tensor() if callable(full_tensor) else value).detach().cpu().item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    raise TypeError(f"metric values must be numbers, 0-d tensors or strings, got {type(value)}")


def prepare_metrics(metrics: Mapping[str, Any]) -> dict[str, float | int | str]:
    """Redact secrets, then convert every value with `to_scalar`.

    Args:
        metrics: metric name -> value.
    """
    return {str(k): to_scalar(v) for k, v in redact_secrets(dict(metrics)).items()}


def numeric_only(metrics: Mapping[str, float | int | str]) -> dict[str, float]:
    """The numeric entries of prepared metrics as floats (for backends that take numbers only)."""
    return {k: float(v) for k, v in metrics.items() if not isinstance(v, str)}


class MultiLogger:
    """Sends every call to several loggers.

    Args:
        loggers: the loggers, called in order.
    """

    def __init__(self, loggers: Sequence[MetricLogger]) -> None:
        self.loggers = list(loggers)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log to every logger."""
        for lg in self.loggers:
            lg.log(metrics, step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Log the config to every logger."""
        for lg in self.loggers:
            lg.log_config(config)

    def close(self) -> None:
        """Close every logger."""
        for lg in self.loggers:
            lg.close()
