"""Exceptions raised by tune.checkpoint; each message names the file and the offending keys."""

from __future__ import annotations

from collections.abc import Iterable


class CheckpointError(Exception):
    """Base class of every error raised by tune.checkpoint."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file or directory is truncated, malformed or fails its manifest check."""


class UnsafeCheckpointPathError(CheckpointError):
    """A file name from an index or manifest escapes the checkpoint directory."""


class StateDictMismatchError(CheckpointError):
    """Keys or shapes of a checkpoint differ from what the model or template expects."""


class NoCheckpointFoundError(CheckpointError, FileNotFoundError):
    """Resuming was asked for, but the path holds no committed, valid checkpoint."""


class RunLockedError(CheckpointError):
    """Another process (or another `RunLock` in this one) holds the run directory's lock."""


class CheckpointWriteError(CheckpointError, OSError):
    """Writing an output failed (e.g. ENOSPC); errno is kept, the partial output was removed."""


class ResumeMismatchError(CheckpointError, ValueError):
    """A checkpoint belongs to a run with other settings or other input files."""


class RunDirectoryError(CheckpointError, ValueError):
    """A run directory cannot be claimed by this run."""


class OutputOverlapsInputError(RunDirectoryError):
    """The output directory is, contains, or lies inside one of the run's inputs."""


def first_keys(keys: Iterable[str], limit: int = 5) -> str:
    """Format the first `limit` sorted keys for an error message, with a count of the rest."""
    ordered = sorted(keys)
    shown = ", ".join(repr(k) for k in ordered[:limit])
    rest = len(ordered) - limit
    return shown + (f" (and {rest} more)" if rest > 0 else "")
