"""The closed config schema of the ``generate`` recipe (every key, its type and default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tune.recipes.common.config_sections import InferenceModelConfig, TokenizedRecipeConfig


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
        quantize: ``int8``: decode with int8 weights (one scale per output row, the LM head
            included; tune-quant's ``quantize_for_decode``), about 4x fewer bytes read per token
            on the CPU; greedy tokens may then differ from float. ``none``: float weights.
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    stop_at_eos: bool = True
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)
    quantize: Literal["none", "int8"] = "none"


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


@dataclass(kw_only=True)
class GenerateConfig(TokenizedRecipeConfig):
    """Generation from a checkpoint directory (base, merged, or base + adapter).

    Args:
        prompts: the inputs.
        sampling: decoding options.
        batch_size: prompts decoded together (left-padded).
        output: printing and the jsonl file.
    """

    model: InferenceModelConfig
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    batch_size: int = 4
    output: GenerateOutputConfig = field(default_factory=GenerateOutputConfig)
    recipe: str = "generate"
