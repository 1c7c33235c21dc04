"""Durable file writes and the atomic directory commit: fsync, manifest, rename."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from tune.checkpoint.containment import check_relative_name
from tune.checkpoint.errors import CorruptCheckpointError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "tune-checkpoint/1"
_CHUNK = 16 * 1024 * 1024


def fsync_file(path: Path) -> None:
    """Flush one file's data to stable storage."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (new names, renames) to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def swap_directory(tmp: Path, target: Path, old: Path, fsync: bool) -> None:
    """Put the complete directory ``tmp`` at ``target``; a previous ``target`` is kept as ``old``
    until the new one is in place (restored if the rename fails), then deleted.

    A kill between the two renames leaves ``old`` and ``tmp``, both complete: whoever recovers
    the directory finds one of them.
    """
    replacing = target.exists()
    if replacing:
        os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        if replacing:
            os.rename(old, target)
        raise
    if fsync:
        fsync_dir(target.parent)
    if replacing:
        try:
            shutil.rmtree(old)
        except OSError as err:  # in place already; recovery of the next write removes it
            logging.getLogger(__name__).warning("could not remove %s: %s", old, err)


def torch_save_durable(path: Path, obj: Any, fsync: bool) -> None:
    """`torch.save` to `path`, flushed to stable storage when `fsync`."""
    with open(path, "wb") as f:
        torch.save(obj, f)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 16 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(directory: Path) -> list[str]:
    """Relative POSIX paths of every regular file under `directory`, sorted."""
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def write_manifest(
    directory: Path, step: int, world_size: int, checksums: bool, fsync: bool
) -> dict[str, Any]:
    """Describe every file of `directory` (size, optional sha256) in `manifest.json`, written last."""
    files: dict[str, dict[str, Any]] = {}
    for name in list_files(directory):
        if name == MANIFEST_NAME:
            continue
        path = directory / name
        if fsync:
            fsync_file(path)
        entry: dict[str, Any] = {"size": path.stat().st_size}
        if checksums:
            entry["sha256"] = sha256_file(path)
        files[name] = entry
    manifest = {"format": MANIFEST_FORMAT, "step": step, "world_size": world_size, "files": files}
    with open(directory / MANIFEST_NAME, "w") as f:
        json.dump(manifest, f, indent=2)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    if fsync:
        for sub in {directory, *(p for p in directory.rglob("*") if p.is_dir())}:
            fsync_dir(sub)
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    """Parse `manifest.json` of a step directory.

    Raises:
        CorruptCheckpointError: the manifest is missing (an uncommitted directory) or malformed.
    """
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise CorruptCheckpointError(f"{directory}: no {MANIFEST_NAME} (save did not complete)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CorruptCheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise CorruptCheckpointError(f"{path}: not a {MANIFEST_FORMAT} manifest")
    return manifest


def verify_directory(directory: Path, checksums: bool = False) -> dict[str, Any]:
    """Check a committed directory against its manifest; returns the manifest.

    Args:
        directory: a step directory.
        checksums: also compare sha256 digests (reads every byte), not only sizes.

    Raises:
        CorruptCheckpointError: a file is missing, has another size, or another digest.
        UnsafeCheckpointPathError: a listed name escapes `directory` (`..`, absolute, or a
            symlink resolving outside it); the message names both paths.
    """
    manifest = read_manifest(directory)
    files = manifest.get("files")
    if not isinstance(files, dict) or not isinstance(manifest.get("step"), int):
        raise CorruptCheckpointError(
            f"{directory / MANIFEST_NAME}: expected an integer 'step' and a 'files' object"
        )
    for name, entry in files.items():
        path = check_relative_name(directory, name, f"file listed in {MANIFEST_NAME}")
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int):
            raise CorruptCheckpointError(
                f"{directory / MANIFEST_NAME}: entry of {name!r} is {entry!r}, expected "
                '{"size": <int>, "sha256": <hex>}'
            )
        if not path.is_file():
            raise CorruptCheckpointError(
                f"{directory}: file {name!r} listed in the manifest is missing"
            )
        size = path.stat().st_size
        if size != entry["size"]:
            raise CorruptCheckpointError(
                f"{path}: {size} bytes, the manifest says {entry['size']} (truncated or modified)"
            )
        if checksums and "sha256" in entry and sha256_file(path) != entry["sha256"]:
            raise CorruptCheckpointError(f"{path}: sha256 differs from the manifest (corrupt)")
    return manifest
