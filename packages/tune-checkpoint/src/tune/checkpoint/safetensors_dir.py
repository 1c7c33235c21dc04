"""Sharded safetensors directories: the index, shard planning, safe shard paths, shard-by-shard reads."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from tune.checkpoint.containment import check_relative_name, ensure_inside
from tune.checkpoint.errors import CorruptCheckpointError, first_keys
from tune.checkpoint.safetensors_file import (
    SafetensorsHeader,
    read_safetensors_file,
    read_safetensors_header,
    write_safetensors_file,
)
from tune.checkpoint.write_aside import naming_file, written_aside

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_BYTES = 5 * 1000**3
_UNITS = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as `"5GB"`, `"500MB"`, `"2GiB"`."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)\s*", size.upper())
    if not match:
        raise ValueError(f"max shard size {size!r}: expected an int or e.g. '5GB', '500MB', '2GiB'")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def safe_child_path(directory: str | os.PathLike[str], name: str) -> Path:
    """Join a file name read from an index to its directory, refusing names that escape it.

    Args:
        directory: the checkpoint directory.
        name: a relative file name from an index or manifest.

    Raises:
        UnsafeCheckpointPathError: `name` is absolute, contains `..`, or resolves (through a
            symlink) outside `directory` (see `ensure_inside`).
    """
    return check_relative_name(directory, name, "file name from the index")


def plan_shards(sizes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Group keys (in order) into shards of at most `max_shard_bytes` (a larger tensor is alone)."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, nbytes in sizes.items():
        if shards[-1] and used + nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards if shards[0] else []


def shard_file_names(prefix: str, num_shards: int) -> list[str]:
    """HF shard names: `model.safetensors` alone, else `model-00001-of-00003.safetensors`, ..."""
    if num_shards <= 1:
        return [f"{prefix}.safetensors"]
    return [f"{prefix}-{i:05d}-of-{num_shards:05d}.safetensors" for i in range(1, num_shards + 1)]


def index_file_name(prefix: str) -> str:
    """The index file name of a sharded directory, e.g. `model.safetensors.index.json`."""
    return f"{prefix}.safetensors.index.json"


def write_index(
    directory: Path, prefix: str, weight_map: Mapping[str, str], total_size: int, fsync: bool
) -> Path:
    """Write `<prefix>.safetensors.index.json` atomically."""
    path = directory / index_file_name(prefix)
    body = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(body, f, indent=2)
        f.write("\n")
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def weight_file_pattern(prefix: str) -> re.Pattern[str]:
    """Names of the shard and index files of `prefix` (`model.safetensors`, `model-00001-of-...`)."""
    return re.compile(rf"{re.escape(prefix)}(-\d{{5}}-of-\d{{5}})?\.safetensors(\.index\.json)?")


def remove_stale_shards(directory: Path, prefix: str, keep: set[str]) -> None:
    """Delete shard and index files of an earlier save with another layout."""
    pattern = weight_file_pattern(prefix)
    for path in directory.iterdir():
        if pattern.fullmatch(path.name) and path.name not in keep and path.is_file():
            logger.info("removing stale %s from an earlier save", path)
            path.unlink()


def write_safetensors_shards(
    directory: Path,
    state_dict: Mapping[str, torch.Tensor],
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_BYTES,
    prefix: str = "model",
    metadata: Mapping[str, str] | None = None,
    fsync: bool = False,
) -> list[str]:
    """Write shards (and an index when several) into an existing directory; returns the names."""
    sizes = {k: v.numel() * v.element_size() for k, v in state_dict.items()}
    shards = plan_shards(sizes, parse_size(max_shard_size)) or [[]]
    names = shard_file_names(prefix, len(shards))
    weight_map: dict[str, str] = {}
    for keys, name in zip(shards, names, strict=True):
        with naming_file(directory / name):
            write_safetensors_file(
                directory / name, {k: state_dict[k] for k in keys}, metadata, fsync=fsync
            )
        weight_map.update(dict.fromkeys(keys, name))
    if len(shards) > 1:
        with naming_file(directory / index_file_name(prefix)):
            write_index(directory, prefix, weight_map, sum(sizes.values()), fsync)
    return names


def save_safetensors_dir(
    directory: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_BYTES,
    prefix: str = "model",
    metadata: Mapping[str, str] | None = None,
    fsync: bool = False,
) -> list[Path]:
    """Write a state dict as one safetensors file, or as shards plus an index when it is larger.

    The directory is written aside (`.<name>.tmp-<pid>`) and renamed into place, so a full disk or
    a kill leaves the previous directory as it was. Other files of an existing directory (e.g.
    `config.json`) are kept; its `<prefix>` shards and index are replaced. Returns the shard paths.

    Args:
        directory: output directory (created if needed).
        state_dict: name -> tensor; tensors sharing storage are written as copies.
        max_shard_size: largest shard in bytes, or a string such as `"5GB"`.
        prefix: file name prefix (`model` gives `model.safetensors`, `model-00001-of-00002...`).
        metadata: string metadata stored in each shard header.
        fsync: flush every file to stable storage.

    Raises:
        CheckpointWriteError: an OSError (e.g. ENOSPC) while writing; names `directory` and the
            file, keeps errno; the partial output is removed.
    """
    directory = Path(directory)
    pattern = weight_file_pattern(prefix)
    with written_aside(
        directory, fsync=fsync, carry_over=lambda name: not pattern.fullmatch(name)
    ) as tmp:
        names = write_safetensors_shards(
            tmp,
            state_dict,
            max_shard_size=max_shard_size,
            prefix=prefix,
            metadata=metadata,
            fsync=fsync,
        )
    return [directory / name for name in names]


def read_weight_map(directory: str | os.PathLike[str], prefix: str = "model") -> dict[str, Path]:
    """Map every tensor name of a safetensors directory to its (checked) shard path.

    Reads `<prefix>.safetensors.index.json` when present, else the single `<prefix>.safetensors`.

    Raises:
        FileNotFoundError: no index or single file, or a shard named by the index is missing (the
            message names the shard and the first keys it should hold).
        UnsafeCheckpointPathError: a shard name escapes the directory, or a weight or index file
            is a symlink resolving outside it (names both paths).
        CorruptCheckpointError: the index is not valid JSON or has no `weight_map`.
    """
    directory = Path(directory)
    index = directory / index_file_name(prefix)
    single = directory / f"{prefix}.safetensors"
    if index.is_file():
        ensure_inside(index.name, directory, "index file")
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CorruptCheckpointError(
                f"{index}: not a valid safetensors index ({err!r})"
            ) from err
        if not isinstance(weight_map, dict):
            raise CorruptCheckpointError(f"{index}: 'weight_map' must be an object")
        by_file: dict[str, list[str]] = {}
        for key, file_name in weight_map.items():
            if not isinstance(file_name, str):
                raise CorruptCheckpointError(
                    f"{index}: weight_map[{key!r}] is {file_name!r}, expected a file name string"
                )
            by_file.setdefault(file_name, []).append(key)
        paths = {name: safe_child_path(directory, name) for name in by_file}
        for name, path in paths.items():
            if not path.is_file():
                raise FileNotFoundError(
                    f"{index}: shard {name!r} is missing from {directory}; it should hold "
                    f"{first_keys(by_file[name])}"
                )
        return {key: paths[str(name)] for key, name in weight_map.items()}
    if single.is_file():
        ensure_inside(single.name, directory, "weight file")
        return dict.fromkeys(read_safetensors_header(single).tensors, single)
    raise FileNotFoundError(
        f"{directory}: no {index.name} and no {single.name} (not a safetensors checkpoint directory)"
    )


def read_headers(weight_map: Mapping[str, Path]) -> dict[Path, SafetensorsHeader]:
    """Parse each shard's header once and check that it holds the keys the index assigns to it."""
    by_file: dict[Path, list[str]] = {}
    for key, path in weight_map.items():
        by_file.setdefault(path, []).append(key)
    headers: dict[Path, SafetensorsHeader] = {}
    for path, keys in by_file.items():
        header = read_safetensors_header(path)
        absent = [k for k in keys if k not in header.tensors]
        if absent:
            raise CorruptCheckpointError(
                f"{path}: the index assigns {first_keys(absent)} to this shard but it does not "
                "hold them"
            )
        headers[path] = header
    return headers


def iter_safetensors_dir(
    directory: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    prefix: str = "model",
) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    """Yield `(shard path, tensors)` one shard at a time, so only one shard is in memory.

    Args:
        directory: a directory with `<prefix>.safetensors` or a sharded index.
        dtype: cast floating-point tensors to this dtype.
        prefix: file name prefix.
    """
    weight_map = read_weight_map(directory, prefix)
    for path, header in read_headers(weight_map).items():
        keys = [k for k, p in weight_map.items() if p == path]
        yield path, read_safetensors_file(path, keys, dtype=dtype, header=header)


def load_safetensors_dir(
    directory: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    prefix: str = "model",
) -> dict[str, torch.Tensor]:
    """Read a whole (possibly sharded) safetensors directory into one state dict.

    Args:
        directory: a directory with `<prefix>.safetensors` or a sharded index.
        dtype: cast floating-point tensors to this dtype.
        prefix: file name prefix.
    """
    out: dict[str, torch.Tensor] = {}
    for _, tensors in iter_safetensors_dir(directory, dtype=dtype, prefix=prefix):
        out.update(tensors)
    return out
