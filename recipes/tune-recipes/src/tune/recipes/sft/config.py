"""The closed config schema of the ``sft`` recipe (every key, its type and default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tune.recipes.common.config_sections import (
    CheckpointConfig,
    DataConfig,
    DistributedConfig,
    EvalConfig,
    LoggingConfig,
    ModelConfig,
    QuantScheme,
    TokenizerConfig,
    TrainingConfig,
)
from tune.recipes.config.errors import Issue
from tune.recipes.config.validation import ValidationContext


@dataclass
class QATConfig:
    """Quantization-aware training (null scheme: off).

    Args:
        scheme: a tune-quant scheme whose fake quantization is inserted in the linear layers.
        exclude: module-name patterns left in float (e.g. ``output``).
    """

    scheme: QuantScheme | None = None
    exclude: list[str] = field(default_factory=lambda: ["output"])


@dataclass
class SFTConfig:
    """Supervised fine-tuning: everything one run needs.

    Args:
        model: the checkpoint.
        data: the data.
        tokenizer: the tokenizer.
        training: the optimisation.
        distributed: multi-process settings.
        checkpointing: outputs and resume.
        eval: validation loss.
        logging: metrics.
        qat: quantization-aware training.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        recipe: the recipe this config is for.
        allow_imports: glob patterns of dotted paths the config may import.
    """

    model: ModelConfig
    data: DataConfig
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpointing: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    qat: QATConfig = field(default_factory=QATConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    recipe: str = "sft"
    allow_imports: list[str] = field(default_factory=list)

    @property
    def tokenizer_dir(self) -> str:
        """``tokenizer.path``, defaulting to the checkpoint directory."""
        return self.tokenizer.path or self.model.checkpoint_dir

    def validate(self, context: ValidationContext) -> list[Issue]:
        """Range and relation checks, each issue named by its dotted key."""
        from tune.recipes.sft.checks import check_sft_config

        return check_sft_config(self, context)
