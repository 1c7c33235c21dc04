"""The closed config schema of the ``preference`` recipe (DPO, IPO, SimPO, ORPO, KTO, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tune.recipes.common.config_sections import (
    CheckpointConfig,
    DatasetConfig,
    EpochTrainingConfig,
    EvalConfig,
    OptimizerConfig,
    TrainedModelConfig,
    TrainingRecipeConfig,
)

LossName = Literal["dpo", "ipo", "simpo", "orpo", "kto", "reference_free_dpo"]
# Losses that compare the policy with a reference model.
REFERENCE_LOSSES = ("dpo", "ipo", "kto")


@dataclass
class PreferenceModelConfig(TrainedModelConfig):
    """The policy to tune, and where its reference comes from.

    Args:
        reference_checkpoint_dir: full tuning only: the frozen reference model's directory
            (null: a frozen copy of ``checkpoint_dir``). Adapter methods always use the policy
            with its adapters disabled, without a copy.
    """

    reference_checkpoint_dir: str | None = None


@dataclass
class PreferenceDataConfig(DatasetConfig):
    """Preference data (``validation_split`` and ``validation_fraction`` hold out pairs).

    Args:
        format: ``paired`` rows (prompt, chosen, rejected) or ``unpaired`` rows (prompt,
            completion, label) for KTO; label true marks a desirable completion.
    """

    max_seq_len: int = 1024
    format: Literal["paired", "unpaired"] = "paired"


@dataclass
class PreferenceLossConfig:
    """Which preference objective, and its constants.

    Args:
        name: ``dpo``, ``ipo``, ``simpo``, ``orpo``, ``kto`` (unpaired data) or
            ``reference_free_dpo``.
        beta: inverse temperature of DPO, reference-free DPO and KTO.
        label_smoothing: DPO's probability of a flipped label (cDPO), in [0, 0.5).
        tau: IPO's regularisation (target margin 1 / (2 tau)).
        simpo_beta: SimPO's reward scale.
        simpo_gamma: SimPO's target margin.
        orpo_lambda: weight of ORPO's odds-ratio term.
        desirable_weight: KTO's weight of desirable examples.
        undesirable_weight: KTO's weight of undesirable examples.
    """

    name: LossName = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    tau: float = 0.1
    simpo_beta: float = 2.0
    simpo_gamma: float = 1.0
    orpo_lambda: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0

    @property
    def needs_reference(self) -> bool:
        """Whether the loss compares with a reference model."""
        return self.name in REFERENCE_LOSSES


@dataclass
class PreferenceTrainingConfig(EpochTrainingConfig):
    """The optimisation. Batch sizes count pairs (KTO: examples); a micro-batch's chosen and
    rejected go through one forward of 2 x micro_batch_size sequences.

    Args:
        loss: the preference objective.
        fused_logprobs: log-probs from hidden states in chunks (never a [2B, T, V] logits tensor;
            one device only).
    """

    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=5e-6))
    loss: PreferenceLossConfig = field(default_factory=PreferenceLossConfig)
    fused_logprobs: bool = True


@dataclass(kw_only=True)
class PreferenceConfig(TrainingRecipeConfig):
    """Preference tuning (``distributed.tp_size`` must stay 1): everything one run needs.

    Args:
        data: preference pairs or unpaired examples.
        training: the optimisation and the loss.
        eval: validation metrics on held-out pairs.
    """

    recipe: str = "preference"
    model: PreferenceModelConfig
    data: PreferenceDataConfig
    training: PreferenceTrainingConfig = field(default_factory=PreferenceTrainingConfig)
    checkpointing: CheckpointConfig = field(
        default_factory=lambda: CheckpointConfig(output_dir="outputs/preference")
    )
    eval: EvalConfig = field(default_factory=EvalConfig)
