"""Config sections the training recipes share: model, tokenizer, data, adapters, optimizer,
schedule, training, distribution, checkpointing, evaluation and logging.

A recipe's schema is a dataclass of these sections plus its own (``sft`` adds QAT, ``distill`` a
teacher, ``preference`` its loss); no recipe imports another for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tune.recipes.config.registries import component

Method = Literal["full", "lora", "qlora", "dora"]
# tune-quant's schemes, by the names configs use (quantize, generate, eval, sft's QAT).
QuantScheme = Literal[
    "int8_weight_only",
    "int8_dynamic_int8_weight",
    "int4_weight_only",
    "int8_dynamic_int4_weight",
]
ADAPTER_METHODS = ("lora", "qlora", "dora")


@dataclass
class ModelConfig:
    """The model to fine-tune.

    Args:
        checkpoint_dir: an HF directory with ``config.json`` and ``*.safetensors``.
        dtype: parameter and compute dtype (``bfloat16`` is slow on CPUs without bf16 units).
    """

    checkpoint_dir: str
    dtype: Literal["float32", "bfloat16"] = "float32"


@dataclass
class TokenizerConfig:
    """The tokenizer.

    Args:
        path: directory with ``tokenizer.json`` (None: ``model.checkpoint_dir``).
        chat_template: a Jinja template file or string (None: the tokenizer's own template).
    """

    path: str | None = None
    chat_template: str | None = None


@dataclass
class DataConfig:
    """Training and validation data.

    Args:
        source: a local file or directory (json/jsonl/parquet/csv/txt), or a Hub dataset name
            (a gated one reads ``HF_TOKEN`` from the environment).
        format: ``instruction`` (instruction/input/output), ``chat`` (messages) or ``text``.
        column_map: dataset column -> expected name (e.g. ``{"prompt": "instruction"}``).
        split: the training split.
        validation_split: a split for validation loss (exclusive with validation_fraction).
        validation_fraction: hold out this fraction of the training split (0: none).
        max_seq_len: tokens per sequence (or per pack).
        packing: pack several examples into each sequence (document-masked).
        padding_free: train unpacked batches on their real tokens only: each micro-batch's
            examples are laid end to end as documents of one row, so no compute goes to padding
            (same loss up to float round-off). null (auto): on for CPU training without
            ``training.compile`` or tensor parallelism. On CUDA the document mask goes through
            FlexAttention, compiled once per distinct length, so auto leaves it off there.
        truncation: ``truncate`` cuts long examples (keeping at least one trained token),
            ``drop`` skips them (counted), ``error`` stops with the example named.
        train_on_input: also compute the loss on prompt tokens.
        shuffle: shuffle the examples each epoch.
        seed: shuffling and hold-out seed.
    """

    source: str
    format: Literal["instruction", "chat", "text"] = "instruction"
    column_map: dict[str, str] = field(default_factory=dict)
    split: str = "train"
    validation_split: str | None = None
    validation_fraction: float = 0.0
    max_seq_len: int = 2048
    packing: bool = False
    padding_free: bool | None = None
    truncation: Literal["truncate", "drop", "error"] = "truncate"
    train_on_input: bool = False
    shuffle: bool = True
    seed: int = 0


@dataclass
class LoRAConfig:
    """Adapter settings (for ``lora``, ``qlora`` and ``dora``).

    Args:
        r: rank.
        alpha: scaling numerator (scale = alpha / r, or alpha / sqrt(r) with use_rslora).
        dropout: dropout on the adapter input.
        targets: module-name patterns to adapt (checked against the model when it loads).
        exclude: module-name patterns never to adapt.
        use_rslora: rank-stabilised scaling.
        init: ``default`` (A Kaiming-uniform, B zeros), ``gaussian`` (A normal, B zeros) or
            ``pissa`` (from the base weight's top singular vectors), as in tune-peft.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    exclude: list[str] = field(default_factory=list)
    use_rslora: bool = False
    init: Literal["default", "gaussian", "pissa"] = "default"


@dataclass
class OptimizerConfig:
    """The optimizer.

    Args:
        name: a ``tune.optimizers`` name (adamw, adam, sgd, adamw8bit, ...) or an allowed import.
        lr: peak learning rate.
        weight_decay: decoupled weight decay.
        betas: Adam betas.
        eps: Adam epsilon.
        kwargs: further keyword arguments for the optimizer.
        implementation: the update kernels: ``auto`` (fused when the optimizer has a fused
            kernel and every trainable parameter is a dense float tensor on CPU/CUDA, else
            foreach), ``fused``, ``foreach`` or ``for_loop`` (torch's per-parameter loop).
    """

    name: str = field(default="adamw", metadata=component("tune.optimizers"))
    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    kwargs: dict[str, Any] = field(default_factory=dict)
    implementation: Literal["auto", "fused", "foreach", "for_loop"] = "auto"


@dataclass
class LRScheduleConfig:
    """The learning-rate schedule.

    Args:
        name: a ``tune.lr_schedules`` name (constant, linear, cosine, ...).
        warmup_steps: linear warm-up steps from 0 to the peak lr (< total steps).
        min_lr_ratio: final lr as a fraction of the peak (linear and cosine decay).
    """

    name: str = field(default="cosine", metadata=component("tune.lr_schedules"))
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0


@dataclass
class TrainingConfig:
    """The optimisation.

    Args:
        method: ``full``, ``lora``, ``qlora`` (NF4 base + LoRA) or ``dora``.
        lora: adapter settings (ignored for ``full``).
        epochs: passes over the data (when max_steps is null).
        max_steps: optimizer steps; overrides epochs.
        global_batch_size: sequences per optimizer step over all data-parallel ranks.
        micro_batch_size: sequences per forward/backward on one rank.
        optimizer: the optimizer.
        lr_schedule: the schedule.
        max_grad_norm: clip the global gradient norm (null: no clipping).
        nonfinite: on a NaN/inf loss or gradient, ``raise`` or ``skip`` the step.
        seed: model-init, dropout and data-order seed.
        compile: ``torch.compile`` each block.
        activation_checkpointing: recompute activations in backward.
        activation_offloading: keep saved activations on the CPU (CUDA only).
        fused_ce: cross-entropy fused with the output projection, in chunks.
    """

    method: Method = "lora"
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    epochs: int = 1
    max_steps: int | None = None
    global_batch_size: int = 8
    micro_batch_size: int = 1
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    max_grad_norm: float | None = 1.0
    nonfinite: Literal["raise", "skip"] = "raise"
    seed: int = 0
    compile: bool = False
    activation_checkpointing: bool = False
    activation_offloading: bool = False
    fused_ce: bool = True

    def gradient_accumulation_steps(self, data_parallel_size: int) -> int:
        """Micro-batches per optimizer step on each rank."""
        return self.global_batch_size // (data_parallel_size * self.micro_batch_size)


@dataclass
class DistributedConfig:
    """Multi-process settings (ignored with one process).

    Args:
        fsdp: shard parameters, gradients and optimizer state with FSDP2.
        tp_size: tensor-parallel degree (divides the world size; data parallel = world / tp).
        reshard_after_forward: free gathered parameters after forward (less memory, more comms).
        cpu_offload: keep sharded parameters on the CPU (FSDP only).
        backend: process-group backend (``auto``: nccl on CUDA, gloo on CPU).
    """

    fsdp: bool = True
    tp_size: int = 1
    reshard_after_forward: bool = True
    cpu_offload: bool = False
    backend: Literal["auto", "nccl", "gloo"] = "auto"


@dataclass
class CheckpointConfig:
    """What is written, and resuming.

    Args:
        output_dir: run directory (step directories, final HF/PEFT directories, config).
        save_every_n_steps: training-state checkpoint interval (null: only at the end).
        keep_last_n: step directories kept.
        resume: ``auto`` (latest step in output_dir, if any), ``never``, or a step directory.
        save_merged: also write the base with adapters merged as an HF directory.
        save_adapter: write a PEFT adapter directory (adapter methods).
        resume_overrides: settings that may differ from the checkpoint's when resuming
            (``[training.optimizer.lr, training.max_steps]``); they are applied, logged and
            recorded. Any other changed setting is refused, naming it.
    """

    output_dir: str = "outputs/sft"
    save_every_n_steps: int | None = None
    keep_last_n: int = 2
    resume: str = "auto"
    save_merged: bool = False
    save_adapter: bool = True
    resume_overrides: list[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    """Validation loss.

    Args:
        every_n_steps: interval (null: only at the end, if there is validation data).
        max_batches: batches per evaluation, counted over all ranks (null: the whole
            validation set).
        before_training: also evaluate at step 0.
    """

    every_n_steps: int | None = None
    max_batches: int | None = None
    before_training: bool = False


@dataclass
class LoggingConfig:
    """Metrics and progress.

    Args:
        loggers: ``tune.loggers`` names (stdout, jsonl, tensorboard, ...).
        log_every_n_steps: interval.
        jsonl_path: file of the jsonl logger (null: ``<output_dir>/metrics.jsonl``).
        progress_bar: tqdm bar on rank 0.
        options: per-logger keyword arguments, keyed by logger name.
    """

    loggers: list[str] = field(
        default_factory=lambda: ["stdout"], metadata=component("tune.loggers")
    )
    log_every_n_steps: int = 1
    jsonl_path: str | None = None
    progress_bar: bool = True
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
