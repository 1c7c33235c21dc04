"""Read a GGUF file: metadata as plain Python values, tensors dequantized to float32 torch tensors.

GGUF lists a tensor's shape fastest dimension first (`[in, out]` for a weight); the tensors returned
here are in PyTorch orientation (`[out, in]`), under their GGUF names (`blk.0.attn_q.weight`), with
llama.cpp's storage conventions left as they are (see `import_hf` for the HF layout).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from tune.checkpoint.gguf.errors import GgufFormatError, UnsupportedGgufError

logger = logging.getLogger(__name__)

_MAGIC = b"GGUF"
# Header fields GGUFReader exposes as if they were metadata.
_HEADER_KEYS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")


@dataclass
class GgufContents:
    """What a GGUF file holds.

    Attributes:
        path: the file.
        metadata: key -> str / int / float / bool / list of those (`general.architecture`, ...).
        tensors: GGUF name -> float32 tensor in PyTorch orientation (`[out, in]` for a weight).
        tensor_types: GGUF name -> the stored GGML type name (`"F32"`, `"Q4_1"`, ...).
    """

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    tensor_types: dict[str, str] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        """`general.architecture` (e.g. `"llama"`)."""
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise GgufFormatError(f"{self.path}: no general.architecture string in the metadata")
        return arch


def _shortest_float32(value: float) -> float:
    """A FLOAT32 value as the shortest decimal that rounds to it (1e-05, not 9.9999997e-06)."""
    return float(str(np.float32(value)))


def _plain_value(field_: Any) -> Any:
    value = field_.contents()
    if field_.types and field_.types[-1] == gguf.GGUFValueType.FLOAT32:
        if isinstance(value, list):
            return [_shortest_float32(v) for v in value]
        return _shortest_float32(value)
    return value


def _open(path: Path) -> gguf.GGUFReader:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such GGUF file")
    if not path.is_file():
        raise GgufFormatError(f"{path}: not a file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != _MAGIC:
        raise GgufFormatError(
            f"{path}: not a GGUF file (first bytes {magic!r}, expected {_MAGIC!r})"
        )
    try:
        reader = gguf.GGUFReader(path)
    except (
        ValueError,
        IndexError,
        KeyError,
        struct.error,
        OverflowError,
        UnicodeDecodeError,
    ) as err:
        raise GgufFormatError(
            f"{path}: truncated or malformed GGUF file ({type(err).__name__}: {err})"
        ) from err
    size = path.stat().st_size
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise GgufFormatError(
                f"{path}: truncated GGUF file: tensor {tensor.name!r} ends at byte {end}, the "
                f"file has {size}"
            )
    return reader


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a GGUF file, without reading its tensors.

    Raises:
        FileNotFoundError: no file at `path`.
        GgufFormatError: not a GGUF file, or truncated or malformed.
    """
    path = Path(path)
    reader = _open(path)
    return {k: _plain_value(f) for k, f in reader.fields.items() if k not in _HEADER_KEYS}


def _dequantize(path: Path, tensor: Any) -> torch.Tensor:
    qtype = gguf.GGMLQuantizationType(tensor.tensor_type)
    try:
        array = gguf.quants.dequantize(tensor.data, qtype)
    except (NotImplementedError, KeyError) as err:
        raise UnsupportedGgufError(
            f"{path}: tensor {tensor.name!r} is stored as {qtype.name}, which the installed gguf "
            f"package cannot dequantize ({err})"
        ) from err
    # GGUF lists dims fastest first; the data is row-major in the reversed (PyTorch) order.
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    array = np.asarray(array, dtype=np.float32).reshape(shape)
    return torch.from_numpy(np.array(array, dtype=np.float32, copy=True))


def read_gguf(path: str | os.PathLike[str], *, names: Iterable[str] | None = None) -> GgufContents:
    """Read a GGUF file: its metadata and every tensor dequantized to float32.

    Any type `gguf.quants.dequantize` handles is read (F32, F16, BF16, Q4_0 ... Q8_0, K-quants,
    IQ types, TQ types, MXFP4).

    Args:
        path: the `.gguf` file.
        names: read only these tensors (default: all).

    Raises:
        FileNotFoundError: no file at `path`.
        GgufFormatError: not a GGUF file, or truncated or malformed (names the file and tensor).
        UnsupportedGgufError: a tensor type that cannot be dequantized (names tensor and type).
        KeyError: a name in `names` that the file does not hold.
    """
    path = Path(path)
    reader = _open(path)
    metadata = {k: _plain_value(f) for k, f in reader.fields.items() if k not in _HEADER_KEYS}
    by_name = {t.name: t for t in reader.tensors}
    wanted = list(by_name) if names is None else list(names)
    absent = [n for n in wanted if n not in by_name]
    if absent:
        raise KeyError(f"{path}: no tensor {absent[0]!r} in this GGUF file")
    contents = GgufContents(path=path, metadata=metadata)
    for name in wanted:
        tensor = by_name[name]
        contents.tensor_types[name] = gguf.GGMLQuantizationType(tensor.tensor_type).name
        contents.tensors[name] = _dequantize(path, tensor)
    logger.debug("read %d tensors from %s", len(contents.tensors), path)
    return contents


def gguf_tensor_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """GGUF name -> PyTorch-orientation shape of every tensor, without reading the data."""
    reader = _open(Path(path))
    return {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
