"""The closed config schema of the ``distill`` recipe (every key, its type and default).

The student, data, optimisation, parallelism, outputs, eval and logging sections are the ``sft``
recipe's; ``teacher`` and ``distillation`` are this recipe's own.
"""

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
    TokenizerConfig,
    TrainingConfig,
)
from tune.recipes.config.errors import Issue
from tune.recipes.config.validation import ValidationContext


@dataclass
class TeacherConfig:
    """The frozen teacher (any supported family and size with the student's tokenizer).

    Args:
        checkpoint_dir: an HF directory with ``config.json`` and ``*.safetensors``.
        dtype: the teacher's parameter and compute dtype.
    """

    checkpoint_dir: str
    dtype: Literal["float32", "bfloat16"] = "float32"


@dataclass
class DistillationConfig:
    """The loss: ``ce_weight * CE(labels) + (1 - ce_weight) * KL(teacher, student)`` per token.

    Args:
        kind: ``forward`` KL(teacher || student), ``reverse`` KL(student || teacher) or
            ``symmetric`` (``symmetric_mix * forward + (1 - symmetric_mix) * reverse``).
        temperature: softmax temperature of both distributions (the KL is scaled by its square).
        symmetric_mix: weight of the forward KL for ``kind=symmetric``.
        ce_weight: weight of the cross-entropy with the data's labels (0: pure distillation,
            1: plain SFT with the teacher only measured).
        chunk_size: tokens per KL chunk, recomputed in backward (null: all at once).
    """

    kind: Literal["forward", "reverse", "symmetric"] = "forward"
    temperature: float = 1.0
    symmetric_mix: float = 0.5
    ce_weight: float = 0.5
    chunk_size: int | None = 1024


@dataclass
class DistillConfig:
    """Knowledge distillation of a teacher into a student: everything one run needs.

    Args:
        model: the student checkpoint.
        teacher: the teacher checkpoint.
        data: the data (its labels select the distilled positions).
        tokenizer: the tokenizer (shared by student and teacher).
        training: the student's optimisation (``full`` or an adapter method; ``loss`` and
            ``fused_ce`` are unused: the KL needs the student's logits).
        distillation: the KD loss.
        distributed: multi-process settings (the teacher is sharded like the student).
        checkpointing: outputs and resume.
        eval: validation CE and KL.
        logging: metrics.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        recipe: the recipe this config is for.
        allow_imports: glob patterns of dotted paths the config may import.
    """

    model: ModelConfig
    teacher: TeacherConfig
    data: DataConfig
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpointing: CheckpointConfig = field(
        default_factory=lambda: CheckpointConfig(output_dir="outputs/distill")
    )
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    recipe: str = "distill"
    allow_imports: list[str] = field(default_factory=list)

    @property
    def tokenizer_dir(self) -> str:
        """``tokenizer.path``, defaulting to the student's checkpoint directory."""
        return self.tokenizer.path or self.model.checkpoint_dir

    def validate(self, context: ValidationContext) -> list[Issue]:
        """Range and relation checks, each issue named by its dotted key."""
        from tune.recipes.distill.checks import check_distill_config

        return check_distill_config(self, context)
