"""The closed config schema of the ``sft`` recipe (every key, its type and default)."""

from __future__ import annotations

from dataclasses import dataclass, field

from tune.recipes.common.config_sections import (
    DataConfig,
    EvalConfig,
    QuantScheme,
    TrainedModelConfig,
    TrainingConfig,
    TrainingRecipeConfig,
)


@dataclass
class QATConfig:
    """Quantization-aware training (null scheme: off).

    Args:
        scheme: a tune-quant scheme whose fake quantization is inserted in the linear layers.
        exclude: module-name patterns left in float (e.g. ``output``).
    """

    scheme: QuantScheme | None = None
    exclude: list[str] = field(default_factory=lambda: ["output"])


@dataclass(kw_only=True)
class SFTConfig(TrainingRecipeConfig):
    """Supervised fine-tuning: everything one run needs.

    Args:
        model: the checkpoint and its implementation.
        data: the data.
        training: the optimisation.
        eval: validation loss.
        qat: quantization-aware training.
    """

    recipe: str = "sft"
    model: TrainedModelConfig
    data: DataConfig
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    qat: QATConfig = field(default_factory=QATConfig)
