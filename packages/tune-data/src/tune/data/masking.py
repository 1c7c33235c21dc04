"""Tokenize conversations and build aligned (already shifted) labels with assistant-only masks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tune.data.assistant_spans import assistant_spans
from tune.data.chat_template import ChatTemplate
from tune.data.messages import Message, MessageError, to_messages
from tune.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
TRAIN_ON = ("assistant", "all")

# What `check_assistant_masking` renders: two turns, with and without a system message.
_PROBE_SYSTEM = {"role": "system", "content": "You are a careful assistant."}
_PROBE_TURNS = (
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "3 + 3 = 6."},
)


def spans_to_token_mask(
    offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
) -> list[bool]:
    """Mark tokens whose character range overlaps any span (both sorted by position).

    Args:
        offsets: per-token `(start, end)` character offsets.
        spans: `(start, end)` character ranges, in order and not overlapping.
    """
    mask = [False] * len(offsets)
    span = 0
    for i, (start, end) in enumerate(offsets):
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        if span == len(spans):
            break
        if end > spans[span][0]:
            mask[i] = True
    return mask


def shift_labels(tokens: Sequence[int], trained: Sequence[bool]) -> list[int]:
    """Aligned labels: `labels[t]` is `tokens[t + 1]` when that token is trained, else -100.

    Args:
        tokens: token ids, length T.
        trained: per-token flag, length T: whether the token is a prediction target.
    """
    labels = [
        tok if keep else IGNORE_INDEX for tok, keep in zip(tokens[1:], trained[1:], strict=True)
    ]
    labels.append(IGNORE_INDEX)
    return labels


def _trainable_generation_spans(
    spans: list[tuple[int, int]], parsed: Sequence[Message], where: str
) -> list[tuple[int, int]]:
    flags = [m.trainable for m in parsed if m.role == "assistant"]
    if all(flags):
        return spans
    if len(flags) != len(spans):
        prefix = f"{where}: " if where else ""
        raise MessageError(
            f"{prefix}{len(flags)} assistant messages but {len(spans)} generation blocks; "
            "cannot tell which turns are trainable"
        )
    return [span for span, keep in zip(spans, flags, strict=True) if keep]


def tokenize_messages(
    tokenizer: Tokenizer,
    template: ChatTemplate,
    messages: Sequence[Message | dict[str, Any]],
    train_on: str = "assistant",
    add_bos: bool = False,
    where: str = "",
    **template_kwargs: Any,
) -> dict[str, list[int]]:
    """Render a conversation with its chat template and tokenize it with labels.

    Token ids equal `AutoTokenizer.apply_chat_template(messages, tokenize=True)` for the same
    directory. With a template that has `{% generation %}` markers, trained tokens are those of
    the generation blocks (assistant content and its end-of-turn token), exactly HF's
    `assistant_masks`; with any other template they are found by rendering prefixes of the
    conversation (`tune.data.assistant_spans`): the reply and its end-of-turn token(s), not the
    whitespace after them. Padding never affects labels, so a pad id equal to EOS cannot mask a
    trained EOS.

    Args:
        tokenizer: the tokenizer.
        template: the chat template.
        messages: the conversation; assistant messages with `trainable=False` stay context.
        train_on: `assistant` (assistant replies only) or `all` (every token).
        add_bos: prepend BOS if the template did not write one (HF never does; default False).
        where: where the conversation comes from, for errors.
        **template_kwargs: extra template variables (e.g. `enable_thinking=False`).

    Returns:
        `{"tokens": [T], "labels": [T]}` with labels aligned to tokens (see `shift_labels`).

    Raises:
        MessageError: the template cannot render the conversation, or (without markers) its
            renderings of the conversation's prefixes do not nest.
    """
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {TRAIN_ON}, got {train_on!r}")
    parsed = to_messages(messages, where)
    rendered = template.render(parsed, where=where, **template_kwargs)
    ids, offsets = tokenizer.encode_with_offsets(rendered.text)
    if train_on == "all":
        trained = [True] * len(ids)
    else:
        if not template.has_generation_markers:
            spans = assistant_spans(
                template,
                parsed,
                text=rendered.text,
                trainable_only=True,
                where=where,
                **template_kwargs,
            )
        else:
            spans = _trainable_generation_spans(rendered.generation_spans, parsed, where)
        trained = spans_to_token_mask(offsets, spans)
    if add_bos and tokenizer.bos_id is not None and (not ids or ids[0] != tokenizer.bos_id):
        ids = [tokenizer.bos_id, *ids]
        trained = [False, *trained]
    return {"tokens": ids, "labels": shift_labels(ids, trained)}


def check_assistant_masking(
    template: ChatTemplate, tokenizer: Tokenizer | None = None, **template_kwargs: Any
) -> None:
    """Check, before any model loads, that assistant-only labels can be built with a template.

    Renders a probe conversation (user/assistant/user/assistant, and the same after a system
    message when the template accepts one) and finds its assistant spans as `tokenize_messages`
    does: from `{% generation %}` blocks, or by rendering prefixes for a template without them.
    Each assistant reply must lie inside its span; with a tokenizer, inside its trained tokens.

    Args:
        template: the chat template training will use.
        tokenizer: also check the trained tokens (optional).
        **template_kwargs: the template variables training will use (e.g. `enable_thinking`).

    Raises:
        MessageError: naming `template.name`: the renderings of prefixes do not nest, a reply is
            outside its span, or the template renders neither probe.
    """
    probes = {
        "with a system message": [_PROBE_SYSTEM, *_PROBE_TURNS],
        "without a system message": list(_PROBE_TURNS),
    }
    replies = [m["content"] for m in _PROBE_TURNS if m["role"] == "assistant"]
    checked = []
    errors = []
    for label, probe in probes.items():
        where = f"probe conversation {label}"
        try:
            rendered = template.render(probe, where=where, **template_kwargs)
        except MessageError as error:  # e.g. a template that refuses system messages
            errors.append(str(error))
            continue
        if template.has_generation_markers:
            spans = rendered.generation_spans
        else:
            spans = assistant_spans(
                template, probe, text=rendered.text, where=where, **template_kwargs
            )
        texts = [rendered.text[start:end] for start, end in spans]
        if len(texts) != len(replies) or not all(
            r in t for r, t in zip(replies, texts, strict=True)
        ):
            raise MessageError(
                f"{where}: chat template {template.name!r} puts the assistant replies {replies} in "
                f"the spans {texts}; expected one span per reply, containing it"
            )
        if tokenizer is not None:
            sample = tokenize_messages(tokenizer, template, probe, where=where, **template_kwargs)
            trained = tokenizer.decode([t for t in sample["labels"] if t != IGNORE_INDEX])
            if not all(reply in trained for reply in replies):
                raise MessageError(
                    f"{where}: chat template {template.name!r}: the trained tokens decode to "
                    f"{trained!r}, which does not contain the assistant replies {replies}"
                )
        checked.append(label)
    if not checked:
        raise MessageError(
            f"chat template {template.name!r} renders no probe conversation: {'; '.join(errors)}"
        )
    logger.debug(
        "chat template %r: assistant masks by %s (probes %s)",
        template.name,
        "{% generation %} blocks" if template.has_generation_markers else "prefix rendering",
        checked,
    )


def tokenize_text(
    tokenizer: Tokenizer, text: str, add_bos: bool = True, add_eos: bool = True
) -> dict[str, list[int]]:
    """Tokenize plain text with every token trained (continued pre-training).

    Args:
        tokenizer: the tokenizer.
        text: the document.
        add_bos: prepend BOS (never doubled).
        add_eos: append EOS.
    """
    ids = tokenizer.encode(text, add_bos=add_bos and tokenizer.bos_id is not None, add_eos=add_eos)
    return {"tokens": ids, "labels": shift_labels(ids, [True] * len(ids))}
