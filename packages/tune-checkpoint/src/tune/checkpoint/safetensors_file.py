"""Read and write single safetensors files with bounded memory (no mmap, one tensor at a time)."""

from __future__ import annotations

import ctypes
import json
import math
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from tune.checkpoint.errors import CorruptCheckpointError

# The format: 8-byte little-endian header length, a JSON header, then the raw tensor bytes.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_CODE_TO_DTYPE: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_DTYPE_TO_CODE = {dtype: code for code, dtype in _CODE_TO_DTYPE.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in a safetensors file.

    Args:
        dtype: torch dtype of the stored values.
        shape: stored shape.
        start: byte offset of the first byte, from the start of the file.
        nbytes: number of bytes.
    """

    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    nbytes: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed header of one safetensors file: tensor locations and the string metadata."""

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def read_safetensors_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Parse and validate the header of a safetensors file without reading tensor data.

    Args:
        path: the `.safetensors` file.

    Raises:
        CorruptCheckpointError: the file is truncated, or the header is malformed; the message names
            the file and the first tensor that does not fit.
    """
    path = Path(path)
    file_size = path.stat().st_size
    if file_size < 8:
        raise CorruptCheckpointError(f"{path}: {file_size} bytes, too short for a safetensors file")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > _MAX_HEADER_BYTES or 8 + header_len > file_size:
            raise CorruptCheckpointError(
                f"{path}: header claims {header_len} bytes but the file has {file_size} bytes "
                "(truncated or not a safetensors file)"
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(f"{path}: header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    data_size = file_size - data_start
    tensors: dict[str, TensorInfo] = {}
    covered = 0
    for name, entry in header.items():
        try:
            dtype = _CODE_TO_DTYPE[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptCheckpointError(
                f"{path}: tensor {name!r} has a malformed header entry {entry!r} ({err!r})"
            ) from err
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected or begin < 0:
            raise CorruptCheckpointError(
                f"{path}: tensor {name!r} spans bytes [{begin}, {end}) but shape {list(shape)} "
                f"of {dtype} needs {expected} bytes"
            )
        if end > data_size:
            raise CorruptCheckpointError(
                f"{path}: truncated: tensor {name!r} ends at data byte {end} but the file holds only "
                f"{data_size} data bytes ({file_size} bytes in all)"
            )
        covered = max(covered, end)
        tensors[name] = TensorInfo(dtype, shape, data_start + begin, expected)
    if covered != data_size:
        raise CorruptCheckpointError(
            f"{path}: {data_size - covered} trailing bytes after the last tensor (corrupt file)"
        )
    return SafetensorsHeader(path, tensors, {str(k): str(v) for k, v in metadata.items()})


def _byte_view(tensor: torch.Tensor) -> memoryview:
    """A writable byte view of a contiguous CPU tensor's memory (no copy)."""
    buffer = (ctypes.c_ubyte * tensor.nbytes).from_address(tensor.data_ptr())
    return memoryview(buffer).cast("B")


def read_safetensors_file(
    path: str | os.PathLike[str],
    keys: Iterable[str] | None = None,
    dtype: torch.dtype | Mapping[str, torch.dtype] | None = None,
    header: SafetensorsHeader | None = None,
) -> dict[str, torch.Tensor]:
    """Read tensors of a safetensors file into fresh CPU tensors, one at a time.

    Args:
        path: the `.safetensors` file.
        keys: names to read (default: all, in file order).
        dtype: cast floating-point tensors to this dtype, or a per-key mapping of target dtypes.
        header: an already parsed header of `path`, to skip parsing it again.

    Raises:
        CorruptCheckpointError: truncated or malformed file.
        KeyError: a requested key is not in the file (the message names the file).
    """
    header = header or read_safetensors_header(path)
    names = list(header.tensors) if keys is None else list(keys)
    out: dict[str, torch.Tensor] = {}
    with open(header.path, "rb", buffering=0) as f:
        for name in names:
            info = header.tensors.get(name)
            if info is None:
                raise KeyError(f"{header.path}: no tensor named {name!r}")
            tensor = torch.empty(info.shape, dtype=info.dtype)
            if info.nbytes:
                f.seek(info.start)
                view, done = _byte_view(tensor), 0
                while done < info.nbytes:
                    got = f.readinto(view[done:])
                    if not got:
                        raise CorruptCheckpointError(
                            f"{header.path}: truncated while reading tensor {name!r}"
                        )
                    done += got
            target = dtype.get(name) if isinstance(dtype, Mapping) else dtype
            cast = tensor.is_floating_point() or isinstance(dtype, Mapping)
            if target is not None and target != tensor.dtype and cast:
                tensor = tensor.to(target)
            out[name] = tensor
    return out


def _header_bytes(entries: dict[str, object]) -> bytes:
    raw = json.dumps(entries, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # pad so tensor data starts 8-byte aligned


def write_safetensors_file(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    fsync: bool = False,
) -> int:
    """Write tensors to a safetensors file, streaming one tensor at a time; returns bytes written.

    The file is written under a temporary name and renamed into place, so a reader never sees a
    half-written file under `path`. Tensors that share storage (tied weights) are written as
    separate copies.

    Args:
        path: destination file.
        tensors: name -> tensor (any device, any layout; moved to CPU and made contiguous).
        metadata: string -> string metadata; `format: pt` is always set.
        fsync: flush the file to stable storage before renaming.
    """
    path = Path(path)
    # Largest element size first keeps every tensor aligned to its element size.
    order = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    entries: dict[str, object] = {"__metadata__": {"format": "pt", **dict(metadata or {})}}
    offset = 0
    for name in order:
        tensor = tensors[name]
        if type(tensor.detach()) is not torch.Tensor or tensor.is_quantized:
            raise TypeError(
                f"{path}: tensor {name!r} is a {type(tensor).__name__}, not a plain tensor; gather "
                "sharded (DTensor) state first, e.g. get_model_state_dict(..., "
                "options=StateDictOptions(full_state_dict=True)), or save it with save_sharded; "
                "dequantize quantized tensors"
            )
        code = _DTYPE_TO_CODE.get(tensor.dtype)
        if code is None:
            raise TypeError(f"{path}: tensor {name!r} has dtype {tensor.dtype}, not storable")
        nbytes = tensor.numel() * tensor.element_size()
        entries[name] = {
            "dtype": code,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    head = _header_bytes(entries)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(head)))
            f.write(head)
            for name in order:
                tensor = tensors[name].detach()
                if tensor.numel() == 0:
                    continue
                tensor = tensor.to("cpu").contiguous()
                f.write(_byte_view(tensor))
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return 8 + len(head) + offset
