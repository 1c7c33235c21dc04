"""`tune validate` / load_config refuse, before anything loads, a chat template whose assistant
replies cannot be found for the assistant-only loss; a real template without markers passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tune.config import ConfigValidationError
from tune.recipes.config import load_config
from tune.recipes.discovery import find_config
from tune.recipes.sft import SFTConfig
from tune_testing import TinyAssets, tiny_overrides

# SmolLM2-135M-Instruct's own template (no {% generation %} markers), as its GGUF stores it.
SMOLLM2_LIKE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Writes an empty think block into the last assistant turn only: earlier prefixes do not nest.
NOT_NESTING = SMOLLM2_LIKE.replace(
    "message['content'] + '<|im_end|>'",
    "('<think></think>' if loop.last and message['role'] == 'assistant' else '') + "
    "message['content'] + '<|im_end|>'",
)


def _load(assets: TinyAssets, tmp_path: Path, template: str, *extra: str) -> SFTConfig:
    file = tmp_path / "template.jinja"
    file.write_text(template)
    overrides = tiny_overrides(assets, tmp_path / "out", f"tokenizer.chat_template={file}", *extra)
    path = find_config("sft/tiny_cpu_lora", "sft")[0]
    return load_config(path, SFTConfig, overrides, recipe="sft")  # type: ignore[no-any-return]


def test_a_template_without_markers_passes(tiny_assets: TinyAssets, tmp_path: Path) -> None:
    assert _load(tiny_assets, tmp_path, SMOLLM2_LIKE).tokenizer.chat_template is not None


def test_a_template_whose_prefixes_do_not_nest_is_refused(
    tiny_assets: TinyAssets, tmp_path: Path
) -> None:
    with pytest.raises(ConfigValidationError, match=r"tokenizer\.chat_template: .*template"):
        _load(tiny_assets, tmp_path, NOT_NESTING)
    # training on every token needs no reply spans
    _load(tiny_assets, tmp_path, NOT_NESTING, "data.train_on_input=true")
