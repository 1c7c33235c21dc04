"""What both demos print and draw: phase headers, quiet logging, loss curves, the results table."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


class OncePerMessage(logging.Filter):
    """Drop a log message identical to one already shown (the recipe re-logs its validation
    loader's settings at every evaluation, which would break the progress bar each time)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def setup_logging() -> None:
    """INFO messages to stdout, each distinct message once."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for handler in logging.getLogger().handlers:
        handler.addFilter(OncePerMessage())


def banner(title: str) -> None:
    """A phase header."""
    print(f"\n=== {title} " + "=" * max(0, 76 - len(title)), flush=True)


def plot_losses(
    train: list[tuple[int, float]], val: list[tuple[int, float]], path: Path, title: str
) -> Path:
    """Write the training and validation loss curves as a PNG.

    Args:
        train: ``(step, loss)`` per logged training step.
        val: ``(step, loss)`` per validation.
        path: the PNG to write.
        title: the plot's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(*zip(*train, strict=True), label="training loss", color="tab:blue", linewidth=1)
    ax.plot(*zip(*val, strict=True), "o-", label="held-out loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (response tokens)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def before_after_table(
    title: str, correct: tuple[int, int], total: int, loss: tuple[float, float]
) -> None:
    """Print exact match and held-out loss before and after fine-tuning.

    Args:
        title: the table's header.
        correct: correct answers before and after.
        total: evaluated examples.
        loss: held-out loss before and after.
    """
    banner(title)
    (b, a), (lb, la) = correct, loss
    print(f"  {'':<22}{'before':>10}{'after':>10}")
    print(
        f"  {'exact match':<22}{b / total:>10.1%}{a / total:>10.1%}   ({b}/{total} -> {a}/{total})"
    )
    print(f"  {'loss (answer tokens)':<22}{lb:>10.3f}{la:>10.3f}")
