"""Checks of raw rows that name the bad example, and one cheap pass over a dataset to run them.

The pass reads only the columns a builder uses, in Arrow batches, and tokenizes nothing: a
builder's `validate(dataset)` runs it before training so that a bad row stops the run before
step 0 (on every rank, since every rank runs the same pass) instead of when it is streamed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import datasets

from tune.data.messages import ROLES, Message, MessageError
from tune.data.sources import DataSourceError

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
