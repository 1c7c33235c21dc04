"""Tokenize conversations and build aligned (already shifted) labels with assistant-only masks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tune.data.chat_template import ChatTemplate
from tune.data.messages import Message, MessageError, to_messages
from tune.data.tokenizer import Tokenizer

IGNORE_INDEX = -100
TRAIN_ON = ("assistant", "all")


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
    directory; trained tokens are those of `{% generation %}` blocks (assistant content and its
    end-of-turn token), exactly HF's `assistant_masks`. Padding never affects labels, so a
    pad id equal to EOS cannot mask a trained EOS.

    Args:
        tokenizer: the tokenizer.
        template: the chat template.
        messages: the conversation; assistant messages with `trainable=False` stay context.
        train_on: `assistant` (generation blocks only) or `all` (every token).
        add_bos: prepend BOS if the template did not write one (HF never does; default False).
        where: where the conversation comes from, for errors.
        **template_kwargs: extra template variables (e.g. `enable_thinking=False`).

    Returns:
        `{"tokens": [T], "labels": [T]}` with labels aligned to tokens (see `shift_labels`).
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
            raise ValueError(
                "train_on='assistant' needs a chat template with {% generation %} markers; use a "
                "bundled template (tune.data.bundled_template) or train_on='all'"
            )
        spans = rendered.generation_spans
        flags = [m.trainable for m in parsed if m.role == "assistant"]
        if not all(flags):
            if len(flags) != len(spans):
                prefix = f"{where}: " if where else ""
                raise MessageError(
                    f"{prefix}{len(flags)} assistant messages but {len(spans)} generation blocks; "
                    "cannot tell which turns are trainable"
                )
            spans = [span for span, keep in zip(spans, flags, strict=True) if keep]
        trained = spans_to_token_mask(offsets, spans)
    if add_bos and tokenizer.bos_id is not None and (not ids or ids[0] != tokenizer.bos_id):
        ids = [tokenizer.bos_id, *ids]
        trained = [False, *trained]
    return {"tokens": ids, "labels": shift_labels(ids, trained)}


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
