"""Which config values name a Hugging Face Hub model rather than a local path."""

from __future__ import annotations


def is_hub_model_id(value: str) -> bool:
    """Whether a model path that does not exist names a Hub model instead (``owner/name``):
    not written as a path (``/``, ``./``, ``../``, ``~``), not a ``.gguf`` file."""
    return (
        value.count("/") == 1
        and not value.startswith(("/", "./", "../", "~"))
        and not value.endswith(".gguf")
    )
