"""Checks of raw rows that name the bad example, and one pass over a dataset to run them.

The pass reads only the columns a builder uses, in Arrow batches: a builder's
`validate(dataset)` runs it (and builds every sample) before training so that a bad row stops
the run before step 0 (on every rank, since every rank runs the same pass) instead of when it
is streamed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import datasets

from tune.data.errors import DataSourceError
from tune.data.messages import ROLES, Message, MessageError, to_messages

BATCH_ROWS = 4096  # rows converted from Arrow at a time: bounds memory on large datasets


def iter_rows(
    dataset: datasets.Dataset, columns: Sequence[str], batch_size: int = BATCH_ROWS
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(index, row)` for every row, each row holding only `columns` (plain Python values).

    Args:
        dataset: the dataset; its format (torch, numpy, ...) is ignored.
        columns: the columns to read; those the dataset lacks are left out of the rows.
        batch_size: rows read per Arrow batch.
    """
    present = [c for c in dict.fromkeys(columns) if c in dataset.column_names]
    if not present:
        for index in range(len(dataset)):
            yield index, {}
        return
    view = dataset.select_columns(present).with_format(None)
    index = 0
    for batch in view.iter(batch_size=batch_size):
        values = [batch[c] for c in present]
        for row_values in zip(*values, strict=True):
            yield index, dict(zip(present, row_values, strict=True))
            index += 1


def require_values(
    row: Mapping[str, Any], columns: Mapping[str, str], index: int, owner: str
) -> None:
    """Raise naming the example and column when a required column is null in this row.

    `datasets` fills a key that one JSON row lacks (but others have) with None; trained as it
    is, that would be an empty answer.

    Args:
        row: the raw row.
        columns: builder key -> dataset column, for the required keys.
        index: the row's index in the dataset.
        owner: the builder's name, for the message.
    """
    for column in columns.values():
        if row.get(column) is None:
            raise DataSourceError(
                f"example {index}: column {column!r} is missing or null in this row; "
                f"{owner} needs {sorted(columns.values())} in every row"
            )


def require_text(value: Any, column: str, index: int) -> None:
    """Raise naming the example and column when a string answer is empty or only whitespace.

    Args:
        value: the column's value in this row.
        column: the column name.
        index: the row's index in the dataset.
    """
    if isinstance(value, str) and not value.strip():
        raise DataSourceError(
            f"example {index}: column {column!r} is empty; an empty answer would train only the "
            "end-of-turn token. Fill it or remove the row"
        )


def require_assistant_content(messages: Sequence[Message], where: str) -> None:
    """Raise naming the example and message when a trained assistant turn has no text.

    An assistant turn with tool calls may have empty content; one marked `trainable=False` is
    context only and may be empty too.

    Args:
        messages: the parsed conversation.
        where: where it comes from (e.g. `example 12`).
    """
    for i, message in enumerate(messages):
        if message.role != "assistant" or not message.trainable:
            continue
        if not message.content.strip() and not message.extra.get("tool_calls"):
            raise MessageError(
                f"{where}: message {i} (assistant) is empty; it would train only the end-of-turn "
                "token. Fill it, remove the turn, or mark it trainable: false"
            )


def plainly_valid(messages: Any) -> bool:
    """A fast test, stricter than `to_messages` + `require_assistant_content`: True when every
    message is a dict with a known role and string content, and every assistant turn has text.

    False means only "parse it fully to find out" (and to get the error naming the message).

    Args:
        messages: a raw OpenAI-style conversation.
    """
    if type(messages) is not list or not messages:
        return False
    for item in messages:
        if type(item) is not dict:
            return False
        role, content = item.get("role"), item.get("content")
        if role not in ROLES or type(content) is not str:
            return False
        if role == "assistant" and not content.strip():
            return False
    return True


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def require_string(
    value: Any, column: str, index: int, optional: bool = False, expected: str = "a string"
) -> None:
    """Raise naming the example, column and the type received when a text column is not a string.

    Args:
        value: the column's value in this row.
        column: the column name.
        index: the row's index in the dataset.
        optional: None is allowed (the column is optional).
        expected: what the column may hold, for the message.
    """
    if isinstance(value, str) or (optional and value is None):
        return
    raise DataSourceError(
        f"example {index}: column {column!r} must be {expected}, got {type(value).__name__} "
        f"({_shown(value)})"
    )


