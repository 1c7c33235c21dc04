"""Exceptions of the GGUF import/export; each names the file, key or tensor and what was expected."""

from __future__ import annotations

from tune.checkpoint.errors import CheckpointError, CorruptCheckpointError


class GgufFormatError(CorruptCheckpointError, ValueError):
    """A file is not GGUF, or is truncated or malformed."""


class UnsupportedGgufError(CheckpointError, ValueError):
    """A valid GGUF (or HF model) that cannot be converted: unknown architecture, unmapped tensor,
    a tensor type that cannot be dequantized, a setting llama.cpp cannot represent."""
