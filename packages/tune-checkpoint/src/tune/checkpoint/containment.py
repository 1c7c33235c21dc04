"""Containment checks: a path read from a checkpoint file must stay inside its directory."""

from __future__ import annotations

import os
from pathlib import Path

from tune.checkpoint.errors import UnsafeCheckpointPathError


def _hf_cache_blobs(root: Path) -> Path | None:
    """The `blobs/` store of a Hugging Face hub cache snapshot `.../snapshots/<rev>/`, or None."""
    if root.parent.name == "snapshots" and (root.parent.parent / "blobs").is_dir():
        return (root.parent.parent / "blobs").resolve()
    return None


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def ensure_inside(
    path: str | os.PathLike[str], root: str | os.PathLike[str], what: str = "file"
) -> Path:
    """Check that `path` (relative to `root`, or absolute) resolves inside `root`; return it.

    Symlinks are followed (`Path.resolve()`), so a link inside `root` that points elsewhere is
    refused. One exception: a file in a Hugging Face hub cache snapshot (`.../snapshots/<rev>/`)
    may resolve into the same repository's `blobs/` directory, which is how the hub cache stores
    every file.

    Args:
        path: the path to check; a relative path is taken relative to `root`.
        root: the directory it must stay in.
        what: what the path is, for the error message (e.g. "shard named by the index").

    Returns:
        `root / path` (not resolved).

    Raises:
        UnsafeCheckpointPathError: `path` resolves outside `root`; the message names both.
    """
    root = Path(root)
    joined = root / path
    real_root = root.resolve()
    resolved = joined.resolve()
    if _within(resolved, real_root):
        return joined
    blobs = _hf_cache_blobs(real_root)
    if blobs is not None and _within(resolved, blobs):
        return joined
    raise UnsafeCheckpointPathError(
        f"{what} {os.fspath(path)!r} resolves to {resolved}, outside the directory {real_root} "
        f"({root}); refusing to read or write it"
    )


def check_relative_name(root: str | os.PathLike[str], name: object, what: str = "file") -> Path:
    """Join a file name read from an index, manifest or metadata to `root`, refusing escapes.

    Args:
        root: the checkpoint directory.
        name: the name as read from the file (must be a non-empty relative string).
        what: what the name is, for the error message.

    Raises:
        UnsafeCheckpointPathError: `name` is not a string, is empty or absolute, holds `..` or a
            backslash, or resolves (through a symlink) outside `root`.
    """
    if (
        not isinstance(name, str)
        or not name
        or os.path.isabs(name)
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or ".." in Path(name).parts
    ):
        raise UnsafeCheckpointPathError(
            f"{root}: refusing {what} {name!r} (expected a plain relative name inside {root}, "
            "without '..', a leading '/' or a backslash)"
        )
    return ensure_inside(name, root, what)
