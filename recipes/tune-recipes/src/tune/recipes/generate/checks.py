"""``GenerateConfig.validate``: inputs, ranges and paths, before any model loads."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tune.config import Checks
from tune.recipes.common.section_checks import check_inference_model, check_output_file

if TYPE_CHECKING:
    from tune.recipes.generate.config import GenerateConfig


def _check_prompts(cfg: GenerateConfig, c: Checks) -> None:
    from tune.data import PROMPT_FILE_SUFFIXES, PromptInputError, parse_prompt

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
    if s.quantize != "none":
        c.require(
            cfg.model.quantize is None,
            "sampling.quantize",
            f"{s.quantize} cannot be combined with model.quantize={cfg.model.quantize}; set one",
        )
        if cfg.model.adapter_dir is not None and not cfg.model.merge_adapter:
            c.warn("sampling.quantize", "adapted layers stay float; set model.merge_adapter=true")


def _check_output(cfg: GenerateConfig, c: Checks) -> None:
    check_output_file(cfg, c, ".jsonl", "one JSON record per prompt")
    if cfg.output.file is None and not cfg.output.print:
        c.warn("output.print", "false with no output.file: the completions go nowhere")


CHECKS = (check_inference_model, _check_prompts, _check_sampling, _check_output)
