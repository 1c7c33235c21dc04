"""The closed config schema of the ``eval`` recipe (every key, its type and default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from tune.recipes.common.config_sections import QuantScheme
from tune.recipes.config.errors import Issue
from tune.recipes.config.validation import ValidationContext


@dataclass
class EvalModelConfig:
    """The model to evaluate.

    Args:
        checkpoint_dir: an HF directory (a base or a merged fine-tune), or a directory written
            by the ``quantize`` recipe.
        adapter_dir: a PEFT adapter directory applied on top of ``checkpoint_dir`` (null: none).
        merge_adapter: fold the adapter into the base weights first.
        dtype: parameter and compute dtype.
        quantize: quantize the linear layers (not ``output``) after loading with this tune-quant
            scheme (null: keep them in ``dtype``).
    """

    checkpoint_dir: str
    adapter_dir: str | None = None
    merge_adapter: bool = False
    dtype: Literal["float32", "bfloat16"] = "float32"
    quantize: QuantScheme | None = None


@dataclass
class EvalTokenizerConfig:
    """The tokenizer.

    Args:
        path: directory with ``tokenizer.json`` (null: ``model.checkpoint_dir``).
        chat_template: a bundled template name, a Jinja file or source (null: the tokenizer's).
    """

    path: str | None = None
    chat_template: str | None = None


@dataclass
class PerplexityConfig:
    """Perplexity on a dataset split (null ``source``: skipped).

    Args:
        source: a local file or directory (json/jsonl/parquet/csv/txt) or a Hub dataset name.
        format: ``instruction``, ``chat`` or ``text`` (as the sft recipe reads them).
        column_map: dataset column -> expected name.
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


@dataclass
class EvalConfig:
    """Evaluation of a checkpoint: perplexity and lm-evaluation-harness tasks.

    Args:
        model: the checkpoint and optional adapter.
        perplexity: perplexity on a dataset split.
        lm_eval: lm-evaluation-harness tasks.
        tokenizer: the tokenizer.
        output: printing and the JSON report.
        seed: seed of lm_eval's sampling and few-shot selection.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        recipe: the recipe this config is for.
        allow_imports: glob patterns of dotted paths the config may import.
    """

    model: EvalModelConfig
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    lm_eval: LMEvalConfig = field(default_factory=LMEvalConfig)
    tokenizer: EvalTokenizerConfig = field(default_factory=EvalTokenizerConfig)
    output: EvalOutputConfig = field(default_factory=EvalOutputConfig)
    seed: int = 1234
    device: Literal["auto", "cpu", "cuda"] = "auto"
    recipe: str = "eval"
    allow_imports: list[str] = field(default_factory=list)

    @property
    def tokenizer_dir(self) -> str:
        """``tokenizer.path``, defaulting to the checkpoint directory."""
        return self.tokenizer.path or self.model.checkpoint_dir

    def validate(self, context: ValidationContext) -> list[Issue]:
        """Range and input checks, each issue named by its dotted key."""
        from tune.recipes.eval.checks import check_eval_config

        return check_eval_config(self, context)
