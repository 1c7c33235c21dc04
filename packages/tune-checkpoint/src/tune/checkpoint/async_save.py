"""Asynchronous checkpoint saves: snapshot on the caller's thread, write and commit in the background."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tune.checkpoint.rng_state import capture_rng_state
from tune.checkpoint.training_state import CheckpointManager

logger = logging.getLogger(__name__)


def snapshot_state(obj: Any) -> Any:
    """A deep copy whose tensors are detached CPU clones, safe from later in-place updates."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, Mapping):
        return {k: snapshot_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot_state(v) for v in obj)
    return copy.deepcopy(obj)


class AsyncCheckpointSaver:
    """Run `CheckpointManager.save` in a background thread while training continues.

    `save` copies the state to CPU and captures the RNG states before it returns, so the
    checkpoint holds the values at the call even when training updates tensors in place. The write
    follows the same commit protocol (temp dir, manifest last, atomic rename): a crash leaves
    earlier steps intact. One save runs at a time; `save` and `wait` re-raise an error of the
    previous save. Single-process only (distributed runs: use `CheckpointManager.save`).

    Args:
        manager: the manager that writes and commits.
    """

    def __init__(self, manager: CheckpointManager) -> None:
        self.manager = manager
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._result: Path | None = None

    @property
    def in_flight(self) -> bool:
        """Whether a save is still being written."""
        return self._thread is not None and self._thread.is_alive()

    def save(self, step: int, **parts: Any) -> None:
        """Snapshot `parts` (the keyword arguments of `CheckpointManager.save`) and start writing.

        Args:
            step: the step number.
            **parts: `model_state`, `optimizer_state`, `scheduler_state`, `data_state`, `extra`,
                `config`, `save_rng`.

        Raises:
            BaseException: whatever the previous save raised, if it failed.
        """
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            raise RuntimeError("AsyncCheckpointSaver is single-process; use CheckpointManager.save")
        if "sharded_state" in parts or "rng_state" in parts:
            raise TypeError("AsyncCheckpointSaver.save takes no sharded_state or rng_state")
        self.wait()
        snapshot = snapshot_state(parts)
        if snapshot.get("save_rng", True):
            snapshot["rng_state"] = capture_rng_state()
        self._thread = threading.Thread(
            target=self._run, args=(step, snapshot), name=f"checkpoint-step-{step}", daemon=False
        )
        self._thread.start()

    def _run(self, step: int, parts: dict[str, Any]) -> None:
        try:
            self._result = self.manager.save(step, **parts)
        except BaseException as err:  # re-raised on the training thread by wait()
            logger.error("asynchronous save of step %d failed: %s", step, err)
            self._error = err

    def wait(self) -> Path | None:
        """Block until the running save is committed; returns its directory (None if none ran).

        Raises:
            BaseException: whatever the background save raised.
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._result
