"""The step-directory commit protocol and its crash recovery.

A step is written into `.step_<n>.tmp` with `manifest.json` last, so a scratch directory whose
manifest checks out is complete. Committing renames an existing `step_<n>` to `.step_<n>.old`, the
scratch directory to `step_<n>`, flushes the parent and deletes the old copy; retention renames a
step to `.step_<n>.deleting` before deleting it. At every instant some complete copy of the newest
step exists under one of these names, and:

- `find_latest` picks, newest step first, a complete `step_<n>`, else a complete `.step_<n>.tmp`
  (the newer content), `.step_<n>.old` or `.step_<n>.deleting`;
- `recover` renames that choice to `step_<n>` and deletes only scratch that is incomplete or
  superseded by a complete `step_<n>` (a `.deleting` copy: or by any complete newer step).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

from tune.checkpoint.commit import MANIFEST_NAME, fsync_dir, swap_directory, verify_directory
from tune.checkpoint.errors import CheckpointError

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"step_(\d+)")
SCRATCH = re.compile(r"\.step_(\d+)\.(tmp|old|deleting)")
# Which copy of a step to trust when `step_<n>` is missing or incomplete: newest content first.
_PREFERENCE = ("tmp", "old", "deleting")


def is_complete(path: Path, step: int, checksums: bool = False) -> bool:
    """Whether `path` passes its manifest check and the manifest is for `step` (else log why)."""
    try:
        manifest = verify_directory(path, checksums)
    except CheckpointError as err:
        logger.warning("skipping checkpoint %s: %s", path, err)
        return False
    if manifest["step"] != step:
        logger.warning("skipping %s: its manifest says step %s", path, manifest["step"])
        return False
    return True


def step_copies(root: Path) -> dict[int, dict[str, Path]]:
    """Every copy of every step under `root`: step -> {"committed"|"tmp"|"old"|"deleting": path}."""
    copies: dict[int, dict[str, Path]] = {}
    if not root.is_dir():
        return copies
    for path in root.iterdir():
        if not path.is_dir():
            continue
        if match := STEP_DIR.fullmatch(path.name):
            copies.setdefault(int(match.group(1)), {})["committed"] = path
        elif match := SCRATCH.fullmatch(path.name):
            copies.setdefault(int(match.group(1)), {})[match.group(2)] = path
    return copies


def find_latest(root: Path, checksums: bool = False) -> Path | None:
    """The newest complete copy of a step under `root` (see the module docstring), or None."""
    for step, copies in sorted(step_copies(root).items(), reverse=True):
        for kind in ("committed", *_PREFERENCE):
            path = copies.get(kind)
            if path is not None and is_complete(path, step, checksums):
                if kind != "committed":
                    logger.warning(
                        "step %d: using %s left complete by an interrupted save or deletion (the "
                        "next save commits it as %s)",
                        step,
                        path,
                        root / f"step_{step}",
                    )
                return path
    return None


def _newer_complete_exists(copies: dict[int, dict[str, Path]], step: int) -> bool:
    for newer in sorted((s for s in copies if s > step), reverse=True):
        if any(
            kind in copies[newer] and is_complete(copies[newer][kind], newer)
            for kind in ("committed", "tmp", "old")
        ):
            return True
    return False


def recover(root: Path, fsync: bool) -> None:
    """Commit or restore complete scratch copies of steps and delete the rest (rank 0 only)."""
    copies = step_copies(root)
    for step, found in sorted(copies.items()):
        scratch = {kind: path for kind, path in found.items() if kind != "committed"}
        if not scratch:
            continue
        final = root / f"step_{step}"
        keep: Path | None = None
        if "committed" not in found or not is_complete(final, step):
            for kind in _PREFERENCE:
                path = scratch.get(kind)
                if path is None or not is_complete(path, step):
                    continue
                if kind == "deleting" and _newer_complete_exists(copies, step):
                    break  # retention chose it after a newer step was committed
                keep = path
                break
        if keep is not None:
            if final.exists():  # incomplete; keep it for inspection, never delete it
                aside = root / f".step_{step}.incomplete-{int(time.time())}"
                logger.error("moving incomplete %s aside to %s", final, aside)
                os.rename(final, aside)
            logger.warning("recovering %s from %s left by an interrupted save", final, keep)
            os.rename(keep, final)
            if fsync:
                fsync_dir(root)
        for path in scratch.values():
            if path != keep:
                logger.warning("removing %s left by an interrupted save", path)
                shutil.rmtree(path)


def commit_step(tmp: Path, final: Path, fsync: bool) -> None:
    """Rename a complete `tmp` to `final`, keeping the previous `final` until the new one is in.

    Raises:
        CheckpointError: `.<final>.old` exists (another process is saving into the same root?).
    """
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        raise CheckpointError(
            f"{old} exists while committing {final}: is another run saving into {final.parent}? "
            "(take a RunLock on the run directory)"
        )
    # from the first rename to the second, `old` and `tmp` are both complete
    swap_directory(tmp, final, old, fsync)


def discard_scratch(tmp: Path) -> None:
    """Make a scratch directory of a failed save provably incomplete, then delete it."""
    if not tmp.exists():
        return
    try:
        (tmp / MANIFEST_NAME).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def delete_step(path: Path) -> None:
    """Delete a committed step: renamed to `.step_<n>.deleting` first, so no half-deleted
    `step_<n>` is ever visible."""
    doomed = path.with_name(f".{path.name}.deleting")
    os.rename(path, doomed)
    shutil.rmtree(doomed)
