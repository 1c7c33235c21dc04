"""The Ollama Modelfile: its Go TEMPLATE renders conversations as the jinja chat template does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

jinja2 = pytest.importorskip("jinja2")

from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

from tune.checkpoint.gguf.modelfile import (  # noqa: E402
    chat_format,
    default_system_prompt,
    write_ollama_modelfile,
)

_spec = importlib.util.spec_from_file_location(
    "gguf_go_template", Path(__file__).with_name("gguf_go_template.py")
)
assert _spec is not None
assert _spec.loader is not None
_go = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_go)
render_go_template = _go.render_go_template

# Chat templates as the models ship them (SmolLM2's exactly; the others in their published shape).
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content']"
    " | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token}}{% endif %}{% endfor %}"
)
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

SYSTEM = {"role": "system", "content": "Be brief."}
TURNS = [
    [{"role": "user", "content": "Hi!"}],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?\nThanks."},
    ],
]


def _jinja(template: str, messages: list[dict[str, str]]) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token="", eos_token="</s>"
    )


def _ollama(modelfile: str, messages: list[dict[str, str]]) -> str:
    """Render as Ollama does: the Modelfile's SYSTEM becomes the first message when none is given."""
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    system = (
        modelfile.split('SYSTEM """', 1)[1].split('"""', 1)[0]
        if 'SYSTEM """' in modelfile
        else None
    )
    if system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    return render_go_template(
        template, {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    )


@pytest.mark.parametrize(
    ("template", "fmt", "with_system"),
    [
        (SMOLLM2, "chatml", True),
        (LLAMA3, "llama3", True),
        (GEMMA, "gemma", False),
        (MISTRAL, "mistral", False),
        (PHI3, "phi3", True),
    ],
)
def test_go_template_renders_like_jinja(template, fmt, with_system, tmp_path):
    assert chat_format(template) == fmt
    path = write_ollama_modelfile(tmp_path / "model.gguf", template, stop=["</s>"])
    modelfile = path.read_text()
    assert path == tmp_path / "Modelfile"
    assert modelfile.splitlines()[1] == "FROM ./model.gguf"
    conversations = TURNS + ([[SYSTEM, *t] for t in TURNS] if with_system else [])
    for messages in conversations:
        assert _ollama(modelfile, messages) == _jinja(template, messages), messages


def test_smollm2_modelfile_keeps_default_system_prompt(tmp_path):
    path = write_ollama_modelfile(tmp_path / "smollm2.gguf", SMOLLM2, stop=["<|im_end|>"])
    lines = path.read_text().splitlines()
    assert (
        'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in lines
    )
    assert [line for line in lines if line.startswith("PARAMETER")] == [
        'PARAMETER stop "<|im_end|>"',
        'PARAMETER stop "<|im_start|>"',
    ]
    # Without a system message Ollama's rendering carries the default, as the jinja template does.
    assert _ollama(path.read_text(), TURNS[0]).startswith(
        "<|im_start|>system\nYou are a helpful AI"
    )
    assert default_system_prompt(LLAMA3, "llama3") is None


def test_mistral_folds_the_system_prompt_into_the_first_instruction(tmp_path):
    modelfile = write_ollama_modelfile(tmp_path / "m.gguf", MISTRAL, stop=["</s>"]).read_text()
    rendered = _ollama(modelfile, [SYSTEM, *TURNS[1]])
    assert (
        rendered == "[INST] Be brief.\n\nWhat is 2+2? [/INST]4.</s>[INST] And 3+3?\nThanks. [/INST]"
    )


@pytest.mark.parametrize(
    "template",
    [None, "{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"],
)
def test_unrecognised_template_leaves_gguf_template(template, tmp_path):
    text = write_ollama_modelfile(
        tmp_path / "x.gguf", template, stop=["</s>", 'say "stop"']
    ).read_text()
    assert "TEMPLATE" not in text.replace("no TEMPLATE", "")
    assert (
        "Ollama will use the template stored in the GGUF metadata (tokenizer.chat_template)" in text
    )
    assert text.splitlines()[1:2] == ["FROM ./x.gguf"]
    assert 'PARAMETER stop "</s>"' in text
    assert 'PARAMETER stop "say \\"stop\\""' in text
