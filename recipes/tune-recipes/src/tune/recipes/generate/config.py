"""The closed config schema of the ``generate`` recipe (every key, its type and default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tune.recipes.common.config_sections import QuantScheme
from tune.recipes.config.errors import Issue
from tune.recipes.config.validation import ValidationContext


@dataclass
class GenerateModelConfig:
    """The model to generate with.

    Args:
        checkpoint_dir: an HF directory with ``config.json`` and ``*.safetensors`` (a base or a
            merged fine-tune).
        adapter_dir: a PEFT adapter directory applied on top of ``checkpoint_dir`` (null: none).
        merge_adapter: fold the adapter into the base weights before generating (faster, same
            outputs up to float rounding).
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
class GenerateTokenizerConfig:
    """The tokenizer.

    Args:
        path: directory with ``tokenizer.json`` (null: ``model.checkpoint_dir``).
        chat_template: a bundled template name, a Jinja file or source (null: the tokenizer's).
    """

    path: str | None = None
    chat_template: str | None = None


@dataclass
class PromptsConfig:
    """What to generate from.

    Args:
        items: prompts in the config: each a string, a list of chat messages
            (``{"role": ..., "content": ...}``), or a mapping with ``prompt`` or ``messages``.
        file: a ``.jsonl`` file (one object per line with ``prompt`` or ``messages``) or a
            ``.txt`` file (one prompt per non-empty line); read after ``items``.
        chat: render with the chat template and its generation prompt; false: the prompt text
            is encoded as it is (messages are then an error).
        system: a system message put before each plain-string prompt (chat only).
        add_bos: prepend BOS to raw prompts (null: the tokenizer's own setting).
    """

    items: list[Any] = field(default_factory=list)
    file: str | None = None
    chat: bool = True
    system: str | None = None
    add_bos: bool | None = None


@dataclass
class SamplingConfig:
    """Decoding options.

    Args:
        max_new_tokens: most tokens generated per prompt.
        temperature: 0 for greedy decoding.
        top_k: sample among the ``top_k`` most likely tokens (null: all).
        top_p: nucleus sampling threshold in (0, 1] (null: off).
        seed: seed of the sampling generator (the same seed gives the same samples).
        stop_at_eos: stop at the tokenizer's EOS and the checkpoint's ``eos_token_id``.
        stop_token_ids: further token ids that end a completion.
        stop_strings: strings that end a completion (cut from its text).
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    stop_at_eos: bool = True
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)


@dataclass
class GenerateOutputConfig:
    """Where results go.

    Args:
        file: a ``.jsonl`` file written with one record per prompt (null: none).
        print: print each prompt and its completion.
        skip_special_tokens: leave special tokens out of completion text.
    """

    file: str | None = None
    print: bool = True
    skip_special_tokens: bool = True


@dataclass
class GenerateConfig:
    """Generation from a checkpoint directory (base, merged, or base + adapter).

    Args:
        model: the checkpoint and optional adapter.
        prompts: the inputs.
        sampling: decoding options.
        output: printing and the jsonl file.
        tokenizer: the tokenizer.
        batch_size: prompts decoded together (left-padded).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        recipe: the recipe this config is for.
        allow_imports: glob patterns of dotted paths the config may import.
    """

    model: GenerateModelConfig
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    output: GenerateOutputConfig = field(default_factory=GenerateOutputConfig)
    tokenizer: GenerateTokenizerConfig = field(default_factory=GenerateTokenizerConfig)
    batch_size: int = 4
    device: Literal["auto", "cpu", "cuda"] = "auto"
    recipe: str = "generate"
    allow_imports: list[str] = field(default_factory=list)

    @property
    def tokenizer_dir(self) -> str:
        """``tokenizer.path``, defaulting to the checkpoint directory."""
        return self.tokenizer.path or self.model.checkpoint_dir

    def validate(self, context: ValidationContext) -> list[Issue]:
        """Range and input checks, each issue named by its dotted key."""
        from tune.recipes.generate.checks import check_generate_config

        return check_generate_config(self, context)
