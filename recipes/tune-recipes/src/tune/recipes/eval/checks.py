"""``EvalConfig.validate``: inputs, ranges and paths, before any model loads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tune.config import Checks
from tune.recipes.common.availability import LM_EVAL, check_data_source, require_package
from tune.recipes.common.section_checks import (
    check_column_map,
    check_inference_model,
    check_output_file,
)

if TYPE_CHECKING:
    from tune.recipes.eval.config import EvalConfig


def _check_perplexity(cfg: EvalConfig, c: Checks) -> None:
    p = cfg.perplexity
    if p.source is None:
        return
    check_data_source(c, "perplexity.source", p.source)
    check_column_map(c, "perplexity.column_map", p.column_map, p.format)
    c.positive("perplexity.max_seq_len", p.max_seq_len)
    c.positive("perplexity.batch_size", p.batch_size)
    c.positive("perplexity.max_batches", p.max_batches)
    if p.format == "text" and p.tokens == "assistant":
        c.warn("perplexity.tokens", "text data has no assistant turns: every token is scored")


def _check_lm_eval(cfg: EvalConfig, c: Checks) -> None:
    le = cfg.lm_eval
    if le.tasks:
        require_package(c, "lm_eval.tasks", LM_EVAL, "the lm-evaluation-harness")
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
    check_output_file(cfg, c, ".json", "one JSON report")


CHECKS = (check_inference_model, _check_perplexity, _check_lm_eval, _check_output)
