"""What a recipe needs to load an HF checkpoint directory: the model and the key maps.

The model is native (``Transformer``, a family of ``tune.models``) or, for any other causal LM,
``transformers``' own (``TransformersCausalLM``, with the optional extra ``transformers``);
``implementation="auto"`` takes native where the checkpoint's ``config.json`` builds natively.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from tune.models.build import build_model, config_from_hf
from tune.models.hf_config import load_hf_config
from tune.models.hf_keys import hf_to_native_key, native_to_hf_key, state_dict_converters
from tune.models.registry import family_for_model_type, supported_model_types
from tune.models.transformer import Transformer

if TYPE_CHECKING:
    from tune.models.transformers_model import TransformersCausalLM

logger = logging.getLogger(__name__)

StateDict = dict[str, Tensor]
Implementation = Literal["native", "transformers"]
IMPLEMENTATIONS = ("native", "transformers", "auto")


@dataclass(frozen=True)
class CheckpointModel:
    """A model built from a checkpoint's ``config.json`` plus the functions to map its weights.

    Args:
        model: the model (on the requested device, not yet loaded).
        config: the family config (native), or the ``transformers`` config.
        hf_to_native: whole-state-dict converter (handles fused tensors and tied embeddings).
        native_to_hf: the inverse converter.
        hf_to_native_key: per-key rename (one-to-one keys only).
        native_to_hf_key: per-key inverse rename.
        keys_one_to_one: False when the HF checkpoint fuses tensors (Phi-3) or stores one
            tensor per expert (MoE families), i.e. the per-key maps do not cover every key and
            the state-dict converters must be used.
        implementation: ``native`` (a ``Transformer``) or ``transformers``
            (a ``TransformersCausalLM``, whose keys are the checkpoint's).
    """

    model: Transformer | TransformersCausalLM
    config: Any
    hf_to_native: Callable[[StateDict], StateDict]
    native_to_hf: Callable[[StateDict], StateDict]
    hf_to_native_key: Callable[[str], str]
    native_to_hf_key: Callable[[str], str]
    keys_one_to_one: bool
    implementation: Implementation = "native"


def native_support_problem(path: str | Path) -> str | None:
    """Why no tune.models family builds ``path``'s ``config.json`` (its ``model_type`` has none),
    or None when one does, or when there is no ``model_type`` (the native build says so).

    Args:
        path: an HF checkpoint directory (or its ``config.json``).
    """
    data, source = load_hf_config(path)
    model_type = data.get("model_type")
    if not isinstance(model_type, str) or model_type in supported_model_types():
        return None
    return (
        f"{source}: model_type {model_type!r} has no native family (native: "
        f"{', '.join(supported_model_types())})"
    )


def resolve_implementation(path: str | Path, implementation: str = "auto") -> Implementation:
    """``native`` or ``transformers`` for a checkpoint; ``auto``: native when a tune.models
    family has the checkpoint's ``model_type``.

    Args:
        path: an HF checkpoint directory (or its ``config.json``).
        implementation: ``native``, ``transformers`` or ``auto``.
    """
    if implementation == "native":
        return "native"
    if implementation == "transformers":
        return "transformers"
    if implementation != "auto":
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    problem = native_support_problem(path)
    if problem is None:
        logger.info("implementation auto: %s has a native family", path)
        return "native"
    logger.info("implementation auto: %s; building it with transformers", problem)
    return "transformers"


def model_from_checkpoint_dir(
    path: str | Path,
    *,
    device: torch.device | str | None = "meta",
    dtype: torch.dtype | None = None,
    implementation: str = "native",
) -> CheckpointModel:
    """Read ``path/config.json``, build the model and return it with its key maps.

    Args:
        path: an HF checkpoint directory (or its ``config.json``).
        device: where to build; "meta" (default) allocates nothing: then
            ``model.load_state_dict(sd, assign=True)`` and ``model.init_buffers()``.
        dtype: parameter dtype.
        implementation: ``native`` (a tune.models family), ``transformers`` (any
            ``AutoModelForCausalLM``; needs the ``transformers`` extra) or ``auto``
            (``resolve_implementation``).
    """
    if resolve_implementation(path, implementation) == "transformers":
        from tune.models.transformers_model import transformers_checkpoint_model

        return transformers_checkpoint_model(path, device=device, dtype=dtype)
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
