"""GGUF file types for export: which the `gguf` package can quantize in numpy, and per-tensor choice.

A file type (`"f16"`, `"q8_0"`, ...) names the type of the 2-D weights; as in llama.cpp, 1-D
tensors (norms, biases, rope factors) stay F32. A weight whose row length is not a multiple of the
type's block size (32 for Q8_0, 256 for TQ1_0) falls back to F16 (F32 for an F32 file).
"""

from __future__ import annotations

import functools
import logging

import gguf
import numpy as np
from gguf.constants import GGML_QUANT_SIZES

logger = logging.getLogger(__name__)

_FLOAT_TYPES = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "bf16": gguf.GGMLQuantizationType.BF16,
}
_FILE_TYPE_NAMES = {"f32": "ALL_F32"}


@functools.cache
def _quantizable_types() -> dict[str, gguf.GGMLQuantizationType]:
    """Every type `gguf.quants.quantize` implements here and llama.cpp names as a file type."""
    found = dict(_FLOAT_TYPES)
    for qtype in gguf.GGMLQuantizationType:
        name = qtype.name.lower()
        if name in found or not hasattr(gguf.LlamaFileType, f"MOSTLY_{qtype.name}"):
            continue
        block_size = GGML_QUANT_SIZES[qtype][0]
        try:
            gguf.quants.quantize(np.zeros((1, block_size), dtype=np.float32), qtype)
        except NotImplementedError:
            continue
        found[name] = qtype
    return found


def supported_file_types() -> list[str]:
    """Names accepted by `export_gguf(file_type=...)`, e.g. `['f32', 'f16', 'bf16', 'q4_0', ...]`."""
    return list(_quantizable_types())


def quantization_type(file_type: str) -> gguf.GGMLQuantizationType:
    """The GGML type of the 2-D weights of `file_type`; a ValueError lists the supported ones."""
    types = _quantizable_types()
    if file_type.lower() not in types:
        raise ValueError(
            f"GGUF file type {file_type!r} is not supported; supported (what the installed gguf "
            f"package can quantize): {list(types)}"
        )
    return types[file_type.lower()]


def llama_file_type(file_type: str) -> gguf.LlamaFileType:
    """The `general.file_type` value llama.cpp uses for `file_type`."""
    qtype = quantization_type(file_type)
    name = _FILE_TYPE_NAMES.get(file_type.lower(), f"MOSTLY_{qtype.name}")
    return gguf.LlamaFileType[name]


def tensor_type(name: str, shape: tuple[int, ...], file_type: str) -> gguf.GGMLQuantizationType:
    """The type one tensor is stored as in a `file_type` file.

    Args:
        name: the GGUF tensor name (for the log message).
        shape: its PyTorch shape (`[out, in]` for a weight).
        file_type: a name from `supported_file_types()`.
    """
    qtype = quantization_type(file_type)
    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    block_size = GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block_size == 0:
        return qtype
    fallback = (
        gguf.GGMLQuantizationType.F32
        if qtype == gguf.GGMLQuantizationType.F32
        else gguf.GGMLQuantizationType.F16
    )
    logger.warning(
        "%s: row length %d is not a multiple of the %s block size %d; storing it as %s",
        name,
        shape[-1],
        qtype.name,
        block_size,
        fallback.name,
    )
    return fallback


def encode_tensor(array: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """`array` (float32, PyTorch orientation) in the bytes or floats GGUFWriter takes for `qtype`."""
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return np.ascontiguousarray(array, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)
