"""Load the model to generate with: a checkpoint directory, optionally + a PEFT adapter."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tune.checkpoint import load_peft_adapter as read_peft_adapter_dir
from tune.models import CheckpointModel
from tune.peft import load_peft_adapter, merge_and_unload
from tune.quant import quantize_model
from tune.recipes.common.model_loading import load_pretrained
from tune.recipes.common.quantize_loading import (
    is_quantized_checkpoint_dir,
    load_quantized_checkpoint,
)

logger = logging.getLogger(__name__)

# PEFT wraps the HF model twice (PeftModel -> LoraModel); every saved key starts with this.
PEFT_KEY_PREFIX = "base_model.model."


class AdapterMismatchError(ValueError):
    """A PEFT adapter that does not fit the base checkpoint (names the tensor and both shapes)."""


@dataclass
class LoadedModel:
    """The model ready for generation and what was applied to it.

    Args:
        checkpoint: the model and its key maps.
        adapted_modules: native names of the layers an adapter was loaded into.
        merged: whether the adapter was folded into the base weights.
        quantized_modules: native names of the quantized linear layers.
    """

    checkpoint: CheckpointModel
    adapted_modules: list[str] = field(default_factory=list)
    merged: bool = False
    quantized_modules: list[str] = field(default_factory=list)


def _hf_linear_shapes(model: nn.Module, native_to_hf_key: Any) -> dict[str, tuple[int, int]]:
    """HF module name -> (out_features, in_features) of every ``nn.Linear`` of ``model``."""
    shapes = {}
    for fqn, module in model.named_modules():
        if isinstance(module, nn.Linear):
            hf_name = native_to_hf_key(f"{fqn}.weight").removesuffix(".weight")
            shapes[hf_name] = (module.out_features, module.in_features)
    return shapes


def check_adapter_matches_base(
    tensors: dict[str, torch.Tensor],
    model: nn.Module,
    native_to_hf_key: Any,
    *,
    adapter_dir: str | Path,
    base_dir: str | Path,
    base_name: str | None = None,
) -> None:
    """Raise unless every adapter tensor targets a linear layer of the base with fitting shapes.

    Args:
        tensors: ``adapter_model.safetensors`` with PEFT's key names.
        model: the base model (no adapter yet).
        native_to_hf_key: native -> HF parameter-name map of the base.
        adapter_dir: the adapter directory, for messages.
        base_dir: the base checkpoint directory, for messages.
        base_name: ``base_model_name_or_path`` from ``adapter_config.json``, for messages.

    Raises:
        AdapterMismatchError: naming the first tensor that does not fit, its shape and the
            base layer's.
    """
    shapes = _hf_linear_shapes(model, native_to_hf_key)
    trained_on = f" (adapter_config.json says base_model_name_or_path={base_name!r})"
    trained_on = trained_on if base_name else ""
    for key, value in sorted(tensors.items()):
        name = key.removeprefix(PEFT_KEY_PREFIX)
        if name.endswith(".lora_magnitude_vector.weight"):
            name = name.removesuffix(".weight")
        module, _, kind = name.rpartition(".lora_")
        if not kind:
            continue  # e.g. a trained bias: tune.peft checks those
        if module not in shapes:
            close = difflib.get_close_matches(module, list(shapes), n=3, cutoff=0.5)
            raise AdapterMismatchError(
                f"{adapter_dir}: adapter tensor {key!r} targets {module!r}, which is no linear "
                f"layer of the base {base_dir}{trained_on}; closest: {close}"
            )
        out_features, in_features = shapes[module]
        shape = tuple(value.shape)
        expected: tuple[str, bool]
        if kind == "A.weight":
            expected = (
                f"[r, in_features={in_features}]",
                len(shape) == 2 and shape[1] == in_features,
            )
        elif kind == "B.weight":
            expected = (
                f"[out_features={out_features}, r]",
                len(shape) == 2 and shape[0] == out_features,
            )
        elif kind == "magnitude_vector":
            expected = (f"[out_features={out_features}]", shape == (out_features,))
        else:
            continue  # other PEFT tensor kinds: tune.peft reports what it cannot load
        if not expected[1]:
            raise AdapterMismatchError(
                f"{adapter_dir}: adapter tensor {key!r} has shape {shape}, but the base {base_dir} "
                f"has {module}.weight of shape ({out_features}, {in_features}), so it must be "
                f"{expected[0]}: the adapter was trained on another base{trained_on}"
            )


def load_generation_model(
    checkpoint_dir: str | Path,
    *,
    dtype: torch.dtype,
    device: torch.device,
    adapter_dir: str | Path | None = None,
    merge_adapter: bool = False,
    quantize: str | None = None,
) -> LoadedModel:
    """The checkpoint's model in eval mode, with a PEFT adapter and quantization applied.

    Args:
        checkpoint_dir: an HF directory (a base or a merged fine-tune), or a directory written
            by the ``quantize`` recipe (then no adapter and no ``quantize``).
        dtype: parameter dtype.
        device: where the weights go.
        adapter_dir: a PEFT adapter directory for ``checkpoint_dir`` (None: none).
        merge_adapter: fold the adapter into the base weights (plain ``nn.Linear`` again).
        quantize: a tune-quant scheme for the linear layers except ``output`` (None: none).

    Raises:
        AdapterMismatchError: the adapter was made for a base of other names or shapes.
        QuantizedCheckpointError: a quantized directory for another device type or dtype.
    """
    if is_quantized_checkpoint_dir(checkpoint_dir):
        if adapter_dir is not None or quantize is not None:
            raise ValueError(
                f"{checkpoint_dir} is already quantized: it takes no adapter and no quantize"
            )
        ckpt, manifest = load_quantized_checkpoint(checkpoint_dir, dtype=dtype, device=device)
        return LoadedModel(ckpt, quantized_modules=list(manifest.quantized_modules))
    ckpt = load_pretrained(checkpoint_dir, dtype=dtype, device=device)
    model = ckpt.model
    loaded = LoadedModel(ckpt)
    if adapter_dir is not None:
        tensors, adapter_config = read_peft_adapter_dir(adapter_dir, dtype=dtype, prefix="")
        check_adapter_matches_base(
            tensors, model, ckpt.native_to_hf_key, adapter_dir=adapter_dir,
            base_dir=checkpoint_dir, base_name=adapter_config.get("base_model_name_or_path"),
        )  # fmt: skip
        loaded.adapted_modules = load_peft_adapter(
            model, tensors, adapter_config, key_map=ckpt.native_to_hf_key
        )
        logger.info("adapter %s: %d layers", adapter_dir, len(loaded.adapted_modules))
        if merge_adapter:
            merge_and_unload(model)
            loaded.merged = True
    if quantize is not None:
        loaded.quantized_modules = quantize_model(model, quantize, exclude=["output"])
        logger.info("quantized %d linear layers (%s)", len(loaded.quantized_modules), quantize)
    model.requires_grad_(False)
    model.eval()
    return loaded
