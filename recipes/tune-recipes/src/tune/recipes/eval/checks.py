"""``EvalConfig.validate``: inputs, ranges and paths, before any model loads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tune.recipes.common.quantize_loading import QUANTIZATION_MANIFEST
from tune.recipes.config.errors import Issue
from tune.recipes.config.validation import Checks, ValidationContext

if TYPE_CHECKING:
    from tune.recipes.eval.config import EvalConfig


def _check_model(cfg: EvalConfig, c: Checks) -> None:
    ckpt = cfg.model.checkpoint_dir
    if c.path_exists("model.checkpoint_dir", ckpt, "dir"):
        root = Path(ckpt).expanduser()
        c.require(
            (root / "config.json").is_file(),
            "model.checkpoint_dir",
            f"{ckpt} has no config.json (expected an HF checkpoint directory)",
        )
        quantized = (root / QUANTIZATION_MANIFEST).is_file()
        c.require(
            quantized or any(root.glob("*.safetensors")),
            "model.checkpoint_dir",
            f"{ckpt} has no *.safetensors weights",
        )
        if quantized and (cfg.model.adapter_dir is not None or cfg.model.quantize is not None):
            c.error(
                "model.checkpoint_dir",
                f"{ckpt} is already quantized: set model.adapter_dir and model.quantize to null",
            )
    adapter = cfg.model.adapter_dir
    if adapter is not None and c.path_exists("model.adapter_dir", adapter, "dir"):
        c.require(
            (Path(adapter).expanduser() / "adapter_config.json").is_file(),
            "model.adapter_dir",
            f"{adapter} has no adapter_config.json (expected a PEFT adapter directory)",
        )
    if adapter is not None and cfg.model.quantize is not None and not cfg.model.merge_adapter:
        c.error("model.quantize", "with model.adapter_dir, quantization needs merge_adapter=true")
    if cfg.tokenizer.path is not None:
        c.path_exists("tokenizer.path", cfg.tokenizer.path, "dir")


def _check_perplexity(cfg: EvalConfig, c: Checks) -> None:
    p = cfg.perplexity
    if p.source is None:
        return
    if Path(p.source).expanduser().exists() or p.source.startswith((".", "/", "~")):
        c.path_exists("perplexity.source", p.source, "any")
    c.positive("perplexity.max_seq_len", p.max_seq_len)
    c.positive("perplexity.batch_size", p.batch_size)
    c.positive("perplexity.max_batches", p.max_batches)
    if p.format == "text" and p.tokens == "assistant":
        c.warn("perplexity.tokens", "text data has no assistant turns: every token is scored")


def _check_lm_eval(cfg: EvalConfig, c: Checks) -> None:
    le = cfg.lm_eval
    for i, task in enumerate(le.tasks):
        c.require(bool(task), f"lm_eval.tasks.{i}", "must not be empty")
    if le.include_path is not None:
        c.path_exists("lm_eval.include_path", le.include_path, "dir")
    c.non_negative("lm_eval.num_fewshot", le.num_fewshot)
    c.positive("lm_eval.limit", le.limit)
    c.positive("lm_eval.batch_size", le.batch_size)
    c.positive("lm_eval.max_length", le.max_length)
    c.positive("lm_eval.max_gen_tokens", le.max_gen_tokens)
    if not le.tasks and cfg.perplexity.source is None:
        c.error("perplexity.source", "nothing to evaluate: set perplexity.source or lm_eval.tasks")


def _check_output(cfg: EvalConfig, c: Checks) -> None:
    out = cfg.output.file
    if out is not None:
        c.require(
            Path(out).suffix.lower() == ".json",
            "output.file",
            f"must end in .json (one JSON report), got {out}",
        )


def check_eval_config(cfg: EvalConfig, context: ValidationContext) -> list[Issue]:
    """Every issue of an eval config (errors and warnings)."""
    checks = Checks(context)
    for step in (_check_model, _check_perplexity, _check_lm_eval, _check_output):
        step(cfg, checks)
    return checks.issues
