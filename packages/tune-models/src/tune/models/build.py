"""Building a native model from an HF ``config.json`` through the family registry."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune.models.decoder_config import DecoderConfig
from tune.models.hf_config import ConfigFields, UnsupportedConfigError, load_hf_config
from tune.models.registry import ModelFamily, family_for_model_type, supported_model_types
from tune.models.transformer import Transformer

logger = logging.getLogger(__name__)

ConfigLike = dict[str, Any] | str | Path | DecoderConfig | nn.Module


def config_from_hf(config: dict[str, Any] | str | Path) -> DecoderConfig:
    """The family's frozen config dataclass for an HF config (dict, config.json or checkpoint dir).

    Raises:
        UnsupportedConfigError: unknown ``model_type`` or an unsupported field value; the
            message names the source, the field and what is supported.
    """
    data, source = load_hf_config(config)
    model_type = data.get("model_type")
    if model_type is None:
        raise UnsupportedConfigError(
            f"{source}: no 'model_type' field; supported: {supported_model_types()}"
        )
    family = family_for_model_type(model_type, source)
    return family.config_from_hf(ConfigFields(data, source))


def resolve_config(config: ConfigLike) -> tuple[ModelFamily, DecoderConfig]:
    """(family, family config) for a model, a family config, an HF config dict or a path."""
    if isinstance(config, nn.Module):
        cfg = getattr(config, "config", None)
        if not isinstance(cfg, DecoderConfig):
            raise TypeError(
                f"{type(config).__name__} has no tune.models config (.config); pass the HF "
                f"config or the family config instead"
            )
        config = cfg
    if not isinstance(config, DecoderConfig):
        config = config_from_hf(config)
    return family_for_model_type(config.model_type), config


def build_model(
    config: DecoderConfig,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Transformer:
    """Build the native model for a family config.

    Args:
        config: a family config (e.g. from ``config_from_hf``).
        device: where to allocate; "meta" builds without memory (then ``to_empty`` and
            ``init_buffers`` or load a state dict with ``assign=True``).
        dtype: parameter dtype; defaults to torch's default dtype.
    """
    family = family_for_model_type(config.model_type)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = family.build(config)
        if device is None or torch.device(device).type != "meta":
            model.init_weights()
    if dtype is not None:
        model = model.to(dtype)
    logger.debug("built %s (%s) on %s", family.name, config.model_type, device or "default")
    return model


def build_from_hf_config(
    config: dict[str, Any] | str | Path,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Transformer:
    """Build the native model for any supported HF ``config.json`` (dict, file or checkpoint dir).

    Honours ``rope_parameters``/``rope_scaling``, ``tie_word_embeddings``, ``head_dim``, sliding
    windows, soft-capping and the other architecture fields of each family.

    Args:
        config: the parsed config, a path to ``config.json`` or a checkpoint directory.
        device: where to allocate ("meta" for a memory-free skeleton).
        dtype: parameter dtype.

    Raises:
        UnsupportedConfigError: unsupported ``model_type`` or field value (the message lists
            what is supported).
    """
    return build_model(config_from_hf(config), device=device, dtype=dtype)
