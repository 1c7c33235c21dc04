"""``GenerateConfig.validate``: inputs, ranges and paths, before any model loads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tune.recipes.common.quantize_loading import QUANTIZATION_MANIFEST
from tune.recipes.config.errors import Issue
from tune.recipes.config.validation import Checks, ValidationContext
from tune.recipes.generate.prompts import PROMPT_FILE_SUFFIXES, PromptInputError, parse_prompt

if TYPE_CHECKING:
    from tune.recipes.generate.config import GenerateConfig


def _check_model(cfg: GenerateConfig, c: Checks) -> None:
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
        quantized = (root / QUANTIZATION_MANIFEST).is_file()  # written by `tune run quantize`
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
        if (root / "adapter_config.json").is_file() and not any(root.glob("model*.safetensors")):
            c.error(
                "model.checkpoint_dir",
                f"{ckpt} is a PEFT adapter directory: set model.adapter_dir to it and "
                "model.checkpoint_dir to its base",
            )
    adapter = cfg.model.adapter_dir
    if adapter is not None and c.path_exists("model.adapter_dir", adapter, "dir"):
        c.require(
            (Path(adapter).expanduser() / "adapter_config.json").is_file(),
            "model.adapter_dir",
            f"{adapter} has no adapter_config.json (expected a PEFT adapter directory)",
        )
    if adapter is not None and cfg.model.quantize is not None and not cfg.model.merge_adapter:
        c.error(
            "model.quantize",
            "with model.adapter_dir, quantization needs model.merge_adapter=true (the adapter is "
            "folded into the float weights first)",
        )
    if adapter is None and cfg.model.merge_adapter:
        c.warn("model.merge_adapter", "has no effect without model.adapter_dir")
    if cfg.tokenizer.path is not None:
        c.path_exists("tokenizer.path", cfg.tokenizer.path, "dir")
    if cfg.model.dtype == "bfloat16" and cfg.device == "cpu":
        c.warn("model.dtype", "bfloat16 on a CPU without bf16 units is several times slower")


def _check_prompts(cfg: GenerateConfig, c: Checks) -> None:
    p = cfg.prompts
    for i, item in enumerate(p.items):
        key = f"prompts.items.{i}"
        try:
            parsed = parse_prompt(item, key)
        except PromptInputError as err:
            c.error(key, str(err).removeprefix(f"{key}: "))
            continue
        if parsed.messages is not None and not p.chat:
            c.error(key, "chat messages need the chat template; set prompts.chat=true")
    if p.file is not None:
        suffix = Path(p.file).suffix.lower()
        if c.require(
            suffix in PROMPT_FILE_SUFFIXES,
            "prompts.file",
            f"unknown extension {suffix or '(none)'!r} of {p.file}; expected one of "
            f"{list(PROMPT_FILE_SUFFIXES)}",
        ):
            c.path_exists("prompts.file", p.file, "file")
    if not p.items and p.file is None:
        c.error("prompts.items", "no prompts: set prompts.items or prompts.file")
    if p.system is not None and not p.chat:
        c.warn("prompts.system", "has no effect with prompts.chat=false")


def _check_sampling(cfg: GenerateConfig, c: Checks) -> None:
    s = cfg.sampling
    c.positive("sampling.max_new_tokens", s.max_new_tokens)
    c.non_negative("sampling.temperature", s.temperature)
    c.positive("sampling.top_k", s.top_k)
    if s.top_p is not None:
        c.require(0.0 < s.top_p <= 1.0, "sampling.top_p", f"must be in (0, 1], got {s.top_p}")
    if s.temperature == 0.0 and (s.top_k is not None or s.top_p is not None):
        c.warn("sampling.top_k", "top_k/top_p have no effect with temperature 0 (greedy)")
    for i, token in enumerate(s.stop_token_ids):
        c.non_negative(f"sampling.stop_token_ids.{i}", token)
    for i, text in enumerate(s.stop_strings):
        c.require(bool(text), f"sampling.stop_strings.{i}", "must not be empty")
    c.positive("batch_size", cfg.batch_size)


def _check_output(cfg: GenerateConfig, c: Checks) -> None:
    out = cfg.output.file
    if out is not None:
        c.require(
            Path(out).suffix.lower() == ".jsonl",
            "output.file",
            f"must end in .jsonl (one JSON record per prompt), got {out}",
        )
    if out is None and not cfg.output.print:
        c.warn("output.print", "false with no output.file: the completions go nowhere")


def check_generate_config(cfg: GenerateConfig, context: ValidationContext) -> list[Issue]:
    """Every issue of a generate config (errors and warnings)."""
    checks = Checks(context)
    for step in (_check_model, _check_prompts, _check_sampling, _check_output):
        step(cfg, checks)
    return checks.issues
