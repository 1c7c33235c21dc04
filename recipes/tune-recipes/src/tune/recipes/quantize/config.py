"""The closed config schema of the ``quantize`` recipe (every key, its type and default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tune.recipes.common.config_sections import QuantScheme
from tune.recipes.config.errors import Issue
from tune.recipes.config.validation import ValidationContext


@dataclass
class QuantizeModelConfig:
    """The checkpoint to quantize.

    Args:
        checkpoint_dir: an HF directory with ``config.json`` and ``*.safetensors``.
        adapter_dir: a PEFT adapter directory merged into the weights before quantizing (null:
            none).
        dtype: float dtype of the weights before quantization (and of the activations later).
    """

    checkpoint_dir: str
    adapter_dir: str | None = None
    dtype: Literal["float32", "bfloat16"] = "float32"


@dataclass
class QuantizationConfig:
    """What is quantized, and how.

    Args:
        scheme: a tune-quant scheme.
        include: module-name patterns of the linear layers to quantize (null: all).
        exclude: module-name patterns left in float.
    """

    scheme: QuantScheme = "int8_weight_only"
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=lambda: ["output"])


@dataclass
class QuantizeConfig:
    """Post-training quantization of a checkpoint directory into a directory ``generate`` loads.

    Args:
        model: the checkpoint (and optional adapter).
        quantization: the scheme and the layers.
        output_dir: the quantized directory (created; must be empty or absent).
        weights_format: ``auto`` (safetensors where torchao can write the scheme, else ``pt``),
            ``safetensors`` or ``pt``.
        device: where to quantize, and so where the result runs (``auto``: CUDA when available).
        recipe: the recipe this config is for.
        allow_imports: glob patterns of dotted paths the config may import.
    """

    model: QuantizeModelConfig
    output_dir: str
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    weights_format: Literal["auto", "safetensors", "pt"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    recipe: str = "quantize"
    allow_imports: list[str] = field(default_factory=list)

    def validate(self, context: ValidationContext) -> list[Issue]:
        """Paths, the scheme on the device, before any model loads."""
        from tune.recipes.quantize.checks import check_quantize_config

        return check_quantize_config(self, context)
