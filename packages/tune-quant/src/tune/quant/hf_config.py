"""The ``quantization_config`` entry of an HF ``config.json``, as transformers' TorchAoConfig writes it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchao.core.config import AOBaseConfig, config_from_dict, config_to_dict

from tune.quant.schemes import get_scheme

__all__ = ["hf_quantization_config", "read_hf_quantization_config", "write_hf_quantization_config"]


def hf_quantization_config(
    scheme_or_config: str | AOBaseConfig,
    *,
    device: str | torch.device = "cpu",
    modules_to_not_convert: Sequence[str] | None = None,
    include_input_output_embeddings: bool = False,
    untie_embedding_weights: bool = False,
) -> dict[str, Any]:
    """Build the dict transformers' ``TorchAoConfig.to_dict()`` produces for a scheme.

    Keys: ``quant_method`` ("torchao"), ``quant_type`` (``{"default": <serialized AOBaseConfig>}``),
    ``modules_to_not_convert``, ``include_input_output_embeddings``, ``untie_embedding_weights``.

    Args:
        scheme_or_config: a scheme name (its PTQ config on ``device`` is used) or a torchao config.
        device: device type whose config a scheme name resolves to.
        modules_to_not_convert: HF module names left in float (e.g. ``["lm_head"]``); transformers
            quantizes every other Linear when it loads the directory.
        include_input_output_embeddings: whether embeddings were quantized too.
        untie_embedding_weights: whether tied embeddings were untied before quantizing.

    Raises:
        ValueError: the config cannot be read back by torchao (e.g. the CPU ``int4_weight_only``
            prototype config in torchao 0.18), or a scheme without a config on ``device``.
    """
    if isinstance(scheme_or_config, str):
        device_type = torch.device(device).type
        support = get_scheme(scheme_or_config).devices.get(device_type)
        if support is None:
            raise ValueError(
                f"scheme {scheme_or_config!r} has no config for device {device_type!r}"
            )
        config = support.ptq_config()
    else:
        config = scheme_or_config
    serialized = config_to_dict(config)
    try:
        config_from_dict(serialized)
    except ValueError as err:
        # transformers reads quant_type back with config_from_dict: fail now, not at load time.
        raise ValueError(
            f"{type(config).__name__} cannot be stored in an HF config.json: torchao cannot read it "
            f"back ({err}); this scheme/device has no transformers-loadable export, "
            f"save it with save_quantized(model, 'model.pt') instead"
        ) from err
    return {
        "quant_method": "torchao",
        "quant_type": {"default": serialized},
        "modules_to_not_convert": None
        if modules_to_not_convert is None
        else list(modules_to_not_convert),
        "include_input_output_embeddings": include_input_output_embeddings,
        "untie_embedding_weights": untie_embedding_weights,
    }


def write_hf_quantization_config(
    config_path: str | Path, quantization_config: dict[str, Any]
) -> None:
    """Set ``quantization_config`` in an existing HF ``config.json`` (atomic rewrite).

    Args:
        config_path: the ``config.json`` file, or the directory holding it.
        quantization_config: from ``hf_quantization_config``.

    Raises:
        FileNotFoundError: no config.json there.
        ValueError: the file is not a JSON object.
    """
    path = Path(config_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no HF config.json at {path}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(config).__name__}")
    if quantization_config.get("quant_method") != "torchao":
        raise ValueError(
            f"quantization_config must have quant_method 'torchao', got {quantization_config.get('quant_method')!r}"
        )
    config["quantization_config"] = quantization_config
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_hf_quantization_config(config_path: str | Path) -> AOBaseConfig | None:
    """Return the torchao config stored in an HF ``config.json``, or None when it has none.

    Args:
        config_path: the ``config.json`` file, or the directory holding it.

    Raises:
        ValueError: a ``quantization_config`` that is not torchao's or lacks ``quant_type.default``.
    """
    path = Path(config_path)
    if path.is_dir():
        path = path / "config.json"
    entry = json.loads(path.read_text()).get("quantization_config")
    if entry is None:
        return None
    if entry.get("quant_method") != "torchao":
        raise ValueError(
            f"{path}: quantization_config.quant_method is {entry.get('quant_method')!r}, not 'torchao'"
        )
    quant_type = entry.get("quant_type")
    if not isinstance(quant_type, dict) or set(quant_type) != {"default"}:
        raise ValueError(
            f"{path}: quantization_config.quant_type must be {{'default': ...}}, got {quant_type!r}"
        )
    return config_from_dict(quant_type["default"])
