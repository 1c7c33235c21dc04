"""Write an output directory aside, then rename it into place: no half-written directory is seen.

A writer fills `.<name>.tmp-<pid>` next to the target. On success the previous target (if any) is
renamed to `.<name>.old-<pid>`, the new one renamed in, the parent flushed and the old one deleted.
On an error (a full disk, ...) the temp directory is removed and the previous target is untouched.
A kill between the two renames leaves only `.<name>.old-<pid>`; the next write of the same target
renames it back first (`restore_interrupted`).
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from tune.checkpoint.commit import fsync_dir, fsync_file, swap_directory
from tune.checkpoint.errors import CheckpointWriteError

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def naming_file(path: Path) -> Iterator[None]:
    """Re-raise an OSError that names no file (what `write()` raises) with `path` as its file."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def write_text_file(path: Path, text: str) -> None:
    """Write a small text file; an OSError names `path`."""
    with naming_file(path):
        path.write_text(text)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def restore_interrupted(target: Path) -> None:
    """Undo what a killed writer of `target` left: restore `.old-<pid>`, drop dead `.tmp-<pid>`."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old)-(\d+)")
    if not target.parent.is_dir():
        return
    debris = [(m, p) for p in target.parent.iterdir() if (m := pattern.fullmatch(p.name))]
    for match, path in sorted(debris, key=lambda mp: mp[1].stat().st_mtime, reverse=True):
        pid = int(match.group(2))
        if pid != os.getpid() and _pid_alive(pid):
            continue  # another live process on this host is writing it
        if match.group(1) == "old" and not target.exists():
            logger.warning("restoring %s from %s left by an interrupted write", target, path)
            os.rename(path, target)
        else:
            logger.warning("removing %s left by an interrupted write", path)
            shutil.rmtree(path, ignore_errors=True)


def _carry_over(source: Path, tmp: Path, keep: Callable[[str], bool]) -> None:
    """Copy the entries of the previous `source` that the new output does not replace."""
    for entry in source.iterdir():
        if not keep(entry.name):
            continue
        dest = tmp / entry.name
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, dest, symlinks=True)
        else:
            shutil.copy2(entry, dest, follow_symlinks=False)


def _swap_in(tmp: Path, target: Path, fsync: bool) -> None:
    swap_directory(tmp, target, target.with_name(f".{target.name}.old-{os.getpid()}"), fsync)


def _what_failed(err: OSError, tmp: Path, target: Path) -> str:
    if err.filename is None:
        return "an unnamed file"
    name = Path(os.fsdecode(err.filename))
    return str(target / name.relative_to(tmp)) if tmp in name.parents else str(name)


@contextlib.contextmanager
def written_aside(
    target: str | os.PathLike[str],
    *,
    fsync: bool = False,
    carry_over: Callable[[str], bool] | None = None,
) -> Iterator[Path]:
    """Yield a sibling temp directory that replaces `target` when the block succeeds.

    Args:
        target: the output directory.
        fsync: flush every written file and the directories to stable storage before the rename.
        carry_over: for an existing `target`, which of its top-level names to copy into the new
            directory (e.g. everything but the weights being rewritten); None copies nothing.

    Raises:
        CheckpointWriteError: an OSError while writing or renaming (errno kept); the message names
            `target` and the file being written. The temp directory is removed and the previous
            `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        if carry_over is not None and target.is_dir():
            _carry_over(target, tmp, carry_over)
        yield tmp
        if fsync:
            for path in tmp.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    fsync_file(path)
                elif path.is_dir():
                    fsync_dir(path)
            fsync_dir(tmp)
        _swap_in(tmp, target, fsync)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        code = err.errno if err.errno is not None else errno_codes.EIO
        raise CheckpointWriteError(
            code,
            f"{target}: writing {_what_failed(err, tmp, target)} failed: {err.strerror or err}; "
            f"the partial output was removed and {target} was left as it was",
        ) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.debug("wrote %s", target)
