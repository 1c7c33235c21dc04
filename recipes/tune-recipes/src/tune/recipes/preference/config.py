"""The closed config schema of the ``preference`` recipe (DPO, IPO, SimPO, ORPO, KTO, ...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tune.recipes.common.config_sections import (
    CheckpointConfig,
    DistributedConfig,
    EvalConfig,
    LoggingConfig,
    LoRAConfig,
    LRScheduleConfig,
    OptimizerConfig,
    TokenizerConfig,
)
from tune.recipes.config.errors import Issue
from tune.recipes.config.validation import ValidationContext

LossName = Literal["dpo", "ipo", "simpo", "orpo", "kto", "reference_free_dpo"]
# Losses that compare the policy with a reference model.
REFERENCE_LOSSES = ("dpo", "ipo", "kto")


@dataclass
class PreferenceModelConfig:
    """The policy to tune, and where its reference comes from.

    Args:
        checkpoint_dir: an HF directory with ``config.json`` and ``*.safetensors``.
        dtype: parameter and compute dtype.
        reference_checkpoint_dir: full tuning only: the frozen reference model's directory
            (null: a frozen copy of ``checkpoint_dir``). Adapter methods always use the policy
            with its adapters disabled, without a copy.
    """

    checkpoint_dir: str
    dtype: Literal["float32", "bfloat16"] = "float32"
    reference_checkpoint_dir: str | None = None


@dataclass
class PreferenceDataConfig:
    """Preference data.

    Args:
        source: a local file or directory (json/jsonl/parquet/csv), or a Hub dataset name.
        format: ``paired`` rows (prompt, chosen, rejected) or ``unpaired`` rows (prompt,
            completion, label) for KTO; label true marks a desirable completion.
        column_map: dataset column -> expected name (e.g. ``{"question": "prompt"}``).
        split: the training split.
        validation_split: a split of held-out pairs (exclusive with validation_fraction).
        validation_fraction: hold out this fraction of the training split (0: none).
        max_seq_len: tokens per sequence (prompt + response).
        truncation: ``truncate``, ``drop`` or ``error`` for longer sequences.
        shuffle: shuffle the rows each epoch.
        seed: shuffling and hold-out seed.
    """

    source: str
    format: Literal["paired", "unpaired"] = "paired"
    column_map: dict[str, str] = field(default_factory=dict)
    split: str = "train"
    validation_split: str | None = None
    validation_fraction: float = 0.0
    max_seq_len: int = 1024
    truncation: Literal["truncate", "drop", "error"] = "truncate"
    shuffle: bool = True
    seed: int = 0


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
class PreferenceTrainingConfig:
    """The optimisation.

    Args:
        method: ``full``, ``lora``, ``qlora`` or ``dora``.
        lora: adapter settings (ignored for ``full``).
        loss: the preference objective.
        epochs: passes over the data (when max_steps is null).
        max_steps: optimizer steps; overrides epochs.
        global_batch_size: pairs (KTO: examples) per optimizer step over all ranks.
        micro_batch_size: pairs (KTO: examples) per forward/backward on one rank; chosen and
            rejected go through one forward of 2 x micro_batch_size sequences.
        optimizer: the optimizer.
        lr_schedule: the schedule.
        max_grad_norm: clip the global gradient norm (null: no clipping).
        nonfinite: on a NaN/inf loss or gradient, ``raise`` or ``skip`` the step.
        seed: model-init, dropout and data-order seed.
        compile: ``torch.compile`` each block.
        activation_checkpointing: recompute activations in backward.
        fused_logprobs: log-probs from hidden states in chunks (never a [2B, T, V] logits tensor;
            one device only).
    """

    method: Literal["full", "lora", "qlora", "dora"] = "lora"
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    loss: PreferenceLossConfig = field(default_factory=PreferenceLossConfig)
    epochs: int = 1
    max_steps: int | None = None
    global_batch_size: int = 8
    micro_batch_size: int = 1
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=5e-6))
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    max_grad_norm: float | None = 1.0
    nonfinite: Literal["raise", "skip"] = "raise"
    seed: int = 0
    compile: bool = False
    activation_checkpointing: bool = False
    fused_logprobs: bool = True

    def gradient_accumulation_steps(self, data_parallel_size: int) -> int:
        """Micro-batches per optimizer step on each rank."""
        return self.global_batch_size // (data_parallel_size * self.micro_batch_size)


@dataclass
class PreferenceConfig:
    """Preference tuning: everything one run needs.

    Args:
        model: the policy checkpoint (and the reference's, for full tuning).
        data: preference pairs or unpaired examples.
        tokenizer: the tokenizer.
        training: the optimisation and the loss.
        distributed: multi-process settings (FSDP; tp_size must stay 1).
        checkpointing: outputs and resume.
        eval: validation metrics on held-out pairs.
        logging: metrics.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        recipe: the recipe this config is for.
        allow_imports: glob patterns of dotted paths the config may import.
    """

    model: PreferenceModelConfig
    data: PreferenceDataConfig
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    training: PreferenceTrainingConfig = field(default_factory=PreferenceTrainingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpointing: CheckpointConfig = field(
        default_factory=lambda: CheckpointConfig(output_dir="outputs/preference")
    )
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    recipe: str = "preference"
    allow_imports: list[str] = field(default_factory=list)

    @property
    def tokenizer_dir(self) -> str:
        """``tokenizer.path``, defaulting to the checkpoint directory."""
        return self.tokenizer.path or self.model.checkpoint_dir

    def validate(self, context: ValidationContext) -> list[Issue]:
        """Range and relation checks, each issue named by its dotted key."""
        from tune.recipes.preference.checks import check_preference_config

        return check_preference_config(self, context)
