"""The closed config schema of the ``distill`` recipe (every key, its type and default).

The student, data, optimisation, parallelism, outputs, eval and logging sections are the shared
ones; ``teacher`` and ``distillation`` are this recipe's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tune.recipes.common.config_sections import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
    TrainingConfig,
    TrainingRecipeConfig,
)


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


@dataclass(kw_only=True)
class DistillConfig(TrainingRecipeConfig):
    """Knowledge distillation of a teacher into a student (``model``; the tokenizer is shared,
    and the teacher is sharded like the student): everything one run needs.

    Args:
        teacher: the frozen teacher (any supported family and size with the student's tokenizer).
        data: the data (its labels select the distilled positions).
        training: the student's optimisation (``full`` or an adapter method; ``fused_ce`` is
            unused: the KL needs the student's logits).
        distillation: the KD loss.
        eval: validation CE and KL.
    """

    teacher: ModelConfig
    data: DataConfig
    training: TrainingConfig = field(default_factory=TrainingConfig)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpointing: CheckpointConfig = field(
        default_factory=lambda: CheckpointConfig(output_dir="outputs/distill")
    )
    recipe: str = "distill"
