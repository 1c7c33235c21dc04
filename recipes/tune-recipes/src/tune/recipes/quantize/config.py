"""The closed config schema of the ``quantize`` recipe (every key, its type and default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tune.recipes.common.config_sections import AdapterModelConfig, QuantScheme, RecipeConfig


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


@dataclass(kw_only=True)
class QuantizeConfig(RecipeConfig):
    """Post-training quantization of a checkpoint directory into a directory ``generate`` loads.
    ``model.adapter_dir`` is merged into the weights (of ``model.dtype``) before quantizing;
    ``device`` is where to quantize, and so where the result runs.

    Args:
        quantization: the scheme and the layers.
        output_dir: the quantized directory (created; must be empty or absent).
        weights_format: ``auto`` (safetensors where torchao can write the scheme, else ``pt``),
            ``safetensors`` or ``pt``.
    """

    recipe: str = "quantize"
    model: AdapterModelConfig
    output_dir: str
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    weights_format: Literal["auto", "safetensors", "pt"] = "auto"
