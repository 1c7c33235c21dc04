"""What a recipe needs to load an HF checkpoint directory: the model and the key maps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tune.models.build import build_model, config_from_hf
from tune.models.decoder_config import DecoderConfig
from tune.models.hf_keys import hf_to_native_key, native_to_hf_key, state_dict_converters
from tune.models.registry import family_for_model_type
from tune.models.transformer import Transformer

StateDict = dict[str, Tensor]


@dataclass(frozen=True)
class CheckpointModel:
    """A model built from a checkpoint's ``config.json`` plus the functions to map its weights.

    Args:
        model: the native model (on the requested device, not yet loaded).
        config: the family config.
        hf_to_native: whole-state-dict converter (handles fused tensors and tied embeddings).
        native_to_hf: the inverse converter.
        hf_to_native_key: per-key rename (one-to-one keys only).
        native_to_hf_key: per-key inverse rename.
        keys_one_to_one: False when the HF checkpoint fuses tensors (Phi-3), i.e. the per-key
            maps do not cover every key and the state-dict converters must be used.
    """

    model: Transformer
    config: DecoderConfig
    hf_to_native: Callable[[StateDict], StateDict]
    native_to_hf: Callable[[StateDict], StateDict]
    hf_to_native_key: Callable[[str], str]
    native_to_hf_key: Callable[[str], str]
    keys_one_to_one: bool


def model_from_checkpoint_dir(
    path: str | Path,
    *,
    device: torch.device | str | None = "meta",
    dtype: torch.dtype | None = None,
) -> CheckpointModel:
    """Read ``path/config.json``, build the model and return it with its key maps.

    Args:
        path: an HF checkpoint directory (or its ``config.json``).
        device: where to build; "meta" (default) allocates nothing: then
            ``model.load_state_dict(sd, assign=True)`` and ``model.init_buffers()``.
        dtype: parameter dtype.
    """
    config = config_from_hf(path)
    family = family_for_model_type(config.model_type)
    to_native, to_hf = state_dict_converters(config)
    return CheckpointModel(
        model=build_model(config, device=device, dtype=dtype),
        config=config,
        hf_to_native=to_native,
        native_to_hf=to_hf,
        hf_to_native_key=hf_to_native_key(config),
        native_to_hf_key=native_to_hf_key(config),
        keys_one_to_one=family.split_fused is None,
    )
