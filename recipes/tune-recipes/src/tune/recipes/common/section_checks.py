"""Checks of the config sections several recipes share (``common.config_sections``).

Each takes the recipe's whole config (any schema with the sections it reads) and records its
findings in a ``Checks``; a recipe's ``checks`` module lists them, with its own, in ``CHECKS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tune.config import Checks
from tune.recipes.common.availability import (
    GGUF,
    LOGGER_PACKAGES,
    TORCHAO,
    Package,
    check_data_source,
    hub_unreachable,
    in_hub_cache,
    is_hub_model_id,
    report_missing,
    require_package,
)
from tune.recipes.common.availability import looks_local as looks_local  # recipes' checks use it
from tune.recipes.common.layout_checks import check_layout, data_shards
from tune.recipes.common.lora_settings import lora_settings_problem
from tune.recipes.config.registries import OPTIMIZERS

# model.implementation=transformers builds any AutoModelForCausalLM (tune-models' extra).
TRANSFORMERS = Package("transformers", "tune-models[transformers]")


def check_checkpoint_dir(
    c: Checks, key: str, ckpt: str, *, quantized_ok: bool = False, weights_note: str = ""
) -> bool:
    """``ckpt``, the value of ``key``, is an HF checkpoint directory: ``config.json`` and
    ``*.safetensors`` weights, or (``quantized_ok``) a directory ``tune.quant`` quantized.

    Returns:
        Whether ``ckpt`` is such a quantized directory.
    """
    if not c.require(bool(ckpt), key, "must name a checkpoint directory"):
        return False
    if not Path(ckpt).expanduser().exists() and is_hub_model_id(ckpt):
        # A Hub id: fetched into the HF cache when the run starts, so it must be cached or the
        # Hub must answer; else it is reported as the missing directory it may also be.
        reason = None if in_hub_cache(ckpt, "model") else hub_unreachable("model")
        if reason is not None:
            report_missing(c, key, f"directory not found locally: {ckpt} (nor, as a Hugging Face "
                                   f"Hub id, in the local cache; the Hub is unreachable: {reason})")  # fmt: skip
        return False
    if ckpt.endswith(".gguf"):  # imported to an HF directory when the run starts
        if c.path_exists(key, ckpt, "file"):
            with open(Path(ckpt).expanduser(), "rb") as handle:
                c.require(handle.read(4) == b"GGUF", key, f"{ckpt} is not a GGUF file")
        return False
    if not c.path_exists(key, ckpt, "dir"):
        return False
    root = Path(ckpt).expanduser()
    c.require(
        (root / "config.json").is_file(),
        key,
        f"{ckpt} has no config.json (expected an HF checkpoint directory)",
    )
    quantized = False
    if quantized_ok:
        from tune.quant import is_quantized_dir  # torchao: imported only for an existing path

        quantized = is_quantized_dir(root)  # written by tune.quant.save_quantized_dir
    c.require(
        quantized or any(root.glob("*.safetensors")),
        key,
        f"{ckpt} has no *.safetensors weights{weights_note}",
    )
    return quantized


def check_adapter_dir(c: Checks, adapter: str | None) -> None:
    """``model.adapter_dir``, when set, is a PEFT adapter directory."""
    if adapter is not None and c.path_exists("model.adapter_dir", adapter, "dir"):
        c.require(
            (Path(adapter).expanduser() / "adapter_config.json").is_file(),
            "model.adapter_dir",
            f"{adapter} has no adapter_config.json (expected a PEFT adapter directory)",
        )


def check_dtype(c: Checks, key: str, dtype: str, device: str) -> None:
    """A warning for bfloat16 on the CPU."""
    if dtype == "bfloat16" and device == "cpu":
        c.warn(key, "bfloat16 on a CPU without bf16 units is several times slower")


def _native_support_problem(checkpoint_dir: str) -> str | None:
    """``tune.models.native_support_problem`` of a local checkpoint; None for a Hub id, a GGUF
    file or an unreadable ``config.json`` (the loader reports those)."""
    config = Path(checkpoint_dir).expanduser() / "config.json"
    if not config.is_file():
        return None
    from tune.models import native_support_problem  # torch: only for a local checkpoint

    try:
        return native_support_problem(config)
    except ValueError:
        return None


def builds_with_transformers(model: Any) -> bool:
    """Whether ``model.implementation`` builds the checkpoint with transformers (``auto``: when
    its local ``config.json`` has a ``model_type`` no native family builds)."""
    choice = getattr(model, "implementation", "native")
    if choice == "auto":
        return _native_support_problem(model.checkpoint_dir) is not None
    return bool(choice == "transformers")


def check_implementation(cfg: Any, c: Checks) -> None:
    """``model.implementation`` (``sft``, ``preference``): a native family for ``native``, the
    transformers package otherwise, and no tensor parallel (no TP plan) with transformers."""
    m = cfg.model
    if m.implementation == "native":
        if (problem := _native_support_problem(m.checkpoint_dir)) is not None:
            c.error("model.implementation", f"native: {problem}; set it to transformers or auto")
        return
    if not builds_with_transformers(m):
        return
    needed_by = "transformers" if m.implementation == "transformers" else (
        f"auto for {m.checkpoint_dir} (no native family for its model_type)"
    )  # fmt: skip
    require_package(c, "model.implementation", TRANSFORMERS, needed_by)
    if cfg.distributed.tp_size > 1:
        c.error(
            "distributed.tp_size",
            f"tensor parallel needs a native model; model.implementation={m.implementation} "
            "builds this checkpoint with transformers: use tp_size=1 (FSDP shards it)",
        )


def check_model(cfg: Any, c: Checks) -> None:
    """``model`` and ``tokenizer`` of a training recipe, and its ``teacher`` where it has one."""
    check_checkpoint_dir(c, "model.checkpoint_dir", cfg.model.checkpoint_dir)
    c.path_exists("tokenizer.path", cfg.tokenizer.path, "dir")
    check_dtype(c, "model.dtype", cfg.model.dtype, cfg.device)
    if hasattr(cfg.model, "implementation"):
        check_implementation(cfg, c)
        for key in ("router_aux_loss_coef", "router_z_loss_coef", "routing_bias_update_rate"):
            c.non_negative(f"model.{key}", getattr(cfg.model, key))
    if (teacher := getattr(cfg, "teacher", None)) is not None:
        check_checkpoint_dir(c, "teacher.checkpoint_dir", teacher.checkpoint_dir)
        check_dtype(c, "teacher.dtype", teacher.dtype, cfg.device)


def check_inference_model(cfg: Any, c: Checks) -> None:
    """``model`` and ``tokenizer`` of ``generate`` and ``eval``: a float or quantized checkpoint,
    and an optional adapter with how it is applied."""
    m, ckpt = cfg.model, cfg.model.checkpoint_dir
    if check_checkpoint_dir(c, "model.checkpoint_dir", ckpt, quantized_ok=True) and (
        m.adapter_dir is not None or m.quantize is not None
    ):
        c.error(
            "model.checkpoint_dir",
            f"{ckpt} is already quantized: set model.adapter_dir and model.quantize to null",
        )
    root = Path(ckpt).expanduser()
    if (
        ckpt
        and (root / "adapter_config.json").is_file()
        and not any(root.glob("model*.safetensors"))
    ):
        c.error(
            "model.checkpoint_dir",
            f"{ckpt} is a PEFT adapter directory: set model.adapter_dir to it and "
            "model.checkpoint_dir to its base",
        )
    check_adapter_dir(c, m.adapter_dir)
    if m.adapter_dir is not None and m.quantize is not None and not m.merge_adapter:
        c.error(
            "model.quantize",
            "with model.adapter_dir, quantization needs model.merge_adapter=true (the adapter is "
            "folded into the float weights first)",
        )
    if m.adapter_dir is None and m.merge_adapter:
        c.warn("model.merge_adapter", "has no effect without model.adapter_dir")
    if m.quantize is not None:
        require_package(c, "model.quantize", TORCHAO, "quantization")
    c.path_exists("tokenizer.path", cfg.tokenizer.path, "dir")
    check_dtype(c, "model.dtype", m.dtype, cfg.device)


def check_column_map(c: Checks, key: str, column_map: dict[str, str], data_format: str) -> None:
    """``key``, an ``{expected name: dataset column}`` map, has only names the builder of
    ``data_format`` reads; a map written the other way round is shown flipped."""
    if not column_map:
        return
    from tune.data import BUILDER_COLUMNS, column_map_problem  # torch: only for a map to check

    if problem := column_map_problem(column_map, BUILDER_COLUMNS[data_format], key):
        c.error(key, problem.removeprefix(f"{key}: "))


def _check_sources(d: Any, c: Checks) -> None:
    """Each dataset of ``data.sources`` (a mixture, instead of ``data.source``)."""
    if d.source:
        c.error("data.sources", "set either data.source or data.sources (a mixture), not both")
    if d.validation_split is not None:
        c.error("data.validation_split", "with data.sources, set data.sources.N.validation_split")
    for i, s in enumerate(d.sources):
        key = f"data.sources.{i}"
        if c.require(bool(s.source), f"{key}.source", "must not be empty"):
            check_data_source(c, f"{key}.source", s.source)
        c.positive(f"{key}.weight", s.weight)
        if s.validation_split is not None and Path(s.source).exists():
            c.error(f"{key}.validation_split", f"{s.source} is a local file without named splits")
        if s.column_map is not None:
            check_column_map(c, f"{key}.column_map", s.column_map, s.format or d.format)


def check_data(cfg: Any, c: Checks) -> None:
    """``data`` of a ``DatasetConfig``: the source (or ``sources``), its column map, its
    held-out part and (sft's) packing."""
    d = cfg.data
    if getattr(d, "sources", None):
        _check_sources(d, c)
        has_source = False
    else:
        has_source = c.require(bool(d.source), "data.source", "must name a file or Hub dataset")
    if has_source:  # a local path, or a Hub dataset cached here or reachable
        check_data_source(c, "data.source", d.source)
    check_column_map(c, "data.column_map", d.column_map, d.format)
    c.positive("data.max_seq_len", d.max_seq_len)
    c.in_range("data.validation_fraction", d.validation_fraction, 0.0, 1.0)
    if d.validation_split is not None and d.validation_fraction > 0:
        c.error(
            "data.validation_fraction",
            "set either data.validation_split or data.validation_fraction, not both",
        )
    if d.validation_split is not None and has_source and Path(d.source).exists():
        c.error(
            "data.validation_split",
            f"{d.source} is a local file without named splits; use data.validation_fraction",
        )
    if getattr(d, "padding_free", None) is not None and d.packing:
        c.warn("data.padding_free", "has no effect with data.packing=true (packs have no padding)")
    tokenizer_dir = Path(cfg.tokenizer_dir).expanduser()
    formats = {d.format, *(s.format or d.format for s in getattr(d, "sources", []))}
    if (
        formats != {"text"}
        and not getattr(d, "train_on_input", True)
        and (tokenizer_dir / "tokenizer.json").is_file()
    ):
        from tune.data import MessageError, Tokenizer, check_assistant_masking, resolve_template

        try:  # the assistant-only loss finds each reply in the template's rendering
            tokenizer = Tokenizer.from_dir(tokenizer_dir)
            template = resolve_template(tokenizer, cfg.tokenizer.chat_template)
            check_assistant_masking(template, tokenizer)
        except MessageError as error:
            c.error("tokenizer.chat_template", f"{error} (or set data.train_on_input=true)")


def check_lora(cfg: Any, c: Checks) -> None:
    """``training.lora``, for the adapter methods."""
    t = cfg.training
    if t.method == "full":
        return
    if t.method == "qlora":
        require_package(c, "training.method", TORCHAO, "qlora (an NF4 base)")
    c.positive("training.lora.r", t.lora.r)
    c.positive("training.lora.alpha", t.lora.alpha)
    c.in_range("training.lora.dropout", t.lora.dropout, 0.0, 1.0)
    if not c.errors and (problem := lora_settings_problem(t.method, t.lora)):
        c.error(f"training.lora.{problem[0]}", problem[1])
    c.require(
        bool(t.lora.targets) and all(t.lora.targets),
        "training.lora.targets",
        f"must list at least one module-name pattern for method {t.method!r}",
    )


def check_optimizer(cfg: Any, c: Checks, total: int | None, total_is: str = "") -> None:
    """``training``'s optimizer, schedule and clipping.

    Args:
        total: the run's optimizer steps (None: not known yet).
        total_is: how ``total`` was counted, for the warm-up message.
    """
    t = cfg.training
    if (OPTIMIZERS.builtins.get(t.optimizer.name) or "").startswith("torchao."):
        name = t.optimizer.name
        require_package(c, "training.optimizer.name", TORCHAO, f"the {name!r} optimizer")
    c.positive("training.optimizer.lr", t.optimizer.lr)
    c.non_negative("training.optimizer.weight_decay", t.optimizer.weight_decay)
    c.positive("training.optimizer.eps", t.optimizer.eps)
    if c.require(len(t.optimizer.betas) == 2, "training.optimizer.betas", "must be [beta1, beta2]"):
        for i, beta in enumerate(t.optimizer.betas):
            c.in_range(f"training.optimizer.betas.{i}", beta, 0.0, 1.0)
    c.in_range("training.lr_schedule.min_lr_ratio", t.lr_schedule.min_lr_ratio, 0.0, 1.0 + 1e-12)
    warmup = t.lr_schedule.warmup_steps
    if c.non_negative("training.lr_schedule.warmup_steps", warmup) and total is not None:
        c.require(
            warmup < total,
            "training.lr_schedule.warmup_steps",
            f"must be < the total optimizer steps ({total}{total_is}), got {warmup}",
        )
    c.positive("training.max_grad_norm", t.max_grad_norm)


def check_training(cfg: Any, c: Checks) -> None:
    """``training`` of an ``EpochTrainingConfig``, and its batch against the world size."""
    t = cfg.training
    check_lora(cfg, c)
    if t.max_steps is not None:
        c.positive("training.max_steps", t.max_steps)
    else:
        c.positive("training.epochs", t.epochs)
    total = c.context.total_steps if c.context.total_steps is not None else t.max_steps
    check_optimizer(cfg, c, total)
    ok = c.positive("training.global_batch_size", t.global_batch_size)
    ok = c.positive("training.micro_batch_size", t.micro_batch_size) and ok
    d, world = cfg.distributed, c.context.world_size
    split = d.tp_size * getattr(d, "pp_size", 1) * getattr(d, "cp_size", 1)
    if ok and split > 0 and world % split == 0:
        dp = data_shards(d, world)
        per_step = dp * t.micro_batch_size
        split_by = (f"tp_size {d.tp_size}" if split == d.tp_size
                    else f"(tp_size × pp_size × cp_size) {split}")  # fmt: skip
        c.require(
            t.global_batch_size % per_step == 0,
            "training.global_batch_size",
            f"{t.global_batch_size} is not divisible by data-parallel size {dp} (world size "
            f"{world} / {split_by}) × training.micro_batch_size {t.micro_batch_size} = {per_step}",
        )


def check_distributed(cfg: Any, c: Checks) -> None:
    """``distributed``: the tensor-parallel degree and FSDP options, the same in every recipe."""
    dist, world = cfg.distributed, c.context.world_size
    if c.positive("distributed.tp_size", dist.tp_size):
        c.require(
            world % dist.tp_size == 0,
            "distributed.tp_size",
            f"{dist.tp_size} does not divide the world size {world}",
        )
    if dist.cpu_offload and not dist.fsdp:
        c.error("distributed.cpu_offload", "needs distributed.fsdp=true")
    check_expert_parallel(cfg, c)
    check_layout(cfg, c)
    if dist.tp_size <= 1:
        return
    if getattr(cfg.data, "padding_free", None):
        c.error(
            "data.padding_free",
            "cannot be combined with distributed.tp_size > 1: sequence-parallel layers split "
            "the sequence, and a padding-free row has any length",
        )
    if cfg.training.method == "qlora":
        c.error(
            "training.method",
            "qlora cannot be combined with distributed.tp_size > 1: tensor parallel cannot "
            "split NF4 weights; use lora, or tp_size=1 (FSDP shards NF4 weights)",
        )


# Recipes whose loops run an expert-parallel model (every rank steps through the same
# forward/backward calls, as the all-to-all needs; GRPO's rollouts would not).
EXPERT_PARALLEL_RECIPES = ("sft", "preference")


def _routed_expert_counts(checkpoint_dir: str) -> list[int] | None:
    """``tune.models.routed_expert_counts`` of a local checkpoint (None: no local config.json
    or one no native family reads; the loader reports those)."""
    config = Path(checkpoint_dir).expanduser() / "config.json"
    if not config.is_file():
        return None
    from tune.models import routed_expert_counts  # torch: only for a local checkpoint

    try:
        return routed_expert_counts(config)
    except (ValueError, TypeError):
        return None


def check_expert_parallel(cfg: Any, c: Checks) -> None:
    """``distributed.ep_size``: a divisor of the data-parallel size and of the expert count of
    a native MoE model, with FSDP, in a recipe that runs it (LoRA factors on the experts,
    ``training.lora.target_parameters``, are split with them; QLoRA's NF4 expert stacks stay
    whole on every rank)."""
    dist, world, key = cfg.distributed, c.context.world_size, "distributed.ep_size"
    ep = dist.ep_size
    if not c.positive(key, ep) or ep == 1:
        return
    recipe = getattr(cfg, "recipe", "")
    if recipe not in EXPERT_PARALLEL_RECIPES:
        c.error(key, f"expert parallelism runs in {list(EXPERT_PARALLEL_RECIPES)}, not in "
                     f"{recipe!r}: use ep_size=1")  # fmt: skip
        return
    if world == 1:
        c.warn(key, f"{ep} has no effect with one process (the experts stay whole)")
    elif dist.tp_size > 0 and world % dist.tp_size == 0:
        dp = world // dist.tp_size
        c.require(dp % ep == 0, key, f"{ep} does not divide the data-parallel size {dp} "
                                     f"(world size {world} / tp_size {dist.tp_size})")  # fmt: skip
    c.require(dist.fsdp, key, "needs distributed.fsdp=true: EP ranks read different batches, "
                              "so the non-expert parameters need FSDP's gradient reduction")  # fmt: skip
    if builds_with_transformers(cfg.model):
        c.error(key, f"expert parallelism needs a native MoE model; model.implementation="
                     f"{cfg.model.implementation} builds it with transformers")  # fmt: skip
    elif (counts := _routed_expert_counts(cfg.model.checkpoint_dir)) is not None:
        if not counts:
            c.error(key, f"{cfg.model.checkpoint_dir} is a dense model (no routed experts): "
                         "use ep_size=1")  # fmt: skip
        for count in counts:
            c.require(count % ep == 0, key, f"{ep} does not divide the model's {count} routed "
                                            "experts")  # fmt: skip


def check_checkpointing(cfg: Any, c: Checks) -> None:
    """``checkpointing``: the run directory, the step-directory cadence and resume."""
    ck = cfg.checkpointing
    c.require(bool(ck.output_dir), "checkpointing.output_dir", "must not be empty")
    c.positive("checkpointing.save_every_n_steps", ck.save_every_n_steps)
    c.positive("checkpointing.keep_last_n", ck.keep_last_n)
    if ck.resume not in ("auto", "never"):
        c.path_exists("checkpointing.resume", ck.resume, "dir")
    if ck.save_gguf:
        c.require(
            cfg.training.method == "full" or ck.save_merged,
            "checkpointing.save_gguf",
            "is written from the merged model: set checkpointing.save_merged=true",
        )
        if require_package(c, "checkpointing.save_gguf", GGUF, "GGUF export"):
            from tune.checkpoint.gguf import supported_file_types

            for i, kind in enumerate(ck.save_gguf):
                c.require(
                    kind in supported_file_types(),
                    f"checkpointing.save_gguf.{i}",
                    f"must be one of {supported_file_types()}, got {kind!r}",
                )


def check_logging(cfg: Any, c: Checks) -> None:
    """``logging``: the interval, and options only for loggers in use."""
    c.positive("logging.log_every_n_steps", cfg.logging.log_every_n_steps)
    for name in dict.fromkeys(cfg.logging.loggers):
        if (package := LOGGER_PACKAGES.get(name)) is not None:
            require_package(c, "logging.loggers", package, f"the {name} logger")
    unknown_options = sorted(set(cfg.logging.options) - set(cfg.logging.loggers))
    if unknown_options:
        c.warn("logging.options", f"options for loggers not in logging.loggers: {unknown_options}")


def check_run(cfg: Any, c: Checks) -> None:
    """How a recipe with an ``EpochTrainingConfig`` runs: ``checkpointing``, ``eval``
    (validation loss), ``logging`` and ``distributed``."""
    check_checkpointing(cfg, c)
    if cfg.training.method == "full" and cfg.checkpointing.save_merged:
        c.warn("checkpointing.save_merged", "has no effect with training.method=full")
    c.positive("eval.every_n_steps", cfg.eval.every_n_steps)
    c.positive("eval.max_batches", cfg.eval.max_batches)
    d = cfg.data
    has_validation = d.validation_fraction > 0 or any(
        s.validation_split is not None for s in [d, *getattr(d, "sources", [])]
    )
    if cfg.eval.every_n_steps is not None or cfg.eval.before_training:
        c.require(
            has_validation,
            "eval.every_n_steps" if cfg.eval.every_n_steps is not None else "eval.before_training",
            "needs validation data: set data.validation_split or data.validation_fraction",
        )
    check_logging(cfg, c)
    check_distributed(cfg, c)


def check_output_file(cfg: Any, c: Checks, suffix: str, holds: str) -> None:
    """``output.file``, when set, ends in ``suffix`` (a file that ``holds`` what is written)."""
    out = cfg.output.file
    if out is not None:
        c.require(
            Path(out).suffix.lower() == suffix,
            "output.file",
            f"must end in {suffix} ({holds}), got {out}",
        )
