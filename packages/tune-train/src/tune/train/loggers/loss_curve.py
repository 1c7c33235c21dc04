"""Draw a run's loss curve (training and validation loss by step) from its metrics file."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from tune.train.loggers.jsonl_logger import read_jsonl_metrics

logger = logging.getLogger(__name__)


def can_plot() -> bool:
    """Whether matplotlib is importable (checked without importing it)."""
    return importlib.util.find_spec("matplotlib") is not None


def plot_loss_curve(
    metrics_file: str | Path,
    output: str | Path,
    *,
    keys: Sequence[str] = ("loss", "val_loss"),
    title: str | None = None,
) -> Path | None:
    """Write a PNG of ``keys`` by step, read from a ``JsonlLogger`` file; None if it has none.

    The figure is drawn off-screen (no display, no global pyplot state) and written aside, then
    renamed: an interrupted call never leaves a half-written file.

    Args:
        metrics_file: the run's ``metrics.jsonl``.
        output: the PNG path.
        keys: metrics to draw, one line each (a key the file lacks is left out).
        title: the figure's title (default: the metrics file's folder name).

    Raises:
        ImportError: matplotlib is not installed (``pip install 'tune-train[plot]'``).
    """
    series = {key: read_jsonl_metrics(metrics_file, key) for key in keys}
    series = {key: values for key, values in series.items() if values}
    if not series:
        return None
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "plot_loss_curve needs matplotlib: pip install 'tune-train[plot]'"
        ) from error
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    axes = figure.add_subplot()
    for key, values in series.items():
        steps = sorted(values)
        axes.plot(steps, [values[s] for s in steps], marker="o" if len(steps) < 30 else None,
                  markersize=3, label=key)  # fmt: skip
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title if title is not None else Path(metrics_file).parent.name)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    FigureCanvasAgg(figure).print_png(str(partial))
    os.replace(partial, path)
    logger.info("wrote %s (%s)", path, ", ".join(series))
    return path
