"""Read DCP directories without running code: an allow-listed `.metadata` unpickler, a reader that
serves the verified metadata, and a planner that loads non-tensor values weights-only."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

from tune.checkpoint.containment import check_relative_name, ensure_inside
from tune.checkpoint.errors import CorruptCheckpointError

METADATA_NAME = ".metadata"

# Every global a `.metadata` written by torch 2.13's FileSystemWriter refers to (found by tracing
# model, optimizer, int/bool/bf16 buffers and plain values, saved at 1 and 2 ranks), plus plain
# containers. Each one only builds data when called; nothing here can reach exec, os or imports.
_ALLOWED_GLOBALS: dict[str, frozenset[str]] = {
    "torch.distributed.checkpoint.metadata": frozenset(
        {
            "Metadata",
            "TensorStorageMetadata",
            "BytesStorageMetadata",
            "ChunkStorageMetadata",
            "TensorProperties",
            "_MEM_FORMAT_ENCODING",
            "StorageMeta",
            "MetadataIndex",
        }
    ),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo", "_StoragePrefix"}),
    "torch.serialization": frozenset({"_get_layout"}),  # name -> torch.layout, from a dict
    "torch": frozenset({"Size"}),
    "pathlib": frozenset({"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"}),
    "collections": frozenset({"OrderedDict"}),
    "builtins": frozenset({"set", "frozenset", "list", "dict", "tuple"}),
}


def _is_allowed(module: str, name: str) -> bool:
    if name in _ALLOWED_GLOBALS.get(module, ()):
        return True
    # dtypes pickle as the global `torch.<name>` (torch.float32, torch.bfloat16, ...)
    return module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)


class _RefusedGlobalError(pickle.UnpicklingError):
    """A `.metadata` pickle refers to a global outside the allow-list."""


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles only the allow-listed globals; anything else is refused before it is resolved."""

    def __init__(self, file: io.BufferedReader, path: Path) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if not _is_allowed(module, name):
            raise _RefusedGlobalError(
                f"{self.path}: refused to unpickle the global {module}.{name}; a DCP .metadata "
                "holds only torch.distributed.checkpoint metadata classes, torch.Size, dtypes "
                "and plain containers (a tampered or foreign file?)"
            )
        return super().find_class(module, name)


def read_dcp_metadata(directory: str | os.PathLike[str]) -> Metadata:
    """Unpickle `directory/.metadata` with an allow-list of DCP metadata classes.

    Raises:
        pickle.UnpicklingError: the file refers to a global outside the allow-list (names the
            file and the global); nothing from it was called.
        CorruptCheckpointError: truncated or malformed, or not a DCP `Metadata` object.
        UnsafeCheckpointPathError: a storage item's `relative_path` (or `.metadata` itself, through
            a symlink) resolves outside `directory` (names the key and both paths).
        FileNotFoundError: no `.metadata` (not a DCP directory).
    """
    path = Path(directory) / METADATA_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: no {METADATA_NAME} (not a DCP checkpoint directory)")
    ensure_inside(METADATA_NAME, directory, "DCP metadata file")
    with open(path, "rb") as f:
        try:
            metadata = _MetadataUnpickler(f, path).load()
        except _RefusedGlobalError:
            raise
        except Exception as err:  # truncated or garbage bytes fail in many ways
            raise CorruptCheckpointError(f"{path}: malformed DCP metadata ({err!r})") from err
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise CorruptCheckpointError(
            f"{path}: holds a {type(metadata).__name__}, not DCP checkpoint Metadata"
        )
    _check_storage_data(Path(directory), path, metadata)
    return metadata


def _check_storage_data(directory: Path, path: Path, metadata: Metadata) -> None:
    """Every storage item must name a data file inside `directory` and a non-negative range."""
    storage = metadata.storage_data
    if storage is None:
        return
    if not isinstance(storage, dict):
        raise CorruptCheckpointError(
            f"{path}: storage_data is a {type(storage).__name__}, not a dict"
        )
    for index, info in storage.items():
        fqn = getattr(index, "fqn", index)
        relative = getattr(info, "relative_path", None)
        check_relative_name(directory, relative, f"data file of {fqn!r} (from {path})")
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        if not (
            isinstance(offset, int) and isinstance(length, int) and offset >= 0 and length >= 0
        ):
            raise CorruptCheckpointError(
                f"{path}: storage of {fqn!r} in {relative!r} has offset {offset!r} and length "
                f"{length!r}; expected non-negative integers"
            )


class VerifiedMetadataReader(FileSystemReader):
    """A `FileSystemReader` that hands DCP metadata already read by `read_dcp_metadata`.

    DCP's own `read_metadata` unpickles `.metadata` with plain `pickle.load`; this one never opens
    the file, so it is unpickled once, through the allow-list.

    Args:
        path: the DCP directory.
        metadata: what `read_dcp_metadata(path)` returned.
    """

    def __init__(self, path: str | os.PathLike[str], metadata: Metadata) -> None:
        super().__init__(str(path))
        self._metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """The verified metadata (the global one: rank-local metadata files are never read)."""
        if self._metadata.storage_meta is None:
            self._metadata.storage_meta = StorageMeta()
        self._metadata.storage_meta.load_id = self.load_id
        return self._metadata


class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    """`DefaultLoadPlanner` that loads non-tensor values with `torch.load(weights_only=True)`.

    The default planner loads them with `weights_only=False`, so a tampered `.distcp` could run
    code through a pickled plain value (e.g. an optimizer's param groups).

    Args:
        directory: the DCP directory, named in errors.
        **kwargs: `DefaultLoadPlanner` options (e.g. `allow_partial_load=True`).
    """

    def __init__(self, directory: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.directory = directory

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        """Set one non-tensor value of the state dict from its saved bytes."""
        fqn = read_item.dest_index.fqn
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            raise pickle.UnpicklingError(
                f"{self.directory}: refused to load the value of {fqn!r}: {err}"
            ) from err
        # Hand DCP a re-serialised copy of what passed: its own placement logic (nested keys,
        # flattening) stays in charge, and the bytes it unpickles hold only allowed types.
        clean = io.BytesIO()
        torch.save(obj, clean)
        clean.seek(0)
        super().load_bytes(read_item, clean)
