"""Named sizes of the supported families (published ``config.json`` architecture fields)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from tune.models.build import build_from_hf_config
from tune.models.registry import families
from tune.models.transformer import Transformer


def named_sizes() -> list[str]:
    """Every named size, e.g. "llama3.1-8b", "qwen2.5-0.5b", "gemma2-9b"."""
    return sorted(name for fam in families().values() for name in fam.named_sizes)


def named_size_config(name: str) -> dict[str, Any]:
    """A copy of the HF config fields of a named size."""
    for fam in families().values():
        if name in fam.named_sizes:
            return copy.deepcopy(fam.named_sizes[name])
    raise KeyError(f"unknown named size {name!r}; known: {named_sizes()}")


def build_named_size(
    name: str, *, device: torch.device | str | None = "meta", dtype: torch.dtype | None = None
) -> Transformer:
    """Build a named size (on the meta device by default: no memory, exact shapes)."""
    return build_from_hf_config(named_size_config(name), device=device, dtype=dtype)
