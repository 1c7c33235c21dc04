"""The closed config schema of the ``eval`` recipe (every key, its type and default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tune.recipes.common.config_sections import InferenceModelConfig, TokenizedRecipeConfig


@dataclass
class PerplexityConfig:
    """Perplexity on a dataset split (null ``source``: skipped).

    Args:
        source: a local file or directory (json/jsonl/parquet/csv/txt) or a Hub dataset name.
        format: ``instruction``, ``chat`` or ``text`` (as the sft recipe reads them).
        column_map: expected name -> dataset column (as sft's ``data.column_map``).
        split: the split scored.
        tokens: ``assistant`` scores only answer tokens (instruction/chat), ``all`` every token
            after the first; text data always scores every token.
        max_seq_len: tokens per sequence.
        truncation: ``truncate``, ``drop`` (counted) or ``error`` for longer examples.
        batch_size: sequences per forward.
        max_batches: score only this many batches (null: the whole split).
        fused_ce: cross-entropy fused with the output projection, in chunks (no [B, T, V]
            logits).
        padding_free: score each batch's real tokens only, laid end to end (as sft's
            ``data.padding_free``; same values). null (auto): on for the CPU.
    """

    source: str | None = None
    format: Literal["instruction", "chat", "text"] = "text"
    column_map: dict[str, str] = field(default_factory=dict)
    split: str = "train"
    tokens: Literal["assistant", "all"] = "assistant"
    max_seq_len: int = 2048
    truncation: Literal["truncate", "drop", "error"] = "truncate"
    batch_size: int = 4
    max_batches: int | None = None
    fused_ce: bool = True
    padding_free: bool | None = None


@dataclass
class LMEvalConfig:
    """lm-evaluation-harness tasks run on the tune model (empty ``tasks``: skipped).

    Args:
        tasks: task or group names known to lm_eval (or defined under ``include_path``).
        include_path: a directory of extra task YAML files.
        num_fewshot: few-shot examples per prompt (null: each task's default).
        limit: examples per task (an int count, or a fraction below 1; null: all).
        batch_size: sequences per forward when scoring.
        max_length: context window in tokens (null: the model's ``max_position_embeddings``).
        max_gen_tokens: default cap on generated tokens for generation tasks.
        add_bos: prepend BOS to every request (null: the tokenizer's own setting).
    """

    tasks: list[str] = field(default_factory=list)
    include_path: str | None = None
    num_fewshot: int | None = None
    limit: float | None = None
    batch_size: int = 8
    max_length: int | None = None
    max_gen_tokens: int = 256
    add_bos: bool | None = None


@dataclass
class EvalOutputConfig:
    """Where results go.

    Args:
        file: a ``.json`` report (null: none).
        print: print the results.
    """

    file: str | None = None
    print: bool = True


@dataclass(kw_only=True)
class EvalConfig(TokenizedRecipeConfig):
    """Evaluation of a checkpoint (and optional adapter): perplexity and lm-evaluation-harness
    tasks.

    Args:
        perplexity: perplexity on a dataset split.
        lm_eval: lm-evaluation-harness tasks.
        output: printing and the JSON report.
        seed: seed of lm_eval's sampling and few-shot selection.
    """

    recipe: str = "eval"
    model: InferenceModelConfig
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    lm_eval: LMEvalConfig = field(default_factory=LMEvalConfig)
    output: EvalOutputConfig = field(default_factory=EvalOutputConfig)
    seed: int = 1234
