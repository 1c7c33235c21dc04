"""Claim a run's output directory: never one of its inputs, and one run at a time.

Before anything is written, a run checks that its output directory neither is, contains, nor lies
inside a model, adapter or tokenizer directory that it reads (after resolving symlinks), so that a
final export can never overwrite the weights it started from. Then global rank 0 takes the
directory's ``RunLock`` (released by the kernel even on ``kill -9``); a second run on the same
directory fails at once, naming the holder. Every rank learns the outcome, so no rank is left
waiting in a collective::

    with claim_run_directory("runs/exp", {"base": "models/llama"}, command=sys.argv):
        ...  # train and save under runs/exp
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

from tune.checkpoint.errors import OutputOverlapsInputError, RunDirectoryError
from tune.checkpoint.run_lock import RunLock

PathLike = str | os.PathLike[str]


def check_output_apart(
    output_dir: PathLike,
    inputs: Mapping[str, PathLike | None],
    *,
    output_name: str = "output directory",
) -> None:
    """Refuse an output directory that is, contains or lies inside an input (symlinks resolved).

    Args:
        output_dir: where the run writes.
        inputs: a name (e.g. the config key) -> a local path the run reads; paths that do not
            exist (a Hub id, None) are skipped.
        output_name: how ``output_dir`` is named in the error (e.g. its config key).

    Raises:
        OutputOverlapsInputError: naming both names and both resolved paths.
    """
    out = Path(output_dir).expanduser().resolve()
    for key, value in inputs.items():
        if not value or not Path(value).expanduser().exists():
            continue
        src = Path(value).expanduser().resolve()
        if out == src:
            relation = "is"
        elif out.is_relative_to(src):
            relation = "lies inside"
        elif src.is_relative_to(out):
            relation = "contains"
        else:
            continue
        raise OutputOverlapsInputError(
            f"{output_name}={output_dir} ({out}) {relation} the input {key}={value} ({src}): a "
            f"run never writes where it reads its weights; choose another {output_name}, outside "
            "every input directory"
        )


@contextmanager
def claim_run_directory(
    output_dir: PathLike,
    inputs: Mapping[str, PathLike | None],
    *,
    command: Sequence[str] | None = None,
    output_name: str = "output directory",
) -> Iterator[RunLock | None]:
    """Check ``output_dir`` against ``inputs`` and hold its ``RunLock`` (global rank 0) meanwhile.

    Under torch.distributed every rank enters it (a collective) and all raise if any check
    fails on rank 0.

    Args:
        output_dir: where the run writes (created by the lock if needed).
        inputs: a name -> a local path the run reads (as for ``check_output_apart``).
        command: the command line recorded in the lock for whoever finds the directory locked.
        output_name: how ``output_dir`` is named in errors (e.g. its config key).

    Yields:
        The held lock on rank 0, None on the other ranks.

    Raises:
        OutputOverlapsInputError: the output directory overlaps an input.
        RunLockedError: another run holds the directory.
        RunDirectoryError: on ranks other than 0, when rank 0 could not claim it.
    """
    distributed = dist.is_available() and dist.is_initialized()
    is_main = not distributed or dist.get_rank() == 0
    error: BaseException | None = None
    lock: RunLock | None = None
    try:
        check_output_apart(output_dir, inputs, output_name=output_name)
        if is_main:
            lock = RunLock(output_dir, command=command).acquire()
    except Exception as err:  # every rank must hear of it before anyone raises
        error = err
    if distributed:
        message = [f"{type(error).__name__}: {error}" if error is not None else None]
        dist.broadcast_object_list(message, src=0)
        if error is None and message[0] is not None:
            error = RunDirectoryError(f"rank 0 could not claim {output_dir}: {message[0]}")
    if error is not None:
        if lock is not None:
            lock.release()
        raise error
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
