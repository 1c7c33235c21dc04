"""Metric loggers from registry names (rank 0 only; the building is ``tune.train.loggers_for_run``)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.contrib import DummyTqdmFile

from tune.recipes.config.registries import LOGGERS
from tune.train.loggers import JsonlLogger, MetricLogger, StdoutLogger, loggers_for_run


def build_loggers(
    names: Sequence[str],
    *,
    output_dir: Path,
    jsonl_path: str | None,
    options: Mapping[str, Mapping[str, Any]],
    allow_imports: Sequence[str] = (),
    start_step: int = 0,
) -> MetricLogger:
    """One logger that fans out to every configured one, plus ``metrics.jsonl`` (always: the
    run's record, and what ``loss_curve.png`` is drawn from). Stdout lines go through
    ``tqdm.write``, above the progress bar.

    Args:
        names: ``tune.loggers`` names (stdout, jsonl, tensorboard, wandb, mlflow, ...).
        output_dir: the run directory (default home of file-based logs).
        jsonl_path: the jsonl logger's file (None: ``output_dir/metrics.jsonl``).
        options: per-logger keyword arguments.
        allow_imports: patterns from the command line for dotted logger names.
        start_step: the step the run starts from (0 fresh, N when resuming from step N).
    """
    parts = []
    for name in [*names, *([] if "jsonl" in names else ["jsonl"])]:
        kwargs = dict(options.get(name, {}))
        factory = LOGGERS.load(name, allow_imports)
        if factory is JsonlLogger and jsonl_path:
            kwargs.setdefault("path", jsonl_path)
        if factory is StdoutLogger:
            kwargs.setdefault("stream", DummyTqdmFile(sys.stdout))
            # Per-layer expert loads (3 per MoE layer) go to the files, not the console line.
            kwargs.setdefault("exclude", ["moe/layer*"])
        parts.append((factory, kwargs))
    return loggers_for_run(parts, output_dir=output_dir, start_step=start_step)


def metrics_file(output_dir: Path, jsonl_path: str | None) -> Path:
    """Where ``build_loggers`` writes the run's ``metrics.jsonl``."""
    return Path(jsonl_path).expanduser() if jsonl_path else output_dir / "metrics.jsonl"
