"""Chat templates shipped with tune.data, each with `{% generation %}` markers for exact masks."""

from __future__ import annotations

from importlib import resources

_QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# name -> (file, the special tokens the template writes itself, the end-of-turn token)
_TEMPLATES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "llama3": (
        "llama3.jinja",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "<|eot_id|>",
    ),
    "chatml": ("chatml.jinja", ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
    "qwen2.5": ("chatml.jinja", ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
    "qwen3": ("qwen3.jinja", ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
    "mistral": ("mistral.jinja", ("[INST]", "[/INST]"), "</s>"),
    "gemma": ("gemma.jinja", ("<start_of_turn>", "<end_of_turn>"), "<end_of_turn>"),
    "phi3": ("phi3.jinja", ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), "<|end|>"),
    "phi4": ("phi4.jinja", ("<|im_start|>", "<|im_sep|>", "<|im_end|>"), "<|im_end|>"),
    "alpaca": ("alpaca.jinja", (), ""),
}

BUNDLED_TEMPLATES: tuple[str, ...] = tuple(_TEMPLATES)


def _check(name: str) -> None:
    if name not in _TEMPLATES:
        raise KeyError(f"unknown bundled chat template {name!r}; available: {list(_TEMPLATES)}")


def bundled_template(name: str) -> str:
    """The jinja source of a bundled template (`llama3`, `chatml`, `qwen2.5`, `qwen3`, `mistral`,
    `gemma`, `phi3`, `phi4`, `alpaca`).

    Args:
        name: the template name.
    """
    _check(name)
    source = (
        resources.files("tune.data")
        .joinpath("templates")
        .joinpath(_TEMPLATES[name][0])
        .read_text("utf-8")
    )
    if name == "qwen2.5":
        source = "{%- set default_system = '" + _QWEN25_SYSTEM + "' -%}\n" + source
    return source


def template_control_tokens(name: str) -> tuple[str, ...]:
    """The special tokens a bundled template writes itself (they must be single tokens).

    Args:
        name: the template name.
    """
    _check(name)
    return _TEMPLATES[name][1]


def template_end_of_turn(name: str) -> str:
    """The token that ends an assistant turn in a bundled template (`""`: the tokenizer's EOS).

    Args:
        name: the template name.
    """
    _check(name)
    return _TEMPLATES[name][2]
