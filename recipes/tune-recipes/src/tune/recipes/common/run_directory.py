"""Where a recipe config names its model inputs (for tune.checkpoint's run-directory checks)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Config keys (their last part) that name model inputs a run must never write into.
INPUT_KEY_SUFFIXES = ("checkpoint_dir", "adapter_dir")
INPUT_KEYS = ("tokenizer.path",)
# Sections that describe outputs, not inputs.
OUTPUT_SECTIONS = ("checkpointing", "logging")


def model_inputs(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted key, path)`` of every model, adapter and tokenizer input in a config tree."""
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            if key not in OUTPUT_SECTIONS:
                yield from model_inputs(value, key + ".")
        elif isinstance(value, str) and value and (
            key in INPUT_KEYS or str(name).endswith(INPUT_KEY_SUFFIXES)
        ):  # fmt: skip
            yield key, value


def output_dir_of(tree: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(key, path)`` of ``checkpointing.output_dir`` (training) or ``output_dir`` (quantize)."""
    section = tree.get("checkpointing")
    if isinstance(section, Mapping):
        key, value = "checkpointing.output_dir", section.get("output_dir")
    else:
        key, value = "output_dir", tree.get("output_dir")
    return (key, value) if isinstance(value, str) else None
