"""Metrics as one human-readable line per step on a text stream (stdout by default)."""

from __future__ import annotations

import fnmatch
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from tune.train.loggers.protocol import prepare_metrics
from tune.train.loggers.redaction import redact_secrets


def _format(value: float | int | str) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class StdoutLogger:
    """Writes `step 10 | loss 2.345 | lr 0.0001` lines to a stream.

    Args:
        stream: where to write (default `sys.stdout`, looked up at each call).
        exclude: `fnmatch` patterns of metric names left off the line (they still reach the
            other loggers), e.g. `["moe/layer*"]` for the per-layer expert-load metrics.
    """

    def __init__(self, stream: TextIO | None = None, exclude: Sequence[str] = ()) -> None:
        self._stream = stream
        self.exclude = tuple(exclude)

    @property
    def stream(self) -> TextIO:
        """The stream written to."""
        return self._stream if self._stream is not None else sys.stdout

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Write one line for this step."""
        parts = [f"step {step}"] + [
            f"{k} {_format(v)}"
            for k, v in prepare_metrics(metrics).items()
            if not any(fnmatch.fnmatchcase(k, pattern) for pattern in self.exclude)
        ]
        self.stream.write(" | ".join(parts) + "\n")
        self.stream.flush()

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Write the redacted config as indented JSON."""
        text = json.dumps(redact_secrets(dict(config)), indent=2, default=str)
        self.stream.write(f"config:\n{text}\n")
        self.stream.flush()

    def close(self) -> None:
        """Flush the stream."""
        self.stream.flush()
