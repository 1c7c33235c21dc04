"""Render jinja chat templates the way HF `apply_chat_template` does, with assistant spans."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes

from tune.data.messages import Message, MessageError
from tune.data.template_sandbox import (
    LimitedSandbox,
    TemplateLimitError,
    guard_loops,
    install_guard,
    render_bounded,
)

# Private-use code points that bracket `{% generation %}` output while rendering; removed afterwards.
_GEN_START = "\ue0f0"
_GEN_END = "\ue0f1"
# A `{% generation %}` tag, with jinja's whitespace-control signs.
_GENERATION_TAG = re.compile(r"\{%[-+]?\s*generation\s*[-+]?%\}")


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: marks text the assistant generates."""

    tags = {"generation"}  # noqa: RUF012 (jinja reads the class attribute)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_bracket")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _bracket(self, caller: Any) -> str:
        return f"{_GEN_START}{caller()}{_GEN_END}"


class _SafeNamespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore attributes (no reaching into Python internals)."""

    def __setitem__(self, name: str, value: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} is not allowed")
        super().__setitem__(name, value)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Plain json.dumps: jinja's own filter HTML-escapes, which chat templates do not expect.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _make_dict(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return dict(*args, **kwargs)


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    env = LimitedSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationBlock, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        dict=_make_dict,
        namespace=_SafeNamespace,
    )
    install_guard(env)
    return env.from_string(guard_loops(env.parse(source)))


@dataclass
class RenderedChat:
    """A rendered conversation.

    Args:
        text: the rendered string.
        generation_spans: `(start, end)` character ranges produced inside `{% generation %}` blocks.
    """

    text: str
    generation_spans: list[tuple[int, int]]


def _strip_markers(marked: str) -> RenderedChat:
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    length, start, depth = 0, 0, 0
    for char in marked:
        if char == _GEN_START:
            if depth == 0:
                start = length
            depth += 1
        elif char == _GEN_END:
            depth -= 1
            if depth == 0 and length > start:
                spans.append((start, length))
        else:
            pieces.append(char)
            length += 1
    return RenderedChat("".join(pieces), spans)


def _check_no_markers(value: Any, prefix: str) -> None:
    if isinstance(value, str):
        if _GEN_START in value or _GEN_END in value:
            raise MessageError(
                f"{prefix}message text contains the reserved code points U+E0F0/U+E0F1 "
                "(tune.data marks generated text with them); remove them from the row"
            )
    elif isinstance(value, Mapping):
        for item in value.values():
            _check_no_markers(item, prefix)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_no_markers(item, prefix)


class ChatTemplate:
    """A jinja chat template compiled in a sandbox with HF's globals and whitespace options.

    Templates see `messages`, `tools`, `documents`, `add_generation_prompt`, the special tokens
    (`bos_token`, `eos_token`, ...) and any extra keyword arguments, exactly as in
    `transformers`' `apply_chat_template`; `raise_exception`, `strftime_now`, `tojson`,
    `namespace` and `dict` are available.

    Templates render in a bounded sandbox (`tune.data.template_sandbox`): a template that loops
    or grows without end raises `MessageError` naming it instead of hanging.

    Args:
        source: the jinja source.
        special_tokens: special-token name -> string, passed to the template.
        name: what the template is (a bundled name, a file), for error messages.
    """

    def __init__(
        self,
        source: str,
        special_tokens: Mapping[str, str] | None = None,
        name: str = "inline template",
    ) -> None:
        self.source = source
        self.name = name
        self.special_tokens = dict(special_tokens or {})
        self.has_generation_markers = _GENERATION_TAG.search(source) is not None
        try:
            self._template = _compile(source)
        except jinja2.exceptions.TemplateSyntaxError as error:
            raise MessageError(
                f"chat template {name!r}: syntax error at line {error.lineno}: {error.message}"
            ) from error

    def render(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        add_generation_prompt: bool = False,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        where: str = "",
        **kwargs: Any,
    ) -> RenderedChat:
        """Render a conversation and report the character spans of assistant-generated text.

        Args:
            messages: the conversation.
            add_generation_prompt: append the header that starts an assistant turn.
            tools: JSON schemas of tools, for templates that render them.
            documents: documents for RAG templates.
            where: where the conversation comes from (`example 12`), for error messages.
            **kwargs: further template variables; they override the special tokens.
        """
        dicts = [m.to_dict() if isinstance(m, Message) else dict(m) for m in messages]
        dicts = [{k: v for k, v in d.items() if v is not None} for d in dicts]
        prefix = f"{where}: " if where else ""
        _check_no_markers(dicts, prefix)
        variables = {**self.special_tokens, **kwargs}
        roles = [d.get("role") for d in dicts]
        try:
            marked = render_bounded(
                self._template,
                messages=dicts,
                tools=tools,
                documents=documents,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except TemplateLimitError as error:
            raise MessageError(
                f"{prefix}chat template {self.name!r} went past a sandbox limit: {error}"
            ) from error
        except jinja2.exceptions.TemplateError as error:
            raise MessageError(
                f"{prefix}the chat template cannot render roles {roles}: {error}"
            ) from error
        except Exception as error:  # a filter or global failing on a value (tojson, ...)
            raise MessageError(
                f"{prefix}chat template {self.name!r} failed on roles {roles}: "
                f"{type(error).__name__}: {error}"
            ) from error
        return _strip_markers(marked)