def reply_text(value: Any, column: str, index: int) -> str:
    """The text of a preference reply (a string, or a list of messages: its assistant turns).

    Raises naming the example and column when the reply is neither, or a message is malformed.

    Args:
        value: the column's value in this row.
        column: the column name.
        index: the row's index in the dataset.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        parsed = to_messages(value, f"example {index}: column {column!r}")
        return "".join(m.content for m in parsed if m.role == "assistant")
    raise DataSourceError(
        f"example {index}: column {column!r} must be a string or a list of messages, got "
        f"{type(value).__name__} ({_shown(value)})"
    )


def require_distinct_replies(
    row: Mapping[str, Any], columns: Mapping[str, str], index: int
) -> None:
    """Raise naming the example when a preference reply is empty or both replies are identical.

    An identical pair gives a preference loss no signal (its gradient is zero), so it is
    refused rather than trained.

    Args:
        row: the raw row.
        columns: builder key -> dataset column (`chosen`, `rejected`).
        index: the row's index in the dataset.
    """
    texts = {}
    for side in ("chosen", "rejected"):
        column = columns[side]
        texts[side] = reply_text(row.get(column), column, index)
        if not texts[side].strip():
            raise DataSourceError(
                f"example {index}: column {column!r} is empty; a preference pair needs two "
                "non-empty replies. Fill it or remove the row"
            )
    if row.get(columns["chosen"]) == row.get(columns["rejected"]):
        raise DataSourceError(
            f"example {index}: columns {columns['chosen']!r} and {columns['rejected']!r} are "
            "identical; the pair gives a preference loss no signal. Remove the row"
        )


def check_sample(sample: Mapping[str, Any], unk_id: int | None, index: int) -> None:
    """Raise naming the example when a built sample has no tokens or holds the unknown token.

    A tokenizer without byte fallback maps characters it cannot encode to its unknown token
    (or drops them); trained as they are, the row teaches the model `<unk>`.

    Args:
        sample: the builder's output (`tokens`, `chosen_tokens`, `prompt_tokens`, ...).
        unk_id: the tokenizer's unknown-token id, or None.
        index: the row's index in the dataset.
    """
    for key, value in sample.items():
        if not key.endswith("tokens"):
            continue
        if len(value) == 0:
            raise DataSourceError(f"example {index}: the row produces no tokens ({key!r})")
        if unk_id is not None and unk_id in value:
            count = sum(1 for token in value if token == unk_id)
            raise DataSourceError(
                f"example {index}: {count} token(s) of {key!r} are the unknown token (id "
                f"{unk_id}): the tokenizer cannot encode some characters of this row. Clean the "
                "text or use a tokenizer with byte fallback"
            )


def with_location(error: Exception, location: str | None, index: int) -> Exception:
    """The error of building row `index`, prefixed with its file location and made a ValueError.

    `DataSourceError` and `MessageError` keep their type; anything else (a tokenizer or template
    failure) becomes a `DataSourceError` naming the example and the original error.

    Args:
        error: what checking or building the row raised.
        location: `file:line` of the row, or None.
        index: the row's index in the dataset.
    """
    prefix = f"{location}: " if location else ""
    if isinstance(error, (DataSourceError, MessageError)):
        return type(error)(f"{prefix}{error}") if prefix else error
    return DataSourceError(
        f"{prefix}example {index}: building the sample failed: {type(error).__name__}: {error}"
    )
