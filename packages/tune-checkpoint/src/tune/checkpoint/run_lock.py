"""A per-directory run lock: one writer per run directory, released by the kernel when it dies.

    with RunLock("runs/exp"):          # before anything else is written to runs/exp
        manager = CheckpointManager("runs/exp/checkpoints")
        ...

The lock is `flock(LOCK_EX | LOCK_NB)` on `<directory>/.tune.lock`. The kernel drops it when the
holding process exits in any way (including `kill -9`), so a lock file left behind by a killed run
is stale but not locked: the next run takes it and rewrites the holder record. The file itself is
never deleted (deleting a lock file lets two processes lock two different files).

Locks are per open file, so a second `RunLock` on the same directory fails in the same process
too. On Windows (no `fcntl`) `msvcrt.locking` is used; where neither exists, only the in-process
check applies and a warning is logged. `flock` on network filesystems (NFS) is only as reliable as
the filesystem's lock support: put the run directory on a filesystem that supports it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tune.checkpoint.errors import RunLockedError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_NAME = ".tune.lock"
_held: set[Path] = set()  # lock files held by this process (also guards where no OS lock exists)
_held_guard = threading.Lock()


def read_lock_holder(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The holder record of a lock file (pid, hostname, started, command), or None if unreadable."""
    try:
        holder = json.loads(Path(path).read_text() or "null")
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "another process (its holder record is not written yet or unreadable)"
    text = (
        f"pid {holder.get('pid')} on host {holder.get('hostname')!r} since {holder.get('started')}"
    )
    if holder.get("command"):
        text += f" (command: {' '.join(map(str, holder['command']))})"
    return text


class RunLock:
    """Exclusive lock on a run directory, held from `acquire()` (or `with`) to `release()`.

    Args:
        directory: the run directory (created if needed).
        command: the command line to record for whoever finds the directory locked.
        name: lock file name inside `directory`.

    Raises:
        RunLockedError: on `acquire` when another process, or another `RunLock` in this process,
            holds the lock; the message names the directory and the holder's pid, host and start.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        command: Sequence[str] | None = None,
        name: str = LOCK_NAME,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / name
        self.command = list(command) if command is not None else None
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def _refuse(self, fd: int | None) -> RunLockedError:
        if fd is not None:
            os.close(fd)
        return RunLockedError(
            f"{self.directory}: run directory is locked by {_describe(read_lock_holder(self.path))}"
            f" (lock file {self.path}); another run is writing here: wait for it to end or use "
            "another output directory"
        )

    def acquire(self) -> RunLock:
        """Take the lock at once or raise `RunLockedError`; returns self."""
        if self._fd is not None:
            raise RunLockedError(f"{self.directory}: this RunLock already holds {self.path}")
        self.directory.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        with _held_guard:
            if key in _held:
                raise self._refuse(None)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _os_lock(fd)
            except OSError:
                raise self._refuse(fd) from None
            _held.add(key)
        self._fd = fd
        holder = {
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": self.command,
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(holder) + "\n").encode())
        os.fsync(fd)
        logger.debug("locked %s", self.path)
        return self

    def release(self) -> None:
        """Drop the lock (the file stays, emptied); a no-op when not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with _held_guard:
            _held.discard(self.path.resolve())
            try:
                os.ftruncate(fd, 0)
            finally:
                _os_unlock(fd)
                os.close(fd)
        logger.debug("unlocked %s", self.path)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _os_lock(fd: int) -> None:
    """Lock `fd` without waiting; OSError when another open file holds it."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    elif msvcrt is not None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        logger.warning("no fcntl or msvcrt: the run lock only guards this process")


def _os_unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    elif msvcrt is not None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
