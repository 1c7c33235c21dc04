"""``tune.config.load_config`` with the recipes' data: their removed keys and tune's redaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

import tune.config
from tune.recipes.config.hub_ids import is_hub_model_id
from tune.train.loggers.redaction import REDACTED, is_secret_key, redact_text

# Keys that were accepted once and did nothing: a config that still sets one is told what to do.
REMOVED_KEYS = {
    "checkpointing.async_save": "it never did anything (checkpoints are written in the "
    "foreground); remove the key",
    "data.hf_token": "gated Hub datasets read HF_TOKEN from the environment; remove the key",
    "data.streaming": "it never did anything (local files are read whole, batches are built "
    "on the fly); remove the key",
    "data.builder": "choose the shape of the rows with data.format and data.column_map",
    "training.loss": "the sft loss is cross-entropy; training.fused_ce picks the fused kernel",
}


def redact_override(text: str, key: str = "") -> str:
    """``text`` as an error may quote it: a credential (by its key's name or shape) is hidden."""
    if key and is_secret_key(key.rpartition(".")[2], text):
        return f"{key}={REDACTED}"
    return redact_text(text)


def load_config(
    path: str | Path,
    schema: type,
    overrides: Sequence[str] = (),
    *,
    import_gguf: bool = True,
    fetch_hub: bool = False,
    **options: Any,
) -> Any:
    """``tune.config.load_config`` with ``REMOVED_KEYS`` and ``redact_override``.

    Args:
        path: the YAML file.
        schema: the recipe's config dataclass.
        overrides: ``key=value`` items applied on top of the file.
        import_gguf: replace each ``*checkpoint_dir`` naming a ``.gguf`` file by its imported
            HF directory (``tune.checkpoint.gguf.cached_hf_dir``: converted once, then reused).
        fetch_hub: replace each ``*checkpoint_dir`` naming a Hub model (``owner/name``, no such
            local path) by its snapshot in huggingface_hub's cache
            (``tune.checkpoint.hub.resolve_model_dir``: downloaded once); ``tune run`` sets it.
        options: ``recipe``, ``allow_imports``, ``validate``, ``world_size``, ``missing_paths``
            (see ``tune.config.load_config``).
    """
    config = tune.config.load_config(
        path, schema, overrides, removed_keys=REMOVED_KEYS, redact=redact_override, **options
    )
    for section in vars(config).values() if import_gguf else ():
        for key, value in vars(section).items() if is_dataclass(section) else ():
            if not key.endswith("checkpoint_dir") or not isinstance(value, str):
                continue
            if value.endswith(".gguf"):
                from tune.checkpoint.gguf import cached_hf_dir

                setattr(section, key, str(cached_hf_dir(Path(value).expanduser())))
            elif fetch_hub and not Path(value).expanduser().exists() and is_hub_model_id(value):
                from tune.checkpoint.hub import resolve_model_dir

                setattr(section, key, str(resolve_model_dir(value)))  # the HF cache's snapshot
    return config
