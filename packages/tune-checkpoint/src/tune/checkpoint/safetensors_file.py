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
        CorruptCheckpointError: the file is truncated, the header length exceeds the file,
            `__metadata__` is not string -> string, a dtype is unknown, or a tensor's data_offsets
            are out of the data section, reversed, of the wrong size for dtype x shape, or overlap
            another tensor's; the message names the file and the tensor(s).
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
    if len(raw) != header_len:
        raise CorruptCheckpointError(f"{path}: header truncated ({len(raw)} of {header_len} bytes)")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(f"{path}: header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: header is not a JSON object")
    metadata = _check_metadata(path, header.pop("__metadata__", None))
    data_start = 8 + header_len
    data_size = file_size - data_start
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        dtype, shape, begin, end = _parse_entry(path, name, entry)
        expected = math.prod(shape) * dtype.itemsize
        if not 0 <= begin <= end or end - begin != expected:
            raise CorruptCheckpointError(
                f"{path}: tensor {name!r} has data_offsets [{begin}, {end}] but shape "
                f"{list(shape)} of {dtype} needs 0 <= begin <= end and end - begin == {expected}"
            )
        if end > data_size:
            raise CorruptCheckpointError(
                f"{path}: truncated: tensor {name!r} ends at data byte {end} but the file holds only "
                f"{data_size} data bytes ({file_size} bytes in all)"
            )
        spans.append((begin, end, name))
        tensors[name] = TensorInfo(dtype, shape, data_start + begin, expected)
    reach, owner = 0, ""
    for begin, end, name in sorted(spans):
        if begin == end:  # an empty tensor overlaps nothing
            continue
        if begin < reach:
            raise CorruptCheckpointError(
                f"{path}: tensors {owner!r} (ends at data byte {reach}) and {name!r} (starts at "
                f"{begin}) overlap; each tensor needs its own bytes"
            )
        reach, owner = end, name
    covered = max((end for _, end, _ in spans), default=0)
    if covered != data_size:
        raise CorruptCheckpointError(
            f"{path}: {data_size - covered} trailing bytes after the last tensor (corrupt file)"
        )
    return SafetensorsHeader(path, tensors, metadata)


def _check_metadata(path: Path, metadata: object) -> dict[str, str]:
    """`__metadata__` must be absent or a JSON object of string -> string."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise CorruptCheckpointError(
            f"{path}: __metadata__ is a {type(metadata).__name__} ({metadata!r:.80}), expected an "
            "object of string -> string"
        )
    bad = {k: v for k, v in metadata.items() if not isinstance(v, str)}
    if bad:
        key = next(iter(bad))
        raise CorruptCheckpointError(
            f"{path}: __metadata__[{key!r}] is a {type(bad[key]).__name__}, expected a string"
        )
    return dict(metadata)


def _parse_entry(
    path: Path, name: str, entry: object
) -> tuple[torch.dtype, tuple[int, ...], int, int]:
    """dtype, shape and data offsets of one header entry, checked for type."""
    if not isinstance(entry, dict):
        raise CorruptCheckpointError(
            f"{path}: tensor {name!r} has header entry {entry!r:.80}, expected an object with "
            "dtype, shape and data_offsets"
        )
    code = entry.get("dtype")
    if not isinstance(code, str) or code not in _CODE_TO_DTYPE:
        raise CorruptCheckpointError(
            f"{path}: tensor {name!r} has unknown dtype {code!r}; expected one of "
            f"{sorted(_CODE_TO_DTYPE)}"
        )
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
        raise CorruptCheckpointError(
            f"{path}: tensor {name!r} has shape {shape!r}, expected a list of non-negative ints"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise CorruptCheckpointError(
            f"{path}: tensor {name!r} has data_offsets {offsets!r}, expected [begin, end] of "
            "non-negative ints"
        )
    return _CODE_TO_DTYPE[code], tuple(shape), offsets[0], offsets[1]


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
