"""Metric loggers from registry names (rank 0 only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tune.recipes.config.registries import LOGGERS
from tune.train import MetricLogger, MultiLogger


def build_loggers(
    names: Sequence[str],
    *,
    output_dir: Path,
    jsonl_path: str | None,
    options: Mapping[str, Mapping[str, Any]],
    allow_imports: Sequence[str] = (),
    start_step: int = 0,
) -> MetricLogger:
    """One logger that fans out to every configured one.

    Args:
        names: ``tune.loggers`` names (stdout, jsonl, tensorboard, wandb, mlflow, ...).
        output_dir: the run directory (default home of file-based logs).
        jsonl_path: the jsonl logger's file (None: ``output_dir/metrics.jsonl``).
        options: per-logger keyword arguments.
        allow_imports: patterns from the command line for dotted logger names.
        start_step: the step the run starts from (0 fresh, N when resuming from step N). The
            jsonl file keeps only the lines of earlier steps, so no step is ever repeated: a
            resumed run drops what was logged after its checkpoint, a fresh run an old run's lines.
    """
    loggers: list[MetricLogger] = []
    for name in names:
        cls = LOGGERS.load(name, allow_imports)
        kwargs = dict(options.get(name, {}))
        if name == "jsonl":
            kwargs.setdefault("path", jsonl_path or output_dir / "metrics.jsonl")
            kwargs.setdefault("resume_from_step", start_step + 1 if start_step else 0)
        elif name == "tensorboard":
            kwargs.setdefault("log_dir", output_dir / "tensorboard")
        loggers.append(cls(**kwargs))
    return MultiLogger(loggers)
