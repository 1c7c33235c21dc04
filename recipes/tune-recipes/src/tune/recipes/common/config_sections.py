"""The bases of every recipe's config, and the sections several recipes share.

A recipe's schema subclasses ``RecipeConfig`` (``TrainingRecipeConfig`` for the training recipes)
and adds or narrows its own sections (``sft`` adds QAT, ``distill`` a teacher, ``preference`` its
loss); no recipe imports another. Each key is documented once, on the class that declares it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Literal

from tune.config import Checks, Issue, ValidationContext, component
from tune.recipes.config.registries import LOGGERS, LR_SCHEDULES, OPTIMIZERS

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
    """A checkpoint to load.

    Args:
        checkpoint_dir: an HF directory with ``config.json`` and ``*.safetensors``.
        dtype: parameter and compute dtype (``bfloat16`` is slow on CPUs without bf16 units).
    """

    checkpoint_dir: str
    dtype: Literal["float32", "bfloat16"] = "float32"


@dataclass
class TrainedModelConfig(ModelConfig):
    """The checkpoint ``sft`` and ``preference`` tune, and the code that builds it.

    Args:
        implementation: ``native`` (a tune.models family: Llama, Qwen, Mistral, Gemma, Phi-3,
            SmolLM2), ``transformers`` (any ``AutoModelForCausalLM``, e.g. OLMo 2 or Granite;
            needs the ``transformers`` package; no tensor parallel or QAT; plain, unfused
            cross-entropy) or ``auto`` (native when tune.models builds the checkpoint's
            ``config.json``, else transformers).
        router_aux_loss_coef: weight of a MoE model's load-balancing loss (0: logged, not
            trained). transformers adds ``router_aux_loss_coef`` from ``config.json`` only with
            ``output_router_logits: true``, which published configs leave off; set it here.
        router_aux_loss: ``global`` (Mixtral, Qwen-MoE, OLMoE, gpt-oss: transformers'
            ``load_balancing_loss_func``) or ``sequence`` (DeepSeek-V3's sequence-wise loss).
        router_z_loss_coef: weight of the router z-loss (0: logged, not trained).
        routing_bias_update_rate: auxiliary-loss-free balancing: after each step, every MoE
            block's ``routing_bias`` moves by this much towards a balanced load (DeepSeek-V3:
            0.001; 0: off).
    """

    implementation: Literal["native", "transformers", "auto"] = "auto"
    router_aux_loss_coef: float = 0.0
    router_aux_loss: Literal["global", "sequence"] = "global"
    router_z_loss_coef: float = 0.0
    routing_bias_update_rate: float = 0.0


@dataclass
class AdapterModelConfig(ModelConfig):
    """A checkpoint and, optionally, a PEFT adapter for it.

    Args:
        adapter_dir: a PEFT adapter directory applied on top of ``checkpoint_dir`` (null: none).
    """

    adapter_dir: str | None = None


@dataclass
class InferenceModelConfig(AdapterModelConfig):
    """The model ``generate`` and ``eval`` run: ``checkpoint_dir`` may also be a directory the
    ``quantize`` recipe wrote.

    Args:
        merge_adapter: fold the adapter into the base weights first (faster, same outputs up to
            float rounding).
        quantize: quantize the linear layers (not ``output``) after loading with this tune-quant
            scheme (null: keep them in ``dtype``).
    """

    merge_adapter: bool = False
    quantize: QuantScheme | None = None


@dataclass
class TokenizerConfig:
    """The tokenizer.

    Args:
        path: directory with ``tokenizer.json`` (null: ``model.checkpoint_dir``).
        chat_template: a bundled template name, a Jinja file or source (null: the tokenizer's).
    """

    path: str | None = None
    chat_template: str | None = None


@dataclass
class DatasetConfig:
    """A training dataset, and what is held out of it.

    Args:
        source: a local file or directory (json/jsonl/parquet/csv/txt), or a Hub dataset name
            (a gated one reads ``HF_TOKEN`` from the environment).
        column_map: expected name -> dataset column (e.g. ``{instruction: prompt}`` reads the
            instruction from the ``prompt`` column), as tune-data's ``columns=``.
        split: the training split.
        validation_split: a split for validation (exclusive with validation_fraction).
        validation_fraction: hold out this fraction of the training split (0: none).
        max_seq_len: tokens per sequence (or per pack; preference: prompt + response).
        truncation: ``truncate`` cuts long examples (keeping at least one trained token),
            ``drop`` skips them (counted), ``error`` stops with the example named.
        shuffle: shuffle the examples each epoch.
        seed: shuffling and hold-out seed.
    """

    source: str
    column_map: dict[str, str] = field(default_factory=dict)
    split: str = "train"
    validation_split: str | None = None
    validation_fraction: float = 0.0
    max_seq_len: int = 2048
    truncation: Literal["truncate", "drop", "error"] = "truncate"
    shuffle: bool = True
    seed: int = 0


DataFormat = Literal["instruction", "chat", "text"]


@dataclass
class DataSourceConfig:
    """One dataset of a ``data.sources`` mixture.

    Args:
        source: a local file or a Hub dataset name.
        weight: its share of the mixture's rows, relative to the other sources' weights (> 0);
            a source whose share is above its length repeats rows, one below it contributes a
            seeded subset. The mixture has as many rows as its sources together.
        split: its training split.
        validation_split: its split held out for validation (Hub datasets; else
            ``data.validation_fraction`` of its rows).
        format: its rows' format (null: ``data.format``).
        column_map: its expected name -> dataset column map (null: ``data.column_map``).
    """

    source: str
    weight: float = 1.0
    split: str = "train"
    validation_split: str | None = None
    format: DataFormat | None = None
    column_map: dict[str, str] | None = None


@dataclass
class DataConfig(DatasetConfig):
    """Training and validation data of ``sft`` and ``distill``.

    Args:
        source: as ``DatasetConfig.source``; null with ``sources``.
        sources: a weighted mixture of datasets instead of ``source`` (sft and distill); the
            mixed order depends on ``seed``, the weights and the sources' lengths only, so a
            run resumes at another world size where it stopped.
        format: ``instruction`` (instruction/input/output), ``chat`` (OpenAI ``messages`` or
            ShareGPT ``conversations``, detected per conversation) or ``text``.
        packing: pack several examples into each sequence (document-masked).
        padding_free: train unpacked batches on their real tokens only: each micro-batch's
            examples are laid end to end as documents of one row, so no compute goes to padding
            (same loss up to float round-off). null (auto): on for CPU training without
            ``training.compile`` or tensor parallelism. On CUDA the document mask goes through
            FlexAttention, compiled once per distinct length, so auto leaves it off there.
        train_on_input: also compute the loss on prompt tokens.
    """

    source: str | None = None  # type: ignore[assignment]
    sources: list[DataSourceConfig] = field(default_factory=list)
    format: DataFormat = "instruction"
    packing: bool = False
    padding_free: bool | None = None
    train_on_input: bool = False


@dataclass
class LoRAConfig:
    """Adapter settings (for ``lora``, ``qlora`` and ``dora``).

    Args:
        r: rank.
        alpha: scaling numerator (scale = alpha / r, or alpha / sqrt(r) with use_rslora).
        dropout: dropout on the adapter input.
        targets: module-name patterns to adapt (checked against the model when it loads).
        exclude: module-name patterns never to adapt.
        target_parameters: parameter-name patterns of stacked 3-D MoE expert weights to adapt
            with per-expert factors (PEFT's ``target_parameters``), e.g.
            ``[experts.gate_up_proj, experts.down_proj]``; no dropout with these.
        use_rslora: rank-stabilised scaling.
        init: ``default`` (A Kaiming-uniform, B zeros), ``gaussian`` (A normal, B zeros) or
            ``pissa`` (from the base weight's top singular vectors), as in tune-peft.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    exclude: list[str] = field(default_factory=list)
    target_parameters: list[str] = field(default_factory=list)
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

    name: str = field(default="adamw", metadata=component(OPTIMIZERS))
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

    name: str = field(default="cosine", metadata=component(LR_SCHEDULES))
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0


@dataclass
class OptimizationConfig:
    """What every training recipe's ``training`` section has.

    Args:
        method: ``full``, ``lora``, ``qlora`` (NF4 base + LoRA) or ``dora``.
        lora: adapter settings (ignored for ``full``).
        optimizer: the optimizer.
        lr_schedule: the schedule (its steps are optimizer steps).
        max_grad_norm: clip the global gradient norm (null: no clipping).
        nonfinite: on a NaN/inf loss or gradient, ``raise`` or ``skip`` the step.
        seed: model-init, dropout and data-order seed (and grpo's sampling seed).
    """

    method: Method = "lora"
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)
    max_grad_norm: float | None = 1.0
    nonfinite: Literal["raise", "skip"] = "raise"
    seed: int = 0


@dataclass
class EpochTrainingConfig(OptimizationConfig):
    """Training in passes over a dataset (``sft``, ``distill``, ``preference``).

    Args:
        epochs: passes over the data (when max_steps is null).
        max_steps: optimizer steps; overrides epochs.
        global_batch_size: sequences per optimizer step over all data-parallel ranks.
        micro_batch_size: sequences per forward/backward on one rank.
        compile: ``torch.compile`` each block.
        activation_checkpointing: recompute activations in backward.
    """

    epochs: int = 1
    max_steps: int | None = None
    global_batch_size: int = 8
    micro_batch_size: int = 1
    compile: bool = False
    activation_checkpointing: bool = False

    def gradient_accumulation_steps(self, data_parallel_size: int) -> int:
        """Micro-batches per optimizer step on each rank."""
        return self.global_batch_size // (data_parallel_size * self.micro_batch_size)


@dataclass
class TrainingConfig(EpochTrainingConfig):
    """The optimisation of ``sft`` and ``distill``.

    Args:
        activation_offloading: keep saved activations on the CPU (CUDA only).
        fused_ce: cross-entropy fused with the output projection, in chunks.
    """

    activation_offloading: bool = False
    fused_ce: bool = True


@dataclass
class DistributedConfig:
    """Multi-process settings (ignored with one process).

    Args:
        fsdp: shard parameters, gradients and optimizer state with FSDP2.
        tp_size: tensor-parallel degree (divides the world size; data parallel = world / tp).
        ep_size: expert-parallel degree of a mixture-of-experts model: each group of ``ep_size``
            data-parallel ranks splits the routed experts and exchanges tokens (all-to-all);
            divides the data-parallel size and the expert count; needs ``fsdp``.
        pp_size: pipeline-parallel degree: the decoder's layers are cut into ``pp_size`` stages
            (``pp_size * pp_virtual_stages`` with an interleaved schedule), each on its own
            ranks, run by ``pp_schedule``; divides the world size (data parallel = world /
            (pp * tp)).
        pp_schedule: ``gpipe``, ``1f1b``, ``interleaved_1f1b``, ``looped_bfs``, ``zero_bubble``
            or ``zbv_zero_bubble`` (torch.distributed.pipelining's schedules).
        pp_microbatches: pipeline micro-batches each of a rank's micro-batches is split into
            (null: ``pp_size``); divides ``training.micro_batch_size``. A step runs
            ``gradient accumulation × pp_microbatches`` of them through the schedule.
        pp_virtual_stages: stages per rank for the interleaved schedules (null: 1 for gpipe and
            1f1b, 2 otherwise).
        cp_size: context-parallel degree: each sequence is split into ``2 * cp_size`` chunks and
            every rank of a group of ``cp_size`` data-parallel ranks holds two (zig-zag), with
            ring attention exchanging keys and values; ``data.max_seq_len`` must be a multiple
            of ``2 * cp_size``.
        reshard_after_forward: free gathered parameters after forward (less memory, more comms).
        cpu_offload: keep sharded parameters on the CPU (FSDP only).
        backend: process-group backend (``auto``: nccl on CUDA, gloo on CPU).
    """

    fsdp: bool = True
    tp_size: int = 1
    ep_size: int = 1
    pp_size: int = 1
    pp_schedule: str = "1f1b"
    pp_microbatches: int | None = None
    pp_virtual_stages: int | None = None
    cp_size: int = 1
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
        save_gguf: GGUF files written from the merged model, each with an Ollama ``Modelfile``
            in ``<output_dir>/gguf/<type>/`` (``[q8_0]``; f32, f16, bf16, q8_0, ...).
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
    save_gguf: list[str] = field(default_factory=list)
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

    loggers: list[str] = field(default_factory=lambda: ["stdout"], metadata=component(LOGGERS))
    log_every_n_steps: int = 1
    jsonl_path: str | None = None
    progress_bar: bool = True
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(kw_only=True)
class RecipeConfig:
    """What every recipe's config has. ``validate`` runs, in order, the ``CHECKS`` (functions
    of the config and a ``Checks``) of the ``checks`` module beside the recipe's config module,
    imported only then (quantize's bring torch).

    Args:
        recipe: the recipe this config is for (each schema defaults it to its own name).
        model: the checkpoint (a recipe may narrow the section).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        allow_imports: glob patterns of dotted paths the config may import.
    """

    recipe: str
    model: ModelConfig
    device: Literal["auto", "cpu", "cuda"] = "auto"
    allow_imports: list[str] = field(default_factory=list)

    def validate(self, context: ValidationContext) -> list[Issue]:
        """Range and relation checks, each issue named by its dotted key."""
        package = type(self).__module__.rpartition(".")[0]
        checks = Checks(context)
        for step in importlib.import_module(f"{package}.checks").CHECKS:
            step(self, checks)
        return checks.issues


@dataclass(kw_only=True)
class TokenizedRecipeConfig(RecipeConfig):
    """A recipe config with a tokenizer.

    Args:
        tokenizer: the tokenizer and chat template.
    """

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    @property
    def tokenizer_dir(self) -> str:
        """``tokenizer.path``, defaulting to the checkpoint directory."""
        return self.tokenizer.path or self.model.checkpoint_dir


@dataclass(kw_only=True)
class TrainingRecipeConfig(TokenizedRecipeConfig):
    """A training recipe's config: its processes, outputs and metrics.

    Args:
        distributed: multi-process settings.
        checkpointing: outputs and resume.
        logging: metrics.
    """

    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpointing: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
