"""A stop flag set by SIGTERM / SIGUSR1 (preemption) and agreed on by all ranks at step boundaries."""

from __future__ import annotations

import logging
import signal
import types
from collections.abc import Callable, Iterable
from typing import Any

from tune.dist.reductions import ReduceGroup, any_rank

logger = logging.getLogger(__name__)

_Handler = Callable[[int, types.FrameType | None], Any] | int | None


class StopSignalHandler:
    """Record SIGTERM/SIGUSR1 instead of dying mid-step, so the loop can save and exit.

    The handler only sets a flag; the training loop calls ``should_stop()`` at a step boundary,
    which reduces the flag over ranks so every rank stops after the same step (a signal that
    reached only one rank still stops all of them, and no rank waits in a collective forever).

    Args:
        signals: signal numbers to catch (default SIGTERM and SIGUSR1, as SLURM and Kubernetes
            send before preemption).
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM, signal.SIGUSR1)) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self._previous: dict[int, _Handler] = {}

    @property
    def requested(self) -> bool:
        """True once one of the signals arrived on this rank."""
        return self.received is not None

    def _handle(self, signum: int, _frame: types.FrameType | None) -> None:
        self.received = signum
        logger.warning("received %s: stopping at the next step boundary", signal.Signals(signum).name)

    def install(self) -> StopSignalHandler:
        """Install the handlers (main thread only); previous handlers are kept for uninstall."""
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were installed before."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def should_stop(self, group: ReduceGroup = None) -> bool:
        """Whether any rank received a stop signal (a collective: call on every rank, every step)."""
        return any_rank(self.requested, group)

    def __enter__(self) -> StopSignalHandler:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()
