"""The loggers of one run, file-based ones placed in its directory and trimmed for resume."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tune.train.loggers.jsonl_logger import JsonlLogger
from tune.train.loggers.protocol import MetricLogger, MultiLogger
from tune.train.loggers.tensorboard_logger import TensorBoardLogger


def _is(factory: Callable[..., MetricLogger], cls: type) -> bool:
    return isinstance(factory, type) and issubclass(factory, cls)


def loggers_for_run(
    loggers: Sequence[tuple[Callable[..., MetricLogger], Mapping[str, Any]]],
    *,
    output_dir: str | Path,
    start_step: int = 0,
) -> MultiLogger:
    """One logger that fans out to ``factory(**kwargs)`` for each ``(factory, kwargs)``.

    Where ``kwargs`` leave them out: a ``JsonlLogger`` writes ``output_dir/metrics.jsonl`` and
    keeps only the lines of earlier steps, so no step is ever logged twice (a resumed run drops
    what was logged after its checkpoint, a fresh run an old run's lines); a
    ``TensorBoardLogger`` writes under ``output_dir/tensorboard``.

    Args:
        loggers: (logger class or factory, its keyword arguments) pairs.
        output_dir: the run directory.
        start_step: the step the run starts from (0 fresh, N when resuming from step N).
    """
    out = Path(output_dir)
    built: list[MetricLogger] = []
    for factory, options in loggers:
        kwargs = dict(options)
        if _is(factory, JsonlLogger):
            kwargs.setdefault("path", out / "metrics.jsonl")
            kwargs.setdefault("resume_from_step", start_step + 1 if start_step else 0)
        elif _is(factory, TensorBoardLogger):
            kwargs.setdefault("log_dir", out / "tensorboard")
        built.append(factory(**kwargs))
    return MultiLogger(built)
