"""Assistant spans of a chat template without `{% generation %}` markers, by incremental rendering.

Most templates on the hub (Llama, Qwen, SmolLM, ...) do not mark what the assistant generates.
For such a template the span of assistant message `i` is found from two renderings of prefixes
of the conversation:

    prompt = render(messages[:i], add_generation_prompt=True)   # up to where the reply starts
    turn   = render(messages[:i + 1])                           # up to the end of that turn
    span   = [len(prompt), len(turn.rstrip()))                  # in the full rendering

so the span is the reply and the end-of-turn token(s) the template writes, and whitespace the
template writes after them (ChatML's `\\n` after `<|im_end|>`) is left untrained, as in the
bundled marked templates. Both prefixes must be string prefixes of the whole conversation's
rendering; a template that renders a turn differently once later messages follow (one that
drops reasoning from earlier turns, or marks the last turn) does not nest, and is refused with a
`MessageError` naming the template and the message, never masked approximately.

Spans are character ranges in the full rendering, so the token ids are those of the full text
(`tune.data.masking.spans_to_token_mask` maps spans to tokens by offsets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tune.data.chat_template import ChatTemplate
from tune.data.messages import Message, MessageError, to_messages

# Shown around the first differing character when renderings do not nest.
_CONTEXT = 24


def _divergence(prefix: str, full: str) -> str:
    """Where `prefix` stops being a prefix of `full`, with a little text from each."""
    at = next(
        (k for k, (a, b) in enumerate(zip(prefix, full, strict=False)) if a != b),
        min(len(prefix), len(full)),
    )
    start = max(0, at - _CONTEXT)
    return (
        f"at character {at}, the prefix has {prefix[start : at + _CONTEXT]!r} where the whole "
        f"conversation has {full[start : at + _CONTEXT]!r}"
    )


def _render_prefix(
    template: ChatTemplate,
    messages: Sequence[Message],
    index: int,
    add_generation_prompt: bool,
    where: str,
    template_kwargs: Mapping[str, Any],
) -> str:
    try:
        return template.render(
            messages, add_generation_prompt=add_generation_prompt, where=where, **template_kwargs
        ).text
    except MessageError as error:
        prefix = f"{where}: " if where else ""
        raise MessageError(
            f"{prefix}chat template {template.name!r} has no {{% generation %}} markers and cannot "
            f"render the conversation up to assistant message {index} (messages[:{len(messages)}]"
            f", add_generation_prompt={add_generation_prompt}) to find what the assistant says: "
            f"{error}; use a template with markers (a bundled one, tune.data.bundled_template) "
            "or train_on='all'"
        ) from error


def assistant_spans(
    template: ChatTemplate,
    messages: Sequence[Message | Mapping[str, Any]],
    text: str | None = None,
    trainable_only: bool = False,
    where: str = "",
    **template_kwargs: Any,
) -> list[tuple[int, int]]:
    """Character span of every assistant message in the conversation's rendering, by rendering prefixes.

    Works with any template (markers are not used). Each span runs from where the generation
    prompt ends to the end of the turn as the template writes it, trailing whitespace excluded.

    Args:
        template: the chat template.
        messages: the conversation.
        text: the full rendering with the same `template_kwargs`, when already computed.
        trainable_only: skip assistant messages with `trainable=False` (they are neither
            rendered alone nor checked).
        where: where the conversation comes from (`example 12`), for errors.
        **template_kwargs: the template variables of the full rendering (`add_generation_prompt`
            applies to the full rendering only).

    Returns:
        one `(start, end)` per (trainable) assistant message, in order, indexing `text`.

    Raises:
        MessageError: a prefix does not render, or is not a prefix of the full rendering (naming
            the template and the message index).
    """
    parsed = to_messages(messages, where)
    kwargs = dict(template_kwargs)
    full_prompt = bool(kwargs.pop("add_generation_prompt", False))
    if text is None:
        text = template.render(
            parsed, add_generation_prompt=full_prompt, where=where, **kwargs
        ).text
    prefix = f"{where}: " if where else ""
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(parsed):
        if message.role != "assistant" or (trainable_only and not message.trainable):
            continue
        start_text = _render_prefix(template, parsed[:i], i, True, where, kwargs)
        end_text = _render_prefix(template, parsed[: i + 1], i, False, where, kwargs)
        pieces = (
            (
                f"messages[:{i}] with the generation prompt",
                start_text,
                "its generation prompt writes what the assistant turn does not start with "
                "(e.g. an empty <think> block)",
            ),
            (
                f"messages[:{i + 1}]",
                end_text,
                "it renders this turn differently once later messages follow (e.g. it drops "
                "reasoning from earlier turns, or marks the last turn)",
            ),
        )
        for shown, piece, reason in pieces:
            if not text.startswith(piece):
                raise MessageError(
                    f"{prefix}chat template {template.name!r} has no {{% generation %}} markers "
                    f"and its renderings do not nest at assistant message {i}: {shown} is not a "
                    f"prefix of the whole conversation's rendering ({_divergence(piece, text)}): "
                    f"{reason}, so its assistant tokens cannot be found exactly; add "
                    "{% generation %}...{% endgeneration %} around the assistant reply, use a "
                    "bundled template, mark the turn trainable=False, or use train_on='all'"
                )
        start = len(start_text)
        # Whitespace after the end-of-turn token is the template's, not the assistant's.
        end = start + len(end_text[start:].rstrip())
        if len(end_text) < start or (spans and start < spans[-1][1]):
            raise MessageError(
                f"{prefix}chat template {template.name!r}: assistant message {i} renders at "
                f"characters [{start}, {len(end_text)}), which does not follow its generation "
                f"prompt and the previous turn {spans[-1] if spans else '(none)'}; its assistant "
                "tokens cannot be found"
            )
        spans.append((start, end))
    return spans
