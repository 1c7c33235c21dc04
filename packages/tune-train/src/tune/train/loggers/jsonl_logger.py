"""Metrics as JSON lines in a file: one object per step, plus one for the config."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tune.train.loggers.protocol import prepare_metrics
from tune.train.loggers.redaction import redact_secrets

logger = logging.getLogger(__name__)


def _json_value(value: float | int | str) -> float | int | str:
    # Non-finite floats are not JSON; write them as strings so a NaN step stays visible.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _kept_on_resume(line: str, resume_from_step: int) -> bool | None:
    """True to keep a line, False to drop a step >= resume_from_step, None if unreadable."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("step")
    if step is None:  # a config record
        return True
    if isinstance(step, bool) or not isinstance(step, int):
        return None
    return step < resume_from_step


def drop_steps_from(path: str | Path, resume_from_step: int) -> int:
    """Rewrite a metrics JSONL file keeping only steps before `resume_from_step`, atomically.

    Config records are kept; unreadable lines (e.g. one cut short by a crash) are dropped. The
    file is rewritten beside itself and renamed over the original, so a crash leaves either the
    old or the new file, never half of one.

    Args:
        path: the `.jsonl` file; nothing happens if it does not exist.
        resume_from_step: the first step the resumed run will log.

    Returns:
        How many lines were dropped.
    """
    path = Path(path)
    if not path.exists():
        return 0
    kept: list[str] = []
    dropped = unreadable = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            keep = _kept_on_resume(line, resume_from_step)
            if keep:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
                unreadable += keep is None
    if not dropped:
        return 0
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines(kept)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info(
        "%s: dropped %d lines at step >= %d (%d unreadable) before resuming",
        path,
        dropped,
        resume_from_step,
        unreadable,
    )
    return dropped


def read_jsonl_metrics(path: str | Path, key: str = "loss") -> dict[int, float]:
    """``step -> value`` of one metric from a file `JsonlLogger` wrote.

    A step logged twice (re-run after a resume) keeps its later line. Config records, lines
    without ``key`` and unreadable lines (one cut short by a crash, or still being written) are
    skipped; a missing file reads as ``{}``. Non-finite values come back as floats (``nan``).

    Args:
        path: the `.jsonl` file.
        key: the metric to read (``"loss"``, ``"val_loss"``, ``"grad_norm"``, ...).
    """
    path = Path(path)
    values: dict[int, float] = {}
    if not path.is_file():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and key in record and isinstance(record.get("step"), int):
            values[record["step"]] = float(record[key])
    return values


class JsonlLogger:
    """Appends `{"step": 3, "time": 1.7e9, "loss": 2.1, ...}` lines to a file.

    A config record is written as `{"config": {...}}` with secrets redacted. Each line is
    flushed, so a crashed run keeps everything logged before the crash.

    Args:
        path: the `.jsonl` file (parent directories are created; appended to if it exists).
        resume_from_step: when resuming, the first step this run will log: lines already in the
            file at this step or later (written after the checkpoint the run resumes from) are
            dropped first, atomically, so each step appears once. None keeps the file as it is.
    """

    def __init__(self, path: str | Path, *, resume_from_step: int | None = None) -> None:
        if resume_from_step is not None and (
            isinstance(resume_from_step, bool)
            or not isinstance(resume_from_step, int)
            or resume_from_step < 0
        ):
            raise ValueError(
                f"JsonlLogger resume_from_step: expected an integer >= 0 or None, got "
                f"{resume_from_step!r}"
            )
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from_step is not None:
            drop_steps_from(self.path, resume_from_step)
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
