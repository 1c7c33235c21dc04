"""PEFT adapter directories: `adapter_config.json` + `adapter_model.safetensors`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tune.checkpoint.containment import ensure_inside
from tune.checkpoint.errors import CheckpointError, StateDictMismatchError, first_keys
from tune.checkpoint.key_map import KeyMap, rename_keys
from tune.checkpoint.safe_torch_load import torch_load_weights_only
from tune.checkpoint.safetensors_file import read_safetensors_file, write_safetensors_file
from tune.checkpoint.write_aside import naming_file, write_text_file, written_aside

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
_LORA_REQUIRED = ("r", "lora_alpha", "target_modules")


def save_peft_adapter(
    directory: str | os.PathLike[str],
    adapter_state: Mapping[str, torch.Tensor],
    adapter_config: Mapping[str, Any],
    *,
    key_map: KeyMap | None = None,
    dtype: torch.dtype | None = None,
    prefix: str = PEFT_PREFIX,
) -> Path:
    """Write a PEFT adapter directory that `peft.PeftModel.from_pretrained` loads as it is.

    A key is written as `prefix + key_map(key)`, e.g. native `layers.0.attn.q_proj.lora_A.weight`
    -> (the model's native->HF map) `model.layers.0.self_attn.q_proj.lora_A.weight` -> PEFT
    `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.

    Args:
        directory: output directory (created if needed).
        adapter_state: adapter tensors only (`lora_A` [r, in], `lora_B` [out, r], ...).
        adapter_config: PEFT settings (`r`, `lora_alpha`, `target_modules`, ...); `peft_type`
            defaults to `"LORA"` and `task_type` to `"CAUSAL_LM"`.
        key_map: native name -> HF model name; None keeps names, a None result drops a key.
        dtype: cast floating-point tensors to this dtype.
        prefix: prepended to every key (PEFT's wrapper prefix).

    Returns:
        The directory.

    Raises:
        CheckpointWriteError: an OSError (e.g. ENOSPC) while writing; names `directory` and the
            file, keeps errno. The directory is written aside and renamed into place, so the
            previous adapter (if any) is left as it was.
    """
    directory = Path(directory)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", **dict(adapter_config)}
    if config["peft_type"] == "LORA":
        absent = [k for k in _LORA_REQUIRED if k not in config]
        if absent:
            raise ValueError(f"adapter_config for {directory}: LORA needs {absent}")
    if isinstance(config.get("target_modules"), (set, frozenset, tuple)):
        config["target_modules"] = sorted(config["target_modules"])
    tensors = rename_keys(adapter_state, key_map, where=str(directory))
    tensors = {prefix + k: v for k, v in tensors.items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    if not tensors:
        raise ValueError(f"{directory}: the adapter state is empty")
    replaced = {ADAPTER_WEIGHTS_NAME, ADAPTER_CONFIG_NAME, "adapter_model.bin"}
    with written_aside(directory, carry_over=lambda name: name not in replaced) as tmp:
        with naming_file(tmp / ADAPTER_WEIGHTS_NAME):
            write_safetensors_file(tmp / ADAPTER_WEIGHTS_NAME, tensors)
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        write_text_file(tmp / ADAPTER_CONFIG_NAME, text)
    return directory


def load_peft_adapter(
    directory: str | os.PathLike[str],
    *,
    key_map: KeyMap | None = None,
    dtype: torch.dtype | None = None,
    prefix: str = PEFT_PREFIX,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a PEFT adapter directory; returns `(adapter_state, adapter_config)`.

    `adapter_model.bin` (older PEFT) is read with `torch.load(weights_only=True)`.

    Args:
        directory: holds `adapter_config.json` and `adapter_model.safetensors`.
        key_map: HF model name -> native name, applied after `prefix` is stripped.
        dtype: cast floating-point tensors to this dtype.
        prefix: PEFT's wrapper prefix, stripped from every key.

    Raises:
        FileNotFoundError: the config or the weights are missing.
        StateDictMismatchError: keys without `prefix` (names the file and the keys).
        UnsafeCheckpointPathError: a file is a symlink resolving outside `directory`.
    """
    directory = Path(directory)
    config_path = directory / ADAPTER_CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{directory}: no {ADAPTER_CONFIG_NAME} (not a PEFT adapter directory)"
        )
    ensure_inside(ADAPTER_CONFIG_NAME, directory, "adapter config")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err})") from err
    weights = directory / ADAPTER_WEIGHTS_NAME
    legacy = directory / "adapter_model.bin"
    if weights.is_file():
        ensure_inside(weights.name, directory, "adapter weights")
        raw = read_safetensors_file(weights, dtype=dtype)
    elif legacy.is_file():
        ensure_inside(legacy.name, directory, "adapter weights")
        weights = legacy
        raw = torch_load_weights_only(legacy, mmap=True)
        if dtype is not None:
            raw = {k: v.to(dtype) if v.is_floating_point() else v for k, v in raw.items()}
    else:
        raise FileNotFoundError(f"{directory}: no {ADAPTER_WEIGHTS_NAME} or adapter_model.bin")
    foreign = [k for k in raw if not k.startswith(prefix)]
    if foreign:
        raise StateDictMismatchError(
            f"{weights}: keys without the PEFT prefix {prefix!r}: {first_keys(foreign)}"
        )
    state = {k[len(prefix) :]: v for k, v in raw.items()}
    return rename_keys(state, key_map, where=str(weights)), config
