"""Checks of the config sections the training recipes share (``common.config_sections``).

Each takes the recipe's whole config (any schema with the sections it reads) and records its
findings in a ``Checks``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tune.recipes.common.lora_settings import lora_settings_problem
from tune.recipes.config.validation import Checks

_LOCAL_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".txt", ".arrow")


def looks_local(source: str) -> bool:
    """Whether a data source names a local path rather than a Hub dataset (``owner/name``)."""
    return (
        source.startswith(("/", "./", "../", "~"))
        or source.lower().endswith(_LOCAL_DATA_SUFFIXES)
        or Path(source).exists()
    )


def check_model_section(cfg: Any, c: Checks) -> None:
    ckpt = cfg.model.checkpoint_dir
    if not c.require(bool(ckpt), "model.checkpoint_dir", "must name a checkpoint directory"):
        return
    if c.path_exists("model.checkpoint_dir", ckpt, "dir"):
        root = Path(ckpt).expanduser()
        c.require(
            (root / "config.json").is_file(),
            "model.checkpoint_dir",
            f"{ckpt} has no config.json (expected an HF checkpoint directory)",
        )
        c.require(
            any(root.glob("*.safetensors")),
            "model.checkpoint_dir",
            f"{ckpt} has no *.safetensors weights",
        )
    if cfg.tokenizer.path is not None:
        c.path_exists("tokenizer.path", cfg.tokenizer.path, "dir")
    if cfg.model.dtype == "bfloat16" and cfg.device == "cpu":
        c.warn("model.dtype", "bfloat16 on a CPU without bf16 units is several times slower")


def check_data_section(cfg: Any, c: Checks) -> None:
    d = cfg.data
    has_source = c.require(bool(d.source), "data.source", "must not be empty")
    if has_source and looks_local(d.source):
        c.path_exists("data.source", d.source, "any")
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
    if d.padding_free is not None and d.packing:
        c.warn("data.padding_free", "has no effect with data.packing=true (packs have no padding)")


def check_training_section(cfg: Any, c: Checks) -> None:
    t = cfg.training
    if t.method != "full":
        lora = t.lora
        c.positive("training.lora.r", lora.r)
        c.positive("training.lora.alpha", lora.alpha)
        c.in_range("training.lora.dropout", lora.dropout, 0.0, 1.0)
        if not c.errors and (problem := lora_settings_problem(t.method, lora)):
            c.error(f"training.lora.{problem[0]}", problem[1])
        c.require(
            bool(lora.targets) and all(lora.targets),
            "training.lora.targets",
            f"must list at least one module-name pattern for method {t.method!r}",
        )
    if t.max_steps is not None:
        c.positive("training.max_steps", t.max_steps)
    else:
        c.positive("training.epochs", t.epochs)
    c.positive("training.optimizer.lr", t.optimizer.lr)
    c.non_negative("training.optimizer.weight_decay", t.optimizer.weight_decay)
    c.positive("training.optimizer.eps", t.optimizer.eps)
    if c.require(len(t.optimizer.betas) == 2, "training.optimizer.betas", "must be [beta1, beta2]"):
        for i, beta in enumerate(t.optimizer.betas):
            c.in_range(f"training.optimizer.betas.{i}", beta, 0.0, 1.0)
    c.in_range("training.lr_schedule.min_lr_ratio", t.lr_schedule.min_lr_ratio, 0.0, 1.0 + 1e-12)
    warmup = t.lr_schedule.warmup_steps
    total = c.context.total_steps if c.context.total_steps is not None else t.max_steps
    if c.non_negative("training.lr_schedule.warmup_steps", warmup) and total is not None:
        c.require(
            warmup < total,
            "training.lr_schedule.warmup_steps",
            f"must be < the total optimizer steps ({total}), got {warmup}",
        )
    c.positive("training.max_grad_norm", t.max_grad_norm)
    ok = c.positive("training.global_batch_size", t.global_batch_size)
    ok = c.positive("training.micro_batch_size", t.micro_batch_size) and ok
    tp = cfg.distributed.tp_size
    world = c.context.world_size
    if ok and tp > 0 and world % tp == 0:
        dp = world // tp
        per_step = dp * t.micro_batch_size
        c.require(
            t.global_batch_size % per_step == 0,
            "training.global_batch_size",
            f"{t.global_batch_size} is not divisible by data-parallel size {dp} (world size "
            f"{world} / tp_size {tp}) × training.micro_batch_size {t.micro_batch_size} = {per_step}",
        )


def check_outputs_section(cfg: Any, c: Checks) -> None:
    ck = cfg.checkpointing
    c.require(bool(ck.output_dir), "checkpointing.output_dir", "must not be empty")
    c.positive("checkpointing.save_every_n_steps", ck.save_every_n_steps)
    c.positive("checkpointing.keep_last_n", ck.keep_last_n)
    if ck.resume not in ("auto", "never"):
        c.path_exists("checkpointing.resume", ck.resume, "dir")
    if cfg.training.method == "full" and ck.save_merged:
        c.warn("checkpointing.save_merged", "has no effect with training.method=full")
    c.positive("eval.every_n_steps", cfg.eval.every_n_steps)
    c.positive("eval.max_batches", cfg.eval.max_batches)
    has_validation = cfg.data.validation_split is not None or cfg.data.validation_fraction > 0
    if cfg.eval.every_n_steps is not None or cfg.eval.before_training:
        c.require(
            has_validation,
            "eval.every_n_steps" if cfg.eval.every_n_steps is not None else "eval.before_training",
            "needs validation data: set data.validation_split or data.validation_fraction",
        )
    c.positive("logging.log_every_n_steps", cfg.logging.log_every_n_steps)
    unknown_options = sorted(set(cfg.logging.options) - set(cfg.logging.loggers))
    if unknown_options:
        c.warn("logging.options", f"options for loggers not in logging.loggers: {unknown_options}")
