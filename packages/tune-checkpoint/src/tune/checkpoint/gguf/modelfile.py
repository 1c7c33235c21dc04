"""An Ollama `Modelfile` next to an exported GGUF.

    write_ollama_modelfile(Path("out/model.gguf"), chat_template, stop=["<|im_end|>"])
    # then: cd out && ollama create my-model -f Modelfile

Ollama templates are Go `text/template`s, not jinja. For the chat formats recognised here (by the
marker tokens the jinja template uses) the Modelfile gets a Go TEMPLATE rendering the same turns:

| format  | marker                 | models                    |
| ------- | ---------------------- | ------------------------- |
| chatml  | `<|im_start|>`         | SmolLM2, Qwen2/2.5/3      |
| llama3  | `<|start_header_id|>`  | Llama 3.x                 |
| gemma   | `<start_of_turn>`      | Gemma 1/2/3               |
| mistral | `[INST]`               | Mistral, Mixtral          |
| phi3    | `<|user|>` + `<|end|>` | Phi-3                     |

A default system prompt the jinja template writes when the conversation has none (SmolLM2's "You
are a helpful AI assistant named SmolLM...") becomes the Modelfile's SYSTEM, which Ollama uses the
same way. The stop strings are the given ones plus the format's turn markers. For any other
template, no TEMPLATE is written, and a comment says Ollama will use the template stored in the
GGUF metadata.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from tune.checkpoint.write_aside import write_text_file

logger = logging.getLogger(__name__)

# A message content no template writes by itself: where it lands marks the user turn in a rendering.
_PROBE = "\x00tune-probe\x00"

# One turn per message: an opening that names the role, the content, a closing; after a last
# non-assistant message, the opening of the assistant's turn. A last assistant message stays open
# (the model continues it).
_TURNS = """\
{{{{- range $i, $_ := .Messages }}}}
{{{{- $last := eq (len (slice $.Messages $i)) 1 -}}}}
{open}{{{{ .Content }}}}{{{{ if or (ne .Role "assistant") (not $last) }}}}{close}{{{{ end }}}}
{{{{- if and $last (ne .Role "assistant") }}}}{assistant}{{{{ end }}}}
{{{{- end }}}}"""

# Gemma has the roles "user" and "model" only; a system message is written as a user turn.
_GEMMA = """\
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- else }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- end }}
{{- end }}"""

# Mistral has no system turn; the system text opens the first [INST] block.
_MISTRAL = """\
{{- $system := "" }}
{{- range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}{{ end }}{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}[INST] {{ if $system }}{{ $system }}

{{ $system = "" }}{{ end }}{{ .Content }} [/INST]
{{- else if eq .Role "assistant" }}{{ .Content }}</s>
{{- end }}
{{- end }}"""

_FORMATS: dict[str, dict[str, Any]] = {
    "chatml": {
        "template": _TURNS.format(
            open="<|im_start|>{{ .Role }}\n",
            close="<|im_end|>\n",
            assistant="<|im_start|>assistant\n",
        ),
        "stop": ["<|im_start|>", "<|im_end|>"],
        "system": r"<\|im_start\|>system\n(.*?)<\|im_end\|>",
    },
    "llama3": {
        "template": _TURNS.format(
            open="<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n",
            close="<|eot_id|>",
            assistant="<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        "stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "system": r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>",
    },
    "gemma": {"template": _GEMMA, "stop": ["<start_of_turn>", "<end_of_turn>"], "system": None},
    "mistral": {"template": _MISTRAL, "stop": ["[INST]", "[/INST]"], "system": None},
    "phi3": {
        "template": _TURNS.format(
            open="<|{{ .Role }}|>\n", close="<|end|>\n", assistant="<|assistant|>\n"
        ),
        "stop": ["<|end|>", "<|user|>", "<|assistant|>"],
        "system": r"<\|system\|>\n(.*?)<\|end\|>",
    },
}


def chat_format(chat_template: str | None) -> str | None:
    """The name of the recognised chat format ("chatml", "llama3", "gemma", "mistral", "phi3"), or None."""
    if not chat_template:
        return None
    if "<|im_start|>" in chat_template:
        return "chatml"
    if "<|start_header_id|>" in chat_template:
        return "llama3"
    if "<start_of_turn>" in chat_template:
        return "gemma"
    if "[INST]" in chat_template:
        return "mistral"
    if "<|user|>" in chat_template and "<|end|>" in chat_template:
        return "phi3"
    return None


def default_system_prompt(chat_template: str, fmt: str) -> str | None:
    """The system prompt the jinja template writes for a conversation without one, if any.

    Found by rendering the template (sandboxed) on one user message and reading the system turn
    that precedes it.
    """
    pattern = _FORMATS[fmt]["system"]
    if pattern is None:
        return None
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # pragma: no cover - jinja2 comes with torch
        return None

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: "")
    try:
        rendered = env.from_string(chat_template).render(
            messages=[{"role": "user", "content": _PROBE}],
            add_generation_prompt=False,
            bos_token="",
            eos_token="",
        )
    except Exception as err:  # a template may reject anything; then there is no default to keep
        logger.info(
            "chat template did not render on one user message (%s); no default system prompt kept",
            err,
        )
        return None
    match = re.search(pattern, rendered.split(_PROBE)[0], flags=re.DOTALL)
    return match.group(1) if match else None


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_ollama_modelfile(gguf_path: Path, chat_template: str | None, *, stop: list[str]) -> Path:
    """Write `Modelfile` next to `gguf_path` (FROM, TEMPLATE/SYSTEM where recognised, stops); return its path.

    Args:
        gguf_path: the GGUF file; the Modelfile refers to it as `./<file name>`.
        chat_template: the model's jinja chat template, or None.
        stop: stop strings (e.g. the EOS token text); the format's turn markers are added.
    """
    gguf_path = Path(gguf_path)
    fmt = chat_format(chat_template)
    lines = [
        "# Ollama Modelfile: run `ollama create <name> -f Modelfile` in this folder.",
        f"FROM ./{gguf_path.name}",
    ]
    stops = list(stop)
    if fmt is None:
        what = (
            "has no chat template"
            if not chat_template
            else "uses a chat template that is not a recognised format"
        )
        lines.append(
            f"# The model {what}; no TEMPLATE is written, so Ollama will use the template stored in the "
            "GGUF metadata (tokenizer.chat_template)."
        )
    else:
        spec = _FORMATS[fmt]
        lines.append(
            f"# TEMPLATE: the {fmt} format of the model's chat template, in Ollama's Go template syntax."
        )
        lines.append(f'TEMPLATE """{spec["template"]}"""')
        system = default_system_prompt(chat_template or "", fmt)
        if system is not None:
            if '"""' in system:
                logger.warning(
                    '%s: the default system prompt holds \'"""\'; not written to the Modelfile',
                    gguf_path,
                )
            else:
                lines.append(f'SYSTEM """{system}"""')
        stops += spec["stop"]
    for text in dict.fromkeys(stops):
        if not text or "\n" in text:
            logger.warning(
                "%s: stop string %r cannot be written as a Modelfile PARAMETER; skipped",
                gguf_path,
                text,
            )
            continue
        lines.append(f"PARAMETER stop {_quoted(text)}")
    path = gguf_path.parent / "Modelfile"
    write_text_file(path, "\n".join(lines) + "\n")
    return path
