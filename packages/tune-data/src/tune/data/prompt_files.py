"""Prompts to generate from: parsed from config values or prompt files, rendered to token ids.

A prompt is a string, a list of chat messages, or a mapping with ``prompt`` or ``messages``.
Prompt files are ``.jsonl`` (one such mapping per line) or ``.txt`` (one prompt per line); blank
lines are skipped and every error names the prompt's origin (``key.3`` or ``file:line``)::

    prompts = collect_prompts(["Hi!"], "more.jsonl", key="prompts")
    encoded = [encode_prompt(p, tokenizer, resolve_template(tokenizer)) for p in prompts]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune.data.chat_template import ChatTemplate
from tune.data.masking import tokenize_messages
from tune.data.messages import to_messages
from tune.data.tokenizer import Tokenizer

PROMPT_FILE_SUFFIXES = (".jsonl", ".txt")


class PromptInputError(ValueError):
    """A prompt that cannot be used, named by where it comes from (a config key or file:line)."""


@dataclass(frozen=True)
class PromptInput:
    """One prompt as the user gave it.

    Args:
        where: its origin, ``prompts.items.3`` or ``prompts.jsonl:7``.
        text: a plain prompt (None when ``messages`` is given).
        messages: a chat conversation (OpenAI-style dicts), or None.
    """

    where: str
    text: str | None = None
    messages: list[dict[str, Any]] | None = None

    def as_record(self) -> str | list[dict[str, Any]]:
        """The prompt as written to an output file: the text or the messages."""
        return self.text if self.text is not None else list(self.messages or [])

    def display(self) -> str:
        """A one-line view for printing: the text, or the last message's content."""
        if self.text is not None:
            return self.text
        last = (self.messages or [{}])[-1]
        return f"[{last.get('role', '?')}] {last.get('content', '')}"


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt rendered and tokenized.

    Args:
        source: the prompt it comes from.
        text: the exact text the model sees (the chat template applied, or the raw prompt).
        tokens: its token ids [T].
    """

    source: PromptInput
    text: str
    tokens: list[int]


def parse_prompt(item: Any, where: str) -> PromptInput:
    """A ``PromptInput`` from a string, a message list, or a mapping with ``prompt``/``messages``.

    Args:
        item: the value from a config or one parsed file line.
        where: its origin, for errors.

    Raises:
        PromptInputError: an empty prompt, a mapping with neither (or both) keys, bad messages.
    """
    if isinstance(item, Mapping):
        has = [k for k in ("prompt", "messages") if k in item]
        if len(has) != 1:
            raise PromptInputError(
                f"{where}: expected exactly one of 'prompt' or 'messages', got keys {sorted(item)}"
            )
        item = item[has[0]]
        if has[0] == "messages" and isinstance(item, str):
            raise PromptInputError(f"{where}: 'messages' must be a list of messages, got a string")
    if isinstance(item, str):
        if not item.strip():
            raise PromptInputError(f"{where}: the prompt is empty")
        return PromptInput(where, text=item)
    if isinstance(item, Sequence) and not isinstance(item, bytes):
        try:
            parsed = to_messages(list(item), where)
        except ValueError as err:  # MessageError is a ValueError
            raise PromptInputError(str(err)) from err
        return PromptInput(where, messages=[m.to_dict() for m in parsed])
    raise PromptInputError(
        f"{where}: a prompt must be a string, a list of messages, or a mapping with 'prompt' or "
        f"'messages'; got {type(item).__name__}"
    )


def read_prompt_file(path: str | Path, *, key: str | None = None) -> list[PromptInput]:
    """Prompts from ``.jsonl`` (``prompt`` or ``messages`` per line) or ``.txt`` (one per line).

    Args:
        path: the file; blank lines are skipped.
        key: the config key that named the file, for the not-found error (None: none).

    Raises:
        FileNotFoundError: no such file.
        PromptInputError: an unknown extension, a malformed line (file:line named).
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in PROMPT_FILE_SUFFIXES:
        raise PromptInputError(
            f"{path}: unknown prompt file extension {suffix or '(none)'!r}; expected one of "
            f"{list(PROMPT_FILE_SUFFIXES)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{key or 'prompt file'}: {path} not found")
    prompts: list[PromptInput] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            if suffix == ".txt":
                prompts.append(PromptInput(where, text=line.rstrip("\r\n")))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptInputError(f"{where}: malformed JSON ({err})") from err
            if not isinstance(row, dict):
                raise PromptInputError(f"{where}: expected a JSON object, got {type(row).__name__}")
            prompts.append(parse_prompt(row, where))
    return prompts


def collect_prompts(
    items: Sequence[Any], file: str | Path | None, *, key: str = "prompts"
) -> list[PromptInput]:
    """The prompts ``items`` followed by those of ``file``.

    Args:
        items: prompts as given in a config (each as ``parse_prompt`` takes it).
        file: a prompt file read after ``items`` (None: none).
        key: the config section errors name (``{key}.items.3``, ``{key}.file``).

    Raises:
        PromptInputError: a bad prompt, a file without prompts, or no prompt at all.
    """
    prompts = [parse_prompt(item, f"{key}.items.{i}") for i, item in enumerate(items)]
    if file is not None:
        from_file = read_prompt_file(file, key=f"{key}.file")
        if not from_file:
            raise PromptInputError(f"{key}.file: {file} holds no prompt (only blank lines)")
        prompts.extend(from_file)
    if not prompts:
        raise PromptInputError(f"no prompts: set {key}.items or {key}.file")
    return prompts


def encode_prompt(
    prompt: PromptInput,
    tokenizer: Tokenizer,
    template: ChatTemplate | None,
    *,
    system: str | None = None,
    add_bos: bool | None = None,
) -> EncodedPrompt:
    """Render ``prompt`` with the chat template (and its generation prompt) or encode it raw.

    Args:
        prompt: the prompt.
        tokenizer: the model's tokenizer.
        template: the chat template; None encodes the text as it is.
        system: a system message put before plain-string prompts (chat only).
        add_bos: prepend BOS to raw prompts (None: the tokenizer's setting).

    Raises:
        PromptInputError: messages without a chat template, or an empty tokenization.
    """
    if template is None:
        if prompt.text is None:
            raise PromptInputError(f"{prompt.where}: chat messages need the chat template")
        text, tokens = prompt.text, tokenizer.encode(prompt.text, add_bos=add_bos, add_eos=False)
    else:
        messages = prompt.messages
        if messages is None:
            messages = [{"role": "user", "content": prompt.text}]
            if system is not None:
                messages.insert(0, {"role": "system", "content": system})
        text = template.render(messages, add_generation_prompt=True, where=prompt.where).text
        tokens = tokenize_messages(
            tokenizer, template, messages, train_on="all", where=prompt.where,
            add_generation_prompt=True,
        )["tokens"]  # fmt: skip
    if not tokens:
        raise PromptInputError(f"{prompt.where}: the prompt has no tokens")
    return EncodedPrompt(prompt, text, tokens)
