"""Claim a run's output directory: never one of its inputs, and one run at a time.

Before anything is written, a run checks that its output directory neither is, contains, nor
lies inside a model, adapter or tokenizer directory that it reads (after resolving symlinks),
so that the final export can never overwrite the weights it started from. Then rank 0 takes an
OS lock on the directory (``tune.checkpoint.RunLock``, released by the kernel even on
``kill -9``); a second run on the same directory fails at once, naming the holder. Every rank
learns the outcome, so no rank is left waiting in a collective.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch.distributed as dist

from tune.checkpoint import RunLock

logger = logging.getLogger(__name__)

# Config keys (their last part) that name model inputs a run must never write into.
INPUT_KEY_SUFFIXES = ("checkpoint_dir", "adapter_dir")
INPUT_KEYS = ("tokenizer.path",)
# Sections that describe outputs, not inputs.
OUTPUT_SECTIONS = ("checkpointing", "logging")


class RunDirectoryError(ValueError):
    """The run directory cannot be used by this run."""


class OutputOverlapsInputError(RunDirectoryError):
    """The output directory is, contains, or lies inside one of the run's inputs."""


def model_inputs(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted key, path)`` of every model, adapter and tokenizer input in a config tree."""
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            if key not in OUTPUT_SECTIONS:
                yield from model_inputs(value, key + ".")
        elif (
            isinstance(value, str)
            and value
            and (key in INPUT_KEYS or str(name).endswith(INPUT_KEY_SUFFIXES))
        ):
            yield key, value


def output_dir_of(tree: Mapping[str, Any]) -> str | None:
    """``checkpointing.output_dir`` (training recipes) or ``output_dir`` (quantize), if any."""
    section = tree.get("checkpointing")
    value = section.get("output_dir") if isinstance(section, Mapping) else tree.get("output_dir")
    return value if isinstance(value, str) else None


def check_output_apart(output_dir: str | Path, inputs: Mapping[str, str | Path | None]) -> None:
    """Refuse an output directory that is, contains or lies inside an input (symlinks resolved).

    Args:
        output_dir: ``checkpointing.output_dir``.
        inputs: config key -> the local path it names (a missing path, e.g. a hub id, is skipped).

    Raises:
        OutputOverlapsInputError: naming both keys and both resolved paths.
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
            f"checkpointing.output_dir={output_dir} ({out}) {relation} the input {key}={value} "
            f"({src}): a run never writes where it reads its weights; choose an output_dir "
            "outside every input directory"
        )


@contextmanager
def claimed_run_directory(
    output_dir: str | Path, config: Mapping[str, Any], *, is_main: bool
) -> Iterator[None]:
    """Check ``output_dir`` against the config's inputs and hold its lock (rank 0) meanwhile.

    Every rank enters it (a collective when distributed); all raise if any check fails.

    Args:
        output_dir: ``checkpointing.output_dir``.
        config: the run's resolved config tree (its inputs are found by key name).
        is_main: this is global rank 0 (the rank that takes the lock).

    Raises:
        OutputOverlapsInputError: the output directory overlaps an input.
        tune.checkpoint.RunLockedError: another run holds the directory.
    """
    error: BaseException | None = None
    lock: RunLock | None = None
    try:
        check_output_apart(output_dir, dict(model_inputs(config)))
        if is_main:
            lock = RunLock(output_dir, command=sys.argv).acquire()
    except Exception as err:  # every rank must hear of it before anyone raises
        error = err
    if dist.is_available() and dist.is_initialized():
        message = [f"{type(error).__name__}: {error}" if error is not None else None]
        dist.broadcast_object_list(message, src=0)
        if error is None and message[0] is not None:
            error = RunDirectoryError(f"rank 0 could not claim {output_dir}: {message[0]}")
    if error is not None:
        if lock is not None:
            lock.release()
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
