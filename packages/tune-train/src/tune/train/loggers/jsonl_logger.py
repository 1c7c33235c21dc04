"""Metrics as JSON lines in a file: one object per step, plus one for the config."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tune.train.loggers.protocol import prepare_metrics
from tune.train.loggers.redaction import redact_secrets


def _json_value(value: float | int | str) -> float | int | str:
    # Non-finite floats are not JSON; write them as strings so a NaN step stays visible.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlLogger:
    """Appends `{"step": 3, "time": 1.7e9, "loss": 2.1, ...}` lines to a file.

    A config record is written as `{"config": {...}}` with secrets redacted. Each line is
    flushed, so a crashed run keeps everything logged before the crash.

    Args:
        path: the `.jsonl` file (parent directories are created; appended to if it exists).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        if self._file.closed:
            raise RuntimeError(f"JsonlLogger for {self.path} is closed")
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Append one line for this step."""
        values = {k: _json_value(v) for k, v in prepare_metrics(metrics).items()}
        self._write({"step": step, "time": time.time(), **values})

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Append the redacted config."""
        self._write({"config": redact_secrets(dict(config))})

    def close(self) -> None:
        """Close the file."""
        if not self._file.closed:
            self._file.close()
